"""The training configuration, one typed dataclass per concern.

Each section validates itself in ``__post_init__`` so a bad recipe fails on load with the
field name and the fix, before any model is read or step compiled.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

from jaxalign.config import ConfigError
from jaxalign.sharding.mesh import MeshConfig


def _check(cond: bool, message: str) -> None:
    if not cond:
        raise ConfigError(message)


@dataclasses.dataclass(frozen=True)
class LoraConfig:
    """Low-rank adapters ``W + (alpha / rank) A B`` on the named projections, base frozen.
    rank 0 trains every parameter."""

    rank: int = 0  # adapter rank; 0: full fine-tuning
    alpha: float = 16.0  # the adapters' scale is alpha / rank (PEFT's lora_alpha)
    targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")  # projections that get adapters

    def __post_init__(self):
        _check(self.rank >= 0, f"model.lora.rank={self.rank}: must be >= 0 (0 = full fine-tuning)")
        _check(self.alpha > 0, f"model.lora.alpha={self.alpha}: must be > 0")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    name: str = "all-MiniLM-L6-v2"  # a packaged name (all-MiniLM-L6-v2, SmolLM2-135M-Instruct), a HF directory or .gguf
    dtype: Literal["float32", "bfloat16"] = "float32"  # compute dtype; master weights stay float32
    pooling: str | None = None  # default: the checkpoint's sentence-transformers pooling
    max_length: int = 32  # tokens per sequence (preference: prompt + completion)
    num_layers: int | None = None  # keep only the first n transformer layers (small CPU recipes)
    dropout: bool = True  # the checkpoint's dropout rates in training (SimCSE needs them); false: deterministic
    lora: LoraConfig = LoraConfig()  # decoders: parameter-efficient training
    # decoders: recompute each layer in the backward pass (full) or all but its matmuls (dots),
    # keeping only layer inputs: activation memory for compute, as MaxText's remat policies
    remat: Literal["none", "full", "dots"] = "none"

    def __post_init__(self):
        _check(self.max_length >= 4, f"model.max_length={self.max_length}: must be >= 4")
        _check(self.num_layers is None or self.num_layers >= 1, "model.num_layers: must be >= 1 or null")


@dataclasses.dataclass(frozen=True)
class DataConfig:
    # sentences: one per line (unsup. SimCSE); nli: SNLI/MNLI triplets; pairs: scored sentence pairs;
    # preference: (prompt, chosen, rejected); unpaired: (prompt, completion, label) for KTO;
    # negatives: (prompt, rejected[, samples]) for D2O; sft: (prompt, completion) for PoFT and ADPA
    kind: Literal["sentences", "nli", "pairs", "preference", "unpaired", "negatives", "sft"] = "sentences"
    path: str = "builtin:sentences-mini"  # file, directory, hf:NAME[:SPLIT], tfds:NAME[:SPLIT] or builtin:...
    batch_size: int = 64  # global batch, split over the mesh's data axes
    shuffle: bool = True  # reshuffle every epoch (seeded: a resumed run sees the same order)
    max_examples: int | None = None  # read at most n examples (rows); null: all
    skip_examples: int = 0  # preference data: pass over the first n rows (e.g. a held-out part kept for eval)
    buckets: tuple[int, ...] = (16, 32, 64, 128, 256, 512)  # padded lengths: one compiled step per bucket
    # preference data (TRL's DPOConfig names): a longer prompt keeps its end; null: no cut
    max_prompt_length: int | None = None
    max_completion_length: int | None = None  # a longer completion keeps its start; null: no cut
    # a prompt that leaves no room for a completion within model.max_length (no max_prompt_length):
    # error: stop, naming it; drop: leave its record out, counted as "prompt too long" (TRL drops it)
    long_prompts: Literal["error", "drop"] = "error"
    # null: text records as text, conversational ones through the tokenizer's chat template (TRL);
    # "auto": every record as a chat (HH transcripts split into turns); or a Jinja template.
    chat_template: str | None = None
    num_samples: int | None = None  # negatives (D2O): K self-generated samples per prompt (default: the fewest any record has)
    # memory: read and tokenise everything in each process at start-up, collate in the loop;
    # streaming: tokenise once into a memory-mapped cache (reused by later runs and every process
    # of a host), batches prepared and placed on the devices ahead of the loop (not for PoFT or
    # objective.reference=precomputed, which score every record up front)
    pipeline: Literal["memory", "streaming"] = "memory"
    cache_dir: str = "~/.cache/jaxalign/tokens"  # streaming: where token caches live (one directory per data/tokenizer/settings)
    workers: int = 0  # streaming: processes tokenising a new cache; 0: this one (a fast tokenizer already uses every core)
    prefetch: int = 2  # streaming: batches prepared (by as many threads) and placed on the devices ahead; 0: in the loop

    def __post_init__(self):
        _check(self.batch_size >= 2 or self.kind in PREFERENCE_DATA,
               f"data.batch_size={self.batch_size}: contrastive training needs >= 2")
        _check(self.batch_size >= 1, f"data.batch_size={self.batch_size}: must be >= 1")
        _check(self.skip_examples >= 0, f"data.skip_examples={self.skip_examples}: must be >= 0")
        _check(self.workers >= 0, f"data.workers={self.workers}: must be >= 0")
        _check(self.prefetch >= 0, f"data.prefetch={self.prefetch}: must be >= 0")
        _check(self.max_examples is None or self.max_examples >= 1,
               f"data.max_examples={self.max_examples}: must be >= 1, or null for all")


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    lr: float = 3e-5  # peak learning rate (AdamW)
    weight_decay: float = 0.0  # decoupled (AdamW); never applied to biases and norms
    b1: float = 0.9  # Adam's first-moment decay
    b2: float = 0.999  # Adam's second-moment decay
    eps: float = 1e-8  # Adam's epsilon
    schedule: Literal["constant", "linear", "cosine"] = "linear"  # decay after warmup, to 0 at the last step
    warmup_steps: int = 0  # linear warmup from 0
    clip_norm: float | None = 1.0  # clip the global gradient norm; null: no clipping
    grad_accum: int = 1  # micro-batches per optimiser update (data.batch_size each)

    def __post_init__(self):
        _check(self.lr > 0, f"optim.lr={self.lr}: must be > 0")
        _check(self.warmup_steps >= 0, "optim.warmup_steps: must be >= 0")
        _check(self.grad_accum >= 1, f"optim.grad_accum={self.grad_accum}: must be >= 1")
        _check(self.clip_norm is None or self.clip_norm > 0, "optim.clip_norm: must be > 0 or null")


@dataclasses.dataclass(frozen=True)
class WhiteningConfig:
    groups: int = 32  # channel groups whitened separately
    method: Literal["zca", "cholesky", "newton_schulz"] = "zca"
    eps: float = 0.0  # shrinkage towards the identity
    stop_gradient: bool = True  # detach W, as the released WhitenedCSE code does
    num_pos: int = 2  # positives per anchor, each with its own channel shuffle
    # Statistics over the global batch (default: identical on any mesh, like the single-device
    # run) or per data-parallel shard (like per-device BatchNorm, no collectives).
    statistics: Literal["global", "per_shard"] = "global"
    ns_iters: int = 5  # Newton-Schulz iterations


CONTRASTIVE_OBJECTIVES = ("simcse", "whitenedcse", "cosent", "angle", "matryoshka", "2dmse", "dse")
PREFERENCE_OBJECTIVES = ("dpo", "simpo", "cpo", "orpo", "kto", "asft", "d2o", "poft", "dckd", "adpa")
PREFERENCE_DATA = ("preference", "unpaired", "negatives", "sft")


@dataclasses.dataclass(frozen=True)
class ObjectiveConfig:
    # Contrastive (sentence encoders) -- simcse: InfoNCE with in-batch (+ hard) negatives: dropout
    # views for `sentences` data (unsupervised SimCSE), triplets for `nli` (supervised), MNRL for `pairs`.
    # Preference (causal LMs) -- dpo: the DPO family (`loss_type`), simpo, cpo, orpo, kto, asft, d2o;
    # poft (targets scored by aligned models); dckd, adpa (distillation from an aligned teacher LM).
    name: Literal[CONTRASTIVE_OBJECTIVES + PREFERENCE_OBJECTIVES] = "simcse"
    temperature: float = 0.05  # InfoNCE temperature
    symmetric: bool = False  # also the reverse direction (positives against the anchors)
    hard_negative_weight: float = 0.0  # SimCSE's log-weight on hard negatives (supervised)
    head: Literal["none", "mlp"] = "none"  # SimCSE's training-only MLP over the pooled embedding
    whitening: WhiteningConfig = WhiteningConfig()
    cosent_scale: float = 20.0  # CoSENT / AnglE scale on cosine differences
    matryoshka_dims: tuple[int, ...] = (384, 256, 128, 64, 32)  # Matryoshka / 2DMSE embedding prefixes
    kl_temperature: float = 0.3  # 2DMSE: temperature of the KL from the full model to shallow layers
    dse_alpha: float = 0.5  # DSE: weight of the gold-score loss against the teacher's
    # DSE: teacher encoder whose pair scores are distilled; dckd/adpa: the aligned teacher LM (same vocabulary)
    teacher: str | None = None
    cache_chunk: int | None = None  # GradCache: embed in chunks of this many rows
    # --- preference objectives (TRL's names and defaults) ---
    beta: float | None = None  # null: the loss's own default (0.1; SimPO 2.0; ORPO's and ASFT's lambda 0.1)
    loss_type: tuple[str, ...] = ("sigmoid",)  # dpo: one loss or several, summed with loss_weights (MPO)
    loss_weights: tuple[float, ...] | None = None  # one weight per loss_type; null: 1 each
    label_smoothing: float = 0.0  # cDPO / robust / exo / aot: probability that a label is flipped
    # Further options of the chosen loss, named as TRL names them (f_divergence_type, simpo_gamma,
    # cpo_alpha, orpo_lambda, desirable_weight, d2o_alpha, ...); checked against what that loss takes.
    options: dict[str, Any] = dataclasses.field(default_factory=dict, hash=False)
    # Reference log-probs: "model" computes them in the step (no gradient), "precomputed" once
    # before training over the whole data set (TRL's precompute_ref_log_probs); reference-free
    # objectives (simpo, cpo, orpo, asft) ignore it.
    reference: Literal["model", "precomputed"] = "model"
    reference_model: str | None = None  # default: the initial policy (model.name)
    logps_chunk: int = 64  # sequence positions per LM-head chunk: [rows, chunk, vocab] logits at a time
    # DPO variants, under TRL's DPOConfig names:
    use_weighting: bool = False  # WPO: each pair's loss times exp(mean log p - log sum p^2) of both completions
    ld_alpha: float | None = None  # LD-DPO: weight of the longer completion's tokens past the shorter's length
    sync_ref_model: bool = False  # TR-DPO: ref <- a * policy + (1 - a) * ref every ref_model_sync_steps updates
    ref_model_mixup_alpha: float = 0.6  # TR-DPO's a
    ref_model_sync_steps: int = 512  # TR-DPO's period, in optimiser updates
    aligned_models: tuple[str, ...] = ()  # poft: the M aligned models scoring each target (own tokenizers)
    teacher_reference: str | None = None  # adpa: the teacher's reference (advantage = log pi_teacher - log pi_ref)
    teacher_top_k: int | None = None  # dckd: KL over the teacher's k most likely tokens (null: the vocabulary)

    def __post_init__(self):
        _check(self.temperature > 0, f"objective.temperature={self.temperature}: must be > 0")
        _check(self.beta is None or self.beta > 0, f"objective.beta={self.beta}: must be > 0")
        _check(self.logps_chunk >= 1, f"objective.logps_chunk={self.logps_chunk}: must be >= 1")
        _check(self.cache_chunk is None or self.cache_chunk >= 1, "objective.cache_chunk: must be >= 1 or null")
        _check(self.ld_alpha is None or 0 <= self.ld_alpha <= 1, f"objective.ld_alpha={self.ld_alpha}: must be in [0, 1]")
        _check(0 < self.ref_model_mixup_alpha <= 1,
               f"objective.ref_model_mixup_alpha={self.ref_model_mixup_alpha}: must be in (0, 1]")
        _check(self.ref_model_sync_steps >= 1, f"objective.ref_model_sync_steps={self.ref_model_sync_steps}: must be >= 1")
        _check(self.teacher_top_k is None or self.teacher_top_k >= 1,
               f"objective.teacher_top_k={self.teacher_top_k}: must be >= 1 or null (the whole vocabulary)")


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
    dir: str | None = None  # null: no checkpoints
    every: int = 500  # steps between checkpoints (and one at the end)
    keep_last: int = 2  # newest checkpoints kept in <dir>/last
    keep_best: int = 1  # best-scoring checkpoints kept in <dir>/best (by the evaluation)
    async_save: bool = True  # write in the background while training continues
    resume: bool = True  # continue from the newest complete checkpoint in dir, if any
    # with resume=false: delete an earlier run's checkpoints in dir (and its log.dir/metrics.jsonl)
    # and start over; without it a run refuses a non-empty dir rather than mixing with that run
    overwrite: bool = False

    def __post_init__(self):
        for name in ("every", "keep_last", "keep_best"):
            value = getattr(self, name)
            _check(value >= 1, f"checkpoint.{name}={value}: must be >= 1")
        _check(not (self.overwrite and self.resume),
               "checkpoint.overwrite=true deletes the run in checkpoint.dir, checkpoint.resume=true continues it: "
               "set checkpoint.resume=false to start over")


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    # Held-out data for periodic evaluation (null: none): STS data for contrastive objectives
    # (e.g. STS-B dev; scored by Spearman), preference pairs for preference objectives (scored by
    # implicit-reward accuracy, as `jaxalign eval preference`).
    data: str | None = None
    split: Literal["train", "dev", "test"] = "dev"  # STS split
    every: int = 125  # steps between evaluations (and at step 0 and the last step)
    batch_size: int = 64  # global batch of the evaluation passes
    max_examples: int | None = None  # preference: evaluate on n pairs ...
    skip_examples: int = 0  # ... after the first skip_examples rows (held out from a file training also reads)

    def __post_init__(self):
        _check(self.every >= 1, f"eval.every={self.every}: must be >= 1")
        _check(self.max_examples is None or self.max_examples >= 1,
               f"eval.max_examples={self.max_examples}: must be >= 1, or null for all")


@dataclasses.dataclass(frozen=True)
class LogConfig:
    dir: str | None = None  # metrics.jsonl and TensorBoard events; null: no files
    every: int = 10  # steps between logged metrics (the only host syncs of the loop)
    tensorboard: bool = True  # also TensorBoard events beside metrics.jsonl

    def __post_init__(self):
        _check(self.every >= 1, f"log.every={self.every}: must be >= 1")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    optim: OptimConfig = OptimConfig()
    objective: ObjectiveConfig = ObjectiveConfig()
    mesh: MeshConfig = MeshConfig()
    checkpoint: CheckpointConfig = CheckpointConfig()
    eval: EvalConfig = EvalConfig()
    log: LogConfig = LogConfig()
    seed: int = 0  # parameters of new heads, data order, dropout
    steps: int = 100  # training steps (micro-batches)
    max_nonfinite: int = 5  # stop after this many consecutive non-finite steps (each is skipped)
    export: str | None = None  # write a Hugging Face checkpoint of the trained model here

    def __post_init__(self):
        _check(self.steps >= 1, f"steps={self.steps}: must be >= 1")
        preference_objective = self.objective.name in PREFERENCE_OBJECTIVES
        preference_data = self.data.kind in PREFERENCE_DATA
        _check(preference_objective == preference_data,
               f"objective.name={self.objective.name} does not train on data.kind={self.data.kind}: "
               + ("set data.kind to one of " + ", ".join(PREFERENCE_DATA) if preference_objective
                  else "preference data needs a preference objective: " + ", ".join(PREFERENCE_OBJECTIVES)))
        _check(self.model.remat == "none" or preference_objective,
               f"model.remat={self.model.remat}: rematerialisation is implemented for decoders (preference objectives)")
        _check(self.model.lora.rank == 0 or preference_objective,
               "model.lora.rank > 0: LoRA is implemented for decoders (preference objectives)")
