"""Per-token log-probabilities through the LM head, without the full logits tensor.

A preference step needs ``log p(token_t | tokens_<t)`` at every completion position, i.e. a
``log_softmax`` over the vocabulary at every position. Materialising ``[rows, T, V]`` logits
costs ``rows * T * V * 4`` bytes (8 sequences of 1024 tokens at V = 128k: 4 GiB in float32,
plus as much again for its gradient). Here the sequence is cut into chunks of ``chunk``
positions; each chunk's ``[rows, chunk, V]`` logits are made, reduced to a log-probability
per position, and dropped. The chunk body is rematerialised (``jax.checkpoint``) so the
backward pass also holds one chunk of logits at a time.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def token_logps(hidden: jax.Array, unembed: jax.Array, targets: jax.Array, *, chunk: int = 64) -> jax.Array:
    """``log softmax(hidden @ unembed)[..., targets]`` per position, chunk by chunk.

    hidden: [N, T, H] final-normed hidden states; unembed: [H, V]; targets: [N, T] token ids
    (the token each position predicts). Returns float32 [N, T]. ``T`` need not divide by
    ``chunk``: the last chunk is padded and its extra positions dropped.
    """
    n, t, h = hidden.shape
    chunk = min(chunk, t)
    num = -(-t // chunk)
    pad = num * chunk - t
    if pad:
        hidden = jnp.pad(hidden, ((0, 0), (0, pad), (0, 0)))
        targets = jnp.pad(targets, ((0, 0), (0, pad)))
    # [num, N, chunk, ...]: scan over chunks, rows stay the (sharded) leading axis of each.
    hs = hidden.reshape(n, num, chunk, h).swapaxes(0, 1)
    ts = targets.reshape(n, num, chunk).swapaxes(0, 1)

    @jax.checkpoint
    def one(h_c, t_c):
        logits = jnp.einsum("nch,hv->ncv", h_c, unembed.astype(h_c.dtype), preferred_element_type=jnp.float32)
        picked = jnp.take_along_axis(logits, t_c[..., None], axis=-1)[..., 0]
        return picked - jax.nn.logsumexp(logits, axis=-1)

    _, out = jax.lax.scan(lambda carry, x: (carry, one(*x)), None, (hs, ts))
    return out.swapaxes(0, 1).reshape(n, num * chunk)[:, :t]


def completion_logps(hidden: jax.Array, unembed: jax.Array, input_ids: jax.Array, loss_mask: jax.Array, *,
                     chunk: int = 64) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Summed completion log-probs of each sequence.

    hidden: [N, T, H] for input_ids [N, T]; loss_mask [N, T] is 1 at completion *tokens*
    (token t is predicted by position t-1, so position t-1's log-prob counts when
    ``loss_mask[t]``). Returns ``(summed [N], lengths [N], per_token [N, T-1])`` where
    ``per_token`` is already masked (0 off the completion).
    """
    mask = loss_mask[:, 1:].astype(jnp.float32)
    per_token = token_logps(hidden[:, :-1], unembed, input_ids[:, 1:], chunk=chunk) * mask
    return per_token.sum(-1), mask.sum(-1), per_token
