"""Preference records -> token ids, once: TRL 1.x ``DPOTrainer``/``KTOTrainer`` ids (see
:class:`PreferenceTokenizer`), each example a :class:`PreferenceExample` of int32 arrays for
:class:`~jaxalign.data.stream.BatchStream`, collated by
:func:`~jaxalign.data.preference.collate.collate_preference`."""

from __future__ import annotations

import dataclasses
import logging
from collections import Counter
from collections.abc import Sequence
from typing import Literal

import numpy as np

from jaxalign.data.preference.collate import PreferenceExample, collate_preference, pad_token_id
from jaxalign.data.preference.records import PreferenceRecord, Text, common_prefix_length, hh_messages

log = logging.getLogger(__name__)


@dataclasses.dataclass
class TokenizedPreference:
    """Tokenised preference data: ``examples`` for a :class:`~jaxalign.data.stream.BatchStream`.

    ``columns`` names the completion columns a batch of these examples collates to (``C``);
    ``drops`` counts the records left out by reason; ``truncated`` counts truncations.
    """

    examples: list[PreferenceExample]
    kind: str
    columns: tuple[str, ...]
    max_length: int
    pad_id: int
    drops: dict[str, int]
    truncated: dict[str, int]

    def __len__(self) -> int:
        return len(self.examples)

    def collate(self, examples: Sequence[PreferenceExample], buckets: Sequence[int], local: slice = slice(None)) -> dict:
        return collate_preference(examples, buckets=buckets, max_length=self.max_length, pad_id=self.pad_id,
                                  local=local)


def _as_conversation(prompt: str, completion: str) -> tuple[list, list]:
    messages = hh_messages(prompt) or [{"role": "user", "content": prompt.strip()}]
    return messages, [{"role": "assistant", "content": completion.strip()}]


def _is_empty(completion: Text) -> bool:
    if isinstance(completion, str):
        return not completion.strip()
    return not any(m["content"].strip() for m in completion)


class PreferenceTokenizer:
    """Tokenises :class:`PreferenceRecord` lists once into :class:`TokenizedPreference`.

    Token ids are TRL 1.x's (``DPOTrainer``/``KTOTrainer._prepare_dataset``):

    * text records: the tokenizer's EOS *text* is appended to each completion that does not
      already end with it; ``prompt`` and ``prompt + completion`` are tokenised with the
      tokenizer's special tokens (its BOS, if it adds one).
    * conversational records: the prompt is rendered with the chat template and
      ``add_generation_prompt=True`` (``continue_final_message`` when its last message is the
      assistant's), ``prompt + completion`` as the whole conversation; no EOS is added (the
      template's end-of-turn ends the completion, as in TRL), no special tokens either (the
      template writes its own).
    * the completion's tokens are those of ``prompt + completion`` after the longest common
      prefix of the tokenised prompt and every tokenised ``prompt + completion`` of the
      example (usually the whole prompt; less when tokens merge across the boundary or a
      template renders the prompt differently alone, and then the prompt is cut there).

    Truncation (TRL's classic ``max_prompt_length``/``max_completion_length``, then
    ``max_length`` exactly as TRL 1.x's ``keep_start`` collator), in this order:

    1. ``max_prompt_length``: a longer prompt keeps its *end* (its last tokens, which lead
       into the completion); a BOS the tokenizer itself prepends is kept in front.
    2. ``max_completion_length``: each completion keeps its *start* (truncated on the right;
       a truncated completion loses its EOS, as in TRL: it did not end there).
    3. ``max_length``: the prompt is never cut at this step (all columns share it); each
       completion is cut on the right to ``max_length - len(prompt)`` tokens.

    Without ``max_prompt_length``, a prompt of ``max_length`` tokens or more would leave no
    completion token. ``long_prompts="error"`` makes that an error naming the record;
    ``"drop"`` drops such records (TRL 1.x does, silently), counted as ``prompt too long``,
    for data whose length limits no one has chosen for it (evaluation on someone's held-out
    set). Either way ``max_prompt_length`` below ``max_length`` truncates such prompts instead.

    Dropped, counted per reason in ``drops`` and logged once: ``identical`` (paired records
    whose chosen equals their rejected completion; they carry no preference), ``empty
    completion`` (a completion that is empty or whitespace, before EOS or template),
    ``empty prompt`` (no prompt token would remain to predict the first completion token
    from), ``too few samples`` (negatives with fewer than ``num_samples`` samples), ``prompt
    too long`` (with ``long_prompts="drop"``, above). Dropping every record is an error that
    says which lengths to raise.

    ``chat_template``: ``None`` tokenises text records as text and renders conversational ones
    with the tokenizer's chat template (TRL); ``"auto"`` renders *every* record as a
    conversation with the tokenizer's template (text records are converted: HH transcripts
    to their user/assistant turns, any other prompt to one user message, the completion to
    one assistant message), which is how an instruct model should see plain-text data; any
    other string is a Jinja chat template used like ``"auto"``.

    ``num_samples`` (negatives): how many of each record's ``samples`` become columns
    (C = 1 + K: rejected, then sample 1..K); default: the fewest any record has.
    """

    def __init__(self, tokenizer, *, max_length: int, max_prompt_length: int | None = None,
                 max_completion_length: int | None = None, chat_template: str | None = None,
                 num_samples: int | None = None, long_prompts: Literal["error", "drop"] = "error"):
        if not isinstance(max_length, int) or max_length < 2:
            raise ValueError(f"max_length={max_length!r}: must be an int >= 2 (a prompt token and a completion token)")
        if max_prompt_length is not None and not 1 <= max_prompt_length < max_length:
            raise ValueError(f"max_prompt_length={max_prompt_length}: must be >= 1 and < max_length={max_length}, "
                             "leaving room for the completion")
        if max_completion_length is not None and max_completion_length < 1:
            raise ValueError(f"max_completion_length={max_completion_length}: must be >= 1")
        if num_samples is not None and num_samples < 0:
            raise ValueError(f"num_samples={num_samples}: must be >= 0")
        if long_prompts not in ("error", "drop"):
            raise ValueError(f"long_prompts={long_prompts!r}: choose 'error' or 'drop'")
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.max_prompt_length = max_prompt_length
        self.max_completion_length = max_completion_length
        self.chat_template = chat_template
        self.num_samples = num_samples
        self.long_prompts = long_prompts
        self.pad_id = pad_token_id(tokenizer)
        bos = getattr(tokenizer, "bos_token_id", None)
        self._adds_bos = bos is not None and tokenizer("a")["input_ids"][:1] == [bos]

    # -- rendering -----------------------------------------------------------------------------

    def _template(self, index: int, record: PreferenceRecord) -> str | None:
        """The template to render with, or None for plain text; raises if one is needed but absent."""
        if self.chat_template not in (None, "auto"):
            return self.chat_template
        if not record.conversational and self.chat_template is None:
            return None
        if getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.chat_template
        why = ("is conversational" if record.conversational
               else "is to be rendered as a conversation (chat_template='auto')")
        raise ValueError(f"record {index} ({record.source}) {why}, but the tokenizer has no chat template; "
                         "pass chat_template=<a Jinja template>, or use a tokenizer that has one")

    def _render(self, template: str, messages: list, *, prompt: bool) -> str:
        kwargs = {}
        if prompt:
            last = messages[-1]["role"]
            kwargs = {"continue_final_message": True} if last == "assistant" else {"add_generation_prompt": True}
        return self.tokenizer.apply_chat_template(messages, chat_template=template, tokenize=False, **kwargs)

    def _texts(self, index: int, record: PreferenceRecord, completions: Sequence[Text]) -> tuple[str, list[str], bool]:
        """(prompt text, prompt + completion texts, add_special_tokens)."""
        template = self._template(index, record)
        if template is None:
            eos = self.tokenizer.eos_token or ""
            fulls = [record.prompt + c + ("" if c.endswith(eos) else eos) for c in completions]
            return record.prompt, fulls, True
        prompt = record.prompt
        if not record.conversational:
            conv = [_as_conversation(record.prompt, c) for c in completions]
            prompt, completions = conv[0][0], [c for _, c in conv]
        fulls = [self._render(template, prompt + list(c), prompt=False) for c in completions]
        return self._render(template, prompt, prompt=True), fulls, False

    # -- tokenisation --------------------------------------------------------------------------

    def __call__(self, records: Sequence[PreferenceRecord]) -> TokenizedPreference:
        if not records:
            raise ValueError("no preference records to tokenise")
        kinds = {r.kind for r in records}
        if len(kinds) != 1:
            raise ValueError(f"records of several kinds ({', '.join(sorted(kinds))}); tokenise one kind at a time")
        kind = kinds.pop()
        k = self.num_samples
        if kind == "negatives" and k is None:
            k = min(len(r.samples) for r in records)
        drops: Counter = Counter()
        kept: list[tuple[int, PreferenceRecord, list]] = []
        for i, r in enumerate(records):
            completions = list(r.completions)
            if kind == "paired" and r.chosen == r.rejected:
                drops["identical"] += 1
                continue
            if kind == "negatives":
                if len(r.samples) < k:
                    drops["too few samples"] += 1
                    continue
                completions = completions[: 1 + k]
            if any(_is_empty(c) for c in completions):
                drops["empty completion"] += 1
                continue
            kept.append((i, r, completions))

        # Render every text first, then tokenise in two batched calls (with / without special tokens).
        rendered = [self._texts(i, r, comps) for i, r, comps in kept]
        ids: dict[bool, dict[str, list[int]]] = {}
        for special in (True, False):
            texts = sorted({t for p, fulls, s in rendered if s == special for t in (p, *fulls)})
            if texts:
                out = self.tokenizer(texts, add_special_tokens=special, padding=False, truncation=False)["input_ids"]
                ids[special] = dict(zip(texts, out))

        examples, too_long, truncated, merged = [], [], Counter(), 0
        for (i, r, _), (p_text, fulls, special) in zip(kept, rendered):
            table = ids[special]
            prompt_ids = table[p_text]
            full_ids = [table[f] for f in fulls]
            n = min(common_prefix_length(prompt_ids, f) for f in full_ids)
            merged += n < len(prompt_ids)
            prompt, comps = prompt_ids[:n], [f[n:] for f in full_ids]
            if not prompt:
                drops["empty prompt"] += 1
                continue
            if any(not c for c in comps):
                drops["empty completion"] += 1
                continue
            mpl = self.max_prompt_length
            if mpl is not None and len(prompt) > mpl:
                keep_bos = self._adds_bos and special and prompt[0] == self.tokenizer.bos_token_id
                prompt = prompt[:1] + prompt[len(prompt) - (mpl - 1):] if keep_bos else prompt[-mpl:]
                prompt = prompt[:mpl]
                truncated["prompt to max_prompt_length"] += 1
            if self.max_completion_length is not None:
                cut = sum(len(c) > self.max_completion_length for c in comps)
                truncated["completion to max_completion_length"] += cut
                comps = [c[: self.max_completion_length] for c in comps]
            if len(prompt) >= self.max_length:
                too_long.append((i, r, len(prompt)))
                continue
            room = self.max_length - len(prompt)
            truncated["completion to max_length"] += sum(len(c) > room for c in comps)
            comps = [c[:room] for c in comps]
            examples.append(PreferenceExample(np.asarray(prompt, np.int32),
                                              tuple(np.asarray(c, np.int32) for c in comps), label=r.label, index=i))
        if too_long and self.long_prompts == "error":
            i, r, n = too_long[0]
            raise ValueError(
                f"record {i} ({r.source}): its prompt is {n} tokens, leaving no room for a completion within "
                f"max_length={self.max_length} ({len(too_long)} record(s) in all); set max_prompt_length "
                f"(< max_length) to keep the end of long prompts, or raise max_length")
        if too_long:
            drops["prompt too long"] = len(too_long)
        if merged:
            log.warning("%d prompt(s) were not a token prefix of prompt + completion (tokens merged across the "
                        "boundary, or the template renders the prompt differently alone); their completions start "
                        "where the two differ, as in TRL", merged)
        truncated = Counter({k: v for k, v in truncated.items() if v})
        if drops or truncated:
            log.info("preference data: kept %d of %d records; dropped %s; truncated %s", len(examples), len(records),
                     dict(drops) or "none", dict(truncated) or "none")
        if not examples:
            hint = ""
            if too_long:
                hint = (f"; their prompts are up to {max(n for _, _, n in too_long)} tokens: raise max_length above "
                        f"that (now {self.max_length}), or set max_prompt_length (< max_length) to keep the end of "
                        "long prompts")
            raise ValueError(f"every one of the {len(records)} preference records was dropped ({dict(drops)}){hint}")
        columns = {"paired": ("chosen", "rejected"), "unpaired": ("completion", "kl_completion"), "sft": ("completion",),
                   "negatives": ("rejected", *(f"sample_{j}" for j in range(1, (k or 0) + 1)))}[kind]
        return TokenizedPreference(examples, kind, columns, self.max_length, self.pad_id, dict(drops), dict(truncated))


def tokenize_preference(tokenizer, records: Sequence[PreferenceRecord], *, max_length: int,
                        max_prompt_length: int | None = None, max_completion_length: int | None = None,
                        chat_template: str | None = None, num_samples: int | None = None,
                        long_prompts: Literal["error", "drop"] = "error") -> TokenizedPreference:
    """Tokenises ``records`` once; see :class:`PreferenceTokenizer` for the exact semantics."""
    return PreferenceTokenizer(tokenizer, max_length=max_length, max_prompt_length=max_prompt_length,
                               max_completion_length=max_completion_length, chat_template=chat_template,
                               num_samples=num_samples, long_prompts=long_prompts)(records)
