"""Pooling token states into sentence embeddings: pure functions over ``[B, T, H]`` arrays.

Modes (``PoolingConfig.mode``):

* ``mean``   - mask-aware mean over real tokens (sentence-transformers' default);
* ``max``    - mask-aware max;
* ``cls``    - the first token's hidden state (SimCSE calls this ``cls_before_pooler``);
* ``cls_pooler`` - BERT's pooler, ``tanh(W h_cls + b)`` (SimCSE's ``cls`` for checkpoints with a pooler);
* ``last``   - the last real token (decoder-style embeddings; works with left or right padding);
* ``mean_top_k`` / ``concat_top_k`` - mean (or concatenation) of the mean-pooled top ``k`` layers
  (``k=2`` with ``layer=-1`` is SimCSE's ``avg_top2``);
* ``mean_first_last`` - mean of the mean-pooled first transformer layer and the chosen layer
  (SimCSE's ``avg_first_last``).

``layer`` picks which hidden state to pool (``-1`` last, ``0`` embeddings, ``n`` after layer n),
which 2D Matryoshka needs. Then optional Matryoshka truncation to ``truncate_dim`` and L2
normalisation (truncate first, then normalise, as sentence-transformers does).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import jax.numpy as jnp

MODES = ("mean", "max", "cls", "cls_before_pooler", "cls_pooler", "last", "mean_top_k", "concat_top_k", "mean_first_last")
ALIASES = {"cls_before_pooler": "cls", "avg": "mean", "last_token": "last"}


@dataclasses.dataclass(frozen=True)
class PoolingConfig:
    mode: str = "mean"
    layer: int = -1
    top_k: int = 2
    normalize: bool = False
    truncate_dim: int | None = None

    def __post_init__(self):
        mode = ALIASES.get(self.mode, self.mode)
        if mode not in MODES:
            raise ValueError(f"pooling mode {self.mode!r} is unknown; choose one of {', '.join(MODES)}")
        object.__setattr__(self, "mode", mode)
        if self.top_k < 1:
            raise ValueError(f"pooling top_k must be >= 1, got {self.top_k}")
        if self.truncate_dim is not None and self.truncate_dim < 1:
            raise ValueError(f"truncate_dim must be >= 1, got {self.truncate_dim}")

    @property
    def needs_all_layers(self) -> bool:
        return self.layer != -1 or self.mode in ("mean_top_k", "concat_top_k", "mean_first_last")


def masked_mean(hidden: jax.Array, mask: jax.Array) -> jax.Array:
    """hidden [B, T, H], mask [B, T] -> [B, H], in float32."""
    m = mask.astype(jnp.float32)[..., None]
    return (hidden.astype(jnp.float32) * m).sum(1) / jnp.maximum(m.sum(1), 1e-9)


def masked_max(hidden: jax.Array, mask: jax.Array) -> jax.Array:
    neg = jnp.finfo(jnp.float32).min
    return jnp.where(mask[..., None] > 0, hidden.astype(jnp.float32), neg).max(1)


def last_index(mask: jax.Array) -> jax.Array:
    """[B] index of each row's last position whose mask is 1 (left or right padding)."""
    return mask.shape[1] - 1 - jnp.argmax(jnp.flip(mask, axis=1) > 0, axis=1)


def last_token(hidden: jax.Array, mask: jax.Array) -> jax.Array:
    """The last position whose mask is 1 (handles left and right padding)."""
    return jnp.take_along_axis(hidden, last_index(mask)[:, None, None], axis=1)[:, 0].astype(jnp.float32)


def l2_normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), eps)


def matryoshka(x: jax.Array, dim: int | None, normalize: bool) -> jax.Array:
    """Truncates [B, H] embeddings to their first ``dim`` channels, then optionally L2-normalises."""
    if dim is not None:
        if dim > x.shape[-1]:
            raise ValueError(f"truncate_dim {dim} exceeds the embedding size {x.shape[-1]}")
        x = x[..., :dim]
    return l2_normalize(x) if normalize else x


def pool(
    hidden_states: Sequence[jax.Array],
    mask: jax.Array,
    config: PoolingConfig,
    pooler_output: jax.Array | None = None,
) -> jax.Array:
    """Sentence embeddings [B, H] (or [B, k*H] for ``concat_top_k``) in float32.

    ``hidden_states`` is every layer's output (index 0 = embeddings) or just ``(last,)`` when
    the mode and layer need no more.
    """
    n = len(hidden_states)
    layer = config.layer if config.layer >= 0 else n + config.layer
    if not 0 <= layer < n:
        raise ValueError(f"pooling layer {config.layer} is out of range for {n} hidden states")
    h = hidden_states[layer]
    mode = config.mode
    if mode == "mean":
        out = masked_mean(h, mask)
    elif mode == "max":
        out = masked_max(h, mask)
    elif mode == "cls":
        out = h[:, 0].astype(jnp.float32)
    elif mode == "cls_pooler":
        if pooler_output is None:
            raise ValueError("pooling mode 'cls_pooler' needs a checkpoint with a pooler layer (pooler.dense.*)")
        out = pooler_output.astype(jnp.float32)
    elif mode == "last":
        out = last_token(h, mask)
    elif mode in ("mean_top_k", "concat_top_k"):
        if config.top_k > layer + 1:
            raise ValueError(f"top_k {config.top_k} exceeds the {layer + 1} hidden states up to layer {layer}")
        pooled = [masked_mean(hidden_states[i], mask) for i in range(layer - config.top_k + 1, layer + 1)]
        out = jnp.mean(jnp.stack(pooled), 0) if mode == "mean_top_k" else jnp.concatenate(pooled, -1)
    else:  # mean_first_last
        out = 0.5 * (masked_mean(hidden_states[1], mask) + masked_mean(h, mask))
    return matryoshka(out, config.truncate_dim, config.normalize)
