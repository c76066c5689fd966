"""Batched, length-bucketed sentence embedding with one compilation per bucket.

Sentences are tokenised once, sorted by length and cut into batches of exactly
``batch_size`` rows (the last one padded with empty rows) and one of a few bucket lengths
(padded on the right, or on the left for decoders' last-token embeddings),
so the jitted forward sees a small, fixed set of shapes however many sentences come in.
On a mesh spanning several processes, each process holds every sentence; the batches are
placed as global arrays (each process supplying its devices' rows) and the embeddings
gathered back, so every process returns the whole result.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Sequence

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh
from tqdm.auto import tqdm

from jaxalign.models.registry import Encoder
from jaxalign.ops.pooling import PoolingConfig, pool
from jaxalign.sharding.mesh import check_batch_size
from jaxalign.sharding.rules import named_sharding, tree_shardings

DEFAULT_BUCKETS = (16, 32, 64, 128, 256, 512)


@dataclasses.dataclass
class Batch:
    """One padded batch: token arrays [batch_size, bucket_len] and the rows' sentence indices."""

    input_ids: np.ndarray
    attention_mask: np.ndarray
    token_type_ids: np.ndarray
    index: np.ndarray  # [n_real] positions in the caller's sentence list

    @property
    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return self.input_ids, self.attention_mask, self.token_type_ids


def bucket_length(n: int, buckets: Sequence[int], max_length: int) -> int:
    """Smallest bucket >= n, never above ``max_length``."""
    for b in buckets:
        if b >= n:
            return min(b, max_length)
    return max_length


def bucketed_batches(
    tokenizer,
    sentences: Sequence[str],
    *,
    batch_size: int,
    max_length: int,
    buckets: Sequence[int] = DEFAULT_BUCKETS,
    padding_side: str = "right",
) -> list[Batch]:
    """Tokenises ``sentences`` (truncating at ``max_length``) into static-shape batches, longest
    first, each row padded on ``padding_side`` (``right`` or ``left``)."""
    if padding_side not in ("right", "left"):
        raise ValueError(f"padding_side {padding_side!r}: choose right or left")
    enc = tokenizer(list(sentences), truncation=True, max_length=max_length, padding=False)
    ids = enc["input_ids"]
    types = enc.get("token_type_ids")
    lengths = np.array([len(x) for x in ids])
    order = np.argsort(-lengths, kind="stable")
    pad_id = tokenizer.pad_token_id or 0
    batches = []
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        t = bucket_length(int(lengths[rows].max()), buckets, max_length)
        input_ids = np.full((batch_size, t), pad_id, np.int32)
        mask = np.zeros((batch_size, t), np.int32)
        token_types = np.zeros((batch_size, t), np.int32)
        for r, i in enumerate(rows):
            n = lengths[i]
            cols = slice(0, n) if padding_side == "right" else slice(t - n, t)
            input_ids[r, cols] = ids[i]
            mask[r, cols] = 1
            if types is not None:
                token_types[r, cols] = types[i]
        batches.append(Batch(input_ids, mask, token_types, rows))
    return batches


def encode_fn(encoder: Encoder, pooling: PoolingConfig) -> Callable:
    """Pure ``(params, input_ids, attention_mask, token_type_ids) -> [B, D] float32`` embeddings."""

    def f(params, input_ids, attention_mask, token_type_ids):
        out = encoder.apply(params, input_ids, attention_mask, token_type_ids, output_hidden_states=pooling.needs_all_layers)
        hidden = out.hidden_states if pooling.needs_all_layers else (out.last_hidden_state,)
        return pool(hidden, attention_mask, pooling, out.pooler_output)

    return f


def jit_encode(encoder: Encoder, pooling: PoolingConfig, mesh: Mesh | None = None, f: Callable | None = None):
    """``f`` (default ``encode_fn(encoder, pooling)``) under ``jax.jit``; with ``mesh``, parameters
    keep their logical shardings, the batch is split over the data axes and embeddings come back
    batch-sharded."""
    f = f or encode_fn(encoder, pooling)
    if mesh is None:
        return jax.jit(f)
    tokens = named_sharding(mesh, ("batch", "length"))
    out = named_sharding(mesh, ("batch", None))
    return jax.jit(f, in_shardings=(tree_shardings(mesh, encoder.axes, encoder.params), tokens, tokens, tokens), out_shardings=out)


class Embedder:
    """Embeds lists of sentences with ``encoder``; see the module docstring for the batching.

    ``encode`` replaces ``encode_fn(encoder, pooling)`` as the pure
    ``(params, input_ids, attention_mask, token_type_ids) -> [B, D]`` function (a decoder's
    prompt-based embedding); ``encoder`` then needs only ``params``, ``axes``, ``tokenizer`` and
    ``max_length``.
    """

    def __init__(
        self,
        encoder: Encoder,
        pooling: PoolingConfig | None = None,
        *,
        batch_size: int = 64,
        max_length: int | None = None,
        mesh: Mesh | None = None,
        buckets: Sequence[int] = DEFAULT_BUCKETS,
        encode: Callable | None = None,
        padding_side: str = "right",
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if mesh is not None:
            check_batch_size(batch_size, mesh)
        self.encoder = encoder
        self.pooling = pooling or encoder.pooling
        self.batch_size = batch_size
        self.max_length = min(max_length or encoder.max_length, encoder.max_length)
        self.buckets = tuple(buckets)
        self.padding_side = padding_side
        self.forward = jit_encode(encoder, self.pooling, mesh, encode)
        # Only a mesh over several processes needs explicit global arrays; jit places the rest.
        multi = mesh is not None and jax.process_count() > 1
        self._tokens = named_sharding(mesh, ("batch", "length")) if multi else None

    def batches(self, sentences: Sequence[str]) -> list[Batch]:
        return bucketed_batches(
            self.encoder.tokenizer, sentences, batch_size=self.batch_size, max_length=self.max_length, buckets=self.buckets,
            padding_side=self.padding_side,
        )

    def __call__(self, sentences: Sequence[str], *, params=None, progress: bool = False, desc: str = "embedding") -> np.ndarray:
        """[len(sentences), D] float32 embeddings, in input order; ``params`` overrides the
        encoder's own (e.g. the parameters of a model being trained)."""
        params = self.encoder.params if params is None else params
        if len(sentences) == 0:
            raise ValueError("nothing to embed: the sentence list is empty")
        batches = self.batches(sentences)
        results: list[tuple[np.ndarray, jax.Array]] = []
        # Dispatch everything before pulling results back, so host work overlaps device work.
        for batch in tqdm(batches, desc=desc, unit="batch", disable=not progress or jax.process_index() > 0, leave=False):
            arrays = batch.arrays
            if self._tokens is not None:
                arrays = [jax.make_array_from_callback(a.shape, self._tokens, lambda i, a=a: a[i]) for a in arrays]
            results.append((batch.index, self.forward(params, *arrays)))
        out = None
        for index, emb in results:
            emb = np.asarray(multihost_utils.process_allgather(emb, tiled=True) if self._tokens is not None else emb)
            if out is None:
                out = np.empty((len(sentences), emb.shape[1]), np.float32)
            out[index] = emb[: len(index)]
        return out

    def iter_shapes(self, sentences: Sequence[str]) -> Iterator[tuple[int, int]]:
        """The distinct (batch, length) shapes ``__call__`` would compile for."""
        return iter(sorted({b.input_ids.shape for b in self.batches(sentences)}))


__all__ = ["DEFAULT_BUCKETS", "Batch", "Embedder", "bucket_length", "bucketed_batches", "encode_fn", "jit_encode"]
