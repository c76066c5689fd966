"""Metric sinks: JSON lines (always, when a log directory is set) and TensorBoard."""

from __future__ import annotations

import json
import os
from pathlib import Path


def _row_step(line: str) -> int | None:
    """The step of one metrics.jsonl row; ``None`` for a line that is not a row (e.g. cut short
    when a run was killed while writing it)."""
    try:
        row = json.loads(line)
    except json.JSONDecodeError:
        return None
    return row.get("step") if isinstance(row, dict) else None


class MetricsWriter:
    def __init__(self, directory: str | None, tensorboard: bool = True):
        self.path = None
        self.tb = None
        if directory is None:
            return
        root = Path(directory).expanduser()
        root.mkdir(parents=True, exist_ok=True)
        self.path = root / "metrics.jsonl"
        if tensorboard:
            from tensorboardX import SummaryWriter

            self.tb = SummaryWriter(str(root / "tensorboard"))

    def discard_from(self, step: int) -> None:
        """Drops the rows of ``step`` and later (and any broken line) from metrics.jsonl, so a
        resumed run that logs those steps again leaves one row per step (``0``: all rows, for a
        run started over). Rewritten through a temporary file: a kill midway loses nothing."""
        if self.path is None or not self.path.exists():
            return
        kept = [line for line in self.path.read_text().splitlines(keepends=True)
                if (row_step := _row_step(line)) is not None and row_step < step]
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

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
