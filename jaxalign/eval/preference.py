"""Preference evaluation: implicit-reward accuracy and margins of a causal LM on held-out pairs.

The implicit reward of a completion is ``r(x, y) = β (log π(y|x) - log π_ref(y|x))`` with
summed completion log-probabilities (DPO's reward, TRL's ``rewards/*`` metrics); accuracy is
the share of pairs with ``r(chosen) > r(rejected)``. Without a reference model the reward is
reference-free, ``β log π(y|x)``: the model's own preference by likelihood. The
length-normalised accuracy (mean log-prob per completion token, SimPO's reward, no
reference) and the summed-log-prob accuracy without reference are reported alongside: before
training the implicit rewards are all 0 (policy = reference), so those two are the
meaningful "before" figures, and summed log-probs favour short completions.

Scoring is training's (:func:`jaxalign.objectives.scoring.score_examples`): the same
tokenisation (TRL's truncation), the same chunked log-probs, one compile per length bucket.
:class:`PreferenceEvaluator` runs it during training, :func:`evaluate_preference` on a model
loaded by name (``jaxalign eval preference``).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jaxalign.data.preference import load_preference
from jaxalign.data.preference.tokens import TokenizedPreference, tokenize_preference
from jaxalign.eval.overoptimisation import (
    indicator_summary,
    pair_scores,
    sample_completions,
)
from jaxalign.losses.dpo import preference_metrics
from jaxalign.models.decoders import Decoder, load_decoder
from jaxalign.objectives.scoring import score_examples
from jaxalign.sharding import MeshConfig, make_mesh
from jaxalign.sharding.mesh import batch_parallel_size, resolve_axis_sizes


def pair_summary(policy: np.ndarray, reference: np.ndarray, lengths: np.ndarray, beta: float) -> dict[str, float]:
    """Metrics over a whole data set from ``[N, 2]`` (chosen, rejected) summed log-probs of the
    policy and the reference and completion lengths in tokens: TRL's ``rewards/*`` and
    ``logps/*`` names, plus ``accuracy/logps`` (policy alone, summed),
    ``accuracy/length_normalised`` (policy alone, per token) and the policy's mean token
    log-likelihoods ``logps_per_token/{chosen,rejected}`` and their ``margin`` (the likelihoods
    Shi et al. 2024, arXiv 2410.11677, follow: per completion, averaged over pairs)."""
    out = {k: float(v) for k, v in
           preference_metrics(policy[:, 0], policy[:, 1], reference[:, 0], reference[:, 1], beta).items()}
    per_token = policy / np.maximum(lengths, 1)
    out["accuracy/logps"] = float(np.mean(policy[:, 0] > policy[:, 1]))
    out["accuracy/length_normalised"] = float(np.mean(per_token[:, 0] > per_token[:, 1]))
    out["logps_per_token/chosen"] = float(np.mean(per_token[:, 0]))
    out["logps_per_token/rejected"] = float(np.mean(per_token[:, 1]))
    out["logps_per_token/margin"] = float(np.mean(per_token[:, 0] - per_token[:, 1]))
    return out


def completion_lengths(examples) -> np.ndarray:
    """``[N, C]`` completion token counts of tokenised examples."""
    return np.array([[len(c) for c in ex.completions] for ex in examples], np.float64)


class PreferenceEvaluator:
    """Implicit-reward accuracy and margins on held-out pairs during training, with the initial
    model as the reference: ``r = β (log π(y|x) - log π_ref(y|x))``, for every objective alike,
    plus the reference-free accuracies and mean token log-likelihoods of :func:`pair_summary`
    and the over-optimisation indicators ``topk/*`` of
    :mod:`jaxalign.eval.overoptimisation`, from the same forward. Reference scores are computed
    once, at construction; the first evaluation of a policy that still equals the reference
    (step 0) reuses them instead of scoring again. With ``sample_prompts`` the policy also
    continues that many held-out prompts at every evaluation, and ``samples/topk/*`` are the
    indicators at its own tokens.

    Args:
      decoder: the policy's model.
      tokens: the tokenised held-out pairs.
      initial: the initial policy's parameters (the reference).
      mesh: scoring is sharded over it like training.
      beta: β of the implicit rewards.
      batch_size, buckets, chunk: scoring's global batch, length buckets and LM-head chunk.
      topk: k of the top-k indicators.
      sample_prompts, max_new_tokens, temperature, seed: the policy's own samples
        (:func:`~jaxalign.eval.overoptimisation.sample_completions`); 0 prompts: none.
    """

    def __init__(self, decoder: Decoder, tokens: TokenizedPreference, initial: dict, *, mesh: jax.sharding.Mesh,
                 beta: float, batch_size: int, buckets: Sequence[int], chunk: int, topk: int = 10,
                 sample_prompts: int = 0, max_new_tokens: int = 32, temperature: float = 1.0, seed: int = 0):
        self.tokens, self.beta = tokens, beta
        scores = functools.partial(pair_scores, decoder, chunk=chunk, k=topk)  # one object: one jit cache
        self.score = lambda params, data, desc: score_examples(decoder, params, data, mesh=mesh, batch_size=batch_size,
                                                               buckets=buckets, chunk=chunk, desc=desc, scores=scores)
        self.sample = functools.partial(sample_completions, decoder, prompts=sample_prompts,
                                        max_new_tokens=max_new_tokens, temperature=temperature, seed=seed)
        self.sample_prompts = sample_prompts
        self._initial = initial
        self.reference = self.score(initial, tokens, "eval reference")

    def __call__(self, policy_params: dict) -> dict[str, float]:
        initial, self._initial = self._initial, None  # compared once: training donates its buffers
        policy = (self.reference if identical(policy_params, initial)
                  else self.score(policy_params, self.tokens, "eval"))
        summary = pair_summary(policy["logps"], self.reference["logps"], completion_lengths(self.tokens.examples),
                               self.beta)
        summary.update(indicator_summary(policy))
        if self.sample_prompts:
            samples = self.score(policy_params, self.sample(policy_params, self.tokens), "eval samples")
            summary.update({f"samples/{k}": v for k, v in indicator_summary(samples).items()})
        return {f"eval/{k}": v for k, v in summary.items()}


def identical(a, b) -> bool:
    """Whether two parameter trees hold equal values (False for ``None`` or donated buffers)."""
    if a is None or b is None or jax.tree.structure(a) != jax.tree.structure(b):
        return False
    pairs = list(zip(jax.tree.leaves(a), jax.tree.leaves(b)))
    if any(x.is_deleted() or y.is_deleted() for x, y in pairs):
        return False
    return all(x.shape == y.shape and bool(jnp.array_equal(x, y)) for x, y in pairs)


def evaluate_preference(
    model: str,
    data: str,
    *,
    ref: str | None = None,
    beta: float = 0.1,
    max_examples: int | None = None,
    max_length: int = 512,
    max_prompt_length: int | None = None,
    max_completion_length: int | None = None,
    chat_template: str | None = None,
    batch_size: int = 8,
    num_layers: int | None = None,
    dtype: str = "float32",
    mesh: tuple[int, int, int] | None = None,
    buckets: Sequence[int] = (16, 32, 64, 128, 256, 512),
    logps_chunk: int = 64,
    topk: int = 10,
) -> dict:
    """Scores every usable pair of ``data`` under ``model`` (and ``ref``); returns TRL's metric
    names over the whole set (see :func:`pair_summary`), the policy's over-optimisation
    indicators ``topk/*`` (:func:`~jaxalign.eval.overoptimisation.indicator_summary`, ``k = topk``)
    plus ``pairs``, ``dropped`` and ``truncated``.
    A pair whose prompt leaves no room for a completion within ``max_length`` is dropped
    (``dropped["prompt too long"]``), as are those training drops; none left is an error.
    ``mesh`` (data, fsdp, tensor) defaults to one device, or to every device of a multi-process
    run (whose processes score their shares of each batch together)."""
    if beta <= 0:
        raise ValueError(f"--beta={beta}: must be > 0")
    if max_length < 4:
        raise ValueError(f"--max-length={max_length}: must be >= 4")
    if topk < 1:
        raise ValueError(f"--topk={topk}: must be >= 1 (the paper's k is 10)")
    if mesh is None:
        mesh = (-1, 1, 1) if jax.process_count() > 1 else (1, 1, 1)
    sizes = resolve_axis_sizes(MeshConfig(*mesh), jax.device_count()) if -1 in mesh else tuple(mesh)
    if jax.process_count() > 1 and int(np.prod(sizes)) != jax.device_count():
        raise ValueError(f"mesh {tuple(sizes)}: a multi-process run scores over all {jax.device_count()} devices of "
                         "its processes; use --mesh -1,1,1 (or sizes multiplying to that)")
    device_mesh = make_mesh(MeshConfig(*sizes), jax.devices()[: int(np.prod(sizes))])
    shards = batch_parallel_size(device_mesh)
    if batch_size < 1 or batch_size % shards:
        raise ValueError(f"--batch-size={batch_size}: must be a positive multiple of the {shards} data-parallel "
                         f"shards of mesh {tuple(sizes)}")
    compute_dtype = jnp.bfloat16 if dtype == "bfloat16" else jnp.float32
    decoder = load_decoder(model, mesh=device_mesh, dtype=compute_dtype, num_layers=num_layers)
    if topk > decoder.config.vocab_size:
        raise ValueError(f"--topk={topk}: more than the {decoder.config.vocab_size} tokens of {model}'s vocabulary")
    records = load_preference(data, "paired", max_examples)
    tokens = tokenize_preference(decoder.tokenizer, records, max_length=max_length,
                                 max_prompt_length=max_prompt_length, max_completion_length=max_completion_length,
                                 chat_template=chat_template, long_prompts="drop")
    score = lambda m, params, desc, **kw: score_examples(m, params, tokens, mesh=device_mesh, batch_size=batch_size,
                                                         buckets=buckets, chunk=logps_chunk, desc=desc, **kw)
    scores = score(decoder, decoder.params, "policy",
                   scores=functools.partial(pair_scores, decoder, chunk=logps_chunk, k=topk))
    policy = scores["logps"]
    if ref is None:
        reference = np.zeros_like(policy)
    else:
        ref_decoder = load_decoder(ref, mesh=device_mesh, dtype=compute_dtype, num_layers=num_layers)
        if (len(ref_decoder.tokenizer) != len(decoder.tokenizer)
                or ref_decoder.config.vocab_size != decoder.config.vocab_size):
            raise ValueError(f"--ref {ref}: its tokenizer/vocabulary differs from --model {model}'s; "
                             "the reference must share the policy's tokenizer")
        reference = score(ref_decoder, ref_decoder.params, "reference")
    summary: dict = pair_summary(policy, reference, completion_lengths(tokens.examples), beta)
    summary.update(indicator_summary(scores))
    summary["pairs"] = len(tokens.examples)
    summary["dropped"] = dict(tokens.drops)
    summary["truncated"] = dict(tokens.truncated)
    return summary


def render_table(summary: dict, title: str):
    """A rich table of the metrics (accuracies as percentages)."""
    from rich.table import Table

    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in summary.items():
        if isinstance(value, dict):
            value = ", ".join(f"{k}: {v}" for k, v in value.items() if v) or "none"
        elif "accurac" in key:
            value = f"{100 * value:.2f}%"
        elif isinstance(value, float):
            value = f"{value:.4f}"
        table.add_row(key, str(value))
    return table


def write_json(path: str | Path, summary: dict, meta: dict) -> None:
    Path(path).write_text(json.dumps({**meta, **summary}, indent=2))
