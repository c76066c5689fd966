"""Model merging over task vectors: pure functions of parameter pytrees (any nesting, e.g. a
flat ``{checkpoint name: array}`` dict). Averaging and SLERP are JAX, differentiable in their
coefficients (Self Positioning searches them); TIES is NumPy (its selection has no gradient).

A task vector is ``V_i = theta_i - theta_0``: a fine-tuned model minus the base it started from
(Ilharco et al., "Editing Models with Task Arithmetic", arXiv 2212.04089). Every method here
maps task vectors (and coefficients) to one merged task vector; ``apply_task_vector`` adds it
back to the base.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

CONVENTIONS = ("standard", "transcribed")


def task_vectors(base, models: Sequence) -> list:
    """``[theta_i - theta_0 for each model]``; every model has the base's tree structure."""
    return [jax.tree.map(lambda m, b: m - b, model, base) for model in models]


def apply_task_vector(base, vector, scale=1.0):
    """``theta_0 + scale * V``."""
    return jax.tree.map(lambda b, v: b + scale * v, base, vector)


def weighted_average(vectors: Sequence, weights: Sequence[float] | None = None, scale: float = 1.0):
    """Task arithmetic: ``scale * sum_i w_i V_i / sum_i w_i`` (equal weights by default).

    With ``scale=1`` this is the weighted average of the models' weights; a larger ``scale``
    extrapolates along the average direction (task arithmetic's lambda).
    """
    weights = [1.0] * len(vectors) if weights is None else list(weights)
    total = sum(weights)
    return jax.tree.map(lambda *vs: scale * sum(w * v for w, v in zip(weights, vs)) / total, *vectors)


def _dot(x, y) -> jax.Array:
    return sum(jnp.vdot(a, b) for a, b in zip(jax.tree.leaves(x), jax.tree.leaves(y)))


def slerp(v0, v1, t, *, eps: float = 1e-8):
    """Spherical interpolation of two task vectors: ``t=0`` gives ``v0``, ``t=1`` gives ``v1``.

    ``(sin((1-t) alpha) v0 + sin(t alpha) v1) / sin(alpha)``, alpha the angle between ``v0`` and
    ``v1`` taken over the whole flattened task vector (the angle alpha_(i,j) of Li et al., arXiv
    2410.15035, Self Positioning), not per tensor. Nearly parallel vectors (``sin alpha < eps``)
    fall back to the linear ``(1-t) v0 + t v1``, its limit. Differentiable in ``t``.
    """
    cos = _dot(v0, v1) / jnp.sqrt(_dot(v0, v0) * _dot(v1, v1) + eps)
    alpha = jnp.arccos(jnp.clip(cos, -1.0, 1.0))
    sin = jnp.sin(alpha)
    parallel = sin < eps
    safe_sin = jnp.where(parallel, 1.0, sin)
    c0 = jnp.where(parallel, 1.0 - t, jnp.sin((1.0 - t) * alpha) / safe_sin)
    c1 = jnp.where(parallel, t, jnp.sin(t * alpha) / safe_sin)
    return jax.tree.map(lambda a, b: c0 * a + c1 * b, v0, v1)


def slerp_weighted(v_i, v_j, a_i, a_j, *, convention: str = "standard"):
    """The Self Positioning pair merge ``f(V_i, V_j, a_i, a_j)`` (Li et al., arXiv 2410.15035).

    ``standard``: ``a_i`` weights ``V_i``, i.e. ``sin(a_i/(a_i+a_j) alpha)`` multiplies ``V_i``;
    ``a_j = 0`` gives ``V_i``. ``transcribed``: the formula as a reading note of the paper
    transcribes it, ``sin(a_j/(a_i+a_j) alpha) V_i + sin(a_i/(a_i+a_j) alpha) V_j``, where a larger
    ``a_i`` moves the result towards ``V_j``; whether that is the paper's intent or a typo is open.
    """
    if convention not in CONVENTIONS:
        raise ValueError(f"SLERP convention {convention!r}: expected one of {', '.join(CONVENTIONS)}")
    share_j = a_j / (a_i + a_j)
    return slerp(v_i, v_j, share_j if convention == "standard" else 1.0 - share_j)


def slerp_iterative(vectors: Sequence, weights: Sequence, *, convention: str = "standard"):
    """``V_(1..k) = f(V_(1..k-1), V_k, mean(a_1..a_{k-1}), a_k)`` for k = 2..N (Self Positioning's
    direction); two vectors give one ``slerp_weighted``."""
    if len(vectors) != len(weights):
        raise ValueError(f"{len(vectors)} task vectors but {len(weights)} weights")
    merged = vectors[0]
    for k in range(1, len(vectors)):
        prior = sum(weights[:k]) / k
        merged = slerp_weighted(merged, vectors[k], prior, weights[k], convention=convention)
    return merged


def trim(x, density: float) -> np.ndarray:
    """``x`` with all but its ``floor(density * size)`` largest-magnitude entries set to 0 (entries
    tied with the smallest kept magnitude are kept, as TIES-Merging's ``topk_values_mask``)."""
    x = np.asarray(x)
    k = int(density * x.size)
    if k == 0:
        return np.zeros_like(x)
    magnitude = np.abs(x)
    threshold = np.partition(magnitude.ravel(), x.size - k)[x.size - k]
    return np.where(magnitude >= threshold, x, 0)


def ties(vectors: Sequence, density: float = 0.2, scale: float = 1.0):
    """TIES-Merging (Yadav et al., arXiv 2306.01708; github.com/prateeksha10/TIES-Merging).

    Per tensor: (1) trim each task vector to its top ``density`` fraction by magnitude; (2) elect
    each entry's sign as the sign of the trimmed vectors' sum (the sign of larger total mass);
    (3) disjoint mean: average only the trimmed entries whose sign agrees with the elected one
    (an entry with none, or an elected sign of 0, stays 0); then multiply by ``scale``. Trimming
    is per tensor (as mergekit), where the official code trims the whole flattened model at once.
    Runs in NumPy on the host: nothing in it is differentiable, and ``np.partition`` finds the
    threshold in linear time where a sort of a 10M-entry embedding matrix takes seconds.
    """
    if not 0.0 < density <= 1.0:
        raise ValueError(f"TIES density must be in (0, 1], got {density}")

    def merge(*xs):
        trimmed = np.stack([trim(x, density) for x in xs])
        elected = np.sign(trimmed.sum(0))
        agree = (np.sign(trimmed) == elected) & (trimmed != 0)
        count = agree.sum(0)
        return scale * np.where(agree, trimmed, 0).sum(0) / np.maximum(count, 1)

    return jax.tree.map(merge, *vectors)


__all__ = ["CONVENTIONS", "apply_task_vector", "slerp", "slerp_iterative", "slerp_weighted",
           "task_vectors", "ties", "trim", "weighted_average"]

