"""Preference data for the DPO family (paired), KTO (unpaired), D²O (negatives) and sft-style
objectives, read by :func:`load_preference` here, in four steps of one module each:

* :mod:`jaxalign.data.sources`: rows from files, directories, the hub, TFDS or a built-in set;
* :mod:`.records`: each row -> :class:`~.records.PreferenceRecord` (every TRL format, HH-RLHF
  transcripts, OpenAI's preference format), its prompt made explicit;
* :mod:`.tokens`: records -> token ids, TRL's truncation and drops
  (:func:`~.tokens.tokenize_preference`);
* :mod:`.collate`: examples -> batches ``{"input_ids", "attention_mask", "loss_mask": int32
  [B, C, T], ...}`` with ``T`` a length bucket (:func:`~.collate.collate_preference`), or
  packed rows holding several sequences each (:mod:`.packing`, ``data.packing``).
"""

from __future__ import annotations

import logging

from jaxalign.data import sources
from jaxalign.data.errors import DataFormatError
from jaxalign.data.preference.records import EXPECTED, KINDS, Kind, PreferenceRecord, parse_row

log = logging.getLogger(__name__)


def load_preference(spec, kind: Kind = "paired", max_examples: int | None = None,
                    skip_examples: int = 0) -> list[PreferenceRecord]:
    """Preference records of ``kind`` from ``spec``: a file, a directory, ``hf:NAME[:SPLIT]``,
    ``tfds:NAME[:SPLIT]`` or ``builtin:prefs-mini`` (see :mod:`jaxalign.data.sources`), in any
    row format of :mod:`jaxalign.data.preference.records`.

    ``skip_examples`` rows are passed over first (so one file can hold a training part and a
    held-out part), then ``max_examples`` caps the rows read (a paired row unpaired for KTO gives
    two records). ``kind="unpaired"`` on paired rows follows TRL's ``unpair_preference_dataset``:
    every chosen completion (label True) then every rejected one (label False), so that
    neighbouring records rarely share a prompt; pairs whose chosen equals their rejected
    completion are dropped there (counted and logged), as their labels contradict each other.
    """
    if kind not in KINDS:
        raise ValueError(f"kind={kind!r}: choose one of {', '.join(KINDS)}")
    records: list[PreferenceRecord] = []
    rows_read = rows_seen = 0
    for row in sources.rows(spec, what="preference"):
        if max_examples is not None and rows_read >= max_examples:
            break
        rows_seen += 1
        if rows_seen <= skip_examples:
            continue
        records += parse_row(row, kind)
        rows_read += 1
    if not records:
        if rows_seen and skip_examples:
            raise DataFormatError(spec, f"skipping {skip_examples} rows leaves none: it has {rows_seen} rows")
        raise DataFormatError(spec, f"empty: no preference rows (expected rows with {EXPECTED[kind]})")
    if kind == "unpaired":
        records = _order_unpaired(records)
    return records


def _order_unpaired(records: list[PreferenceRecord]) -> list[PreferenceRecord]:
    """Unpaired records from paired rows come in (chosen, rejected) twins with the same source:
    reorder them as TRL does (all chosen, then all rejected) and drop identical twins."""
    out_true, out_false, rest, identical = [], [], [], 0
    i = 0
    while i < len(records):
        r = records[i]
        twin = records[i + 1] if i + 1 < len(records) else None
        if (twin is not None and r.label is True and twin.label is False and twin.source == r.source
                and twin.prompt == r.prompt):
            if r.completion == twin.completion:
                identical += 1
            else:
                out_true.append(r)
                out_false.append(twin)
            i += 2
        else:
            rest.append(r)
            i += 1
    if identical:
        log.info("unpairing: dropped %d pairs whose chosen equals their rejected completion", identical)
    if not out_true:
        return rest
    return rest + out_true + out_false
