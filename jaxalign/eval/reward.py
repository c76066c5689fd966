"""Pairwise evaluation of a scorer on held-out preference pairs: accuracy and mean margin.

Any :class:`~jaxalign.inference.scorers.Scorer` (a reward model, DPO's implicit reward) scores
the chosen and the rejected completion of each pair, tokenised as training tokenises them
(:func:`~jaxalign.data.preference.tokens.tokenize_preference`); accuracy is the share of pairs
with ``r(chosen) > r(rejected)`` (ties count as wrong, as TRL's ``RewardTrainer`` accuracy).
:class:`RewardEvaluator` runs it during reward-model training, :func:`evaluate_scorer` on a
scorer loaded by name (``jaxalign eval reward``).
"""

from __future__ import annotations

import numpy as np

from jaxalign.data.preference import load_preference
from jaxalign.data.preference.tokens import TokenizedPreference, tokenize_preference
from jaxalign.inference.scorers import RewardModelScorer, Scorer, score_rows
from jaxalign.models.decoders import Decoder


def pair_rewards(scorer: Scorer, tokens: TokenizedPreference, *, batch_size: int, desc: str | None = None) -> np.ndarray:
    """``[N, 2]`` (chosen, rejected) scores of every tokenised pair."""
    examples = tokens.examples
    prompts = [ex.prompt for ex in examples for _ in range(2)]
    completions = [c for ex in examples for c in ex.completions[:2]]
    return score_rows(scorer, prompts, completions, batch_size=batch_size, desc=desc).reshape(-1, 2)


def pairwise_summary(rewards: np.ndarray) -> dict[str, float]:
    """``accuracy`` ``mean(r_w > r_l)``, ``margin`` ``mean(r_w - r_l)`` and the mean chosen and
    rejected scores of ``[N, 2]`` (chosen, rejected) scores."""
    chosen, rejected = rewards[:, 0].astype(np.float64), rewards[:, 1].astype(np.float64)
    return {"accuracy": float(np.mean(chosen > rejected)), "margin": float(np.mean(chosen - rejected)),
            "rewards/chosen": float(np.mean(chosen)), "rewards/rejected": float(np.mean(rejected))}


class RewardEvaluator:
    """A reward model's pairwise accuracy and margin on held-out pairs during training."""

    def __init__(self, decoder: Decoder, tokens: TokenizedPreference, *, batch_size: int):
        self.decoder, self.tokens, self.batch_size = decoder, tokens, batch_size
        self.scorer: RewardModelScorer | None = None

    def __call__(self, backbone: dict, head: dict) -> dict[str, float]:
        if self.scorer is None:  # compiled once, then given each evaluation's parameters
            self.scorer = RewardModelScorer(self.decoder, head, backbone)
        self.scorer.backbone, self.scorer.head = backbone, head
        summary = pairwise_summary(pair_rewards(self.scorer, self.tokens, batch_size=self.batch_size, desc="eval"))
        return {f"eval/{k}": v for k, v in summary.items()}


def evaluate_scorer(scorer: Scorer, data: str, *, max_examples: int | None = None, skip_examples: int = 0,
                    max_length: int = 1024, max_prompt_length: int | None = None,
                    max_completion_length: int | None = None, chat_template: str | None = None,
                    batch_size: int = 16) -> dict:
    """Pairwise accuracy and margin of ``scorer`` on every usable pair of ``data`` (see
    :func:`pairwise_summary`), with ``pairs``, ``dropped`` and ``truncated`` counts. A pair
    whose prompt leaves no room for a completion within ``max_length`` is dropped."""
    if batch_size < 1:
        raise ValueError(f"--batch-size={batch_size}: must be >= 1")
    records = load_preference(data, "paired", max_examples, skip_examples)
    tokens = tokenize_preference(scorer.tokenizer, records, max_length=max_length,
                                 max_prompt_length=max_prompt_length, max_completion_length=max_completion_length,
                                 chat_template=chat_template, long_prompts="drop")
    summary: dict = pairwise_summary(pair_rewards(scorer, tokens, batch_size=batch_size, desc="scoring"))
    summary.update(pairs=len(tokens.examples), dropped=dict(tokens.drops), truncated=dict(tokens.truncated))
    return summary
