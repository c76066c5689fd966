"""Which weights a restoration step resets, as pure functions of flat float32 vectors
(Yang et al., IEEE S&P 2025, ``sgdg_rollback_final.py``: ``reset_weights``).

All vectors are ``[P]``: the eligible weights (decoder layers up to ``layer_end``, norms and
embeddings excluded) laid end to end.
"""

from __future__ import annotations

import math

import numpy as np


def top_by_magnitude(values: np.ndarray, candidates: np.ndarray, k: int, *, strict: bool) -> np.ndarray:
    """``[P]`` bool: the candidates whose ``|values|`` is among the ``k`` largest. ``strict``:
    the reference's ``> k-th largest`` (so at most ``k - 1`` without ties); else the top ``k``."""
    out = np.zeros(values.shape, bool)
    idx = np.flatnonzero(candidates)
    if k <= 0 or idx.size == 0:
        return out
    mag = np.abs(values[idx])
    k = min(k, idx.size)
    kth = np.partition(mag, idx.size - k)[idx.size - k]
    if strict:
        out[idx[mag > kth]] = True
    else:
        order = np.argsort(-mag, kind="stable")[:k]
        out[idx[order]] = True
    return out


def recovery_mask(current: np.ndarray, aligned: np.ndarray, grad: np.ndarray, k: int) -> np.ndarray:
    """``[P]`` bool: the weights to copy back from the aligned model this step.

    Candidates are the weights whose gradient of ``-cos(harmful representation, the aligned
    model's)`` has the sign of ``current - aligned`` (a descent step moves them toward the aligned
    value); of those, the ones whose ``|grad|`` exceeds the ``k``-th largest (strict, as the code).
    """
    diff = current - aligned
    candidates = ((diff > 0) & (grad > 0)) | ((diff < 0) & (grad < 0))
    return top_by_magnitude(grad, candidates, k, strict=True)


def rollback_mask(current: np.ndarray, finetuned: np.ndarray, benign_grad: np.ndarray, step_mask: np.ndarray,
                  rate: float) -> np.ndarray:
    """``[P]`` bool: of this step's restored weights (``step_mask``), those to return to the
    fine-tuned values: the ``ceil(rate * |candidates|)`` largest ``|benign_grad|`` among the ones
    whose ``benign_grad`` has the sign of ``current - finetuned`` (toward the task's direction)."""
    diff = current - finetuned
    candidates = step_mask & (((diff > 0) & (benign_grad > 0)) | ((diff < 0) & (benign_grad < 0)))
    k = math.ceil(int(candidates.sum()) * rate)
    return top_by_magnitude(benign_grad, candidates, k, strict=False)


__all__ = ["recovery_mask", "rollback_mask", "top_by_magnitude"]
