"""The training configuration, one typed dataclass per concern.

Each section validates itself in ``__post_init__`` so a bad recipe fails on load with the
field name and the fix, before any model is read or step compiled.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

from etils import epath

from jaxalign.config.loader import ConfigError
from jaxalign.config.objectives import PREFERENCE_OBJECTIVES, ObjectiveConfig, SimCSE
from jaxalign.sharding.mesh import MeshConfig

PREFERENCE_DATA = ("preference", "unpaired", "negatives", "sft")
UNPACKED_OBJECTIVES = ("dckd", "adpa", "reward")  # read padded [B, C, T] columns position by position


def _check(cond: bool, message: str) -> None:
    if not cond:
        raise ConfigError(message)


@dataclasses.dataclass(frozen=True)
class LoraConfig:
    """Low-rank adapters ``W + (alpha / rank) A B`` on the named projections, base frozen.
    rank 0 trains every parameter.

    Attributes:
      rank: adapter rank; 0: full fine-tuning
      alpha: the adapters' scale is alpha / rank (PEFT's lora_alpha)
      targets: projections that get adapters
    """

    rank: int = 0
    alpha: float = 16.0
    targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")

    def __post_init__(self):
        _check(self.rank >= 0, f"model.lora.rank={self.rank}: must be >= 0 (0 = full fine-tuning)")
        _check(self.alpha > 0, f"model.lora.alpha={self.alpha}: must be > 0")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """The model trained: which checkpoint, in which dtype, how much of it, with what memory trade-offs.

    Attributes:
      name: a packaged name (all-MiniLM-L6-v2, SmolLM2-135M-Instruct), a HF directory or .gguf
      dtype: compute dtype; master weights stay float32
      pooling: default: the checkpoint's sentence-transformers pooling; decoders: last (the
        prompt's last token) or mean
      layer: the hidden state pooled (transformers' hidden_states index: 0 embeddings, n the
        output of layer n, -1 the last (decoders: final-normed)); null: the checkpoint's
        pooling layer (decoders: -1)
      prompt: decoders trained as sentence encoders: the prompt each sentence is put in
        (prompteol, pcot, ke, or a template with the placeholder *sent 0*); null: prompteol
      embedding_dropout: decoders (no dropout of their own): dropout rate on the input
        embeddings in training, the noise of unsupervised SimCSE's views
      max_length: tokens per sequence (preference: prompt + completion)
      num_layers: keep only the first n transformer layers (small CPU recipes)
      dropout: the checkpoint's dropout rates in training (SimCSE needs them); false:
        deterministic
      lora: decoders: parameter-efficient training
      remat: decoders: what each layer keeps for the backward pass, as MaxText's remat policies
        (activation memory for compute): none: everything; full: its input only, the rest
        recomputed; minimal (alias dots): also its matmul outputs; save_qkv_proj: its
        query/key/value projections; offload_qkv_proj: those, in host memory (backends with
        pinned_host memory)
      attention: attention kernel: auto: cuDNN flash attention on GPU (bfloat16), Pallas splash
        on TPU, else xla; xla: jax.nn.dot_product_attention; cudnn, splash: those kernels (an
        error where the backend lacks them); einsum: the plain reference
    """

    name: str = "all-MiniLM-L6-v2"
    dtype: Literal["float32", "bfloat16"] = "float32"
    pooling: str | None = None
    layer: int | None = None
    prompt: str | None = None
    embedding_dropout: float = 0.0
    max_length: int = 32
    num_layers: int | None = None
    dropout: bool = True
    lora: LoraConfig = LoraConfig()
    remat: Literal["none", "full", "minimal", "dots", "save_qkv_proj", "offload_qkv_proj"] = "none"
    attention: Literal["auto", "xla", "cudnn", "splash", "einsum"] = "auto"

    def __post_init__(self):
        _check(self.max_length >= 4, f"model.max_length={self.max_length}: must be >= 4")
        _check(self.num_layers is None or self.num_layers >= 1, "model.num_layers: must be >= 1 or null")
        _check(0 <= self.embedding_dropout < 1, f"model.embedding_dropout={self.embedding_dropout}: must be in [0, 1)")


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """The training data: its kind and source, the batch, the length buckets, the input pipeline.

    Attributes:
      kind: sentences: one per line (unsup. SimCSE); nli: SNLI/MNLI triplets; pairs: scored
        sentence pairs; preference: (prompt, chosen, rejected); unpaired: (prompt, completion,
        label) for KTO; negatives: (prompt, rejected[, samples]) for D2O; sft: (prompt,
        completion) for PoFT and ADPA; definitions: a dictionary (entry, definitions) for DefSent+
      path: file, directory, hf:NAME[:SPLIT], tfds:NAME[:SPLIT] or builtin:...
      batch_size: global batch, split over the mesh's data axes
      shuffle: reshuffle every epoch (seeded: a resumed run sees the same order)
      max_examples: read at most n examples (rows); null: all
      skip_examples: preference data: pass over the first n rows (e.g. a held-out part kept for
        eval)
      buckets: padded lengths: one compiled step per bucket
      max_prompt_length: preference data (TRL's DPOConfig names): a longer prompt keeps its end;
        null: no cut
      max_completion_length: a longer completion keeps its start; null: no cut
      long_prompts: a prompt that leaves no room for a completion within model.max_length (no
        max_prompt_length): error: stop, naming it; drop: leave its record out, counted as
        "prompt too long" (TRL drops it)
      chat_template: null: text records as text, conversational ones through the tokenizer's
        chat template (TRL); "auto": every record as a chat (HH transcripts split into turns);
        or a Jinja template.
      num_samples: negatives (D2O): K self-generated samples per prompt (default: the fewest any
        record has)
      pipeline: memory: read and tokenise everything in each process at start-up, collate in the
        loop; streaming: tokenise once into a memory-mapped cache (reused by later runs and
        every process of a host), batches prepared and placed on the devices ahead of the loop
        (not for PoFT or objective.reference=precomputed, which score every record up front)
      cache_dir: streaming: where token caches live (one directory per data/tokenizer/settings)
      workers: streaming: processes tokenising a new cache; 0: this one (a fast tokenizer
        already uses every core)
      prefetch: streaming: batches prepared (by as many threads) and placed on the devices
        ahead; 0: in the loop
      packing: preference data: none: each column padded to the batch's length bucket;
        padding_free: every prompt + completion a segment of a packed row (TRL's padding_free);
        shared_prompt: each example one segment [prompt, completion 1, ...], the prompt computed
        once for all of its completions (see jaxalign.data.preference.packing)
      packed_rows: rows of a packed global batch, a multiple of the data-parallel size; null:
        data.batch_size
      packed_length: the longest packed row; null: model.max_length x ceil(completion columns x
        data.batch_size / data.packed_rows), which always fits. Rows take the smallest of data.buckets (and
        its doublings) that fits.
    """

    kind: Literal["sentences", "nli", "pairs", "preference", "unpaired", "negatives", "sft",
                  "definitions"] = "sentences"
    path: str = "builtin:sentences-mini"
    batch_size: int = 64
    shuffle: bool = True
    max_examples: int | None = None
    skip_examples: int = 0
    buckets: tuple[int, ...] = (16, 32, 64, 128, 256, 512)
    max_prompt_length: int | None = None
    max_completion_length: int | None = None
    long_prompts: Literal["error", "drop"] = "error"
    chat_template: str | None = None
    num_samples: int | None = None
    pipeline: Literal["memory", "streaming"] = "memory"
    cache_dir: str = "~/.cache/jaxalign/tokens"
    workers: int = 0
    prefetch: int = 2
    packing: Literal["none", "padding_free", "shared_prompt"] = "none"
    packed_rows: int | None = None
    packed_length: int | None = None

    def __post_init__(self):
        _check(self.batch_size >= 2 or self.kind in PREFERENCE_DATA,
               f"data.batch_size={self.batch_size}: contrastive training needs >= 2")
        _check(self.batch_size >= 1, f"data.batch_size={self.batch_size}: must be >= 1")
        _check(self.skip_examples >= 0, f"data.skip_examples={self.skip_examples}: must be >= 0")
        _check(self.workers >= 0, f"data.workers={self.workers}: must be >= 0")
        _check(self.prefetch >= 0, f"data.prefetch={self.prefetch}: must be >= 0")
        _check(self.max_examples is None or self.max_examples >= 1,
               f"data.max_examples={self.max_examples}: must be >= 1, or null for all")
        _check(self.packing == "none" or self.kind in PREFERENCE_DATA,
               f"data.packing={self.packing}: packs preference data only (data.kind one of "
               f"{', '.join(PREFERENCE_DATA)}); use data.packing=none")
        _check(self.packed_rows is None or self.packed_rows >= 1, f"data.packed_rows={self.packed_rows}: must be >= 1")
        _check(self.packed_length is None or self.packed_length >= 2,
               f"data.packed_length={self.packed_length}: must be >= 2")


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    """AdamW with warmup and decay, gradient clipping and accumulation (optax).

    Attributes:
      lr: peak learning rate (AdamW)
      weight_decay: decoupled (AdamW); never applied to biases and norms
      b1: Adam's first-moment decay
      b2: Adam's second-moment decay
      eps: Adam's epsilon
      schedule: decay after warmup, to 0 at the last step
      warmup_steps: linear warmup from 0
      clip_norm: clip the global gradient norm; null: no clipping
      grad_accum: micro-batches per optimiser update (data.batch_size each)
    """

    lr: float = 3e-5
    weight_decay: float = 0.0
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    schedule: Literal["constant", "linear", "cosine"] = "linear"
    warmup_steps: int = 0
    clip_norm: float | None = 1.0
    grad_accum: int = 1

    def __post_init__(self):
        _check(self.lr > 0, f"optim.lr={self.lr}: must be > 0")
        _check(self.warmup_steps >= 0, "optim.warmup_steps: must be >= 0")
        _check(self.grad_accum >= 1, f"optim.grad_accum={self.grad_accum}: must be >= 1")
        _check(self.clip_norm is None or self.clip_norm > 0, "optim.clip_norm: must be > 0 or null")


def checkpoint_path(spec: str) -> epath.Path:
    """``checkpoint.dir`` (or a cache directory) as a path: a URL (``gs://...``) as given, a
    local path absolute."""
    if "://" in spec:
        return epath.Path(spec)
    return epath.Path(epath.Path(spec).expanduser().resolve())


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
    """Orbax checkpoints: where, how often, how many kept, and resume or start over.

    Attributes:
      dir: null: no checkpoints
      every: steps between checkpoints (and one at the end)
      keep_last: newest checkpoints kept in <dir>/last
      keep_best: best-scoring checkpoints kept in <dir>/best (by the evaluation)
      async_save: write in the background while training continues
      resume: continue from the newest complete checkpoint in dir, if any
      overwrite: with resume=false: delete an earlier run's checkpoints in dir (and its
        log.dir/metrics.jsonl) and start over; without it a run refuses a non-empty dir rather
        than mixing with that run
    """

    dir: str | None = None
    every: int = 500
    keep_last: int = 2
    keep_best: int = 1
    async_save: bool = True
    resume: bool = True
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
    """Periodic held-out evaluation: STS data for contrastive objectives (scored by Spearman),
    preference pairs for preference objectives (implicit-reward accuracy, as `jaxalign eval preference`).

    Attributes:
      data: held-out data (null: none): STS data (e.g. STS-B dev) for contrastive objectives,
        preference pairs for preference objectives.
      split: STS split
      every: steps between evaluations (and at step 0 and the last step)
      batch_size: global batch of the evaluation passes
      max_examples: preference: evaluate on n pairs ...
      skip_examples: ... after the first skip_examples rows (held out from a file training also
        reads)
      topk: preference: k of the over-optimisation indicators of Shi et al. (arXiv 2410.11677),
        means over the held-out completion tokens: eval/topk/entropy (bits, of the top-k
        probabilities renormalised), eval/topk/entropy_unnormalised (the top-k terms of the full
        entropy) and eval/topk/mass (the top-k probability)
      sample_prompts: preference: the policy also continues the first n held-out prompts at each
        evaluation, and eval/samples/topk/* are the indicators at its own tokens; 0: no samples
      max_new_tokens: the samples' length limit
      sample_temperature: the samples' sampling temperature (0: greedy)
      stop_patience: preference: stop training once stop_on fell at M consecutive evaluations
        (the entropy's turning point); null: no such rule
      stop_entropy_below: preference: stop training once stop_on is below this many bits; null:
        no such rule. With either rule, checkpoint.keep_best keeps the evaluations of highest
        stop_on (the turning point) rather than of the objective's eval metric
      stop_on: the entropy the stopping rules watch (the samples' ones need sample_prompts)
    """

    data: str | None = None
    split: Literal["train", "dev", "test"] = "dev"
    every: int = 125
    batch_size: int = 64
    max_examples: int | None = None
    skip_examples: int = 0
    topk: int = 10
    sample_prompts: int = 0
    max_new_tokens: int = 32
    sample_temperature: float = 1.0
    stop_patience: int | None = None
    stop_entropy_below: float | None = None
    stop_on: Literal["eval/topk/entropy", "eval/topk/entropy_unnormalised", "eval/samples/topk/entropy",
                     "eval/samples/topk/entropy_unnormalised"] = "eval/topk/entropy"

    def __post_init__(self):
        _check(self.every >= 1, f"eval.every={self.every}: must be >= 1")
        _check(self.max_examples is None or self.max_examples >= 1,
               f"eval.max_examples={self.max_examples}: must be >= 1, or null for all")
        _check(self.topk >= 1, f"eval.topk={self.topk}: must be >= 1 (the paper's k is 10)")
        _check(self.sample_prompts >= 0, f"eval.sample_prompts={self.sample_prompts}: must be >= 0 (0: no samples)")
        _check(self.max_new_tokens >= 1, f"eval.max_new_tokens={self.max_new_tokens}: must be >= 1")
        _check(self.sample_temperature >= 0, f"eval.sample_temperature={self.sample_temperature}: must be >= 0")
        _check(self.stop_patience is None or self.stop_patience >= 1,
               f"eval.stop_patience={self.stop_patience}: must be >= 1 evaluations, or null for no such rule")
        _check(self.stop_entropy_below is None or self.stop_entropy_below >= 0,
               f"eval.stop_entropy_below={self.stop_entropy_below}: must be >= 0 bits, or null for no such rule")
        _check(self.sample_prompts or not self.stop_on.startswith("eval/samples/"),
               f"eval.stop_on={self.stop_on} watches the policy's samples: set eval.sample_prompts >= 1")

    @property
    def stops_early(self) -> bool:
        """Whether a stopping rule on the top-k entropy is set."""
        return self.stop_patience is not None or self.stop_entropy_below is not None


@dataclasses.dataclass(frozen=True)
class LogConfig:
    """Where metrics go: metrics.jsonl, TensorBoard events and, optionally, Weights & Biases.

    Attributes:
      dir: metrics.jsonl, TensorBoard events and W&B's files; null: no files.
      every: steps between logged metrics (host syncs of the loop: these, and reading each
        step's finite flag).
      tensorboard: also TensorBoard events beside metrics.jsonl.
      wandb: also log every row to a Weights & Biases run, with the resolved config as its config
        (process 0; needs pip install 'jaxalign[wandb]'). A resumed run starts a new W&B run.
      wandb_project: the W&B project.
      wandb_name: the W&B run's name; null: log.dir's last part, else W&B's own.
      wandb_mode: online: stream to the W&B server (after `wandb login`); offline: W&B's files
        only (in log.dir/wandb, else ./wandb), for `wandb sync` later; null: $WANDB_MODE, else online.
    """

    dir: str | None = None
    every: int = 10
    tensorboard: bool = True
    wandb: bool = False
    wandb_project: str = "jaxalign"
    wandb_name: str | None = None
    wandb_mode: Literal["online", "offline"] | None = None

    def __post_init__(self):
        _check(self.every >= 1, f"log.every={self.every}: must be >= 1")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """A whole run: one section per concern and the run's length, seed and export.

    Attributes:
      model: the model trained (model.name, ...).
      data: the training data (data.kind, data.path, ...).
      optim: the optimiser.
      objective: what is trained for, by objective.name; each objective has its own options.
      mesh: the device mesh (data, fsdp, tensor axis sizes).
      checkpoint: Orbax checkpoints.
      eval: periodic evaluation.
      log: metrics files.
      seed: parameters of new heads, data order, dropout
      steps: training steps (micro-batches)
      max_nonfinite: stop after this many consecutive non-finite steps (each is skipped)
      export: write a Hugging Face checkpoint of the trained model here
    """

    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    optim: OptimConfig = OptimConfig()
    objective: ObjectiveConfig = SimCSE()
    mesh: MeshConfig = MeshConfig()
    checkpoint: CheckpointConfig = CheckpointConfig()
    eval: EvalConfig = EvalConfig()
    log: LogConfig = LogConfig()
    seed: int = 0
    steps: int = 100
    max_nonfinite: int = 5
    export: str | None = None

    def __post_init__(self):
        _check(self.steps >= 1, f"steps={self.steps}: must be >= 1")
        obj = self.objective
        preference = obj.family == "preference"
        _check(self.data.kind in obj.data_kinds,
               f"objective.name={obj.name} does not train on data.kind={self.data.kind}: set "
               + (f"data.kind={obj.data_kinds[0]}" if len(obj.data_kinds) == 1
                  else f"data.kind to one of {', '.join(obj.data_kinds)}")
               + ("" if preference or self.data.kind not in PREFERENCE_DATA else
                  "; preference data needs a preference objective: " + ", ".join(PREFERENCE_OBJECTIVES)))
        _check(not self.eval.stops_early or (preference and self.eval.data),
               "eval.stop_patience/eval.stop_entropy_below watch the top-k entropy of preference evaluation: "
               "they need a preference objective and eval.data")
        if not preference:
            return
        reference = getattr(obj, "reference", None)
        if self.model.lora.rank and obj.needs_reference:
            _check(not obj.reference_model, "objective.reference_model with model.lora: the frozen base is the "
                                            "reference; drop one of the two")
            _check(not getattr(obj, "sync_ref_model", False), "objective.sync_ref_model (TR-DPO) with model.lora: "
                                                             "the frozen base is the reference; drop one of the two")
        precomputed = ("objective.name=poft" if obj.name == "poft" else "objective.reference=precomputed"
                       if reference == "precomputed" and obj.needs_reference else None)
        _check(self.data.packing == "none" or obj.name not in UNPACKED_OBJECTIVES,
               f"data.packing={self.data.packing} with objective.name={obj.name}: it compares hidden states or "
               "logits position by position in padded columns; use data.packing=none")
        _check(self.data.pipeline == "memory" or not precomputed,
               f"data.pipeline=streaming with {precomputed}: scores precomputed for every record need the whole "
               "data set in memory; use data.pipeline=memory")
