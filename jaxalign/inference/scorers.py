"""Scorers: anything that gives a scalar score to each (prompt, completion) token row.

A :class:`Scorer` maps a batch of ``[N, T]`` right-padded token rows (``input_ids``,
``attention_mask``, and ``loss_mask`` = 1 exactly at the completion tokens) to ``[N]`` scores.
Two exist, with the same interface, so best-of-N selection and pairwise evaluation take either:

* :class:`RewardModelScorer`: a trained reward model (:mod:`jaxalign.models.reward`);
* :class:`DPOScorer`: DPO's implicit reward ``β (log π(y|x) - log π_ref(y|x))`` over the
  completion tokens (Rafailov et al. 2023, §5), from a policy and its reference.

:func:`load_scorer` builds one from a command-line spec (``reward:DIR``,
``dpo:POLICY,REF,BETA``); :func:`score_rows` scores token rows in batches of static, bucketed
shape; :func:`check_fits` refuses a scorer whose tokenizer is not the policy's (token ids are
handed over as they are, never re-tokenised).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, Protocol

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from jaxalign.models.decoders import Decoder, load_decoder
from jaxalign.models.reward import load_reward_model, sequence_rewards
from jaxalign.ops.logprobs import completion_logps

ROW_BUCKETS = (16, 32, 64, 128, 256, 512, 1024, 2048, 4096)


class Scorer(Protocol):
    """``scores(batch) -> [N]`` float32 for ``batch`` of ``[N, T]`` ``input_ids``,
    ``attention_mask`` and ``loss_mask``; ``tokenizer`` is the one its ids must come from."""

    name: str
    tokenizer: Any
    vocab_size: int

    def scores(self, batch: dict[str, np.ndarray]) -> np.ndarray: ...


def _bare(decoder: Decoder) -> Decoder:
    """``decoder`` without parameters or tokenizer, for closures that must keep no weights alive."""
    return dataclasses.replace(decoder, params={}, axes={}, tokenizer=None)


@dataclasses.dataclass
class RewardModelScorer:
    """A reward model's ``r(x, y)``: the head on the last real token of prompt + completion."""

    decoder: Decoder
    head: dict
    backbone: dict | None = None  # None: decoder.params
    name: str = "reward"

    def __post_init__(self):
        bare = _bare(self.decoder)
        self._fn = jax.jit(lambda p, h, ids, mask, pad: sequence_rewards(bare, p, h, ids, mask, pad))
        self.tokenizer, self.vocab_size = self.decoder.tokenizer, self.decoder.config.vocab_size

    def scores(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        params = self.decoder.params if self.backbone is None else self.backbone
        pad = np.int32(self.tokenizer.pad_token_id)
        return np.asarray(self._fn(params, self.head, batch["input_ids"], batch["attention_mask"], pad))


@dataclasses.dataclass
class DPOScorer:
    """DPO's implicit reward ``β (Σ_t log π(y_t|x, y_<t) - Σ_t log π_ref(y_t|x, y_<t))``."""

    policy: Decoder
    reference: Decoder
    beta: float
    chunk: int = 64
    name: str = "dpo"

    def __post_init__(self):
        if not self.beta > 0:
            raise ValueError(f"dpo scorer: beta={self.beta}: must be > 0")
        check_fits(self.reference.tokenizer, self.reference.config.vocab_size, self.policy.tokenizer,
                   self.policy.config.vocab_size, f"the reference {self.reference.path}")
        self._fn = jax.jit(self._logratio)
        self.tokenizer, self.vocab_size = self.policy.tokenizer, self.policy.config.vocab_size

    def _logratio(self, policy: dict, reference: dict, batch: dict) -> jax.Array:
        def summed(decoder: Decoder, params: dict) -> jax.Array:
            hidden = decoder.hidden(params, batch["input_ids"], batch["attention_mask"])
            return completion_logps(hidden, decoder.unembed_kernel(params), batch["input_ids"], batch["loss_mask"],
                                    chunk=self.chunk).summed
        return self.beta * (summed(self.policy, policy) - summed(self.reference, reference))

    def scores(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        keys = ("input_ids", "attention_mask", "loss_mask")
        return np.asarray(self._fn(self.policy.params, self.reference.params, {k: batch[k] for k in keys}))


def check_fits(tokenizer, vocab_size: int, policy_tokenizer, policy_vocab_size: int, what: str) -> None:
    """Refuses ``what`` (a scorer, a reference) whose tokenizer or vocabulary is not the policy's."""
    if vocab_size != policy_vocab_size or tokenizer.get_vocab() != policy_tokenizer.get_vocab():
        raise ValueError(f"{what}: its tokenizer ({len(tokenizer)} tokens, vocab_size {vocab_size}) is not the "
                         f"policy's ({len(policy_tokenizer)} tokens, vocab_size {policy_vocab_size}); it scores the "
                         "policy's token ids as they are, so it needs the same tokenizer: train it from the same "
                         "base model")


SCORER_SPECS = "reward:DIR (a reward model, e.g. from objective.name=reward) or dpo:POLICY,REF,BETA"


def load_scorer(spec: str, *, dtype=jnp.float32, num_layers: int | None = None) -> Scorer:
    """The scorer ``spec`` names: ``reward:DIR`` or ``dpo:POLICY,REF,BETA`` (see :data:`SCORER_SPECS`)."""
    kind, _, rest = spec.partition(":")
    if kind == "reward" and rest:
        model = load_reward_model(rest, dtype=dtype, num_layers=num_layers)
        return RewardModelScorer(model.decoder, model.head, name=f"reward:{rest}")
    if kind == "dpo":
        parts = rest.split(",")
        try:
            beta = float(parts[2]) if len(parts) == 3 and all(parts[:2]) else None
        except ValueError:
            beta = None
        if beta is None:
            raise ValueError(f"--scorer {spec!r}: write dpo:POLICY,REF,BETA, e.g. dpo:runs/dpo/hf,SmolLM2-135M-Instruct,0.1")
        load = lambda name: load_decoder(name, dtype=dtype, num_layers=num_layers)
        return DPOScorer(load(parts[0]), load(parts[1]), beta, name=f"dpo:{rest}")
    raise ValueError(f"--scorer {spec!r}: unknown scorer; give {SCORER_SPECS}")


def token_rows(prompts: Sequence[Sequence[int]], completions: Sequence[Sequence[int]], *, pad_id: int,
               length: int) -> dict[str, np.ndarray]:
    """``[N, length]`` right-padded rows of prompt + completion with their masks."""
    n = len(prompts)
    ids = np.full((n, length), pad_id, np.int32)
    mask, loss = np.zeros((n, length), np.int32), np.zeros((n, length), np.int32)
    for i, (p, c) in enumerate(zip(prompts, completions)):
        end = len(p) + len(c)
        ids[i, :len(p)], ids[i, len(p):end] = p, c
        mask[i, :end], loss[i, len(p):end] = 1, 1
    return {"input_ids": ids, "attention_mask": mask, "loss_mask": loss}


def score_rows(scorer: Scorer, prompts: Sequence[Sequence[int]], completions: Sequence[Sequence[int]], *,
               batch_size: int, desc: str | None = None) -> np.ndarray:
    """``[N]`` scores of the rows prompt ``i`` + completion ``i``, in batches of ``batch_size``
    rows (the last one filled by repeating its last row) padded to a power-of-two bucket, so
    one program compiles per bucket. ``desc``: show a progress bar."""
    if len(prompts) != len(completions):
        raise ValueError(f"{len(prompts)} prompts for {len(completions)} completions")
    pad_id = int(scorer.tokenizer.pad_token_id)
    out = []
    starts = range(0, len(prompts), batch_size)
    for start in tqdm(starts, desc=desc, unit="batch", disable=desc is None or len(starts) <= 1):
        p, c = list(prompts[start:start + batch_size]), list(completions[start:start + batch_size])
        n = len(p)
        p, c = p + [p[-1]] * (batch_size - n), c + [c[-1]] * (batch_size - n)
        longest = max(len(a) + len(b) for a, b in zip(p, c))
        length = next((b for b in ROW_BUCKETS if b >= longest), longest)
        out.append(scorer.scores(token_rows(p, c, pad_id=pad_id, length=length))[:n])
    return np.concatenate(out) if out else np.zeros((0,), np.float32)
