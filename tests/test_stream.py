"""Data streams: deterministic by seed, resumable from two integers, split across processes."""

import pytest

from jaxalign.data.corpora import read_corpus
from jaxalign.data.errors import DataFormatError
from jaxalign.data.stream import BatchStream, StreamState


def test_deterministic_and_resumable():
    examples = list(range(23))
    a = BatchStream(examples, 4, seed=3)
    full = [a.next() for _ in range(12)]  # crosses two epoch boundaries (5 batches/epoch)
    b = BatchStream(examples, 4, seed=3)
    for _ in range(7):
        b.next()
    resumed = BatchStream(examples, 4, seed=3)
    resumed.state = StreamState(**vars(b.state))
    assert [resumed.next() for _ in range(5)] == full[7:]
    assert all(len(set(batch)) == 4 for batch in full)
    assert full[:5] != full[5:10]  # a new permutation each epoch
    assert BatchStream(examples, 4, seed=4).next() != full[0]


def test_processes_take_disjoint_slices_of_the_global_batch():
    examples = list(range(40))
    whole = BatchStream(examples, 8, seed=1, process_index=0, process_count=1).next()
    parts = [BatchStream(examples, 8, seed=1, process_index=i, process_count=4).next() for i in range(4)]
    assert sum(parts, []) == whole


def test_bad_corpora(tmp_path):
    blank = tmp_path / "blank.txt"
    blank.write_text("\n   \n\n")
    with pytest.raises(DataFormatError, match="empty or all blank"):
        read_corpus("sentences", str(blank))
    with pytest.raises(ValueError, match="fewer than one batch of 64"):
        BatchStream(list(range(10)), 64)
    bad = tmp_path / "nli.csv"
    bad.write_text("sent0,sent1,hard_neg\na,b,c\nd,e\n")
    with pytest.raises(DataFormatError, match="nli.csv:3: expected 3 columns"):
        read_corpus("nli", str(bad))
