"""What every side-by-side benchmark and experiment shares: alternating timing, the measured
matmul peak that MFU is quoted against, a record of the machine and library versions, peak
memory (compiled and resident), and the command-line checks and core pinning around them.

PyTorch is imported only by :func:`matmul_peak` and when named to :func:`machine_info`, so
jaxalign itself never needs it.
"""

from __future__ import annotations

import importlib
import os
import platform
import resource
import statistics
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def interleave(runners: dict[str, Callable[[], object]], rounds: int,
               cpu: dict[str, list[float]] | None = None) -> dict[str, list[float]]:
    """Seconds per call of each runner, ``rounds`` calls each; the order reverses every round,
    so that drifts in machine load fall on every runner alike. ``cpu``, if given, receives each
    call's CPU seconds (this process, all threads): the work done, which other jobs on the
    machine disturb far less than the wall time."""
    times: dict[str, list[float]] = {name: [] for name in runners}
    names = list(runners)
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            start, cpu_start = time.perf_counter(), time.process_time()
            runners[name]()
            times[name].append(time.perf_counter() - start)
            if cpu is not None:
                cpu.setdefault(name, []).append(time.process_time() - cpu_start)
    return times


def matmul_peak(size: int, repeats: int) -> dict:
    """Median float32 GFLOP/s of a ``size``-square matmul in JAX and in PyTorch, each on its
    default device, timed alternately; ``peak_gflops`` is the better of the two."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    import torch

    rng = np.random.default_rng(0)
    a_np, b_np = (rng.standard_normal((size, size), dtype=np.float32) for _ in range(2))
    a_j, b_j = jnp.asarray(a_np), jnp.asarray(b_np)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    a_t, b_t = torch.from_numpy(a_np).to(device), torch.from_numpy(b_np).to(device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    mm = jax.jit(lambda a, b: a @ b)

    def torch_mm():
        torch.mm(a_t, b_t)
        sync()

    jax.block_until_ready(mm(a_j, b_j))
    torch_mm()
    times = interleave({"jax": lambda: jax.block_until_ready(mm(a_j, b_j)), "torch": torch_mm}, repeats)
    flops = 2 * size**3
    out = {"size": size, "flops": flops, "times_s": times}
    for name, t in times.items():
        out[f"{name}_gflops"] = flops / statistics.median(t) / 1e9
    out["peak_gflops"] = max(out["jax_gflops"], out["torch_gflops"])
    return out


def machine_info(*modules: str) -> dict:
    """The machine (CPU, cores, load), the jaxalign commit, JAX's devices and the versions of
    ``modules`` (importable names, e.g. ``"torch"``, ``"trl"``)."""
    import jax

    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.is_file() else []
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    info = {
        "cpu_count": os.cpu_count(),
        "cores_used": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "cpu_model": next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")),
                          platform.processor()),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "jaxalign_commit": commit or None,  # the working tree may differ from it
        "jax": jax.__version__,
        "jax_devices": [str(d) for d in jax.devices()],
        "xla_flags": os.environ.get("XLA_FLAGS"),
        "load_average_1_5_15min": os.getloadavg(),
    }
    for name in modules:
        info[name] = importlib.import_module(name).__version__
    if "torch" in modules:
        import torch

        info["torch_device"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
        info["torch_threads"] = torch.get_num_threads()
    return info


class PhaseTimer:
    """Wall seconds of a script's consecutive phases: ``phase("model")`` ends the phase named
    ``model`` (begun at the previous call, or at construction); ``seconds`` holds them in order."""

    def __init__(self):
        self.seconds: dict[str, float] = {}
        self._mark = time.perf_counter()

    def __call__(self, name: str) -> None:
        now = time.perf_counter()
        self.seconds[name] = now - self._mark
        self._mark = now


def check_counts(parser, args, names: Sequence[str]) -> None:
    """``parser.error`` for any of the ``names`` options that is set but below 1."""
    for name in names:
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {value}")


def check_threads(parser, threads: int | None) -> None:
    """``parser.error`` when ``--threads`` asks for more cores than this process may use."""
    if threads is not None and threads > len(os.sched_getaffinity(0)):
        parser.error(f"--threads {threads}: only {len(os.sched_getaffinity(0))} cores are available")


def pin_cores(threads: int | None) -> None:
    """Pins the process to its first ``threads`` cores; call before JAX or PyTorch start their
    thread pools (XLA sizes its pool from the affinity mask). ``None``: every core."""
    if threads is not None:
        os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:threads])


def machine_summary(machine: dict) -> str:
    """One line of a :func:`machine_info` record whose load average was replaced by
    ``{"before": ..., "after": ...}``: threads, devices, load and cores."""
    load = machine["load_average_1_5_15min"]
    return (f"torch threads {machine['torch_threads']}; jax devices {', '.join(machine['jax_devices'])}; "
            f"1-min load average {load['before'][0]:.1f} before, {load['after'][0]:.1f} after, "
            f"on {machine['cpu_count']} cores")


def compiled_memory(compiled) -> dict:
    """XLA's memory analysis of a compiled program (``jax.jit(f).lower(*args).compile()``), in
    bytes: arguments, outputs, temporaries, the outputs aliasing donated arguments, and
    ``peak_bytes`` = arguments + outputs + temporaries - aliased, what one call needs on its
    device at once. Empty where the backend does not analyse."""
    analysis = compiled.memory_analysis()
    if analysis is None:
        return {}
    fields = {"argument_bytes": "argument_size_in_bytes", "output_bytes": "output_size_in_bytes",
              "temp_bytes": "temp_size_in_bytes", "alias_bytes": "alias_size_in_bytes",
              "code_bytes": "generated_code_size_in_bytes"}
    out = {name: int(getattr(analysis, attr, 0)) for name, attr in fields.items()}
    out["peak_bytes"] = out["argument_bytes"] + out["output_bytes"] + out["temp_bytes"] - out["alias_bytes"]
    return out


def peak_memory(**programs) -> dict:
    """The ``memory`` field of a benchmark's JSON: this process's peak resident set so far
    (``getrusage``; children excluded) and, for each ``name=(jitted, args)``, the compiled memory
    analysis of ``jitted`` at ``args`` (once called there, jit's caches serve it: no compile).
    Call it before a donating program's arguments are donated again."""
    out: dict = {"process_peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}
    for name, (jitted, args) in programs.items():
        out[name] = compiled_memory(jitted.lower(*args).compile())
    return out
