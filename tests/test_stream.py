"""Data streams: deterministic by seed, resumable from two integers, split across processes."""

import numpy as np
import pytest

from jaxalign.data.corpora import read_corpus
from jaxalign.data.errors import DataFormatError
from jaxalign.data.stream import BatchStream, StreamState, Tokenized, collate


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
    streams = [BatchStream(examples, 8, seed=1, process_index=i, process_count=4) for i in range(4)]
    batches = [s.next() for s in streams]
    assert all(b == whole for b in batches)  # every process draws the same global batch ...
    assert sum((b[s.local] for b, s in zip(batches, streams)), []) == whole  # ... and takes its own rows


class _Tokenizer:
    pad_token_id = 0

    def __call__(self, texts, **_):
        return {"input_ids": [[1] * len(t.split()) for t in texts]}


def test_collate_buckets_from_the_global_batch():
    """Process 1's rows are short, process 0's long: both must pad to the global bucket (one
    program on every process), and their slices together are the one-process batch."""
    examples = [("w " * 20,), ("w " * 3,), ("w",), ("w w",)]
    tokens = Tokenized(_Tokenizer(), examples, 1, max_length=64)
    whole = collate(tokens, examples, 1, (8, 16, 32), 64)
    parts = [collate(tokens, examples, 1, (8, 16, 32), 64, local=slice(2 * i, 2 * i + 2)) for i in range(2)]
    assert whole["input_ids"].shape == (1, 4, 32)
    assert all(p["input_ids"].shape == (1, 2, 32) for p in parts)
    for key in whole:
        np.testing.assert_array_equal(np.concatenate([p[key] for p in parts], axis=1), whole[key])


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
