"""The training loop shared by every objective: ``train(TrainConfig)``.

Builds the mesh, model, objective, data stream and optimiser from the config; validates
everything static (shapes, divisibility, options) before compiling; then runs the jitted
step with a progress bar, periodic STS evaluation, metrics to JSONL/TensorBoard and Orbax
checkpoints, resuming exactly where a previous run of the same directory stopped.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec
from tqdm.auto import tqdm

from jaxalign.data.corpora import read_corpus
from jaxalign.data.stream import BatchStream, Tokenized, collate, to_global
from jaxalign.data.sts import load_sts
from jaxalign.eval.sts import evaluate_sts
from jaxalign.inference.embed import Embedder
from jaxalign.models.registry import load_encoder
from jaxalign.objectives.contrastive import ContrastiveObjective, cached_value_and_grad, loss_fn
from jaxalign.sharding.mesh import batch_parallel_size, check_batch_size, make_mesh
from jaxalign.sharding.rules import named_sharding, tree_shardings
from jaxalign.train.checkpoint import Checkpointer
from jaxalign.train.config import TrainConfig
from jaxalign.train.metrics import MetricsWriter
from jaxalign.train.optim import build_optimizer
from jaxalign.train.step import TrainState, jit_step, make_step

log = logging.getLogger(__name__)


class NonFiniteError(RuntimeError):
    """Training produced NaN/Inf in several consecutive steps."""


def maybe_initialize_distributed() -> None:
    """Joins a multi-process run when a coordinator is configured (``JAX_COORDINATOR_ADDRESS``,
    with ``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID``); a no-op otherwise."""
    if os.environ.get("JAX_COORDINATOR_ADDRESS") and not jax.distributed.is_initialized():
        jax.distributed.initialize()


@dataclasses.dataclass
class Run:
    """Everything a training run is built from; ``build`` validates before any compilation."""

    cfg: TrainConfig
    mesh: jax.sharding.Mesh
    encoder: object
    objective: ContrastiveObjective
    stream: BatchStream
    tokens: Tokenized
    optimizer: optax.GradientTransformation
    schedule: optax.Schedule
    state_shardings: TrainState
    batch_shardings: dict
    head: dict  # initial head parameters

    @classmethod
    def build(cls, cfg: TrainConfig, devices=None) -> "Run":
        """``devices`` restricts the mesh to a subset (default: all devices)."""
        mesh = make_mesh(cfg.mesh, devices)
        check_batch_size(cfg.data.batch_size, mesh, "data.batch_size")
        dtype = jnp.bfloat16 if cfg.model.dtype == "bfloat16" else jnp.float32
        encoder = load_encoder(cfg.model.name, mesh=mesh, dtype=dtype, num_layers=cfg.model.num_layers)
        pooling = dataclasses.replace(encoder.pooling, mode=cfg.model.pooling) if cfg.model.pooling else encoder.pooling
        objective = ContrastiveObjective(cfg.objective, cfg.data.kind, encoder, pooling, dropout=cfg.model.dropout,
                                         num_shards=batch_parallel_size(mesh))
        objective.check_batch(cfg.data.batch_size)
        examples = read_corpus(cfg.data.kind, cfg.data.path, cfg.data.max_examples)
        if cfg.objective.name == "dse":
            examples = with_teacher_scores(examples, cfg)
        stream = BatchStream(examples, cfg.data.batch_size, seed=cfg.seed, shuffle=cfg.data.shuffle)
        tokens = Tokenized(encoder.tokenizer, examples, objective.text_columns, cfg.model.max_length)
        optimizer, schedule = build_optimizer(cfg.optim, cfg.steps)

        head, head_axes = objective.init_head(jax.random.PRNGKey(cfg.seed + 1))
        param_axes = {"encoder": encoder.axes, "head": head_axes}
        abstract = jax.eval_shape(lambda: {"encoder": encoder.params, "head": head})
        param_shardings = tree_shardings(mesh, param_axes, abstract)
        replicated = NamedSharding(mesh, PartitionSpec())
        abstract_opt = jax.eval_shape(optimizer.init, abstract)
        opt_shardings = optax.tree_map_params(optimizer, lambda _, s: s, abstract_opt, param_shardings,
                                              transform_non_params=lambda _: replicated)
        state_shardings = TrainState(replicated, param_shardings, opt_shardings, replicated, replicated, replicated)
        tokens_sharding = named_sharding(mesh, (None, "batch", "length"))
        batch_shardings = {"input_ids": tokens_sharding, "attention_mask": tokens_sharding,
                           **{k: named_sharding(mesh, ("batch",)) for k in objective.numeric_columns}}
        return cls(cfg, mesh, encoder, objective, stream, tokens, optimizer, schedule, state_shardings,
                   batch_shardings, head)

    def init_state(self) -> TrainState:
        params = {"encoder": self.encoder.params, "head": self.head}
        create = jax.jit(lambda p: TrainState.create(p, self.optimizer, self.cfg.seed), out_shardings=self.state_shardings)
        return create(params)

    def step_fn(self):
        chunk = self.cfg.objective.cache_chunk
        if chunk is None:
            step = make_step(self.optimizer, loss_fn(self.objective), schedule=self.schedule,
                             grad_accum=self.cfg.optim.grad_accum)
        else:
            step = make_step(self.optimizer, value_and_grad=cached_value_and_grad(self.objective, chunk),
                             schedule=self.schedule, grad_accum=self.cfg.optim.grad_accum)
        return jit_step(step, self.state_shardings, self.batch_shardings)

    def next_batch(self) -> dict:
        local = collate(self.tokens, self.stream.next(), self.objective.text_columns, self.cfg.data.buckets,
                        self.cfg.model.max_length, self.objective.numeric_columns)
        return to_global(local, self.batch_shardings)


def with_teacher_scores(examples: list, cfg: TrainConfig) -> list:
    """DSE: appends the teacher's cosine similarity of each pair, computed once before training."""
    teacher = load_encoder(cfg.objective.teacher or cfg.model.name)
    embed = Embedder(teacher, batch_size=64)
    a = embed([ex[0] for ex in examples], progress=True, desc="teacher")
    b = embed([ex[1] for ex in examples], progress=True, desc="teacher")
    cos = (a * b).sum(-1) / np.maximum(np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1), 1e-12)
    return [(*ex, float(c)) for ex, c in zip(examples, cos)]


class StsEvaluator:
    """Periodic STS evaluation of the encoder being trained (Spearman x 100, ``all`` averaged)."""

    def __init__(self, run: Run):
        cfg = run.cfg.eval
        self.tasks = load_sts(cfg.data, split=cfg.split) if cfg.data else []
        pooling = dataclasses.replace(run.objective.pooling, normalize=False)
        batch = cfg.batch_size - cfg.batch_size % batch_parallel_size(run.mesh) or batch_parallel_size(run.mesh)
        self.embedder = Embedder(run.encoder, pooling, batch_size=batch, max_length=run.cfg.model.max_length,
                                 mesh=run.mesh) if self.tasks else None

    def __call__(self, encoder_params) -> float | None:
        if not self.tasks:
            return None
        results = evaluate_sts(lambda s: self.embedder(s, params=encoder_params), self.tasks)
        return float(np.mean([r.all for r in results]))


def train(cfg: TrainConfig, *, progress: bool = True, stop_at: int | None = None) -> dict:
    """Runs training; returns a summary (losses, eval scores, steps, throughput, final state).

    ``stop_at`` ends this invocation after that step (with a checkpoint), as a preempted or
    time-sliced job would; running again with the same config resumes from there.
    """
    end = min(cfg.steps, stop_at) if stop_at is not None else cfg.steps
    maybe_initialize_distributed()
    run = Run.build(cfg)
    evaluator = StsEvaluator(run)
    writer = MetricsWriter(cfg.log.dir if jax.process_index() == 0 else None, cfg.log.tensorboard)
    ckpt = Checkpointer(cfg.checkpoint) if cfg.checkpoint.dir else None
    state = run.init_state()
    start = 0
    if ckpt is not None and cfg.checkpoint.resume and ckpt.latest_step() is not None:
        state, run.stream.state, start = ckpt.restore(state)
        log.info("resumed from step %d of %s", start, ckpt.dir)
    step_fn = run.step_fn()
    summary = {"losses": {}, "eval": {}, "resumed_from": start}
    if start == 0 and evaluator.tasks:
        summary["eval"][0] = evaluator(state.params["encoder"])
        writer.write(0, {"eval/sts": summary["eval"][0]})
    bar = tqdm(total=cfg.steps, initial=start, desc="train", unit="step", disable=not progress, dynamic_ncols=True)
    examples_seen, t0, prev = 0, time.perf_counter(), None
    try:
        for step in range(start, end):
            state, metrics = step_fn(state, run.next_batch())
            examples_seen += cfg.data.batch_size
            # Read the previous step's counters while this one runs: no stall of the pipeline.
            if prev is not None and int(prev["nonfinite"]) >= cfg.max_nonfinite:
                raise NonFiniteError(
                    f"{cfg.max_nonfinite} consecutive steps had NaN/Inf loss or gradients (each was skipped); "
                    "lower optim.lr, enable optim.clip_norm, or use model.dtype=float32")
            prev = metrics
            done = step + 1
            if done % cfg.log.every == 0 or done == end:
                host = {k: float(v) for k, v in jax.device_get(metrics).items()}
                host["examples_per_s"] = examples_seen / (time.perf_counter() - t0)
                summary["losses"][done] = host["loss"]
                writer.write(done, host)
                bar.set_postfix(loss=f"{host['loss']:.4f}", ex_s=f"{host['examples_per_s']:.0f}")
            if evaluator.tasks and (done % cfg.eval.every == 0 or done == end):
                score = evaluator(state.params["encoder"])
                summary["eval"][done] = score
                writer.write(done, {"eval/sts": score})
                if ckpt is not None:
                    ckpt.save_best(done, state, run.stream.state, score)
            if ckpt is not None:
                ckpt.save(done, state, run.stream.state, force=done == end)
            bar.update(1)
    finally:
        bar.close()
        writer.close()
        if ckpt is not None:
            ckpt.wait()
            ckpt.close()
    summary.update(steps=end, skipped=int(state.skipped),
                   examples_per_s=examples_seen / max(time.perf_counter() - t0, 1e-9))
    if cfg.export and end == cfg.steps:
        from jaxalign.models.export import export_hf

        export_hf(run.encoder, jax.device_get(state.params["encoder"]), cfg.export, run.objective.pooling)
        summary["export"] = cfg.export
    summary["state"] = state
    return summary
