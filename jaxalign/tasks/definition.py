"""DefSent+ (``objective.name=defsent``) as a task of the training engine: one round of it.

The encoder is trained (``params = {"encoder"}``; no head of its own) to classify each
definition of ``data.path`` (:mod:`jaxalign.data.definitions`) among all entries. The entry
matrix is computed before training by ``objective.entry_model`` (default: the model being
trained) in eval mode, optionally FastICA-whitened, cut into chunks and split over the
mesh's ``fsdp`` x ``tensor`` devices (logical axis ``entries``), then read by the step as
``frozen["entries"]``. Batches are ``input_ids``/``attention_mask`` ``[1, B, T]`` and
``label`` ``[B]``; evaluation (STS) and export (Hugging Face checkpoint) are the contrastive
task's, with ``model.pooling`` or the checkpoint's pooling. Progressive rounds are run by
:func:`jaxalign.training.progressive.train_rounds`.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from jaxalign.config.loader import ConfigError
from jaxalign.config.run import TrainConfig
from jaxalign.data.definitions import Dictionary, read_definitions
from jaxalign.data.stream import BatchStream, Tokenized, collate
from jaxalign.eval.sts import StsEvaluator
from jaxalign.inference.embed import Embedder
from jaxalign.losses.definition import chunk_entries
from jaxalign.models.export import export_hf
from jaxalign.models.registry import Encoder, load_encoder
from jaxalign.objectives.definition import DefinitionObjective
from jaxalign.objectives.entries import ENTRY_POOLING, entry_embeddings, isotropic
from jaxalign.ops.pooling import PoolingConfig
from jaxalign.sharding.mesh import batch_parallel_size
from jaxalign.sharding.rules import named_sharding
from jaxalign.tasks.contrastive import sts_evaluator

ENTRY_AXES = (None, "entries", None)  # [chunks, entries of a chunk, embedding]


def check_static(cfg: TrainConfig, mesh: jax.sharding.Mesh) -> int:
    """What this task cannot run, refused before anything is loaded; returns how many ways the
    entry matrix is split."""
    if cfg.data.pipeline != "memory":
        raise ConfigError("data.pipeline=streaming with objective.name=defsent: the dictionary is read into memory "
                          "(its entry matrix needs every definition first); use data.pipeline=memory")
    split = mesh.shape["fsdp"] * mesh.shape["tensor"]
    if cfg.objective.chunk % split:
        raise ConfigError(f"objective.chunk={cfg.objective.chunk}: the entry matrix is split over mesh fsdp x tensor = "
                          f"{split} devices; use a multiple of {split}")
    return split


def entry_matrix(cfg: TrainConfig, dictionary: Dictionary, encoder: Encoder, mesh: jax.sharding.Mesh) -> np.ndarray:
    """``[N, D]`` entry embeddings by ``objective.entry_model``, else by ``encoder`` (the model
    about to be trained), over the mesh."""
    obj = cfg.objective
    source = load_encoder(obj.entry_model, mesh=mesh, num_layers=cfg.model.num_layers) if obj.entry_model else encoder
    shards = batch_parallel_size(mesh)
    embedder = Embedder(source, ENTRY_POOLING[obj.entry_pooling], batch_size=-(-cfg.eval.batch_size // shards) * shards,
                        max_length=cfg.model.max_length, mesh=mesh)
    entries = entry_embeddings(embedder, dictionary)
    return isotropic(entries) if obj.isotropic else entries


@dataclasses.dataclass
class DefinitionTask:
    cfg: TrainConfig
    mesh: jax.sharding.Mesh
    encoder: Encoder
    objective: DefinitionObjective
    pooling: PoolingConfig  # evaluation and export
    stream: BatchStream
    tokens: Tokenized
    params: dict
    param_axes: dict
    frozen: dict
    frozen_axes: dict
    evaluator: StsEvaluator | None = None
    tracked: dict = dataclasses.field(default_factory=dict)
    tracked_axes: dict = dataclasses.field(default_factory=dict)
    eval_metric: str = "eval/sts"

    @classmethod
    def build(cls, cfg: TrainConfig, mesh: jax.sharding.Mesh) -> DefinitionTask:
        split = check_static(cfg, mesh)
        dictionary = read_definitions(cfg.data.path, cfg.data.max_examples)
        dtype = jnp.bfloat16 if cfg.model.dtype == "bfloat16" else jnp.float32
        encoder = load_encoder(cfg.model.name, mesh=mesh, dtype=dtype, num_layers=cfg.model.num_layers)
        objective = DefinitionObjective(cfg.objective, encoder, len(dictionary.entries), dropout=cfg.model.dropout)
        pooling = dataclasses.replace(encoder.pooling, mode=cfg.model.pooling) if cfg.model.pooling else encoder.pooling
        chunk = min(cfg.objective.chunk, -(-len(dictionary.entries) // split) * split)  # a small dictionary: one chunk
        chunked = chunk_entries(entry_matrix(cfg, dictionary, encoder, mesh), chunk)
        sharding = named_sharding(mesh, ENTRY_AXES, chunked.shape, name="objective.chunk")
        entries = jax.make_array_from_callback(chunked.shape, sharding, lambda index: chunked[index])
        examples = dictionary.examples
        stream = BatchStream(examples, cfg.data.batch_size, seed=cfg.seed, shuffle=cfg.data.shuffle)
        tokens = Tokenized(encoder.tokenizer, examples, 1, cfg.model.max_length)
        task = cls(cfg, mesh, encoder, objective, pooling, stream, tokens, {"encoder": encoder.params},
                   {"encoder": encoder.axes}, {"entries": entries}, {"entries": ENTRY_AXES})
        task.evaluator = sts_evaluator(cfg, encoder, pooling, mesh)
        return task

    def batch_axes(self) -> dict:
        tokens = (None, "batch", "length")
        return {"input_ids": tokens, "attention_mask": tokens, "label": ("batch",)}

    def value_and_grad(self):
        return jax.value_and_grad(self.objective.loss_fn(), has_aux=True)

    def next_batch(self) -> dict:
        examples, local = self.stream.next(), self.stream.local
        batch = collate(self.tokens, examples, 1, self.cfg.data.buckets, self.cfg.model.max_length, local=local)
        batch["label"] = np.asarray([label for _, label in examples[local]], np.int32)
        return batch

    def evaluate(self, params) -> dict[str, float]:
        return {} if self.evaluator is None else {self.eval_metric: self.evaluator(params["encoder"])}

    def export(self, params, directory: str) -> None:
        export_hf(self.encoder, jax.device_get(params["encoder"]), directory, self.pooling)
