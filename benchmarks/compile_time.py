"""Compile time of the DPO training step against model depth.

What: the seconds ``jax.jit`` spends turning jaxalign's real DPO step
(``jaxalign.training.trainer.Run.step_fn()``: policy forward + backward, reference forward in the
step, chunked LM-head log-probs, sigmoid DPO loss, clipping, AdamW) into an executable, for
SmolLM2-135M-Instruct cut to each ``--layers`` depth, on a ``--pairs`` x 2 x ``--length`` batch;
split into tracing (Python -> jaxpr), lowering (jaxpr -> StableHLO) and XLA compilation. Nothing
is executed, so memory stays at the weights, the optimiser state and the compiler's own.

Why: a model that loops over its layers in Python traces, lowers and compiles every layer
again, so compile time grows with depth; a scanned model compiles one layer body whatever the
depth. The goal of issue 12 is a 30-layer compile within 1.3x the 10-layer one.

Timing: ``--rounds`` rounds, the depths interleaved (10, 30, 30, 10, ...) so that load from
other jobs hits each alike; each round builds a fresh jitted step (no tracing cache) and the
persistent compilation cache is off. The median per phase is reported with the load average.

    python benchmarks/compile_time.py --layers 10 30 --rounds 2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from jaxalign.benchmarking import machine_info  # noqa: E402


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--layers", type=int, nargs="+", default=[10, 30], help="model depths to compile")
    p.add_argument("--pairs", type=int, default=4, help="preference pairs per batch")
    p.add_argument("--length", type=int, default=256, help="tokens per sequence")
    p.add_argument("--rounds", type=int, default=1, help="compiles per depth (interleaved, median reported)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="further recipe overrides, e.g. model.remat=full")
    p.add_argument("--json", type=Path, default=REPO / "benchmarks" / "results" / "compile_time.json")
    return p.parse_args(argv)


def build_run(layers: int, args):
    import jax

    from jaxalign.config import load_recipe
    from jaxalign.config.run import TrainConfig
    from jaxalign.training.trainer import Run

    overrides = [
        "model.name=SmolLM2-135M-Instruct", f"model.num_layers={layers}", "model.dtype=float32", "model.dropout=false",
        f"model.max_length={args.length}", "data.kind=preference", "data.path=builtin:prefs-mini",
        f"data.batch_size={args.pairs}", f"data.buckets={args.length}", f"data.max_prompt_length={args.length // 2}",
        "objective.name=dpo", "objective.beta=0.1", "objective.loss_type=sigmoid", "objective.reference=model",
        "optim.lr=1e-6", "optim.schedule=constant", "optim.weight_decay=0.0", "optim.clip_norm=1.0",
        "mesh.data=1", "eval.data=null", "steps=10", *args.set,
    ]
    run = Run.build(load_recipe(TrainConfig, None, overrides), devices=jax.devices()[:1])
    return run, run.init_state()


def batch_struct(run, args):
    import jax
    import numpy as np

    shape = (args.pairs, 2, args.length)
    local = {k: np.ones(shape, np.int32) for k in ("input_ids", "attention_mask", "loss_mask")}
    from jaxalign.data.stream import to_global

    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                        to_global(local, run.batch_shardings))


def time_compile(run, state, batch) -> dict:
    """Seconds to trace, lower and compile a fresh jitted step."""
    step = run.step_fn()
    t0 = time.perf_counter()
    traced = step.trace(state, batch, run.task.frozen)
    t1 = time.perf_counter()
    lowered = traced.lower()
    t2 = time.perf_counter()
    lowered.compile()
    t3 = time.perf_counter()
    return {"trace_s": t1 - t0, "lower_s": t2 - t1, "compile_s": t3 - t2, "total_s": t3 - t0}


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    import jax

    jax.config.update("jax_enable_compilation_cache", False)
    runs = {n: build_run(n, args) for n in args.layers}
    order = []
    for r in range(args.rounds):
        order += args.layers if r % 2 == 0 else list(reversed(args.layers))
    samples: dict[int, list[dict]] = {n: [] for n in args.layers}
    loads = []
    for n in order:
        run, state = runs[n]
        samples[n].append(time_compile(run, state, batch_struct(run, args)))
        loads.append(os.getloadavg()[0])
        print(f"  {n:3d} layers: " + ", ".join(f"{k} {v:6.1f}" for k, v in samples[n][-1].items()), flush=True)
    rows = {n: {k: statistics.median(s[k] for s in samples[n]) for k in samples[n][0]} for n in args.layers}
    base = rows[args.layers[0]]["total_s"]
    print(f"\nDPO step compile time, SmolLM2-135M, {args.pairs} pairs x {args.length}, reference in the step "
          f"{' '.join(args.set)}")
    print(f"{'layers':>6} {'trace s':>8} {'lower s':>8} {'compile s':>9} {'total s':>8} {'x first':>8}")
    for n, row in rows.items():
        print(f"{n:>6} {row['trace_s']:8.1f} {row['lower_s']:8.1f} {row['compile_s']:9.1f} {row['total_s']:8.1f} "
              f"{row['total_s'] / base:8.2f}")
    machine = machine_info("jax", "flax")
    print(f"1-min load average after each compile: {min(loads):.2f}-{max(loads):.2f}, on {machine['cpu_count']} cores "
          f"({machine['cpu_model']})")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({
        "benchmark": "compile_time", "pairs": args.pairs, "length": args.length, "overrides": args.set,
        "rounds": args.rounds, "results": {str(n): {**rows[n], "samples": samples[n]} for n in args.layers},
        "load_average": loads, "machine": machine}, indent=2))
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
