"""Pictures of runs and benchmarks (jaxalign.viz, `jaxalign plot`) and W&B logging: a real tiny
training run logs to metrics.jsonl and an offline W&B run, and its curves are drawn from
metrics.jsonl beside a second run's."""

import json
import struct
import sys
from pathlib import Path

import pytest

from jaxalign.cli import main
from jaxalign.config import ConfigError, load_recipe
from jaxalign.config.run import TrainConfig
from jaxalign.training.metrics import MetricsWriter, read_metrics
from jaxalign.viz import PlotError, plot_benchmarks, plot_runs

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
TINY = ["model.num_layers=1", "steps=3", "log.every=1", "eval.every=3", "checkpoint.dir=null",
        "log.tensorboard=false"]


def tiny_config(log_dir: Path, *overrides: str) -> TrainConfig:
    return load_recipe(TrainConfig, str(REPO / "experiments" / "quickstart.yaml"),
                       [*TINY, f"log.dir={log_dir}", *overrides])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 3-step quickstart run (STS evaluated at steps 0 and 3) logging to metrics.jsonl and to
    an offline W&B run, with W&B's own files kept in the test's directory."""
    from jaxalign.training.trainer import train

    root = tmp_path_factory.mktemp("trained")
    with pytest.MonkeyPatch.context() as mp:
        for var, sub in (("WANDB_DIR", "wandb"), ("WANDB_CACHE_DIR", "cache"), ("WANDB_CONFIG_DIR", "config"),
                         ("WANDB_DATA_DIR", "data")):
            mp.setenv(var, str(root / sub))
        mp.setenv("WANDB_MODE", "offline")
        mp.setenv("WANDB_SILENT", "true")
        cfg = tiny_config(root / "quickstart", "log.wandb=true", "log.wandb_project=jaxalign-tests")
        summary = train(cfg, progress=False)
    return root / "quickstart", cfg, summary


def wandb_records(path: Path) -> list:
    """The records of a W&B run file (run-ID.wandb). wandb 0.31 ships no Python reader for it, so
    this reads its documented framing: a 7-byte header (":W&B", magic, version), then LevelDB's
    log format (32 KiB blocks of chunks: CRC-32C, length, type FULL/FIRST/MIDDLE/LAST), each
    record a serialised ``wandb_internal_pb2.Record``."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    records, pending, pos, block = [], b"", 7, 32768
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a chunk header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        pending += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL or LAST: a whole record
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def test_wandb_offline_run_holds_every_logged_row_and_the_config(trained):
    log_dir, cfg, summary = trained
    (run_file,) = (log_dir / "wandb").glob("offline-run-*/run-*.wandb")
    records = wandb_records(run_file)
    history: dict[int, dict] = {}
    for r in records:
        if r.WhichOneof("record_type") == "history":
            items = {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in r.history.item}
            history.setdefault(items.pop("_step"), {}).update(items)
    rows: dict[int, dict] = {}
    for row in read_metrics(log_dir / "metrics.jsonl"):
        rows.setdefault(row.pop("step"), {}).update(row)
    assert sorted(history) == sorted(rows) == [0, 1, 2, 3]
    for step, logged in rows.items():
        assert {k: history[step][k] for k in logged} == pytest.approx(logged, rel=1e-12), step
    assert {step: history[step]["loss"] for step in (1, 2, 3)} == pytest.approx(summary["losses"], rel=1e-12)
    (run,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    config = {item.key: json.loads(item.value_json) for item in run.config.update}
    assert run.display_name == "quickstart" and run.project == "jaxalign-tests"
    assert config["model"]["num_layers"] == 1 and config["steps"] == 3 and config["log"]["wandb"] is True


def test_wandb_missing_fails_before_loading_anything(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "wandb", None)  # as if not installed: find_spec and import see nothing
    argv = ["train", str(REPO / "experiments" / "quickstart.yaml"), *TINY, f"log.dir={tmp_path}", "log.wandb=true"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "pip install 'jaxalign[wandb]'" in err and "Traceback" not in err


def test_wandb_that_cannot_start_says_why(tmp_path, monkeypatch):
    for var in ("WANDB_API_KEY", "NETRC"):
        monkeypatch.delenv(var, raising=False)
    for var in ("HOME", "WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DIR"):
        monkeypatch.setenv(var, str(tmp_path))  # no login anywhere W&B looks for one
    with pytest.raises(ConfigError, match=r"log.wandb=true: W&B did not start: .*wandb login.*log.wandb_mode=offline"):
        MetricsWriter(None, wandb={"project": "jaxalign", "mode": "online"})


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def write_rows(directory: Path, rows: list[dict]) -> Path:
    writer = MetricsWriter(str(directory), tensorboard=False)
    for row in rows:
        writer.write(row["step"], {k: v for k, v in row.items() if k != "step"})
    writer.close()
    return directory


def curves(ax) -> dict[str, tuple[list, list]]:
    return {line.get_label(): (list(line.get_xdata()), list(line.get_ydata())) for line in ax.get_lines()}


def expected(rows: list[dict], key: str) -> tuple[list, list]:
    points = [(r["step"], r[key]) for r in rows if key in r]
    return [s for s, _ in points], [v for _, v in points]


def test_two_runs_overlaid_one_panel_per_group(trained, tmp_path):
    first = trained[0]
    rows = read_metrics(first / "metrics.jsonl")
    second = write_rows(tmp_path / "lr3e-5", [{k: v if k == "step" else 2 * v for k, v in r.items()} for r in rows])
    out = tmp_path / "figs" / "curves.png"
    fig = plot_runs([first, second], out, size=(1200, 800))
    assert png_size(out) == (1200, 800)
    titles = ["loss", "learning rate", "gradient norm", "eval: STS (Spearman x 100)"]
    assert [ax.get_title() for ax in fig.axes] == titles
    runs = {"quickstart": rows, "lr3e-5": read_metrics(second / "metrics.jsonl")}
    for ax, key in zip(fig.axes, ["loss", "lr", "grad_norm", "eval/sts"]):
        assert curves(ax) == {f"{name}: {key}": expected(r, key) for name, r in runs.items()}
    assert curves(fig.axes[3])["quickstart: eval/sts"][0] == [0, 3]
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["quickstart", "lr3e-5"]


def preference_rows(scale: float) -> list[dict]:
    """TRL-named rows as a preference run logs them: training every 2 steps, evaluation at 0 and 4."""
    rows = [{"step": 0, "eval/rewards/margins": 0.0, "eval/rewards/accuracies": 0.5}]
    for step in (2, 4):
        rows.append({"step": step, "loss": 0.69 - 0.1 * step * scale, "lr": 1e-6, "grad_norm": 3.0,
                     "rewards/margins": 0.1 * step * scale, "rewards/accuracies": 0.5 + 0.1 * step * scale,
                     "logps/chosen": -300.0 + step})
    rows.append({"step": 4, "eval/rewards/margins": 0.3 * scale, "eval/rewards/accuracies": 0.75})
    return rows


def test_preference_panels_pair_train_and_eval(tmp_path):
    a, b = preference_rows(1.0), preference_rows(0.5)
    dirs = [write_rows(tmp_path / "a", a), write_rows(tmp_path / "b", b)]
    fig = plot_runs(dirs, labels=["dpo", "ipo"])
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == ["loss", "learning rate", "gradient norm", "reward margin (chosen - rejected)", "reward accuracy"]
    margins = fig.axes[3]
    assert curves(margins) == {f"{run}: {key}": expected(rows, key) for run, rows in (("dpo", a), ("ipo", b))
                               for key in ("rewards/margins", "eval/rewards/margins")}
    styles = {line.get_label(): line.get_linestyle() for line in margins.get_lines()}
    assert styles["dpo: rewards/margins"] == "-" and styles["dpo: eval/rewards/margins"] == "--"
    assert [t.get_text() for t in margins.get_legend().get_texts()] == ["rewards/margins", "eval/rewards/margins"]

    chosen = plot_runs(dirs, metrics=["rewards/margins", "logps/chosen"])
    assert [ax.get_title() for ax in chosen.axes] == ["reward margin (chosen - rejected)", "logps/chosen"]
    assert set(curves(chosen.axes[0])) == {"a: rewards/margins", "b: rewards/margins"}
    assert curves(chosen.axes[1])["a: logps/chosen"] == expected(a, "logps/chosen")


def test_bad_runs_are_named_with_the_fix(tmp_path):
    with pytest.raises(PlotError, match="no such run directory"):
        plot_runs([tmp_path / "missing"])
    (tmp_path / "nolog").mkdir()
    with pytest.raises(PlotError, match=rf"{tmp_path / 'nolog'}: no metrics.jsonl here.*log.dir="):
        plot_runs([tmp_path / "nolog"])
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "metrics.jsonl").write_text('{"step": 1, "lo')  # a first row cut short by a kill
    with pytest.raises(PlotError, match="metrics.jsonl: no metrics rows yet"):
        plot_runs([tmp_path / "empty"])
    run = write_rows(tmp_path / "run", preference_rows(1.0))
    logged = ("eval/rewards/accuracies, eval/rewards/margins, grad_norm, logps/chosen, loss, lr, rewards/accuracies, "
              "rewards/margins")
    with pytest.raises(PlotError, match=f"'eval/sts' is in no run's metrics.jsonl; choose from: {logged}$"):
        plot_runs([run], metrics=["loss", "eval/sts"])
    with pytest.raises(PlotError, match="2 labels for 1 runs"):
        plot_runs([run], labels=["a", "b"])


def test_benchmark_throughput_per_configuration(tmp_path):
    files = [RESULTS / f"train_step{suffix}.json" for suffix in ("", "_omp_passive", "_threads1")]
    out = tmp_path / "train_step.png"
    fig = plot_benchmarks(files, out, size=(900, 500))
    assert png_size(out) == (900, 500)
    (ax,) = fig.axes
    results = [json.loads(f.read_text())["implementations"] for f in files]
    assert [t.get_text() for t in ax.get_xticklabels()] == [f.stem for f in files]
    for bars, side in zip(ax.containers, ("jaxalign", "pytorch")):
        assert bars.get_label() == side
        assert [b.get_height() for b in bars] == [r[side]["examples_per_s"] for r in results]
    pytorch_labels = [t.get_text() for t in ax.texts if "\n" in t.get_text()]
    assert [label.split("\n")[1] for label in pytorch_labels] == ["2.10x", "0.81x", "0.81x"]  # the README's ratios


def test_benchmark_sides_run_apart_share_a_group_by_label():
    files = [RESULTS / "dpo_step_full30_jaxalign.json", RESULTS / "dpo_step_full30_trl.json"]
    (ax,) = plot_benchmarks(files, labels=["30 layers", "30 layers"]).axes
    assert [t.get_text() for t in ax.get_xticklabels()] == ["30 layers"]
    assert [t.get_text() for t in ax.texts][1].endswith("1.18x")


@pytest.mark.parametrize("name", sorted(p.name for p in RESULTS.glob("*.json")
                                        if "benchmark" in json.loads(p.read_text())))
def test_every_benchmark_result_renders(name, tmp_path):
    fig = plot_benchmarks([RESULTS / name], tmp_path / "chart.png")
    assert png_size(tmp_path / "chart.png")[0] >= 480
    assert fig.axes and all(ax.containers or ax.lines for ax in fig.axes)


def test_bad_benchmark_results_are_named(tmp_path):
    with pytest.raises(PlotError, match=r'not a benchmark result \(no "benchmark" field\); charts are drawn for'):
        plot_benchmarks([RESULTS / "memory_plan_llama8b_v5p.json"])
    with pytest.raises(PlotError, match=r"different benchmarks \(encode_throughput, train_step\)"):
        plot_benchmarks([RESULTS / "train_step.json", RESULTS / "encode_throughput.json"])
    old = tmp_path / "old.json"
    old.write_text(json.dumps({"benchmark": "train_step", "model": "m", "implementations": {"jaxalign": {}}}))
    with pytest.raises(PlotError, match=r"not the format benchmarks/train_step.py writes \(KeyError: 'examples_per_s'"):
        plot_benchmarks([old])


def test_cli_plot(trained, tmp_path, capsys):
    second = write_rows(tmp_path / "second", read_metrics(trained[0] / "metrics.jsonl"))
    png = tmp_path / "plot.png"
    assert main(["plot", str(trained[0]), str(second), "--output", str(png)]) == 0
    assert png_size(png) == (1440, 680) and f"wrote {png}" in capsys.readouterr().out
    bench = tmp_path / "bench.png"
    assert main(["plot", "--benchmark", str(RESULTS / "encode_throughput.json"), "-o", str(bench),
                 "--size", "700", "400"]) == 0
    assert png_size(bench) == (700, 400)
    assert main(["plot", str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err
    assert "no such run directory" in err and "Traceback" not in err

