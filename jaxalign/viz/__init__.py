"""Pictures of training runs and benchmark results, drawn with matplotlib's Agg renderer (no
display needed): :func:`plot_runs` for the curves in runs' metrics.jsonl, :func:`plot_benchmarks`
for the bar charts of ``benchmarks/results/*.json``. Both return the matplotlib ``Figure``
and write it to ``output`` when given; ``jaxalign plot`` is their command line."""

from jaxalign.viz.benchmarks import CHARTS, Chart, plot_benchmarks
from jaxalign.viz.figure import PlotError
from jaxalign.viz.runs import PANELS, Panel, plot_runs

__all__ = ["CHARTS", "PANELS", "Chart", "Panel", "PlotError", "plot_benchmarks", "plot_runs"]
