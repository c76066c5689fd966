"""DefSent+ as a plug-in of the generic training step: definitions classified among entries.

Following the official ``TrainEncoder.py`` (github.com/ryuliuxiaodong/DefSent-Plus; Liu
2024, arXiv 2405.16153), a definition's vector is the checkpoint's pooler (dense + tanh) over
its ``[CLS]`` state (``cls``: BERT's pooler output) or over its masked token mean (``mean``),
and the loss is the cross-entropy of ``s @ W.T`` over every entry, ``W`` the frozen entry
embeddings (:mod:`jaxalign.objectives.entries`), read from the step's ``frozen`` arrays as
``frozen["entries"]`` ``[K, C, D]`` (:func:`jaxalign.losses.definition.chunk_entries`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp

from jaxalign.config.objectives import DefSent
from jaxalign.losses.definition import entry_cross_entropy
from jaxalign.models.registry import Encoder
from jaxalign.objectives.heads import dense
from jaxalign.ops.pooling import masked_mean


@dataclasses.dataclass(frozen=True)
class DefinitionObjective:
    cfg: DefSent
    encoder: Encoder
    num_entries: int
    dropout: bool = True

    def __post_init__(self):
        if not self.encoder.config.with_pooler:
            raise ValueError(f"objective.name=defsent feeds definitions through the checkpoint's pooler "
                             f"(pooler.dense.*), which {self.encoder.path} lacks; use a checkpoint with a pooler "
                             "(BERT's)")

    def embed(self, params, input_ids: jax.Array, attention_mask: jax.Array, rng: jax.Array | None) -> jax.Array:
        """[B, T] tokens -> [B, D] float32 classifier inputs (dropout on exactly when ``rng`` is given)."""
        out = self.encoder.apply(params, input_ids, attention_mask, dropout_rng=rng if self.dropout else None)
        if self.cfg.classifier_pooling == "cls":
            return out.pooler_output.astype(jnp.float32)
        return jnp.tanh(dense(params["pooler"]["dense"], masked_mean(out.last_hidden_state, attention_mask)))

    def loss_fn(self) -> Callable:
        """``(params, batch, rng, frozen) -> (loss, {"accuracy"})`` with ``params = {"encoder"}``,
        ``batch`` = ``input_ids``/``attention_mask`` [1, B, T] and ``label`` [B]."""

        def f(params, batch, rng, frozen):
            s = self.embed(params["encoder"], batch["input_ids"][0], batch["attention_mask"][0], rng)
            loss, accuracy = entry_cross_entropy(s, frozen["entries"], batch["label"], num_entries=self.num_entries)
            return loss, {"accuracy": accuracy}

        return f
