"""Sequence log-probabilities of completions under a causal LM, in the step and in batches.

:func:`sequence_logps` is the pure function every preference objective and evaluator reads:
``[B, C, T]`` token columns (chosen and rejected, or every completion column) through the
decoder in one forward, per-token log-probs through the LM head in chunks
(:mod:`jaxalign.ops.logprobs`), so the ``[B*C, T, V]`` logits never exist -- unless they fit a
memory budget, when they are made whole once and nothing is recomputed.
:func:`score_examples` runs it over a list of tokenised examples in global batches across the
mesh (every process scores its rows; all receive every score), as reference precomputation,
PoFT's aligned models and preference evaluation need.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from tqdm.auto import tqdm

from jaxalign.data.preference.tokens import TokenizedPreference
from jaxalign.data.stream import to_global
from jaxalign.losses.dpo import ld_logps, wpo_weights
from jaxalign.models.decoders import Decoder
from jaxalign.ops.attention import BranchSegments
from jaxalign.ops.logprobs import completion_logps, logits_chunk, token_logps
from jaxalign.sharding.rules import named_sharding

TOKEN_AXES = {"input_ids": ("batch", None, "length"), "attention_mask": ("batch", None, "length"),
              "loss_mask": ("batch", None, "length")}
# data.packing != none (jaxalign.data.preference.packing): rows [R, L] and per-example [B, C, Tc] indices
PACKED_AXES = {**{k: ("batch", "length") for k in ("input_ids", "attention_mask", "segment_ids", "positions",
                                                   "branch_ids", "predecessor")},
               "token_index": ("batch", None, None), "loss_mask": ("batch", None, None)}


def sequence_logps(decoder: Decoder, params: dict, batch: dict, *, chunk: int, ld_alpha: float | None = None,
                   weights: bool = False, logits_memory_mb: float = 0.0, window: int | None = None):
    """Summed completion log-probs and completion lengths of ``batch`` under ``params``.

    Args:
      decoder: the model (its forward and LM head).
      params: its parameters (the policy, a reference, a LoRA-merged view).
      batch: padded, ``input_ids``, ``attention_mask``, ``loss_mask``, each ``[B, C, T]``; or
        packed (:func:`~jaxalign.data.preference.packing.pack_preference`, ``PACKED_AXES``).
      chunk: sequence positions per LM-head chunk.
      ld_alpha: LD-DPO's weight of the longer completion's tail (:func:`jaxalign.losses.ld_logps`);
        ``None``: plain sums.
      weights: also WPO's per-pair weights.
      logits_memory_mb: whole ``[B*C, T-1, V]`` logits, not chunked, when they fit in this many MiB
        (:func:`jaxalign.ops.logprobs.logits_chunk`); 0: always chunked.
      window: no completion is longer than this (the data's ``max_completion_length``): the LM
        head runs on that many positions per row only (:func:`jaxalign.ops.logprobs.completion_logps`).

    Returns:
      ``(summed [B, C], lengths [B, C])``, and with ``weights`` WPO's ``[B]`` weights third.
    """
    if "token_index" in batch:
        per_token, mask, lss = packed_token_logps(decoder, params, batch, chunk=chunk, log_sum_sq=weights,
                                                  logits_memory_mb=logits_memory_mb)
    else:
        ids = batch["input_ids"]
        b, c, t = ids.shape
        flat = lambda x: x.reshape(b * c, t)
        hidden = decoder.hidden(params, flat(ids), flat(batch["attention_mask"]))
        unembed = decoder.unembed_kernel(params)
        width = t - 1 if window is None else min(window, t - 1)
        chunk = logits_chunk(b * c, width, unembed.shape[-1], chunk=chunk, memory_mb=logits_memory_mb)
        out = completion_logps(hidden, unembed, flat(ids), flat(batch["loss_mask"]), chunk=chunk,
                               log_sum_sq=weights, window=window)
        unflat = lambda x: None if x is None else x.reshape(b, c, width)
        per_token, mask, lss = unflat(out.per_token), unflat(out.mask), unflat(out.log_sum_sq)
    summed = ld_logps(per_token, mask, ld_alpha) if ld_alpha is not None else per_token.sum(-1)
    lengths = mask.sum(-1)
    if not weights:
        return summed, lengths
    return summed, lengths, wpo_weights(per_token, lss, mask)


def packed_token_logps(decoder: Decoder, params: dict, batch: dict, *, chunk: int, log_sum_sq: bool = False,
                       logits_memory_mb: float = 0.0):
    """Per-token completion log-probs of a packed batch, laid out per example.

    One forward of the ``[R, L]`` rows (segments, per-segment positions, and for
    ``shared_prompt`` branches sharing their prompt). ``token_index`` picks each completion
    token's slot, and its log-prob comes from the hidden state of that slot's ``predecessor``
    (the prompt's last token for a completion's first token under ``shared_prompt``): the LM
    head runs on the ``[B, C, Tc]`` completion tokens only, never on prompt slots.

    Returns ``(per_token [B, C, Tc], mask [B, C, Tc] float32, log Σ p² [B, C, Tc] or None)``,
    ``per_token`` 0 off the completions, as the padded path's (completion tokens first).
    """
    ids = batch["input_ids"]
    segments = batch["segment_ids"]
    if "branch_ids" in batch:
        segments = BranchSegments(segments, batch["branch_ids"])
    hidden = decoder.module(params)(ids, batch["attention_mask"], positions=batch["positions"],
                                    segment_ids=segments)[0]
    r, length, h = hidden.shape
    index = batch["token_index"]  # [B, C, Tc] flat slots of the global rows
    b, c, tc = index.shape
    source = (index // length) * length + batch["predecessor"].reshape(-1)[index]
    picked = hidden.reshape(r * length, h)[source].reshape(b * c, tc, h)
    targets = ids.reshape(-1)[index].reshape(b * c, tc)
    unembed = decoder.unembed_kernel(params)
    chunk = logits_chunk(b * c, tc, unembed.shape[-1], chunk=chunk, memory_mb=logits_memory_mb)
    out = token_logps(picked, unembed, targets, chunk=chunk, log_sum_sq=log_sum_sq)
    per_token, lss = out if log_sum_sq else (out, None)
    mask = batch["loss_mask"].astype(jnp.float32)
    unflat = lambda x: None if x is None else x.reshape(b, c, tc)
    return unflat(per_token) * mask, mask, unflat(lss)


def score_examples(decoder: Decoder, params: dict, tokens: TokenizedPreference, *, mesh: jax.sharding.Mesh,
                   batch_size: int, buckets: Sequence[int], chunk: int, ld_alpha: float | None = None,
                   desc: str = "scoring", scores: Callable | None = None):
    """Summed completion log-probs ``[len(tokens), C]`` of every example of ``tokens`` under
    ``params``, in global batches of ``batch_size`` over ``mesh`` (the tail padded by repeating
    the last example), compiled once per length bucket; a progress bar on process 0 when there
    is more than one batch. ``scores(params, batch)``, if given, replaces the summed log-probs:
    any pytree of ``[B, ...]`` arrays, returned with ``[len(tokens), ...]`` NumPy leaves."""
    shardings = {k: named_sharding(mesh, axes) for k, axes in TOKEN_AXES.items()}
    fn = jax.jit(scores or (lambda p, b: sequence_logps(decoder, p, b, chunk=chunk, ld_alpha=ld_alpha)[0]))
    local = batch_size // jax.process_count()
    mine = slice(jax.process_index() * local, (jax.process_index() + 1) * local)
    examples = tokens.examples
    rows = []
    for start in tqdm(range(0, len(examples), batch_size), desc=desc, unit="batch",
                      disable=len(examples) <= batch_size or jax.process_index() > 0):
        part = list(examples[start:start + batch_size])
        part += [part[-1]] * (batch_size - len(part))
        batch = tokens.collate(part, buckets, local=mine)
        batch = to_global({k: batch[k] for k in shardings}, shardings)
        with jax.set_mesh(mesh):
            logps = fn(params, batch)
        rows.append(jax.tree.map(np.asarray, multihost_utils.process_allgather(logps, tiled=True)))
    return jax.tree.map(lambda *parts: np.concatenate(parts)[: len(examples)], *rows)
