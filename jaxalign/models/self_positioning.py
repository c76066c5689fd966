"""Self Positioning (Li, Nie, Zhang, Long, Zhang, Xie, arXiv 2410.15035): merge coefficients found
by gradient descent on a probe set, every model weight frozen.

The merged task vector is ``V_p = lambda * V_(1..N)``, ``V_(1..N)`` the iterative SLERP of the task
vectors with weights ``a_1..a_N`` (:func:`jaxalign.models.merge.slerp_iterative`), and the search
minimises ``mean_batches L_InfoNCE(theta_0 + V_p) + mu * lambda`` over ``(a, lambda)`` only. The
``a_i`` are kept positive as ``exp(log a_i)``, starting equal (``a_i = 1``) with ``lambda = 1``.
The paper gives no official code; its step count and learning rate are not published.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxalign.inference.embed import encode_fn
from jaxalign.losses.contrastive import info_nce
from jaxalign.models.merge import apply_task_vector, slerp_iterative
from jaxalign.models.registry import Encoder
from jaxalign.ops.pooling import PoolingConfig


@dataclasses.dataclass(frozen=True)
class SearchResult:
    """Attributes:
      weights: the found ``a_1..a_N`` (positive).
      scale: the found norm scale ``lambda``.
      objectives: the objective ``loss + mu * lambda`` at each step, before its update.
    """

    weights: np.ndarray
    scale: float
    objectives: np.ndarray


def merged_vector(vectors: Sequence, log_weights: jax.Array, scale: jax.Array, *, convention: str = "standard"):
    """``V_p = scale * slerp_iterative(vectors, exp(log_weights))``."""
    direction = slerp_iterative(vectors, [jnp.exp(log_weights[i]) for i in range(len(vectors))], convention=convention)
    return jax.tree.map(lambda v: scale * v, direction)


def search(
    probe_loss: Callable,
    vectors: Sequence,
    batches: Sequence[dict],
    *,
    steps: int = 200,
    learning_rate: float = 0.05,
    mu: float = 0.01,
    convention: str = "standard",
) -> SearchResult:
    """Adam on ``(log a, lambda)`` minimising ``probe_loss(V_p, batch) + mu * lambda``, cycling
    through ``batches`` (a list of same-shape pytrees of arrays), one batch per step.

    ``probe_loss(vector, batch) -> scalar`` is the loss of the model ``theta_0 + vector``.
    """
    coeffs = {"log_weights": jnp.zeros(len(vectors)), "scale": jnp.ones(())}
    tx = optax.adam(learning_rate)

    def objective(c, batch):
        vector = merged_vector(vectors, c["log_weights"], c["scale"], convention=convention)
        return probe_loss(vector, batch) + mu * c["scale"]

    @jax.jit
    def step(c, opt_state, batch):
        value, grads = jax.value_and_grad(objective)(c, batch)
        updates, opt_state = tx.update(grads, opt_state, c)
        return optax.apply_updates(c, updates), opt_state, value

    opt_state = tx.init(coeffs)
    values = []
    for i in range(steps):
        coeffs, opt_state, value = step(coeffs, opt_state, batches[i % len(batches)])
        values.append(float(value))
    return SearchResult(np.exp(np.asarray(coeffs["log_weights"])), float(coeffs["scale"]), np.asarray(values))


def probe_batches(tokenizer, examples: Sequence[tuple], *, batch_size: int, max_length: int) -> list[dict]:
    """Full batches of tokenised probe examples: each column of ``(anchor, positive[, negative])``
    padded to ``max_length`` as ``{"input_ids", "attention_mask", "token_type_ids"}`` ``[columns,
    batch_size, max_length]`` int32; a last partial batch is dropped so every step has one shape."""
    if len(examples) < batch_size:
        raise ValueError(f"the probe set has {len(examples)} examples, fewer than one batch of {batch_size}; "
                         "use a larger probe set or a smaller --batch-size")
    columns = min(len(ex) for ex in examples)
    batches = []
    for start in range(0, len(examples) - batch_size + 1, batch_size):
        rows = examples[start:start + batch_size]
        enc = [tokenizer([r[c] for r in rows], truncation=True, max_length=max_length, padding="max_length",
                         return_tensors="np") for c in range(columns)]
        batches.append({k: np.stack([e[k] for e in enc]).astype(np.int32) if k in enc[0]
                        else np.zeros((columns, batch_size, max_length), np.int32)
                        for k in ("input_ids", "attention_mask", "token_type_ids")})
    return batches


def info_nce_probe_loss(encoder: Encoder, base_params, pooling: PoolingConfig, *, temperature: float = 0.05) -> Callable:
    """``(vector, batch) -> InfoNCE`` of the encoder ``base_params + vector`` on one probe batch:
    anchors against in-batch positives, and the third column as hard negatives when present."""
    encode = encode_fn(encoder, pooling)

    def loss(vector, batch):
        params = apply_task_vector(base_params, vector)
        emb = [encode(params, batch["input_ids"][c], batch["attention_mask"][c], batch["token_type_ids"][c])
               for c in range(batch["input_ids"].shape[0])]
        negatives = emb[2][:, None] if len(emb) > 2 else None
        return info_nce(emb[0], emb[1], negatives, temperature=temperature)

    return loss


__all__ = ["SearchResult", "info_nce_probe_loss", "merged_vector", "probe_batches", "search"]
