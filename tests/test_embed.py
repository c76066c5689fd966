"""Bucketed embedding: static shapes, one compilation per bucket, results in input order."""

import numpy as np
import pytest

from jaxalign.inference.embed import Embedder, bucket_length, bucketed_batches


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
