"""Preference optimisation of causal LMs as a task of the training engine.

Chosen and rejected (or every completion column: KTO's KL completion, D2O's samples) go
through the policy in one forward, ``[B, C, T] -> [B*C, T]``; per-token log-probabilities
come through the LM head in chunks (:mod:`jaxalign.ops.logprobs`), so the ``[B*C, T, V]``
logits never exist. The reference model is either a frozen copy read inside the step (no
gradient), its log-probs precomputed once over the data set and cached to disk, or -- with
LoRA -- the frozen base itself (adapters off), so no second copy of the weights is held.

Trainable parameters are ``{"policy": ...}`` (full fine-tuning) or ``{"lora": ...}``; frozen
arrays are ``{"reference": ...}`` or ``{"base": ...}`` (LoRA), or nothing.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from tqdm.auto import tqdm

from jaxalign.data.preference import TokenizedPreference, load_preference, tokenize_preference
from jaxalign.data.stream import BatchStream, to_global
from jaxalign.eval.preference import completion_lengths, pair_summary
from jaxalign.losses import preference as losses
from jaxalign.models import lora as lora_lib
from jaxalign.models.decoders import Decoder, load_decoder
from jaxalign.models.llama import weights as llama_weights
from jaxalign.ops.logprobs import completion_logps
from jaxalign.sharding.rules import named_sharding
from jaxalign.train.config import TrainConfig

log = logging.getLogger(__name__)

DATA_KIND = {"preference": "paired", "unpaired": "unpaired", "negatives": "negatives"}
OBJECTIVE_DATA = {"dpo": "preference", "simpo": "preference", "cpo": "preference", "orpo": "preference",
                  "asft": "preference", "kto": "unpaired", "d2o": "negatives"}
BATCH_AXES = {"input_ids": ("batch", None, "length"), "attention_mask": ("batch", None, "length"),
              "loss_mask": ("batch", None, "length"), "label": ("batch",), "ref_logps": ("batch", None)}


def loss_names(cfg: TrainConfig) -> tuple[str, ...]:
    """The registry entries an objective uses (the DPO family selects by ``loss_type``)."""
    return tuple(cfg.objective.loss_type) if cfg.objective.name == "dpo" else (cfg.objective.name,)


def check_objective(cfg: TrainConfig) -> None:
    """Static checks of the objective against its data and options, before anything is loaded."""
    obj = cfg.objective
    want = OBJECTIVE_DATA[obj.name]
    if cfg.data.kind != want:
        raise ValueError(f"objective.name={obj.name} trains on data.kind={want} (got {cfg.data.kind})")
    names = loss_names(cfg)
    if obj.name == "dpo" and any(losses.LOSSES.get(n, losses.LOSSES["sigmoid"]).function != "dpo_loss" for n in names):
        raise ValueError(f"objective.loss_type={names}: only DPO-family losses ({', '.join(losses.DPO_LOSS_TYPES)}); "
                         "SimPO, CPO, ORPO, KTO, ASFT and D2O are objective.name values of their own")
    options = dict(obj.options)
    if obj.label_smoothing:
        options["label_smoothing"] = obj.label_smoothing
    if obj.loss_weights is not None:
        options["loss_weights"] = obj.loss_weights
    losses.validate_loss_options(names if obj.name == "dpo" else obj.name, resolved_beta(cfg), options)
    if obj.name == "kto" and obj.reference == "precomputed":
        raise ValueError("objective.reference=precomputed: KTO's KL completions are paired within each batch; "
                         "use objective.reference=model")


def resolved_beta(cfg: TrainConfig) -> float:
    """``objective.beta``, or the loss's own default when unset (SimPO's is 2.0)."""
    spec = losses.LOSSES.get(loss_names(cfg)[0])  # an unknown name is reported by validate_loss_options
    return cfg.objective.beta if cfg.objective.beta is not None else (spec.default_beta if spec else 0.1)


def needs_reference(cfg: TrainConfig) -> bool:
    return any(losses.LOSSES[n].needs_reference for n in loss_names(cfg))


@dataclasses.dataclass
class PreferenceTask:
    cfg: TrainConfig
    mesh: jax.sharding.Mesh
    decoder: Decoder
    tokens: TokenizedPreference
    stream: BatchStream
    params: dict
    param_axes: dict
    frozen: dict
    frozen_axes: dict
    lora_modules: dict | None = None
    ref_logps: np.ndarray | None = None  # [num_examples, C] when precomputed
    evaluator: "PreferenceEvaluator | None" = None
    eval_metric: str = "eval/rewards/accuracies"

    @classmethod
    def build(cls, cfg: TrainConfig, mesh: jax.sharding.Mesh) -> "PreferenceTask":
        check_objective(cfg)
        dtype = jnp.bfloat16 if cfg.model.dtype == "bfloat16" else jnp.float32
        decoder = load_decoder(cfg.model.name, mesh=mesh, dtype=dtype, num_layers=cfg.model.num_layers,
                               remat=cfg.model.remat)
        records = load_preference(cfg.data.path, DATA_KIND[cfg.data.kind], cfg.data.max_examples,
                                  cfg.data.skip_examples)
        tokens = tokenize_preference(decoder.tokenizer, records, max_length=cfg.model.max_length,
                                     max_prompt_length=cfg.data.max_prompt_length,
                                     max_completion_length=cfg.data.max_completion_length,
                                     chat_template=cfg.data.chat_template,
                                     num_samples=cfg.data.num_samples)
        stream = BatchStream(tokens.examples, cfg.data.batch_size, seed=cfg.seed, shuffle=cfg.data.shuffle)
        reference = needs_reference(cfg)
        lora_modules = None
        if cfg.model.lora.rank:
            lora_modules = lora_lib.target_modules(llama_weights.RULES, decoder.config.num_hidden_layers,
                                                   decoder.params, cfg.model.lora.targets)
            adapters, adapter_axes = lora_lib.init_lora(decoder.params, decoder.axes, lora_modules,
                                                        cfg.model.lora.rank, jax.random.PRNGKey(cfg.seed + 1))
            params, param_axes = {"lora": adapters}, {"lora": adapter_axes}
            frozen, frozen_axes = {"base": decoder.params}, {"base": decoder.axes}
            if reference and cfg.objective.reference_model:
                raise ValueError("objective.reference_model with model.lora: the frozen base is the reference; "
                                 "drop one of the two")
        else:
            params, param_axes = {"policy": decoder.params}, {"policy": decoder.axes}
            frozen, frozen_axes = {}, {}
            if reference and cfg.objective.reference == "model":
                # The loaded weights themselves: the train state holds its own copy of the policy.
                ref = (load_decoder(cfg.objective.reference_model, mesh=mesh, dtype=dtype,
                                    num_layers=cfg.model.num_layers) if cfg.objective.reference_model else decoder)
                frozen, frozen_axes = {"reference": ref.params}, {"reference": ref.axes}
        task = cls(cfg, mesh, decoder, tokens, stream, params, param_axes, frozen, frozen_axes, lora_modules)
        if reference and cfg.objective.reference == "precomputed":
            task.ref_logps = task.precompute_reference()
        task.evaluator = PreferenceEvaluator(task) if cfg.eval.data else None
        return task

    # ------------------------------------------------------------------ the model as the loss sees it

    @property
    def lora_scale(self) -> float:
        return self.cfg.model.lora.alpha / self.cfg.model.lora.rank

    def policy_params(self, params: dict, frozen: dict) -> dict:
        if "lora" in params:
            return lora_lib.apply_lora(frozen["base"], params["lora"], self.lora_scale)
        return params["policy"]

    def reference_params(self, params: dict, frozen: dict) -> dict:
        """The frozen reference: the LoRA base, a frozen copy, or (before training) the policy."""
        if "base" in frozen:
            return frozen["base"]
        return frozen.get("reference", params.get("policy"))

    def sequence_logps(self, model_params: dict, batch: dict) -> tuple[jax.Array, jax.Array]:
        """Summed completion log-probs and completion lengths, both ``[B, C]``."""
        ids = batch["input_ids"]
        b, c, t = ids.shape
        flat = lambda x: x.reshape(b * c, t)
        hidden = self.decoder.hidden(model_params, flat(ids), flat(batch["attention_mask"]))
        summed, lengths, _ = completion_logps(hidden, self.decoder.unembed_kernel(model_params), flat(ids),
                                              flat(batch["loss_mask"]), chunk=self.cfg.objective.logps_chunk)
        return summed.reshape(b, c), lengths.reshape(b, c)

    # ------------------------------------------------------------------ the engine's interface

    def batch_axes(self) -> dict:
        keys = ["input_ids", "attention_mask", "loss_mask"]
        if self.cfg.data.kind == "unpaired":
            keys.append("label")
        if self.ref_logps is not None:
            keys.append("ref_logps")
        return {k: BATCH_AXES[k] for k in keys}

    def value_and_grad(self):
        return jax.value_and_grad(self.loss_fn, has_aux=True)

    def loss_fn(self, params, batch, rng, frozen):
        logps, lengths = self.sequence_logps(self.policy_params(params, frozen), batch)
        if "ref_logps" in batch:
            ref = batch["ref_logps"]
        elif needs_reference(self.cfg):
            ref = jax.lax.stop_gradient(self.sequence_logps(self.reference_params(params, frozen), batch)[0])
        else:
            ref = None
        per_example, metrics = self.objective_loss(logps, lengths, ref, batch)
        return per_example.mean(), metrics

    def objective_loss(self, logps, lengths, ref, batch) -> tuple[jax.Array, dict]:
        """Per-example losses ``[B]`` and logged metrics from ``[B, C]`` log-probs."""
        obj = self.cfg.objective
        name, beta, opts = obj.name, resolved_beta(self.cfg), dict(obj.options)
        if obj.label_smoothing:
            opts["label_smoothing"] = obj.label_smoothing
        if name == "kto":
            loss = losses.kto_loss(logps[:, 0], ref[:, 0], batch["label"], logps[:, 1], ref[:, 1], beta=beta, **opts)
            return loss, {"logps/completion": logps[:, 0].mean()}
        if name == "d2o":
            loss = losses.d2o_loss(logps[:, 1:], ref[:, 1:], logps[:, 0], ref[:, 0], beta=beta, **opts)
            return loss, {"logps/rejected": logps[:, 0].mean(), "logps/samples": logps[:, 1:].mean()}
        chosen, rejected = logps[:, 0], logps[:, 1]
        if name == "dpo":
            loss_type = obj.loss_type[0] if len(obj.loss_type) == 1 else list(obj.loss_type)
            if obj.loss_weights is not None:
                opts["loss_weights"] = obj.loss_weights
            label_smoothing = opts.pop("label_smoothing", 0.0)
            rc, rr = (ref[:, 0], ref[:, 1]) if ref is not None else (jnp.zeros_like(chosen), jnp.zeros_like(rejected))
            loss = losses.dpo_loss(chosen, rejected, rc, rr, loss_type=loss_type, beta=beta,
                                   label_smoothing=label_smoothing, chosen_lengths=lengths[:, 0],
                                   rejected_lengths=lengths[:, 1], **opts)
        elif name in ("simpo", "orpo", "asft"):
            fn = getattr(losses, f"{name}_loss")
            loss = fn(chosen, rejected, lengths[:, 0], lengths[:, 1], beta=beta, **opts)
        else:  # cpo
            loss = losses.cpo_loss(chosen, rejected, lengths[:, 0], beta=beta, **opts)
        zero = jnp.zeros_like(chosen)
        metrics = losses.preference_metrics(chosen, rejected, *((ref[:, 0], ref[:, 1]) if ref is not None
                                                                 else (zero, zero)), beta)
        return loss, metrics

    def next_batch(self) -> dict:
        examples = self.stream.next()
        batch = self.tokens.collate(examples, self.cfg.data.buckets)
        if self.ref_logps is not None:
            batch["ref_logps"] = self.ref_logps[[ex.index for ex in examples]]
        return batch

    def evaluate(self, params) -> dict[str, float]:
        if self.evaluator is None:
            return {}
        return self.evaluator(self.policy_params(params, self.frozen))

    def export(self, params, directory: str) -> None:
        from jaxalign.models.export import export_decoder

        if "lora" in params:
            lora_lib.save_adapter(Path(directory) / "adapter", params["lora"], self.lora_modules, self.cfg.model.lora,
                                  self.cfg.model.name)
        export_decoder(self.decoder, jax.device_get(self.policy_params(params, self.frozen)), directory)

    # ------------------------------------------------------------------ reference log-probs

    def reference_cache_path(self) -> Path:
        """Where precomputed reference log-probs are kept: keyed by the reference model, its
        truncation and dtype, and every token of the data, so a change to any is a miss."""
        h = hashlib.sha1()
        cfg = self.cfg
        h.update(repr((cfg.objective.reference_model or cfg.model.name, cfg.model.num_layers, cfg.model.dtype,
                       self.tokens.columns)).encode())
        for ex in self.tokens.examples:
            h.update(ex.prompt.tobytes())
            for c in ex.completions:
                h.update(b"|" + c.tobytes())
        root = Path(cfg.checkpoint.dir).expanduser() if cfg.checkpoint.dir else Path.home() / ".cache" / "jaxalign"
        return root / f"ref_logps-{h.hexdigest()[:16]}.npy"

    def precompute_reference(self) -> np.ndarray:
        """``[num_examples, C]`` reference log-probs of every example, once, cached to disk."""
        path = self.reference_cache_path()
        if path.is_file():
            log.info("reference log-probs from %s", path)
            return np.load(path)
        ref_params = (load_decoder(self.cfg.objective.reference_model, mesh=self.mesh, dtype=self.decoder.dtype,
                                   num_layers=self.cfg.model.num_layers).params
                      if self.cfg.objective.reference_model else self.decoder.params)
        out = score_examples(self, ref_params, self.tokens.examples, desc="reference log-probs")
        if jax.process_index() == 0:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp.npy")
            np.save(tmp, out)
            tmp.replace(path)  # atomic: a killed run leaves no half-written cache
        return out


def score_examples(task: PreferenceTask, model_params: dict, examples: list, *, desc: str,
                   batch_size: int | None = None) -> np.ndarray:
    """Summed completion log-probs ``[len(examples), C]`` of ``model_params``, in global batches
    of ``batch_size`` (default ``data.batch_size``; the tail padded by repeating the last
    example), jit-compiled once per length bucket."""
    cfg = task.cfg
    size = batch_size or cfg.data.batch_size
    shardings = {k: named_sharding(task.mesh, BATCH_AXES[k]) for k in ("input_ids", "attention_mask", "loss_mask")}
    fn = jax.jit(lambda p, b: task.sequence_logps(p, b)[0])
    local = size // jax.process_count()
    rows = []
    for start in tqdm(range(0, len(examples), size), desc=desc, unit="batch", disable=len(examples) <= size):
        chunk = list(examples[start:start + size])
        chunk += [chunk[-1]] * (size - len(chunk))
        mine = chunk[jax.process_index() * local:(jax.process_index() + 1) * local]
        batch = task.tokens.collate(mine, cfg.data.buckets)
        batch = to_global({k: batch[k] for k in shardings}, shardings)
        with jax.set_mesh(task.mesh):
            logps = fn(model_params, batch)
        rows.append(np.asarray(multihost_utils.process_allgather(logps, tiled=True)))
    return np.concatenate(rows)[: len(examples)]


class PreferenceEvaluator:
    """Implicit-reward accuracy and margins on held-out pairs (``eval.data``), with the initial
    model as the reference: ``r = β (log π(y|x) - log π_ref(y|x))``, for every objective alike,
    plus the reference-free accuracies of :func:`jaxalign.eval.preference.pair_summary`.
    Reference log-probs are computed once, at construction."""

    def __init__(self, task: PreferenceTask):
        cfg = task.cfg
        self.task = task
        records = load_preference(cfg.eval.data, "paired", cfg.eval.max_examples, cfg.eval.skip_examples)
        self.tokens = tokenize_preference(task.decoder.tokenizer, records, max_length=cfg.model.max_length,
                                          max_prompt_length=cfg.data.max_prompt_length,
                                          max_completion_length=cfg.data.max_completion_length,
                                          chat_template=cfg.data.chat_template)
        self.eval_task = dataclasses.replace(task, tokens=self.tokens, evaluator=None)
        self.reference = self.score(task.reference_params(task.params, task.frozen), "eval reference")

    def score(self, model_params, desc: str) -> np.ndarray:
        return score_examples(self.eval_task, model_params, self.tokens.examples, desc=desc,
                              batch_size=self.task.cfg.eval.batch_size)

    def __call__(self, policy_params) -> dict[str, float]:
        policy = self.score(policy_params, "eval")
        summary = pair_summary(policy, self.reference, completion_lengths(self.tokens.examples),
                               resolved_beta(self.task.cfg))
        return {f"eval/{k}": v for k, v in summary.items()}
