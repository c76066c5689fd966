"""Metric sinks: JSON lines (always, when a log directory is set), TensorBoard and Weights & Biases.

The trainer makes one ``write(step, metrics)`` call per logged row; :class:`MetricsWriter`
hands it to every sink the run's ``log`` section asks for. ``wandb`` is imported only for a
run that asks for it (it is the optional extra ``jaxalign[wandb]``).
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

from jaxalign.config import ConfigError, to_dict
from jaxalign.config.run import TrainConfig

WANDB_MISSING = "log.wandb=true needs the wandb package: pip install 'jaxalign[wandb]' (or set log.wandb=false)"


def _row(line: str) -> dict | None:
    """One metrics.jsonl row; ``None`` for a line that is not a row (e.g. cut short when a run
    was killed while writing it)."""
    try:
        row = json.loads(line)
    except json.JSONDecodeError:
        return None
    return row if isinstance(row, dict) and "step" in row else None


def read_metrics(path: str | Path) -> list[dict]:
    """The rows of a metrics.jsonl file in the order they were written, without broken lines."""
    return [row for line in Path(path).read_text().splitlines() if (row := _row(line)) is not None]


def check_wandb_installed() -> None:
    """Fails before anything is loaded, rather than after, when W&B logging cannot start."""
    if importlib.util.find_spec("wandb") is None:
        raise ConfigError(WANDB_MISSING)


def wandb_init_args(cfg: TrainConfig) -> dict | None:
    """``wandb.init``'s arguments for a run (``None`` when ``log.wandb`` is off): the resolved
    config as the W&B config, the run named like its log directory (as ``jaxalign plot`` labels
    it) and W&B's files kept in that directory."""
    log = cfg.log
    if not log.wandb:
        return None
    name = log.wandb_name or (Path(log.dir).name if log.dir else None)
    args = {"project": log.wandb_project, "config": to_dict(cfg), "name": name, "mode": log.wandb_mode,
            "dir": str(Path(log.dir).expanduser()) if log.dir else None}
    return {k: v for k, v in args.items() if v is not None}  # None: W&B's own default (WANDB_* variables)


class WandbSink:
    """A Weights & Biases run fed the same rows, at the same steps, as metrics.jsonl."""

    def __init__(self, init_args: dict):
        try:
            import wandb
        except ImportError:
            raise ConfigError(WANDB_MISSING) from None
        try:
            self.run = wandb.init(**init_args)
        except wandb.errors.Error as e:  # e.g. online without `wandb login`
            raise ConfigError(f"log.wandb=true: W&B did not start: {e} "
                              "(log.wandb_mode=offline needs no account)") from None

    def write(self, step: int, metrics: dict[str, float]) -> None:
        self.run.log(metrics, step=step)

    def close(self) -> None:
        self.run.finish()


class MetricsWriter:
    """Writes each logged row to metrics.jsonl in ``directory`` (none: no files), TensorBoard
    events beside it and, given ``wandb.init`` arguments, a W&B run."""

    def __init__(self, directory: str | None, tensorboard: bool = True, wandb: dict | None = None):
        self.path = None
        self.tb = None
        if directory is not None:
            root = Path(directory).expanduser()
            root.mkdir(parents=True, exist_ok=True)
            self.path = root / "metrics.jsonl"
            if tensorboard:
                from tensorboardX import SummaryWriter

                self.tb = SummaryWriter(str(root / "tensorboard"))
        self.wandb = WandbSink(wandb) if wandb is not None else None

    @classmethod
    def for_run(cls, cfg: TrainConfig) -> "MetricsWriter":
        """The sinks ``cfg.log`` asks for."""
        return cls(cfg.log.dir, cfg.log.tensorboard, wandb_init_args(cfg))

    def discard_from(self, step: int) -> None:
        """Drops the rows of ``step`` and later (and any broken line) from metrics.jsonl, so a
        resumed run that logs those steps again leaves one row per step (``0``: all rows, for a
        run started over). Rewritten through a temporary file: a kill midway loses nothing."""
        if self.path is None or not self.path.exists():
            return
        kept = [line for line in self.path.read_text().splitlines(keepends=True)
                if (row := _row(line)) is not None and row["step"] < step]
        scratch = self.path.with_name(self.path.name + ".tmp")
        scratch.write_text("".join(kept))
        os.replace(scratch, self.path)

    def write(self, step: int, metrics: dict[str, float]) -> None:
        if self.path is not None:
            with self.path.open("a") as f:
                f.write(json.dumps({"step": step, **metrics}) + "\n")
        if self.tb is not None:
            for k, v in metrics.items():
                self.tb.add_scalar(k, v, step)
        if self.wandb is not None:
            self.wandb.write(step, metrics)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.close()
