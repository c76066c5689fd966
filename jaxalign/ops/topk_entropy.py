"""Top-k entropy and top-k probability mass of next-token distributions, through the chunked LM head.

Shi et al., "Understanding Likelihood Over-optimisation in Direct Alignment Algorithms"
(arXiv 2410.11677, §4.4) watch two cheap indicators of over-optimisation while training with
DPO-style losses: the entropy over the ``k = 10`` most probable next tokens (in bits), which
rises and then *turns down* as the model over-optimises, and the probability mass of those
``k`` tokens, which falls as outputs become random. The paper does not say whether the top-k
probabilities are renormalised before the entropy; :func:`topk_entropy` does both, renormalised
by default.

Only the ``k`` largest log-probabilities of each position are needed. :func:`lm_head_topk`
gets them without the ``[N, c, V]`` logits of a chunk of positions either: the vocabulary is
cut into chunks of ``vocab_chunk`` columns, each chunk's top ``k`` are merged with the running
top ``k`` (``lax.top_k`` of the ``2k`` candidates) and its ``logsumexp`` with the running one,
the normaliser of every log-probability. :func:`completion_topk` runs that over the sequence in
position chunks (:func:`jaxalign.ops.logprobs.map_chunks`), so ``[B, T, V]`` never exists.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxalign.ops.logprobs import lm_logits, map_chunks


def topk_logprobs(logits: jax.Array, k: int) -> jax.Array:
    """The ``k`` largest log-probabilities of ``softmax(logits)``, descending.

    logits: ``[..., V]``; returns ``[..., k]``. The whole-logits form of :func:`lm_head_topk`.
    """
    return jax.lax.top_k(jax.nn.log_softmax(logits, axis=-1), k)[0]


def topk_mass(top_logps: jax.Array) -> jax.Array:
    """``Σ_{i≤k} p_i`` of the raw distribution, from its top-k log-probabilities ``[..., k]``; ``[...]``."""
    return jnp.exp(top_logps).sum(-1)


def topk_entropy(top_logps: jax.Array, *, renormalise: bool = True, base: float = 2.0) -> jax.Array:
    """``H = -Σ_{i≤k} q_i log_base q_i`` over the top-k tokens (Shi et al. 2024, §4.4, base 2).

    top_logps: ``[..., k]`` log-probabilities of the top-k tokens under the full distribution;
    returns ``[...]``. ``renormalise``: ``q_i = p_i / Σ_{j≤k} p_j``, the entropy of the
    distribution restricted to the top k (at most ``log_base k``); otherwise ``q_i = p_i``, the
    top-k terms of the full distribution's entropy (smaller when the top k hold little mass).
    """
    logq = top_logps - jax.nn.logsumexp(top_logps, axis=-1, keepdims=True) if renormalise else top_logps
    return -(jnp.exp(logq) * logq).sum(-1) / math.log(base)


def lm_head_topk(hidden: jax.Array, unembed: jax.Array, k: int, *, vocab_chunk: int = 16384) -> jax.Array:
    """Top-k log-probabilities of ``softmax(hidden @ unembed)``, ``vocab_chunk`` columns at a time.

    hidden: ``[N, c, H]``; unembed: ``[H, V]``; returns float32 ``[N, c, k]``, descending.
    Holds at most ``[N, c, vocab_chunk]`` logits. The last chunk starts at ``V - vocab_chunk``
    (no padded copy of ``unembed``), its columns already seen masked out.
    """
    vocab = unembed.shape[1]
    if not 1 <= k <= vocab:
        raise ValueError(f"k={k}: must be in [1, {vocab}] (the vocabulary size)")
    width = min(vocab_chunk, vocab)
    n, c, _ = hidden.shape

    def step(carry, i):
        top, lse = carry
        start = jnp.minimum(i * width, vocab - width)
        logits = lm_logits(hidden, jax.lax.dynamic_slice_in_dim(unembed, start, width, axis=1))
        seen = start + jnp.arange(width) < i * width  # the overlap of a last chunk moved back
        logits = jnp.where(seen, -jnp.inf, logits)
        candidates = jnp.concatenate([top, jax.lax.top_k(logits, min(k, width))[0]], axis=-1)
        return (jax.lax.top_k(candidates, k)[0], jnp.logaddexp(lse, jax.nn.logsumexp(logits, axis=-1))), None

    init = (jnp.full((n, c, k), -jnp.inf, jnp.float32), jnp.full((n, c), -jnp.inf, jnp.float32))
    (top, lse), _ = jax.lax.scan(step, init, jnp.arange(-(-vocab // width)))
    return top - lse[..., None]


class CompletionTopk(NamedTuple):
    """The indicators at each completion position, ``[N, T-1]`` (position ``t`` predicts token ``t+1``; 0 elsewhere)."""

    entropy: jax.Array  # renormalised top-k entropy, bits
    entropy_unnormalised: jax.Array  # top-k terms of the full entropy, bits
    mass: jax.Array  # top-k probability mass
    mask: jax.Array  # float32, 1 at completion tokens


def completion_topk(hidden: jax.Array, unembed: jax.Array, loss_mask: jax.Array, *, k: int = 10, chunk: int = 64,
                    vocab_chunk: int = 16384) -> CompletionTopk:
    """Top-k entropy (both forms) and mass of the distributions that predict each completion token.

    hidden: ``[N, T, H]`` final-normed hidden states; unembed: ``[H, V]``; loss_mask: ``[N, T]``,
    1 at completion *tokens* (as :func:`jaxalign.ops.logprobs.completion_logps`: token ``t`` is
    predicted at position ``t-1``). ``chunk`` positions, ``vocab_chunk`` columns at a time.
    """

    def one(h):
        top = lm_head_topk(h, unembed, k, vocab_chunk=vocab_chunk)
        return topk_entropy(top), topk_entropy(top, renormalise=False), topk_mass(top)

    mask = loss_mask[:, 1:].astype(jnp.float32)
    entropy, unnormalised, mass = map_chunks(one, (hidden[:, :-1],), chunk=chunk)
    return CompletionTopk(entropy * mask, unnormalised * mask, mass * mask, mask)
