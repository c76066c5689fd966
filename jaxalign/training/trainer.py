"""The training loop shared by every objective: ``train(TrainConfig)``.

Builds the mesh, model, objective, data stream and optimiser from the config; validates
everything static (shapes, divisibility, options) before compiling; then runs the jitted
step with a progress bar, periodic STS evaluation, metrics to JSONL/TensorBoard/W&B and Orbax
checkpoints, resuming exactly where a previous run of the same directory stopped.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time

import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding, PartitionSpec
from tqdm.auto import tqdm

from jaxalign import distributed
from jaxalign.config import to_dict
from jaxalign.config.run import TrainConfig
from jaxalign.data.stream import to_global
from jaxalign.sharding.mesh import ShardingConfigError, check_batch_size, make_mesh
from jaxalign.sharding.rules import named_sharding, tree_shardings
from jaxalign.tasks import Task, build_task
from jaxalign.training.checkpoint import Checkpointer, run_fingerprint
from jaxalign.training.early_stopping import EntropyStop
from jaxalign.training.metrics import MetricsWriter
from jaxalign.training.optim import build_optimizer
from jaxalign.training.preemption import StopRequests
from jaxalign.training.preflight import check_run_dirs
from jaxalign.training.progressive import train_rounds
from jaxalign.training.step import TrainState, jit_step, make_step

log = logging.getLogger(__name__)


class NonFiniteError(RuntimeError):
    """Training produced NaN/Inf in several consecutive steps."""


def nonfinite_message(cfg: TrainConfig) -> str:
    """Why the run stopped, with only the advice the config has not already followed."""
    advice = [f"lower optim.lr (now {cfg.optim.lr:g})"]
    if cfg.optim.warmup_steps == 0:
        advice.append("add optim.warmup_steps")
    if cfg.optim.clip_norm is None:
        advice.append("set optim.clip_norm (e.g. 1.0)")
    if cfg.model.dtype != "float32":
        advice.append("use model.dtype=float32")
    return (f"{cfg.max_nonfinite} consecutive steps had NaN/Inf loss or gradients (each was skipped); "
            + (", ".join(advice[:-1]) + " or " + advice[-1] if len(advice) > 1 else advice[0]))


def check_same_config(cfg: TrainConfig) -> None:
    """Every process must run the same recipe and overrides: refuse, naming the fields that
    differ, before anything is loaded."""
    mine = json.dumps(to_dict(cfg), sort_keys=True, default=str)

    def describe(a: str, b: str) -> str:
        flat = lambda d, p="": {k2: v2 for k, v in d.items()
                                for k2, v2 in (flat(v, f"{p}{k}.").items() if isinstance(v, dict) else [(p + k, v)])}
        x, y = flat(json.loads(a)), flat(json.loads(b))
        diff = [f"{k}: {x.get(k)!r} here, {y.get(k)!r} there" for k in sorted(set(x) | set(y)) if x.get(k) != y.get(k)]
        return "; ".join(diff) + ". Start every process with the same recipe and overrides"

    distributed.agree("config", mine, describe=describe)


def batch_signature(batch: dict) -> str:
    return " ".join(f"{k}{list(v.shape)}:{v.dtype}" for k, v in sorted(batch.items()))


@dataclasses.dataclass
class Run:
    """Everything a training run is built from; ``build`` validates before any compilation."""

    cfg: TrainConfig
    mesh: jax.sharding.Mesh
    task: Task
    optimizer: optax.GradientTransformation
    schedule: optax.Schedule
    state_shardings: TrainState
    batch_shardings: dict
    frozen_shardings: dict

    @classmethod
    def build(cls, cfg: TrainConfig, devices=None) -> "Run":
        """``devices`` restricts the mesh to a subset (default: all devices)."""
        if cfg.data.batch_size % jax.process_count():
            raise ShardingConfigError(
                f"data.batch_size={cfg.data.batch_size} is not divisible by the {jax.process_count()} processes; "
                f"use a multiple of {jax.process_count()}")
        mesh = make_mesh(cfg.mesh, devices)
        check_batch_size(cfg.data.batch_size, mesh, "data.batch_size")
        task = build_task(cfg, mesh)
        optimizer, schedule = build_optimizer(cfg.optim, cfg.steps)

        abstract = jax.eval_shape(lambda: task.params)
        param_shardings = tree_shardings(mesh, task.param_axes, abstract)
        replicated = NamedSharding(mesh, PartitionSpec())
        abstract_opt = jax.eval_shape(optimizer.init, abstract)
        opt_shardings = optax.tree_map_params(optimizer, lambda _, s: s, abstract_opt, param_shardings,
                                              transform_non_params=lambda _: replicated)
        tracked_shardings = tree_shardings(mesh, task.tracked_axes, jax.eval_shape(lambda: task.tracked))
        state_shardings = TrainState(replicated, param_shardings, opt_shardings, replicated, replicated, replicated,
                                     tracked_shardings)
        batch_shardings = {k: named_sharding(mesh, axes) for k, axes in task.batch_axes().items()}
        frozen_shardings = tree_shardings(mesh, task.frozen_axes, jax.eval_shape(lambda: task.frozen))
        return cls(cfg, mesh, task, optimizer, schedule, state_shardings, batch_shardings, frozen_shardings)

    def __post_init__(self):
        self._signatures: set[str] = set()

    def init_state(self) -> TrainState:
        """The initial train state, which from then on holds the task's trained and tracked arrays
        in its place: each array is held once. The task's parameters are donated (their buffers
        become the state's), except those the step also reads as ``frozen`` (a reference that is
        the initial policy); tracked arrays that are the policy's own (TR-DPO's initial reference)
        become real copies, since the step donates the whole state. The task's ``params`` and
        ``tracked`` are then dropped (``None``): evaluation and export read the state's."""
        task = self.task
        if task.params is None:
            raise RuntimeError("Run.init_state: the task's parameters already went into a train state; "
                               "build a new Run for another one")
        params, params_def = jax.tree.flatten(task.params)
        tracked, tracked_def = jax.tree.flatten(task.tracked)
        frozen = {id(x) for x in jax.tree.leaves(task.frozen)}
        donated = [id(x) not in frozen for x in params]
        position = {id(x): i for i, x in enumerate(params)}
        source = [position.get(id(x)) for x in tracked]  # the policy's index, or None: a tracked array of its own

        def create(own_params, shared_params, own_tracked):
            own, shared, rest = iter(own_params), iter(shared_params), iter(own_tracked)
            p = [next(own) if d else next(shared) for d in donated]
            t = [jnp.copy(p[i]) if i is not None else next(rest) for i in source]
            return TrainState.create(params_def.unflatten(p), self.optimizer, self.cfg.seed, tracked_def.unflatten(t))

        # A donated buffer becomes the state's only where it is laid out as the state's array
        # is; any other moves there first (the move donates it too).
        place = lambda x, s: x if x.sharding.is_equivalent_to(s, x.ndim) else jax.device_put(x, s, donate=True)
        shardings = jax.tree.leaves(self.state_shardings.params), jax.tree.leaves(self.state_shardings.tracked)
        state = jax.jit(create, out_shardings=self.state_shardings, donate_argnums=(0, 2))(
            [place(x, s) for x, s, d in zip(params, shardings[0], donated) if d],
            [x for x, d in zip(params, donated) if not d],
            [place(x, s) for x, s, i in zip(tracked, shardings[1], source) if i is None])
        task.params = task.tracked = None
        return state

    def step_fn(self):
        step = make_step(self.optimizer, value_and_grad=self.task.value_and_grad(), schedule=self.schedule,
                         grad_accum=self.cfg.optim.grad_accum,
                         update_tracked=self.task.update_tracked if self.task.tracked_axes else None)
        return jit_step(step, self.state_shardings, self.batch_shardings, self.frozen_shardings)

    def next_batch(self, step: int) -> dict:
        """The next global batch on the mesh. The first time a batch shape is seen (a new length
        bucket: a new compiled program), every process must see the same shape at the same step;
        otherwise the run stops, naming the processes and shapes, instead of pairing different
        programs' collectives."""
        local = self.task.next_batch()
        signature = batch_signature(local)
        if signature not in self._signatures:
            distributed.agree("batch shapes", f"step {step}: {signature}")
            self._signatures.add(signature)
        return to_global(local, self.batch_shardings)


def train(cfg: TrainConfig, *, progress: bool = True, stop_at: int | None = None) -> dict:
    """Runs training; returns a summary (losses, eval scores, steps, throughput, final state).

    ``stop_at`` ends this invocation after that step (with a checkpoint), as a preempted or
    time-sliced job would; running again with the same config resumes from there. An objective
    with progressive rounds (``objective.rounds`` > 1) runs every round
    (:func:`jaxalign.training.progressive.train_rounds`; ``stop_at`` applies to each).
    """
    if getattr(cfg.objective, "rounds", 1) > 1:
        return train_rounds(cfg, train_once, progress=progress, stop_at=stop_at)
    return train_once(cfg, progress=progress, stop_at=stop_at)


def train_once(cfg: TrainConfig, *, progress: bool = True, stop_at: int | None = None) -> dict:
    """One run of ``cfg``, as :func:`train` describes (a single round)."""
    end = min(cfg.steps, stop_at) if stop_at is not None else cfg.steps
    distributed.initialize()
    check_same_config(cfg)
    check_run_dirs(cfg)
    progress = progress and distributed.is_main()
    run = Run.build(cfg)
    # Inside the mesh, the models' activation constraints (sharding.rules.constrain) apply:
    # without it every device would hold whole-batch activations.
    with jax.set_mesh(run.mesh):
        return _run(cfg, run, progress=progress, end=end)


def _run(cfg: TrainConfig, run: Run, *, progress: bool, end: int) -> dict:
    """The loop of :func:`train` over a built run: resume, evaluate, step, log, checkpoint."""
    task = run.task
    writer = MetricsWriter.for_run(cfg) if distributed.is_main() else MetricsWriter(None)
    state = run.init_state()
    ckpt = Checkpointer(cfg.checkpoint, run_fingerprint(cfg, state)) if cfg.checkpoint.dir else None
    restored = ckpt.resume(state) if ckpt is not None and cfg.checkpoint.resume else None
    start = 0
    if restored is not None:
        state, task.stream.state, start = restored
        log.warning("resuming from step %d of %s", start, ckpt.dir)
    if start or cfg.checkpoint.overwrite:
        writer.discard_from(start + 1 if start else 0)  # the rows of the steps this run logs (again)
    step_fn = run.step_fn()
    early_stop = EntropyStop.from_config(cfg.eval)
    # A stopping rule on the entropy also picks the best checkpoints by it: the turning point.
    best_metric = cfg.eval.stop_on if early_stop else task.eval_metric
    summary = {"losses": {}, "eval": {}, "eval_metrics": {}, "eval_metric": best_metric, "resumed_from": start}

    def evaluate(step: int) -> float | None:
        """Held-out metrics of the current parameters, logged; returns the best-checkpoint score."""
        metrics = task.evaluate(state.params)
        if not metrics:
            return None
        writer.write(step, metrics)
        summary["eval_metrics"][step] = metrics
        summary["eval"][step] = metrics.get(best_metric)
        return summary["eval"][step]

    if start == 0:
        initial = evaluate(0)
        if early_stop is not None:
            early_stop.start(initial)
    bar = tqdm(total=cfg.steps, initial=start, desc="train", unit="step", disable=not progress, dynamic_ncols=True)
    examples_seen, t0, prev = 0, time.perf_counter(), None
    stops = StopRequests.install()
    try:
        for step in range(start, end):
            state, metrics = step_fn(state, run.next_batch(step), task.frozen)
            examples_seen += cfg.data.batch_size
            # Read the previous step's counters while this one runs: no stall of the pipeline.
            if prev is not None and int(prev["nonfinite"]) >= cfg.max_nonfinite:
                raise NonFiniteError(nonfinite_message(cfg))
            prev = metrics
            done = step + 1
            if done % cfg.log.every == 0 or done == end:
                host = {k: float(v) for k, v in jax.device_get(metrics).items()}
                host["examples_per_s"] = examples_seen / (time.perf_counter() - t0)
                summary["losses"][done] = host["loss"]
                writer.write(done, host)
                bar.set_postfix(loss=f"{host['loss']:.4f}", ex_s=f"{host['examples_per_s']:.0f}")
            early = None
            if done % cfg.eval.every == 0 or done == end:
                score = evaluate(done)
                if ckpt is not None and score is not None:
                    ckpt.save_best(done, state, task.stream.state, score)
                early = early_stop.update(score) if early_stop is not None else None
            stop = stops.should_stop(done) or early is not None
            if ckpt is not None:
                ckpt.save(done, state, task.stream.state, force=done == end or stop)
            bar.update(1)
            if stop:
                end = done
                summary["stopped_by"] = early or stops.signal
                if early:
                    log.warning("stopping early after step %d: %s", done, early)
                break
    finally:
        stops.restore()
        bar.close()
        writer.close()
        task.stream.close()
        if ckpt is not None:
            ckpt.wait()
            ckpt.close()
    summary.update(steps=end, skipped=int(state.skipped),
                   examples_per_s=examples_seen / max(time.perf_counter() - t0, 1e-9))
    if cfg.export and end == cfg.steps:
        task.export(state.params, cfg.export)
        summary["export"] = cfg.export
    summary["state"] = state
    return summary
