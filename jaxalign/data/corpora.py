"""Training corpora for contrastive objectives, as lists of examples (tuples of strings).

* ``sentences``: one sentence per line (e.g. wiki1m for unsupervised SimCSE) -> ``(s,)``
* ``nli``: (anchor, entailment, contradiction) triplets from SentEval's SNLI layout
  (``s1.*``, ``s2.*``, ``labels.*``; grouped by premise), from a 3-column CSV/TSV
  (SimCSE's ``nli_for_simcse.csv``: sent0, sent1, hard_neg) or from the hub -> ``(a, p, n)``
* ``pairs``: scored sentence pairs (STS formats, see :mod:`jaxalign.data.sts`) -> ``(s1, s2, score)``

Paths may be ``builtin:sentences-mini`` (a small corpus that ships with jaxalign) and
``builtin:nli-mini`` (triplets written for jaxalign, for the quickstart), ``hf:NAME[:split]``
(``datasets.load_dataset``) or ``tfds:NAME[:split]`` (read by :mod:`jaxalign.data.sources`:
``sentences`` takes their ``text`` column, ``nli`` their ``premise``, ``hypothesis`` and ``label``).
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

from jaxalign.data import builtin, sources
from jaxalign.data.errors import DataFormatError, decode_utf8
from jaxalign.data.sts import load_sts

Example = tuple


def _read_text(path: Path) -> str:
    """A UTF-8 file's text, newlines untranslated; a binary file fails naming its line and offset."""
    return decode_utf8(path.read_bytes(), path)


def read_sentences(spec: str) -> list[Example]:
    if spec.startswith(sources.HUB_SCHEMES):
        lines = [r[0] for r in _columns(spec, ("text",))]
    else:
        path = builtin.path(spec, "corpus", (".txt",)) if spec.startswith("builtin:") else Path(spec).expanduser()
        if not path.is_file():
            raise DataFormatError(path, "no such corpus file (expected one sentence per line)")
        lines = _read_text(path).splitlines()
    sentences = [(s.strip(),) for s in lines if s.strip()]
    if not sentences:
        raise DataFormatError(spec, "the corpus is empty or all blank: nothing to train on")
    return sentences


def read_nli(spec: str) -> list[Example]:
    """(anchor, entailment, contradiction) triplets."""
    if spec.startswith(sources.HUB_SCHEMES):
        return _nli_from_labelled(_columns(spec, ("premise", "hypothesis", "label")), spec)
    path = builtin.path(spec, "NLI set", (".tsv",)) if spec.startswith("builtin:") else Path(spec).expanduser()
    if path.is_dir():
        rows = []
        for split in sorted({p.suffix[1:] for p in path.glob("labels.*")}):
            files = [path / f"{n}.{split}" for n in ("s1", "s2", "labels")]
            s1, s2, labels = (_read_text(f).splitlines() for f in files)
            if not len(s1) == len(s2) == len(labels):
                raise DataFormatError(path, f"s1.{split}, s2.{split} and labels.{split} have {len(s1)}, {len(s2)} and {len(labels)} lines; they must align")
            rows += zip(s1, s2, labels)
        if not rows:
            raise DataFormatError(path, "no SNLI-layout files (s1.<split>, s2.<split>, labels.<split>)")
        return _nli_from_labelled(rows, path)
    if not path.is_file():
        raise DataFormatError(path, "no such NLI file or directory")
    delimiter = "\t" if path.suffix == ".tsv" else ","
    triplets = []
    with io.StringIO(_read_text(path), newline="") as f:
        for i, row in enumerate(csv.reader(f, delimiter=delimiter), 1):
            if i == 1 and [c.strip().lower() for c in row[:1]] == ["sent0"]:
                continue  # SimCSE header
            if len(row) != 3:
                raise DataFormatError(path, f"expected 3 columns (anchor, positive, hard negative), got {len(row)}", i)
            triplets.append(tuple(row))
    if not triplets:
        raise DataFormatError(path, "no triplets")
    return triplets


def _nli_from_labelled(rows, source) -> list[Example]:
    """Groups (premise, hypothesis, label) rows by premise; keeps premises that have both an
    entailment and a contradiction hypothesis (first of each)."""
    entail, contra, order = {}, {}, {}
    names = {0: "entailment", 2: "contradiction", "0": "entailment", "2": "contradiction"}
    for premise, hypothesis, label in rows:
        label = names.get(label, label)
        order.setdefault(premise, None)
        if label == "entailment":
            entail.setdefault(premise, hypothesis)
        elif label == "contradiction":
            contra.setdefault(premise, hypothesis)
    triplets = [(p, entail[p], contra[p]) for p in order if p in entail and p in contra]
    if not triplets:
        raise DataFormatError(source, "no premise has both an entailment and a contradiction hypothesis")
    return triplets


def read_pairs(spec: str, split: str = "train") -> list[Example]:
    return [(a, b, float(s)) for task in load_sts(spec, split=split) for sub in task.subsets
            for a, b, s in zip(sub.sentences1, sub.sentences2, sub.scores)]


def _columns(spec: str, columns: tuple[str, ...]) -> list[tuple]:
    """``columns`` of every row of a hub or TFDS data set (needs a network or cache)."""
    out = []
    for row in sources.rows(spec):
        missing = [c for c in columns if c not in row.value]
        if missing:
            row.fail(f"no {' and '.join(map(repr, missing))} column; expected {', '.join(map(repr, columns))}")
        out.append(tuple(row.value[c] for c in columns))
    return out


def read_corpus(kind: str, spec: str, max_examples: int | None = None) -> list[Example]:
    readers = {"sentences": read_sentences, "nli": read_nli, "pairs": read_pairs}
    examples = readers[kind](spec)
    return examples[:max_examples] if max_examples is not None else examples
