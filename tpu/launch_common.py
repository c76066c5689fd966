"""What the launch scripts in ``tpu/`` share: the accelerator table, the recipe arguments and
the dry-run-aware command runner.

Every launcher turns a recipe plus ``key=value`` overrides into the same ``jaxalign train``
command, and every launcher can print the commands it would run (``--dry-run``) instead of
running them, so each lives here once.

Accelerator types are named as Cloud TPU names them (``v5p-64``, ``v6e-16``,
``v5litepod-32``). The number after the dash counts TensorCores for v5p (2 per chip) and
chips for v6e and v5e; one chip is one JAX device either way:

========== ===================== ============== ========== ================================
family     chips of ``NAME-N``   chips per host HBM / chip GKE accelerator label
========== ===================== ============== ========== ================================
v5p        N / 2                 4              95 GiB     tpu-v5p-slice
v6e        N                     4 (8 if N = 8) 32 GiB     tpu-v6e-slice
v5litepod  N                     4 (8 if N = 8) 16 GiB     tpu-v5-lite-podslice
========== ===================== ============== ========== ================================

v6e and v5e slices of up to 8 chips are single hosts (``ct6e-standard-8t`` /
``ct5lp-hightpu-8t`` for 8 chips); larger ones are built from 4-chip hosts
(``ct6e-standard-4t`` / ``ct5lp-hightpu-4t``). v5p hosts always have 4 chips.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import re
import shlex
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


class LaunchError(ValueError):
    """An input the launchers refuse, with what to pass instead."""


@dataclasses.dataclass(frozen=True)
class Family:
    cores_per_chip: int  # how many the N of NAME-N counts per chip
    chips_per_host: int  # hosts of a multi-host slice
    single_host_chips: int  # slices of up to this many chips are one host
    hbm_gib: int
    gke_accelerator: str
    runtime: str  # default TPU VM software version
    topologies: dict[int, str]  # chips -> GKE topology


FAMILIES = {
    "v5p": Family(2, 4, 4, 95, "tpu-v5p-slice", "v2-alpha-tpuv5",
                  {4: "2x2x1", 8: "2x2x2", 16: "2x2x4", 32: "2x4x4", 64: "4x4x4", 128: "4x4x8", 256: "4x8x8",
                   512: "8x8x8", 1024: "8x8x16", 2048: "8x16x16", 4096: "16x16x16"}),
    "v6e": Family(1, 4, 8, 32, "tpu-v6e-slice", "v2-alpha-tpuv6e",
                  {1: "1x1", 4: "2x2", 8: "2x4", 16: "4x4", 32: "4x8", 64: "8x8", 128: "8x16", 256: "16x16"}),
    "v5litepod": Family(1, 4, 8, 16, "tpu-v5-lite-podslice", "v2-alpha-tpuv5-lite",
                        {1: "1x1", 4: "2x2", 8: "2x4", 16: "4x4", 32: "4x8", 64: "8x8", 128: "8x16", 256: "16x16"}),
}


@dataclasses.dataclass(frozen=True)
class Accelerator:
    """One slice of an accelerator type: how many chips and hosts, and how GKE names it."""

    name: str
    family: str
    chips: int
    topology: str

    @property
    def spec(self) -> Family:
        return FAMILIES[self.family]

    @property
    def hosts(self) -> int:
        if self.chips <= self.spec.single_host_chips:
            return 1
        return self.chips // self.spec.chips_per_host

    @property
    def chips_per_host(self) -> int:
        return self.chips // self.hosts


def parse_accelerator(name: str, topology: str | None = None) -> Accelerator:
    """``v5p-64`` -> 32 chips on 8 hosts, topology 2x4x4; ``topology`` overrides the default
    (its product must be the chip count)."""
    m = re.fullmatch(r"(v5p|v6e|v5litepod)-(\d+)", name)
    if m is None:
        raise LaunchError(f"accelerator type {name!r}: expected FAMILY-N with FAMILY one of "
                          f"{', '.join(FAMILIES)}, e.g. v5p-64, v6e-16, v5litepod-32")
    family, n = m.group(1), int(m.group(2))
    spec = FAMILIES[family]
    if n == 0 or n % spec.cores_per_chip:
        raise LaunchError(f"accelerator type {name!r}: {family}-N counts TensorCores, {spec.cores_per_chip} per chip; "
                          f"N must be a positive multiple of {spec.cores_per_chip}")
    chips = n // spec.cores_per_chip
    if topology is None:
        if chips not in spec.topologies:
            sizes = ", ".join(f"{family}-{c * spec.cores_per_chip}" for c in spec.topologies)
            raise LaunchError(f"accelerator type {name!r}: no standard topology for {chips} chips ({sizes}); "
                              "pass --topology AxB[xC] for a custom shape")
        topology = spec.topologies[chips]
    dims = topology.split("x")
    if not all(d.isdigit() and int(d) > 0 for d in dims) or math.prod(int(d) for d in dims) != chips:
        raise LaunchError(f"topology {topology!r} does not describe the {chips} chips of {name}")
    acc = Accelerator(name, family, chips, topology)
    if acc.hosts > 1 and chips % spec.chips_per_host:
        raise LaunchError(f"accelerator type {name!r}: {chips} chips do not fill {spec.chips_per_host}-chip hosts")
    return acc


def add_recipe_args(parser: argparse.ArgumentParser) -> None:
    """The recipe (a path inside the repository, as every host sees it) and its overrides."""
    parser.add_argument("recipe", help="training recipe, a YAML file relative to the repository root "
                                       "(e.g. experiments/dpo_hh_full.yaml); every host runs it from its own copy")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="dotted recipe overrides passed through to `jaxalign train`, e.g. "
                             "checkpoint.dir=gs://BUCKET/run mesh.fsdp=-1")
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                        help="environment variable for the training processes (repeatable), e.g. "
                             "HF_HUB_OFFLINE=0 to let hosts download hf: data sets")


def add_dry_run(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dry-run", action="store_true",
                        help="print the commands that would run, one per line (shell-quoted), and run nothing")


def train_command(args: argparse.Namespace) -> list[str]:
    """``jaxalign train RECIPE KEY=VALUE...``, after checking the recipe exists in this checkout
    and every override has the KEY=VALUE form."""
    if not (REPO / args.recipe).is_file():
        raise LaunchError(f"recipe {args.recipe!r}: no such file under {REPO} "
                          "(give a path relative to the repository root, e.g. experiments/dpo_hh_full.yaml)")
    for item in args.overrides:
        key, eq, _ = item.partition("=")
        if not eq or not key:
            raise LaunchError(f"override {item!r}: expected KEY=VALUE, e.g. optim.lr=1e-6")
    return ["jaxalign", "train", args.recipe, *args.overrides]


def env_assignments(args: argparse.Namespace) -> list[str]:
    """The ``--env`` items, checked to be NAME=VALUE with a shell-safe NAME."""
    for item in args.env:
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", item):
            raise LaunchError(f"--env {item!r}: expected NAME=VALUE, e.g. HF_HUB_OFFLINE=0")
    return list(args.env)


def shell_line(env: Sequence[str], command: Sequence[str]) -> str:
    """``export A=1 B=2 && cmd args`` (or just the command), quoted for a POSIX shell."""
    exports = f"export {' '.join(shlex.quote(e) for e in env)} && " if env else ""
    return exports + shlex.join(command)


class Runner:
    """Runs commands, or with ``dry_run`` prints each (``shlex.join``) on its own line instead."""

    def __init__(self, dry_run: bool):
        self.dry_run = dry_run

    def run(self, command: Sequence[str]) -> None:
        if self.dry_run:
            print(shlex.join(command), flush=True)
            return
        print(f"+ {shlex.join(command)}", file=sys.stderr, flush=True)
        subprocess.run(command, check=True)

    def stream(self, command: Sequence[str], on_line: Callable[[str], None]) -> None:
        """Runs ``command`` handing each line of its merged stdout/stderr to ``on_line``."""
        if self.dry_run:
            print(shlex.join(command), flush=True)
            return
        print(f"+ {shlex.join(command)}", file=sys.stderr, flush=True)
        with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1) as proc:
            for line in proc.stdout:
                on_line(line)
        if proc.returncode:
            raise subprocess.CalledProcessError(proc.returncode, command)


def main_guard(parser: argparse.ArgumentParser, main: Callable[[argparse.Namespace, Runner], None],
               argv: Sequence[str] | None = None) -> int:
    """Parses, runs ``main``; a :class:`LaunchError` becomes argparse's usage error (exit 2), a
    failed command its exit status."""
    args = parser.parse_args(argv)
    try:
        main(args, Runner(args.dry_run))
    except LaunchError as e:
        parser.error(str(e))
    except subprocess.CalledProcessError as e:
        print(f"command failed with exit status {e.returncode}: {shlex.join(e.cmd)}", file=sys.stderr)
        return e.returncode
    return 0
