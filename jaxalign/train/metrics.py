"""Metric sinks: JSON lines (always, when a log directory is set) and TensorBoard."""

from __future__ import annotations

import json
from pathlib import Path


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
