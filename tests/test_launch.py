"""The launchers of ``tpu/``: their dry runs print the right commands and their generated
JobSet / sbatch files say the right things; bad input fails with a clear message.

Each script runs in a subprocess, as a user runs it; nothing here imports jax (except the
memory plan's own subprocess, on a tiny model).
"""

import argparse
import importlib
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
TPU = REPO / "tpu"
RECIPE = "experiments/dpo_hh_full.yaml"
SPACED = "checkpoint.dir=gs://my bucket/dpo run"  # must survive quoting as one argument


def launch(script: str, *args: str, env: dict | None = None, check: bool = True,
           timeout: float = 60) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, str(TPU / script), *args], capture_output=True, text=True, cwd=REPO,
                          env=env, timeout=timeout)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def commands(proc) -> list[list[str]]:
    """The dry run's stdout, one shell-quoted command per line, split back into argv lists."""
    return [shlex.split(line) for line in proc.stdout.splitlines()]


def option(argv: list[str], name: str) -> str:
    values = [a.split("=", 1)[1] for a in argv if a.startswith(f"{name}=")]
    assert len(values) == 1, (name, argv)
    return values[0]


# ------------------------------------------------------------------ accelerator table


def test_accelerator_table():
    sys.path.insert(0, str(TPU))
    try:
        from launch_common import parse_accelerator
    finally:
        sys.path.remove(str(TPU))
    cases = {"v5p-8": (4, 1, "2x2x1"), "v5p-64": (32, 8, "2x4x4"), "v5p-256": (128, 32, "4x4x8"),
             "v6e-8": (8, 1, "2x4"), "v6e-16": (16, 4, "4x4"), "v5litepod-32": (32, 8, "4x8")}
    for name, (chips, hosts, topology) in cases.items():
        acc = parse_accelerator(name)
        assert (acc.chips, acc.hosts, acc.topology) == (chips, hosts, topology), name
        assert acc.chips_per_host * acc.hosts == acc.chips


# ------------------------------------------------------------------ tpu_vm.py


def test_create_queued_spot():
    (cmd,) = commands(launch("tpu_vm.py", "create", "pod", "--accelerator-type", "v5p-64", "--zone", "us-east5-a",
                             "--project", "proj", "--spot", "--queued", "--dry-run"))
    assert cmd[:6] == ["gcloud", "compute", "tpus", "queued-resources", "create", "pod"]
    assert option(cmd, "--node-id") == "pod"
    assert option(cmd, "--accelerator-type") == "v5p-64"
    assert option(cmd, "--runtime-version") == "v2-alpha-tpuv5"
    assert option(cmd, "--zone") == "us-east5-a" and option(cmd, "--project") == "proj"
    assert "--spot" in cmd


def test_create_tpu_vm():
    (cmd,) = commands(launch("tpu_vm.py", "create", "pod", "--accelerator-type", "v6e-16", "--zone", "us-east1-d",
                             "--version", "v2-alpha-tpuv6e", "--dry-run"))
    assert cmd[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "create", "pod"]
    assert option(cmd, "--version") == "v2-alpha-tpuv6e"
    assert "--spot" not in cmd and not any(a.startswith("--project") for a in cmd)


@pytest.mark.parametrize("args, message", [
    (["--accelerator-type", "v5p-63", "--zone", "z"], "multiple of 2"),
    (["--accelerator-type", "tpu-v5p-64", "--zone", "z"], "expected FAMILY-N"),
    (["--accelerator-type", "v6e-24", "--zone", "z"], "no standard topology"),
    (["--accelerator-type", "v5p-64"], "--zone"),
])
def test_create_rejects(args, message):
    proc = launch("tpu_vm.py", "create", "pod", *args, "--dry-run", check=False)
    assert proc.returncode == 2 and message in proc.stderr and proc.stdout == ""


def test_install_copies_checkout_to_every_worker():
    archive, scp, ssh = commands(launch("tpu_vm.py", "install", "pod", "--zone", "z", "--dry-run"))
    assert archive[:4] == ["git", "-C", str(REPO), "archive"] and archive[-1] == "HEAD"
    assert scp[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "scp"] and "--worker=all" in scp
    assert ssh[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "pod"] and "--worker=all" in ssh
    remote = option(ssh, "--command")
    assert "tar -xzf" in remote and "source scripts/setup_env.sh" in remote
    assert "pip install -U 'jax[tpu]'" in remote
    assert remote.index("setup_env.sh") < remote.index("jax[tpu]")


def test_install_clones_repo():
    (ssh,) = commands(launch("tpu_vm.py", "install", "pod", "--zone", "z", "--repo", "https://example.com/j.git",
                             "--branch", "main", "--dry-run"))
    remote = option(ssh, "--command")
    assert "git clone --depth=1 --branch=main https://example.com/j.git jaxalign" in remote
    assert "--worker=all" in ssh


def test_run_passes_recipe_and_overrides_through():
    (ssh,) = commands(launch("tpu_vm.py", "run", "pod", "--zone", "z", RECIPE, SPACED, "optim.lr=1e-6",
                             "--env", "HF_HUB_OFFLINE=0", "--dry-run"))
    assert ssh[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "pod"] and "--worker=all" in ssh
    remote = option(ssh, "--command")
    train = shlex.join(["jaxalign", "train", RECIPE, SPACED, "optim.lr=1e-6"])
    assert train in remote
    assert "export HF_HUB_OFFLINE=0 && " + train in remote
    assert "[worker-" in remote and "pipefail" in remote


def test_run_writes_one_log_per_worker(tmp_path):
    """A stand-in gcloud prints what --worker=all returns (every worker's prefixed lines, interleaved)."""
    fake = tmp_path / "bin" / "gcloud"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\nprintf '[worker-0] step 1\\n[worker-1] step 1\\n[worker-0] done\\nssh: note\\n'\n")
    fake.chmod(0o755)
    env = {**os.environ, "PATH": f"{fake.parent}{os.pathsep}{os.environ['PATH']}"}
    proc = launch("tpu_vm.py", "run", "pod", "--zone", "z", RECIPE, "--log-dir", str(tmp_path / "logs"), env=env)
    assert "[worker-1] step 1" in proc.stdout
    assert (tmp_path / "logs" / "worker-0.log").read_text() == "step 1\ndone\n"
    assert (tmp_path / "logs" / "worker-1.log").read_text() == "step 1\n"


@pytest.mark.parametrize("args, message", [
    ([RECIPE, "optim.lr"], "expected KEY=VALUE"),
    (["experiments/no_such.yaml"], "no such file"),
    ([RECIPE, "--env", "1BAD=x"], "expected NAME=VALUE"),
])
def test_run_rejects(args, message):
    proc = launch("tpu_vm.py", "run", "pod", "--zone", "z", *args, "--dry-run", check=False)
    assert proc.returncode == 2 and message in proc.stderr and proc.stdout == ""


def test_delete():
    (plain,) = commands(launch("tpu_vm.py", "delete", "pod", "--zone", "z", "--dry-run"))
    assert plain[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "delete", "pod"] and "--quiet" in plain
    (queued,) = commands(launch("tpu_vm.py", "delete", "pod", "--zone", "z", "--queued", "--dry-run"))
    assert queued[:6] == ["gcloud", "compute", "tpus", "queued-resources", "delete", "pod"] and "--force" in queued


# ------------------------------------------------------------------ xpk_jobset.py


def pod_spec(jobset: dict) -> tuple[dict, dict]:
    (job,) = jobset["spec"]["replicatedJobs"]
    return job, job["template"]["spec"]["template"]["spec"]


@pytest.mark.parametrize("accelerator, hosts, label, topology", [
    ("v5p-64", 8, "tpu-v5p-slice", "2x4x4"),
    ("v6e-16", 4, "tpu-v6e-slice", "4x4"),
])
def test_jobset_manifest(tmp_path, accelerator, hosts, label, topology):
    out = tmp_path / "jobset.yaml"
    proc = launch("xpk_jobset.py", "--name", "dpo-8b", "--accelerator-type", accelerator, "--image", "img:1",
                  RECIPE, SPACED, "--output", str(out), "--submit", "--dry-run")
    assert commands(proc) == [["kubectl", "apply", "-f", str(out)]]
    jobset = yaml.safe_load(out.read_text())
    assert jobset["kind"] == "JobSet" and jobset["metadata"]["name"] == "dpo-8b"
    job, pod = pod_spec(jobset)
    assert job["replicas"] == 1
    assert job["template"]["spec"]["parallelism"] == job["template"]["spec"]["completions"] == hosts
    assert pod["nodeSelector"] == {"cloud.google.com/gke-tpu-accelerator": label,
                                   "cloud.google.com/gke-tpu-topology": topology}
    (container,) = pod["containers"]
    assert container["resources"]["limits"] == {"google.com/tpu": 4}
    assert container["image"] == "img:1"
    assert container["command"][:2] == ["bash", "-c"]
    assert shlex.split(container["command"][2]) == ["jaxalign", "train", RECIPE, SPACED]
    assert "env" not in container
    xpk = next(line for line in proc.stderr.splitlines() if "xpk workload create" in line)
    assert f"--tpu-type={accelerator}" in xpk and "--workload=dpo-8b" in xpk
    xpk_argv = shlex.split(xpk.split(": ", 1)[1])
    assert option(xpk_argv, "--command") == "cd /app && " + container["command"][2]


def test_jobset_multislice_to_stdout():
    proc = launch("xpk_jobset.py", "--name", "ms", "--accelerator-type", "v5p-16", "--image", "img", "--num-slices",
                  "2", RECIPE, "--output", "-", "--dry-run")
    job, pod = pod_spec(yaml.safe_load(proc.stdout))
    assert job["replicas"] == 2 and job["template"]["spec"]["parallelism"] == 2
    env = {e["name"]: e for e in pod["containers"][0]["env"]}
    assert env["MEGASCALE_NUM_SLICES"]["value"] == "2"
    assert "job-index" in env["MEGASCALE_SLICE_ID"]["valueFrom"]["fieldRef"]["fieldPath"]


@pytest.mark.parametrize("args, message", [
    (["--name", "Bad_Name", "--accelerator-type", "v5p-64"], "--name"),
    (["--name", "ok", "--accelerator-type", "v5p-64", "--topology", "4x4x4"], "does not describe the 32 chips"),
    (["--name", "ok", "--accelerator-type", "v5p-64", "--output", "-", "--submit"], "--submit needs"),
])
def test_jobset_rejects(args, message):
    proc = launch("xpk_jobset.py", *args, "--image", "img", RECIPE, "--dry-run", check=False)
    assert proc.returncode == 2 and message in proc.stderr


# ------------------------------------------------------------------ slurm.py


def test_sbatch_script(tmp_path):
    out = tmp_path / "job.sbatch"
    proc = launch("slurm.py", "--nodes", "4", "--gpus-per-node", "8", "--partition", "gpu", "--requeue",
                  RECIPE, SPACED, "--output", str(out), "--submit", "--dry-run")
    assert commands(proc) == [["sbatch", str(out)]]
    text = out.read_text()
    lines = text.splitlines()
    assert lines[0] == "#!/bin/bash"
    for directive in ("--nodes=4", "--gpus-per-node=8", "--ntasks-per-node=1", "--partition=gpu", "--requeue",
                      "--signal=TERM@300"):
        assert f"#SBATCH {directive}" in lines
    assert 'head_node="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)"' in lines
    assert 'export JAX_NUM_PROCESSES="$SLURM_NNODES"' in lines
    (srun,) = [shlex.split(line) for line in lines if line.startswith("srun ")]
    assert srun[:4] == ["srun", "--nodes=4", "--ntasks-per-node=1", "--kill-on-bad-exit=1"]
    assert srun[4:6] == ["bash", "-c"]
    task = srun[6]
    assert task.startswith("export JAX_PROCESS_ID=$SLURM_PROCID && ")
    assert shlex.split(task.split(" && ", 1)[1]) == ["jaxalign", "train", RECIPE, SPACED]
    assert subprocess.run(["bash", "-n", str(out)]).returncode == 0


@pytest.mark.parametrize("args, message", [
    (["--nodes", "0"], "--nodes=0"),
    (["--nodes", "2", "--time", "24h"], "HH:MM:SS"),
    ([], "--nodes"),
])
def test_sbatch_rejects(args, message):
    proc = launch("slurm.py", *args, RECIPE, "--output", "-", "--dry-run", check=False)
    assert proc.returncode == 2 and message in proc.stderr


# ------------------------------------------------------------------ help and the memory plan


def script_parser(script: str):
    """``build_parser()`` of a launcher, imported as the script would be (they import no jax at module level)."""
    sys.path.insert(0, str(TPU))
    try:
        module = importlib.import_module(script)
    finally:
        sys.path.remove(str(TPU))
    return module.build_parser()


def all_actions(parser):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from all_actions(sub)
        else:
            yield parser.prog, action


@pytest.mark.parametrize("script", ["tpu_vm", "xpk_jobset", "slurm", "memory_plan"])
def test_help_explains_every_option(script):
    actions = list(all_actions(script_parser(script)))
    assert any("--dry-run" in a.option_strings for _, a in actions) or script == "memory_plan"
    undocumented = [(prog, a.dest) for prog, a in actions if not (a.help and a.help.strip())]
    assert not undocumented


def test_launchers_do_not_need_jax():
    """They run on a laptop or login node: importing them must not import jax."""
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import tpu_vm, xpk_jobset, slurm, memory_plan; "
            "assert 'jax' not in sys.modules")
    subprocess.run([sys.executable, "-c", code, str(TPU)], check=True, timeout=60)


def test_memory_plan_tiny(tmp_path):
    """The real plan (Llama-3-8B on 32 devices) takes minutes; a 2-layer, hidden-64 decoder on 8
    simulated devices exercises the same path in seconds."""
    out = tmp_path / "plan.json"
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    launch("memory_plan.py", "--devices", "8", "--depths", "2", "--num-layers", "2", "--hidden-size", "64",
           "--intermediate-size", "128", "--num-heads", "4", "--num-kv-heads", "2", "--vocab-size", "256",
           "--pairs", "8", "--length", "32", "--json", str(out), env=env, timeout=120)
    plan = json.loads(out.read_text())
    assert plan["devices"] == 8 and plan["mesh"] == {"data": 1, "fsdp": -1, "tensor": 1}
    full = plan["per_device_bytes_full_depth"]
    assert full["source"] == "measured"
    # embed + head (256 x 64 each), per layer q/o 64x64, k/v 64x32, MLP 3 x 64x128, two norms; final norm
    params = 2 * 256 * 64 + 2 * (2 * 64 * 64 + 2 * 64 * 32 + 3 * 64 * 128 + 2 * 64) + 64
    assert full["params"] == params
    # fp32 parameters + two AdamW moments, sharded 8 ways (norm scales replicated), plus the batch
    assert full["argument"] >= 12 * params / 8
    assert full["total"] == full["argument"] + full["output"] - full["alias"] + full["temp"]


def test_memory_plan_linear_fit():
    sys.path.insert(0, str(TPU))
    try:
        from memory_plan import FIELDS, linear_fit
    finally:
        sys.path.remove(str(TPU))
    points = [{"layers": n, "params": 10 + 2 * n, **{f: 100 + 7 * n + (n == 4) for f in FIELDS}} for n in (2, 4, 8)]
    fit = linear_fit(points, 32)
    assert fit["params"]["predicted"] == pytest.approx(74)
    assert fit["temp"]["per_layer"] == pytest.approx(7, abs=0.2)
    assert 0 < fit["temp"]["max_rel_residual"] < 0.01
