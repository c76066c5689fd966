"""Charts of the benchmark scripts' JSON results (``benchmarks/*.py --json``) and of the suite's.

Every result names its benchmark (``"benchmark": "train_step"``); :data:`CHARTS` maps that
name to a function reading the numbers worth comparing out of it as :class:`Chart` s:
throughput per implementation for the side-by-side benchmarks (labelled with jaxalign's
ratio, as the scripts' tables), seconds per configuration for the others, lines against a
size (vocabulary, devices) where the x axis is a quantity. Several files of one benchmark (the
same script under other settings) share the charts, a group of bars each. The suite's JSON
(``python -m benchmarks``) holds every part's result: :func:`suite_figures` reads each part's
headline figures, :func:`suite_charts` the suite's charts across parts.
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
        x_label: lines instead of bars: the groups are the x values (numbers), each series a
            line, and this names the x axis (logarithmic where the values span over 8x).
    """

    title: str
    unit: str
    bars: dict[str, dict[str, float]]
    higher_is_better: bool = True
    baseline: str | None = None
    log_scale: bool = False
    x_label: str | None = None

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


def _vocab_memory(result: dict) -> list[Chart]:
    bars = {str(row["vocab"]): {way: row[way]["peak_bytes"] / 2**30 for way in result["ways"] if row[way]}
            for row in result["rows"]}
    return [Chart(f"DPO loss gradient: compiled peak memory ({result['pairs']} pairs x 2 x {result['length']})",
                  "GiB (lower is better)", bars, higher_is_better=False, log_scale=True, x_label="vocabulary size V")]


def _compile_time(result: dict) -> list[Chart]:
    rows = result["results"]
    return [Chart("DPO step compile time against depth", "seconds (lower is better)",
                  {layers: {phase.removesuffix("_s"): r[phase] for phase in ("total_s", "compile_s", "trace_s")
                            if phase in r} for layers, r in rows.items()},
                  higher_is_better=False, x_label="layers")]


def _weak_scaling(result: dict) -> list[Chart]:
    rows = result["rows"]
    base = rows[0]["median_step_s"] if rows else 0.0
    # Simulated devices share the cores: N devices' work at one device's speed is N x its time.
    bars = {str(r["devices"]): {"measured": r["median_step_s"], "perfect weak scaling": base,
                                **({"work x N on shared cores": base * r["devices"]} if result["simulated"] else {})}
            for r in rows}
    where = "simulated host devices" if result["simulated"] else "devices"
    return [Chart(f"weak scaling, {result['per_device']} triplets per device ({where})", "median step s (flat is best)",
                  bars, higher_is_better=False, x_label="devices")]


def suite_figures(name: str, result: dict) -> list[dict]:
    """The headline figures of one part's result: ``name``, ``value`` and ``unit``, with
    ``mfu``, the FLOP accounting (``flops_per_step``, ``flops_formula``, ``peak_flops``) and
    ``peak_bytes`` (compiled peak memory) where the benchmark has them."""
    if name in THROUGHPUT:
        key, unit = THROUGHPUT[name]
        flops = result.get("flops_per_step") or {}
        peak = (result.get("matmul_peak") or {}).get("peak_gflops")
        memory = result.get("memory") or {}
        out = []
        for impl, r in result["implementations"].items():
            fig = {"name": impl, "value": r[key], "unit": unit}
            if "mfu" in r:
                fig.update(mfu=r["mfu"], flops_per_step=flops.get("total"), flops_formula=flops.get("formula"),
                           peak_flops=peak and peak * 1e9)
            step = memory.get(f"{impl.split()[0]}_step", {})
            if step.get("peak_bytes"):
                fig["peak_bytes"] = step["peak_bytes"]
            out.append(fig)
        return out
    charts = CHARTS[name](result) if name in CHARTS else []
    if name == "attention":  # the longest sequence
        group = list(charts[0].bars)[-1]
        return [{"name": f"{kernel}, {group}", "value": v, "unit": "ms fwd+bwd"} for kernel, v in
                charts[0].bars[group].items()]
    if name == "vocab_memory":
        row = result["rows"][-1]
        return [{"name": f"{way}, V={row['vocab']}", "value": row[way]["peak_bytes"] / 2**30, "unit": "GiB",
                 "peak_bytes": row[way]["peak_bytes"]} for way in result["ways"] if row[way]]
    if name == "weak_scaling":
        return [{"name": f"{r['devices']} devices", "value": r["median_step_s"], "unit": "s/step",
                 "peak_bytes": ((r.get("memory") or {}).get("step") or {}).get("peak_bytes")} for r in result["rows"]]
    if name == "compile_time":
        return [{"name": f"{layers} layers", "value": r["total_s"], "unit": "s compile"}
                for layers, r in result["results"].items()]
    if name == "packing":
        return [{"name": f"data.packing={mode}", "value": r["tokens_per_s"], "unit": "real tokens/s", "mfu": r["mfu"],
                 "flops_formula": result.get("flop_formula")} for mode, r in result["modes"].items()]
    return [{"name": f"{chart.title}: {group} {series}".replace(": ", " ", 1) if group else f"{series}",
             "value": v, "unit": chart.unit.split(" (")[0]}
            for chart in charts[:1] for group, values in chart.bars.items() for series, v in values.items()]


THROUGHPUT = {"dpo_step": ("tokens_per_s", "policy tokens/s"), "train_step": ("examples_per_s", "examples/s"),
              "encode_throughput": ("sentences_per_s", "sentences/s")}


def suite_charts(suite: dict) -> list[Chart]:
    """The suite's charts from its parts' results, each where its part ran: throughput and MFU
    per step kind, compile time against depth, attention tokens/s against sequence length per
    kernel, peak memory against vocabulary size (chunked vs full log-probs), weak scaling."""
    results = {name: part["result"] for name, part in suite["parts"].items() if "result" in part}
    charts = []
    steps = {name: r for name, r in results.items() if name in THROUGHPUT}
    mfu = {name: {impl: 100 * x["mfu"] for impl, x in r["implementations"].items() if x.get("mfu") is not None}
           for name, r in steps.items()}
    if any(mfu.values()):
        charts.append(Chart("MFU per step kind (against the measured matmul peak)", "% of peak (higher is better)",
                            {k: v for k, v in mfu.items() if v}, baseline="jaxalign"))
    if steps:
        charts.append(Chart("throughput per step kind", "per second (higher is better)",
                            {f"{name} ({THROUGHPUT[name][1]})": {impl: x[THROUGHPUT[name][0]]
                                                                 for impl, x in r["implementations"].items()}
                             for name, r in steps.items()}, baseline="jaxalign", log_scale=True))
    if "compile_time" in results:
        charts += _compile_time(results["compile_time"])
    if "attention" in results:
        att = results["attention"]
        batch = att["args"]["batch"]
        median = lambda t: float(sorted(t)[len(t) // 2])
        charts.append(Chart(f"attention forward + backward ({att['args']['dtype']})", "tokens/s (higher is better)",
                            {str(row["length"]): {k: batch * row["length"] / median(t) for k, t in row["times_s"].items()}
                             for row in att["rows"]}, log_scale=True, x_label="sequence length"))
    if "vocab_memory" in results:
        charts += _vocab_memory(results["vocab_memory"])
    if "weak_scaling" in results and results["weak_scaling"]["rows"]:
        charts += _weak_scaling(results["weak_scaling"])
    return charts


def _suite(suite: dict) -> list[Chart]:
    charts = suite_charts(suite)
    if not charts:
        raise KeyError("no part of this suite run wrote a result")
    return charts


CHARTS: dict[str, Callable[[dict], list[Chart]]] = {
    "attention": _attention,
    "encode_throughput": _throughput("sentences_per_s", "sentences/s"),
    "train_step": _throughput("examples_per_s", "examples/s"),
    "dpo_step": _throughput("tokens_per_s", "policy tokens/s"),
    "whitening_kernels": _whitening_kernels,
    "input_pipeline": _input_pipeline,
    "vocab_memory": _vocab_memory,
    "weak_scaling": _weak_scaling,
    "compile_time": _compile_time,
    "suite": _suite,
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


def _draw_lines(ax, chart: Chart) -> None:
    xs = {group: float(group) for group in chart.bars}
    series = list(dict.fromkeys(s for values in chart.bars.values() for s in values))
    for i, name in enumerate(series):
        points = sorted((xs[g], values[name]) for g, values in chart.bars.items() if name in values)
        ax.plot(*zip(*points), marker="o", label=name, color=f"C{i % 10}")
    if max(xs.values()) > 8 * min(xs.values()) > 0:
        ax.set_xscale("log", base=2)
    ax.set_xticks(sorted(xs.values()), [g for g, _ in sorted(xs.items(), key=lambda kv: kv[1])], fontsize="small")
    if chart.log_scale:
        ax.set_yscale("log")
    ax.set_title(chart.title, fontsize="medium")
    ax.set_xlabel(chart.x_label)
    ax.set_ylabel(chart.unit)
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1, 1))
    ax.grid(alpha=0.3)


def _draw(ax, chart: Chart) -> None:
    if chart.x_label is not None:
        return _draw_lines(ax, chart)
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
    return _figure(charts, output, size)


def _figure(charts: Sequence[Chart], output: str | Path | None, size: tuple[int, int] | None) -> Figure:
    bars = max(sum(len(values) for values in chart.bars.values()) * BAR_PX + len(chart.bars) * GROUP_PX
               for chart in charts)
    fig, axes = panel_grid(len(charts), size, (max(PANEL_PX[0], bars) + LEGEND_PX, PANEL_PX[1]))
    for ax, chart in zip(axes, charts):
        _draw(ax, chart)
    if output is not None:
        save(fig, output)
    return fig


def draw_charts(charts: Sequence[Chart], directory: str | Path) -> list[Path]:
    """Each chart as its own PNG in ``directory``, named after its title; returns the paths."""
    paths = []
    for chart in charts:
        slug = "".join(c if c.isalnum() else "_" for c in chart.title.split(" (")[0].lower()).strip("_")
        path = Path(directory) / f"{'_'.join(filter(None, slug.split('_')))}.png"
        _figure([chart], path, None)
        paths.append(path)
    return paths
