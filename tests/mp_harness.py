"""A harness for multi-process tests: N real local processes joined by ``jax.distributed``.

Simulated devices in one process are not a pod: collectives, per-process data slices and
the coordinator only exist across processes. :func:`launch` starts ``num_processes``
Python processes on 127.0.0.1, each with ``devices_per_process`` simulated CPU devices, that
join one run through the documented ``JAX_COORDINATOR_ADDRESS`` / ``JAX_NUM_PROCESSES`` /
``JAX_PROCESS_ID`` variables, and returns their exit codes and output. The same launch with
one process of all the devices is the reference a multi-process run must equal.

``python tests/mp_harness.py SCENARIOS.json OUT_DIR`` is the worker :func:`train_scenarios`
launches: it runs each scenario (recipe overrides, optionally ``stop_at``) through
:func:`jaxalign.training.trainer.train` and has process 0 write ``OUT_DIR/<name>.npz`` with the
per-step losses and the final trained parameters, gathered from every process.
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclasses.dataclass
class Finished:
    returncode: int
    stdout: str
    stderr: str


def process_env(index: int, count: int, devices: int, port: int) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_")}
    env.update(XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", HF_HUB_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1", JAX_PLATFORMS="cpu",
               PYTHONPATH=os.pathsep.join([str(REPO), str(REPO / "tests"), env.get("PYTHONPATH", "")]))
    if count > 1:
        env.update(JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES=str(count),
                   JAX_PROCESS_ID=str(index))
    return env


def start(args: list[str] | list[list[str]], num_processes: int, devices_per_process: int,
          ) -> list[subprocess.Popen]:
    """Starts ``args`` (after the Python executable; or one list per process) once per process
    in the repository; returns the handles."""
    port = free_port()
    per_process = args if args and isinstance(args[0], list) else [args] * num_processes
    return [subprocess.Popen([sys.executable, *per_process[i]], cwd=REPO, text=True, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, env=process_env(i, num_processes, devices_per_process, port))
            for i in range(num_processes)]


def wait(procs: list[subprocess.Popen], timeout: float = 600) -> list[Finished]:
    deadline = time.monotonic() + timeout
    out = []
    for p in procs:
        try:
            stdout, stderr = p.communicate(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise AssertionError(f"multi-process run did not finish within {timeout} s") from None
        out.append(Finished(p.returncode, stdout, stderr))
    return out


def launch(args: list[str], num_processes: int, devices_per_process: int, timeout: float = 600) -> list[Finished]:
    """Runs ``args`` on every process and waits; raises with every process's stderr on failure."""
    done = wait(start(args, num_processes, devices_per_process), timeout)
    if any(f.returncode for f in done):
        logs = "\n".join(f"--- process {i} (exit {f.returncode}):\n{f.stderr[-4000:]}" for i, f in enumerate(done))
        raise AssertionError(f"{num_processes}-process run failed:\n{logs}")
    return done


def train_scenarios(scenarios: list[dict], out: Path, num_processes: int, devices_per_process: int) -> dict:
    """Runs every scenario ``{"name", "overrides", "stop_at"?}`` on the topology; returns
    ``{name: {"losses": [steps], "params": {path: array}}}`` read from process 0's files."""
    import numpy as np

    out.mkdir(parents=True, exist_ok=True)
    spec = out / "scenarios.json"
    spec.write_text(json.dumps(scenarios))
    launch([str(REPO / "tests" / "mp_harness.py"), str(spec), str(out)], num_processes, devices_per_process)
    results = {}
    for s in scenarios:
        with np.load(out / f"{s['name']}.npz") as f:
            results[s["name"]] = {"losses": f["losses"], "params": {k[2:]: f[k] for k in f.files if k.startswith("p:")}}
    return results


def _worker(spec: str, out: str) -> None:
    import jax
    import numpy as np
    from jax.experimental import multihost_utils

    from jaxalign import distributed
    from jaxalign.config import load_recipe
    from jaxalign.config.run import TrainConfig
    from jaxalign.training.trainer import train

    distributed.initialize()
    for scenario in json.loads(Path(spec).read_text()):
        cfg = load_recipe(TrainConfig, None, scenario["overrides"])
        summary = train(cfg, progress=False, stop_at=scenario.get("stop_at"))
        params = multihost_utils.process_allgather(summary.pop("state").params, tiled=True)
        if jax.process_index() == 0:
            losses = np.asarray([summary["losses"][k] for k in sorted(summary["losses"])], np.float64)
            flat = {"p:" + jax.tree_util.keystr(path): np.asarray(leaf)
                    for path, leaf in jax.tree_util.tree_leaves_with_path(params)}
            np.savez(Path(out) / f"{scenario['name']}.npz", losses=losses, **flat)
        jax.clear_caches()


if __name__ == "__main__":
    _worker(*sys.argv[1:])
