"""Contrastive training of sentence encoders as a task of the training engine.

The encoder is a BERT-family checkpoint, or a decoder with every text put in a prompt and the
last token's (or mean) state of one layer as its embedding (PromptEOL fine-tuning, Jiang et
al., 2023, arXiv 2307.16645). Trainable parameters are ``{"encoder": ..., "head": ...}``, or
for a decoder with ``model.lora.rank`` > 0 ``{"lora": ..., "head": ...}`` over a frozen
``{"base": ...}``; the head is training-only (SimCSE's MLP, WhitenedCSE's projection, DSE's
pair head). Batches are ``input_ids``/``attention_mask`` ``[C, B, T]`` (C text columns) plus
per-example float columns; evaluation is STS (Spearman x 100, ``all`` averaged) of the
encoder alone.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jaxalign.config.run import TrainConfig
from jaxalign.data.cached import cache_contrastive
from jaxalign.data.corpora import read_corpus
from jaxalign.data.pipeline import Pipeline, streaming_pipeline
from jaxalign.data.stream import BatchStream, Tokenized, collate
from jaxalign.data.sts import load_sts
from jaxalign.data.token_cache import source_fingerprint
from jaxalign.eval.sts import StsEvaluator
from jaxalign.inference.embed import Embedder
from jaxalign.inference.prompt_embed import EMBEDDING_CONFIG, PromptEncoder
from jaxalign.models import lora as lora_lib
from jaxalign.models.decoders import is_decoder, load_decoder
from jaxalign.models.export import export_decoder, export_hf
from jaxalign.models.registry import Encoder, load_encoder
from jaxalign.objectives.contrastive import (
    ContrastiveObjective,
    cached_value_and_grad,
    loss_fn,
)
from jaxalign.ops.pooling import PoolingConfig
from jaxalign.sharding.mesh import batch_parallel_size


@dataclasses.dataclass
class ContrastiveTask:
    cfg: TrainConfig
    mesh: jax.sharding.Mesh
    encoder: Encoder | PromptEncoder
    objective: ContrastiveObjective
    stream: BatchStream | Pipeline
    tokens: Tokenized
    params: dict
    param_axes: dict
    evaluator: StsEvaluator | None = None
    frozen: dict = dataclasses.field(default_factory=dict)
    frozen_axes: dict = dataclasses.field(default_factory=dict)
    tracked: dict = dataclasses.field(default_factory=dict)
    tracked_axes: dict = dataclasses.field(default_factory=dict)
    eval_metric: str = "eval/sts"
    lora_modules: dict | None = None

    @classmethod
    def build(cls, cfg: TrainConfig, mesh: jax.sharding.Mesh) -> "ContrastiveTask":
        encoder = load_sentence_encoder(cfg, mesh)
        overrides = {k: v for k, v in (("mode", cfg.model.pooling), ("layer", cfg.model.layer)) if v is not None}
        pooling = dataclasses.replace(encoder.pooling, **overrides)
        if isinstance(encoder, PromptEncoder):
            pooling = encoder.pooling  # the layer is the encoder's output
        lora = cfg.model.lora
        objective = ContrastiveObjective(cfg.objective, cfg.data.kind, encoder, pooling, dropout=cfg.model.dropout,
                                         num_shards=batch_parallel_size(mesh),
                                         lora_scale=lora.alpha / lora.rank if lora.rank else None)
        objective.check_batch(cfg.data.batch_size)
        columns = objective.text_columns

        def read() -> list:
            examples = read_corpus(cfg.data.kind, cfg.data.path, cfg.data.max_examples)
            if cfg.objective.name == "dse":
                examples = with_teacher_scores(examples, cfg, mesh)
            if isinstance(encoder, PromptEncoder):
                examples = [(*map(encoder.render, ex[:columns]), *ex[columns:]) for ex in examples]
            return examples

        head, head_axes = objective.init_head(jax.random.PRNGKey(cfg.seed + 1))
        params, axes = {"encoder": encoder.params, "head": head}, {"encoder": encoder.axes, "head": head_axes}
        frozen, frozen_axes, lora_modules = {}, {}, None
        if lora.rank:
            lora_modules, adapters, adapter_axes = lora_lib.decoder_adapters(encoder.decoder, lora,
                                                                             jax.random.PRNGKey(cfg.seed + 2))
            params, axes = {"lora": adapters, "head": head}, {"lora": adapter_axes, "head": head_axes}
            frozen, frozen_axes = {"base": encoder.params}, {"base": encoder.axes}
        if cfg.data.pipeline == "streaming":
            # DSE's teacher scores are computed, not read: such rows are identified by their content.
            file = None if cfg.objective.name == "dse" else source_fingerprint(cfg.data.path)
            prompt = getattr(encoder, "template", None)
            tokens = cache_contrastive(encoder.tokenizer, read,
                                       file and [cfg.data.kind, cfg.data.max_examples, file, *([prompt] if prompt else [])],
                                       text_columns=objective.text_columns, max_length=cfg.model.max_length,
                                       cache_dir=cfg.data.cache_dir, workers=cfg.data.workers)
            task = cls(cfg, mesh, encoder, objective, None, tokens, params, axes, frozen=frozen,
                       frozen_axes=frozen_axes, lora_modules=lora_modules)
            task.stream = streaming_pipeline(task, len(tokens), lambda rows, local: task.collate(tokens.examples(rows),
                                                                                                local))
        else:
            examples = read()
            stream = BatchStream(examples, cfg.data.batch_size, seed=cfg.seed, shuffle=cfg.data.shuffle)
            tokens = Tokenized(encoder.tokenizer, examples, objective.text_columns, cfg.model.max_length)
            task = cls(cfg, mesh, encoder, objective, stream, tokens, params, axes, frozen=frozen,
                       frozen_axes=frozen_axes, lora_modules=lora_modules)
        task.evaluator = sts_evaluator(cfg, encoder, pooling, mesh)
        return task

    def batch_axes(self) -> dict:
        tokens = (None, "batch", "length")
        return {"input_ids": tokens, "attention_mask": tokens, **{k: ("batch",) for k in self.objective.numeric_columns}}

    def value_and_grad(self):
        chunk = self.cfg.objective.cache_chunk
        if chunk is None:
            return jax.value_and_grad(loss_fn(self.objective), has_aux=True)
        return cached_value_and_grad(self.objective, chunk)

    def collate(self, examples: list, local: slice) -> dict:
        """A global batch's examples -> this process's arrays (rows ``local``)."""
        return collate(self.tokens, examples, self.objective.text_columns, self.cfg.data.buckets,
                       self.cfg.model.max_length, self.objective.numeric_columns, local=local)

    def next_batch(self) -> dict:
        if isinstance(self.stream, Pipeline):
            return self.stream.next()
        return self.collate(self.stream.next(), self.stream.local)

    def evaluate(self, params) -> dict[str, float]:
        if self.evaluator is None:
            return {}
        return {self.eval_metric: self.evaluator(self.objective.encoder_params(params, self.frozen))}

    def export(self, params, directory: str) -> None:
        """An encoder as a sentence-transformers checkpoint; a decoder as a causal-LM checkpoint
        (adapters merged; with LoRA also the PEFT adapter in ``adapter/``) and its prompt and
        pooling in ``embedding.json``, which ``jaxalign embed`` / ``eval sts`` read."""
        weights = jax.device_get(self.objective.encoder_params(params, self.frozen))
        if not isinstance(self.encoder, PromptEncoder):
            export_hf(self.encoder, weights, directory, self.objective.pooling)
            return
        if "lora" in params:
            lora_lib.save_adapter(Path(directory) / "adapter", params["lora"], self.lora_modules, self.cfg.model.lora,
                                  self.cfg.model.name)
        export_decoder(self.encoder.decoder, weights, directory)
        (Path(directory) / EMBEDDING_CONFIG).write_text(json.dumps(
            {"prompt": self.encoder.template, "pooling": self.encoder.pooling.mode,
             "layer": self.encoder.transformers_layer}, indent=2))


def load_sentence_encoder(cfg: TrainConfig, mesh: jax.sharding.Mesh) -> Encoder | PromptEncoder:
    """``model.name`` as a sentence encoder: an encoder checkpoint, or a decoder behind ``model.prompt``."""
    dtype = jnp.bfloat16 if cfg.model.dtype == "bfloat16" else jnp.float32
    m = cfg.model
    if not is_decoder(m.name):
        decoder_only = [f"model.{f}" for f in ("prompt", "embedding_dropout") if getattr(m, f)]
        decoder_only += ["model.lora.rank"] if m.lora.rank else []
        decoder_only += ["model.remat"] if m.remat != "none" else []
        if decoder_only:
            raise ValueError(f"{', '.join(decoder_only)}: for decoder models (model.name={m.name} is an encoder); "
                             "drop them, or train a decoder such as SmolLM2-135M-Instruct")
        return load_encoder(m.name, mesh=mesh, dtype=dtype, num_layers=m.num_layers, attention=m.attention)
    decoder = load_decoder(m.name, mesh=mesh, dtype=dtype, num_layers=m.num_layers, remat=m.remat,
                           attention=m.attention)
    pooling = PoolingConfig(mode=m.pooling or "last", layer=-1 if m.layer is None else m.layer)
    return PromptEncoder.build(decoder, m.prompt or "prompteol", pooling, embedding_dropout=m.embedding_dropout)


def sts_evaluator(cfg: TrainConfig, encoder: Encoder | PromptEncoder, pooling: PoolingConfig,
                  mesh: jax.sharding.Mesh) -> StsEvaluator | None:
    """The periodic STS evaluation of ``eval.data`` (None without it), embedding as the run trains."""
    if not cfg.eval.data:
        return None
    return StsEvaluator(sentence_embedder(encoder, pooling, mesh, cfg.eval.batch_size, cfg.model.max_length),
                        load_sts(cfg.eval.data, split=cfg.eval.split))


def sentence_embedder(encoder: Encoder | PromptEncoder, pooling: PoolingConfig, mesh: jax.sharding.Mesh,
                      batch_size: int, max_length: int) -> Embedder:
    """Batches of ``batch_size`` rounded down to the mesh's data-parallel shards, unnormalised."""
    shards = batch_parallel_size(mesh)
    batch_size = batch_size - batch_size % shards or shards
    if isinstance(encoder, PromptEncoder):
        return encoder.embedder(batch_size=batch_size, max_length=max_length, mesh=mesh)
    return Embedder(encoder, dataclasses.replace(pooling, normalize=False), batch_size=batch_size,
                    max_length=max_length, mesh=mesh)


def with_teacher_scores(examples: list, cfg: TrainConfig, mesh: jax.sharding.Mesh) -> list:
    """DSE: appends the teacher's cosine similarity of each pair, computed once before training
    over the run's mesh (every process embeds its devices' rows; all receive every score)."""
    teacher = load_encoder(cfg.objective.teacher or cfg.model.name, mesh=mesh)
    shards = batch_parallel_size(mesh)
    embed = Embedder(teacher, batch_size=-(-64 // shards) * shards, mesh=mesh)
    a = embed([ex[0] for ex in examples], progress=True, desc="teacher")
    b = embed([ex[1] for ex in examples], progress=True, desc="teacher")
    cos = (a * b).sum(-1) / np.maximum(np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1), 1e-12)
    return [(*ex, float(c)) for ex, c in zip(examples, cos)]

