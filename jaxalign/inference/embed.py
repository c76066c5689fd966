"""Batched, length-bucketed sentence embedding with one compilation per bucket.

Sentences are tokenised once and sorted by length, longest first. Each batch takes the
longest sentence left, pads to the smallest bucket length ``t`` that holds it (on the right,
or on the left for decoders' last-token embeddings) and takes as many of the next sentences
as a token budget allows: ``rows(t) = min(batch_size, max_tokens // t)`` (rounded down to a
multiple of the mesh's data-parallel size; the last batch padded with empty rows). Since
the row count is a function of the bucket, the jitted forward sees at most one shape per
bucket however many sentences come in, and long sentences no longer lift a whole batch of
short ones to their length: with the default fine buckets (steps of 8 up to 64 tokens, then
16, 32, 64) and a budget of 2048 tokens, a batch of Wikipedia sentences computes about
1.4 positions per real token, against 2.3-2.6 for full batches padded to powers of two.
Different data then meets more shapes; a persistent compilation cache
(:func:`jaxalign.compile_cache.enable`) keeps those from compiling again in the next run.
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
from jaxalign.sharding.mesh import batch_parallel_size, check_batch_size
from jaxalign.sharding.rules import named_sharding, tree_shardings

DEFAULT_BUCKETS = (8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320, 384, 448, 512)
# Positions per batch: [2048, H] activations keep the matmuls efficient on a CPU while a batch of long
# sentences shrinks to fewer rows; raise it on an accelerator (``max_tokens``).
DEFAULT_MAX_TOKENS = 2048


@dataclasses.dataclass
class Batch:
    """One padded batch: token arrays [rows, bucket_len] and the rows' sentence indices."""

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


def batch_rows(length: int, batch_size: int, max_tokens: int | None, multiple: int = 1) -> int:
    """Rows of a batch padded to ``length``: ``batch_size``, or fewer so that rows x length stays
    within ``max_tokens`` (None: no budget); a multiple of ``multiple``, at least ``multiple``."""
    if max_tokens is None:
        return batch_size
    return min(batch_size, max(multiple, max_tokens // length // multiple * multiple))


def bucketed_batches(
    tokenizer,
    sentences: Sequence[str],
    *,
    batch_size: int,
    max_length: int,
    buckets: Sequence[int] = DEFAULT_BUCKETS,
    padding_side: str = "right",
    max_tokens: int | None = None,
    row_multiple: int = 1,
) -> list[Batch]:
    """Tokenises ``sentences`` (truncating at ``max_length``) into static-shape batches, longest
    first, each row padded on ``padding_side`` (``right`` or ``left``): ``batch_rows(t, ...)``
    rows for bucket length ``t`` (see the module docstring)."""
    if padding_side not in ("right", "left"):
        raise ValueError(f"padding_side {padding_side!r}: choose right or left")
    if max_tokens is not None and max_tokens < 1:
        raise ValueError(f"max_tokens must be >= 1 (or None for full batches), got {max_tokens}")
    enc = tokenizer(list(sentences), truncation=True, max_length=max_length, padding=False)
    ids = enc["input_ids"]
    types = enc.get("token_type_ids")
    lengths = np.array([len(x) for x in ids])
    order = np.argsort(-lengths, kind="stable")
    pad_id = tokenizer.pad_token_id or 0
    batches = []
    start = 0
    while start < len(order):
        t = bucket_length(int(lengths[order[start]]), buckets, max_length)
        n_rows = batch_rows(t, batch_size, max_tokens, row_multiple)
        rows = order[start : start + n_rows]
        start += n_rows
        input_ids = np.full((n_rows, t), pad_id, np.int32)
        mask = np.zeros((n_rows, t), np.int32)
        token_types = np.zeros((n_rows, t), np.int32)
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
    ``max_length``. ``batch_size`` is the most rows of a batch, ``max_tokens`` the most padded
    positions (rows x bucket length) of one with fewer rows; None: every batch ``batch_size`` rows.
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
        max_tokens: int | None = DEFAULT_MAX_TOKENS,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if max_tokens is not None and max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1 (or None for full batches of batch_size), got {max_tokens}")
        if mesh is not None:
            check_batch_size(batch_size, mesh)
        self.encoder = encoder
        self.pooling = pooling or encoder.pooling
        self.batch_size = batch_size
        self.max_length = min(max_length or encoder.max_length, encoder.max_length)
        self.buckets = tuple(buckets)
        self.padding_side = padding_side
        self.max_tokens = max_tokens
        self.row_multiple = 1 if mesh is None else batch_parallel_size(mesh)
        self.forward = jit_encode(encoder, self.pooling, mesh, encode)
        # Only a mesh over several processes needs explicit global arrays; jit places the rest.
        multi = mesh is not None and jax.process_count() > 1
        self._tokens = named_sharding(mesh, ("batch", "length")) if multi else None

    def batches(self, sentences: Sequence[str]) -> list[Batch]:
        return bucketed_batches(
            self.encoder.tokenizer, sentences, batch_size=self.batch_size, max_length=self.max_length, buckets=self.buckets,
            padding_side=self.padding_side, max_tokens=self.max_tokens, row_multiple=self.row_multiple,
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


__all__ = ["DEFAULT_BUCKETS", "DEFAULT_MAX_TOKENS", "Batch", "Embedder", "batch_rows", "bucket_length", "bucketed_batches", "encode_fn", "jit_encode"]
