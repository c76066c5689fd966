"""Semantic textual similarity (STS) data sets: readers for the formats in common use.

* STS Benchmark original release, ``sts-{train,dev,test}.csv``: tab-separated, no quoting,
  ``genre, file, year, id, score, sentence1, sentence2[, extra ...]``.
* SentEval's STS12-16 layout: ``STS.input.<set>.txt`` (``s1<TAB>s2``) beside ``STS.gs.<set>.txt``
  (one score per line; blank = unscored pair, skipped); STS16 uses ``STS2016.`` prefixes.
* SICK, ``SICK_test_annotated.txt`` (header, ``pair_ID, sentence_A, sentence_B, relatedness_score, ...``).
* Hugging Face datasets with ``sentence1``/``sentence2``/``score`` columns (``hf:NAME[:split]``).
* ``builtin:sts-mini``: a small STS set written for jaxalign, used by the quickstart.
"""

from __future__ import annotations

import dataclasses
import math
import re
from importlib import resources
from pathlib import Path

import numpy as np

from jaxalign.data.errors import DataFormatError

BUILTIN = {"builtin:sts-mini": "sts_mini.tsv"}


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


def from_hf_dataset(dataset, name: str) -> StsTask:
    """A ``datasets.Dataset`` with ``sentence1``, ``sentence2`` and ``score`` columns."""
    missing = {"sentence1", "sentence2", "score"} - set(dataset.column_names)
    if missing:
        raise DataFormatError(name, f"dataset lacks columns {sorted(missing)} (has {dataset.column_names})")
    return StsTask(name, [StsSubset(name, list(dataset["sentence1"]), list(dataset["sentence2"]), np.asarray(dataset["score"], float))])


def load_hf(spec: str) -> StsTask:
    """``hf:sentence-transformers/stsb[:test]`` via ``datasets.load_dataset`` (needs a network or cache)."""
    import datasets

    repo, _, split = spec[len("hf:") :].partition(":")
    split = split or "test"
    try:
        ds = datasets.load_dataset(repo, split=split)
    except Exception as e:
        raise DataFormatError(spec, f"cannot load from the Hugging Face hub ({type(e).__name__}: {e}); pass a local path instead") from None
    return from_hf_dataset(ds, f"{repo.split('/')[-1]}-{split}")


def builtin_path(spec: str) -> Path:
    return Path(str(resources.files("jaxalign.data.builtin").joinpath(BUILTIN[spec])))


def load_sts(spec: str | Path, split: str = "test") -> list[StsTask]:
    """Every STS task at ``spec``: a file, a directory (searched recursively), ``hf:...`` or ``builtin:...``.

    ``split`` chooses the STS-B file when a directory holds all three.
    """
    spec_s = str(spec)
    if spec_s.startswith("hf:"):
        return [load_hf(spec_s)]
    if spec_s in BUILTIN:
        return [read_stsb(builtin_path(spec_s), name=spec_s.split(":", 1)[1])]
    if spec_s.startswith("builtin:"):
        raise DataFormatError(spec_s, f"unknown built-in data set; available: {', '.join(BUILTIN)}")
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
