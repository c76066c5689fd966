"""Per-token log-probabilities through the LM head, without the full logits tensor.

A preference step needs ``log p(token_t | tokens_<t)`` at every completion position, i.e. a
``log_softmax`` over the vocabulary at every position. Materialising ``[rows, T, V]`` logits
costs ``rows * T * V * 4`` bytes (8 sequences of 1024 tokens at V = 128k: 4 GiB in float32,
plus as much again for its gradient). Here the sequence is cut into chunks of ``chunk``
positions; each chunk's ``[rows, chunk, V]`` logits are made, reduced to a log-probability
per position, and dropped. The chunk body is rematerialised (``jax.checkpoint``) so the
backward pass also holds one chunk of logits at a time. :func:`map_chunks` is that loop for
any per-position reduction of logits (WPO's ``log Σ p²`` here, the teachers' terms of
:mod:`jaxalign.ops.teacher`).

Chunking costs a second LM-head matmul in the backward pass (about a tenth more FLOPs for a
small model with a large vocabulary), wasted whenever the whole logits fit in memory.
:func:`logits_chunk` picks the chunk from a memory budget: the whole sequence as one chunk,
computed once and not rematerialised, when it fits; ``chunk`` positions otherwise. Both are
exact: only what is kept for the backward pass differs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp


def lm_logits(hidden: jax.Array, unembed: jax.Array) -> jax.Array:
    """``[N, c, H] @ [H, V] -> [N, c, V]`` logits, accumulated in float32 (float64 stays float64)."""
    return jnp.einsum("nch,hv->ncv", hidden, unembed.astype(hidden.dtype),
                      preferred_element_type=jnp.promote_types(hidden.dtype, jnp.float32))


def map_chunks(fn: Callable, arrays: Sequence[jax.Array], *, chunk: int):
    """``fn`` over chunks of ``chunk`` positions of ``[N, T, ...]`` arrays, one chunk at a time.

    ``fn(*chunks)`` takes each array's ``[N, chunk, ...]`` slice and returns a pytree of
    ``[N, chunk, ...]`` arrays; the result is that pytree with ``[N, T, ...]`` leaves. ``fn``
    is rematerialised, so neither pass holds more than one chunk of whatever it makes inside
    (the logits). ``T`` need not divide by ``chunk``: the last chunk is padded and its extra
    positions dropped. ``chunk >= T`` is one chunk: ``fn`` on the whole arrays, not
    rematerialised (its intermediates are kept for the backward pass, nothing is recomputed).
    """
    n, t = arrays[0].shape[:2]
    if chunk >= t:
        return fn(*arrays)
    num = -(-t // chunk)
    pad = num * chunk - t

    def split(x):
        if pad:
            x = jnp.pad(x, ((0, 0), (0, pad)) + ((0, 0),) * (x.ndim - 2))
        # [num, N, chunk, ...]: scan over chunks, rows stay the (sharded) leading axis of each.
        return x.reshape(n, num, chunk, *x.shape[2:]).swapaxes(0, 1)

    one = jax.checkpoint(fn)
    _, out = jax.lax.scan(lambda carry, xs: (carry, one(*xs)), None, tuple(split(x) for x in arrays))
    return jax.tree.map(lambda o: o.swapaxes(0, 1).reshape(n, num * chunk, *o.shape[3:])[:, :t], out)


# Bytes per float32 logit a differentiated whole-logits pass holds at its peak: the logits, their
# softmax (kept for the backward pass) and their cotangent.
LOGIT_BYTES = 3 * 4


def logits_chunk(rows: int, length: int, vocab: int, *, chunk: int, memory_mb: float) -> int:
    """The chunk for :func:`map_chunks`: ``length`` (whole logits, no recomputation) when
    ``rows x length x vocab`` float32 logits, with their softmax and gradient
    (:data:`LOGIT_BYTES` each), fit in ``memory_mb`` MiB; else ``chunk``. ``rows`` counts the
    global batch's rows, so under data parallelism the budget is conservative."""
    return length if rows * length * vocab * LOGIT_BYTES <= memory_mb * 2**20 else chunk


def token_logps(hidden: jax.Array, unembed: jax.Array, targets: jax.Array, *, chunk: int = 64,
                log_sum_sq: bool = False):
    """``log softmax(hidden @ unembed)[..., targets]`` per position, chunk by chunk.

    hidden: [N, T, H] final-normed hidden states; unembed: [H, V]; targets: [N, T] token ids
    (the token each position predicts). Returns float32 [N, T]; with ``log_sum_sq`` also
    ``log Σ_v p_v²`` per position [N, T] (WPO's weight correction; no gradient).
    """

    def one(h, t):
        logits = lm_logits(h, unembed)
        lse = jax.nn.logsumexp(logits, axis=-1)
        picked = jnp.take_along_axis(logits, t[..., None], axis=-1)[..., 0] - lse
        if not log_sum_sq:
            return picked
        return picked, jax.lax.stop_gradient(jax.nn.logsumexp(2 * (logits - lse[..., None]), axis=-1))

    return map_chunks(one, (hidden, targets), chunk=chunk)


class CompletionLogps(NamedTuple):
    """Per-token log-probs of completion tokens, ``[N, W]``: ``W = T-1`` positions, position ``t``
    scoring token ``t+1``, or a window of ``W`` consecutive positions per row that holds the
    whole completion (:func:`completion_logps`'s ``window``)."""

    per_token: jax.Array  # 0 off the completion
    mask: jax.Array  # float32, 1 at completion tokens
    log_sum_sq: jax.Array | None = None  # log Σ_v p_v², when asked for

    @property
    def summed(self) -> jax.Array:
        return self.per_token.sum(-1)

    @property
    def lengths(self) -> jax.Array:
        return self.mask.sum(-1)


def completion_window(loss_mask: jax.Array, window: int) -> jax.Array:
    """``[N, window]`` indices of ``window`` consecutive positions per row that hold every
    position where ``loss_mask`` [N, P] is 1, given that these form one run of at most
    ``window`` (a completion after its prompt): from the run's start, moved left where the row
    ends first. Rows without a 1 get the first ``window`` positions."""
    start = jnp.minimum(jnp.argmax(loss_mask > 0, axis=1), loss_mask.shape[1] - window)
    return start[:, None] + jnp.arange(window)


def completion_logps(hidden: jax.Array, unembed: jax.Array, input_ids: jax.Array, loss_mask: jax.Array, *,
                     chunk: int = 64, log_sum_sq: bool = False, window: int | None = None) -> CompletionLogps:
    """Log-probs of each sequence's completion tokens.

    hidden: [N, T, H] for input_ids [N, T]; loss_mask [N, T] is 1 at completion *tokens*
    (token t is predicted by position t-1, so position t-1's log-prob counts when
    ``loss_mask[t]``). ``window``: no completion is longer than this many tokens (the data's
    ``max_completion_length``), so the LM head runs only on the ``window`` positions per row
    that hold it (:func:`completion_window`), not on the prompt's: the same sums, at a fraction
    of the LM head's cost when prompts are long. The outputs are then ``[N, window]``.
    """
    mask = loss_mask[:, 1:].astype(jnp.float32)
    hidden, targets = hidden[:, :-1], input_ids[:, 1:]
    if window is not None and window < mask.shape[1]:
        idx = completion_window(mask, window)
        hidden = jnp.take_along_axis(hidden, idx[..., None], axis=1)
        targets, mask = jnp.take_along_axis(targets, idx, axis=1), jnp.take_along_axis(mask, idx, axis=1)
    out = token_logps(hidden, unembed, targets, chunk=chunk, log_sum_sq=log_sum_sq)
    per_token, lss = out if log_sum_sq else (out, None)
    return CompletionLogps(per_token * mask, mask, lss)
