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


# ------------------------------------------------------------------ sampling with a scorer, end to end


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny random policy, a reward model on its vocabulary and one on another vocabulary."""
    import jax
    from test_decoder_parity import save_tiny_decoder

    from jaxalign.models.decoders import load_decoder
    from jaxalign.models.reward import export_reward_model, init_score_head

    root = tmp_path_factory.mktemp("bon")
    out = {}
    for name, vocab in (("policy", 128), ("other", 100)):
        save_tiny_decoder(root / name, "LlamaForCausalLM", tie_word_embeddings=True, vocab_size=vocab)
        decoder = load_decoder(root / name)
        head = init_score_head(jax.random.PRNGKey(0), decoder.config.hidden_size, std=1.0)
        out[name] = decoder
        out[f"{name}_rm"] = export_reward_model(decoder, jax.device_get(decoder.params), head, root / f"{name}_rm")
    return out


PROMPTS = ["w1 w2", "w3", "w4 w5 w6"]
SAMPLING = {"n": 3, "max_new_tokens": 4, "temperature": 1.0, "batch_size": 8}  # two prompts per batch


def no_generate(*args, **kwargs):
    raise AssertionError("sampled (and compiled) although nothing was left to do")


def test_best_of_n_reports_and_resumes(tiny, tmp_path, monkeypatch):
    from jaxalign.inference import best_of_n_sampling as sampling
    from jaxalign.inference.scorers import load_scorer

    scorer = load_scorer(f"reward:{tiny['policy_rm']}")
    cache = tmp_path / "scores.jsonl"
    rows = sampling.run_best_of_n(tiny["policy"], scorer, PROMPTS, cache=cache, **SAMPLING)
    assert [r["index"] for r in rows] == [0, 1, 2] and all(len(r["rewards"]) == 3 for r in rows)
    report = sampling.summarise(rows, 3)
    for row, p in zip(rows, report["per_prompt"]):
        assert p["best_reward"] == max(row["rewards"]) >= p["mean_reward"]
        distinct = sorted(set(row["copies"]))
        counts = [row["copies"].count(i) for i in distinct]
        assert p["kl_exact"] == pytest.approx(bon.best_of_n_kl(np.asarray(row["rewards"])[distinct], counts, 3))
        assert p["kl_exact"] <= bon.kl_bound(3) + 1e-12
    overall = report["overall"]
    assert overall["kl_bound"] == pytest.approx(math.log(3) - 2 / 3) and overall["win_rate_bound"] == 0.75
    assert overall["prompts"] == 3 and 0 <= overall["win_vs_reference"] <= 1

    monkeypatch.setattr(sampling, "generate", no_generate)  # everything cached: nothing to sample
    assert sampling.run_best_of_n(tiny["policy"], scorer, PROMPTS, cache=cache, **SAMPLING) == rows
    monkeypatch.undo()
    lines = cache.read_text().splitlines()
    cache.write_text("\n".join(lines[:3]) + "\n" + lines[3][:10])  # killed mid-write of the second batch
    again = sampling.run_best_of_n(tiny["policy"], scorer, PROMPTS, cache=cache, **SAMPLING)
    assert [r["best"] for r in again] == [r["best"] for r in rows]  # the same seeds: the same samples
    np.testing.assert_allclose([r["rewards"] for r in again], [r["rewards"] for r in rows], atol=1e-5)
    with pytest.raises(ValueError, match="other settings"):
        sampling.run_best_of_n(tiny["policy"], scorer, PROMPTS, cache=cache, **{**SAMPLING, "n": 2})
    # M = 5 samples estimate the base distribution; the best is of the first N = 2
    more = sampling.run_best_of_n(tiny["policy"], scorer, PROMPTS, **{**SAMPLING, "n": 2, "m": 5})
    p = sampling.summarise(more, 2)["per_prompt"][0]
    assert len(more[0]["rewards"]) == 5 and p["samples"] == 5 and p["best_reward"] == max(more[0]["rewards"][:2])
    assert p["kl_exact"] <= bon.kl_bound(2) + 1e-12


def test_bad_input_is_refused_before_compiling(tiny, tmp_path, monkeypatch, capsys):
    from jaxalign.cli import main
    from jaxalign.inference import best_of_n_sampling as sampling
    from jaxalign.inference.scorers import load_scorer

    monkeypatch.setattr(sampling, "generate", no_generate)
    scorer = load_scorer(f"reward:{tiny['policy_rm']}")
    run = lambda scorer, prompts, **kw: sampling.run_best_of_n(tiny["policy"], scorer, prompts, **{**SAMPLING, **kw})
    with pytest.raises(ValueError, match="N must be an integer >= 2"):
        run(scorer, PROMPTS, n=1)
    with pytest.raises(ValueError, match="must be >= N = 3"):
        run(scorer, PROMPTS, m=2)
    with pytest.raises(ValueError, match="the prompt set is empty"):
        run(scorer, [])
    with pytest.raises(ValueError, match="is not the policy's"):
        run(load_scorer(f"reward:{tiny['other_rm']}"), PROMPTS)
    base = ["generate", "--model", str(tiny["policy"].path), "--prompt", "w1"]
    for argv, message in [(["--best-of", "1", "--scorer", f"reward:{tiny['policy_rm']}"], "N must be >= 2"),
                          (["--best-of", "4"], "--best-of needs --scorer"),
                          (["--best-of", "4", "--scorer", f"reward:{tiny['other_rm']}"], "is not the policy's")]:
        assert main([*base, *argv]) == 2
        assert message in capsys.readouterr().err
    report = tmp_path / "bon.json"
    monkeypatch.undo()
    assert main([*base, "--best-of", "2", "--scorer", f"reward:{tiny['policy_rm']}", "--max-new-tokens", "3",
                 "--output", str(report)]) == 0
    assert json.loads(report.read_text())["overall"]["kl_bound"] == pytest.approx(math.log(2) - 0.5)
    assert (tmp_path / "bon.json.scores.jsonl").is_file()
