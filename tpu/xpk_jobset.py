#!/usr/bin/env python3
"""Write a Kubernetes JobSet manifest that trains a recipe on a multi-host TPU slice on GKE.

The manifest has the shape ``xpk workload create`` produces: one JobSet whose replicatedJob
runs one pod per TPU host of the slice (``parallelism`` = ``completions`` = hosts), pinned to
the slice's node pool by the ``cloud.google.com/gke-tpu-accelerator`` and
``cloud.google.com/gke-tpu-topology`` node selectors, each pod asking for all of its host's
chips (``google.com/tpu``). GKE gives every pod ``TPU_WORKER_HOSTNAMES`` and ``TPU_WORKER_ID``,
so ``jaxalign train`` joins the hosts with ``jax.distributed.initialize()`` and no arguments.
With ``--num-slices`` > 1 the replicatedJob has one replica per slice and the pods get the
``MEGASCALE_*`` variables that join slices over the data-centre network (put ``mesh.data``
across slices).

The container image must hold the repository at ``--workdir`` with jaxalign and
``jax[tpu]`` installed (``scripts/setup_env.sh`` then ``pip install -U 'jax[tpu]'``).
A preempted or evicted pod gets SIGTERM: every process checkpoints at the same step and exits
0, and the JobSet restarts (up to ``--max-restarts``) into a resume from ``checkpoint.dir``,
which should be a ``gs://`` path.

The manifest is written to ``--output`` (``-``: stdout). ``--submit`` runs
``kubectl apply -f MANIFEST``; ``--dry-run`` prints that command instead (the manifest is still
written, to be inspected). The equivalent ``xpk workload create`` command is printed to stderr.

    tpu/xpk_jobset.py --name dpo-8b --accelerator-type v5p-64 --image gcr.io/PROJECT/jaxalign:latest \\
        experiments/dpo_hh_full.yaml checkpoint.dir=gs://BUCKET/dpo --submit
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import sys
from pathlib import Path

from launch_common import (LaunchError, add_dry_run, add_recipe_args, env_assignments, main_guard, parse_accelerator,
                           shell_line, train_command)

CONTAINER = "jaxalign"
MEGASCALE_PORT = 8080


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    add_recipe_args(p)
    p.add_argument("--name", required=True, help="JobSet (workload) name: lowercase letters, digits and '-'")
    p.add_argument("--accelerator-type", required=True, help="slice type, e.g. v5p-64, v6e-16, v5litepod-32")
    p.add_argument("--topology", default=None,
                   help="GKE topology of the slice's node pool, e.g. 2x4x4 (default: the standard one for the type)")
    p.add_argument("--num-slices", type=int, default=1, help="slices trained on together (multislice). Default: 1")
    p.add_argument("--image", required=True, help="container image holding the repository and jax[tpu]")
    p.add_argument("--workdir", default="/app", help="the repository inside the image. Default: %(default)s")
    p.add_argument("--namespace", default="default", help="Kubernetes namespace. Default: %(default)s")
    p.add_argument("--max-restarts", type=int, default=3,
                   help="times the JobSet restarts after a failure or preemption (each restart resumes). "
                        "Default: %(default)s")
    p.add_argument("--grace-period", type=int, default=300,
                   help="seconds between SIGTERM and SIGKILL: time to write the last checkpoint. Default: %(default)s")
    p.add_argument("--output", default=None,
                   help="where to write the manifest ('-': stdout). Default: jobset-NAME.yaml")
    p.add_argument("--submit", action="store_true", help="kubectl apply -f the manifest")
    p.add_argument("--cluster", default="CLUSTER", help="GKE cluster, for the printed xpk command")
    add_dry_run(p)
    return p


def yaml_scalar(value) -> str:
    """Any string as a YAML double-quoted scalar (JSON string syntax is valid YAML)."""
    return json.dumps(str(value))


def annotation(key: str) -> str:
    """The ``valueFrom`` of a variable holding one of the pod's JobSet annotations."""
    path = f"metadata.annotations['jobset.sigs.k8s.io/{key}']"
    return "{fieldRef: {fieldPath: " + yaml_scalar(path) + "}}"


def manifest(args, acc, command: str) -> str:
    """The JobSet, as YAML text (written out directly: the launchers use only the stdlib)."""
    q = yaml_scalar
    env = ""
    if args.num_slices > 1:
        coordinator = "$(JOBSET_NAME)-$(REPLICATED_JOB_NAME)-0-0.$(JOBSET_NAME)"  # slice 0, pod 0
        env = f"""
                  env:
                    - name: REPLICATED_JOB_NAME
                      valueFrom: {annotation("replicatedjob-name")}
                    - name: JOBSET_NAME
                      valueFrom: {annotation("jobset-name")}
                    - name: MEGASCALE_COORDINATOR_ADDRESS
                      value: {q(coordinator)}
                    - name: MEGASCALE_NUM_SLICES
                      value: {q(args.num_slices)}
                    - name: MEGASCALE_SLICE_ID
                      valueFrom: {annotation("job-index")}
                    - name: MEGASCALE_PORT
                      value: {q(MEGASCALE_PORT)}"""
    return f"""\
# {acc.name} x {args.num_slices}: {acc.chips} chips per slice on {acc.hosts} hosts of {acc.chips_per_host} chips
apiVersion: jobset.x-k8s.io/v1alpha2
kind: JobSet
metadata:
  name: {q(args.name)}
  namespace: {q(args.namespace)}
  labels:
    xpk.google.com/workload: {q(args.name)}
  annotations:
    alpha.jobset.sigs.k8s.io/exclusive-topology: cloud.google.com/gke-nodepool
spec:
  failurePolicy:
    maxRestarts: {args.max_restarts}
  replicatedJobs:
    - name: slice-job
      replicas: {args.num_slices}
      template:
        spec:
          parallelism: {acc.hosts}
          completions: {acc.hosts}
          backoffLimit: 0
          template:
            spec:
              restartPolicy: Never
              terminationGracePeriodSeconds: {args.grace_period}
              hostNetwork: true
              dnsPolicy: ClusterFirstWithHostNet
              nodeSelector:
                cloud.google.com/gke-tpu-accelerator: {q(acc.spec.gke_accelerator)}
                cloud.google.com/gke-tpu-topology: {q(acc.topology)}
              containers:
                - name: {CONTAINER}
                  image: {q(args.image)}
                  workingDir: {q(args.workdir)}
                  command: ["bash", "-c", {q(command)}]
                  ports:
                    - containerPort: 8471
                    - containerPort: {MEGASCALE_PORT}
                  securityContext:
                    privileged: true
                  resources:
                    limits:
                      google.com/tpu: {acc.chips_per_host}{env}
"""


def xpk_command(args, acc, command: str) -> list[str]:
    """``xpk workload create`` of the same workload; xpk's container starts in the image's own
    working directory, hence the ``cd``."""
    command = f"cd {shlex.quote(args.workdir)} && {command}"
    return ["xpk", "workload", "create", f"--cluster={args.cluster}", f"--workload={args.name}",
            f"--tpu-type={acc.name}", f"--num-slices={args.num_slices}", f"--docker-image={args.image}",
            f"--max-restarts={args.max_restarts}", f"--command={command}"]


def launch(args, runner) -> None:
    if not re.fullmatch(r"[a-z0-9]([-a-z0-9]{0,38}[a-z0-9])?", args.name):
        raise LaunchError(f"--name {args.name!r}: use at most 40 lowercase letters, digits and '-', "
                          "starting and ending with a letter or digit")
    if args.num_slices < 1 or args.max_restarts < 0 or args.grace_period < 0:
        raise LaunchError("--num-slices must be >= 1, --max-restarts and --grace-period >= 0")
    acc = parse_accelerator(args.accelerator_type, args.topology)
    command = shell_line(env_assignments(args), train_command(args))
    out = args.output or f"jobset-{args.name}.yaml"
    if args.submit and out == "-":
        raise LaunchError("--submit needs the manifest in a file: drop --output - or name a file")
    text = manifest(args, acc, command)
    if out == "-":
        sys.stdout.write(text)
    else:
        Path(out).write_text(text)
        print(f"wrote {out}: {acc.name} x {args.num_slices}, {acc.hosts} pods of {acc.chips_per_host} chips",
              file=sys.stderr)
    print(f"equivalent xpk command: {shlex.join(xpk_command(args, acc, command))}", file=sys.stderr)
    if args.submit:
        runner.run(["kubectl", "apply", "-f", out])


def main(argv=None) -> int:
    return main_guard(build_parser(), launch, argv)


if __name__ == "__main__":
    sys.exit(main())
