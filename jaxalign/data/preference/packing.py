"""Packed preference batches: a global batch's sequences laid end to end in a few rows, so that a
step computes its real tokens instead of every column padded to the longest one.

``data.packing`` (one of :data:`PACKINGS`):

* ``none``: :func:`~jaxalign.data.preference.collate.collate_preference`'s padded ``[B, C, T]``.
* ``padding_free``: every ``prompt + completion`` sequence (``B * C`` of them) is one segment of
  a row (TRL's ``padding_free``): it attends only within itself, its positions start at 0.
* ``shared_prompt``: every example is one segment laid out ``[prompt, completion 1, ...,
  completion C]``; each completion sees the prompt and itself, not the other completions
  (:class:`~jaxalign.ops.attention.BranchSegments`), and its positions continue from the
  prompt's end, so the prompt is computed once for all of its columns. The first token of every
  completion is predicted by the prompt's last token (``predecessor``).

Shapes are static and the same in every process: ``R = data.packed_rows`` rows (default: the
batch size), a multiple of the data-parallel size ``shards``. The batch's examples are split
into ``shards`` contiguous blocks, each packed (first-fit decreasing) into its own ``R / shards``
rows, so that a device's rows hold its own examples. The row length ``L`` is the smallest of
:func:`row_lengths` into which every block fits, decided from the whole global batch: one
compiled step per row length.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from jaxalign.data.preference.collate import PreferenceExample, completion_columns

PACKINGS = ("none", "padding_free", "shared_prompt")


@dataclasses.dataclass(frozen=True)
class _Unit:
    """One segment of a row: its tokens and, for each column it holds, where that completion is."""

    example: int
    tokens: np.ndarray  # [n] int32
    positions: np.ndarray  # [n] int32 position ids (RoPE)
    branch: np.ndarray  # [n] int32: 0 on the prompt, c + 1 on completion c (shared_prompt), else 0
    predecessor: np.ndarray  # [n] int32 offset of the token whose hidden state predicts each token (-1: none)
    completions: tuple[tuple[int, int, int], ...]  # (column, start, stop) offsets of completion tokens


def _units(example: int, prompt: np.ndarray, columns: Sequence[np.ndarray], packing: str) -> list[_Unit]:
    p = len(prompt)
    if packing == "padding_free":
        out = []
        for c, comp in enumerate(columns):
            n = p + len(comp)
            out.append(_Unit(example, np.concatenate([prompt, comp]).astype(np.int32), np.arange(n, dtype=np.int32),
                             np.zeros(n, np.int32), np.arange(-1, n - 1, dtype=np.int32), ((c, p, n),)))
        return out
    tokens, positions, branch, pred, spans = [prompt], [np.arange(p)], [np.zeros(p)], [np.arange(-1, p - 1)], []
    start = p
    for c, comp in enumerate(columns):
        m = len(comp)
        tokens.append(comp)
        positions.append(p + np.arange(m))
        branch.append(np.full(m, c + 1))
        pred.append(np.concatenate([[p - 1], start + np.arange(m - 1)]))
        spans.append((c, start, start + m))
        start += m
    cat = lambda parts: np.concatenate(parts).astype(np.int32)  # noqa: E731
    return [_Unit(example, cat(tokens), cat(positions), cat(branch), cat(pred), tuple(spans))]


def row_lengths(buckets: Sequence[int], cap: int) -> list[int]:
    """Row lengths a packed batch may take, ascending: the buckets below ``cap``, then doublings
    of the largest of them below ``cap``, then ``cap``."""
    out = sorted(b for b in set(buckets) if b < cap)
    b = out[-1] if out else cap
    while 2 * b < cap:
        b *= 2
        out.append(b)
    return out + [cap]


def _first_fit(lengths: Sequence[int], rows: int, length: int) -> list[tuple[int, int]] | None:
    """(row, offset) of each item, first-fit decreasing into ``rows`` rows of ``length``; None
    if they do not fit."""
    used = [0] * rows
    place: list[tuple[int, int]] = [(0, 0)] * len(lengths)
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        row = next((r for r in range(rows) if used[r] + lengths[i] <= length), None)
        if row is None:
            return None
        place[i] = (row, used[row])
        used[row] += lengths[i]
    return place


def pack_preference(examples: Sequence[PreferenceExample], *, packing: str, rows: int | None, max_length: int,
                    buckets: Sequence[int], pad_id: int, packed_length: int | None = None, shards: int = 1,
                    local: slice = slice(None)) -> dict[str, np.ndarray]:
    """A global batch -> packed NumPy arrays for the examples ``local`` selects (and their rows).

    Args:
      examples: the global batch, ``B`` examples of ``C`` completion columns each.
      packing: ``padding_free`` or ``shared_prompt`` (see the module).
      rows: ``R``, rows of the global batch (``data.packed_rows``); None: ``B``.
      max_length: the tokeniser's ``model.max_length`` (the longest sequence).
      buckets: length buckets, see :func:`row_lengths`.
      pad_id: the id of padding tokens.
      packed_length: the longest row (``data.packed_length``); None: ``ceil(C * B / R) *
        max_length``, which always fits.
      shards: the data-parallel size: ``R`` and ``B`` are split into this many blocks.
      local: this process's examples (a whole number of blocks); default: all.

    Returns:
      Rows ``[R', L]`` int32 (``R'`` the local rows): ``input_ids`` (``pad_id`` off the
      segments), ``attention_mask`` (1 on real tokens), ``segment_ids`` (1, 2, ... per segment
      of a row, 0 on padding), ``positions``, ``branch_ids`` (shared_prompt only: 0 on prompts,
      ``c + 1`` on column ``c``) and ``predecessor`` (the row slot whose hidden
      state predicts each token; the slot itself where none does). Per example ``[B', C, Tc]``
      int32, ``Tc = min(L, max_length)``: ``token_index``, the flat index ``row * L + slot`` in
      the *global* rows of each completion token (0 past the completion), and ``loss_mask``, 1
      on completion tokens. Unpaired (KTO) data also has ``label`` bool ``[B']``.
    """
    if packing not in PACKINGS[1:]:
        raise ValueError(f"data.packing={packing!r}: pack_preference takes one of {', '.join(PACKINGS[1:])}")
    columns = completion_columns(examples, max_length)
    B, C = len(examples), len(columns[0])
    R = B if rows is None else rows
    if R % shards or B % shards:
        raise ValueError(f"data.packed_rows={R} and data.batch_size={B} must both divide by the data-parallel "
                         f"size {shards}, so that every device packs its own examples into its own rows")
    units = [u for b, (ex, cols) in enumerate(zip(examples, columns)) for u in _units(b, ex.prompt, cols, packing)]
    longest = max(len(u.tokens) for u in units)
    per_shard, rows_per_shard = B // shards, R // shards
    # a row of k * max_length holds any k sequences, so this fits every device's C * B / shards of them
    cap = -(-C * per_shard // rows_per_shard) * max_length if packed_length is None else packed_length
    if longest > cap:
        raise ValueError(f"data.packing={packing}: a packed sequence of {longest} tokens is longer than a packed row "
                         f"(data.packed_length={cap}); raise data.packed_length to at least {longest}")
    blocks = [[u for u in units if u.example // per_shard == s] for s in range(shards)]
    for L in (n for n in row_lengths(buckets, cap) if n >= longest):
        places = [_first_fit([len(u.tokens) for u in block], rows_per_shard, L) for block in blocks]
        if all(p is not None for p in places):
            break
    else:
        need = max(sum(len(u.tokens) for u in block) for block in blocks)
        raise ValueError(f"data.packing={packing}: a device's {need} tokens do not fit in data.packed_rows={R} rows "
                         f"({rows_per_shard} per device) of data.packed_length={cap} tokens; raise data.packed_rows "
                         "or data.packed_length")
    Tc = min(L, max_length)
    arrays = {k: np.zeros((R, L), np.int32) for k in ("attention_mask", "segment_ids", "positions", "branch_ids")}
    arrays["input_ids"] = np.full((R, L), pad_id, np.int32)
    arrays["predecessor"] = np.broadcast_to(np.arange(L, dtype=np.int32), (R, L)).copy()
    token_index = np.zeros((B, C, Tc), np.int32)
    loss_mask = np.zeros((B, C, Tc), np.int32)
    count = np.zeros(R, np.int32)
    for s, (block, place) in enumerate(zip(blocks, places)):
        for u, (r, off) in zip(block, place):
            r += s * rows_per_shard
            span = slice(off, off + len(u.tokens))
            count[r] += 1
            arrays["input_ids"][r, span] = u.tokens
            arrays["attention_mask"][r, span] = 1
            arrays["segment_ids"][r, span] = count[r]
            arrays["positions"][r, span] = u.positions
            arrays["branch_ids"][r, span] = u.branch
            arrays["predecessor"][r, span] = np.where(u.predecessor >= 0, off + u.predecessor, off + np.arange(len(u.tokens)))
            for c, start, stop in u.completions:
                token_index[u.example, c, : stop - start] = r * L + off + np.arange(start, stop)
                loss_mask[u.example, c, : stop - start] = 1
    if local != slice(None):
        first, last, _ = local.indices(B)
        if first % per_shard or last % per_shard:
            raise ValueError(f"rows {first}:{last} of the batch are not whole blocks of {per_shard} examples")
        row_slice = slice(first // per_shard * rows_per_shard, last // per_shard * rows_per_shard)
        arrays = {k: v[row_slice] for k, v in arrays.items()}
    if packing == "padding_free":
        del arrays["branch_ids"]
    batch = {**arrays, "token_index": token_index[local], "loss_mask": loss_mask[local]}
    if examples[0].label is not None:
        batch["label"] = np.asarray([ex.label for ex in examples], bool)[local]
    return batch
