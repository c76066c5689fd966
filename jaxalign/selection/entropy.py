"""Entropy-based sampling after Khera, Ghosh and Dutta, "Efficient Alignment of Large Language
Models via Data Sampling" (arXiv 2411.10545). **A reconstruction, ours**: the paper's code and
full method are not public; its abstract and the related patent describe embedding each
example, a two-component Gaussian mixture, and each example's leave-one-out change of the data
set's entropy, from which the subset is chosen. Filled in here: the embeddings projected by PCA
to at most ``dims`` dimensions (a full-covariance mixture needs more points than dimensions), the
plug-in entropy ``H = -(1/n) sum_i log p(x_i)`` under the mixture fitted once, so that

    Delta_i = H(D) - H(D \\ i) = -(H(D) + log p(x_i)) / (n - 1),

a ranking by log-density: removing an atypical example (low density) lowers the entropy
estimate, so the largest changes are the most atypical examples and the smallest the most
typical. Which end to keep is the caller's choice.
"""

from __future__ import annotations

import numpy as np


def entropy_change(embeddings: np.ndarray, *, components: int = 2, dims: int = 16, seed: int = 0) -> np.ndarray:
    """``[N, D]`` embeddings -> ``[N]`` leave-one-out entropy changes ``Delta_i`` (float64)."""
    from sklearn.decomposition import PCA  # scikit-learn imports slowly; only here
    from sklearn.mixture import GaussianMixture

    x = np.asarray(embeddings, np.float64)
    n = len(x)
    if n < components + 2:
        raise ValueError(f"entropy sampling fits a {components}-component mixture: needs more than {components + 1} "
                         f"examples, got {n}")
    k = min(dims, x.shape[1], n - components - 1)
    z = PCA(n_components=k, random_state=seed).fit_transform(x)
    gmm = GaussianMixture(n_components=components, covariance_type="full", random_state=seed, reg_covar=1e-4).fit(z)
    log_p = gmm.score_samples(z)
    h = -log_p.mean()
    return -(h + log_p) / (n - 1)


__all__ = ["entropy_change"]
