"""STS evaluation: cosine similarity of embeddings vs gold scores, Spearman x 100.

For multi-subset tasks (STS12-16) three aggregates are reported, as SimCSE's evaluator does:
``all`` (Spearman over the concatenated subsets, SimCSE's headline setting), ``wmean``
(subset Spearmans weighted by subset size) and ``mean``.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

from jaxalign.data.sts import StsTask

EmbedFn = Callable[[list[str]], np.ndarray]


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity of [n, d] arrays, computed in float64."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return (a * b).sum(-1) / np.maximum(np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1), 1e-12)


def spearman100(predicted: np.ndarray, gold: np.ndarray) -> float:
    return float(spearmanr(predicted, gold).statistic) * 100.0


@dataclasses.dataclass
class TaskResult:
    name: str
    subsets: dict[str, tuple[int, float]]  # subset -> (pairs, spearman x 100)
    all: float
    wmean: float
    mean: float

    def to_dict(self) -> dict:
        return {"subsets": {k: {"n": n, "spearman": s} for k, (n, s) in self.subsets.items()},
                "all": self.all, "wmean": self.wmean, "mean": self.mean}


def evaluate_task(embed: EmbedFn, task: StsTask) -> TaskResult:
    """Embeds each distinct sentence of ``task`` once and scores every subset."""
    sentences = sorted({s for sub in task.subsets for s in (*sub.sentences1, *sub.sentences2)})
    row = {s: i for i, s in enumerate(sentences)}
    emb = embed(sentences)
    preds, golds, subsets = [], [], {}
    for sub in task.subsets:
        sims = cosine(emb[[row[s] for s in sub.sentences1]], emb[[row[s] for s in sub.sentences2]])
        subsets[sub.name] = (len(sub), spearman100(sims, sub.scores))
        preds.append(sims)
        golds.append(sub.scores)
    sizes = np.array([n for n, _ in subsets.values()], float)
    scores = np.array([s for _, s in subsets.values()])
    return TaskResult(
        task.name, subsets, all=spearman100(np.concatenate(preds), np.concatenate(golds)),
        wmean=float((sizes * scores).sum() / sizes.sum()), mean=float(scores.mean()),
    )


def evaluate_sts(embed: EmbedFn, tasks: Sequence[StsTask]) -> list[TaskResult]:
    return [evaluate_task(embed, t) for t in tasks]


class StsEvaluator:
    """Periodic STS evaluation of an encoder being trained: Spearman x 100 of each task's ``all``,
    averaged over ``tasks``. ``embedder(sentences, params=...)`` embeds with the parameters being
    trained: an :class:`Embedder`, or a decoder's prompt-based embedder."""

    def __init__(self, embedder: Callable[..., np.ndarray], tasks: Sequence[StsTask]):
        self.tasks = list(tasks)
        self.embedder = embedder

    def __call__(self, encoder_params) -> float:
        results = evaluate_sts(lambda s: self.embedder(s, params=encoder_params), self.tasks)
        return average(results)


def average(results: Sequence[TaskResult], key: str = "all") -> float:
    return float(np.mean([getattr(r, key) for r in results]))


def render_table(results: Sequence[TaskResult], title: str = "STS (Spearman x 100)"):
    """A rich table: one row per task with pairs, all, wmean, mean; then the average of ``all``."""
    from rich.table import Table

    table = Table(title=title)
    for col in ("task", "pairs", "all", "wmean", "mean"):
        table.add_column(col, justify="left" if col == "task" else "right")
    for r in results:
        n = sum(n for n, _ in r.subsets.values())
        table.add_row(r.name, str(n), f"{r.all:.2f}", f"{r.wmean:.2f}", f"{r.mean:.2f}")
    if len(results) > 1:
        table.add_row("avg", "", f"{average(results, 'all'):.2f}", f"{average(results, 'wmean'):.2f}", f"{average(results, 'mean'):.2f}", style="bold")
    return table


def write_json(path: str | Path, results: Sequence[TaskResult], meta: dict) -> None:
    payload = {**meta, "tasks": {r.name: r.to_dict() for r in results}, "avg_all": average(results, "all")}
    Path(path).write_text(json.dumps(payload, indent=2))
