"""Checks of a run's output directories, made before any model is loaded.

A directory that cannot be written, or a checkpoint directory the run must not use as asked,
would otherwise fail with a traceback minutes later (after loading and compiling); here it
fails at once, naming the field and the fix.
"""

from __future__ import annotations

import uuid

from jaxalign.config import ConfigError
from jaxalign.config.run import TrainConfig, checkpoint_path
from jaxalign.training.checkpoint import check_directory
from jaxalign.training.metrics import check_wandb_installed


def check_writable_dir(path: str, field: str) -> None:
    """Creates directory ``path`` (local or ``gs://...``) if needed, as the run would, and writes
    and removes a scratch file in it; any failure is one ``ConfigError`` naming ``field``."""
    where = checkpoint_path(path)
    if where.exists() and not where.is_dir():
        raise ConfigError(f"{field}={path}: is a file, not a directory; choose a directory")
    try:
        where.mkdir(parents=True, exist_ok=True)
        probe = where / f".jaxalign-write-check-{uuid.uuid4().hex}"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise ConfigError(f"{field}={path}: cannot write there ({e.strerror or e}); "
                          "choose a writable directory") from None


def check_run_dirs(cfg: TrainConfig) -> None:
    """``log.dir`` and ``checkpoint.dir`` are writable directories, and ``checkpoint.dir`` holds
    nothing this run would destroy or wrongly continue (:func:`check_directory`); wandb is
    installed if ``log.wandb`` asks for it."""
    if cfg.log.dir:
        check_writable_dir(cfg.log.dir, "log.dir")
    if cfg.log.wandb:
        check_wandb_installed()
    if cfg.checkpoint.dir:
        check_writable_dir(cfg.checkpoint.dir, "checkpoint.dir")
        check_directory(cfg.checkpoint, cfg.steps)
