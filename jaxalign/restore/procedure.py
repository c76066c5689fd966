"""The restoration run (Yang et al., IEEE S&P 2025, ``sgdg_rollback_final.py``): from a model
fine-tuned off an aligned one, copy back, step by step, the weights that most pull the
representation of harmful prompts toward the aligned model's, keeping the task score.

* ``h(x; θ)``: the raw output of decoder layer ``layer_end`` (default ``floor(4 L / 6)``) at the
  last token of prompt ``x`` in the model's chat template, left-padded; the aligned model's mean
  over the harmful prompts is ``t_H``, the fine-tuned model's over the benign (task) prompts ``t_B``.
* A recovery step: gradients of ``sum_batches -cos(mean_batch h(x; θ), t_H)``, summed over the
  steps so far (the reference never zeroes them outside rollback), then
  :func:`~jaxalign.restore.masks.recovery_mask` with ``K = ceil(recovery_rate * n)``, ``n`` the
  parameter count of all decoder layers; the chosen weights take their aligned values.
* Rollback: if after ``warmup_steps`` the task score is below ``(1 - metric_drop)`` times the
  fine-tuned model's, the run restarts from the fine-tuned model, and every step then returns
  ``rollback_rate`` of its restored weights to their fine-tuned values
  (:func:`~jaxalign.restore.masks.rollback_mask`, from fresh gradients of
  ``-cos(mean h(benign), t_B)``; gradients are zeroed every step in this mode).
* Checkpoints every ``save_every`` steps; the model delivered is the last checkpoint before the
  first whose score falls to ``(1 - metric_drop)`` times the fine-tuned score or below (the
  fine-tuned model itself if that is the first), else the last.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jaxalign.data.preference.records import PreferenceRecord
from jaxalign.data.preference.tokens import tokenize_preference
from jaxalign.models.decoders import Decoder
from jaxalign.models.export import export_decoder
from jaxalign.objectives.scoring import score_examples
from jaxalign.ops.pooling import last_token
from jaxalign.restore.masks import recovery_mask, rollback_mask
from jaxalign.weights.loader import flatten, unflatten

Score = Callable[[dict], float]


@dataclasses.dataclass(frozen=True)
class RestoreConfig:
    """The reference's settings (``sgdg_rollback_final.py``, ``run_recover_exp.py``).

    Attributes:
      steps: recovery steps
      warmup_steps: steps before the task score decides on rollback
      save_every: checkpoint interval (the candidates for the delivered model)
      recovery_rate: share of the decoder layers' parameters restored per step (0.001-0.002)
      rollback_rate: share of a step's restored weights returned to the fine-tuned values
      metric_drop: the tolerated relative fall of the task score
      layer_end: the layer whose output represents a prompt; null: floor(4 L / 6)
      batch_size: prompts per gradient batch
      max_length: tokens per prompt (longer prompts keep their end)
    """

    steps: int = 20
    warmup_steps: int = 5
    save_every: int = 5
    recovery_rate: float = 0.002
    rollback_rate: float = 0.2
    metric_drop: float = 0.05
    layer_end: int | None = None
    batch_size: int = 8
    max_length: int = 256

    def __post_init__(self):
        for name in ("steps", "warmup_steps", "save_every", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)}: must be >= 1")
        for name in ("recovery_rate", "rollback_rate", "metric_drop"):
            if not 0 < getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)}: must be in (0, 1)")


def check_same_shapes(aligned: Decoder, finetuned: Decoder) -> None:
    """The two models must be one architecture: the first tensor that differs is named."""
    depths = aligned.config.num_hidden_layers, finetuned.config.num_hidden_layers
    if depths[0] != depths[1]:
        raise ValueError(f"{aligned.path} has {depths[0]} layers and {finetuned.path} {depths[1]}: restore needs a "
                         "model fine-tuned from the aligned one, of the same shape")
    a, f = flatten(aligned.params), flatten(finetuned.params)
    for name in sorted(set(a) | set(f)):
        if name not in a or name not in f:
            raise ValueError(f"{name} is in only one of the models ({aligned.path}, {finetuned.path}): restore needs "
                             "a model fine-tuned from the aligned one, of the same shape")
        if a[name].shape != f[name].shape:
            raise ValueError(f"{name} has shape {a[name].shape} in {aligned.path} and {f[name].shape} in "
                             f"{finetuned.path}: restore needs a model fine-tuned from the aligned one")


def eligible(params: dict) -> list[str]:
    """The stacked ``[L, ...]`` layer parameters restoration may touch (in their layers below
    ``layer_end``, axis 0), norms excluded."""
    return sorted(p for p in flatten(params) if p.startswith("layers.") and not p.rsplit(".", 2)[-2].endswith("norm"))


def layer_parameter_count(params: dict) -> int:
    return sum(int(np.prod(v.shape)) for p, v in flatten(params).items() if p.startswith("layers."))


def prompt_batches(decoder: Decoder, prompts: Sequence[str], batch_size: int, max_length: int) -> list[tuple]:
    """Chat-templated prompts (no response), left-padded to one length, in batches of
    ``batch_size`` with a row mask (the last batch filled with masked rows): one compile."""
    if not prompts:
        raise ValueError("the prompt set is empty: give at least one prompt")
    tok = decoder.tokenizer
    chat = bool(getattr(tok, "chat_template", None))
    texts = [tok.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True, tokenize=False)
             if chat else p for p in prompts]
    ids = [tok(t, add_special_tokens=not chat)["input_ids"][-max_length:] for t in texts]
    length = max(map(len, ids))
    n = math.ceil(len(ids) / batch_size) * batch_size
    tokens = np.full((n, length), tok.pad_token_id or 0, np.int32)
    mask = np.zeros((n, length), np.int32)
    for r, x in enumerate(ids):
        tokens[r, length - len(x):], mask[r, length - len(x):] = x, 1
    rows = (np.arange(n) < len(ids)).astype(np.float32)
    return [(tokens[i:i + batch_size], mask[i:i + batch_size], rows[i:i + batch_size]) for i in range(0, n, batch_size)]


class Representations:
    """``h(x; θ)`` and the direction gradients for one decoder and one ``layer_end``."""

    def __init__(self, decoder: Decoder, layer_end: int):
        self.decoder = decoder

        def batch_mean(params, ids, mask, rows):
            h = last_token(decoder.hidden(params, ids, mask, output_layer=layer_end), mask)  # [B, H]
            return (h * rows[:, None]).sum(0) / rows.sum()

        def neg_cos(params, ids, mask, rows, target):
            m = batch_mean(params, ids, mask, rows)
            return -(m @ target) / (jnp.linalg.norm(m) * jnp.linalg.norm(target))

        self._mean = jax.jit(lambda p, i, m, r: (batch_mean(p, i, m, r) * r.sum(), r.sum()))
        self._grad = jax.jit(jax.value_and_grad(neg_cos))

    def mean(self, params: dict, batches: list[tuple]) -> np.ndarray:
        """``[H]``: the mean representation over every prompt."""
        total = [self._mean(params, *b) for b in batches]
        return np.asarray(sum(s for s, _ in total) / sum(n for _, n in total))

    def grad(self, params: dict, batches: list[tuple], target: np.ndarray) -> tuple[float, dict]:
        """``sum_b -cos(mean_b h, target)`` and its gradient (summed over the batches)."""
        loss, grads = 0.0, None
        for b in batches:
            value, g = self._grad(params, *b, jnp.asarray(target))
            loss += float(value)
            grads = g if grads is None else jax.tree.map(jnp.add, grads, g)
        return loss, grads


def likelihood_score(decoder: Decoder, records: Sequence[PreferenceRecord], *, mesh: jax.sharding.Mesh,
                     batch_size: int = 8, max_length: int = 512, chat_template: str | None = "auto") -> Score:
    """A task score when the user brings none: ``exp(mean log-prob per completion token)`` of the
    task's reference completions (sft records), the geometric-mean token probability in (0, 1]:
    the fine-tuned skill, measured without generation."""
    tokens = tokenize_preference(decoder.tokenizer, records, max_length=max_length, chat_template=chat_template,
                                 long_prompts="drop")
    count = sum(len(ex.completions[0]) for ex in tokens.examples)
    buckets = tuple(b for b in (64, 128, 256, 512, 1024, 2048) if b < max_length) + (max_length,)

    def score(params: dict) -> float:
        logps = score_examples(decoder, params, tokens, mesh=mesh, batch_size=batch_size, buckets=buckets, chunk=256,
                               desc="task score")
        return float(np.exp(logps[:, 0].sum() / count))

    return score


def cosine_distance(a: np.ndarray, b: np.ndarray) -> float:
    return float(1 - a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def restore(aligned: Decoder, finetuned: Decoder, harmful: Sequence[str], benign: Sequence[str], *,
            cfg: RestoreConfig = RestoreConfig(), task_score: Score | None = None, output: str | Path | None = None,
            log: Callable[[str], None] = print) -> dict:
    """Runs the restoration; returns ``{"delivered": step, "params": ..., "steps": [per-checkpoint
    report: step, harmful cosine distance to t_H, task score, restored share], "rolled_back": bool}``.
    Without ``task_score`` there is no rollback and the last step is delivered. Checkpoints are
    written to ``output/step_<n>`` (and the delivered one to ``output/restored``) when given."""
    check_same_shapes(aligned, finetuned)
    depth = finetuned.config.num_hidden_layers
    layer_end = math.floor(4 * depth / 6) if cfg.layer_end is None else cfg.layer_end
    if not 1 <= layer_end <= depth:
        raise ValueError(f"layer_end={layer_end}: must be in 1..{depth} (the model's layers)")
    reps = Representations(finetuned, layer_end)
    harmful_b = prompt_batches(finetuned, harmful, cfg.batch_size, cfg.max_length)
    benign_b = prompt_batches(finetuned, benign, cfg.batch_size, cfg.max_length)
    t_h = reps.mean(aligned.params, harmful_b)
    t_b = reps.mean(finetuned.params, benign_b)
    names = eligible(finetuned.params)
    k = math.ceil(layer_parameter_count(finetuned.params) * cfg.recovery_rate)
    to_vec = lambda tree: np.concatenate([np.asarray(flatten(tree)[n][:layer_end], np.float32).ravel() for n in names])
    a_vec, f_vec = to_vec(aligned.params), to_vec(finetuned.params)
    shapes = [flatten(finetuned.params)[n][:layer_end].shape for n in names]

    def to_params(vec: np.ndarray) -> dict:
        flat = dict(flatten(finetuned.params))
        offset = 0
        for n, s in zip(names, shapes):
            size = int(np.prod(s))
            flat[n] = flat[n].at[:layer_end].set(jnp.asarray(vec[offset:offset + size].reshape(s), flat[n].dtype))
            offset += size
        return unflatten(flat, finetuned.params)

    def report(step: int, vec: np.ndarray) -> dict:
        params = to_params(vec)
        entry = {"step": step, "harmful_distance": cosine_distance(reps.mean(params, harmful_b), t_h),
                 "restored": float(np.mean(vec == a_vec) - np.mean(f_vec == a_vec))}
        if task_score is not None:
            entry["task_score"] = float(task_score(params))
        log(" ".join(f"{key}={value:.4g}" if isinstance(value, float) else f"{key}={value}"
                     for key, value in entry.items()))
        return entry

    def run(rollback: bool, steps: range, vec: np.ndarray, acc: np.ndarray, checkpoints: dict):
        for step in steps:
            _, g = reps.grad(to_params(vec), harmful_b, t_h)
            acc = to_vec(g) if rollback else acc + to_vec(g)
            mask = recovery_mask(vec, a_vec, acc, k)
            vec[mask] = a_vec[mask]
            if rollback:
                _, gb = reps.grad(to_params(vec), benign_b, t_b)
                back = rollback_mask(vec, f_vec, to_vec(gb), mask, cfg.rollback_rate)
                vec[back] = f_vec[back]
            if step % cfg.save_every == 0:
                checkpoints[step] = vec.copy()
        return vec, acc

    start = report(0, f_vec)
    floor = None if task_score is None else start["task_score"] * (1 - cfg.metric_drop)
    checkpoints: dict[int, np.ndarray] = {}
    warmup = min(cfg.warmup_steps, cfg.steps) if floor is not None else 0
    vec, acc = run(False, range(1, warmup + 1), f_vec.copy(), np.zeros_like(f_vec), checkpoints)
    rolled_back = floor is not None and task_score(to_params(vec)) < floor
    if rolled_back:
        log(f"task score below {floor:.4g} after {warmup} steps: restarting from the fine-tuned model with rollback")
        checkpoints.clear()
        run(True, range(1, cfg.steps + 1), f_vec.copy(), np.zeros_like(f_vec), checkpoints)
    else:
        run(False, range(warmup + 1, cfg.steps + 1), vec, acc, checkpoints)
    steps = [start]
    delivered = 0
    for step in sorted(checkpoints):
        entry = report(step, checkpoints[step])
        steps.append(entry)
        if output is not None:
            export_decoder(finetuned, jax.device_get(to_params(checkpoints[step])), Path(output) / f"step_{step}")
        if floor is not None and entry["task_score"] <= floor:
            break
        delivered = step
    final = f_vec if delivered == 0 else checkpoints[delivered]
    params = to_params(final)
    if output is not None:
        export_decoder(finetuned, jax.device_get(params), Path(output) / "restored")
    return {"delivered": delivered, "params": params, "steps": steps, "rolled_back": rolled_back,
            "layer_end": layer_end, "per_step": k}


__all__ = ["RestoreConfig", "check_same_shapes", "eligible", "likelihood_score", "restore"]
