"""The two kinds of training data on a token cache (:mod:`jaxalign.data.token_cache`), as the
existing collate functions take them, so a cached batch is built by the same code as an
in-memory one.

* Contrastive rows (sentences, NLI triplets, scored pairs): :class:`CachedTokens` stands in
  for :class:`~jaxalign.data.stream.Tokenized` and :meth:`CachedTokens.examples` gives the
  example tuples :func:`~jaxalign.data.stream.collate` reads; their text entries are
  ``(row, column)`` keys into the cache instead of strings.
* Preference rows: :func:`preference_examples` gives
  :class:`~jaxalign.data.preference.collate.PreferenceExample` objects whose arrays are views of the
  memory map, for :func:`~jaxalign.data.preference.collate.collate_preference`.

Token arrays are views: asking a sequence's length reads nothing (the offsets are in memory),
so the global batch's length bucket costs no I/O, and only the rows a process collates (its
own; with KTO also the one before them, whose completion is their KL completion) are read.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np

from jaxalign.data import token_cache
from jaxalign.data.preference.collate import PreferenceExample
from jaxalign.data.preference.records import PreferenceRecord
from jaxalign.data.preference.tokens import PreferenceTokenizer, TokenizedPreference
from jaxalign.data.stream import Tokenized


class _Sequences:
    """``ids[(row, column)]``: a view of that sequence's tokens (the mapping Tokenized.pad reads)."""

    def __init__(self, table: token_cache.TokenTable):
        self.table = table

    def __getitem__(self, key: tuple[int, int]) -> np.ndarray:
        return self.table.sequence(*key)


class CachedTokens(Tokenized):
    """:class:`~jaxalign.data.stream.Tokenized` over a token cache of ``C`` text columns per row
    (and a float32 ``numeric`` extra ``[N, M]`` when the rows carry scores)."""

    def __init__(self, table: token_cache.TokenTable):  # not the parent's: that one tokenises
        self.table = table
        self.pad_id = table.meta["pad_id"]
        self.ids = _Sequences(table)

    def __len__(self) -> int:
        return len(self.table)

    def examples(self, rows: Sequence[int]) -> list[tuple]:
        """Example tuples ``((row, 0), ..., (row, C - 1), score_0, ...)`` of ``rows``."""
        C = self.table.columns
        numeric = self.table.extras.get("numeric")
        return [tuple((int(r), c) for c in range(C)) + (tuple(numeric[r].tolist()) if numeric is not None else ())
                for r in rows]


def _tokenize_texts(tokenizer, text_columns: int, max_length: int, start: int, rows: Sequence[tuple]) -> token_cache.Chunk:
    """Tokenized's ids (truncated to ``max_length``, unpadded) of every text column of ``rows``."""
    texts = [ex[c] for ex in rows for c in range(text_columns)]
    ids = tokenizer(texts, truncation=True, max_length=max_length, padding=False)["input_ids"]
    extras = {}
    if rows and len(rows[0]) > text_columns:
        extras["numeric"] = np.asarray([ex[text_columns:] for ex in rows], np.float32)
    return token_cache.Chunk(ids, extras)


def cache_contrastive(tokenizer, read, source: str | None, *, text_columns: int, max_length: int,
                      cache_dir: str, workers: int = 0) -> CachedTokens:
    """The contrastive examples ``read()`` returns (tuples of ``text_columns`` strings, then
    numbers), tokenised once. ``source`` identifies them without reading (see
    :func:`~jaxalign.data.token_cache.source_fingerprint`); None: they are read and hashed."""
    read = functools.cache(read)
    key = token_cache.cache_key(kind="contrastive", tokenizer=token_cache.tokenizer_fingerprint(tokenizer),
                                source=source or token_cache.content_fingerprint(read()),
                                text_columns=text_columns, max_length=max_length)
    tokenize = functools.partial(_tokenize_texts, tokenizer, text_columns, max_length)
    table = token_cache.open_or_build(cache_dir, key, read, tokenize, columns=text_columns, workers=workers,
                                      meta={"pad_id": tokenizer.pad_token_id or 0}, desc="tokenising (cache)")
    return CachedTokens(table)


def _tokenize_records(settings: dict, start: int, records: Sequence[PreferenceRecord]) -> token_cache.Chunk:
    """:class:`PreferenceTokenizer`'s examples of one chunk of records: the prompt then each
    completion per row, the record indices counted from the whole list, labels (-1: none)."""
    tokens = PreferenceTokenizer(**settings)(records)
    sequences = [s for ex in tokens.examples for s in (ex.prompt, *ex.completions)]
    extras = {"index": np.asarray([start + ex.index for ex in tokens.examples], np.int64),
              "label": np.asarray([-1 if ex.label is None else int(ex.label) for ex in tokens.examples], np.int8)}
    return token_cache.Chunk(sequences, extras, {"drops": tokens.drops, "truncated": tokens.truncated})


def cache_preference(tokenizer, read, source: str | None, *, kind: str, max_length: int, cache_dir: str,
                     workers: int = 0, **options) -> tuple[token_cache.TokenTable, TokenizedPreference]:
    """The preference records ``read()`` returns, tokenised once as
    :func:`~jaxalign.data.preference.tokens.tokenize_preference` would (``options``: its truncation,
    template and ``num_samples`` keywords), in chunks. Returns the cache and a
    :class:`TokenizedPreference` of its metadata (``examples`` empty: take them by row with
    :func:`preference_examples`).

    ``num_samples`` left unset is resolved over all records first (the fewest samples any
    record has), so every chunk keeps the same columns. A chunk whose records are all dropped
    is an error, as the whole set would be for the in-memory path."""
    read = functools.cache(read)
    probe = PreferenceTokenizer(tokenizer, max_length=max_length, **options)  # validates the options
    if kind == "negatives" and options.get("num_samples") is None:
        options["num_samples"] = min(len(r.samples) for r in read())
    columns = {"paired": 2, "unpaired": 1, "sft": 1, "negatives": 1 + (options.get("num_samples") or 0)}[kind]
    key = token_cache.cache_key(kind=f"preference/{kind}", tokenizer=token_cache.tokenizer_fingerprint(tokenizer),
                                source=source or token_cache.content_fingerprint(read()), max_length=max_length,
                                options=options)
    tokenize = functools.partial(_tokenize_records, {"tokenizer": tokenizer, "max_length": max_length, **options})
    table = token_cache.open_or_build(cache_dir, key, read, tokenize, columns=1 + columns, workers=workers,
                                      meta={"pad_id": probe.pad_id, "kind": kind}, desc="tokenising (cache)")
    names = {"paired": ("chosen", "rejected"), "unpaired": ("completion", "kl_completion"), "sft": ("completion",),
             "negatives": ("rejected", *(f"sample_{j}" for j in range(1, columns)))}[kind]
    meta = TokenizedPreference([], kind, names, max_length, probe.pad_id, table.meta.get("drops", {}),
                               table.meta.get("truncated", {}))
    return table, meta


def preference_examples(table: token_cache.TokenTable, rows: Sequence[int]) -> list[PreferenceExample]:
    """The examples of ``rows``, their token arrays views of the cache."""
    index, label = table.extras["index"], table.extras["label"]
    out = []
    for r in rows:
        seqs = [table.sequence(int(r), c) for c in range(table.columns)]
        out.append(PreferenceExample(seqs[0], tuple(seqs[1:]), None if label[r] < 0 else bool(label[r]),
                                     int(index[r])))
    return out


__all__ = ["CachedTokens", "cache_contrastive", "cache_preference", "preference_examples"]
