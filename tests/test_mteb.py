"""MTEB through jaxalign: the adapter embeds as ``Embedder`` does, mteb's own STS evaluation of the
built-in STS set agrees with ``jaxalign.eval.sts``, ``jaxalign eval mteb`` runs a local task and
writes mteb's result files, and unknown, unreachable or uninstalled pieces fail in one line."""

import json
import sys

import numpy as np
import pytest

pytest.importorskip("mteb", reason="the mteb extra is not installed (pip install 'jaxalign[mteb]')")

import mteb  # noqa: E402
from datasets import Dataset  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from jaxalign.cli import main  # noqa: E402
from jaxalign.data.sts import load_sts  # noqa: E402
from jaxalign.eval import mteb as mteb_eval  # noqa: E402
from jaxalign.eval.sts import evaluate_task  # noqa: E402
from jaxalign.inference.embed import Embedder  # noqa: E402
from jaxalign.ops.pooling import PoolingConfig  # noqa: E402


@pytest.fixture(scope="module")
def embedder(minilm):
    return Embedder(minilm, batch_size=16)


@pytest.fixture(scope="module")
def sts_mini():
    (task,) = load_sts("builtin:sts-mini")
    return task


def adapter(embedder):
    return mteb_eval.MtebEncoder(embedder, mteb_eval.embedder_meta(embedder, "jaxalign/all-MiniLM-L6-v2"))


def test_adapter_embeds_as_embedder(embedder, sts_mini):
    sentences = sts_mini.subsets[0].sentences1
    calls = []

    def embed(texts):  # any list[str] -> [N, D] function will do
        calls.append(len(texts))
        return embedder(texts)

    model = mteb_eval.MtebEncoder(embed, mteb_eval.model_meta("jaxalign/any"))
    assert isinstance(model, mteb.EncoderProtocol)
    # mteb hands encoders a DataLoader of {"text": [...]} batches of a datasets.Dataset
    batches = DataLoader(Dataset.from_dict({"text": sentences}), batch_size=7)
    task = mteb_eval.local_sts_task(sts_mini)
    out = model.encode(batches, task_metadata=task.metadata, hf_split="test", hf_subset="default")
    assert calls == [len(sentences)] and out.dtype == np.float32
    np.testing.assert_array_equal(out, embedder(sentences))


def test_mteb_sts_equals_jaxalign_sts(embedder, sts_mini, tmp_path):
    task = mteb_eval.local_sts_task(sts_mini)
    (score,) = mteb_eval.evaluate(adapter(embedder), [task], mteb.ResultCache(tmp_path))
    ours = evaluate_task(embedder, sts_mini).all / 100
    assert score.task == "local-sts-mini" and score.metric == "cosine_spearman"
    assert score.value == pytest.approx(ours, abs=1e-6)
    assert not task.data_loaded  # evaluate frees what it loaded
    written = json.loads((tmp_path / "results" / "jaxalign__all-MiniLM-L6-v2" / "no_revision_available"
                          / "local-sts-mini.json").read_text())
    (subset,) = written["scores"]["test"]
    assert subset["cosine_spearman"] == pytest.approx(ours, abs=1e-6)  # files round to 6 decimals
    assert written["dataset_revision"] == task.metadata.revision


def test_settings_off_the_checkpoint_defaults_are_mteb_experiments(minilm):
    assert mteb_eval.embedder_meta(Embedder(minilm), "jaxalign/m").experiment_name is None
    changed = Embedder(minilm, PoolingConfig(mode="cls", normalize=True), max_length=64)
    meta = mteb_eval.embedder_meta(changed, "jaxalign/m", {"dtype": "bfloat16"})
    assert meta.experiment_kwargs == {"mode": "cls", "max_length": 64, "dtype": "bfloat16"}
    assert meta.max_tokens == 64 and meta.n_parameters == 22_713_216


def test_cli_runs_a_local_task(tmp_path, capsys):
    out, summary = tmp_path / "mteb", tmp_path / "scores.json"
    argv = ["eval", "mteb", "--tasks", "sts:builtin:sts-mini", "--output-dir", str(out), "--json", str(summary),
            "--batch-size", "16"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    scores = json.loads(summary.read_text())
    value = scores["tasks"]["local-sts-mini"]["value"]
    assert "local-sts-mini" in printed and f"{100 * value:.2f}" in printed
    assert scores["name"] == "jaxalign/all-MiniLM-L6-v2" and scores["mteb_version"] == mteb.__version__
    assert (out / "results" / "jaxalign__all-MiniLM-L6-v2" / "no_revision_available" / "local-sts-mini.json").is_file()


@pytest.fixture
def empty_caches(tmp_path, monkeypatch):
    """Hub and datasets caches with nothing in them, so a hub task is unreachable offline even on a
    machine that has its data cached."""
    import datasets
    import huggingface_hub

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "datasets")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))


@pytest.mark.parametrize(
    "task, messages",
    [
        ("STSBenchmar", ["mteb task 'STSBenchmar': not a task mteb", "Did you mean: 'STSBenchmark'?"]),
        ("STSBenchmark", ["mteb task 'STSBenchmark': its data (mteb/stsbenchmark-sts on the Hugging Face hub) is "
                          "not cached here and HF_HUB_OFFLINE=1 forbids downloading it", "run once with HF_HUB_OFFLINE=0"]),
        ("sts:/no/such/sts.csv", ["no such file or directory"]),
    ],
)
def test_cli_unusable_task_is_one_line(task, messages, empty_caches, capsys):
    assert main(["eval", "mteb", "--tasks", task]) == 2
    err = capsys.readouterr().err
    assert all(m in err for m in messages), err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_without_mteb_says_what_to_install(monkeypatch, capsys):
    import jaxalign.eval

    monkeypatch.setitem(sys.modules, "mteb", None)  # as if not installed
    monkeypatch.delitem(sys.modules, "jaxalign.eval.mteb")
    monkeypatch.delattr(jaxalign.eval, "mteb")
    assert main(["eval", "mteb", "--tasks", "STSBenchmark"]) == 2
    assert "pip install 'jaxalign[mteb]'" in capsys.readouterr().err
