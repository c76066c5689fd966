"""DefSent+'s entry space: one embedding per dictionary entry, from the encoder (no gradient).

The official code (github.com/ryuliuxiaodong/DefSent-Plus, ``GenerateEntryEmbeddings.py``,
``ICA-transform.py``; Liu 2024, arXiv 2405.16153) embeds every definition with the encoder
in eval mode and averages each entry's definitions: ``ac`` the raw ``[CLS]`` hidden state
(not the pooler output), ``amp`` the masked mean of the last hidden states. The optional
isotropic variant whitens the ``[N, D]`` matrix with FastICA.
"""

from __future__ import annotations

import numpy as np

from jaxalign.data.definitions import Dictionary
from jaxalign.inference.embed import Embedder
from jaxalign.ops.pooling import PoolingConfig

ENTRY_POOLING = {"ac": PoolingConfig(mode="cls"), "amp": PoolingConfig(mode="mean")}


def entry_means(vectors: np.ndarray, labels: np.ndarray, num_entries: int) -> np.ndarray:
    """``[M, D]`` definition vectors, ``[M]`` entry labels -> ``[N, D]`` per-entry means (float64)."""
    sums = np.zeros((num_entries, vectors.shape[1]), np.float64)
    np.add.at(sums, labels, vectors.astype(np.float64))
    counts = np.bincount(labels, minlength=num_entries)
    return sums / np.maximum(counts, 1)[:, None]


def isotropic(entries: np.ndarray, *, scale: float = 100.0, max_iter: int = 1000, tol: float = 1e-4,
              seed: int = 42) -> np.ndarray:
    """``scale * FastICA(StandardScaler(E))`` with ``D`` unit-variance components, ``[N, D]`` ->
    ``[N, D]``: the official ICA transform's settings (logcosh, ``random_state=42``).

    FastICA finds at most ``min(N, D)`` components, and the head needs ``D``: fewer entries than
    channels is refused rather than silently giving a narrower matrix.
    """
    # scikit-learn imports slowly, and only this option needs it.
    from sklearn.decomposition import FastICA
    from sklearn.preprocessing import StandardScaler

    n, d = entries.shape
    if n < d:
        raise ValueError(f"objective.isotropic: FastICA needs at least as many entries as embedding channels; the "
                         f"dictionary has {n} entries for {d} channels. Use a larger dictionary or isotropic=false")
    x = StandardScaler().fit_transform(np.asarray(entries, np.float64))
    ica = FastICA(n_components=d, max_iter=max_iter, tol=tol, whiten="unit-variance", fun="logcosh", random_state=seed)
    return scale * ica.fit_transform(x)


def entry_embeddings(embedder: Embedder, dictionary: Dictionary, *, params=None) -> np.ndarray:
    """``[N, D]`` entry embeddings: ``embedder`` (pooling ``ENTRY_POOLING[...]``) over every
    definition, averaged per entry; ``params`` overrides the embedder's encoder parameters."""
    vectors = embedder(list(dictionary.definitions), params=params, progress=True, desc="entries")
    return entry_means(vectors, dictionary.labels, len(dictionary.entries))
