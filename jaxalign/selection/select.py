"""``jaxalign select``: score a data set's rows, choose a subset, write it as jsonl with its scores.

Methods:

* ``deita`` (Liu et al., ICLR 2024): every (instruction, response) turn of a row scored for
  complexity ``c_t`` and quality ``q_t`` by a scorer LM (:mod:`.deita`), the row's score
  ``sum_t c_t * q_t``, rows visited by descending score through the diversity filter
  (:func:`~.diversity.repr_filter`, cosine similarity above ``tau`` rejected) until the wanted
  number is kept;
* ``entropy``: the leave-one-out entropy change of :mod:`.entropy` (a labelled
  reconstruction of Khera et al. 2024), the most ``typical`` (default) or ``atypical`` rows;
* ``random``: a seeded uniform sample, the baseline.

A row's conversation for the embeddings is rendered with the Vicuna v1.1 template, as Deita's
``embed_datasets.py`` renders it; a decoder embeds it by the last real token's final hidden
state (Deita's choice), an encoder by its own pooling. Scores are appended to
``<output>.scores.jsonl`` as they are computed and embeddings saved to
``<output>.embeddings.npy``, so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from jaxalign.data import sources
from jaxalign.data.errors import DataFormatError
from jaxalign.data.preference.records import PreferenceRecord, hh_messages, parse_row
from jaxalign.inference.embed import Embedder
from jaxalign.models.decoders import Decoder
from jaxalign.models.registry import Encoder
from jaxalign.ops.pooling import PoolingConfig, pool
from jaxalign.selection.deita import DeitaScorer
from jaxalign.selection.diversity import repr_filter
from jaxalign.selection.entropy import entropy_change

METHODS = ("deita", "entropy", "random")
KINDS = {"preference": "paired", "sft": "sft"}
VICUNA_SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. The assistant gives "
                 "helpful, detailed, and polite answers to the user's questions.")
CHUNK = 32  # rows scored between two appends to the score cache


@dataclasses.dataclass(frozen=True)
class Selection:
    """What :func:`select` chose: ``rows`` (indices into the data, in selection order) and every
    row's ``scores`` (``score`` and per-turn ``complexity``/``quality`` for deita, ``entropy_change``)."""

    rows: np.ndarray
    scores: list[dict]
    num_rows: int


def check_options(method: str, fraction: float, tau: float, prefer: str) -> None:
    if method not in METHODS:
        raise ValueError(f"--method {method}: choose one of {', '.join(METHODS)}")
    if not 0 < fraction <= 1:
        raise ValueError(f"--fraction {fraction}: the share of rows to keep must be in (0, 1]")
    if not 0 < tau < 1:
        raise ValueError(f"--tau {tau}: the cosine-similarity threshold must be in (0, 1); Deita uses 0.9")
    if prefer not in ("typical", "atypical"):
        raise ValueError(f"--prefer {prefer}: choose typical or atypical")


def read_rows(spec, kind: str, max_examples: int | None = None) -> list[tuple[sources.Row, PreferenceRecord]]:
    """The rows of ``spec`` with their first record as ``kind`` (``preference`` or ``sft``)."""
    if kind not in KINDS:
        raise ValueError(f"--kind {kind}: choose {' or '.join(KINDS)}")
    out = []
    for row in sources.rows(spec, what=f"{kind} data"):
        if max_examples is not None and len(out) >= max_examples:
            break
        out.append((row, parse_row(row, KINDS[kind])[0]))
    if not out:
        raise DataFormatError(spec, "empty: no rows to select from")
    return out


def _content(message: dict) -> str:
    return str(message.get("content", "")).strip()


def turns(record: PreferenceRecord) -> list[tuple[str, str]]:
    """(instruction, response) of every assistant turn: the prompt's earlier turns and the
    chosen (or sft) completion as the last one. HH-RLHF transcripts are split into turns."""
    completion = record.chosen if record.kind == "paired" else record.completion
    if record.conversational:
        messages = [*record.prompt, *completion]
    else:
        messages = hh_messages(record.prompt)
        if messages is None:
            return [(record.prompt.strip(), completion.strip())]
        messages = [*messages, {"role": "assistant", "content": completion}]
    out, instruction = [], ""
    for m in messages:
        if m["role"] == "user":
            instruction = _content(m)
        elif m["role"] == "assistant":
            out.append((instruction, _content(m)))
    return out or [("", "")]


def conversation_text(record: PreferenceRecord) -> str:
    """The Vicuna v1.1 rendering of the row's conversation (system, ``USER:``/``ASSISTANT:``)."""
    parts = [VICUNA_SYSTEM]
    for instruction, response in turns(record):
        parts.append(f"USER: {instruction} ASSISTANT: {response}</s>")
    return " ".join(parts)


def _load_cache(path: Path) -> dict[int, dict]:
    if not path.is_file():
        return {}
    done = {}
    for line in path.read_text().splitlines():
        if line.strip():
            entry = json.loads(line)
            done[entry.pop("row")] = entry
    return done


def deita_scores(scorer: DeitaScorer, records: Sequence[PreferenceRecord], cache: Path | None,
                 progress: bool = True) -> list[dict]:
    """Per row ``{"complexity": [c_t], "quality": [q_t], "score": sum_t c_t q_t}``, computed
    ``CHUNK`` rows at a time and appended to ``cache`` (rows already there are not scored again)."""
    done = _load_cache(cache) if cache else {}
    todo = [i for i in range(len(records)) if i not in done]
    bar = tqdm(total=len(records), initial=len(records) - len(todo), desc="deita scores", unit="row",
               disable=not progress)
    for start in range(0, len(todo), CHUNK):
        rows = todo[start:start + CHUNK]
        pairs = [(r, t) for r in rows for t in turns(records[r])]
        c = scorer.complexity([t[0] for _, t in pairs])
        q = scorer.quality([t[0] for _, t in pairs], [t[1] for _, t in pairs])
        fresh = {r: {"complexity": [], "quality": []} for r in rows}
        for (r, _), ci, qi in zip(pairs, c, q):
            fresh[r]["complexity"].append(float(ci))
            fresh[r]["quality"].append(float(qi))
        for r, entry in fresh.items():
            entry["score"] = float(np.dot(entry["complexity"], entry["quality"]))
        if cache:
            with cache.open("a") as f:
                f.writelines(json.dumps({"row": r, **e}) + "\n" for r, e in fresh.items())
        done.update(fresh)
        bar.update(len(rows))
    bar.close()
    return [done[i] for i in range(len(records))]


def conversation_embedder(model: Decoder | Encoder, *, batch_size: int = 8, max_length: int = 2048,
                          mesh=None) -> Callable[[list[str]], np.ndarray]:
    """Texts -> ``[N, D]``: a decoder's final hidden state at the last real token (left padding,
    as Deita embeds with a decoder LM), or an encoder with its own pooling."""
    if isinstance(model, Encoder):
        embedder = Embedder(model, batch_size=batch_size, max_length=max_length, mesh=mesh)
    else:
        last = PoolingConfig(mode="last")
        encode = lambda params, ids, mask, _: pool((model.hidden(params, ids, mask),), mask, last)
        embedder = Embedder(model, last, batch_size=batch_size, max_length=max_length, mesh=mesh, encode=encode,
                            padding_side="left", buckets=(16, 32, 64, 128, 256, 512, 1024, 2048))
    return lambda texts: embedder(texts, progress=True, desc="embeddings")


def cached_embeddings(embed: Callable[[list[str]], np.ndarray], records: Sequence[PreferenceRecord],
                      cache: Path | None) -> np.ndarray:
    """``[N, D]`` embeddings of the rows' conversations, saved to (and read back from) ``cache``."""
    if cache and cache.is_file():
        e = np.load(cache)
        if len(e) == len(records):
            return e
    e = np.asarray(embed([conversation_text(r) for r in records]), np.float32)
    if cache:
        np.save(cache, e)
    return e


def select(records: Sequence[PreferenceRecord], *, method: str = "deita", fraction: float = 0.25,
           scorer: DeitaScorer | None = None, embed: Callable[[list[str]], np.ndarray] | None = None,
           tau: float = 0.9, prefer: str = "typical", seed: int = 0, cache: str | Path | None = None,
           progress: bool = True) -> Selection:
    """Chooses ``ceil(fraction * N)`` of ``records`` by ``method`` (see the module docstring).
    ``cache``: the output path whose ``.scores.jsonl`` / ``.embeddings.npy`` siblings hold
    the scores and embeddings computed so far."""
    check_options(method, fraction, tau, prefer)
    n = len(records)
    count = max(1, int(np.ceil(fraction * n)))
    base = Path(cache) if cache else None
    if base is not None:
        base.parent.mkdir(parents=True, exist_ok=True)
    sibling = lambda suffix: base.with_name(base.name + suffix) if base else None
    if method == "random":
        rows = np.random.default_rng(seed).permutation(n)[:count]
        return Selection(rows, [{} for _ in range(n)], n)
    if embed is None:
        raise ValueError(f"--method {method} needs embeddings: give an embedder")
    embeddings = cached_embeddings(embed, records, sibling(".embeddings.npy"))
    if method == "entropy":
        delta = entropy_change(embeddings, seed=seed)
        order = np.argsort(delta if prefer == "typical" else -delta, kind="stable")
        return Selection(order[:count], [{"entropy_change": float(d)} for d in delta], n)
    if scorer is None:
        raise ValueError("--method deita needs a scorer model")
    scores = deita_scores(scorer, records, sibling(".scores.jsonl"), progress)
    order = np.argsort([-s["score"] for s in scores], kind="stable")
    return Selection(repr_filter(embeddings, order, tau=tau, count=count), scores, n)


def write_selection(path: str | Path, rows: Sequence[sources.Row], selection: Selection) -> Path:
    """The selected rows as they were read (JSON objects), each with a ``selection`` field of its
    scores and rank; written to a temporary file and renamed, so a reader never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w") as f:
        for rank, i in enumerate(selection.rows):
            value = rows[i].value
            f.write(json.dumps({**value, "selection": {"rank": rank, "row": int(i), **selection.scores[i]}}) + "\n")
    tmp.replace(path)
    return path


__all__ = ["METHODS", "Selection", "check_options", "conversation_embedder", "conversation_text", "deita_scores", "read_rows", "select",
           "turns", "write_selection"]
