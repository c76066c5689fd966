"""The command line in multi-process runs, with real local processes: ``jaxalign train`` on
the documented environment variables equals the one-process run; SIGTERM to one process stops
every process at a common step with a checkpoint (exit 0) and the rerun resumes exactly;
SIGKILL of one process makes the others fail within the heartbeat timeout; bad launches get
one clear error; ``eval sts``, ``embed`` and ``generate`` give the one-process results, written
once."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from mp_harness import launch, start, wait

# The quickstart recipe made unsupervised SimCSE on sentences: two short columns, the cheapest step.
TRAIN = ["-m", "jaxalign.cli", "train", "experiments/quickstart.yaml", "model.num_layers=1", "model.max_length=16",
         "data.kind=sentences", "data.path=builtin:sentences-mini", "data.batch_size=8", "data.buckets=[16]",
         "eval.data=null", "export=null", "log.every=1", "optim.lr=1e-4", "log.tensorboard=false"]


def train_args(root, steps: int, *extra: str) -> list[str]:
    """``extra``: overrides and options; a process that fails to start makes the others wait
    ``--init-timeout`` for it, so keep it short."""
    return [*TRAIN, f"steps={steps}", f"log.dir={root}/log", f"checkpoint.dir={root}/ckpt", "checkpoint.every=1000",
            *extra, f"--json={root}/summary.json", "--init-timeout=60"]


def wait_for_rows(path, rows: int, procs, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and len(path.read_text().splitlines()) >= rows:
            return
        if any(p.poll() is not None for p in procs):
            raise AssertionError(f"a process ended before {rows} steps: {[p.poll() for p in procs]}")
        time.sleep(0.1)
    raise AssertionError(f"no {rows} metric rows in {path} within {timeout} s")


def losses(summary_file) -> dict[int, float]:
    return {int(k): v for k, v in json.loads(summary_file.read_text())["losses"].items()}


STEPS = 120


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    root = tmp_path_factory.mktemp("one-process")
    launch(train_args(root, STEPS), 1, 2)
    return losses(root / "summary.json")


def test_sigterm_to_one_process_stops_all_at_one_step_and_resumes_exactly(tmp_path, uninterrupted):
    procs = start(train_args(tmp_path, STEPS), 2, 1)
    wait_for_rows(tmp_path / "log" / "metrics.jsonl", 3, procs)
    procs[1].send_signal(signal.SIGTERM)
    done = wait(procs, timeout=300)
    assert [f.returncode for f in done] == [0, 0], [f.stderr[-2000:] for f in done]
    stopped = json.loads((tmp_path / "summary.json").read_text())
    k = stopped["steps"]
    assert 3 <= k < STEPS and stopped["stopped_by"]
    assert f"after step {k} of {STEPS}" in done[0].stdout and "run the same command to resume" in done[0].stdout
    assert "stopped by" not in done[1].stdout  # only process 0 prints
    assert (tmp_path / "ckpt" / "last" / str(k)).is_dir()
    # The run up to the stop equals the one-process run (2 processes x 1 device vs 1 x 2) ...
    rows = [json.loads(line) for line in (tmp_path / "log" / "metrics.jsonl").read_text().splitlines()]
    first = {r["step"]: r["loss"] for r in rows if "loss" in r}
    assert sorted(first) == list(range(1, k + 1))
    np.testing.assert_allclose([first[s] for s in range(1, k + 1)], [uninterrupted[s] for s in range(1, k + 1)],
                               rtol=1e-5)
    # ... and so does its continuation from the checkpoint.
    launch(train_args(tmp_path, STEPS), 2, 1)
    resumed = losses(tmp_path / "summary.json")
    assert sorted(resumed) == list(range(k + 1, STEPS + 1))
    np.testing.assert_allclose([resumed[s] for s in sorted(resumed)], [uninterrupted[s] for s in sorted(resumed)],
                               rtol=1e-5)


def test_sigkill_of_one_process_fails_the_others_within_the_heartbeat_timeout(tmp_path):
    procs = start(train_args(tmp_path, 100_000, "--heartbeat-timeout=5"), 2, 1)
    wait_for_rows(tmp_path / "log" / "metrics.jsonl", 3, procs)
    procs[1].send_signal(signal.SIGKILL)
    killed = time.monotonic()
    try:
        _, stderr = procs[0].communicate(timeout=120)
    finally:
        procs[0].kill()
    assert procs[0].returncode != 0
    assert time.monotonic() - killed < 60
    assert "heartbeat" in stderr or "unhealthy" in stderr or "Connection" in stderr, stderr[-3000:]


def test_processes_with_different_configs_are_refused(tmp_path):
    done = wait(start([train_args(tmp_path, 4), train_args(tmp_path, 4, "optim.lr=2e-4")], 2, 1), timeout=300)
    assert [f.returncode for f in done] == [2, 2]
    assert "optim.lr: 0.0001 here, 0.0002 there" in done[0].stderr
    assert "[process 0/2] jaxalign: error: processes 0 and 1 disagree on config" in done[0].stderr
    assert not (tmp_path / "ckpt").exists()  # refused before anything was loaded or written


def test_half_configured_environment_and_silent_coordinator(tmp_path):
    env = {**os.environ, "JAX_COORDINATOR_ADDRESS": "127.0.0.1:1"}
    env.pop("JAX_NUM_PROCESSES", None)
    env.pop("JAX_PROCESS_ID", None)
    cmd = [sys.executable, *train_args(tmp_path, 4)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert "JAX_NUM_PROCESSES (or --num-processes) and JAX_PROCESS_ID (or --process-id) are not" in out.stderr
    from mp_harness import free_port

    address = f"127.0.0.1:{free_port()}"
    out = subprocess.run([*cmd, f"--coordinator={address}", "--num-processes=2", "--process-id=1", "--init-timeout=2"],
                         env={k: v for k, v in os.environ.items() if not k.startswith("JAX_")},
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert f"the coordinator {address} did not answer within 2 s" in out.stderr


TOOLS = """
import sys
from jaxalign.cli import main
out = sys.argv[1]
for argv in (["eval", "sts", "--data", "builtin:sts-mini", "--mesh=-1,1,1", "--batch-size", "16",
              "--json", f"{out}/sts.json"],
             ["embed", "--input", f"{out}/sentences.txt", "--output", f"{out}/emb.npy", "--mesh=-1,1,1",
              "--batch-size", "8"],
             ["generate", "--data", "builtin:prefs-mini", "--max-examples", "5", "--num-samples", "2",
              "--num-layers", "1", "--max-new-tokens", "4", "--batch-size", "4", "--output", f"{out}/samples.jsonl"]):
    assert main(argv) == 0, argv
"""


def run_tools(root, procs: int, devices: int) -> dict:
    (root / "sentences.txt").write_text("".join(f"sentence number {i} is {'long ' * (i % 7)}here\n" for i in range(21)))
    done = launch(["-c", TOOLS, str(root)], procs, devices)
    return {"sts": json.loads((root / "sts.json").read_text())["tasks"], "emb": np.load(root / "emb.npy"),
            "samples": (root / "samples.jsonl").read_text(), "stdout": [f.stdout for f in done]}


def test_eval_embed_generate_on_two_processes_equal_one_process(tmp_path):
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    one, two = run_tools(tmp_path / "one", 1, 2), run_tools(tmp_path / "two", 2, 1)
    assert _numbers(two["sts"]) == pytest.approx(_numbers(one["sts"]), rel=1e-5)
    np.testing.assert_allclose(two["emb"], one["emb"], rtol=1e-5, atol=1e-6)
    assert one["emb"].shape == (21, 384)
    assert two["samples"] == one["samples"] and one["samples"].count("\n") == 5
    # Printed (and written) once; gloo's own connection line is all process 1 prints.
    assert "wrote" in two["stdout"][0]
    assert [line for line in two["stdout"][1].splitlines() if not line.startswith("[Gloo]")] == []


def _numbers(tree) -> list[float]:
    if isinstance(tree, dict):
        return [x for k in sorted(tree) for x in _numbers(tree[k])]
    if isinstance(tree, list):
        return [x for v in tree for x in _numbers(v)]
    return [float(tree)] if isinstance(tree, (int, float)) and not isinstance(tree, bool) else []
