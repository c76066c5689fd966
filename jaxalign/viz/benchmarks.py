"""Bar charts of the benchmark scripts' JSON results (``benchmarks/*.py --json``).

Every result names its benchmark (``"benchmark": "train_step"``); :data:`CHARTS` maps that
name to a function reading the numbers worth comparing out of it as :class:`Chart` s:
throughput per implementation for the side-by-side benchmarks (labelled with jaxalign's
ratio, as the scripts' tables), seconds per configuration for the others. Several files of
one benchmark (the same script under other settings) share the charts, a group of bars each.
"""

from __future__ import annotations

import dataclasses
import json
import textwrap
from collections.abc import Callable, Sequence
from pathlib import Path

from matplotlib.figure import Figure

from jaxalign.viz.figure import PANEL_PX, PlotError, labels_for, panel_grid, save

BAR_PX, GROUP_PX = 45, 40  # a panel's width per bar and per group, where that is wider than PANEL_PX
LEGEND_PX = 180  # and for its legend, beside it


@dataclasses.dataclass(frozen=True)
class Chart:
    """One panel of grouped bars. Attributes:
        title: what is measured.
        unit: the value axis' label.
        bars: group (a configuration; ``""``: the whole file) -> series (an implementation, a
            method) -> value.
        higher_is_better: throughput (True) or time (False).
        baseline: the series whose name starts with this is the one the other bars of its
            group are compared with (each labelled ``baseline / this`` in speed); None: no
            comparison.
        log_scale: a logarithmic value axis, for values orders of magnitude apart.
    """

    title: str
    unit: str
    bars: dict[str, dict[str, float]]
    higher_is_better: bool = True
    baseline: str | None = None
    log_scale: bool = False

    def ratio(self, group: str, series: str) -> float | None:
        """The baseline's speed over ``series``'s in ``group``; None for the baseline itself or
        a group without one."""
        values = self.bars[group]
        base = next((s for s in values if self.baseline and s.startswith(self.baseline)), None)
        if base is None or base == series:
            return None
        b, v = values[base], values[series]
        return b / v if self.higher_is_better else v / b


def _throughput(key: str, unit: str) -> Callable[[dict], list[Chart]]:
    """Charts of a side-by-side benchmark: ``implementations[name][key]`` per implementation."""

    def charts(result: dict) -> list[Chart]:
        impls = result["implementations"]
        return [Chart(f"{result['benchmark']}, {result['model']}", f"{unit} (higher is better)",
                      {"": {name: impl[key] for name, impl in impls.items()}}, baseline="jaxalign")]

    return charts


def _whitening_kernels(result: dict) -> list[Chart]:
    bars = {f"N={row['batch']} G={row['groups']}": {m: t["median_s"] * 1e3 for m, t in row["timings"].items()}
            for row in result["rows"]}
    return [Chart(f"whitening_kernels, D={result['dim']}", "median ms per call (lower is better)", bars,
                  higher_is_better=False, log_scale=True)]


def _input_pipeline(result: dict) -> list[Chart]:
    first = {data: {path: r["seconds"] for path, r in paths.items()} for data, paths in result["first_batch"].items()}
    host = {"": {path: r["median_fetch_s"] * 1e3 for path, r in result["host"].items()}}
    return [Chart("input_pipeline: time to the first batch", "seconds (lower is better)", first,
                  higher_is_better=False, log_scale=True),
            Chart("input_pipeline: host time per step", "median ms per batch fetch (lower is better)", host,
                  higher_is_better=False)]


def _attention(result: dict) -> list[Chart]:
    median = lambda times: float(sorted(times)[len(times) // 2])
    per_length = {f"T={row['length']}": {k: median(t) * 1e3 for k, t in row["times_s"].items()}
                  for row in result["rows"]}
    model = result["model"]
    step = {f"{model['layers']} layers, {model['batch']} x {model['length']}":
            {k: median(t) for k, t in model["times_s"].items()}}
    return [Chart("attention: forward + backward per kernel", "median ms per call (lower is better)", per_length,
                  higher_is_better=False, baseline="einsum", log_scale=True),
            Chart("attention: a decoder's loss gradient", "median seconds (lower is better)", step,
                  higher_is_better=False, baseline="einsum")]


CHARTS: dict[str, Callable[[dict], list[Chart]]] = {
    "attention": _attention,
    "encode_throughput": _throughput("sentences_per_s", "sentences/s"),
    "train_step": _throughput("examples_per_s", "examples/s"),
    "dpo_step": _throughput("tokens_per_s", "policy tokens/s"),
    "whitening_kernels": _whitening_kernels,
    "input_pipeline": _input_pipeline,
}


def read_charts(path: Path) -> tuple[str, list[Chart]]:
    """The benchmark a result file is of, and its charts."""
    if not path.is_file():
        raise PlotError(f"{path}: no such benchmark result file")
    try:
        result = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise PlotError(f"{path}: not JSON ({e})") from None
    name = result.get("benchmark") if isinstance(result, dict) else None
    if name not in CHARTS:
        what = f"a {name!r} result" if name else 'not a benchmark result (no "benchmark" field)'
        raise PlotError(f"{path}: {what}; charts are drawn for the results of benchmarks/"
                        f"{{{','.join(CHARTS)}}}.py")
    try:
        return name, CHARTS[name](result)
    except (KeyError, TypeError, AttributeError) as e:
        raise PlotError(f"{path}: not the format benchmarks/{name}.py writes ({type(e).__name__}: {e}); "
                        "rerun the script to write it anew") from None


def combine(per_file: Sequence[list[Chart]], labels: Sequence[str]) -> list[Chart]:
    """One benchmark's charts from several files: each file's groups named by its label (a
    whole-file group becomes the label itself; files with the same label share a group)."""
    combined = []
    for i, first in enumerate(per_file[0]):
        bars: dict[str, dict[str, float]] = {}
        for charts, label in zip(per_file, labels):
            for group, values in charts[i].bars.items():
                name = label if not group else (f"{label}: {group}" if len(per_file) > 1 else group)
                bars.setdefault(name, {}).update(values)
        title = " / ".join(dict.fromkeys(charts[i].title for charts in per_file))
        combined.append(dataclasses.replace(first, title=title, bars=bars))
    return combined


def _draw(ax, chart: Chart) -> None:
    groups = list(chart.bars)
    series = list(dict.fromkeys(s for values in chart.bars.values() for s in values))
    width = min(0.8 / len(series), 0.3)
    for i, name in enumerate(series):
        present = [j for j, g in enumerate(groups) if name in chart.bars[g]]
        xs = [j + (i - (len(series) - 1) / 2) * width for j in present]
        values = [chart.bars[groups[j]][name] for j in present]
        texts = [f"{v:.3g}" + (f"\n{r:.2f}x" if (r := chart.ratio(groups[j], name)) is not None else "")
                 for j, v in zip(present, values)]
        bars = ax.bar(xs, values, width, label=name, color=f"C{i % 10}")
        ax.bar_label(bars, labels=texts, fontsize="x-small")
    ax.set_xticks(range(len(groups)), [textwrap.fill(g, 22) for g in groups], fontsize="small")
    top = max(v for values in chart.bars.values() for v in values.values())
    if chart.log_scale:
        ax.set_yscale("log")
    ax.set_ylim(top=top * (4 if chart.log_scale else 1.2))  # room for the tallest bar's label
    compared = chart.baseline and any(chart.ratio(g, s) is not None for g in groups for s in chart.bars[g])
    ax.set_title(chart.title + (f"\n(bar labels: value and {chart.baseline} / this)" if compared else ""),
                 fontsize="medium")
    ax.set_ylabel(chart.unit)
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1, 1))  # beside: never over a bar
    ax.grid(axis="y", alpha=0.3)


def plot_benchmarks(
    paths: Sequence[str | Path],
    output: str | Path | None = None,
    *,
    labels: Sequence[str] | None = None,
    size: tuple[int, int] | None = None,
) -> Figure:
    """Draws one benchmark's result files (``benchmarks/results/*.json``) as bar charts.

    Args:
      paths: one or more results of the same benchmark script.
      output: write the figure here (PNG, or any format matplotlib knows by the suffix).
      labels: each file's group name (default: the file's name without .json); files given
        the same label share a group, e.g. the two sides of a benchmark run separately.
      size: (width, height) in pixels (default: 660 x 340 per chart, wider for many bars).

    Returns the figure: one axes per :class:`Chart`, one bar container per series.
    """
    files = [Path(p).expanduser() for p in paths]
    read = [read_charts(f) for f in files]
    names = {name for name, _ in read}
    if len(names) > 1:
        raise PlotError(f"results of different benchmarks ({', '.join(sorted(names))}): plot each benchmark separately")
    charts = combine([c for _, c in read], labels_for([f.with_suffix("") for f in files], labels, "files"))
    bars = max(sum(len(values) for values in chart.bars.values()) * BAR_PX + len(chart.bars) * GROUP_PX
               for chart in charts)
    fig, axes = panel_grid(len(charts), size, (max(PANEL_PX[0], bars) + LEGEND_PX, PANEL_PX[1]))
    for ax, chart in zip(axes, charts):
        _draw(ax, chart)
    if output is not None:
        save(fig, output)
    return fig
