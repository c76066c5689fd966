"""The benchmark suite: every benchmark script in one command, one table, one JSON, PNG charts.

``python -m benchmarks --quick`` (sizes for a 2-core CPU) or ``--full`` (an accelerator's), with
``--only NAME,...`` and ``--out DIR`` (default ``benchmarks/results/suite-<size>``). Each script
runs as its own subprocess with the flags of :data:`PARTS` for the chosen size and ``--json
DIR/<name>.json``, so it keeps its own command line, checks and JSON; a script missing from the
checkout is skipped with a note, one that fails or runs over ``--timeout`` is recorded as such
and the others still run. Then ``DIR/suite.json`` holds the machine, library versions, git
commit, each part's status, seconds, log, its figures (throughput, MFU with the FLOP accounting
it was quoted from, peak memory) and its whole result; ``DIR/<chart>.png`` are the charts of
:func:`jaxalign.viz.benchmarks.suite_charts` (``jaxalign plot --benchmark DIR/suite.json``
draws them again).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent


@dataclasses.dataclass(frozen=True)
class Part:
    """One benchmark script and its flags per suite size (``--json`` is added by the runner)."""

    name: str
    quick: tuple[str, ...]
    full: tuple[str, ...] = ()
    what: str = ""

    @property
    def script(self) -> Path:
        return HERE / f"{self.name}.py"


PARTS: tuple[Part, ...] = (
    Part("encode_throughput", ("--num-sentences", "64", "--batch-size", "32", "--repeats", "1"), (),
         "encoding vs sentence-transformers / transformers"),
    Part("train_step", ("--batch-size", "16", "--length", "32", "--steps", "2", "--warmup", "0", "--peak-size", "512",
                        "--peak-repeats", "2"), ("--batch-size", "64", "--length", "128"),
         "SimCSE step vs PyTorch"),
    Part("dpo_step", ("--num-layers", "2", "--pairs", "2", "--length", "64", "--steps", "2", "--peak-size", "512",
                      "--peak-repeats", "2"), ("--num-layers", "10"),
         "DPO step vs TRL"),
    Part("packing", ("--batches", "1", "--repeats", "1", "--max-length", "256", "--max-prompt-length", "128", "--buckets",
                   "64", "128", "256"),
         ("--layers", "30", "--pairs", "16", "--rows", "8", "--batches", "8"),
         "DPO step on HH-RLHF lengths: padding vs packing vs shared prompt"),
    Part("compile_time", ("--layers", "2", "4", "8", "--pairs", "1", "--length", "64"), ("--layers", "10", "30"),
         "DPO step compile time vs depth"),
    Part("attention", ("--lengths", "128", "256", "512", "1024", "--repeats", "2", "--model-layers", "1",
                       "--model-length", "256"), ("--lengths", "1024", "2048", "4096", "8192", "16384"),
         "attention kernels vs sequence length"),
    Part("vocab_memory", ("--length", "256"), (), "DPO gradient peak memory vs vocabulary, chunked vs full"),
    Part("weak_scaling", ("--per-device", "4", "--length", "16", "--steps", "3"), (),
         "step time over 1 -> 8 simulated devices"),
    Part("whitening_kernels", ("--batch-sizes", "128", "--groups", "1", "32", "--repeats", "2"), (),
         "whitening kernels"),
    Part("input_pipeline", ("--sentences", "20000", "--steps", "3", "--warmup", "1", "--step-examples", "2000"), (),
         "input pipeline"),
)
NAMES = [p.name for p in PARTS]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    size = p.add_mutually_exclusive_group(required=True)
    size.add_argument("--quick", dest="size", action="store_const", const="quick", help="sizes for a 2-core CPU")
    size.add_argument("--full", dest="size", action="store_const", const="full", help="sizes for an accelerator")
    p.add_argument("--only", default=None, help=f"comma-separated parts (of {','.join(NAMES)})")
    p.add_argument("--out", type=Path, default=None, help="directory of the JSONs, logs and charts "
                                                          "(default benchmarks/results/suite-<size>)")
    p.add_argument("--timeout", type=float, default=1800, help="seconds allowed per part")
    p.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    p.add_argument("--extra", action="append", default=[], metavar="NAME=ARGS",
                   help="more flags for one part, e.g. 'attention=--dtype bfloat16' (repeatable)")
    args = p.parse_args(argv)
    chosen = args.only.split(",") if args.only else NAMES
    unknown = [n for n in chosen if n not in NAMES]
    if unknown:
        p.error(f"--only {','.join(unknown)}: no such part; the parts are {','.join(NAMES)}")
    args.parts = [part for part in PARTS if part.name in chosen]
    args.out = args.out or REPO / "benchmarks" / "results" / f"suite-{args.size}"
    extra = {}
    for item in args.extra:
        name, _, flags = item.partition("=")
        if name not in NAMES:
            p.error(f"--extra {item}: no part {name!r}; the parts are {','.join(NAMES)}")
        extra[name] = extra.get(name, ()) + tuple(flags.split())
    args.extra = extra
    return args


def command(part: Part, args) -> list[str]:
    flags = part.quick if args.size == "quick" else part.full
    return [sys.executable, str(part.script), *flags, *args.extra.get(part.name, ()),
            "--json", str(args.out / f"{part.name}.json")]


def run_part(part: Part, args) -> dict:
    """Runs one script; its record for the suite's JSON (status, seconds, log, result)."""
    cmd = command(part, args)
    record: dict = {"what": part.what, "command": " ".join(cmd[1:])}
    if not part.script.is_file():
        return {**record, "status": "skipped", "note": f"{part.script.relative_to(REPO)} is not in this checkout"}
    log = args.out / f"{part.name}.log"
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "PYTHONPATH": str(REPO)}
    start = time.perf_counter()
    with log.open("w") as f:
        try:
            done = subprocess.run(cmd, check=False, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=REPO, timeout=args.timeout)
            status = "ok" if done.returncode == 0 else f"failed (exit {done.returncode})"
        except subprocess.TimeoutExpired:
            status = f"timed out after {args.timeout:.0f} s"
    record.update(status=status, seconds=time.perf_counter() - start, log=log.name)
    result = args.out / f"{part.name}.json"
    if result.is_file():
        record["result"] = json.loads(result.read_text())
    elif status == "ok":
        record["status"] = "failed (no JSON written)"
    if not record["status"].startswith("ok"):
        record["note"] = (log.read_text().strip().splitlines() or ["no output"])[-1][-300:]
    return record


def versions() -> dict:
    from importlib import metadata

    out = {}
    for name in ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy", "torch", "transformers", "trl",
                 "sentence-transformers", "google-tunix", "matplotlib"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def git_state() -> dict:
    git = lambda *a: subprocess.run(["git", "-C", str(REPO), *a], check=False, capture_output=True, text=True).stdout.strip()
    return {"commit": git("rev-parse", "HEAD") or None, "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}


def render(suite: dict) -> None:
    """The one table: each part's status and figures."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"jaxalign benchmark suite ({suite['size']}), {suite['machine']['device']}, "
                        f"commit {str(suite['git']['commit'])[:10]}{' (dirty)' if suite['git']['dirty'] else ''}")
    for col in ("part", "status", "s", "figure", "value", "MFU", "peak memory"):
        table.add_column(col, justify="left" if col in ("part", "status", "figure") else "right")
    for name, part in suite["parts"].items():
        figures = part.get("figures") or [{}]
        for i, fig in enumerate(figures):
            mfu = fig.get("mfu")
            mem = fig.get("peak_bytes")
            table.add_row(name if i == 0 else "", (part["status"] if i == 0 else ""),
                          f"{part['seconds']:.0f}" if i == 0 and "seconds" in part else "",
                          fig.get("name", part.get("note", "")[:80]),
                          f"{fig['value']:.4g} {fig['unit']}" if "value" in fig else "",
                          f"{100 * mfu:.1f} %" if mfu is not None else "",
                          f"{mem / 2**20:.1f} MiB" if mem else "")
    Console(width=220).print(table)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.dry_run:
        for part in args.parts:
            note = "" if part.script.is_file() else "   # skipped: not in this checkout"
            print(" ".join(command(part, args)[1:]) + note)
        return 0
    sys.path.insert(0, str(REPO))
    from jaxalign.viz.benchmarks import draw_charts, suite_charts, suite_figures

    args.out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    parts = {}
    for part in args.parts:
        print(f"[suite] {part.name}: {' '.join(command(part, args)[1:])}", flush=True)
        parts[part.name] = run_part(part, args)
        print(f"[suite] {part.name}: {parts[part.name]['status']}", flush=True)
    for name, record in parts.items():
        if "result" in record:
            record["figures"] = suite_figures(name, record["result"])
    import jax

    device = jax.devices()[0]
    suite = {"benchmark": "suite", "size": args.size, "command": "python -m benchmarks " + " ".join(
        argv if argv is not None else sys.argv[1:]), "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                                 time.gmtime(started)),
             "wall_s": time.time() - started,
             "machine": {"device": device.device_kind if device.platform == "gpu" else device.platform, "device_count": jax.device_count(),
                         "cpu_count": os.cpu_count(), "load_average_after": os.getloadavg()},
             "versions": versions(), "git": git_state(), "parts": parts}
    path = args.out / "suite.json"
    path.write_text(json.dumps(suite, indent=2, default=str) + "\n")
    render(suite)
    charts = suite_charts(suite)
    for png in draw_charts(charts, args.out):
        print(f"chart: {png}")
    print(f"suite results written to {path}")
    return 0 if all(p["status"] in ("ok", "skipped") for p in parts.values()) else 1
