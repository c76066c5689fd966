"""Over-optimisation indicators of a preference-trained causal LM on held-out text and on its own samples.

Shi et al., "Understanding Likelihood Over-optimisation in Direct Alignment Algorithms"
(arXiv 2410.11677, §4.4): the entropy over the top ``k = 10`` next-token probabilities (bits)
turns down when DPO/IPO over-optimise, and the top-k probability mass falls when the output
becomes random (Hinge). Both come from :mod:`jaxalign.ops.topk_entropy`, in the same forward
as the summed completion log-probs that preference evaluation scores
(:func:`pair_scores`), and are reported as masked means over every completion token of the
held-out set (:func:`indicator_summary`).

The paper does not say at which tokens it averages; it presents the entropy as a cheap stand-in
for sampling several outputs per input, so the model's own distributions matter.
:func:`sample_completions` continues held-out prompts with the policy (the KV-cache sampler of
:mod:`jaxalign.inference.generate`) so that the same indicators can be read at its own tokens.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from jaxalign.data.preference.collate import PreferenceExample
from jaxalign.data.preference.tokens import TokenizedPreference
from jaxalign.inference.generate import generate
from jaxalign.models.decoders import Decoder
from jaxalign.ops.logprobs import completion_logps
from jaxalign.ops.topk_entropy import completion_topk

INDICATORS = ("entropy", "entropy_unnormalised", "mass")


def pair_scores(decoder: Decoder, params: dict, batch: dict, *, chunk: int, k: int) -> dict:
    """Per-column sums of one batch, from one forward.

    batch: ``input_ids``, ``attention_mask``, ``loss_mask``, each ``[B, C, T]``. Returns ``[B, C]``
    arrays: ``logps`` (summed completion log-probs), ``tokens`` (completion tokens) and, for
    each of :data:`INDICATORS`, its sum over the completion tokens (divided by ``tokens`` in
    :func:`indicator_summary`).
    """
    ids = batch["input_ids"]
    b, c, t = ids.shape
    flat = lambda x: x.reshape(b * c, t)
    hidden = decoder.hidden(params, flat(ids), flat(batch["attention_mask"]))
    unembed = decoder.unembed_kernel(params)
    logps = completion_logps(hidden, unembed, flat(ids), flat(batch["loss_mask"]), chunk=chunk)
    top = completion_topk(hidden, unembed, flat(batch["loss_mask"]), k=k, chunk=chunk)
    sums = {"logps": logps.summed, "tokens": top.mask.sum(-1), **{n: getattr(top, n).sum(-1) for n in INDICATORS}}
    return {name: x.reshape(b, c) for name, x in sums.items()}


def indicator_summary(scores: dict[str, np.ndarray]) -> dict[str, float]:
    """``topk/<indicator>``: masked means over every completion token of :func:`pair_scores`'
    ``[N, C]`` sums (all columns pooled, so a long completion weighs more than a short one)."""
    tokens = max(float(scores["tokens"].sum()), 1.0)
    return {f"topk/{name}": float(scores[name].sum()) / tokens for name in INDICATORS}


def sample_completions(decoder: Decoder, params: dict, tokens: TokenizedPreference, *, prompts: int,
                       max_new_tokens: int, temperature: float, seed: int) -> TokenizedPreference:
    """The first ``prompts`` held-out prompts continued by the policy ``params`` (up to
    ``max_new_tokens``, sampled at ``temperature``, 0: greedy), as one-column examples to score
    like held-out completions; each sample is cut to fit ``tokens.max_length``. The same
    ``seed`` at every evaluation, so that curves compare checkpoints rather than draws."""
    chosen = tokens.examples[:prompts]
    out = generate(decoder, params, [ex.prompt.tolist() for ex in chosen], max_new_tokens=max_new_tokens,
                   temperature=temperature, seed=seed)
    examples = [PreferenceExample(ex.prompt, (np.asarray(ids[: tokens.max_length - len(ex.prompt)], np.int32),),
                                  index=ex.index) for ex, ids in zip(chosen, out.token_ids)]
    return dataclasses.replace(tokens, examples=[ex for ex in examples if len(ex.completions[0])],
                               columns=("sample",))
