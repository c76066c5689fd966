"""The benchmark suite (``python -m benchmarks``): its listing, a real run of a tiny selection to one
suite.json and its charts, a missing script skipped with a note, and every suite chart drawn from
a suite JSON with the numbers of its parts' results."""

import json
import subprocess
import sys
from pathlib import Path

import jax
import pytest

from jaxalign.viz import plot_benchmarks
from jaxalign.viz.benchmarks import suite_charts, suite_figures

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
sys.path.insert(0, str(REPO))
from benchmarks import suite

sys.path.insert(0, str(REPO / "benchmarks"))

TINY_VOCAB = "vocab_memory=--vocab 64 256 --length 8 --pairs 1 --hidden 8 --chunk 4"


def test_dry_run_lists_every_part_with_its_size_flags():
    done = subprocess.run([sys.executable, "-m", "benchmarks", "--quick", "--dry-run"], cwd=REPO, capture_output=True,
                          text=True, check=True)
    lines = done.stdout.splitlines()
    assert [Path(line.split()[0]).stem for line in lines] == suite.NAMES
    for part, line in zip(suite.PARTS, lines):
        assert " ".join(part.quick) in line and f"suite-quick/{part.name}.json" in line
        assert line.endswith("not in this checkout") != part.script.is_file()


def test_bad_selection_is_refused(capsys):
    with pytest.raises(SystemExit):
        suite.parse_args(["--quick", "--only", "dpo_step,nonsense"])
    assert "--only nonsense: no such part" in capsys.readouterr().err


def test_a_missing_script_is_skipped_with_a_note(tmp_path):
    args = suite.parse_args(["--quick", "--out", str(tmp_path)])
    record = suite.run_part(suite.Part("not_a_benchmark", ()), args)
    assert record["status"] == "skipped" and "not_a_benchmark.py is not in this checkout" in record["note"]


def test_a_tiny_run_writes_one_json_and_its_chart(tmp_path):
    assert suite.main(["--quick", "--only", "vocab_memory", "--out", str(tmp_path), "--extra", TINY_VOCAB]) == 0
    result = json.loads((tmp_path / "suite.json").read_text())
    assert result["benchmark"] == "suite" and result["git"]["commit"] and "jax" in result["versions"]
    part = result["parts"]["vocab_memory"]
    assert part["status"] == "ok" and part["result"] == json.loads((tmp_path / "vocab_memory.json").read_text())
    rows = part["result"]["rows"]
    assert [r["vocab"] for r in rows] == [64, 256]
    # The full logits grow with V faster than the chunked path's single chunk of them.
    assert rows[1]["full"]["peak_bytes"] > rows[1]["chunked"]["peak_bytes"]
    assert [f["peak_bytes"] for f in part["figures"]] == [rows[1][w]["peak_bytes"] for w in ("chunked", "full")]
    (png,) = tmp_path.glob("*.png")
    assert png.name == "dpo_loss_gradient_compiled_peak_memory.png" and png.stat().st_size > 1000


def synthetic_suite() -> dict:
    """A suite JSON from the committed results of the side-by-side and attention benchmarks, with
    compile-time, vocabulary and weak-scaling results in their scripts' formats."""
    read = lambda name: json.loads((RESULTS / f"{name}.json").read_text())
    parts = {name: {"status": "ok", "result": read(name)} for name in ("dpo_step", "train_step", "attention")}
    parts["compile_time"] = {"status": "ok", "result": {"benchmark": "compile_time", "results": {
        "10": {"trace_s": 2.0, "compile_s": 20.0, "total_s": 23.0}, "30": {"trace_s": 2.5, "compile_s": 24.0,
                                                                          "total_s": 28.0}}}}
    peak = lambda c, f: {"chunked": {"peak_bytes": c}, "full": {"peak_bytes": f}}
    parts["vocab_memory"] = {"status": "ok", "result": {
        "benchmark": "vocab_memory", "pairs": 4, "length": 512, "ways": ["chunked", "full"],
        "rows": [{"vocab": 8192, **peak(2**20, 2**24)}, {"vocab": 262144, **peak(2**25, 2**29)}]}}
    parts["weak_scaling"] = {"status": "ok", "result": {
        "benchmark": "weak_scaling", "simulated": True, "per_device": 4,
        "rows": [{"devices": n, "median_step_s": 0.5 * n ** 0.9} for n in (1, 2, 4, 8)]}}
    parts["packing"] = {"status": "skipped", "note": "not in this checkout"}
    return {"benchmark": "suite", "size": "quick", "parts": parts}


def test_every_suite_chart_is_drawn_from_the_suite_json(tmp_path):
    data = synthetic_suite()
    path = tmp_path / "suite.json"
    path.write_text(json.dumps(data))
    fig = plot_benchmarks([path], tmp_path / "suite.png")
    titles = [ax.get_title().split("\n")[0] for ax in fig.axes]
    assert [t.split(" (")[0].split(",")[0] for t in titles] == [
        "MFU per step kind", "throughput per step kind", "DPO step compile time against depth",
        "attention forward + backward", "DPO loss gradient: compiled peak memory", "weak scaling"]
    mfu, throughput, compile_time, attention, vocab, scaling = fig.axes
    dpo = data["parts"]["dpo_step"]["result"]["implementations"]
    assert [b.get_height() for b in mfu.containers[0]] == pytest.approx(
        [100 * dpo["jaxalign"]["mfu"], 100 * data["parts"]["train_step"]["result"]["implementations"]["jaxalign"]["mfu"]])
    assert throughput.containers[1].get_label() in ("trl", "pytorch")
    total = next(line for line in compile_time.lines if line.get_label() == "total")
    assert list(total.get_xdata()) == [10, 30] and list(total.get_ydata()) == [23.0, 28.0]
    att = data["parts"]["attention"]["result"]
    assert {line.get_label() for line in attention.lines} == set(att["kernels"])
    assert [line.get_label() for line in vocab.lines] == ["chunked", "full"]
    assert list(vocab.lines[1].get_ydata()) == [2**24 / 2**30, 2**29 / 2**30]
    measured, flat, shared = scaling.lines
    assert list(measured.get_xdata()) == [1, 2, 4, 8] and set(flat.get_ydata()) == {0.5}
    assert list(shared.get_ydata()) == [0.5, 1.0, 2.0, 4.0]
    assert len(suite_charts(data)) == 6


def test_figures_carry_the_flop_accounting():
    result = json.loads((RESULTS / "dpo_step.json").read_text())
    figures = {f["name"]: f for f in suite_figures("dpo_step", result)}
    jx = figures["jaxalign"]
    assert jx["value"] == result["implementations"]["jaxalign"]["tokens_per_s"]
    assert jx["flops_per_step"] == result["flops_per_step"]["total"] and "N_mm" in jx["flops_formula"]
    assert jx["mfu"] == pytest.approx(jx["flops_per_step"] / (result["implementations"]["jaxalign"]["median_step_s"]
                                                             * jx["peak_flops"]))


def test_gpu_script_parts_are_time_boxed_within_eight_minutes():
    done = subprocess.run(["bash", "benchmarks/gpu.sh", "--dry-run"], cwd=REPO, capture_output=True, text=True,
                          check=True)
    boxes = {line.split(",")[0].strip("["): int(line.split(", ")[1].split("s]")[0])
             for line in done.stdout.splitlines() if line.startswith("[") and "s] " in line}
    assert list(boxes) == ["setup", "attention", "dpo_precomputed", "dpo_model", "contrastive", "vocab_memory"]
    assert sum(boxes.values()) <= 8 * 60 - 20  # and some seconds for the table
    assert "--lengths 1024 2048 4096 8192 16384 --dtype bfloat16" in done.stdout
    assert "--reference precomputed" in done.stdout and "--reference model" in done.stdout
    assert not list(RESULTS.glob("gpu-*"))  # a dry run writes nothing


def test_gpu_steps_peak_and_bert_base_shape(tmp_path):
    import gpu_steps

    assert gpu_steps.chip_peak("NVIDIA H200") == gpu_steps.chip_peak("NVIDIA H100 80GB HBM3") == 989e12
    assert gpu_steps.chip_peak("cpu") is None
    from jaxalign.models.registry import load_encoder

    encoder = load_encoder(gpu_steps.random_bert(gpu_steps.TINY_BERT, tmp_path / "bert"))
    assert (encoder.config.hidden_size, encoder.config.num_hidden_layers) == (64, 2)
    h, i = 64, 128  # BERT's parameter count at that width: embeddings, 2 layers, pooler
    layer = 4 * (h * h + h) + (h * i + i) + (i * h + h) + 4 * h
    expected = (30522 + 512 + 2) * h + 2 * h + 2 * layer + h * h + h
    assert sum(x.size for x in jax.tree.leaves(encoder.params)) == expected
