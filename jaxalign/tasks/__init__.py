"""What a training run trains: the plug-in interface of the one training engine.

A *task* bundles everything that differs between kinds of training -- which model(s) to
load, how examples become batches, the loss, what to evaluate and how to export -- behind
one small interface, so that :mod:`jaxalign.training.trainer` (loop, shardings, optimiser,
checkpoints, logging) is written once. Three tasks exist:

* :class:`jaxalign.tasks.contrastive.ContrastiveTask`: sentence encoders (SimCSE,
  WhitenedCSE, 2DMSE, CoSENT, AnglE, DSE, ...);
* :class:`jaxalign.tasks.definition.DefinitionTask`: sentence encoders classifying dictionary
  definitions among their entries (DefSent+);
* :class:`jaxalign.tasks.preference.PreferenceTask`: causal LMs on preference data (the DPO
  family, SimPO, ORPO, KTO, ...).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import jax
from jax.sharding import Mesh

from jaxalign.config.run import TrainConfig
from jaxalign.data.pipeline import Pipeline
from jaxalign.data.stream import BatchStream
from jaxalign.tasks.contrastive import ContrastiveTask
from jaxalign.tasks.definition import DefinitionTask
from jaxalign.tasks.preference import PreferenceTask

LogicalAxes = tuple[str | None, ...]


class Task(Protocol):
    """``params`` are trained; ``frozen`` arrays are read by the step but never updated (a
    reference model, a LoRA base); ``tracked`` arrays are read by the step and updated by
    ``update_tracked`` after it, untrained (TR-DPO's synced reference); all are nested dicts
    already placed on the mesh, with their logical axes in ``param_axes`` / ``frozen_axes`` /
    ``tracked_axes``. The loss sees ``frozen`` and ``tracked`` merged, as its ``frozen``.
    :meth:`jaxalign.training.trainer.Run.init_state` donates ``params`` and ``tracked`` into the
    train state and sets both to ``None``: after it, the state holds them (each array once), and
    ``evaluate``/``export`` are given the state's."""

    params: dict | None
    param_axes: dict
    frozen: dict
    frozen_axes: dict
    tracked: dict | None
    tracked_axes: dict
    stream: BatchStream | Pipeline  # its ``state`` is checkpointed; ``close()`` ends the run
    eval_metric: str | None  # key of ``evaluate``'s result that selects the best checkpoint (higher = better)

    def batch_axes(self) -> dict[str, LogicalAxes]:
        """Logical axes of every array ``next_batch`` returns."""

    def value_and_grad(self) -> Callable[[Any, dict, jax.Array, Any], tuple[tuple[jax.Array, dict], Any]]:
        """``(params, batch, rng, frozen) -> ((loss, metrics), grads)``, traced inside the step."""

    def next_batch(self) -> dict:
        """This process's slice of the next global batch, NumPy arrays of static bucketed shapes
        (or, from the streaming pipeline, the global jax.Arrays already placed on the mesh)."""

    def evaluate(self, params) -> dict[str, float]:
        """Held-out metrics of ``params`` (empty when no evaluation data is configured)."""

    def update_tracked(self, tracked: dict, params, steps_done: jax.Array) -> dict:
        """The next ``tracked`` from the updated parameters, traced inside the step; called only
        when ``tracked`` is not empty (a task that tracks nothing need not define it)."""

    def export(self, params, directory: str) -> None:
        """Writes the trained model in its ecosystem's format (Hugging Face checkpoint)."""


def build_task(cfg: TrainConfig, mesh: Mesh) -> Task:
    """The task that ``cfg.objective`` trains, loaded onto ``mesh``."""
    if cfg.objective.family == "preference":
        return PreferenceTask.build(cfg, mesh)
    if cfg.objective.name == "defsent":
        return DefinitionTask.build(cfg, mesh)
    return ContrastiveTask.build(cfg, mesh)
