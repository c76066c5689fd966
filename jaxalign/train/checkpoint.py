"""Orbax checkpointing of the training state and the data stream's position.

Two managers share one run directory:

* ``<dir>/last``: every ``every`` steps and at the end, keeping the newest ``keep_last``;
* ``<dir>/best``: at each evaluation, keeping the ``keep_best`` highest-scoring.

Orbax writes each checkpoint into a temporary directory and renames it when complete, so a
run killed mid-save leaves the previous checkpoint as the newest complete one; ``restore``
only ever sees finalised steps. Saving is asynchronous: the arrays are copied off the
device and written in the background while training continues.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

from jaxalign.data.stream import StreamState
from jaxalign.train.config import CheckpointConfig


def _fields(state: Any) -> dict:
    """The train state as the dict of its fields that is written: ``tracked`` only when the run
    tracks something, so checkpoints of runs that track nothing are the same as before it
    existed (and still restore)."""
    fields = {f.name: getattr(state, f.name) for f in dataclasses.fields(state)}
    if not fields["tracked"]:
        del fields["tracked"]
    return fields


class Checkpointer:
    def __init__(self, cfg: CheckpointConfig):
        self.cfg = cfg
        self.dir = Path(cfg.dir).expanduser().resolve()
        common = dict(enable_async_checkpointing=cfg.async_save, create=True)
        self.last = ocp.CheckpointManager(
            self.dir / "last", options=ocp.CheckpointManagerOptions(max_to_keep=cfg.keep_last, **common))
        self.best = ocp.CheckpointManager(
            self.dir / "best",
            options=ocp.CheckpointManagerOptions(max_to_keep=cfg.keep_best, best_fn=lambda m: m["score"],
                                                 best_mode="max", **common))

    @staticmethod
    def _args(state: Any, stream: StreamState, extra: dict) -> ocp.args.Composite:
        return ocp.args.Composite(
            state=ocp.args.StandardSave(_fields(state)),
            meta=ocp.args.JsonSave({"stream": dataclasses.asdict(stream), **extra}))

    def save(self, step: int, state: Any, stream: StreamState, *, force: bool = False) -> bool:
        """Saves to ``last`` if ``step`` is on the schedule (or ``force``); returns whether it did."""
        if not force and step % self.cfg.every:
            return False
        if step in self.last.all_steps():
            return False
        return self.last.save(step, args=self._args(state, stream, {}), force=True)

    def save_best(self, step: int, state: Any, stream: StreamState, score: float) -> None:
        self.best.save(step, args=self._args(state, stream, {"score": score}), metrics={"score": score}, force=True)

    def latest_step(self) -> int | None:
        return self.last.latest_step()

    def restore(self, abstract_state: Any, step: int | None = None, *, best: bool = False) -> tuple[Any, StreamState, int]:
        """Restores into ``abstract_state``'s shapes, dtypes and shardings (no host copy)."""
        manager = self.best if best else self.last
        step = manager.best_step() if best and step is None else (step if step is not None else manager.latest_step())
        if step is None:
            raise FileNotFoundError(f"no complete checkpoint in {manager.directory}")
        target = jax.tree.map(ocp.utils.to_shape_dtype_struct, _fields(abstract_state))
        restored = manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()))
        state = dataclasses.replace(abstract_state, **restored["state"])
        return state, StreamState(**restored["meta"]["stream"]), step

    def wait(self) -> None:
        self.last.wait_until_finished()
        self.best.wait_until_finished()

    def close(self) -> None:
        self.last.close()
        self.best.close()
