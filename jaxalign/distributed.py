"""Joining a multi-process run and keeping its processes in step.

A pod or GPU cluster runs one jaxalign process per host, all executing the same program over
one global mesh. They meet through ``jax.distributed``:

* :func:`initialize` joins the run from ``JAX_COORDINATOR_ADDRESS`` + ``JAX_NUM_PROCESSES`` +
  ``JAX_PROCESS_ID`` (or the same three as command-line flags), or from the cluster JAX
  detects itself (TPU VM slices, SLURM, Open MPI, Kubernetes) when none is given. jax 0.10's
  own ``jax.distributed.initialize()`` reads only the address from the environment, so the
  count and index are read here and passed on.
* :func:`agree` checks that every process holds the same value (the resolved config, a batch's
  shapes) through the coordinator's key-value store, and fails naming the processes and their
  values instead of letting them run different programs whose collectives exchange garbage.
* :func:`is_main` decides who draws progress bars, prints summaries and writes files;
  :func:`configure_logging` prefixes every process's log lines with its index.

Everything is a no-op in a single-process run.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import sys
import time

import jax

log = logging.getLogger(__name__)

ENV = {"coordinator": "JAX_COORDINATOR_ADDRESS", "num_processes": "JAX_NUM_PROCESSES",
       "process_id": "JAX_PROCESS_ID"}
FLAGS = {"coordinator": "--coordinator", "num_processes": "--num-processes", "process_id": "--process-id"}


class DistributedError(RuntimeError):
    """Processes of one run that cannot join, or that disagree on what they run."""


@dataclasses.dataclass(frozen=True)
class LaunchConfig:
    """How this process joins a run. Attributes:
        coordinator: ``host:port`` of process 0's coordinator service.
        num_processes: processes in the run (one per host, usually).
        process_id: this process's index, ``0 .. num_processes - 1``.
        init_timeout: seconds to wait for every process to join.
        heartbeat_timeout: seconds after which a silent (dead) process makes the others fail.
    """

    coordinator: str | None = None
    num_processes: int | None = None
    process_id: int | None = None
    init_timeout: int = 300
    heartbeat_timeout: int = 100

    @classmethod
    def from_env(cls, **flags) -> "LaunchConfig":
        """Flags given (not ``None``) override the environment variables of :data:`ENV`."""
        values = {}
        for field, var in ENV.items():
            value = flags.get(field)
            if value is None and os.environ.get(var, "").strip():
                value = os.environ[var].strip()
                if field != "coordinator":
                    try:
                        value = int(value)
                    except ValueError:
                        raise DistributedError(f"{var}={value!r}: expected an integer") from None
            values[field] = value
        timeouts = {k: v for k, v in flags.items() if k in ("init_timeout", "heartbeat_timeout") and v is not None}
        return cls(**values, **timeouts)

    @property
    def explicit(self) -> bool:
        """Whether any of the three was given (then all three must be)."""
        return any(getattr(self, f) is not None for f in ENV)

    def validate(self) -> None:
        if self.explicit:
            missing = [f for f in ENV if getattr(self, f) is None]
            if missing:
                given = ", ".join(f"{ENV[f]}" for f in ENV if f not in missing)
                raise DistributedError(
                    f"a multi-process run needs all of {', '.join(ENV.values())}; {given} is set but "
                    + " and ".join(f"{ENV[f]} (or {FLAGS[f]})" for f in missing)
                    + (" is not" if len(missing) == 1 else " are not"))
            if self.num_processes < 1 or not 0 <= self.process_id < self.num_processes:
                raise DistributedError(f"{ENV['process_id']}={self.process_id} with {ENV['num_processes']}="
                                       f"{self.num_processes}: the index must be in 0..{self.num_processes - 1}")
        if self.init_timeout < 1 or self.heartbeat_timeout < 1:
            raise DistributedError("distributed timeouts must be >= 1 second")


def detected_cluster() -> str | None:
    """The cluster environment JAX would initialise from by itself (TPU VM slice, SLURM, Open
    MPI, Kubernetes), or ``None``."""
    try:
        from jax._src.clusters import ClusterEnv
    except ImportError:  # a jax without cluster detection: explicit variables only
        return None
    for env in ClusterEnv._cluster_types:
        if env.opt_in_only_method:
            continue
        if env.is_env_present():
            return env.__name__
    if "," in os.environ.get("TPU_WORKER_HOSTNAMES", ""):
        return "TpuSlice"
    return None


def initialize(launch: LaunchConfig | None = None) -> None:
    """Joins the multi-process run described by ``launch`` (default: the environment) or the
    detected cluster; a no-op for a single process or when already joined."""
    global _heartbeat_s
    launch = launch or LaunchConfig.from_env()
    launch.validate()
    if jax.distributed.is_initialized():
        return
    _heartbeat_s = launch.heartbeat_timeout
    timeouts = dict(initialization_timeout=launch.init_timeout, heartbeat_timeout_seconds=launch.heartbeat_timeout)
    if launch.explicit:
        if launch.num_processes == 1:
            return
        where = launch.coordinator
        args = dict(coordinator_address=launch.coordinator, num_processes=launch.num_processes,
                    process_id=launch.process_id)
    elif (where := detected_cluster()) is not None:
        args = {}
    else:
        return
    if launch.explicit and launch.process_id != 0:
        wait_for_coordinator(launch.coordinator, launch.init_timeout)
    try:
        jax.distributed.initialize(**args, **timeouts)
    except Exception as e:  # jaxlib raises its own runtime errors; the address and the fix matter
        raise DistributedError(
            f"could not join the multi-process run ({where}) within {launch.init_timeout} s: {e}".strip()
            + f"; check that every process was started and that {where} is reachable") from e


def wait_for_coordinator(address: str, timeout_s: float) -> None:
    """Waits until process 0's coordinator accepts connections at ``host:port``. jaxlib aborts
    the whole process when it cannot register in time, so a coordinator that never answers is
    caught here, with its address, while an error can still be raised."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise DistributedError(f"{ENV['coordinator']}={address!r}: expected HOST:PORT")
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            socket.create_connection((host.strip("[]"), int(port)), timeout=2).close()
            return
        except OSError as e:
            if time.monotonic() >= deadline:
                raise DistributedError(
                    f"the coordinator {address} did not answer within {timeout_s:.0f} s ({e.strerror or e}); start "
                    f"process 0 with the same {ENV['coordinator']}, check the address and that the port is open, "
                    "or raise --init-timeout") from None
            time.sleep(0.5)


def is_main() -> bool:
    """The process that draws progress, prints summaries and writes run files."""
    return jax.process_index() == 0


def process_prefix() -> str:
    """``"[process i/n] "`` in a joined multi-process run, else empty."""
    if not jax.distributed.is_initialized() or jax.process_count() == 1:
        return ""
    return f"[process {jax.process_index()}/{jax.process_count()}] "


def configure_logging(level: int) -> None:
    """Log lines as ``LEVEL name: message``, prefixed with :func:`process_prefix` (every
    process logs its warnings and errors)."""
    logging.basicConfig(level=level, format=f"{process_prefix()}%(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr, force=True)


_rounds: dict[str, int] = {}
_heartbeat_s = LaunchConfig.heartbeat_timeout


def gather(name: str, value: str, *, timeout_s: float | None = None) -> list[str]:
    """Every process's ``value`` for this round of ``name``, by process index, exchanged through
    the coordinator's key-value store (no device collective: a process that never arrives is
    named after ``timeout_s``, default the heartbeat timeout, instead of hanging the others).
    Rounds of one ``name`` pair up in order: every process must make them in the same order."""
    if jax.process_count() == 1:
        return [value]
    from jax._src.distributed import global_state

    client = global_state.client
    n = _rounds[name] = _rounds.get(name, -1) + 1
    me = jax.process_index()
    client.key_value_set(f"jaxalign/{name}/{n}/{me}", value)
    timeout_ms = int(1000 * (timeout_s or _heartbeat_s))
    values = []
    for other in range(jax.process_count()):
        if other == me:
            values.append(value)
            continue
        try:
            values.append(client.blocking_key_value_get(f"jaxalign/{name}/{n}/{other}", timeout_ms))
        except Exception:  # the coordinator's deadline error: the other process never got here
            raise DistributedError(
                f"{name}: process {other} did not report within {timeout_ms / 1000:.0f} s (process {me} has "
                f"{value}); it is running a different program or has stopped") from None
    return values


def agree(name: str, value: str, *, timeout_s: float | None = None, describe=None) -> None:
    """Raises :class:`DistributedError` unless every process calls ``agree(name, value)`` with
    the same ``value`` (see :func:`gather`); the message names the first process that differs
    from this one and both values (``describe(mine, theirs)`` may shorten two long values)."""
    values = gather(name, value, timeout_s=timeout_s)
    me = jax.process_index()
    for other, theirs in enumerate(values):
        if theirs != value:
            detail = describe(value, theirs) if describe else f"process {me} has {value}, process {other} has {theirs}"
            raise DistributedError(f"processes {me} and {other} disagree on {name}: {detail}")
