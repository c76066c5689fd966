"""One reader of rows for every data kind: files, directories, hf: (on local data), tfds:
(a stand-in module) and the built-in sets."""

import json
import sys
from types import SimpleNamespace

import numpy as np
import pytest

from jaxalign.data import sources
from jaxalign.data.corpora import read_corpus, read_sentences
from jaxalign.data.errors import DataFormatError
from jaxalign.data.preference import load_preference
from jaxalign.data.sts import load_sts

PAIRS = [{"prompt": "The sky is", "chosen": " blue.", "rejected": " green."},
         {"prompt": "Two plus two is", "chosen": " four.", "rejected": " five."}]


def test_rows_say_where_they_are(tmp_path):
    (tmp_path / "a.jsonl").write_text(json.dumps(PAIRS[0]) + "\n\n" + json.dumps(PAIRS[1]) + "\n", encoding="utf-8")
    (tmp_path / "b.json").write_text(json.dumps({"data": PAIRS}), encoding="utf-8")
    (tmp_path / ".hidden").mkdir()
    (tmp_path / ".hidden" / "c.jsonl").write_text("not read\n", encoding="utf-8")
    rows = list(sources.rows(tmp_path))
    assert [r.value for r in rows] == PAIRS + PAIRS
    assert [r.where for r in rows] == [f"{tmp_path / 'a.jsonl'}:1", f"{tmp_path / 'a.jsonl'}:3",
                                       f"{tmp_path / 'b.json'} row 1", f"{tmp_path / 'b.json'} row 2"]
    with pytest.raises(DataFormatError, match=r"b\.json: row 2: bad"):
        rows[3].fail("bad")
    with pytest.raises(DataFormatError, match=r"no such corpus file or directory"):
        list(sources.rows(tmp_path / "nope", what="corpus"))


def test_builtin_sets_load_with_their_counts_and_kinds():
    records = load_preference("builtin:prefs-mini")
    assert len(records) == 265 and {r.kind for r in records} == {"paired"} and not records[0].conversational
    assert len(load_preference("builtin:prefs-mini", kind="unpaired")) == 2 * 265
    assert records[0].source == "builtin:prefs-mini:1"
    sentences = read_sentences("builtin:sentences-mini")
    assert len(sentences) == 549 == len(set(sentences)) and all(s[0].endswith(".") for s in sentences)
    (sts,) = load_sts("builtin:sts-mini")
    assert sts.name == "sts-mini" and len(sts.subsets[0]) == 56
    with pytest.raises(DataFormatError, match="unknown built-in corpus; choose from builtin:sentences-mini"):
        read_sentences("builtin:prefs-mini")
    with pytest.raises(DataFormatError, match="unknown built-in STS set; choose from builtin:sts-mini"):
        load_sts("builtin:sentences-mini")


def test_hf_reads_a_local_data_directory(tmp_path, monkeypatch):
    """``hf:DIR`` is ``datasets.load_dataset(DIR, split=...)``: the hub's code path, on local files."""
    datasets = pytest.importorskip("datasets")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "cache")
    prefs, nli, sts = (tmp_path / name for name in ("prefs", "nli", "sts"))
    for d in (prefs, nli, sts):
        d.mkdir()
    datasets.Dataset.from_list(PAIRS).to_parquet(prefs / "train.parquet")
    (nli / "validation.jsonl").write_text("".join(json.dumps(r) + "\n" for r in [
        {"premise": "p1", "hypothesis": "e", "label": 0}, {"premise": "p1", "hypothesis": "c", "label": 2},
        {"premise": "p2", "hypothesis": "n", "label": 1}]), encoding="utf-8")
    (sts / "test.jsonl").write_text(json.dumps({"sentence1": "a", "sentence2": "b", "score": 0.5}) + "\n",
                                    encoding="utf-8")

    records = load_preference(f"hf:{prefs}")  # split: train
    assert [(r.prompt, r.chosen, r.rejected) for r in records] == [tuple(p.values()) for p in PAIRS]
    assert records[1].source == f"hf:{prefs} row 2"
    assert read_corpus("nli", f"hf:{nli}:validation") == [("p1", "e", "c")]
    (task,) = load_sts(f"hf:{sts}")  # split: test
    assert task.name == "sts-test" and task.subsets[0].scores.tolist() == [0.5]
    with pytest.raises(DataFormatError, match=rf"hf:{nli}:validation: row 1: no 'text' column; expected 'text'"):
        read_corpus("sentences", f"hf:{nli}:validation")
    with pytest.raises(DataFormatError, match=rf"hf:{prefs}:test: cannot load .*pass a local path instead"):
        load_preference(f"hf:{prefs}:test")


def test_tfds_rows_are_decoded(monkeypatch):
    examples = [{"prompt": b"The sky is", "chosen": b" blue.", "rejected": b" green.",
                 "samples": np.array([b" grey.", b" red."]), "id": np.int64(7)}]
    calls = []

    def load(name, split):
        calls.append((name, split))
        return examples

    monkeypatch.setitem(sys.modules, "tensorflow_datasets", SimpleNamespace(load=load, as_numpy=lambda ds: ds))
    (row,) = sources.rows("tfds:my_prefs:test[:10]")
    assert row.value == {"prompt": "The sky is", "chosen": " blue.", "rejected": " green.",
                         "samples": [" grey.", " red."], "id": 7}
    assert row.where == "tfds:my_prefs:test[:10] row 1" and calls == [("my_prefs", "test[:10]")]
    (neg,) = load_preference("tfds:my_prefs", kind="negatives")
    assert neg.samples == (" grey.", " red.") and calls[-1] == ("my_prefs", "train")
