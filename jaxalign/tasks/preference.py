"""Preference optimisation of causal LMs as a task of the training engine.

Chosen and rejected (or every completion column: KTO's KL completion, D2O's samples) go
through the policy in one forward, ``[B, C, T] -> [B*C, T]``; per-token log-probabilities
come through the LM head in chunks (:mod:`jaxalign.ops.logprobs`), so the ``[B*C, T, V]``
logits never exist. The reference model is either a frozen copy read inside the step (no
gradient), its log-probs precomputed once over the data set and cached to disk, or -- with
LoRA -- the frozen base itself (adapters off), so no second copy of the weights is held.
With TR-DPO (``objective.sync_ref_model``) the reference is tracked state instead, mixed
towards the policy every ``ref_model_sync_steps`` and checkpointed with the run.

Objectives beyond sequence log-probs: PoFT scores each target once under M aligned models
(their own tokenizers; cached to disk like the reference); DCKD and ADPA read frozen teacher
LMs of the same vocabulary at every completion position (:mod:`jaxalign.ops.teacher`).

Trainable parameters are ``{"policy": ...}`` (full fine-tuning) or ``{"lora": ...}``; frozen
arrays are ``{"reference": ...}``, ``{"base": ...}`` (LoRA), the teachers
``{"teacher", "teacher_reference"}``, or nothing; tracked ones ``{"reference": ...}`` or nothing.
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

from jaxalign import distributed
from jaxalign.data.cached import cache_preference, preference_examples
from jaxalign.data.pipeline import Pipeline, streaming_pipeline
from jaxalign.data.preference import load_preference
from jaxalign.data.preference.tokens import TokenizedPreference, tokenize_preference
from jaxalign.data.stream import BatchStream, to_global
from jaxalign.data.token_cache import source_fingerprint
from jaxalign.eval.preference import completion_lengths, pair_summary
from jaxalign.losses import preference as losses
from jaxalign.models import lora as lora_lib
from jaxalign.models.decoders import Decoder, load_decoder
from jaxalign.models.llama import weights as llama_weights
from jaxalign.ops.logprobs import completion_logps
from jaxalign.ops.teacher import advantage_expectation, distill_kl
from jaxalign.sharding.rules import named_sharding
from jaxalign.train.checkpoint import checkpoint_path
from jaxalign.train.config import TrainConfig

log = logging.getLogger(__name__)

DATA_KIND = {"preference": "paired", "unpaired": "unpaired", "negatives": "negatives", "sft": "sft"}
OBJECTIVE_DATA = {"dpo": "preference", "simpo": "preference", "cpo": "preference", "orpo": "preference",
                  "asft": "preference", "kto": "unpaired", "d2o": "negatives", "poft": "sft", "dckd": "preference",
                  "adpa": "sft"}
TEACHERS = {"dckd": ("teacher",), "adpa": ("teacher", "teacher_reference")}  # ObjectiveConfig fields
BATCH_AXES = {"input_ids": ("batch", None, "length"), "attention_mask": ("batch", None, "length"),
              "loss_mask": ("batch", None, "length"), "label": ("batch",), "ref_logps": ("batch", None),
              "aligned_scores": ("batch", None)}


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
                         "SimPO, CPO, ORPO, KTO, ASFT, D2O, PoFT, DCKD and ADPA are objective.name values of their own")
    options = dict(obj.options)
    if obj.label_smoothing:
        options["label_smoothing"] = obj.label_smoothing
    if obj.loss_weights is not None:
        options["loss_weights"] = obj.loss_weights
    losses.validate_loss_options(names if obj.name == "dpo" else obj.name, resolved_beta(cfg), options)
    if obj.name == "kto" and obj.reference == "precomputed":
        raise ValueError("objective.reference=precomputed: KTO's KL completions are paired within each batch; "
                         "use objective.reference=model")
    variants = [f for f, on in (("use_weighting", obj.use_weighting), ("ld_alpha", obj.ld_alpha is not None),
                                ("sync_ref_model", obj.sync_ref_model)) if on]
    if variants and obj.name != "dpo":
        raise ValueError(f"objective.{variants[0]}: a DPO-family option (objective.name=dpo), not for {obj.name}")
    if obj.use_weighting and {"aot", "aot_unpaired"} & set(names):
        raise ValueError("objective.use_weighting: WPO weights are not defined for the aot losses (as in TRL)")
    if obj.sync_ref_model:
        why = ("model.lora: the frozen base is the reference" if cfg.model.lora.rank else
               "objective.reference=precomputed: a synced reference changes" if obj.reference == "precomputed" else
               f"objective.loss_type={names}: it reads no reference" if not needs_reference(cfg) else None)
        if why:
            raise ValueError(f"objective.sync_ref_model (TR-DPO) with {why}; drop one of the two")
    if obj.name == "poft" and not obj.aligned_models:
        raise ValueError("objective.name=poft needs objective.aligned_models: the aligned models scoring each target")
    for field in ("teacher", "teacher_reference"):
        wanted = field in TEACHERS.get(obj.name, ())
        if wanted and not getattr(obj, field):
            raise ValueError(f"objective.name={obj.name} needs objective.{field}: a causal LM sharing the policy's "
                             "vocabulary")
        if getattr(obj, field) and not wanted:
            raise ValueError(f"objective.{field} is read by {' and '.join(n for n, t in TEACHERS.items() if field in t)}"
                             f", not by objective.name={obj.name}")
    precomputed = ("objective.name=poft" if obj.name == "poft" else "objective.reference=precomputed"
                   if obj.reference == "precomputed" and needs_reference(cfg) else None)
    if cfg.data.pipeline == "streaming" and precomputed:
        raise ValueError(f"data.pipeline=streaming with {precomputed}: scores precomputed for every record need the "
                         "whole data set in memory; use data.pipeline=memory")
    if obj.teacher_top_k is not None and obj.name != "dckd":
        raise ValueError(f"objective.teacher_top_k is DCKD's, not objective.name={obj.name}'s")


def resolved_beta(cfg: TrainConfig) -> float:
    """``objective.beta``, or the loss's own default when unset (SimPO's is 2.0)."""
    spec = losses.LOSSES.get(loss_names(cfg)[0])  # an unknown name is reported by validate_loss_options
    return cfg.objective.beta if cfg.objective.beta is not None else (spec.default_beta if spec else 0.1)


def needs_reference(cfg: TrainConfig) -> bool:
    return any(losses.LOSSES[n].needs_reference for n in loss_names(cfg))


def check_same_vocabulary(student: Decoder, teacher: Decoder, field: str) -> None:
    """Token-level distillation compares distributions over one vocabulary, id by id."""
    sv, tv = student.config.vocab_size, teacher.config.vocab_size
    if sv != tv or student.tokenizer.get_vocab() != teacher.tokenizer.get_vocab():
        raise ValueError(f"{field}={teacher.path}: its vocabulary ({tv} ids) is not the policy's ({sv} ids, "
                         f"{student.path}); token-level distillation needs the same tokenizer and vocabulary")


@dataclasses.dataclass
class PreferenceTask:
    cfg: TrainConfig
    mesh: jax.sharding.Mesh
    decoder: Decoder
    tokens: TokenizedPreference
    stream: BatchStream | Pipeline
    params: dict
    param_axes: dict
    frozen: dict
    frozen_axes: dict
    lora_modules: dict | None = None
    ref_logps: np.ndarray | None = None  # [num_records, C] when precomputed (rows by record index)
    aligned_scores: np.ndarray | None = None  # PoFT: [num_records, M]
    teachers: dict[str, Decoder] = dataclasses.field(default_factory=dict)
    tracked: dict = dataclasses.field(default_factory=dict)
    tracked_axes: dict = dataclasses.field(default_factory=dict)
    evaluator: "PreferenceEvaluator | None" = None
    eval_metric: str = "eval/rewards/accuracies"

    @classmethod
    def build(cls, cfg: TrainConfig, mesh: jax.sharding.Mesh) -> "PreferenceTask":
        check_objective(cfg)
        dtype = jnp.bfloat16 if cfg.model.dtype == "bfloat16" else jnp.float32
        decoder = load_decoder(cfg.model.name, mesh=mesh, dtype=dtype, num_layers=cfg.model.num_layers,
                               remat=cfg.model.remat)
        kind = DATA_KIND[cfg.data.kind]
        read = lambda: load_preference(cfg.data.path, kind, cfg.data.max_examples, cfg.data.skip_examples)
        options = dict(max_prompt_length=cfg.data.max_prompt_length, max_completion_length=cfg.data.max_completion_length,
                       chat_template=cfg.data.chat_template, num_samples=cfg.data.num_samples,
                       long_prompts=cfg.data.long_prompts)
        if cfg.data.pipeline == "streaming":
            file = source_fingerprint(cfg.data.path)
            table, tokens = cache_preference(decoder.tokenizer, read,
                                             file and [kind, cfg.data.max_examples, cfg.data.skip_examples, file],
                                             kind=kind, max_length=cfg.model.max_length, cache_dir=cfg.data.cache_dir,
                                             workers=cfg.data.workers, **options)
            stream = None  # the pipeline, once the task that collates its batches exists
        else:
            records = read()
            tokens = tokenize_preference(decoder.tokenizer, records, max_length=cfg.model.max_length, **options)
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
        tracked, tracked_axes = {}, {}
        if cfg.objective.sync_ref_model:
            tracked, tracked_axes = {"reference": frozen.pop("reference")}, {"reference": frozen_axes.pop("reference")}
            if jax.tree.map(jnp.shape, tracked["reference"]) != jax.tree.map(jnp.shape, params["policy"]):
                raise ValueError(f"objective.sync_ref_model: objective.reference_model={cfg.objective.reference_model} "
                                 "is not shaped like the policy, so it cannot be mixed with it")
        teachers = {}
        for field in TEACHERS.get(cfg.objective.name, ()):
            teachers[field] = load_decoder(getattr(cfg.objective, field), mesh=mesh, dtype=dtype)
            check_same_vocabulary(decoder, teachers[field], f"objective.{field}")
            frozen[field], frozen_axes[field] = teachers[field].params, teachers[field].axes
        task = cls(cfg, mesh, decoder, tokens, stream, params, param_axes, frozen, frozen_axes, lora_modules,
                   teachers=teachers, tracked=tracked, tracked_axes=tracked_axes)
        if reference and cfg.objective.reference == "precomputed":
            task.ref_logps = task.precompute_reference()
        if cfg.objective.name == "poft":
            task.aligned_scores = task.precompute_aligned(records)
        if stream is None:
            task.stream = streaming_pipeline(task, len(table), lambda rows, local: task.collate(
                preference_examples(table, rows), local))
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

    def sequence_logps(self, model_params: dict, batch: dict, *, weights: bool = False):
        """Summed completion log-probs and completion lengths, both ``[B, C]`` (LD-DPO's
        length-desensitised sums with ``objective.ld_alpha``); with ``weights`` also WPO's
        per-pair weights ``[B]``."""
        ids = batch["input_ids"]
        b, c, t = ids.shape
        flat = lambda x: x.reshape(b * c, t)
        hidden = self.decoder.hidden(model_params, flat(ids), flat(batch["attention_mask"]))
        out = completion_logps(hidden, self.decoder.unembed_kernel(model_params), flat(ids), flat(batch["loss_mask"]),
                               chunk=self.cfg.objective.logps_chunk, log_sum_sq=weights)
        unflat = lambda x: x.reshape(b, c, t - 1)
        ld_alpha = self.cfg.objective.ld_alpha
        summed = (losses.ld_logps(unflat(out.per_token), unflat(out.mask), ld_alpha) if ld_alpha is not None
                  else out.summed.reshape(b, c))
        lengths = out.lengths.reshape(b, c)
        if not weights:
            return summed, lengths
        return summed, lengths, losses.wpo_weights(unflat(out.per_token), unflat(out.log_sum_sq), unflat(out.mask))

    # ------------------------------------------------------------------ the engine's interface

    def batch_axes(self) -> dict:
        keys = ["input_ids", "attention_mask", "loss_mask"]
        if self.cfg.data.kind == "unpaired":
            keys.append("label")
        if self.ref_logps is not None:
            keys.append("ref_logps")
        if self.aligned_scores is not None:
            keys.append("aligned_scores")
        return {k: BATCH_AXES[k] for k in keys}

    def value_and_grad(self):
        return jax.value_and_grad(self.loss_fn, has_aux=True)

    def loss_fn(self, params, batch, rng, frozen):
        if self.teachers:
            return self.teacher_loss(params, batch, frozen)
        wpo = self.cfg.objective.use_weighting
        logps, lengths, *weights = self.sequence_logps(self.policy_params(params, frozen), batch, weights=wpo)
        if "ref_logps" in batch:
            ref = batch["ref_logps"]
        elif needs_reference(self.cfg):
            ref = jax.lax.stop_gradient(self.sequence_logps(self.reference_params(params, frozen), batch)[0])
        else:
            ref = None
        per_example, metrics = self.objective_loss(logps, lengths, ref, batch)
        if wpo:
            per_example = per_example * weights[0]
            metrics["wpo/weights"] = weights[0].mean()
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
        if name == "poft":
            scores = batch["aligned_scores"]
            loss = losses.poft_loss(logps[:, 0], lengths[:, 0], scores, beta=beta)
            mean_logp = logps[:, 0] / jnp.maximum(lengths[:, 0], 1)
            return loss, {"logps/completion": logps[:, 0].mean(),
                          "poft/margin": (mean_logp - scores.mean(-1)).mean()}
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

    def teacher_loss(self, params, batch, frozen) -> tuple[jax.Array, dict]:
        """DCKD or ADPA: the student against frozen teacher LMs at every completion position."""
        obj = self.cfg.objective
        student = self.policy_params(params, frozen)
        ids = batch["input_ids"]
        b, c, t = ids.shape
        flat_ids, flat_mask = ids.reshape(b * c, t), batch["attention_mask"].reshape(b * c, t)
        mask = batch["loss_mask"][..., 1:].astype(jnp.float32)  # [B, C, T-1]: position t scores token t+1

        def states(decoder: Decoder, p: dict) -> tuple[jax.Array, jax.Array]:
            """Hidden states at the predicting positions [B*C, T-1, H] and the LM head."""
            return decoder.hidden(p, flat_ids, flat_mask)[:, :-1], decoder.unembed_kernel(p)

        h, w = states(self.decoder, student)
        teachers = {k: jax.tree.map(jax.lax.stop_gradient, states(d, frozen[k])) for k, d in self.teachers.items()}
        unflat = lambda x: x.reshape(b, c, t - 1)
        if obj.name == "dckd":
            opts = dict(obj.options)
            renormalize = opts.pop("renormalize", False)
            tok, kl = distill_kl(h, w, *teachers["teacher"], flat_ids[:, 1:], top_k=obj.teacher_top_k,
                                 renormalize=renormalize, chunk=obj.logps_chunk)
            tok, kl = unflat(tok), unflat(kl)
            loss = losses.dckd_combine(kl[:, 0], mask[:, 0], kl[:, 1], mask[:, 1], tok[:, 0], **opts)
            token_mean = lambda x, m: losses.token_mean_contributions(x, m).mean()
            return loss.mean(), {"nll/chosen": token_mean(-tok[:, 0], mask[:, 0]),
                                 "distill/kl_chosen": token_mean(kl[:, 0], mask[:, 0]),
                                 "distill/kl_rejected": token_mean(kl[:, 1], mask[:, 1])}
        expected = unflat(advantage_expectation(h, w, *teachers["teacher"], *teachers["teacher_reference"],
                                                chunk=obj.logps_chunk))[:, 0]
        per_example = losses.token_mean_contributions(-expected, mask[:, 0])
        return per_example.mean(), {"adpa/advantage": -per_example.mean()}

    def update_tracked(self, tracked: dict, params: dict, steps_done: jax.Array) -> dict:
        """TR-DPO: ``ref <- α · policy + (1 - α) · ref`` after every ``ref_model_sync_steps``
        optimiser updates (TRL's ``SyncRefModelCallback``)."""
        obj = self.cfg.objective
        alpha = obj.ref_model_mixup_alpha
        period = obj.ref_model_sync_steps * self.cfg.optim.grad_accum
        mix = lambda ref: jax.tree.map(lambda r, p: (alpha * p + (1 - alpha) * r).astype(r.dtype), ref,
                                       params["policy"])
        return {"reference": jax.lax.cond(steps_done % period == 0, mix, lambda ref: ref, tracked["reference"])}

    def collate(self, examples: list, local: slice) -> dict:
        """A global batch's examples -> this process's arrays (rows ``local``), with their
        precomputed scores."""
        batch = self.tokens.collate(examples, self.cfg.data.buckets, local=local)
        rows = [ex.index for ex in examples[local]]
        if self.ref_logps is not None:
            batch["ref_logps"] = self.ref_logps[rows]
        if self.aligned_scores is not None:
            batch["aligned_scores"] = self.aligned_scores[rows]
        return batch

    def next_batch(self) -> dict:
        if isinstance(self.stream, Pipeline):
            return self.stream.next()
        return self.collate(self.stream.next(), self.stream.local)

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

    # ------------------------------------------------------------------ scores precomputed once

    def cached(self, tag: str, key: tuple, compute) -> np.ndarray:
        """``compute()``'s array, kept in ``checkpoint.dir`` (else ``~/.cache/jaxalign``) as
        ``<tag>-<hash>.npy``: ``key`` must name everything the array depends on. Written
        atomically, so a killed run leaves no half-written file."""
        cfg = self.cfg
        h = hashlib.sha1(repr(key).encode())
        for ex in self.tokens.examples:
            h.update(ex.prompt.tobytes())
            for c in ex.completions:
                h.update(b"|" + c.tobytes())
        root = checkpoint_path(cfg.checkpoint.dir) if cfg.checkpoint.dir else checkpoint_path("~/.cache/jaxalign")
        path = root / f"{tag}-{h.hexdigest()[:16]}.npy"
        # Computing is collective (sharded scoring): read the cache only if every process has it.
        if all(hit == "1" for hit in distributed.gather(f"cache {tag}", "1" if path.is_file() else "0")):
            log.info("%s from %s", tag, path)
            with path.open("rb") as f:
                return np.load(f)
        out = compute()
        if distributed.is_main():
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp.npy")
            with tmp.open("wb") as f:
                np.save(f, out)
            tmp.rename(path)
        return out

    def by_record(self, rows: np.ndarray, examples: list) -> np.ndarray:
        """Rows of ``examples`` placed at their records' indices (NaN where a record has no example)."""
        size = max(ex.index for ex in (*self.tokens.examples, *examples)) + 1
        out = np.full((size, rows.shape[1]), np.nan, np.float32)
        out[[ex.index for ex in examples]] = rows
        return out

    def precompute_reference(self) -> np.ndarray:
        """``[num_records, C]`` reference log-probs of every example, once, cached to disk."""
        cfg = self.cfg

        def compute():
            ref_params = (load_decoder(cfg.objective.reference_model, mesh=self.mesh, dtype=self.decoder.dtype,
                                       num_layers=cfg.model.num_layers).params
                          if cfg.objective.reference_model else self.decoder.params)
            rows = score_examples(self, ref_params, self.tokens.examples, desc="reference log-probs")
            return self.by_record(rows, self.tokens.examples)

        key = (cfg.objective.reference_model or cfg.model.name, cfg.model.num_layers, cfg.model.dtype,
               self.tokens.columns, cfg.objective.ld_alpha)
        return self.cached("ref_logps", key, compute)

    def precompute_aligned(self, records: list) -> np.ndarray:
        """PoFT's ``[num_records, M]`` scores ``r_j = log p_j(y|x) / |y|_j``: each target under
        each aligned model, tokenised with that model's own tokenizer (same truncation settings)
        and cached to disk. Examples that an aligned model's tokenisation drops are dropped from
        training too (counted and logged)."""
        cfg = self.cfg
        settings = dict(max_length=cfg.model.max_length, max_prompt_length=cfg.data.max_prompt_length,
                        max_completion_length=cfg.data.max_completion_length, chat_template=cfg.data.chat_template,
                        long_prompts=cfg.data.long_prompts)

        def scores(name: str):
            model = load_decoder(name, mesh=self.mesh, dtype=self.decoder.dtype)
            tokens = tokenize_preference(model.tokenizer, records, **settings)
            scorer = dataclasses.replace(self, decoder=model, tokens=tokens, evaluator=None)
            summed = score_examples(scorer, model.params, tokens.examples, desc=f"PoFT scores of {name}")
            lengths = np.maximum(completion_lengths(tokens.examples), 1)  # [n, 1]
            return self.by_record(summed / lengths, tokens.examples)

        columns = [self.cached("poft_scores", (name, cfg.model.dtype, sorted(settings.items())),
                               lambda name=name: scores(name)) for name in cfg.objective.aligned_models]
        width = max(len(c) for c in columns)
        out = np.concatenate([np.pad(c, ((0, width - len(c)), (0, 0)), constant_values=np.nan) for c in columns], 1)
        scored = [ex for ex in self.tokens.examples if np.isfinite(out[ex.index]).all()]
        if not scored:
            raise ValueError("objective.aligned_models: no target survived every aligned model's tokenisation")
        if len(scored) < len(self.tokens.examples):
            log.warning("PoFT: %d of %d examples dropped (an aligned model's tokenisation dropped them)",
                        len(self.tokens.examples) - len(scored), len(self.tokens.examples))
            drops = {**self.tokens.drops, "unscored by an aligned model": len(self.tokens.examples) - len(scored)}
            self.tokens = dataclasses.replace(self.tokens, examples=scored, drops=drops)
            self.stream = BatchStream(scored, cfg.data.batch_size, seed=cfg.seed, shuffle=cfg.data.shuffle)
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
    for start in tqdm(range(0, len(examples), size), desc=desc, unit="batch", disable=len(examples) <= size or jax.process_index() > 0):
        chunk = list(examples[start:start + size])
        chunk += [chunk[-1]] * (size - len(chunk))
        mine = slice(jax.process_index() * local, (jax.process_index() + 1) * local)
        batch = task.tokens.collate(chunk, cfg.data.buckets, local=mine)
        batch = to_global({k: batch[k] for k in shardings}, shardings)
        with jax.set_mesh(task.mesh):
            logps = fn(model_params, batch)
        rows.append(np.asarray(multihost_utils.process_allgather(logps, tiled=True)))
    return np.concatenate(rows)[: len(examples)]


def identical(a, b) -> bool:
    """Whether two parameter trees hold equal values (False for ``None`` or donated buffers)."""
    if a is None or b is None or jax.tree.structure(a) != jax.tree.structure(b):
        return False
    pairs = list(zip(jax.tree.leaves(a), jax.tree.leaves(b)))
    if any(x.is_deleted() or y.is_deleted() for x, y in pairs):
        return False
    return all(x.shape == y.shape and bool(jnp.array_equal(x, y)) for x, y in pairs)


class PreferenceEvaluator:
    """Implicit-reward accuracy and margins on held-out pairs (``eval.data``), with the initial
    model as the reference: ``r = β (log π(y|x) - log π_ref(y|x))``, for every objective alike,
    plus the reference-free accuracies of :func:`jaxalign.eval.preference.pair_summary`.
    Reference log-probs are computed once, at construction; the first evaluation of a policy
    that still equals the reference (step 0) reuses them instead of scoring again."""

    def __init__(self, task: PreferenceTask):
        cfg = task.cfg
        self.task = task
        records = load_preference(cfg.eval.data, "paired", cfg.eval.max_examples, cfg.eval.skip_examples)
        self.tokens = tokenize_preference(task.decoder.tokenizer, records, max_length=cfg.model.max_length,
                                          max_prompt_length=cfg.data.max_prompt_length,
                                          max_completion_length=cfg.data.max_completion_length,
                                          chat_template=cfg.data.chat_template, long_prompts=cfg.data.long_prompts)
        self.eval_task = dataclasses.replace(task, tokens=self.tokens, evaluator=None)
        self._initial = task.reference_params(task.params, {**task.frozen, **task.tracked})
        self.reference = self.score(self._initial, "eval reference")

    def score(self, model_params, desc: str) -> np.ndarray:
        return score_examples(self.eval_task, model_params, self.tokens.examples, desc=desc,
                              batch_size=self.task.cfg.eval.batch_size)

    def __call__(self, policy_params) -> dict[str, float]:
        initial, self._initial = self._initial, None  # compared once: training donates its buffers
        policy = self.reference if identical(policy_params, initial) else self.score(policy_params, "eval")
        summary = pair_summary(policy, self.reference, completion_lengths(self.tokens.examples),
                               resolved_beta(self.task.cfg))
        return {f"eval/{k}": v for k, v in summary.items()}
