"""Restoring the alignment a fine-tune lost (Yang, Tao, Chen and Xu, IEEE S&P 2025, arXiv
2504.09757; github.com/kangyangWHU/LLMAlignment): :mod:`.masks` holds the per-step weight
choices as pure functions, :mod:`.procedure` the 20-step run behind ``jaxalign restore``."""

from jaxalign.restore.masks import recovery_mask, rollback_mask
from jaxalign.restore.procedure import RestoreConfig, restore

__all__ = ["RestoreConfig", "recovery_mask", "restore", "rollback_mask"]
