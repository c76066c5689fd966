"""Training curves of runs, from the metrics.jsonl each run writes to its ``log.dir``.

One panel per metric group (:data:`PANELS`: loss, learning rate, gradient norm, STS and, for
preference runs, TRL's reward margins and accuracies and the over-optimisation indicators of
Shi et al., arXiv 2410.11677: top-k entropy and mass), drawn only where some run logged it;
one colour per run; a training metric solid, its held-out ``eval/`` twin dashed with markers
in the same panel, so that over- or under-fitting shows at a glance; an indicator on the
policy's own samples (``eval/samples/``) dotted.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from jaxalign.training.metrics import read_metrics
from jaxalign.viz.figure import PlotError, labels_for, panel_grid, save


@dataclasses.dataclass(frozen=True)
class Panel:
    """One axes of the figure: its title and the metrics.jsonl keys drawn in it."""

    title: str
    keys: tuple[str, ...]


PANELS = (
    Panel("loss", ("loss",)),
    Panel("learning rate", ("lr",)),
    Panel("gradient norm", ("grad_norm",)),
    Panel("eval: STS (Spearman x 100)", ("eval/sts",)),
    Panel("reward margin (chosen - rejected)", ("rewards/margins", "eval/rewards/margins")),
    Panel("reward accuracy", ("rewards/accuracies", "eval/rewards/accuracies")),
    Panel("eval: top-k entropy (bits)", ("eval/topk/entropy", "eval/samples/topk/entropy")),
    Panel("eval: top-k mass", ("eval/topk/mass", "eval/samples/topk/mass")),
)


@dataclasses.dataclass(frozen=True)
class Run:
    """A run's label and its metrics.jsonl rows."""

    label: str
    rows: list[dict]

    def series(self, key: str) -> tuple[list[int], list[float]]:
        """The steps that logged ``key`` and its values there, in step order (the last row of a
        step wins)."""
        by_step = {row["step"]: row[key] for row in self.rows if _is_number(row.get(key))}
        steps = sorted(by_step)
        return steps, [by_step[s] for s in steps]


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _metrics_file(path: Path) -> Path:
    """A run directory's metrics.jsonl (or the file itself, when given)."""
    if path.is_file():
        return path
    if not path.is_dir():
        raise PlotError(f"{path}: no such run directory (expected a run's log.dir, holding metrics.jsonl)")
    file = path / "metrics.jsonl"
    if not file.is_file():
        raise PlotError(f"{path}: no metrics.jsonl here; runs write it to their log.dir, so train with "
                        f"log.dir={path} (log.dir=null writes no metrics)")
    return file


def load_runs(run_dirs: Sequence[str | Path], labels: Sequence[str] | None = None) -> list[Run]:
    """Each run's rows, labelled by ``labels`` or by its directory's name."""
    files = [_metrics_file(Path(d).expanduser()) for d in run_dirs]
    names = labels_for([f.parent for f in files], labels, "runs")
    runs = []
    for file, name in zip(files, names):
        rows = read_metrics(file)
        if not rows:
            raise PlotError(f"{file}: no metrics rows yet; a run writes its first after log.every steps "
                            "(or its step-0 evaluation, with eval.data), so it stopped or is still starting")
        runs.append(Run(name, rows))
    return runs


def available_metrics(runs: Sequence[Run]) -> list[str]:
    """Every numeric key any run logged, sorted."""
    return sorted({k for run in runs for row in run.rows for k, v in row.items() if k != "step" and _is_number(v)})


def choose_panels(available: Sequence[str], metrics: Sequence[str] | None = None) -> list[Panel]:
    """The default panels, each keeping the keys in ``available``; or, given ``metrics``, the
    panels of those keys in the order asked (a key in a default panel joins it, any other key
    gets a panel of its own)."""
    if metrics is None:
        panels = [Panel(p.title, tuple(k for k in p.keys if k in available)) for p in PANELS]
        panels = [p for p in panels if p.keys]
        if not panels:
            defaults = ", ".join(k for p in PANELS for k in p.keys)
            raise PlotError(f"no run logged any of the default metrics ({defaults}); "
                            f"pick some with --metrics from: {', '.join(available)}")
        return panels
    unknown = [k for k in metrics if k not in available]
    if unknown:
        raise PlotError(f"metric {', '.join(map(repr, unknown))} is in no run's metrics.jsonl; "
                        f"choose from: {', '.join(available)}")
    chosen: dict[str, list[str]] = {}
    for key in dict.fromkeys(metrics):
        home = next((p for p in PANELS if key in p.keys), Panel(key, (key,)))
        chosen.setdefault(home.title, []).append(key)
    return [Panel(title, tuple(keys)) for title, keys in chosen.items()]


def _style(key: str, points: int) -> dict:
    """Held-out metrics dashed with markers (they have few points), those of samples dotted; a
    lone point gets a marker."""
    if key.startswith("eval/samples/"):
        return {"linestyle": ":", "marker": "o", "markersize": 3}
    if key.startswith("eval/"):
        return {"linestyle": "--", "marker": "o", "markersize": 3}
    return {"linestyle": "-", "marker": "o" if points == 1 else None, "markersize": 3}


def plot_runs(
    run_dirs: Sequence[str | Path],
    output: str | Path | None = None,
    metrics: Sequence[str] | None = None,
    *,
    labels: Sequence[str] | None = None,
    size: tuple[int, int] | None = None,
) -> Figure:
    """Draws the runs in ``run_dirs`` (their log.dir, or its metrics.jsonl) over each other.

    Args:
      run_dirs: one or more runs.
      output: write the figure here (PNG, or any format matplotlib knows by the suffix).
      metrics: metrics.jsonl keys to draw instead of the default :data:`PANELS`.
      labels: the runs' legend labels (default: their directories' names).
      size: (width, height) in pixels (default: 480 x 340 per panel).

    Returns the figure: one axes per panel, one line per run and metric, labelled
    ``"{run}: {key}"``, whose data are the logged steps and values.
    """
    runs = load_runs(run_dirs, labels)
    panels = choose_panels(available_metrics(runs), metrics)
    fig, axes = panel_grid(len(panels), size)
    colours = [f"C{i % 10}" for i in range(len(runs))]
    for ax, panel in zip(axes, panels):
        for run, colour in zip(runs, colours):
            for key in panel.keys:
                steps, values = run.series(key)
                if steps:
                    ax.plot(steps, values, color=colour, label=f"{run.label}: {key}", **_style(key, len(steps)))
        ax.set_title(panel.title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if len(panel.keys) > 1:
            ax.legend(handles=[Line2D([], [], color="0.35", label=k, **_style(k, 2)) for k in panel.keys],
                      fontsize="small")
    fig.legend(handles=[Line2D([], [], color=c, label=run.label) for run, c in zip(runs, colours)],
               loc="outside upper center", ncols=min(len(runs), 5), frameon=False)
    if output is not None:
        save(fig, output)
    return fig
