"""Deterministic, resumable batching of examples into static-shape token arrays.

The order of epoch ``e`` is a permutation seeded by ``(seed, e)``, so the stream's whole
state is two integers, ``(epoch, position)``, saved with every checkpoint: a resumed run
sees exactly the batches an uninterrupted one would, on any number of processes. Every
process draws the same *global* batch and decides everything static from it (the padded
length bucket, so that all processes compile one program), then builds arrays only for its
contiguous slice of the rows (``process_index`` of ``process_count``, :attr:`BatchStream.local`);
:func:`to_global` assembles the slices into global arrays.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import numpy as np

from jaxalign.inference.embed import bucket_length


@dataclasses.dataclass
class StreamState:
    epoch: int = 0
    position: int = 0  # examples of this epoch already served (global count)


def check_batching(num_examples: int, batch_size: int, process_count: int) -> None:
    """The data fills at least one global batch, which splits evenly over the processes."""
    if num_examples < batch_size:
        raise ValueError(f"the data has {num_examples} examples, fewer than one batch of {batch_size}; "
                         "lower data.batch_size or add data")
    if batch_size % process_count:
        raise ValueError(f"batch size {batch_size} is not divisible by the {process_count} processes")


def epoch_order(num_examples: int, seed: int, epoch: int, shuffle: bool) -> np.ndarray:
    """The order in which epoch ``epoch`` serves the examples."""
    return np.random.default_rng([seed, epoch]).permutation(num_examples) if shuffle else np.arange(num_examples)


def local_rows(batch_size: int, process_index: int, process_count: int) -> slice:
    """Process ``process_index``'s contiguous rows of every global batch."""
    n = batch_size // process_count
    return slice(process_index * n, (process_index + 1) * n)


class BatchStream:
    """Global batches of ``batch_size`` examples; incomplete tail batches are dropped so every
    batch has the same size (one compile per length bucket)."""

    def __init__(self, examples: Sequence, batch_size: int, *, seed: int = 0, shuffle: bool = True,
                 process_index: int | None = None, process_count: int | None = None):
        self.examples = examples
        self.batch_size = batch_size
        self.seed, self.shuffle = seed, shuffle
        self.process_index = jax.process_index() if process_index is None else process_index
        self.process_count = jax.process_count() if process_count is None else process_count
        check_batching(len(examples), batch_size, self.process_count)
        self.state = StreamState()
        self._order_epoch, self._order = -1, None

    @property
    def batches_per_epoch(self) -> int:
        return len(self.examples) // self.batch_size

    def _permutation(self, epoch: int) -> np.ndarray:
        if self._order_epoch != epoch:
            self._order = epoch_order(len(self.examples), self.seed, epoch, self.shuffle)
            self._order_epoch = epoch
        return self._order

    @property
    def local(self) -> slice:
        """This process's rows of every global batch."""
        return local_rows(self.batch_size, self.process_index, self.process_count)

    def close(self) -> None:
        """Nothing to stop (the streaming pipeline's ``close`` stops its read-ahead)."""

    def next(self) -> list:
        """The examples of the next global batch (the same on every process)."""
        if self.state.position + self.batch_size > len(self.examples):
            self.state = StreamState(self.state.epoch + 1, 0)
        order = self._permutation(self.state.epoch)
        rows = order[self.state.position : self.state.position + self.batch_size]
        self.state = StreamState(self.state.epoch, self.state.position + self.batch_size)
        return [self.examples[i] for i in rows]


class Tokenized:
    """Pre-tokenises every text column of the examples once (no tokenisation in the hot loop)."""

    def __init__(self, tokenizer, examples: Sequence[tuple], text_columns: int, max_length: int):
        self.pad_id = tokenizer.pad_token_id or 0
        texts = sorted({ex[c] for ex in examples for c in range(text_columns)})
        ids = tokenizer(texts, truncation=True, max_length=max_length, padding=False)["input_ids"]
        self.ids = dict(zip(texts, ids))

    def pad(self, texts: Sequence[str], length: int) -> tuple[np.ndarray, np.ndarray]:
        """[n, length] input ids and attention mask."""
        ids = np.full((len(texts), length), self.pad_id, np.int32)
        mask = np.zeros((len(texts), length), np.int32)
        for r, t in enumerate(texts):
            tok = self.ids[t]
            ids[r, : len(tok)] = tok
            mask[r, : len(tok)] = 1
        return ids, mask


def collate(tokens: Tokenized, examples: Sequence[tuple], text_columns: int, buckets: Sequence[int], max_length: int,
            numeric: Sequence[str] = (), local: slice = slice(None)) -> dict:
    """Global batch -> this process's ``{"input_ids": [C, B, T], "attention_mask": [C, B, T],
    <numeric name>: [B], ...}`` (``B`` the rows ``local`` selects; default: all).

    All C text columns share one bucket length T, the longest of the *global* batch rounded
    up, so a step compiles once per bucket and every process the same program. The columns
    after the text ones (pair scores, teacher scores) become float32 arrays named by ``numeric``.
    """
    longest = max(len(tokens.ids[ex[c]]) for ex in examples for c in range(text_columns))
    length = bucket_length(longest, buckets, max_length)
    examples = examples[local]
    columns = [[ex[c] for ex in examples] for c in range(text_columns)]
    padded = [tokens.pad(col, length) for col in columns]
    batch = {"input_ids": np.stack([p[0] for p in padded]), "attention_mask": np.stack([p[1] for p in padded])}
    for i, name in enumerate(numeric):
        batch[name] = np.asarray([ex[text_columns + i] for ex in examples], np.float32)
    return batch


def to_global(local: dict, shardings: dict) -> dict:
    """Assembles per-process arrays into global jax.Arrays sharded by ``shardings``; arrays
    already placed so (by the streaming pipeline's background transfer) pass through."""
    placed = lambda k, v: isinstance(v, jax.Array) and v.sharding == shardings[k]
    return {k: v if placed(k, v) else jax.make_array_from_process_local_data(shardings[k], v) for k, v in local.items()}
