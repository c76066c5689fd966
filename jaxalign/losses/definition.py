"""Cross-entropy over a large label space of embedded entries, without ``[B, N]`` logits.

DefSent+ (Liu 2024, arXiv 2405.16153; ``TrainEncoder.py`` of the official code,
github.com/ryuliuxiaodong/DefSent-Plus) classifies each definition sentence among *all*
dictionary entries with a frozen, bias-free linear head whose rows are the entries'
embeddings: ``logits = s @ W.T``, no temperature, no normalisation. With 100k+ entries the
logits of a batch (and their gradient) would dominate memory, so the entries come in chunks:
each chunk's ``[B, C]`` logits update a running logsumexp and are dropped, the chunk body
rematerialised in the backward pass (as :mod:`jaxalign.ops.logprobs` does for an LM head).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def chunk_entries(entries: np.ndarray, chunk: int) -> np.ndarray:
    """``[N, D]`` entry embeddings -> ``[ceil(N / chunk), chunk, D]`` float32 on the host, the
    tail padded with zeros (never scored: :func:`entry_cross_entropy` masks rows past its
    ``num_entries``). Built once before training, then placed on the mesh."""
    n, d = entries.shape
    num = -(-n // chunk)
    return np.pad(np.asarray(entries, np.float32), ((0, num * chunk - n), (0, 0))).reshape(num, chunk, d)


def entry_cross_entropy(queries: jax.Array, entries: jax.Array, labels: jax.Array, *,
                        num_entries: int) -> tuple[jax.Array, jax.Array]:
    """Mean ``-log softmax(queries @ W.T)[label]`` over the batch, chunk by chunk, and top-1 accuracy.

    Args:
      queries: [B, D] sentence vectors (float32).
      entries: [K, C, D] entry embeddings in K chunks of C (:func:`chunk_entries`); rows at
        flat index >= ``num_entries`` are padding and never score. The matrix is read only
        (no gradient flows to it: DefSent+'s head is frozen).
      labels: [B] int entry indices in ``[0, num_entries)``.
      num_entries: N, the real entries.

    Returns:
      (loss, accuracy): float32 scalars; the accuracy counts rows whose highest-scoring entry
      is their label (ties to the lowest index).
    """
    entries = jax.lax.stop_gradient(entries)
    chunk = entries.shape[1]
    b = queries.shape[0]
    queries = queries.astype(jnp.float32)

    def body(carry, xs):
        running_max, running_sum, target, best_id = carry
        w, k = xs
        ids = k * chunk + jnp.arange(chunk)
        # Full float32 passes: ICA-scaled entries give logits in the thousands, where one-pass
        # bfloat16 matmuls (TPU's default) would be off by whole units.
        logits = jnp.einsum("bd,cd->bc", queries, w.astype(jnp.float32), precision=jax.lax.Precision.HIGHEST)
        logits = jnp.where(ids < num_entries, logits, -jnp.inf)
        target = target + jnp.sum(jnp.where(ids == labels[:, None], logits, 0.0), axis=-1)
        chunk_max = logits.max(-1)
        new_max = jnp.maximum(running_max, chunk_max)
        running_sum = running_sum * jnp.exp(running_max - new_max) + jnp.exp(logits - new_max[:, None]).sum(-1)
        best_id = jnp.where(chunk_max > running_max, k * chunk + jnp.argmax(logits, -1), best_id)
        return (new_max, running_sum, target, best_id), None

    init = (jnp.full((b,), -jnp.inf), jnp.zeros((b,)), jnp.zeros((b,)), jnp.zeros((b,), jnp.int32))
    xs = (entries, jnp.arange(entries.shape[0]))
    (running_max, running_sum, target, best_id), _ = jax.lax.scan(jax.checkpoint(body), init, xs)
    loss = jnp.mean(running_max + jnp.log(running_sum) - target)
    accuracy = jnp.mean((best_id == labels).astype(jnp.float32))
    return loss, jax.lax.stop_gradient(accuracy)
