"""Preference optimisation of causal LMs as a task of the training engine.

The task loads what a run trains and feeds it: the decoder, the data (read, tokenised,
streamed), the parameter layout (full fine-tuning or LoRA adapters over a frozen base; a frozen
reference copy, or TR-DPO's tracked one; frozen teacher LMs), scores precomputed once
(:mod:`jaxalign.tasks.precomputed`) and the held-out evaluator. What a step computes from a
batch is the objective's (:mod:`jaxalign.objectives.preference`).
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jaxalign.config.loader import ConfigError
from jaxalign.config.run import TrainConfig
from jaxalign.data.cached import cache_preference, preference_examples
from jaxalign.data.pipeline import Pipeline, streaming_pipeline
from jaxalign.data.preference import load_preference
from jaxalign.data.preference.packing import pack_preference
from jaxalign.data.preference.tokens import TokenizedPreference, tokenize_preference
from jaxalign.data.stream import BatchStream
from jaxalign.data.token_cache import source_fingerprint
from jaxalign.eval.preference import PreferenceEvaluator
from jaxalign.eval.reward import RewardEvaluator
from jaxalign.models import lora as lora_lib
from jaxalign.models.decoders import Decoder, load_decoder
from jaxalign.models.export import export_decoder
from jaxalign.models.reward import HEAD_AXES, export_reward_model, init_score_head
from jaxalign.objectives.preference import BATCH_AXES, TEACHERS, PreferenceObjective
from jaxalign.objectives.scoring import PACKED_AXES
from jaxalign.sharding.rules import DEFAULT_RULES, logical_to_spec
from jaxalign.tasks import precomputed

DATA_KIND = {"preference": "paired", "unpaired": "unpaired", "negatives": "negatives", "sft": "sft"}


def check_same_vocabulary(student: Decoder, teacher: Decoder, field: str) -> None:
    """Token-level distillation compares distributions over one vocabulary, id by id."""
    sv, tv = student.config.vocab_size, teacher.config.vocab_size
    if sv != tv or student.tokenizer.get_vocab() != teacher.tokenizer.get_vocab():
        raise ValueError(f"{field}={teacher.path}: its vocabulary ({tv} ids) is not the policy's ({sv} ids, "
                         f"{student.path}); token-level distillation needs the same tokenizer and vocabulary")


def record_margins(records, path: str) -> np.ndarray | None:
    """``[num_records]`` float32 margins of a data set with a ``margin`` column (TRL
    ``RewardTrainer``'s), ``None`` without one; a column on only some rows is refused."""
    given = [r.margin is not None for r in records]
    if not any(given):
        return None
    if not all(given):
        missing = next(r for r in records if r.margin is None)
        raise ValueError(f"data.path={path}: {sum(given)} of {len(records)} pairs have a 'margin' and {missing.source} "
                         "has none; give every pair one (0 for no margin) or none")
    return np.asarray([r.margin for r in records], np.float32)


def batch_shards(mesh: jax.sharding.Mesh) -> int:
    """The data-parallel size: devices the ``batch`` rule splits a batch over."""
    axes = logical_to_spec(("batch",), DEFAULT_RULES)[0]
    axes = (axes,) if isinstance(axes, str) else axes or ()
    return math.prod(mesh.shape[a] for a in axes if a in mesh.shape)


def check_packing(cfg: TrainConfig, mesh: jax.sharding.Mesh) -> None:
    """Packed rows split over the data-parallel devices like the batch does (before compiling)."""
    rows, shards = cfg.data.packed_rows, batch_shards(mesh)
    if cfg.data.packing != "none" and rows is not None and rows % shards:
        raise ConfigError(f"data.packed_rows={rows}: must be a multiple of the data-parallel size {shards} "
                          f"(mesh data x fsdp), e.g. {-(-rows // shards) * shards}")


@dataclasses.dataclass
class PreferenceTask:
    cfg: TrainConfig
    mesh: jax.sharding.Mesh
    decoder: Decoder
    objective: PreferenceObjective
    tokens: TokenizedPreference
    stream: BatchStream | Pipeline
    params: dict
    param_axes: dict
    frozen: dict
    frozen_axes: dict
    lora_modules: dict | None = None
    ref_logps: np.ndarray | None = None  # [num_records, C] when precomputed (rows by record index)
    aligned_scores: np.ndarray | None = None  # PoFT: [num_records, M]
    margins: np.ndarray | None = None  # reward models: the data's per-pair margin column [num_records]
    tracked: dict = dataclasses.field(default_factory=dict)
    tracked_axes: dict = dataclasses.field(default_factory=dict)
    evaluator: PreferenceEvaluator | RewardEvaluator | None = None
    eval_metric: str = "eval/rewards/accuracies"

    @classmethod
    def build(cls, cfg: TrainConfig, mesh: jax.sharding.Mesh) -> "PreferenceTask":
        obj = cfg.objective
        check_packing(cfg, mesh)
        dtype = jnp.bfloat16 if cfg.model.dtype == "bfloat16" else jnp.float32
        decoder = load_decoder(cfg.model.name, mesh=mesh, dtype=dtype, num_layers=cfg.model.num_layers,
                               remat=cfg.model.remat, attention=cfg.model.attention)
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
        else:
            records = read()
            tokens = tokenize_preference(decoder.tokenizer, records, max_length=cfg.model.max_length, **options)

        lora_modules = None
        if cfg.model.lora.rank:
            lora_modules, adapters, adapter_axes = lora_lib.decoder_adapters(decoder, cfg.model.lora,
                                                                             jax.random.PRNGKey(cfg.seed + 1))
            params, param_axes = {"lora": adapters}, {"lora": adapter_axes}
            frozen, frozen_axes = {"base": decoder.params}, {"base": decoder.axes}
        else:
            params, param_axes = {"policy": decoder.params}, {"policy": decoder.axes}
            frozen, frozen_axes = {}, {}
            if obj.needs_reference and obj.reference == "model":
                # The loaded weights themselves: the train state holds its own copy of the policy.
                ref = (load_decoder(obj.reference_model, mesh=mesh, dtype=dtype, num_layers=cfg.model.num_layers)
                       if obj.reference_model else decoder)
                frozen, frozen_axes = {"reference": ref.params}, {"reference": ref.axes}
        tracked, tracked_axes, sync_period = {}, {}, 0
        if getattr(obj, "sync_ref_model", False):
            tracked, tracked_axes = {"reference": frozen.pop("reference")}, {"reference": frozen_axes.pop("reference")}
            if jax.tree.map(jnp.shape, tracked["reference"]) != jax.tree.map(jnp.shape, params["policy"]):
                raise ValueError(f"objective.sync_ref_model: objective.reference_model={obj.reference_model} "
                                 "is not shaped like the policy, so it cannot be mixed with it")
            sync_period = obj.ref_model_sync_steps * cfg.optim.grad_accum
        if obj.name == "reward":  # the scalar head, trained under full fine-tuning and LoRA alike
            params["score"] = init_score_head(jax.random.PRNGKey(cfg.seed + 2), decoder.config.hidden_size,
                                              decoder.hf_config.get("initializer_range", 0.02))
            param_axes["score"] = HEAD_AXES
        teachers = {}
        for field in (f for f in TEACHERS if getattr(obj, f, None)):
            teachers[field] = load_decoder(getattr(obj, field), mesh=mesh, dtype=dtype)
            check_same_vocabulary(decoder, teachers[field], f"objective.{field}")
            frozen[field], frozen_axes[field] = teachers[field].params, teachers[field].axes
        objective = PreferenceObjective(obj, decoder, teachers,
                                        cfg.model.lora.alpha / cfg.model.lora.rank if cfg.model.lora.rank else None,
                                        sync_period, completion_window=cfg.data.max_completion_length)
        task = cls(cfg, mesh, decoder, objective, tokens, None, params, param_axes, frozen, frozen_axes, lora_modules,
                   tracked=tracked, tracked_axes=tracked_axes)
        if obj.needs_reference and getattr(obj, "reference", None) == "precomputed":
            task.ref_logps = precomputed.reference_logps(cfg, decoder, tokens, mesh)
        if obj.name == "poft":
            task.aligned_scores, task.tokens = precomputed.aligned_scores(cfg, decoder, tokens, records, mesh)
        if obj.name == "reward":
            task.margins = record_margins(records if cfg.data.pipeline != "streaming" else read(), cfg.data.path)
        if cfg.data.pipeline == "streaming":
            task.stream = streaming_pipeline(task, len(table), lambda rows, local: task.collate(
                preference_examples(table, rows), local))
        else:
            task.stream = BatchStream(task.tokens.examples, cfg.data.batch_size, seed=cfg.seed, shuffle=cfg.data.shuffle)
        if cfg.eval.data:
            held_out = load_preference(cfg.eval.data, "paired", cfg.eval.max_examples, cfg.eval.skip_examples)
            eval_tokens = tokenize_preference(decoder.tokenizer, held_out, max_length=cfg.model.max_length,
                                              max_prompt_length=cfg.data.max_prompt_length,
                                              max_completion_length=cfg.data.max_completion_length,
                                              chat_template=cfg.data.chat_template,
                                              long_prompts=cfg.data.long_prompts)
            if obj.name == "reward":  # pairwise accuracy of the rewards, no reference
                task.evaluator = RewardEvaluator(decoder, eval_tokens, batch_size=cfg.eval.batch_size)
                task.eval_metric = "eval/accuracy"
            else:
                if cfg.eval.topk > decoder.config.vocab_size:
                    raise ConfigError(f"eval.topk={cfg.eval.topk}: more than the {decoder.config.vocab_size} tokens "
                                      f"of {cfg.model.name}'s vocabulary; the paper's k is 10")
                initial = objective.reference_params(params, {**frozen, **tracked})
                task.evaluator = PreferenceEvaluator(decoder, eval_tokens, initial, mesh=mesh, beta=obj.reward_beta,
                                                     batch_size=cfg.eval.batch_size, buckets=cfg.data.buckets,
                                                     chunk=obj.logps_chunk, topk=cfg.eval.topk,
                                                     sample_prompts=cfg.eval.sample_prompts,
                                                     max_new_tokens=cfg.eval.max_new_tokens,
                                                     temperature=cfg.eval.sample_temperature, seed=cfg.seed)
        return task

    def batch_axes(self) -> dict:
        packing = self.cfg.data.packing
        keys = ["input_ids", "attention_mask", "loss_mask"]
        if packing != "none":
            keys += ["segment_ids", "positions", "predecessor", "token_index"]
            keys += ["branch_ids"] if packing == "shared_prompt" else []
        if self.cfg.data.kind == "unpaired":
            keys.append("label")
        if self.ref_logps is not None:
            keys.append("ref_logps")
        if self.aligned_scores is not None:
            keys.append("aligned_scores")
        if self.margins is not None:
            keys.append("margin")
        axes = {**BATCH_AXES, **PACKED_AXES} if packing != "none" else BATCH_AXES
        return {k: axes[k] for k in keys}

    def value_and_grad(self):
        return jax.value_and_grad(self.objective.loss, has_aux=True)

    def update_tracked(self, tracked: dict, params: dict, steps_done: jax.Array) -> dict:
        return self.objective.update_tracked(tracked, params, steps_done)

    def collate(self, examples: list, local: slice) -> dict:
        """A global batch's examples -> this process's arrays (rows ``local``), with their
        precomputed scores; padded, or packed as ``data.packing`` says."""
        data = self.cfg.data
        if data.packing == "none":
            batch = self.tokens.collate(examples, data.buckets, local=local)
        else:
            batch = pack_preference(examples, packing=data.packing, rows=data.packed_rows,
                                    max_length=self.tokens.max_length, buckets=data.buckets, pad_id=self.tokens.pad_id,
                                    packed_length=data.packed_length, shards=batch_shards(self.mesh), local=local)
        rows = [ex.index for ex in examples[local]]
        if self.ref_logps is not None:
            batch["ref_logps"] = self.ref_logps[rows]
        if self.aligned_scores is not None:
            batch["aligned_scores"] = self.aligned_scores[rows]
        if self.margins is not None:
            batch["margin"] = self.margins[rows]
        return batch

    def next_batch(self) -> dict:
        if isinstance(self.stream, Pipeline):
            return self.stream.next()
        return self.collate(self.stream.next(), self.stream.local)

    def evaluate(self, params) -> dict[str, float]:
        if self.evaluator is None:
            return {}
        policy = self.objective.policy_params(params, self.frozen)
        return self.evaluator(policy, params["score"]) if "score" in params else self.evaluator(policy)

    def export(self, params, directory: str) -> None:
        if "lora" in params:
            lora_lib.save_adapter(Path(directory) / "adapter", params["lora"], self.lora_modules, self.cfg.model.lora,
                                  self.cfg.model.name)
        policy = jax.device_get(self.objective.policy_params(params, self.frozen))
        if "score" in params:
            export_reward_model(self.decoder, policy, jax.device_get(params["score"]), directory)
        else:
            export_decoder(self.decoder, policy, directory)
