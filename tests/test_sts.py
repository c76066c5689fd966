"""STS readers for every supported layout, their error messages, and the evaluator's aggregates."""

import json

import numpy as np
import pytest
from scipy.stats import spearmanr

from conftest import shared_file
from jaxalign.data.errors import DataFormatError
from jaxalign.data.sts import StsSubset, StsTask, from_rows, load_sts
from jaxalign.eval.sts import evaluate_task


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_stsb_extra_trailing_fields(tmp_path):
    f = write(tmp_path / "sts-test.csv", "g\tf\t2012\t1\t2.5\tA b.\tC d.\textra\tmore\ng\tf\t2012\t2\t4\tE.\tF.\n")
    (task,) = load_sts(f)
    assert task.name == "STSBenchmark"
    assert task.subsets[0].sentences2 == ["C d.", "F."] and task.subsets[0].scores.tolist() == [2.5, 4.0]


def test_senteval_directory_with_blank_gold_and_sts16(tmp_path):
    d = tmp_path / "STS16-en-test"
    write(d / "STS2016.input.headlines.txt", "a\tb\nc\td\ne\tf\n")
    write(d / "STS2016.gs.headlines.txt", "1\n\n3\n")
    write(d / "STS2016.input.plagiarism.txt", "g\th\ni\tj\n")
    write(d / "STS2016.gs.plagiarism.txt", "0\n5\n")
    (task,) = load_sts(tmp_path)
    assert task.name == "STS16"
    sizes = {s.name: len(s) for s in task.subsets}
    assert sizes == {"headlines": 2, "plagiarism": 2}
    assert task.subsets[0].sentences1 == ["a", "e"]


def test_sick_and_directory_discovery(tmp_path):
    write(tmp_path / "SICK" / "SICK_test_annotated.txt",
          "pair_ID\tsentence_A\tsentence_B\trelatedness_score\tentailment_judgment\n1\tA\tB\t4.5\tENTAILMENT\n")
    write(tmp_path / "stsb" / "sts-test.csv", "g\tf\t2012\t1\t2.5\tA\tB\n")
    names = sorted(t.name for t in load_sts(tmp_path))
    assert names == ["SICK-R", "STSBenchmark"]


@pytest.mark.parametrize(
    "name, text, message",
    [
        ("sts-test.csv", "g\tf\t2012\t1\t2.5\tA\tB\ng\tf\t2012\t1\t2.5\tA only\n", r"sts-test.csv:2: expected at least 7 tab-separated fields"),
        ("sts-test.csv", "g\tf\t2012\t1\thigh\tA\tB\n", r"sts-test.csv:1: score 'high' is not a number"),
        ("data.json", "{}", "unknown STS format"),
    ],
)
def test_bad_files_name_file_and_line(tmp_path, name, text, message):
    with pytest.raises(DataFormatError, match=message):
        load_sts(write(tmp_path / name, text))


def test_misaligned_senteval_counts(tmp_path):
    write(tmp_path / "STS.input.x.txt", "a\tb\nc\td\n")
    write(tmp_path / "STS.gs.x.txt", "1\n")
    with pytest.raises(DataFormatError, match="2 sentence-pair lines but STS.gs.x.txt has 1 score lines"):
        load_sts(tmp_path)
    with pytest.raises(DataFormatError, match="no such file or directory"):
        load_sts(tmp_path / "missing")
    with pytest.raises(DataFormatError, match="unknown built-in"):
        load_sts("builtin:nope")


def test_hf_dataset_columns():
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_dict({"sentence1": ["a", "b"], "sentence2": ["c", "d"], "score": [0.1, 0.9]})
    task = from_rows(ds, "stsb-test")
    assert task.subsets[0].scores.tolist() == [0.1, 0.9]
    with pytest.raises(DataFormatError, match="lacks columns"):
        from_rows(ds.remove_columns("score"), "x")


def test_aggregates_all_wmean_mean():
    rng = np.random.default_rng(0)
    vocab = [f"s{i}" for i in range(40)]
    emb = {s: rng.normal(size=8) for s in vocab}
    subsets = [StsSubset(f"sub{k}", vocab[k * 10 : k * 10 + n], vocab[20 + k * 10 : 20 + k * 10 + n], rng.uniform(0, 5, n))
               for k, n in ((0, 10), (1, 6))]
    result = evaluate_task(lambda sents: np.stack([emb[s] for s in sents]), StsTask("T", subsets))

    def cos(a, b):
        return a @ b / np.linalg.norm(a) / np.linalg.norm(b)

    sims = [np.array([cos(emb[a], emb[b]) for a, b in zip(s.sentences1, s.sentences2)]) for s in subsets]
    per = [spearmanr(x, s.scores).statistic * 100 for x, s in zip(sims, subsets)]
    assert result.all == pytest.approx(spearmanr(np.concatenate(sims), np.concatenate([s.scores for s in subsets])).statistic * 100)
    assert result.wmean == pytest.approx((10 * per[0] + 6 * per[1]) / 16)
    assert result.mean == pytest.approx(np.mean(per))


@pytest.mark.shared_data
def test_minilm_reproduces_published_stsb(minilm):
    from jaxalign.eval.sts import evaluate_sts
    from jaxalign.inference.embed import Embedder

    tasks = load_sts(shared_file("sts-b/sts-test.csv"))
    (result,) = evaluate_sts(Embedder(minilm, batch_size=64), tasks)
    assert result.all == pytest.approx(82.03, abs=0.02)


def test_cli_eval_sts_builtin(tmp_path, capsys):
    from jaxalign.cli import main

    out = tmp_path / "r.json"
    assert main(["eval", "sts", "--data", "builtin:sts-mini", "--json", str(out), "--batch-size", "16"]) == 0
    payload = json.loads(out.read_text())
    assert 70 < payload["tasks"]["sts-mini"]["all"] <= 100
    assert "sts-mini" in capsys.readouterr().out
