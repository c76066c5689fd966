"""Best-of-N over a discrete distribution, exactly: its distribution, KL to the base, reward and win rate.

Best-of-N draws ``N`` outputs i.i.d. from a base distribution ``p`` and keeps the one of highest
reward. Over a discrete ``p`` (outputs that can be listed, or the empirical distribution of
drawn samples) with the distinct rewards sorted ``r_(1) < ... < r_(G)`` and ``F_j`` the base
mass of rewards ``<= r_(j)``, the kept output's reward is ``r_(j)`` with probability
``π_BoN(j) = F_j^N - F_{j-1}^N``; outputs tied in reward form one group, and the kept one is
a member drawn with probability proportional to ``p`` (as a uniformly random pick among tied
maxima, or the first drawn, gives), so ``π_BoN / p`` is constant within a group and

    KL(π_BoN || p) = Σ_j π_BoN(j) log(π_BoN(j) / p(j))   (over the groups).

The widely quoted ``log N - (N-1)/N`` (Stiennon et al. 2020, "Learning to summarize from human
feedback") is only an upper bound, reached in the limit of continuous, distinct
rewards (Beirami et al. 2024, "Theoretical guarantees on the best-of-n alignment policy",
arXiv 2401.01879; Yang et al. 2024, "Asymptotics of language model alignment", arXiv
2404.01730). Likewise the win rate of best-of-N against one base sample is at most
``N / (N + 1)`` (Beirami et al.). Pure NumPy functions in float64.
"""

from __future__ import annotations

import math

import numpy as np


def kl_bound(n: int) -> float:
    """``log N - (N-1)/N``: the upper bound on ``KL(π_BoN || p)``, not its value."""
    _check_n(n)
    return math.log(n) - (n - 1) / n


def win_rate_bound(n: int) -> float:
    """``N / (N + 1)``: the upper bound on best-of-N's win rate against one base sample."""
    _check_n(n)
    return n / (n + 1)


def _check_n(n: int) -> None:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"N={n!r}: best-of-N needs an integer N >= 1")


def reward_groups(rewards, probs) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(distinct rewards ascending [G], their base masses [G], group of each output [K])`` of
    outputs with ``rewards [K]`` and base probabilities ``probs [K]`` (normalised here; outputs
    of equal reward are one group)."""
    r, p = np.asarray(rewards, np.float64).reshape(-1), np.asarray(probs, np.float64).reshape(-1)
    if r.shape != p.shape or r.size == 0:
        raise ValueError(f"rewards {r.shape} and probs {p.shape} must be non-empty and of one shape")
    if not (np.all(np.isfinite(r)) and np.all(p >= 0) and p.sum() > 0):
        raise ValueError("rewards must be finite and probs >= 0 with a positive sum")
    values, group = np.unique(r, return_inverse=True)
    mass = np.bincount(group, weights=p / p.sum(), minlength=len(values))
    return values, mass, group


def group_probs(mass: np.ndarray, n: int) -> np.ndarray:
    """``π_BoN`` of each reward group ``[G]`` (ascending) of base masses ``mass``:
    ``F_j^N - F_{j-1}^N`` with ``F`` the cumulative mass."""
    _check_n(n)
    cdf = np.minimum(np.cumsum(mass), 1.0)
    cdf[-1] = 1.0
    return np.diff(cdf ** n, prepend=0.0)


def best_of_n_probs(rewards, probs, n: int) -> np.ndarray:
    """``[K]`` probability that best-of-N keeps each output (within a tie group ∝ ``probs``)."""
    _, mass, group = reward_groups(rewards, probs)
    p = np.asarray(probs, np.float64).reshape(-1)
    p = p / p.sum()
    pi = group_probs(mass, n)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(p > 0, pi[group] * p / mass[group], 0.0)


def best_of_n_kl(rewards, probs, n: int) -> float:
    """``KL(π_BoN || p)`` in nats, exactly, over the reward groups (see the module docstring)."""
    _, mass, _ = reward_groups(rewards, probs)
    pi = group_probs(mass, n)
    kept = pi > 0
    return float(np.sum(pi[kept] * (np.log(pi[kept]) - np.log(mass[kept]))))


def best_of_n_reward(rewards, probs, n: int) -> float:
    """``E_{π_BoN}[r]``: the expected reward of the kept output."""
    values, mass, _ = reward_groups(rewards, probs)
    return float(np.sum(group_probs(mass, n) * values))


def best_of_n_win_rate(rewards, probs, n: int) -> float:
    """``P(r(Y_BoN) > r(Y)) + P(r(Y_BoN) = r(Y)) / 2`` with ``Y ~ p`` independent: the win rate
    against one base sample, ties counted half (``1/2`` for ``N = 1``)."""
    _, mass, _ = reward_groups(rewards, probs)
    below = np.cumsum(mass) - mass
    return float(np.sum(group_probs(mass, n) * (below + mass / 2)))
