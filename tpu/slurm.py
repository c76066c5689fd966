#!/usr/bin/env python3
"""Write an sbatch script that trains a recipe on a multi-node GPU cluster under SLURM.

One task per node (``--ntasks-per-node=1``) runs ``jaxalign train`` and drives all of the
node's GPUs; ``srun`` starts the tasks together and they join with
``jax.distributed.initialize()``. JAX detects SLURM by itself; the script also exports what
it would find, for clarity and for logs: ``JAX_COORDINATOR_ADDRESS`` (the first node of
``$SLURM_JOB_NODELIST``, via ``scontrol show hostnames``, and ``--port``),
``JAX_NUM_PROCESSES=$SLURM_NNODES`` and, inside each task, ``JAX_PROCESS_ID=$SLURM_PROCID``.

``#SBATCH --signal=TERM@SECONDS`` sends SIGTERM that long before the time limit: every process
checkpoints at the same step and exits 0, so a job that runs out of time (or, with
``--requeue``, is preempted and requeued) resumes from ``checkpoint.dir`` when it runs again.

The environment is the repository's venv, on a file system every node shares: create it once
on the login node (``source scripts/setup_env.sh && pip install -U 'jax[cuda12]'``); the job
only activates it.

The script is written to ``--output`` (``-``: stdout); ``--submit`` runs ``sbatch SCRIPT``;
``--dry-run`` prints that command instead (the script is still written).

    tpu/slurm.py --nodes 4 --gpus-per-node 8 --time 24:00:00 --partition gpu \\
        experiments/dpo_hh_full.yaml checkpoint.dir=/shared/runs/dpo --submit
"""

from __future__ import annotations

import argparse
import re
import shlex
import sys
from pathlib import Path

from launch_common import (REPO, LaunchError, add_dry_run, add_recipe_args, env_assignments, main_guard, shell_line,
                           train_command)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    add_recipe_args(p)
    p.add_argument("--nodes", type=int, required=True, help="nodes (one jaxalign process each)")
    p.add_argument("--gpus-per-node", type=int, default=8, help="GPUs per node. Default: %(default)s")
    p.add_argument("--cpus-per-task", type=int, default=None, help="CPU cores per node's task (data loading)")
    p.add_argument("--time", default="24:00:00", help="time limit, [D-]HH:MM:SS. Default: %(default)s")
    p.add_argument("--partition", default=None, help="SLURM partition")
    p.add_argument("--account", default=None, help="SLURM account")
    p.add_argument("--job-name", default="jaxalign", help="Default: %(default)s")
    p.add_argument("--port", type=int, default=12355, help="coordinator port on the first node. Default: %(default)s")
    p.add_argument("--signal-before", type=int, default=300,
                   help="seconds before the time limit that SIGTERM arrives (time to checkpoint). Default: %(default)s")
    p.add_argument("--requeue", action="store_true", help="requeue the job when it is preempted (it then resumes)")
    p.add_argument("--workdir", default=str(REPO),
                   help="the repository on the shared file system (holds .venv). Default: %(default)s")
    p.add_argument("--log", default="%x-%j.out",
                   help="sbatch --output pattern (its directory must exist). Default: %(default)s")
    p.add_argument("--output", default=None, help="where to write the script ('-': stdout). Default: JOB_NAME.sbatch")
    p.add_argument("--submit", action="store_true", help="run sbatch on the script")
    add_dry_run(p)
    return p


def sbatch_script(args, train: str) -> str:
    options = [f"--job-name={args.job_name}", f"--nodes={args.nodes}", "--ntasks-per-node=1",
               f"--gpus-per-node={args.gpus_per_node}", f"--time={args.time}", f"--output={args.log}",
               f"--signal=TERM@{args.signal_before}"]
    options += [f"--{k}={v}" for k, v in (("cpus-per-task", args.cpus_per_task), ("partition", args.partition),
                                            ("account", args.account)) if v is not None]
    if args.requeue:
        options.append("--requeue")
    # $SLURM_PROCID differs per task, so it is read inside each one (single quotes).
    task = f"export JAX_PROCESS_ID=$SLURM_PROCID && {train}"
    return "\n".join([
        "#!/bin/bash",
        *(f"#SBATCH {o}" for o in options),
        "set -euo pipefail",
        f"cd {shlex.quote(args.workdir)}",
        "source .venv/bin/activate",
        'head_node="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)"',
        f'export JAX_COORDINATOR_ADDRESS="$head_node:{args.port}"',
        'export JAX_NUM_PROCESSES="$SLURM_NNODES"',
        'echo "jaxalign: $SLURM_NNODES nodes, coordinator $JAX_COORDINATOR_ADDRESS"',
        f"srun --nodes={args.nodes} --ntasks-per-node=1 --kill-on-bad-exit=1 bash -c {shlex.quote(task)}",
        "",
    ])


def write(args, runner) -> None:
    for name in ("nodes", "gpus_per_node", "port", "cpus_per_task"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise LaunchError(f"--{name.replace('_', '-')}={value}: must be >= 1")
    if not re.fullmatch(r"(\d+-)?\d{1,2}:\d{2}:\d{2}", args.time):
        raise LaunchError(f"--time {args.time!r}: expected [D-]HH:MM:SS, e.g. 24:00:00 or 2-00:00:00")
    out = args.output or f"{args.job_name}.sbatch"
    if args.submit and out == "-":
        raise LaunchError("--submit needs the script in a file: drop --output - or name a file")
    text = sbatch_script(args, shell_line(env_assignments(args), train_command(args)))
    if out == "-":
        sys.stdout.write(text)
    else:
        Path(out).write_text(text)
        print(f"wrote {out}: {args.nodes} nodes x {args.gpus_per_node} GPUs", file=sys.stderr)
    if args.submit:
        runner.run(["sbatch", out])


def main(argv=None) -> int:
    return main_guard(build_parser(), write, argv)


if __name__ == "__main__":
    sys.exit(main())
