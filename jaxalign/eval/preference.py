"""Preference evaluation: implicit-reward accuracy and margins of a causal LM on held-out pairs.

The implicit reward of a completion is ``r(x, y) = β (log π(y|x) - log π_ref(y|x))`` with
summed completion log-probabilities (DPO's reward, TRL's ``rewards/*`` metrics); accuracy is
the share of pairs with ``r(chosen) > r(rejected)``. Without a reference model the reward is
reference-free, ``β log π(y|x)``: the model's own preference by likelihood. The
length-normalised accuracy (mean log-prob per completion token, SimPO's reward, no
reference) and the summed-log-prob accuracy without reference are reported alongside: before
training the implicit rewards are all 0 (policy = reference), so those two are the
meaningful "before" figures, and summed log-probs favour short completions.

Scoring is the training evaluator's: the same tokenisation (TRL's truncation), the same
chunked log-probs, one compile per length bucket.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from jaxalign.config import load_recipe
from jaxalign.losses.preference import preference_metrics


def pair_summary(policy: np.ndarray, reference: np.ndarray, lengths: np.ndarray, beta: float) -> dict[str, float]:
    """Metrics over a whole data set from ``[N, 2]`` (chosen, rejected) summed log-probs of the
    policy and the reference and completion lengths in tokens: TRL's ``rewards/*`` and
    ``logps/*`` names, plus ``accuracy/logps`` (policy alone, summed) and
    ``accuracy/length_normalised`` (policy alone, per token)."""
    out = {k: float(v) for k, v in
           preference_metrics(policy[:, 0], policy[:, 1], reference[:, 0], reference[:, 1], beta).items()}
    per_token = policy / np.maximum(lengths, 1)
    out["accuracy/logps"] = float(np.mean(policy[:, 0] > policy[:, 1]))
    out["accuracy/length_normalised"] = float(np.mean(per_token[:, 0] > per_token[:, 1]))
    return out


def completion_lengths(examples) -> np.ndarray:
    """``[N, C]`` completion token counts of tokenised examples."""
    return np.array([[len(c) for c in ex.completions] for ex in examples], np.float64)


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
) -> dict:
    """Scores every usable pair of ``data`` under ``model`` (and ``ref``); returns TRL's metric
    names over the whole set (see :func:`pair_summary`) plus ``pairs``, ``dropped`` and ``truncated``.
    A pair whose prompt leaves no room for a completion within ``max_length`` is dropped
    (``dropped["prompt too long"]``), as are those training drops; none left is an error.
    ``mesh`` (data, fsdp, tensor) defaults to one device, or to every device of a multi-process
    run (whose processes score their shares of each batch together)."""
    import jax

    if mesh is None:
        mesh = (-1, 1, 1) if jax.process_count() > 1 else (1, 1, 1)
    from jaxalign.models.decoders import load_decoder
    from jaxalign.sharding import MeshConfig, make_mesh
    from jaxalign.sharding.mesh import resolve_axis_sizes
    from jaxalign.tasks.preference import PreferenceTask, score_examples
    from jaxalign.train.config import TrainConfig

    overrides = [f"model.name={model}", f"model.max_length={max_length}", f"model.dtype={dtype}",
                 "data.kind=preference", f"data.path={data}", f"data.batch_size={batch_size}", "data.shuffle=false",
                 "data.long_prompts=drop",
                 "objective.name=dpo", f"objective.beta={beta}",
                 *(f"mesh.{axis}={size}" for axis, size in zip(("data", "fsdp", "tensor"), mesh))]
    for key, value in (("model.num_layers", num_layers), ("data.max_examples", max_examples),
                       ("data.max_prompt_length", max_prompt_length),
                       ("data.max_completion_length", max_completion_length)):
        if value is not None:
            overrides.append(f"{key}={value}")
    cfg = load_recipe(TrainConfig, None, overrides)  # validates every setting before loading
    if chat_template is not None:  # free text (a Jinja template) does not survive key=value parsing
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, chat_template=chat_template))
    mesh = resolve_axis_sizes(MeshConfig(*mesh), jax.device_count()) if -1 in mesh else mesh
    if jax.process_count() > 1 and int(np.prod(mesh)) != jax.device_count():
        raise ValueError(f"mesh {tuple(mesh)}: a multi-process run scores over all {jax.device_count()} devices of "
                         "its processes; use --mesh -1,1,1 (or sizes multiplying to that)")
    devices = jax.devices()[: int(np.prod(mesh))]
    task = PreferenceTask.build(cfg, make_mesh(cfg.mesh, devices))
    examples = task.tokens.examples
    policy = score_examples(task, task.decoder.params, examples, desc="policy")
    if ref is None:
        reference = np.zeros_like(policy)
    else:
        ref_decoder = load_decoder(ref, mesh=task.mesh, dtype=task.decoder.dtype, num_layers=num_layers)
        if len(ref_decoder.tokenizer) != len(task.decoder.tokenizer) or ref_decoder.config.vocab_size != task.decoder.config.vocab_size:
            raise ValueError(f"--ref {ref}: its tokenizer/vocabulary differs from --model {model}'s; "
                             "the reference must share the policy's tokenizer")
        reference = score_examples(task, ref_decoder.params, examples, desc="reference")
    summary: dict = pair_summary(policy, reference, completion_lengths(examples), beta)
    summary["pairs"] = len(examples)
    summary["dropped"] = dict(task.tokens.drops)
    summary["truncated"] = dict(task.tokens.truncated)
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
