"""Orbax checkpointing of the training state and the data stream's position.

Two managers share one run directory:

* ``<dir>/last``: every ``every`` steps and at the end, keeping the newest ``keep_last``;
* ``<dir>/best``: at each evaluation, keeping the ``keep_best`` highest-scoring.

Orbax writes each checkpoint into a temporary directory and renames it when complete, so a
run killed mid-save leaves the previous checkpoint as the newest complete one; ``restore``
only ever sees finalised steps. Saving is asynchronous: the arrays are copied off the
device and written in the background while training continues.

Each checkpoint's JSON item also holds the run's *fingerprint* (:func:`run_fingerprint`):
resuming compares it first and refuses a directory written by another recipe or model in one
line naming the fields that differ. A newest step that does not restore (truncated or
corrupted files) is set aside with a warning and the step before it is used.

``checkpoint.dir`` may be a local path or a bucket (``gs://bucket/run``): paths go through
``etils.epath``, which Orbax itself uses, so every process of a pod writes its shards of one
checkpoint there and any topology can restore it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
from collections.abc import Callable
from typing import Any

import jax
import orbax.checkpoint as ocp
from etils import epath
from jax.experimental import multihost_utils

from jaxalign import distributed
from jaxalign.config.run import CheckpointConfig, OptimConfig, TrainConfig, checkpoint_path
from jaxalign.data.stream import StreamState

log = logging.getLogger(__name__)

MANAGERS = ("last", "best")  # the sub-directories of a run's checkpoint.dir


class ResumeError(ValueError):
    """A checkpoint directory this run must not continue from, or start over in."""


def _fields(state: Any) -> dict:
    """The train state as the dict of its fields that is written: ``tracked`` only when the run
    tracks something, so checkpoints of runs that track nothing are the same as before it
    existed (and still restore)."""
    fields = {f.name: getattr(state, f.name) for f in dataclasses.fields(state)}
    if not fields["tracked"]:
        del fields["tracked"]
    return fields


def _tree_summary(tree: Any) -> str:
    """``"N arrays, M values, #digest"``: the digest covers every leaf's path, shape and dtype,
    so two summaries are equal exactly when one tree restores into the other's layout."""
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    layout = "\n".join(f"{jax.tree_util.keystr(path)} {tuple(x.shape)} {x.dtype}" for path, x in leaves)
    values = sum(math.prod(x.shape) for _, x in leaves)
    return f"{len(leaves)} arrays, {values} values, #{hashlib.sha256(layout.encode()).hexdigest()[:12]}"


def _optimizer_kind(cfg: OptimConfig) -> str:
    """The optimiser chain as it shapes the optimiser state (hyperparameters such as the
    learning rate or the clipping norm may change on resume; the chain may not)."""
    chain = ("clip_by_global_norm+" if cfg.clip_norm is not None else "") + "adamw"
    return f"MultiSteps({chain})" if cfg.grad_accum > 1 else chain


def run_fingerprint(cfg: TrainConfig, state: Any) -> dict[str, str]:
    """What a checkpoint must share with this run to be resumed by it: the settings that shape
    the train state (model, LoRA, objective, optimiser chain) and the parameter layout itself,
    as readable strings so a mismatch can be reported field by field."""
    model, objective = cfg.model, cfg.objective
    return {
        "model.name": model.name,
        "model.num_layers": str(model.num_layers),
        "model.dtype": model.dtype,
        "model.lora.rank": str(model.lora.rank),
        "model.lora.targets": ",".join(model.lora.targets) if model.lora.rank else "-",
        "objective.name": objective.name,
        **{f"objective.{k}": str(getattr(objective, k)) for k in ("head", "sync_ref_model") if hasattr(objective, k)},
        "optimizer": _optimizer_kind(cfg.optim),
        "params": _tree_summary(state.params),
    }


def fingerprint_changes(old: dict[str, str], new: dict[str, str]) -> list[str]:
    """``"field: old -> new"`` for each field both fingerprints hold and that differs (a field
    one of them lacks, from an older or newer jaxalign, is not compared)."""
    return [f"{key}: {old[key]} -> {value}" for key, value in new.items() if key in old and old[key] != value]


def _steps(directory: epath.Path) -> list[int]:
    """The finalised steps in a manager's directory (Orbax names them by the step number; an
    unfinished save is ``<step>.orbax-checkpoint-tmp-<n>``), ascending."""
    if not directory.is_dir():
        return []
    return sorted(int(p.name) for p in directory.iterdir() if p.is_dir() and p.name.isdigit())


def _earlier_run(directory: epath.Path) -> list[str]:
    """What an earlier run left in ``directory``, described; empty when there is nothing (the
    empty ``last``/``best`` folders of a run that never saved count as nothing)."""
    if not directory.is_dir():
        return []
    found = []
    for entry in sorted(directory.iterdir()):
        if entry.name in MANAGERS and entry.is_dir():
            steps = _steps(entry)
            if steps:
                found.append(f"{entry.name}/ steps {', '.join(map(str, steps))}")
            elif any(entry.iterdir()):
                found.append(f"{entry.name}/ without complete steps")
        else:
            found.append(entry.name)
    return found


def check_directory(cfg: CheckpointConfig, steps: int) -> None:
    """Refuses, before anything is loaded, a checkpoint directory this run would damage or
    misuse: an earlier run's when not resuming (its steps would be deleted by this run's
    saves) unless ``overwrite`` asks for that, and, when resuming, one already past ``steps``
    (the run would train nothing and export the later model as this one's result)."""
    directory = checkpoint_path(cfg.dir)
    if not cfg.resume:
        found = _earlier_run(directory)
        if found and not cfg.overwrite:
            raise ResumeError(
                f"checkpoint.dir={cfg.dir} holds an earlier run ({'; '.join(found)}) and checkpoint.resume=false: "
                "set checkpoint.resume=true to continue it, checkpoint.overwrite=true to delete its checkpoints "
                "and start over, or choose another checkpoint.dir")
        return
    newest = max(_steps(directory / "last"), default=0)
    if newest > steps:
        raise ResumeError(
            f"checkpoint.dir={cfg.dir} holds a checkpoint at step {newest}, past steps={steps}: resuming would "
            f"train nothing and give the step-{newest} model as the result; raise steps to at least {newest} "
            "or use another checkpoint.dir")


def _one_line(error: BaseException) -> str:
    """An exception as one short line: its type and the first line of its message."""
    lines = str(error).strip().splitlines()
    first = lines[0] if lines else ""
    return f"{type(error).__name__}: {first[:240]}{'...' if len(first) > 240 or len(lines) > 1 else ''}"


def _on_process_0(action: Callable[[], None], name: str) -> None:
    """Runs a file-system ``action`` on process 0 only, then waits for every process, so no
    process reads the directory while it changes."""
    if jax.process_index() == 0:
        action()
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


class Checkpointer:
    """``fingerprint`` (:func:`run_fingerprint`) is written with every checkpoint and checked
    on restore. With ``cfg.overwrite`` the directory's earlier checkpoints are deleted first."""

    def __init__(self, cfg: CheckpointConfig, fingerprint: dict[str, str] | None = None):
        self.cfg = cfg
        self.fingerprint = fingerprint or {}
        self.dir = checkpoint_path(cfg.dir)
        if cfg.overwrite:
            _on_process_0(lambda: [(self.dir / name).rmtree(missing_ok=True) for name in MANAGERS],
                          "jaxalign: earlier checkpoints deleted")
        common = dict(enable_async_checkpointing=cfg.async_save, create=True)
        self.last = ocp.CheckpointManager(
            self.dir / "last", options=ocp.CheckpointManagerOptions(max_to_keep=cfg.keep_last, **common))
        self.best = ocp.CheckpointManager(
            self.dir / "best",
            options=ocp.CheckpointManagerOptions(max_to_keep=cfg.keep_best, best_fn=lambda m: m["score"],
                                                 best_mode="max", **common))

    def _args(self, state: Any, stream: StreamState, extra: dict) -> ocp.args.Composite:
        return ocp.args.Composite(
            state=ocp.args.StandardSave(_fields(state)),
            meta=ocp.args.JsonSave({"stream": dataclasses.asdict(stream), "fingerprint": self.fingerprint, **extra}))

    def save(self, step: int, state: Any, stream: StreamState, *, force: bool = False) -> bool:
        """Saves to ``last`` if ``step`` is on the schedule (or ``force``); returns whether it did."""
        if not force and step % self.cfg.every:
            return False
        if step in self.last.all_steps():
            return False
        return self.last.save(step, args=self._args(state, stream, {}), force=True)

    def save_best(self, step: int, state: Any, stream: StreamState, score: float) -> None:
        self.best.save(step, args=self._args(state, stream, {"score": score}), metrics={"score": score}, force=True)

    def restore(self, abstract_state: Any, step: int | None = None, *, best: bool = False) -> tuple[Any, StreamState, int]:
        """Restores into ``abstract_state``'s shapes, dtypes and shardings (no host copy), after
        checking the checkpoint's fingerprint against this run's (checkpoints written before
        fingerprints existed have none and are not checked)."""
        manager = self.best if best else self.last
        step = manager.best_step() if best and step is None else (step if step is not None else manager.latest_step())
        if step is None:
            raise FileNotFoundError(f"no complete checkpoint in {manager.directory}")
        meta = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
        changes = fingerprint_changes(meta.get("fingerprint", {}), self.fingerprint)
        if changes:
            raise ResumeError(f"checkpoint.dir={self.dir} was written by another run ({'; '.join(changes)}): "
                              "resume with its settings, use another checkpoint.dir, or start over in it with "
                              "checkpoint.resume=false checkpoint.overwrite=true")
        target = jax.tree.map(ocp.utils.to_shape_dtype_struct, _fields(abstract_state))
        restored = manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()))
        state = dataclasses.replace(abstract_state, **restored["state"])
        return state, StreamState(**restored["meta"]["stream"]), step

    def resume(self, abstract_state: Any) -> tuple[Any, StreamState, int] | None:
        """Restores the newest step of ``last`` that restores; ``None`` when there is none yet.

        Steps that fail (truncated or corrupted files) are skipped; once an older step restores,
        each skipped one is set aside as ``<step>.unrestorable`` (this run trains and saves those
        steps again) with a one-line warning saying why. A checkpoint of another run (fingerprint
        mismatch) is refused at once rather than skipped; when no step restores, nothing is
        moved and the run stops naming the reasons.
        """
        failed: dict[int, str] = {}
        for step in sorted(self.last.all_steps(), reverse=True):
            try:
                restored = self.restore(abstract_state, step)
            except ResumeError:
                raise
            except Exception as e:  # Orbax and TensorStore raise many types for unreadable files
                failed[step] = _one_line(e)
                continue
            distributed.agree("resumed checkpoint step", str(step))  # every process continues the same step
            if failed:
                _on_process_0(lambda: self._set_aside(failed, step), "jaxalign: unrestorable steps set aside")
                self.last.reload()
            return restored
        if failed:
            reasons = "; ".join(f"step {s}: {why}" for s, why in failed.items())
            raise ResumeError(f"no checkpoint in {self.dir / 'last'} restores ({reasons}): fix or remove them, "
                              "or start over with checkpoint.resume=false checkpoint.overwrite=true")
        return None

    def _set_aside(self, failed: dict[int, str], resumed: int) -> None:
        """Renames each failed step of ``last`` to ``<step>.unrestorable`` (``.2``, ... when taken),
        out of Orbax's sight so the run can save that step again, but kept for inspection; one
        warning line per step says which and why."""
        for step, why in failed.items():
            source = self.dir / "last" / str(step)
            target, n = source.with_name(f"{step}.unrestorable"), 1
            while target.exists():
                n += 1
                target = source.with_name(f"{step}.unrestorable.{n}")
            source.rename(target)
            log.warning("skipped checkpoint step %d of %s, which does not restore (%s): resuming from step %d; "
                        "the step is kept as %s", step, self.dir, why, resumed, target)

    def wait(self) -> None:
        self.last.wait_until_finished()
        self.best.wait_until_finished()

    def close(self) -> None:
        self.last.close()
        self.best.close()
