"""Weak scaling of the training step over 1 -> 8 simulated devices, at a fixed batch per device.

What: for each ``--devices`` N, a fresh process with ``XLA_FLAGS=--xla_force_host_platform_device_count=N``
builds the engine's real contrastive step (:meth:`jaxalign.training.trainer.Run.step_fn`:
supervised SimCSE on ``builtin:nli-mini``, all-MiniLM-L6-v2 cut to ``--layers``, data-parallel mesh
``N x 1 x 1``, batch ``--per-device`` x N triplets of ``--length`` tokens) and reports its median
step time over ``--steps`` steps after one compiled warm-up step, with the compiled step's memory.

Why: perfect weak scaling keeps the step time flat as devices (and the global batch) grow. On a
CPU the N "devices" share the same cores, so here the step time grows with N even when nothing
is wrong; what the figure shows is the overhead that sharding adds on top of that (the ideal is
``N x`` the one-device time on a machine with fewer cores than devices). On an accelerator pod
(``--real``: the devices present, no flag) it is the real weak scaling.

    python benchmarks/weak_scaling.py --devices 1 2 4 8
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from jaxalign.benchmarking import check_counts


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--devices", type=int, nargs="+", default=[1, 2, 4, 8], help="device counts N")
    p.add_argument("--per-device", type=int, default=8, help="triplets per device")
    p.add_argument("--length", type=int, default=32, help="tokens per text")
    p.add_argument("--layers", type=int, default=1, help="encoder layers kept")
    p.add_argument("--steps", type=int, default=5, help="timed steps per device count (median)")
    p.add_argument("--timeout", type=float, default=600, help="seconds allowed per device count")
    p.add_argument("--real", action="store_true", help="the devices present (first N), no simulated host devices")
    p.add_argument("--json", type=Path, default=REPO / "benchmarks" / "results" / "weak_scaling.json")
    p.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)  # one device count, in this process
    args = p.parse_args(argv)
    check_counts(p, args, ["per_device", "length", "layers", "steps"])
    if min(args.devices) < 1:
        p.error("--devices counts must be >= 1")
    return args


def measure(n: int, args) -> dict:
    """One device count, in this process (whose XLA_FLAGS already give it n host devices)."""
    import statistics
    import time

    import jax

    from jaxalign.benchmarking import peak_memory
    from jaxalign.config import load_recipe
    from jaxalign.config.run import TrainConfig
    from jaxalign.training.trainer import Run

    if jax.device_count() < n:
        raise SystemExit(f"--devices {n}: only {jax.device_count()} devices here")
    cfg = load_recipe(TrainConfig, None, [
        "model.name=all-MiniLM-L6-v2", f"model.num_layers={args.layers}", f"model.max_length={args.length}",
        "data.kind=nli", "data.path=builtin:nli-mini", f"data.batch_size={args.per_device * n}",
        f"data.buckets={args.length}", "objective.name=simcse", f"mesh.data={n}", "eval.data=null",
        "log.every=1", f"steps={args.steps + 1}"])
    run = Run.build(cfg, devices=jax.devices()[:n])
    times = []
    with jax.set_mesh(run.mesh):
        state, step = run.init_state(), run.step_fn()
        batch = run.next_batch(0)
        memory = None
        for i in range(args.steps + 1):
            if i == 1:
                memory = peak_memory(step=(step, (state, batch, run.task.frozen)))
            start = time.perf_counter()
            state, metrics = step(state, batch, run.task.frozen)
            jax.block_until_ready((state, metrics))
            times.append(time.perf_counter() - start)
    median = statistics.median(times[1:])
    return {"devices": n, "global_batch": args.per_device * n, "first_step_s": times[0], "times_s": times[1:],
            "median_step_s": median, "examples_per_s": args.per_device * n / median,
            "device_kind": jax.devices()[0].device_kind, "memory": memory, "load_average": os.getloadavg()}


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child is not None:
        print(json.dumps(measure(args.child, args)))
        return 0
    from rich.console import Console
    from rich.table import Table

    from jaxalign.benchmarking import machine_info, peak_memory

    rows, failures = [], {}
    passed = [a for a in (argv if argv is not None else sys.argv[1:]) if a != "--real"]
    for n in args.devices:
        env = dict(os.environ)
        if not args.real:
            env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={n}".strip()
            env["JAX_PLATFORMS"] = "cpu"
        try:
            done = subprocess.run([sys.executable, __file__, *passed, "--child", str(n)], check=False, env=env, capture_output=True,
                                  text=True, timeout=args.timeout)
        except subprocess.TimeoutExpired:
            failures[n] = f"over {args.timeout:.0f} s"
            continue
        if done.returncode:
            failures[n] = (done.stderr.strip().splitlines() or ["no output"])[-1]
            continue
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    base = rows[0]["median_step_s"] if rows else None
    table = Table(title=f"weak scaling: SimCSE step, {args.per_device} triplets x {args.length} tokens per device, "
                        f"{args.layers} layer(s){'' if args.real else ', simulated host devices'}")
    for col in ("devices", "global batch", "median step s", "x 1 device", "examples/s", "compiled peak MiB"):
        table.add_column(col, justify="right")
    for r in rows:
        peak = (r["memory"] or {}).get("step", {}).get("peak_bytes")
        table.add_row(str(r["devices"]), str(r["global_batch"]), f"{r['median_step_s']:.4f}",
                      f"{r['median_step_s'] / base:.2f}", f"{r['examples_per_s']:.1f}",
                      f"{peak / 2**20:.1f}" if peak else "n/a")
    Console(width=200).print(table)
    for n, why in failures.items():
        print(f"{n} devices failed: {why}")
    results = {"benchmark": "weak_scaling", "machine": machine_info(), "simulated": not args.real,
               "per_device": args.per_device, "length": args.length, "layers": args.layers, "steps": args.steps,
               "rows": rows, "failures": {str(k): v for k, v in failures.items()}, "memory": peak_memory()}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2) + "\n")
    print(f"results written to {args.json}")
    return 1 if failures or not rows else 0


if __name__ == "__main__":
    sys.exit(main())
