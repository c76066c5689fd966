"""Contrastive training of sentence encoders as a task of the training engine.

Trainable parameters are ``{"encoder": ..., "head": ...}`` (the head is training-only:
SimCSE's MLP, WhitenedCSE's projection, DSE's pair head); nothing is frozen. Batches are
``input_ids``/``attention_mask`` ``[C, B, T]`` (C text columns) plus per-example float
columns; evaluation is STS (Spearman x 100, ``all`` averaged) of the encoder alone.
"""

from __future__ import annotations

import dataclasses

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
from jaxalign.models.export import export_hf
from jaxalign.models.registry import Encoder, load_encoder
from jaxalign.objectives.contrastive import ContrastiveObjective, cached_value_and_grad, loss_fn
from jaxalign.sharding.mesh import batch_parallel_size


@dataclasses.dataclass
class ContrastiveTask:
    cfg: TrainConfig
    mesh: jax.sharding.Mesh
    encoder: Encoder
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

    @classmethod
    def build(cls, cfg: TrainConfig, mesh: jax.sharding.Mesh) -> "ContrastiveTask":
        dtype = jnp.bfloat16 if cfg.model.dtype == "bfloat16" else jnp.float32
        encoder = load_encoder(cfg.model.name, mesh=mesh, dtype=dtype, num_layers=cfg.model.num_layers,
                               attention=cfg.model.attention)
        pooling = dataclasses.replace(encoder.pooling, mode=cfg.model.pooling) if cfg.model.pooling else encoder.pooling
        objective = ContrastiveObjective(cfg.objective, cfg.data.kind, encoder, pooling, dropout=cfg.model.dropout,
                                         num_shards=batch_parallel_size(mesh))
        objective.check_batch(cfg.data.batch_size)

        def read() -> list:
            examples = read_corpus(cfg.data.kind, cfg.data.path, cfg.data.max_examples)
            return with_teacher_scores(examples, cfg, mesh) if cfg.objective.name == "dse" else examples

        head, head_axes = objective.init_head(jax.random.PRNGKey(cfg.seed + 1))
        params, axes = {"encoder": encoder.params, "head": head}, {"encoder": encoder.axes, "head": head_axes}
        if cfg.data.pipeline == "streaming":
            # DSE's teacher scores are computed, not read: such rows are identified by their content.
            file = None if cfg.objective.name == "dse" else source_fingerprint(cfg.data.path)
            tokens = cache_contrastive(encoder.tokenizer, read, file and [cfg.data.kind, cfg.data.max_examples, file],
                                       text_columns=objective.text_columns, max_length=cfg.model.max_length,
                                       cache_dir=cfg.data.cache_dir, workers=cfg.data.workers)
            task = cls(cfg, mesh, encoder, objective, None, tokens, params, axes)
            task.stream = streaming_pipeline(task, len(tokens), lambda rows, local: task.collate(tokens.examples(rows),
                                                                                                local))
        else:
            examples = read()
            stream = BatchStream(examples, cfg.data.batch_size, seed=cfg.seed, shuffle=cfg.data.shuffle)
            tokens = Tokenized(encoder.tokenizer, examples, objective.text_columns, cfg.model.max_length)
            task = cls(cfg, mesh, encoder, objective, stream, tokens, params, axes)
        if cfg.eval.data:
            task.evaluator = StsEvaluator(encoder, pooling, load_sts(cfg.eval.data, split=cfg.eval.split), mesh=mesh,
                                          batch_size=cfg.eval.batch_size, max_length=cfg.model.max_length)
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
        return {} if self.evaluator is None else {self.eval_metric: self.evaluator(params["encoder"])}

    def export(self, params, directory: str) -> None:
        export_hf(self.encoder, jax.device_get(params["encoder"]), directory, self.objective.pooling)


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

