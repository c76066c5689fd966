"""Stopping a run cleanly at a step boundary that every process shares.

TPU maintenance events, spot reclamation and schedulers (SLURM, Kubernetes) send SIGTERM and
allow a grace period; a user presses Ctrl-C. Either way the run should save a checkpoint and
exit 0, so that starting the same command again resumes it exactly.

* One process: SIGTERM and SIGINT set a flag that the loop reads after each step (a second
  Ctrl-C interrupts at once).
* Several processes: a signal reaches one of them, yet all must save at the *same* step, or
  their collectives would pair different programs. JAX's preemption service (part of
  ``jax.distributed``) catches SIGTERM on any process and lets every process agree on a sync
  point: :func:`jax.experimental.multihost_utils.reached_preemption_sync_point` returns True
  on all of them at the same step. SIGINT is forwarded to it as SIGTERM.
"""

from __future__ import annotations

import logging
import os
import signal
import threading

import jax
from jax.experimental import multihost_utils

log = logging.getLogger(__name__)


class StopRequests:
    """Watches for stop signals from :meth:`install` to :meth:`restore`; ``should_stop(step)``
    after each step says whether to save and exit there (the same answer on every process)."""

    def __init__(self):
        self.signal: str | None = None
        self._previous: dict[int, object] = {}

    @classmethod
    def install(cls) -> "StopRequests":
        self = cls()
        if threading.current_thread() is not threading.main_thread():
            return self  # Python signal handlers exist only in the main thread
        multi = jax.process_count() > 1
        for sig in (signal.SIGINT,) if multi else (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._forward if multi else self._record)
        return self

    def restore(self) -> None:
        """Puts the previous signal handlers back."""
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _record(self, signum, frame) -> None:
        if self.signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now, without the checkpoint
        self.signal = signal.Signals(signum).name
        log.warning("%s received: stopping after this step with a checkpoint (Ctrl-C again to abort)", self.signal)

    def _forward(self, signum, frame) -> None:
        self.signal = signal.Signals(signum).name
        log.warning("%s received: asking every process to stop at a common step", self.signal)
        os.kill(os.getpid(), signal.SIGTERM)  # JAX's preemption notifier owns SIGTERM

    def should_stop(self, step: int) -> bool:
        if jax.process_count() > 1:
            if multihost_utils.reached_preemption_sync_point(step):
                self.signal = self.signal or "preemption notice"
                return True
            return False
        return self.signal is not None
