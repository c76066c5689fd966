"""Batched autoregressive generation with a causal decoder and its key/value cache, under jit.

Prompts of different lengths are left-padded to one bucketed length ``P`` (a power of two,
at least 16), so the cache holds ``P + max_new_tokens`` slots and every row's next token is
written at the same slot. One ``forward_cached`` call prefills the cache with the prompts and
gives the first token; a ``jax.lax.while_loop`` then feeds one token per step until every row
has produced a stop token or ``max_new_tokens`` are out. Rows that stopped keep running (on
a pad token, their output discarded), as in ``transformers``.

Decoding is greedy for ``temperature=0`` (``transformers`` ``do_sample=False``); otherwise
tokens are sampled from ``softmax(logits / temperature)`` restricted to the ``top_k`` most
likely tokens and then to the nucleus of mass ``top_p``, the order and cut rules of
``transformers``' ``TemperatureLogitsWarper`` / ``TopKLogitsWarper`` / ``TopPLogitsWarper``
(:func:`filter_logits`), with an explicit PRNG key.

One program is compiled per model, decoding mode (greedy or sampling) and shape
``(batch, P, max_new_tokens)``; temperature, top-k, top-p, the stop tokens (up to four, or
any count in the same power-of-two bucket) and the key are runtime arguments, so changing
them does not recompile.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxalign.models.decoders import Decoder
from jaxalign.models.llama.model import position_ids

MIN_PROMPT_BUCKET = 16


@dataclasses.dataclass(frozen=True)
class Generation:
    """What :func:`generate` returns, one entry per prompt in input order.

    ``token_ids``: the generated tokens, up to and including the stop token when one came.
    ``texts``: those tokens decoded without the stop token and special tokens.
    ``finished``: whether the row ended on a stop token (else it ran out of ``max_new_tokens``).
    ``prompt_token_ids``: the tokens each prompt was fed as (after any chat template).
    """

    token_ids: list[list[int]]
    texts: list[str]
    finished: list[bool]
    prompt_token_ids: list[list[int]]


def filter_logits(logits: jax.Array, temperature: jax.Array, top_k: jax.Array, top_p: jax.Array) -> jax.Array:
    """``[B, V]`` logits divided by ``temperature``, with the tokens outside the top ``top_k`` (0:
    no limit) and then outside the nucleus of mass ``top_p`` (1: no limit) set to ``-inf``.

    As ``transformers``: top-k keeps every token tied with the k-th largest; top-p, over the
    top-k survivors sorted ascending, drops those whose cumulative probability is
    ``<= 1 - top_p`` and always keeps the most likely token (tokens tied with the least likely
    kept one are all kept, where ``transformers`` breaks the tie by its sort order).
    """
    logits = logits.astype(jnp.float32) / temperature
    vocab = logits.shape[-1]
    asc = jnp.sort(logits, axis=-1)
    k = jnp.where(top_k > 0, jnp.minimum(top_k, vocab), vocab)
    kth = jax.lax.dynamic_slice_in_dim(asc, vocab - k, 1, axis=-1)  # the k-th largest, [B, 1]
    logits = jnp.where(logits < kth, -jnp.inf, logits)
    asc = jnp.where(asc < kth, -jnp.inf, asc)
    cumulative = jnp.cumsum(jax.nn.softmax(asc, axis=-1), axis=-1)
    removed = (cumulative <= 1 - top_p).at[:, -1].set(False)
    # the removed tokens are the smallest ones: the first kept one in ascending order is the cut
    cut = jnp.take_along_axis(asc, jnp.sum(removed, axis=-1, keepdims=True), axis=-1)
    return jnp.where((top_p < 1) & (logits < cut), -jnp.inf, logits)


def _next_token(logits, sample: bool, key, temperature, top_k, top_p):
    if not sample:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    return jax.random.categorical(key, filter_logits(logits, temperature, top_k, top_p), axis=-1).astype(jnp.int32)


def _decode_fn(decoder: Decoder, sample: bool) -> Callable:
    """The pure decoding program of ``decoder`` (whose ``params`` it never reads)."""

    def decode(params, input_ids, attention_mask, stop_ids, pad_id, key, temperature, top_k, top_p, *, max_new_tokens):
        batch, prompt_len = input_ids.shape
        cache = decoder.init_cache(batch, prompt_len + max_new_tokens)
        hidden, cache = decoder.forward_cached(params, input_ids, attention_mask, position_ids(attention_mask), cache)
        key, sub = jax.random.split(key)
        # left-padded: the last slot holds every row's last prompt token
        token = _next_token(decoder.unembed(params, hidden[:, -1]), sample, sub, temperature, top_k, top_p)
        out = jnp.full((batch, max_new_tokens), pad_id, jnp.int32).at[:, 0].set(token)
        state = (jnp.int32(1), token, jnp.sum(attention_mask, axis=-1, dtype=jnp.int32), cache, out,
                 jnp.isin(token, stop_ids), key)

        def cond(state):
            step, *_, done, _ = state
            return (step < max_new_tokens) & ~jnp.all(done)

        def body(state):
            step, token, position, cache, out, done, key = state
            hidden, cache = decoder.forward_cached(
                params, token[:, None], jnp.ones((batch, 1), jnp.int32), position[:, None], cache
            )
            key, sub = jax.random.split(key)
            token = _next_token(decoder.unembed(params, hidden[:, 0]), sample, sub, temperature, top_k, top_p)
            token = jnp.where(done, pad_id, token)
            out = jax.lax.dynamic_update_slice(out, token[:, None], (0, step))
            return step + 1, token, position + 1, cache, out, done | jnp.isin(token, stop_ids), key

        return jax.lax.while_loop(cond, body, state)[4]

    return decode


# (graphdef, sample) -> jitted program; jit itself keeps one executable per input shape.
_PROGRAMS: dict[tuple, Callable] = {}


def decode_program(decoder: Decoder, sample: bool) -> Callable:
    """The jitted ``decode(params, input_ids, attention_mask, stop_ids, pad_id, key, temperature,
    top_k, top_p, *, max_new_tokens) -> [B, max_new_tokens]`` for ``decoder``'s architecture,
    shared by every decoder of the same module graph (same config and dtype)."""
    cache_key = (decoder.graphdef, bool(sample))
    program = _PROGRAMS.get(cache_key)
    if program is None:
        # a copy without parameters or tokenizer, so the cached program keeps no weights alive
        bare = dataclasses.replace(decoder, params={}, axes={}, tokenizer=None)
        program = jax.jit(_decode_fn(bare, bool(sample)), static_argnames=("max_new_tokens",))
        _PROGRAMS[cache_key] = program
    return program


def prompt_bucket(length: int, limit: int) -> int:
    """The padded prompt length: the next power of two >= ``length`` (at least 16), capped at ``limit``."""
    return min(max(MIN_PROMPT_BUCKET, 1 << max(0, length - 1).bit_length()), limit)


def _stop_array(stops: Sequence[int]) -> np.ndarray:
    """The stop ids padded with -1 (never a token) to a power of two >= 4, so that stop sets of
    different sizes share a compiled program."""
    size = max(4, 1 << max(0, len(stops) - 1).bit_length())
    return np.asarray(list(stops) + [-1] * (size - len(stops)), np.int32)


def _is_int(x) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


def _prompt_ids(decoder: Decoder, prompts, chat: bool) -> list[list[int]]:
    if isinstance(prompts, (str, bytes)) or not isinstance(prompts, Sequence):
        raise ValueError("prompts must be a list of strings or of token-id lists (for one prompt, pass [prompt])")
    if len(prompts) == 0:
        raise ValueError("prompts is empty: nothing to generate from")
    tokenizer = decoder.tokenizer
    if all(isinstance(p, str) for p in prompts):
        empty = [i for i, p in enumerate(prompts) if not p]
        if empty:
            raise ValueError(f"prompts {empty} are empty strings")
        if chat:
            if not getattr(tokenizer, "chat_template", None):
                raise ValueError(f"chat=True but the tokenizer of {decoder.path} has no chat template; "
                                 "pass chat=False (plain text), or render the prompts yourself")
            texts = [tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                                   add_generation_prompt=True) for p in prompts]
            ids = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
        else:
            ids = [tokenizer(p)["input_ids"] for p in prompts]
        empty = [i for i, p in enumerate(ids) if not p]
        if empty:
            raise ValueError(f"prompts {empty} tokenise to no tokens")
        return [list(map(int, p)) for p in ids]
    if chat:
        raise ValueError("chat=True needs text prompts (each is rendered as a user message); got token ids")
    ids = []
    for i, p in enumerate(prompts):
        if isinstance(p, (str, bytes)) or not isinstance(p, (Sequence, np.ndarray)) or not all(_is_int(t) for t in p):
            raise ValueError(f"prompt {i} is neither a string nor a list of token ids (mixing the two is not allowed)")
        if len(p) == 0:
            raise ValueError(f"prompt {i} is an empty token list")
        bad = [int(t) for t in p if not 0 <= t < decoder.config.vocab_size]
        if bad:
            raise ValueError(f"prompt {i} has token ids {bad[:5]} outside the vocabulary [0, {decoder.config.vocab_size})")
        ids.append([int(t) for t in p])
    return ids


def generate(
    decoder: Decoder,
    params: dict | None,
    prompts: Sequence[str] | Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    temperature: float = 0.0,
    top_p: float = 1.0,
    top_k: int = 0,
    stop_token_ids: Sequence[int] | None = None,
    seed: int | jax.Array = 0,
    chat: bool = False,
) -> Generation:
    """Continues each prompt by up to ``max_new_tokens`` tokens (see the module docstring).

    ``params``: the decoder's parameters (``None``: ``decoder.params``). ``prompts``: strings
    (tokenised with the decoder's tokenizer and its special tokens) or token-id lists.
    ``chat``: render each string as one user message with the tokenizer's chat template and
    the generation prompt. ``temperature=0``: greedy (``top_k``/``top_p`` then unused).
    ``stop_token_ids``: default ``decoder.stop_token_ids``; ``()`` never stops early.
    ``seed``: an int or a JAX PRNG key (sampling only).
    """
    if not _is_int(max_new_tokens) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens={max_new_tokens!r}: must be an int >= 1")
    if isinstance(temperature, bool) or not isinstance(temperature, numbers.Real) or not 0 <= temperature < math.inf:
        raise ValueError(f"temperature={temperature!r}: must be a finite number >= 0 (0 decodes greedily)")
    if isinstance(top_p, bool) or not isinstance(top_p, numbers.Real) or not 0 < top_p <= 1:
        raise ValueError(f"top_p={top_p!r}: must be in (0, 1] (1 disables nucleus filtering)")
    if not _is_int(top_k) or top_k < 0:
        raise ValueError(f"top_k={top_k!r}: must be an int >= 0 (0 disables top-k filtering)")
    if not (_is_int(seed) or isinstance(seed, jax.Array)):
        raise ValueError(f"seed={seed!r}: must be an int or a JAX PRNG key")
    vocab = decoder.config.vocab_size
    stops = decoder.stop_token_ids if stop_token_ids is None else tuple(stop_token_ids)
    if not all(_is_int(t) and 0 <= t < vocab for t in stops):
        raise ValueError(f"stop_token_ids={stops!r}: must be token ids in [0, {vocab})")
    ids = _prompt_ids(decoder, prompts, chat)
    longest = max(len(p) for p in ids)
    limit = decoder.max_length - max_new_tokens
    if longest > limit:
        raise ValueError(f"the longest prompt has {longest} tokens; with max_new_tokens={max_new_tokens} the model's "
                         f"maximum length {decoder.max_length} leaves room for {max(limit, 0)} prompt tokens")
    sample = temperature > 0
    if sample:
        key = jax.random.key(seed) if _is_int(seed) else seed
    else:
        key = jax.random.key(0)  # unused by the greedy program

    length = prompt_bucket(longest, limit)
    pad_id = decoder.tokenizer.pad_token_id
    pad_id = 0 if pad_id is None else int(pad_id)
    input_ids = np.full((len(ids), length), pad_id, np.int32)
    mask = np.zeros((len(ids), length), np.int32)
    for row, p in enumerate(ids):
        input_ids[row, length - len(p):] = p
        mask[row, length - len(p):] = 1

    out = decode_program(decoder, sample)(
        decoder.params if params is None else params,
        input_ids,
        mask,
        _stop_array(stops),
        np.int32(pad_id),
        key,
        np.float32(temperature if sample else 1.0),
        np.int32(top_k),
        np.float32(top_p),
        max_new_tokens=max_new_tokens,
    )
    out = np.asarray(out)
    stop_set = set(stops)
    token_ids, texts, finished = [], [], []
    for row in out.tolist():
        end = next((i for i, t in enumerate(row) if t in stop_set), None)
        finished.append(end is not None)
        kept = row if end is None else row[:end]
        token_ids.append(kept if end is None else row[: end + 1])
        texts.append(decoder.tokenizer.decode(kept, skip_special_tokens=True))
    return Generation(token_ids=token_ids, texts=texts, finished=finished, prompt_token_ids=ids)


__all__ = ["Generation", "decode_program", "filter_logits", "generate", "prompt_bucket"]
