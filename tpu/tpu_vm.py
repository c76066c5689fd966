#!/usr/bin/env python3
"""Create, set up, train on and delete a Cloud TPU VM slice with ``gcloud``.

A multi-host slice (e.g. v5p-64: 32 chips on 8 hosts) runs one jaxalign process per host,
all with the same command; they find each other through the TPU runtime
(``jax.distributed.initialize()`` with no arguments). The subcommands are the four steps of
a run:

  create   the slice: ``gcloud compute tpus tpu-vm create``, or with ``--queued`` a queued
           resource (``gcloud compute tpus queued-resources create``), which waits for
           capacity instead of failing; ``--spot`` for preemptible capacity
  install  the repository on every worker (``--worker=all``): a ``git clone`` of ``--repo``
           or, by default, a ``git archive`` of this checkout's HEAD copied with ``scp``;
           then ``source scripts/setup_env.sh`` and ``pip install -U 'jax[tpu]'``
  run      ``jaxalign train RECIPE KEY=VALUE...`` on every worker; each output line comes
           back prefixed with its worker and is also written to ``LOG_DIR/worker-N.log``
  delete   the slice (or the queued resource and its slice)

Every subcommand takes ``--dry-run``: print the gcloud commands, one per line, run nothing.

    tpu/tpu_vm.py create my-v5p --accelerator-type v5p-64 --zone us-east5-a --spot --queued
    tpu/tpu_vm.py install my-v5p --zone us-east5-a
    tpu/tpu_vm.py run my-v5p --zone us-east5-a experiments/dpo_hh_full.yaml \\
        checkpoint.dir=gs://BUCKET/dpo --env HF_HUB_OFFLINE=0
    tpu/tpu_vm.py delete my-v5p --zone us-east5-a --queued
"""

from __future__ import annotations

import argparse
import re
import shlex
import sys
from pathlib import Path

from launch_common import (REPO, LaunchError, add_dry_run, add_recipe_args, env_assignments, main_guard,
                           parse_accelerator, shell_line, train_command)

REMOTE_DIR = "jaxalign"  # the repository on each worker, relative to the login directory
ARCHIVE = "/tmp/jaxalign-src.tar.gz"
# Each worker's index, from the TPU VM metadata server.
WORKER_ID = ("curl -s -H Metadata-Flavor:Google "
             "http://metadata.google.internal/computeMetadata/v1/instance/attributes/agent-worker-number")
WORKER_PREFIX = re.compile(r"^\[worker-(\d+)\] ")


def add_target_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", help="TPU VM (slice) name")
    p.add_argument("--zone", required=True, help="zone of the slice, e.g. us-east5-a (v5p), us-east1-d (v6e)")
    p.add_argument("--project", default=None, help="Google Cloud project (default: gcloud's configured project)")
    add_dry_run(p)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    sub = parser.add_subparsers(dest="command", required=True, metavar="{create,install,run,delete}")

    p = sub.add_parser("create", help="create the slice (or queue a request for it)",
                       description="Create a TPU VM slice, or a queued resource that waits for capacity.")
    add_target_args(p)
    p.add_argument("--accelerator-type", required=True,
                   help="slice type, e.g. v5p-64 (32 chips, 8 hosts), v6e-16, v5litepod-32")
    p.add_argument("--version", default=None,
                   help="TPU software version (runtime), default by family: v5p v2-alpha-tpuv5, "
                        "v6e v2-alpha-tpuv6e, v5litepod v2-alpha-tpuv5-lite")
    p.add_argument("--spot", action="store_true", help="spot (preemptible) capacity: cheaper, may be reclaimed")
    p.add_argument("--queued", action="store_true",
                   help="create a queued resource of the same name (waits for capacity); check it with "
                        "`gcloud compute tpus queued-resources describe NAME`")
    p.set_defaults(main=cmd_create)

    p = sub.add_parser("install", help="put the repository and its environment on every worker",
                       description="Copy or clone the repository on every worker, create its venv "
                                   "(scripts/setup_env.sh) and install jax[tpu].")
    add_target_args(p)
    p.add_argument("--repo", default=None, metavar="GIT_URL",
                   help="clone this repository on each worker instead of copying this checkout's HEAD")
    p.add_argument("--branch", default=None, help="with --repo: the branch or tag to clone")
    p.add_argument("--python", default="python3.11",
                   help="interpreter for the venv (jaxalign needs >= 3.11; installed with apt if missing). "
                        "Default: %(default)s")
    p.set_defaults(main=cmd_install)

    p = sub.add_parser("run", help="train a recipe on every worker, logs streamed back",
                       description="Run `jaxalign train RECIPE KEY=VALUE...` on every worker of the slice. "
                                   "Each output line is shown prefixed with [worker-N] and written to "
                                   "LOG_DIR/worker-N.log. Stopping the slice (preemption) sends SIGTERM: every "
                                   "process checkpoints at the same step and exits 0; run again to resume.")
    add_target_args(p)
    add_recipe_args(p)
    p.add_argument("--log-dir", type=Path, default=Path("logs"),
                   help="local directory for the per-worker logs. Default: %(default)s")
    p.set_defaults(main=cmd_run)

    p = sub.add_parser("delete", help="delete the slice", description="Delete the slice (teardown).")
    add_target_args(p)
    p.add_argument("--queued", action="store_true", help="the slice was created as a queued resource: delete it")
    p.set_defaults(main=cmd_delete)
    return parser


def location(args) -> list[str]:
    return [f"--zone={args.zone}", *([f"--project={args.project}"] if args.project else [])]


def ssh_all(args, command: str) -> list[str]:
    return ["gcloud", "compute", "tpus", "tpu-vm", "ssh", args.name, *location(args), "--worker=all",
            f"--command={command}"]


def cmd_create(args, runner) -> None:
    acc = parse_accelerator(args.accelerator_type)
    version = args.version or acc.spec.runtime
    # The two commands name the software version differently.
    if args.queued:
        cmd = ["gcloud", "compute", "tpus", "queued-resources", "create", args.name, f"--node-id={args.name}",
               *location(args), f"--accelerator-type={acc.name}", f"--runtime-version={version}"]
    else:
        cmd = ["gcloud", "compute", "tpus", "tpu-vm", "create", args.name, *location(args),
               f"--accelerator-type={acc.name}", f"--version={version}"]
    if args.spot:
        cmd.append("--spot")
    print(f"{acc.name}: {acc.chips} chips on {acc.hosts} host(s), topology {acc.topology}", file=sys.stderr)
    runner.run(cmd)


def cmd_install(args, runner) -> None:
    if args.branch and not args.repo:
        raise LaunchError("--branch needs --repo (without it this checkout's HEAD is copied)")
    py = shlex.quote(args.python)
    setup = (f"(command -v {py} >/dev/null || (sudo apt-get update -q && sudo apt-get install -y -q {py} {py}-venv))"
             f" && cd {REMOTE_DIR} && export PYTHON={py} && source scripts/setup_env.sh && pip install -U 'jax[tpu]'")
    if args.repo:
        clone = ["git", "clone", "--depth=1", *([f"--branch={args.branch}"] if args.branch else []), args.repo,
                 REMOTE_DIR]
        fetch = f"(test -d {REMOTE_DIR} || {shlex.join(clone)}) && git -C {REMOTE_DIR} pull --ff-only"
    else:
        runner.run(["git", "-C", str(REPO), "archive", "--format=tar.gz", f"--output={ARCHIVE}", "HEAD"])
        runner.run(["gcloud", "compute", "tpus", "tpu-vm", "scp", ARCHIVE, f"{args.name}:{ARCHIVE}", *location(args),
                    "--worker=all"])
        fetch = f"mkdir -p {REMOTE_DIR} && tar -xzf {ARCHIVE} -C {REMOTE_DIR}"
    runner.run(ssh_all(args, f"{fetch} && {setup}"))


def cmd_run(args, runner) -> None:
    train = shell_line(env_assignments(args), train_command(args))
    # pipefail: the worker's exit status is jaxalign's, not sed's.
    remote = (f"set -o pipefail; cd {REMOTE_DIR} && source .venv/bin/activate && "
              f"{{ {train}; }} 2>&1 | sed -u \"s/^/[worker-$({WORKER_ID})] /\"")
    logs = {}

    def on_line(line: str) -> None:
        sys.stdout.write(line)
        m = WORKER_PREFIX.match(line)
        if m:
            if m.group(1) not in logs:
                logs[m.group(1)] = open(args.log_dir / f"worker-{m.group(1)}.log", "a")
            logs[m.group(1)].write(line[m.end():])
            logs[m.group(1)].flush()

    if not runner.dry_run:
        args.log_dir.mkdir(parents=True, exist_ok=True)
    try:
        runner.stream(ssh_all(args, remote), on_line)
    finally:
        for f in logs.values():
            f.close()


def cmd_delete(args, runner) -> None:
    if args.queued:
        cmd = ["gcloud", "compute", "tpus", "queued-resources", "delete", args.name, "--force"]
    else:
        cmd = ["gcloud", "compute", "tpus", "tpu-vm", "delete", args.name]
    runner.run([*cmd, *location(args), "--quiet"])


def main(argv=None) -> int:
    parser = build_parser()
    return main_guard(parser, lambda args, runner: args.main(args, runner), argv)


if __name__ == "__main__":
    sys.exit(main())
