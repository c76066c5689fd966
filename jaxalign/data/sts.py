"""Semantic textual similarity (STS) data sets: readers for the formats in common use.

* STS Benchmark original release, ``sts-{train,dev,test}.csv``: tab-separated, no quoting,
  ``genre, file, year, id, score, sentence1, sentence2[, extra ...]``.
* SentEval's STS12-16 layout: ``STS.input.<set>.txt`` (``s1<TAB>s2``) beside ``STS.gs.<set>.txt``
  (one score per line; blank = unscored pair, skipped); STS16 uses ``STS2016.`` prefixes.
* SICK, ``SICK_test_annotated.txt`` (header, ``pair_ID, sentence_A, sentence_B, relatedness_score, ...``).
* Hugging Face or TFDS data sets with ``sentence1``/``sentence2``/``score`` columns
  (``hf:NAME[:split]``, ``tfds:NAME[:split]``; read by :mod:`jaxalign.data.sources`).
* ``builtin:sts-mini``: a small STS set written for jaxalign, used by the quickstart.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from jaxalign.data import builtin, sources
from jaxalign.data.errors import DataFormatError

HUB_COLUMNS = ("sentence1", "sentence2", "score")


@dataclasses.dataclass
class StsSubset:
    name: str
    sentences1: list[str]
    sentences2: list[str]
    scores: np.ndarray  # [n] gold similarity

    def __post_init__(self):
        if not (len(self.sentences1) == len(self.sentences2) == len(self.scores)):
            raise ValueError(f"{self.name}: sentence and score counts differ")

    def __len__(self) -> int:
        return len(self.scores)


@dataclasses.dataclass
class StsTask:
    """A task is one or more subsets (STS12 has five); STS-B and SICK-R have one."""

    name: str
    subsets: list[StsSubset]


def _score(text: str, path, line: int) -> float:
    try:
        value = float(text)
    except ValueError:
        raise DataFormatError(path, f"score {text!r} is not a number", line) from None
    if not math.isfinite(value):
        raise DataFormatError(path, f"score {text!r} is not finite", line)
    return value


def _lines(path: Path) -> list[str]:
    if not path.is_file():
        raise DataFormatError(path, "no such file")
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise DataFormatError(path, f"not UTF-8 text ({e})") from None


def read_stsb(path: str | Path, name: str | None = None) -> StsTask:
    """STS Benchmark ``sts-*.csv`` (original release format)."""
    path = Path(path)
    s1, s2, scores = [], [], []
    for i, line in enumerate(_lines(path), 1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) < 7:
            raise DataFormatError(
                path, f"expected at least 7 tab-separated fields (genre, file, year, id, score, sentence1, sentence2), got {len(fields)}", i
            )
        scores.append(_score(fields[4], path, i))
        s1.append(fields[5])
        s2.append(fields[6])
    if not scores:
        raise DataFormatError(path, "no sentence pairs")
    split = re.sub(r"^sts-", "", path.stem)
    name = name or (f"STSBenchmark-{split}" if split != "test" else "STSBenchmark")
    return StsTask(name, [StsSubset(path.stem, s1, s2, np.asarray(scores))])


def read_senteval_subset(input_path: Path, gold_path: Path, name: str) -> StsSubset:
    """One SentEval subset; blank gold lines mark unscored pairs and are skipped."""
    inputs, gold = _lines(input_path), _lines(gold_path)
    if len(inputs) != len(gold):
        raise DataFormatError(
            input_path, f"{len(inputs)} sentence-pair lines but {gold_path.name} has {len(gold)} score lines; they must align"
        )
    s1, s2, scores = [], [], []
    for i, (pair, score) in enumerate(zip(inputs, gold), 1):
        if not score.strip():
            continue
        fields = pair.split("\t")
        if len(fields) < 2:
            raise DataFormatError(input_path, "expected two tab-separated sentences", i)
        s1.append(fields[0])
        s2.append(fields[1])
        scores.append(_score(score.strip(), gold_path, i))
    return StsSubset(name, s1, s2, np.asarray(scores))


def read_senteval_dir(directory: str | Path, name: str | None = None) -> StsTask:
    """A SentEval STS12-16 directory (e.g. ``STS12-en-test``) with all its subsets."""
    directory = Path(directory)
    subsets = []
    for input_path in sorted(directory.glob("STS*.input.*.txt")):
        prefix, subset = input_path.name.split(".input.", 1)
        subset = subset[: -len(".txt")]
        gold_path = directory / f"{prefix}.gs.{subset}.txt"
        if not gold_path.is_file():
            raise DataFormatError(input_path, f"no gold-score file {gold_path.name} beside it")
        subsets.append(read_senteval_subset(input_path, gold_path, subset))
    if not subsets:
        raise DataFormatError(directory, "no STS.input.<set>.txt files")
    match = re.match(r"(STS\d\d)", directory.name)
    return StsTask(name or (match.group(1) if match else directory.name), subsets)


def read_sick(path: str | Path) -> StsTask:
    """SICK relatedness (SICK-R) from ``SICK_*.txt``."""
    path = Path(path)
    lines = _lines(path)
    if not lines:
        raise DataFormatError(path, "empty file")
    header = lines[0].split("\t")
    try:
        a, b, r = header.index("sentence_A"), header.index("sentence_B"), header.index("relatedness_score")
    except ValueError:
        raise DataFormatError(path, "header must name sentence_A, sentence_B and relatedness_score", 1) from None
    s1, s2, scores = [], [], []
    for i, line in enumerate(lines[1:], 2):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) <= max(a, b, r):
            raise DataFormatError(path, f"expected at least {max(a, b, r) + 1} tab-separated fields, got {len(fields)}", i)
        s1.append(fields[a])
        s2.append(fields[b])
        scores.append(_score(fields[r], path, i))
    return StsTask("SICK-R", [StsSubset(path.stem, s1, s2, np.asarray(scores))])


def from_rows(rows: Iterable[dict], name: str) -> StsTask:
    """Rows with ``sentence1``, ``sentence2`` and ``score`` columns (a ``datasets.Dataset``, or
    the values of :func:`jaxalign.data.sources.rows`) as one task."""
    columns = {c: [] for c in HUB_COLUMNS}
    for number, row in enumerate(rows, 1):
        missing = [c for c in HUB_COLUMNS if c not in row]
        if missing:
            raise DataFormatError(name, f"row {number} lacks columns {missing} (has {sorted(row)})")
        for c in HUB_COLUMNS:
            columns[c].append(row[c])
    if not columns["score"]:
        raise DataFormatError(name, "no sentence pairs")
    return StsTask(name, [StsSubset(name, columns["sentence1"], columns["sentence2"], np.asarray(columns["score"], float))])


def load_hub(spec: str) -> StsTask:
    """``hf:sentence-transformers/stsb[:test]`` or ``tfds:NAME[:SPLIT]`` (needs a network or cache)."""
    name, _, split = spec.split(":", 1)[1].partition(":")
    return from_rows((row.value for row in sources.rows(spec, split="test")),
                     f"{name.split('/')[-1]}-{split or 'test'}")


def load_sts(spec: str | Path, split: str = "test") -> list[StsTask]:
    """Every STS task at ``spec``: a file, a directory (searched recursively), ``hf:...``, ``tfds:...`` or
    ``builtin:...``.

    ``split`` chooses the STS-B file when a directory holds all three.
    """
    spec_s = str(spec)
    if spec_s.startswith(sources.HUB_SCHEMES):
        return [load_hub(spec_s)]
    if spec_s.startswith("builtin:"):
        return [read_stsb(builtin.path(spec_s, "STS set", (".tsv",)), name=spec_s.split(":", 1)[1])]
    path = Path(spec).expanduser()
    if not path.exists():
        raise DataFormatError(path, "no such file or directory")
    if path.is_file():
        return [_read_file(path)]
    tasks = []
    for sub in sorted([path, *[p for p in path.rglob("*") if p.is_dir()]]):
        if any(sub.glob("STS*.input.*.txt")):
            tasks.append(read_senteval_dir(sub))
        stsb = sub / f"sts-{split}.csv"
        if stsb.is_file():
            tasks.append(read_stsb(stsb))
        for sick in sorted(sub.glob("SICK_test_annotated.txt")):
            tasks.append(read_sick(sick))
    if not tasks:
        raise DataFormatError(
            path, f"no STS data recognised (looked for sts-{split}.csv, STS*.input.*.txt and SICK_test_annotated.txt)"
        )
    return tasks


def _read_file(path: Path) -> StsTask:
    if path.name.startswith("SICK"):
        return read_sick(path)
    if path.suffix in (".csv", ".tsv"):
        return read_stsb(path)
    if ".input." in path.name:
        prefix, subset = path.name.split(".input.", 1)
        subset = subset.removesuffix(".txt")
        return StsTask(subset, [read_senteval_subset(path, path.with_name(f"{prefix}.gs.{subset}.txt"), subset)])
    raise DataFormatError(
        path, "unknown STS format: expected an STS-B .csv/.tsv, a SentEval STS.input.<set>.txt or a SICK_*.txt file"
    )
