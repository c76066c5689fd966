"""Deita's score-first, diversity-aware selection, the "Repr Filter" (Liu et al., ICLR 2024,
arXiv 2312.15685; ``src/deita/selection/filter/base.py``): walk the pool from the best score
down and keep an example unless its cosine similarity to one already kept exceeds ``tau``
(the code's criterion; the paper words it as a distance), until ``count`` are kept."""

from __future__ import annotations

import numpy as np


def repr_filter(embeddings: np.ndarray, order: np.ndarray, *, tau: float = 0.9, count: int | None = None) -> np.ndarray:
    """Indices kept, in the order visited.

    ``embeddings`` [N, D] (L2-normalised here), ``order`` [N] the visiting order (e.g. by
    descending score), ``count`` the number to keep (default: as many as pass). The reference's
    default batch size of 1: each candidate is compared with every example kept before it.
    """
    if not 0 < tau < 1:
        raise ValueError(f"tau={tau}: the cosine-similarity threshold must be in (0, 1); Deita uses 0.9")
    x = np.asarray(embeddings, np.float64)
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    limit = len(order) if count is None else count
    kept = np.empty((min(limit, len(order)), x.shape[1]))
    out: list[int] = []
    for i in order:
        if len(out) == limit:
            break
        if out and float((kept[: len(out)] @ x[i]).max()) > tau:
            continue
        kept[len(out)] = x[i]
        out.append(int(i))
    return np.asarray(out, np.int64)


__all__ = ["repr_filter"]
