"""The streaming pipeline (token cache + Grain read-ahead + device prefetch) against the
in-memory path: the same batches bit for bit, on 1, 2 and 4 processes, across epochs and
resumes; the cache built once, atomically, and read only where a process needs it."""

import functools
import json

import jax
import numpy as np
import pytest
import transformers
from jax.sharding import NamedSharding, PartitionSpec

from jaxalign.data import cached, token_cache
from jaxalign.data.corpora import read_corpus, read_sentences
from jaxalign.data.pipeline import Pipeline
from jaxalign.data.preference import load_preference
from jaxalign.data.preference.tokens import tokenize_preference
from jaxalign.data.stream import BatchStream, StreamState, Tokenized, collate
from jaxalign.models.registry import resolve_model_path

BUCKETS = (8, 16, 32)
MAX_LENGTH = 32


@pytest.fixture(scope="module")
def minilm_tok():
    return transformers.AutoTokenizer.from_pretrained(str(resolve_model_path("all-MiniLM-L6-v2")))


@pytest.fixture(scope="module")
def smol_tok(smol_tokenizer):
    return smol_tokenizer


@pytest.fixture(scope="module")
def pairs():
    """90 scored pairs (two text columns and a number), from 4 to over 32 tokens: several buckets."""
    words = " ".join(s for (s,) in read_sentences("builtin:sentences-mini")[:5]).split()
    text = lambda i: " ".join(words[: 1 + (i * 7) % 40 if i % 10 == 0 else 1 + i % 5])  # a few long ones
    return [(text(i), text(i + 3), i / 7) for i in range(90)]


def contrastive_pipeline(tokens: cached.CachedTokens, n: int, batch: int, index: int, count: int, **kw) -> Pipeline:
    make = lambda rows, local: collate(tokens, tokens.examples(rows), 2, BUCKETS, MAX_LENGTH, ("score",), local=local)
    return Pipeline(n, batch, make, seed=5, process_index=index, process_count=count, **kw)


def assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


@pytest.mark.parametrize("count", [1, 2, 4])
def test_contrastive_batches_equal_the_in_memory_ones(minilm_tok, pairs, tmp_path, count):
    """12 batches of 8 over 90 examples: across an epoch boundary (11 per epoch), every process."""
    tokens = cached.cache_contrastive(minilm_tok, lambda: pairs, None, text_columns=2, max_length=MAX_LENGTH,
                                      cache_dir=tmp_path)
    memory = Tokenized(minilm_tok, pairs, 2, MAX_LENGTH)
    for index in range(count):
        stream = BatchStream(pairs, 8, seed=5, process_index=index, process_count=count)
        pipe = contrastive_pipeline(tokens, len(pairs), 8, index, count, threads=2, prefetch=2)
        lengths = set()
        for _ in range(12):
            want = collate(memory, stream.next(), 2, BUCKETS, MAX_LENGTH, ("score",), local=stream.local)
            got = pipe.next()
            assert_same(got, want)
            assert pipe.state == stream.state
            lengths.add(got["input_ids"].shape[-1])
        pipe.close()
        assert len(lengths) > 1  # several buckets were exercised


def _preference_check(tok, records, kind, tmp_path, count, batch=8, steps=6, **options):
    memory = tokenize_preference(tok, records, max_length=96, **options)
    table, meta = cached.cache_preference(tok, lambda: records, None, kind=kind, max_length=96, cache_dir=tmp_path,
                                          **options)
    assert len(table) == len(memory.examples) and meta.columns == memory.columns and meta.drops == memory.drops
    for index in range(count):
        stream = BatchStream(memory.examples, batch, seed=2, process_index=index, process_count=count)
        pipe = Pipeline(len(table), batch, lambda rows, local: meta.collate(cached.preference_examples(table, rows),
                                                                             BUCKETS, local),
                        seed=2, process_index=index, process_count=count)
        for _ in range(steps):
            examples = stream.next()
            want = memory.collate(examples, BUCKETS, stream.local)
            assert_same(pipe.next(), want)
        pipe.close()


@pytest.mark.parametrize("count", [1, 2, 4])
def test_preference_batches_equal_the_in_memory_ones(smol_tok, tmp_path, count):
    records = load_preference("builtin:prefs-mini", "paired")
    _preference_check(smol_tok, records, "paired", tmp_path, count, max_prompt_length=40)


@pytest.mark.parametrize("count", [1, 4])
def test_kto_batches_equal_the_in_memory_ones(smol_tok, tmp_path, count):
    """KL completions roll over the global batch: a process's first row takes the previous process's last."""
    records = load_preference("builtin:prefs-mini", "unpaired")[:200]
    _preference_check(smol_tok, records, "unpaired", tmp_path, count)


def test_hh_rlhf_in_chunks_with_workers(smol_tok, tmp_path):
    """Real transcripts, tokenised in 3 chunks by 2 spawned workers: the same examples."""
    from conftest import shared_file

    records = load_preference(shared_file("hh-rlhf/helpful-base/test.jsonl.gz"), "paired", max_examples=120)
    memory = tokenize_preference(smol_tok, records, max_length=128, max_prompt_length=64)
    key = token_cache.cache_key(test="hh")
    tokenize = functools.partial(cached._tokenize_records,
                                        {"tokenizer": smol_tok, "max_length": 128, "max_prompt_length": 64})
    table = token_cache.open_or_build(tmp_path, key, lambda: records, tokenize, columns=3, workers=2, chunk_size=50)
    got = cached.preference_examples(table, range(len(table)))
    assert [e.index for e in got] == [e.index for e in memory.examples]
    for a, b in zip(got, memory.examples):
        np.testing.assert_array_equal(a.prompt, b.prompt)
        for x, y in zip(a.completions, b.completions):
            np.testing.assert_array_equal(x, y)


class CountingTokenizer:
    """Delegates to a real tokenizer and counts its batch calls."""

    def __init__(self, tok):
        self.tok, self.calls = tok, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.tok(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.tok, name)


def test_a_second_run_reads_the_cache_not_the_source(minilm_tok, tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(f"sentence number {i} " + "word " * (i % 9) for i in range(50)))
    reads = []

    def read():
        reads.append(1)
        return read_corpus("sentences", str(corpus))

    def build(tok):
        return cached.cache_contrastive(tok, read, token_cache.source_fingerprint(corpus), text_columns=1,
                                        max_length=MAX_LENGTH, cache_dir=tmp_path / "cache")

    first = CountingTokenizer(minilm_tok)
    a = build(first)
    assert first.calls == 1 and len(reads) == 1
    again = CountingTokenizer(minilm_tok)
    b = build(again)
    assert again.calls == 0 and len(reads) == 1  # neither tokenised nor read
    np.testing.assert_array_equal(a.table.tokens, b.table.tokens)
    corpus.write_text(corpus.read_text() + "\none more line")  # a changed file is a new cache
    build(again)
    assert again.calls == 1 and len(reads) == 2


def _chunk(start, rows):
    return token_cache.Chunk([[r] * (1 + r % 3) for r in range(start, start + len(rows))])


def test_a_killed_build_leaves_nothing_usable(tmp_path):
    rows = list(range(30))

    def failing(start, part):
        if start >= 10:
            raise KeyboardInterrupt  # killed after the first chunk was written
        return _chunk(start, part)

    with pytest.raises(KeyboardInterrupt):
        token_cache.open_or_build(tmp_path, "k", lambda: rows, failing, columns=1, chunk_size=10)
    assert not (tmp_path / "k").exists() and not list(tmp_path.glob("k.tmp-*"))
    # A process killed outright (no cleanup) leaves its temporary directory: never read, then removed.
    stale = tmp_path / "k.tmp-99999"
    stale.mkdir()
    (stale / "tokens.npy").write_bytes(b"partial")
    table = token_cache.open_or_build(tmp_path, "k", lambda: rows, _chunk, columns=1, chunk_size=10)
    assert not stale.exists()
    assert len(table) == 30 and table.sequence(29, 0).tolist() == [29] * 3
    assert json.loads((tmp_path / "k" / "meta.json").read_text())["rows"] == 30


def test_processes_of_a_host_share_one_build(tmp_path):
    """Concurrent openers (separate lock-file descriptions, as separate processes have): one
    builds, the others wait on the lock and open its cache."""
    import threading
    import time

    calls = []

    def slow(start, part):
        calls.append(start)
        time.sleep(0.2)
        return _chunk(start, part)

    tables = []
    openers = [threading.Thread(target=lambda: tables.append(token_cache.open_or_build(
        tmp_path, "shared", lambda: list(range(20)), slow, columns=1, chunk_size=10))) for _ in range(3)]
    for t in openers:
        t.start()
    for t in openers:
        t.join()
    assert calls == [0, 10] and len(tables) == 3
    assert all(np.array_equal(t.tokens, tables[0].tokens) for t in tables)


def test_resume_after_k_consumed_batches_with_read_ahead(minilm_tok, pairs, tmp_path):
    """The state is the consumed batches', not the read-ahead's: restored, the next batch is
    the one an uninterrupted run would see (here from mid-epoch and across the boundary)."""
    tokens = cached.cache_contrastive(minilm_tok, lambda: pairs, None, text_columns=2, max_length=MAX_LENGTH,
                                      cache_dir=tmp_path)
    whole = contrastive_pipeline(tokens, len(pairs), 8, 0, 1, threads=2, prefetch=4)
    uninterrupted = [whole.next() for _ in range(14)]
    for k in (3, 10):
        first = contrastive_pipeline(tokens, len(pairs), 8, 0, 1, threads=2, prefetch=4)
        for _ in range(k):
            first.next()
        saved = StreamState(**vars(first.state))
        first.close()
        resumed = contrastive_pipeline(tokens, len(pairs), 8, 0, 1, threads=2, prefetch=4)
        resumed.state = saved
        for want in uninterrupted[k:]:
            assert_same(resumed.next(), want)
        resumed.close()
    whole.close()


class RecordingTokens:
    """Stands in for the memory-mapped token array: records the token ranges actually read."""

    def __init__(self, tokens, reads, start=0, stop=None):
        self.tokens, self.reads = tokens, reads
        self.start, self.stop = start, len(tokens) if stop is None else stop

    def __len__(self):
        return self.stop - self.start

    def __getitem__(self, s: slice):
        return RecordingTokens(self.tokens, self.reads, self.start + s.start, self.start + s.stop)

    def __array__(self, dtype=None, copy=None):
        self.reads.append((self.start, self.stop))
        return np.asarray(self.tokens[self.start : self.stop], dtype)


def test_a_process_reads_only_its_own_rows(minilm_tok, pairs, tmp_path):
    tokens = cached.cache_contrastive(minilm_tok, lambda: pairs, None, text_columns=2, max_length=MAX_LENGTH,
                                      cache_dir=tmp_path)
    reads = []
    tokens.table.tokens = RecordingTokens(tokens.table.tokens, reads)
    offsets = tokens.table.offsets
    for index in range(4):
        pipe = contrastive_pipeline(tokens, len(pairs), 8, index, 4, threads=0, prefetch=0)
        stream = BatchStream(list(range(len(pairs))), 8, seed=5, process_index=index, process_count=4)
        for _ in range(3):
            reads.clear()
            pipe.next()
            own = stream.next()[stream.local]
            spans = {(int(offsets[2 * r + c]), int(offsets[2 * r + c + 1])) for r in own for c in range(2)}
            assert set(reads) == spans


def test_batches_arrive_on_the_devices(minilm_tok, pairs, tmp_path):
    tokens = cached.cache_contrastive(minilm_tok, lambda: pairs, None, text_columns=2, max_length=MAX_LENGTH,
                                      cache_dir=tmp_path)
    mesh = jax.sharding.Mesh(np.array(jax.devices()), ("data",))
    shardings = {"input_ids": NamedSharding(mesh, PartitionSpec(None, "data")),
                 "attention_mask": NamedSharding(mesh, PartitionSpec(None, "data")),
                 "score": NamedSharding(mesh, PartitionSpec("data"))}
    host = contrastive_pipeline(tokens, len(pairs), 8, 0, 1)
    device = contrastive_pipeline(tokens, len(pairs), 8, 0, 1, shardings=shardings)
    for _ in range(3):
        got, want = device.next(), host.next()
        assert all(isinstance(v, jax.Array) and v.sharding == shardings[k] for k, v in got.items())
        assert_same(jax.device_get(got), want)
    device.close()
    host.close()


def test_training_streams_the_same_run_and_resumes_exactly(tmp_path):
    """jaxalign train with data.pipeline=streaming: the memory path's losses, step for step,
    also when stopped after 2 steps (an epoch: 2 batches of 16) and resumed (with read-ahead on)."""
    from jaxalign.config import load_recipe
    from jaxalign.config.run import TrainConfig
    from jaxalign.training.trainer import train

    common = ["model.num_layers=1", "model.max_length=16", "data.batch_size=16", "data.buckets=16",
              "eval.data=null", "log.every=1", "steps=4", "checkpoint.every=2", "data.max_examples=40"]
    config = lambda *o: load_recipe(TrainConfig, None, [*common, *o])
    memory = train(config(f"checkpoint.dir={tmp_path / 'a'}"), progress=False)
    streaming = ["data.pipeline=streaming", f"data.cache_dir={tmp_path / 'cache'}", "data.prefetch=2"]
    first = train(config(*streaming, f"checkpoint.dir={tmp_path / 'b'}"), progress=False, stop_at=2)
    resumed = train(config(*streaming, f"checkpoint.dir={tmp_path / 'b'}"), progress=False)
    assert resumed["resumed_from"] == 2
    assert [first["losses"][s] for s in (1, 2)] == [memory["losses"][s] for s in (1, 2)]
    assert [resumed["losses"][s] for s in (3, 4)] == [memory["losses"][s] for s in (3, 4)]
