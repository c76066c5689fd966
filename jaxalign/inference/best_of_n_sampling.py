"""Best-of-N sampling with a scorer, its measured KL and win rate, cached so a long run resumes.

For every prompt, :func:`run_best_of_n` samples ``M >= N`` completions from the policy plus one
more, the *reference sample* (an independent draw, never a candidate), scores all ``M + 1`` with
a :class:`~jaxalign.inference.scorers.Scorer` in batches, and keeps the best of the first ``N``.
The ``M`` samples estimate the base distribution ``p`` (their empirical distribution); with
``M = N`` every prompt whose samples all differ gets the same exact KL, so a larger ``M``
resolves how peaked the policy is. Each
prompt's scores are appended to a JSONL cache as soon as its batch is scored; a rerun with the
same settings skips the prompts already there (samples are seeded by prompt batch, so the
resumed run draws what the uninterrupted one would have).

:func:`summarise` reports per prompt and overall: the reward of the kept sample against the
mean of the ``N``; the measured win rate of the kept sample against the reference sample (ties
half); and, for the empirical distribution of the ``N`` samples of the ``M`` samples (identical completions merged, equal
rewards grouped), the exact ``KL(π_BoN || p)``, win rate and expected best-of-N reward
(:mod:`jaxalign.inference.best_of_n`), the first two beside their bounds ``log N - (N-1)/N``
and ``N/(N+1)``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from jaxalign.inference import best_of_n as bon
from jaxalign.inference.generate import generate
from jaxalign.inference.scorers import Scorer, check_fits, score_rows
from jaxalign.models.decoders import Decoder


def check_best_of_n(policy: Decoder, scorer: Scorer, prompts: Sequence, n: int, m: int | None = None) -> None:
    """Refuses N < 2, M < N, an empty prompt set and a scorer that does not read the policy's
    token ids, before anything is compiled."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise ValueError(f"--best-of {n!r}: N must be an integer >= 2 (N = 1 is plain sampling)")
    if m is not None and m < n:
        raise ValueError(f"--num-samples {m}: the samples per prompt must be >= N = {n} (the best of the first N "
                         "is kept; all M estimate the base distribution)")
    if len(prompts) == 0:
        raise ValueError("best-of-N: the prompt set is empty; give --prompt, or --data with usable records")
    check_fits(scorer.tokenizer, scorer.vocab_size, policy.tokenizer, policy.config.vocab_size,
               f"--scorer {scorer.name}")


def _read_cache(path: Path, settings: dict) -> dict[int, dict]:
    if not path.is_file():
        return {}
    lines = path.read_text(encoding="utf-8").splitlines()
    if not lines or json.loads(lines[0]).get("settings") != settings:
        raise ValueError(f"--cache {path}: written by a run with other settings (model, scorer, N, sampling, "
                         "prompts or batch size); delete it, or pass another --cache")
    rows = {}
    for line in lines[1:]:
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            break  # the last line of a killed run: its prompts are scored again
        rows[row["index"]] = row
    return rows


def run_best_of_n(
    policy: Decoder,
    scorer: Scorer,
    prompts: Sequence[str] | Sequence[Sequence[int]],
    *,
    n: int,
    m: int | None = None,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int = 0,
    seed: int = 0,
    chat: bool = False,
    batch_size: int = 32,
    cache: str | Path | None = None,
    settings: dict | None = None,
) -> list[dict]:
    """One record per prompt, in order: ``rewards`` of the ``M`` samples (default ``M = N``),
    ``reference_reward``, ``copies`` (the index of each sample's first identical sample), the
    ``best`` text (of the first ``N``) and the ``reference`` text. ``batch_size``: sequences per
    decoding and scoring batch (at least ``M + 1``: one prompt's samples). ``cache``: the JSONL file of scored prompts (resumed when it
    exists); ``settings``: what identifies the run in it, besides N, sampling and prompts."""
    check_best_of_n(policy, scorer, prompts, n, m)
    m = n if m is None else m
    if batch_size < m + 1:
        raise ValueError(f"--batch-size={batch_size}: must be >= M + 1 = {m + 1} (one prompt's samples and its "
                         "reference sample)")
    sampling = {"max_new_tokens": max_new_tokens, "temperature": temperature, "top_p": top_p, "top_k": top_k}
    listed = json.dumps([p if isinstance(p, str) else list(map(int, p)) for p in prompts])
    settings = {**(settings or {}), **sampling, "n": n, "m": m, "seed": seed, "chat": chat, "batch_size": batch_size,
                "prompts": hashlib.sha256(listed.encode()).hexdigest()}
    path = Path(cache) if cache else None
    done = _read_cache(path, settings) if path else {}
    per_call = batch_size // (m + 1)
    starts = [s for s in range(0, len(prompts), per_call) if any(i not in done for i in range(s, s + per_call)
                                                                 if i < len(prompts))]
    if path and not done:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"settings": settings}) + "\n", encoding="utf-8")
    bar = tqdm(total=len(prompts), initial=len(prompts) - sum(min(per_call, len(prompts) - s) for s in starts),
               desc=f"best-of-{n}", unit="prompt")
    for start in starts:
        chunk = list(prompts[start:start + per_call])
        out = generate(policy, None, [p for p in chunk for _ in range(m + 1)], seed=seed + start, chat=chat,
                       **sampling)
        rewards = score_rows(scorer, out.prompt_token_ids, out.token_ids, batch_size=batch_size).reshape(-1, m + 1)
        rows = []
        for i, r in enumerate(rewards):
            first = i * (m + 1)
            samples = [tuple(t) for t in out.token_ids[first:first + m]]
            best = int(np.argmax(r[:n]))
            rows.append({"index": start + i, "rewards": r[:m].tolist(), "reference_reward": float(r[m]),
                         "copies": [samples.index(s) for s in samples],
                         "best": out.texts[first + best], "reference": out.texts[first + m]})
        done.update((row["index"], row) for row in rows)
        if path:
            with open(path, "a", encoding="utf-8") as f:
                f.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
        bar.update(len(chunk))
    bar.close()
    return [done[i] for i in range(len(prompts))]


def prompt_summary(row: dict, n: int) -> dict:
    """One prompt's figures from its record (see the module docstring): ``best_reward`` of the
    kept sample, ``mean_reward`` over all ``M`` samples (the policy's expected reward)."""
    rewards = np.asarray(row["rewards"], np.float64)
    distinct = sorted(set(row["copies"]))
    counts = np.bincount(row["copies"], minlength=len(rewards))[distinct]
    values = rewards[distinct]  # identical completions: one output, the first copy's score
    best, ref = rewards[:n].max(), row["reference_reward"]
    return {"index": row["index"], "best_reward": float(best), "mean_reward": float(rewards.mean()),
            "gain": float(best - rewards.mean()), "reference_reward": ref,
            "win_vs_reference": 1.0 if best > ref else 0.5 if best == ref else 0.0,
            "kl_exact": bon.best_of_n_kl(values, counts, n), "win_rate_exact": bon.best_of_n_win_rate(values, counts, n),
            "expected_best_reward": bon.best_of_n_reward(values, counts, n), "samples": len(rewards),
            "distinct_samples": len(distinct), "best": row["best"]}


def summarise(rows: Sequence[dict], n: int) -> dict:
    """``{"per_prompt": [...], "overall": {...}}``: each prompt's :func:`prompt_summary` and
    their means, with the two bounds (labelled as bounds)."""
    per_prompt = [prompt_summary(row, n) for row in rows]
    mean = lambda key: float(np.mean([p[key] for p in per_prompt]))
    overall = {"prompts": len(per_prompt), "n": n, **{k: mean(k) for k in (
        "best_reward", "mean_reward", "gain", "reference_reward", "win_vs_reference", "kl_exact", "win_rate_exact",
        "expected_best_reward", "samples", "distinct_samples")}, "kl_bound": bon.kl_bound(n), "win_rate_bound": bon.win_rate_bound(n)}
    return {"per_prompt": per_prompt, "overall": overall}
