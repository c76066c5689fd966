"""Token cache: a data set tokenised once into memory-mapped arrays on disk, reused by later
runs and shared by every process of a host.

One cache is a directory ``<cache_dir>/<key>/``, the key a hash of everything its tokens
depend on (:func:`cache_key`: the tokenizer's fingerprint, the source's identity, the
tokenisation settings), holding

* ``tokens.npy``  int32 ``[total tokens]``: every sequence's ids, concatenated;
* ``offsets.npy`` int64 ``[N * C + 1]``: sequence ``(row i, column c)`` is
  ``tokens[offsets[i * C + c] : offsets[i * C + c + 1]]``, so the lengths of every example
  are known without reading a token (a batch's length bucket comes from them alone);
* ``<name>.npy``  ``[N, ...]``: per-row arrays (pair scores, KTO labels, record indices);
* ``meta.json``: ``N``, ``C`` and what the builder reported (drop counts, ...).

It is opened with ``np.load(mmap_mode="r")``: a process pages in only the rows it reads.

Building is atomic: everything is written into ``<key>.tmp-<pid>/`` and renamed to
``<key>/`` when complete, so a killed build leaves no cache that could be used (and its
leftover is removed by the next build). Processes on one host share the build through a
lock file: the first to take it builds, the others block on it and then open the finished
cache (across hosts, give each host a local ``cache_dir``: each builds once).

Tokenisation runs over chunks of rows, either in this process (the Hugging Face fast
tokenizer already spreads a batch call over its own threads) or in ``workers`` spawned
processes (what helps when the per-row work is Python, as for preference data).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import fcntl
import hashlib
import json
import logging
import multiprocessing
import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

log = logging.getLogger(__name__)

FORMAT = 1  # bump when the layout or a builder's output changes: old caches are then never matched
DEFAULT_DIR = "~/.cache/jaxalign/tokens"


@dataclasses.dataclass
class Chunk:
    """What a tokenise function returns for a chunk of source rows: ``sequences``, ``C`` per
    kept row in row-major order, ``extras`` (per kept row, ``[n, ...]``) and ``counts`` to be
    summed over chunks into ``meta.json`` (e.g. rows dropped by reason)."""

    sequences: Sequence[Sequence[int]]
    extras: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    counts: dict[str, dict[str, int]] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class TokenTable:
    """An opened cache: ``N`` rows of ``C`` token sequences each, memory-mapped."""

    path: Path
    tokens: np.ndarray  # int32 [total tokens], memory-mapped
    offsets: np.ndarray  # int64 [N * C + 1]
    extras: dict[str, np.ndarray]
    meta: dict

    @classmethod
    def open(cls, path: Path) -> "TokenTable":
        meta = json.loads((path / "meta.json").read_text())
        load = lambda name: np.load(path / f"{name}.npy", mmap_mode="r")
        # Offsets are read whole (8 bytes a sequence): lengths then cost no I/O; tokens are paged in on use.
        return cls(path, load("tokens"), np.load(path / "offsets.npy"), {k: load(k) for k in meta["extras"]}, meta)

    @property
    def columns(self) -> int:
        return self.meta["columns"]

    def __len__(self) -> int:
        return self.meta["rows"]

    def sequence(self, row: int, column: int) -> np.ndarray:
        """The int32 ids of one sequence: a view of the memory map (nothing is read until used)."""
        k = row * self.columns + column
        return self.tokens[self.offsets[k] : self.offsets[k + 1]]


def cache_key(**parts) -> str:
    """A short hash of ``parts`` (JSON-serialisable), with the format version."""
    text = json.dumps({"format": FORMAT, **parts}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def tokenizer_fingerprint(tokenizer) -> str:
    """A hash of everything that decides a tokenizer's ids: its whole serialised pipeline
    (vocabulary, merges, normalisation, post-processing) for a fast tokenizer, its vocabulary
    otherwise, its special tokens and its chat template."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    body = backend.to_str() if backend is not None else json.dumps(sorted(tokenizer.get_vocab().items()))
    extra = [type(tokenizer).__name__, getattr(tokenizer, "special_tokens_map", {}),
             getattr(tokenizer, "chat_template", None)]
    return hashlib.sha256((body + json.dumps(extra, sort_keys=True, default=str)).encode()).hexdigest()[:24]


def source_fingerprint(spec) -> list | None:
    """(path, size, mtime) of the local file ``spec`` or of every file under the directory
    ``spec``; None for anything else (built-in, hub, in-memory data: hash their content with
    :func:`content_fingerprint` instead)."""
    path = Path(str(spec)).expanduser()
    if path.is_file():
        files = [path]
    elif path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file())
    else:
        return None
    return [(str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns) for p in files]


def content_fingerprint(rows: Sequence) -> str:
    """A hash of in-memory rows (tuples of strings and numbers, or dataclass records)."""
    h = hashlib.sha256()
    for row in rows:
        h.update(repr(row).encode())
    return h.hexdigest()[:24]


@contextlib.contextmanager
def _locked(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def open_or_build(cache_dir: str | os.PathLike, key: str, read: Callable[[], Sequence],
                  tokenize: Callable[[int, Sequence], Chunk], *, columns: int, meta: dict | None = None,
                  workers: int = 0, chunk_size: int = 10_000, desc: str = "tokenising") -> TokenTable:
    """The cache ``key`` under ``cache_dir``, built first if absent.

    ``read()`` gives the source rows (called only when building); ``tokenize(start, rows)`` maps
    the chunk of them that begins at row ``start`` to a :class:`Chunk` of ``columns`` sequences
    per kept row. With ``workers > 0`` the chunks are tokenised in that many spawned processes,
    so ``tokenize`` must pickle (a module-level function, or a ``functools.partial`` of one).
    """
    root = Path(cache_dir).expanduser()
    final = root / key
    if not final.is_dir():
        with _locked(root / f"{key}.lock"):
            if not final.is_dir():  # another process may have built it while we waited
                _build(root, key, read(), tokenize, columns, meta or {}, workers, chunk_size, desc)
    else:
        log.info("token cache %s", final)
    return TokenTable.open(final)


def _build(root: Path, key: str, rows: Sequence, tokenize, columns: int, meta: dict, workers: int, chunk_size: int,
           desc: str) -> None:
    for stale in root.glob(f"{key}.tmp-*"):  # left by a killed build: we hold the lock, so no one writes there
        shutil.rmtree(stale, ignore_errors=True)
    tmp = root / f"{key}.tmp-{os.getpid()}"
    tmp.mkdir(parents=True)
    try:
        lengths, extras, counts = [], {}, {}
        with open(tmp / "tokens.bin", "wb") as out, _chunk_results(rows, tokenize, workers, chunk_size) as results:
            bar = tqdm(total=len(rows), desc=desc, unit="row", dynamic_ncols=True, mininterval=1.0)
            for n_in, chunk in results:
                if len(chunk.sequences) % columns:
                    raise ValueError(f"a chunk returned {len(chunk.sequences)} sequences, not a multiple of {columns}")
                out.write(b"".join(np.asarray(s, np.int32).tobytes() for s in chunk.sequences))
                lengths.append(np.fromiter((len(s) for s in chunk.sequences), np.int64, len(chunk.sequences)))
                for name, value in chunk.extras.items():
                    extras.setdefault(name, []).append(np.asarray(value))
                for group, values in chunk.counts.items():
                    for k, v in values.items():
                        counts.setdefault(group, {})[k] = counts.get(group, {}).get(k, 0) + v
                bar.update(n_in)
            bar.close()
        lengths = np.concatenate(lengths) if lengths else np.zeros(0, np.int64)
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        # The tokens were streamed to a raw file (their count unknown until the end): add the .npy header.
        _raw_to_npy(tmp / "tokens.bin", tmp / "tokens.npy", int(offsets[-1]))
        np.save(tmp / "offsets.npy", offsets)
        for name, parts in extras.items():
            np.save(tmp / f"{name}.npy", np.concatenate(parts))
        rows_kept = len(lengths) // columns
        info = {**meta, **counts, "rows": rows_kept, "columns": columns, "source_rows": len(rows),
                "extras": sorted(extras)}
        (tmp / "meta.json").write_text(json.dumps(info, indent=1, sort_keys=True, default=str))
        os.rename(tmp, root / key)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("token cache %s: %d rows, %d tokens", root / key, rows_kept, int(offsets[-1]))


@contextlib.contextmanager
def _chunk_results(rows: Sequence, tokenize, workers: int, chunk_size: int):
    """(rows in, Chunk) per chunk of ``rows``, in order."""
    starts = range(0, len(rows), chunk_size)
    parts = [rows[s : s + chunk_size] for s in starts]
    if workers <= 0:
        yield ((len(p), tokenize(s, p)) for s, p in zip(starts, parts))
        return
    # Spawned, not forked: the parent has JAX's threads running, which fork does not copy safely.
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        yield zip(map(len, parts), pool.map(tokenize, starts, parts))


def _raw_to_npy(raw: Path, npy: Path, count: int) -> None:
    """Prepends a ``.npy`` header for ``int32 [count]`` to the raw file ``raw``, as ``npy``."""
    with open(npy, "wb") as out:
        np.lib.format.write_array_header_1_0(out, {"descr": "<i4", "fortran_order": False, "shape": (count,)})
        with open(raw, "rb") as src:
            shutil.copyfileobj(src, out, 1 << 24)
    raw.unlink()
