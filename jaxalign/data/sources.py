"""Rows of data wherever they are kept, for every data kind: one reader of files, the hub and TFDS.

``spec`` is

* a ``.jsonl``/``.jsonl.gz`` file (one JSON object per line; blank lines skipped), a
  ``.json``/``.json.gz`` file (a JSON array of records, ``{"data": [...]}``, one record, or
  JSON lines under a .json name) or a ``.parquet`` file;
* a directory: every such file under it (hidden ones aside), sorted by path;
* ``hf:NAME[:SPLIT]``: ``datasets.load_dataset(NAME, split=SPLIT)`` (a hub name, or a local
  directory of data files ``datasets`` can read);
* ``tfds:NAME[:SPLIT]``: ``tfds.load(NAME, split=SPLIT)``, bytes decoded to text;
* ``builtin:NAME``: a set that ships with jaxalign (:mod:`jaxalign.data.builtin`).

Each row comes as a :class:`Row` that knows where it is, so the reader of a data kind can
fail naming the file and line (the row of a Parquet file, JSON array or data set).
"""

from __future__ import annotations

import dataclasses
import gzip
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn

import numpy as np

from jaxalign.data import builtin
from jaxalign.data.errors import DataFormatError, decode_utf8

FILE_SUFFIXES = (".jsonl", ".jsonl.gz", ".json", ".json.gz", ".parquet")
HUB_SCHEMES = ("hf:", "tfds:")


@dataclasses.dataclass(frozen=True)
class Row:
    """One row as read (``value``: a dict for JSON objects, Parquet, hub and TFDS rows) and where:
    ``origin`` (a file, or the spec of a hub or built-in set) and ``number``, 1-based, a line
    of the file when ``is_line`` (JSON lines), else the row's position among the records."""

    value: Any
    origin: str
    number: int
    is_line: bool

    @property
    def where(self) -> str:
        """``file:line`` or ``file row n``."""
        return f"{self.origin}:{self.number}" if self.is_line else f"{self.origin} row {self.number}"

    def fail(self, message: str) -> NoReturn:
        """Raises a :class:`DataFormatError` naming this row."""
        if self.is_line:
            raise DataFormatError(self.origin, message, self.number)
        raise DataFormatError(self.origin, f"row {self.number}: {message}")


def rows(spec, *, what: str = "data", split: str = "train") -> Iterator[Row]:
    """Every row of ``spec`` (see the module docstring), in order, read as they are asked for.

    ``what`` names the data in errors (``"no such preference file or directory"``); ``split``
    is the hub or TFDS split when ``spec`` names none.
    """
    spec = str(spec)
    if spec.startswith(HUB_SCHEMES):
        yield from _hub_rows(spec, split)
    elif spec.startswith("builtin:"):
        yield from _file_rows(builtin.path(spec, f"{what} set", FILE_SUFFIXES), spec, what)
    else:
        for path in _files(Path(spec).expanduser(), what):
            yield from _file_rows(path, str(path), what)


def _files(path: Path, what: str) -> list[Path]:
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise DataFormatError(path, f"no such {what} file or directory")
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.name.endswith(FILE_SUFFIXES)
                   and not any(part.startswith(".") for part in p.relative_to(path).parts))
    if not files:
        raise DataFormatError(path, f"no {what} files ({', '.join(FILE_SUFFIXES)}) in this directory")
    return files


def _file_rows(path: Path, origin: str, what: str) -> Iterator[Row]:
    for suffixes, read in _READERS:
        if path.name.endswith(suffixes):
            return read(path, origin)
    raise DataFormatError(origin, f"unknown {what} file type; expected one of {', '.join(FILE_SUFFIXES)}")


def _open_bytes(path: Path):
    """The file's (decompressed) bytes: decoded by the caller, line by line, so that a binary or
    non-UTF-8 file fails naming the line and byte offset (:func:`decode_utf8`)."""
    if path.name.endswith(".gz"):
        return gzip.open(path, "rb")
    return path.open("rb")


def _jsonl_rows(path: Path, origin: str) -> Iterator[Row]:
    with _open_bytes(path) as f:
        offset = 0
        for line_no, raw in enumerate(f, 1):
            line = decode_utf8(raw, origin, line_no, offset)
            offset += len(raw)
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataFormatError(origin, f"not valid JSON ({e.msg}, column {e.colno}); expected one JSON "
                                              "object per line", line_no) from None
            yield Row(value, origin, line_no, True)


def _json_rows(path: Path, origin: str) -> Iterator[Row]:
    """A JSON array of records (``{"data": [...]}`` too), one record, or JSON lines under a .json name."""
    with _open_bytes(path) as f:
        text = decode_utf8(f.read(), origin)
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        yield from _jsonl_rows(path, origin)
        return
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        data = data["data"]
    if isinstance(data, dict):  # a single record
        data = [data]
    if not isinstance(data, list):
        raise DataFormatError(origin, f"expected a JSON array of records, got {type(data).__name__}")
    for number, value in enumerate(data, 1):
        yield Row(value, origin, number, False)


def _parquet_rows(path: Path, origin: str) -> Iterator[Row]:
    try:
        import pyarrow.parquet as pq
    except ImportError:  # pragma: no cover - pyarrow comes with datasets
        raise DataFormatError(origin, "reading Parquet needs pyarrow (pip install pyarrow)") from None
    try:
        table = pq.read_table(path)
    except Exception as e:
        raise DataFormatError(origin, f"not a readable Parquet file ({type(e).__name__}: {e})") from None
    for number, value in enumerate(table.to_pylist(), 1):
        yield Row(value, origin, number, False)


_READERS = (((".jsonl", ".jsonl.gz"), _jsonl_rows), ((".json", ".json.gz"), _json_rows), ((".parquet",), _parquet_rows))


def _hub_rows(spec: str, split: str) -> Iterator[Row]:
    scheme, _, rest = spec.partition(":")
    name, _, named_split = rest.partition(":")
    split = named_split or split
    try:
        if scheme == "hf":
            import datasets

            values = datasets.load_dataset(name, split=split)
        else:
            import tensorflow_datasets as tfds

            values = [_decode(ex) for ex in tfds.as_numpy(tfds.load(name, split=split))]
    except Exception as e:
        raise DataFormatError(spec, f"cannot load ({type(e).__name__}: {e}); pass a local path instead") from None
    for number, value in enumerate(values, 1):
        yield Row(value, spec, number, False)


def _decode(value):
    """A TFDS example as Python values: bytes as UTF-8 text, arrays as lists, scalars unboxed."""
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, np.ndarray):
        return [_decode(v) for v in value.tolist()]
    if isinstance(value, dict):
        return {k: _decode(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_decode(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value
