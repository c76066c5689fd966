"""What every chart shares: its error, its grid of panels, the labels of its inputs and saving."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

DPI = 100
PANEL_PX = (480, 340)  # the default size of one panel
MAX_COLUMNS = 3


class PlotError(ValueError):
    """Input that cannot be drawn; the message names the file and the fix."""


def panel_grid(n: int, size: tuple[int, int] | None = None,
               panel_px: tuple[int, int] = PANEL_PX) -> tuple[Figure, list[Axes]]:
    """A figure of ``n`` panels, at most :data:`MAX_COLUMNS` a row, ``size`` (width, height)
    pixels when saved (default: ``panel_px`` per panel). Built on the Agg canvas directly, not
    through pyplot: nothing global is touched and nothing is kept after the caller drops it."""
    columns = min(n, MAX_COLUMNS)
    rows = math.ceil(n / columns)
    width, height = size or (columns * panel_px[0], rows * panel_px[1])
    if width < 100 or height < 100:
        raise PlotError(f"size {width}x{height}: give at least 100 pixels each way")
    fig = Figure(figsize=(width / DPI, height / DPI), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    axes = list(fig.subplots(rows, columns, squeeze=False).ravel())
    for spare in axes[n:]:
        spare.remove()
    return fig, axes[:n]


def labels_for(paths: Sequence[Path], labels: Sequence[str] | None, what: str) -> list[str]:
    """One legend label per input: ``labels`` as given, else each path's name (the whole path
    where two names would be the same). ``what`` names the inputs in the error."""
    if labels is not None:
        if len(labels) != len(paths):
            raise PlotError(f"{len(labels)} labels for {len(paths)} {what}: give one label per {what[:-1]}, "
                            "in the same order")
        return list(labels)
    names = [p.name for p in paths]
    return names if len(set(names)) == len(names) else [str(p) for p in paths]


def save(fig: Figure, output: str | Path) -> None:
    """Writes ``fig`` to ``output`` (format from its suffix, PNG by default) at the figure's size."""
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(output, dpi=DPI)
