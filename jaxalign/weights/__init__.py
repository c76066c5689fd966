"""Reading checkpoints into sharded parameters."""

from jaxalign.weights.loader import ParamRule, flatten, load_params, unflatten
from jaxalign.weights.safetensors_io import CheckpointError, SafetensorsCheckpoint

__all__ = ["CheckpointError", "ParamRule", "SafetensorsCheckpoint", "flatten", "load_params", "unflatten"]
