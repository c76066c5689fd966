"""Bucketed embedding: static shapes, one compilation per bucket, results in input order."""

import numpy as np
import pytest

from jaxalign.inference.embed import Embedder, batch_rows, bucket_length, bucketed_batches


def test_bucket_length():
    assert bucket_length(3, (16, 32), 256) == 16
    assert bucket_length(17, (16, 32), 256) == 32
    assert bucket_length(40, (16, 32), 256) == 256
    assert bucket_length(40, (16, 64), 48) == 48


def test_batches_are_static_and_cover_every_sentence(minilm, real_sentences):
    batches = bucketed_batches(minilm.tokenizer, real_sentences, batch_size=4, max_length=256, buckets=(16, 32, 64))
    assert {b.input_ids.shape[0] for b in batches} == {4}
    assert {b.input_ids.shape[1] for b in batches} <= {16, 32, 64, 256}
    assert sorted(np.concatenate([b.index for b in batches]).tolist()) == list(range(len(real_sentences)))


def test_one_compile_per_bucket_and_input_order(minilm, real_sentences):
    embedder = Embedder(minilm, batch_size=4, buckets=(16, 32, 64))
    shapes = list(embedder.iter_shapes(real_sentences))
    first = embedder(real_sentences)
    assert embedder.forward._cache_size() == len(shapes)
    shuffled = list(reversed(real_sentences))
    second = embedder(shuffled + shuffled[:3])  # new order and count, same buckets
    assert embedder.forward._cache_size() == len(shapes)
    np.testing.assert_allclose(second[: len(shuffled)][::-1], first, atol=2e-5)
    # Each sentence embedded alone gives the same vector as in a padded batch.
    alone = Embedder(minilm, batch_size=1)(real_sentences[:3])
    np.testing.assert_allclose(alone, first[:3], atol=2e-5)


def test_empty_input_rejected(minilm):
    with pytest.raises(ValueError, match="empty"):
        Embedder(minilm)([])


def test_token_budget_bounds_shapes_and_keeps_embeddings(minilm, real_sentences):
    buckets = (8, 16, 24, 32, 48, 64)
    embedder = Embedder(minilm, batch_size=8, buckets=buckets, max_tokens=64)
    batches = embedder.batches(real_sentences)
    assert sorted(np.concatenate([b.index for b in batches]).tolist()) == list(range(len(real_sentences)))
    for b in batches:
        rows, t = b.input_ids.shape
        assert rows == batch_rows(t, 8, 64) and (rows * t <= 64 or rows == 1)
        assert b.attention_mask[: len(b.index)].sum(1).max() > (max(x for x in buckets if x < t) if t > 8 else 0)
    shapes = list(embedder.iter_shapes(real_sentences))
    assert len({rows for rows, _ in shapes}) > 1  # the budget shrank the long batches
    assert len(shapes) == len({t for _, t in shapes}) <= len(buckets)  # one row count per bucket
    ours = embedder(real_sentences)
    assert embedder.forward._cache_size() == len(shapes)
    embedder(list(reversed(real_sentences)))
    assert embedder.forward._cache_size() == len(shapes)
    full = Embedder(minilm, batch_size=8, buckets=(64,), max_tokens=None)(real_sentences)
    np.testing.assert_allclose(ours, full, atol=2e-5)


def test_batch_rows():
    assert batch_rows(16, 64, None) == 64
    assert batch_rows(16, 64, 2048) == 64
    assert batch_rows(128, 64, 2048) == 16
    assert batch_rows(512, 64, 2048) == 4
    assert batch_rows(96, 64, 2048, multiple=8) == 16
    assert batch_rows(512, 64, 1024, multiple=8) == 8  # never below one row per shard


def test_bad_max_tokens_rejected(minilm):
    with pytest.raises(ValueError, match="max_tokens"):
        Embedder(minilm, max_tokens=0)
