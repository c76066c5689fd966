"""Tokenised preference examples (:class:`PreferenceExample`) -> NumPy batches of static, bucketed shape (see
:func:`collate_preference`), the same for every process of a run."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from jaxalign.inference.embed import bucket_length


@dataclasses.dataclass(frozen=True, eq=False)
class PreferenceExample:
    """One tokenised example: int32 ``prompt`` ids and one int32 array per completion column.

    Paired: (chosen, rejected); negatives: (rejected, sample 1..K); unpaired (KTO): one
    completion, its KL column being made at collation from another example of the batch.
    ``label`` is set for unpaired data; ``index`` is the record's position in the list given
    to :func:`~jaxalign.data.preference.tokens.tokenize_preference`.
    """

    prompt: np.ndarray
    completions: tuple[np.ndarray, ...]
    label: bool | None = None
    index: int = -1

    @property
    def length(self) -> int:
        """Tokens in this example's longest sequence (prompt + its longest completion)."""
        return len(self.prompt) + max(len(c) for c in self.completions)


def pad_token_id(tokenizer) -> int:
    """The id that pads a batch: the tokenizer's pad token, else its EOS, else 0 (every pad is masked out)."""
    for attr in ("pad_token_id", "eos_token_id"):
        value = getattr(tokenizer, attr, None)
        if value is not None:
            return int(value)
    return 0


def completion_columns(examples: Sequence[PreferenceExample], max_length: int) -> list[list[np.ndarray]]:
    """Each example's completion columns (``C`` int32 arrays, after its prompt), checked: the
    example's own completions, or for unpaired (KTO) data its completion and its KL completion
    (example ``i - 1``'s completion of the global batch, cut to fit ``max_length`` after
    example ``i``'s prompt). Raises ValueError on an empty or mixed batch, unequal column
    counts, or a sequence longer than ``max_length``."""
    if not examples:
        raise ValueError("cannot collate an empty batch")
    unpaired = examples[0].label is not None
    if any((ex.label is not None) != unpaired for ex in examples):
        raise ValueError("a batch mixes unpaired (labelled) and paired examples")
    if unpaired:
        if len(examples) < 2:
            raise ValueError("unpaired (KTO) batches need >= 2 examples: the KL completion of each "
                             "example is another example's completion")
        columns = [[ex.completions[0], examples[i - 1].completions[0][: max_length - len(ex.prompt)]]
                   for i, ex in enumerate(examples)]
    else:
        columns = [list(ex.completions) for ex in examples]
    C = len(columns[0])
    if any(len(c) != C for c in columns):
        raise ValueError(f"examples have different numbers of completion columns ({sorted({len(c) for c in columns})})")
    longest = max(len(ex.prompt) + len(c) for ex, cols in zip(examples, columns) for c in cols)
    if longest > max_length:
        raise ValueError(f"an example is {longest} tokens, longer than max_length={max_length}; tokenise with the "
                         "same max_length you collate with")
    return columns


def collate_preference(examples: Sequence[PreferenceExample], *, buckets: Sequence[int], max_length: int,
                       pad_id: int, local: slice = slice(None)) -> dict[str, np.ndarray]:
    """A global batch -> NumPy arrays of static, bucketed shape for the rows ``local`` selects
    (this process's slice; default: all). Everything static is decided from the whole global
    batch, so every process builds the same shapes and the same KL completions.

    * ``input_ids`` int32 ``[B, C, T]``: prompt + completion of each column, right-padded
      with ``pad_id``. Paired: C = 2 (chosen, rejected). SFT: C = 1. Negatives: C = 1 + K (rejected,
      sample 1..K). Unpaired (KTO): C = 2 (completion, KL completion), where the KL
      completion of example ``i`` is the completion of example ``i - 1`` of the global batch
      (``(i - 1) mod B``: a roll by one, exactly TRL's ``KL_completion_ids``) after example
      ``i``'s own prompt, cut on the right to ``max_length``; plus ``label`` bool ``[B]``.
    * ``attention_mask`` int32 ``[B, C, T]``: 1 on real tokens (the pad id may equal EOS).
    * ``loss_mask`` int32 ``[B, C, T]``: 1 exactly at the completion tokens, i.e. the tokens
      whose log-probabilities count. The log-prob of the token at position ``t`` comes from
      the logits at ``t - 1``: ``logp[t] = log_softmax(logits[t - 1])[input_ids[t]]``, so
      shift the logits by one (or the mask by one, to index logits). Every prompt has at
      least one token, so ``loss_mask[..., 0] == 0``.

    ``T = bucket_length(longest sequence of the global batch, buckets, max_length)``, so a step compiles once
    per bucket. Batch first: shard axis 0 and reshape to ``[B * C, T]`` for one forward of
    every column together.
    """
    columns = completion_columns(examples, max_length)
    C = len(columns[0])
    unpaired = examples[0].label is not None
    longest = max(len(ex.prompt) + len(c) for ex, cols in zip(examples, columns) for c in cols)
    T = bucket_length(longest, buckets, max_length)
    examples, columns = examples[local], columns[local]
    B = len(examples)
    input_ids = np.full((B, C, T), pad_id, np.int32)
    attention_mask = np.zeros((B, C, T), np.int32)
    loss_mask = np.zeros((B, C, T), np.int32)
    for b, (ex, cols) in enumerate(zip(examples, columns)):
        p = len(ex.prompt)
        for c, comp in enumerate(cols):
            n = p + len(comp)
            input_ids[b, c, :p] = ex.prompt
            input_ids[b, c, p:n] = comp
            attention_mask[b, c, :n] = 1
            loss_mask[b, c, p:n] = 1
    batch = {"input_ids": input_ids, "attention_mask": attention_mask, "loss_mask": loss_mask}
    if unpaired:
        batch["label"] = np.asarray([ex.label for ex in examples], bool)
    return batch
