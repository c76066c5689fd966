"""Preference rows as records: one :class:`PreferenceRecord` per row (two for a paired row read
as unpaired), with its prompt made explicit, from every format TRL accepts and OpenAI's.

A row (a dict: see :mod:`jaxalign.data.sources`) may be

* HH-RLHF: ``chosen``/``rejected`` full ``"\\n\\nHuman: ...\\n\\nAssistant: ..."`` transcripts.
  The prompt is ``chosen`` up to and including its last ``"\\n\\nAssistant:"``; when
  ``rejected`` does not start with that prompt (a few HH rows have a second
  ``"\\n\\nAssistant:"`` inside the chosen reply), the prompt is the longest common prefix
  of the two, cut back to just after its last ``"\\n\\nAssistant:"`` (TRL's plain
  longest-common-prefix extraction when it holds none). ``chosen == prompt + completion``.
* TRL standard: ``prompt``/``chosen``/``rejected`` strings.
* TRL implicit prompt: ``chosen``/``rejected`` strings only: the prompt is their longest
  common prefix, a space just before the first difference going to the completions
  (TRL's ``extract_prompt``).
* TRL conversational: ``prompt`` (a list of ``{"role", "content"}`` messages) with
  ``chosen``/``rejected`` lists of assistant messages, or full conversations in
  ``chosen``/``rejected`` whose common leading messages are the prompt. They are rendered
  with a chat template at tokenisation time.
* OpenAI / Azure OpenAI preference fine-tuning (DPO):
  ``{"input": {"messages": [...], "tools": [], "parallel_tool_calls": ...},
  "preferred_output": [assistant message], "non_preferred_output": [assistant message]}``,
  read as TRL conversational (prompt = ``input.messages``, chosen = ``preferred_output``,
  rejected = ``non_preferred_output``). ``parallel_tool_calls`` is a sampling flag and is
  ignored; a non-empty ``tools`` list is refused (the records carry messages only, so the
  tools would silently go missing from the rendered prompt).
* unpaired (KTO): ``prompt``/``completion``/``label`` (bool). ``kind="unpaired"`` also
  accepts paired rows (OpenAI's too) and unpairs them like TRL's ``unpair_preference_dataset``.
* negatives (D²O): ``prompt``/``rejected``, optionally ``samples`` (self-generated
  completions). ``kind="negatives"`` also accepts paired rows (their ``chosen`` unused), and
  OpenAI rows with ``input`` and ``non_preferred_output``.
* sft (one completion per prompt: PoFT's targets, ADPA's student generations):
  ``prompt``/``completion`` (TRL's prompt-completion format), ``messages`` (TRL's
  conversational SFT format: the last message, the assistant's, is the completion),
  ``prompt``/``samples`` (each sample a record: ``jaxalign generate --num-samples`` output),
  paired rows (the ``chosen`` completion; ``rejected`` unused) or OpenAI rows with ``input``
  and ``preferred_output``.

A malformed row raises :class:`~jaxalign.data.errors.DataFormatError` naming the file, the
line (the row of a Parquet file or JSON array) and the fields expected.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Sequence
from typing import Literal, NoReturn, Union

import numpy as np

from jaxalign.data.sources import Row

Kind = Literal["paired", "unpaired", "negatives", "sft"]
KINDS = ("paired", "unpaired", "negatives", "sft")
Messages = list  # list of {"role": str, "content": str}
Text = Union[str, Messages]
Fail = Callable[[str], NoReturn]

ASSISTANT = "\n\nAssistant:"
HUMAN = "\n\nHuman:"

OPENAI = ("OpenAI's preference format: 'input' ({'messages': [...]}), 'preferred_output' and "
          "'non_preferred_output' (each a list of one {'role': 'assistant', 'content'} message)")
EXPECTED = {
    "paired": "'chosen' and 'rejected' (strings, or lists of {'role', 'content'} messages), optionally 'prompt'; "
              f"or {OPENAI}",
    "unpaired": "'prompt', 'completion' and 'label' (bool), or paired 'chosen' and 'rejected' (optionally 'prompt'), "
                "or an OpenAI preference row ('input', 'preferred_output', 'non_preferred_output')",
    "negatives": "'prompt' and 'rejected', optionally 'samples' (a list of completions), or paired 'chosen' and "
                 "'rejected' (optionally 'prompt'), or an OpenAI preference row ('input', 'non_preferred_output')",
    "sft": "'prompt' and 'completion', 'messages' (a conversation ending with the assistant's reply), 'prompt' and "
           "'samples' (a list of completions), or paired 'chosen' and 'rejected' (optionally 'prompt'), or an OpenAI "
           "preference row ('input', 'preferred_output')",
}
# The completions of an OpenAI row that each kind reads (the others may be absent).
OPENAI_OUTPUTS = {"paired": ("preferred_output", "non_preferred_output"),
                  "unpaired": ("preferred_output", "non_preferred_output"),
                  "negatives": ("non_preferred_output",), "sft": ("preferred_output",)}


@dataclasses.dataclass(frozen=True)
class PreferenceRecord:
    """One preference row with its prompt made explicit.

    ``prompt`` and the completions are all strings (text) or all message lists
    (conversational). Paired: ``chosen``/``rejected``; unpaired: ``completion``/``label``;
    sft: ``completion``; negatives: ``rejected`` and ``samples``. ``margin``: a paired row's
    optional ``margin`` column (the reward margin TRL's ``RewardTrainer`` requires of the pair).
    ``source`` is where it came from (``file:line``).
    """

    kind: str
    prompt: Text
    chosen: Text | None = None
    rejected: Text | None = None
    completion: Text | None = None
    label: bool | None = None
    samples: tuple = ()
    source: str = ""
    margin: float | None = None

    @property
    def conversational(self) -> bool:
        return isinstance(self.prompt, list)

    @property
    def completions(self) -> tuple:
        """The completion columns in tokenisation order (all samples for negatives)."""
        if self.kind == "paired":
            return (self.chosen, self.rejected)
        if self.kind in ("unpaired", "sft"):
            return (self.completion,)
        return (self.rejected, *self.samples)


# --------------------------------------------------------------------------------------------
# Prompts
# --------------------------------------------------------------------------------------------


def common_prefix_length(a: Sequence, b: Sequence) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def extract_prompt(chosen: Text, rejected: Text) -> tuple[Text, Text, Text]:
    """TRL's ``extract_prompt``: the longest common prefix (characters, or whole messages) is the
    prompt; for text, a space just before the first difference goes to the completions.

    Deviation: TRL's loop leaves the prefix one item short when one side is a prefix of the
    other (identical pairs included); here the prefix is then the whole shorter side.
    """
    idx = common_prefix_length(chosen, rejected)
    if isinstance(chosen, str) and 0 < idx < min(len(chosen), len(rejected)) and chosen[idx - 1] == " ":
        idx -= 1
    return chosen[:idx], chosen[idx:], rejected[idx:]


def hh_prompt(chosen: str, rejected: str) -> str | None:
    """The HH-RLHF prompt of a transcript pair (see the module docstring), or None."""
    end = chosen.rfind(ASSISTANT)
    if end < 0:
        return None
    prompt = chosen[: end + len(ASSISTANT)]
    if rejected.startswith(prompt):
        return prompt
    common = chosen[: common_prefix_length(chosen, rejected)]
    end = common.rfind(ASSISTANT)
    return common[: end + len(ASSISTANT)] if end >= 0 else None


def hh_messages(prompt: str) -> list[dict] | None:
    """``"\\n\\nHuman: a\\n\\nAssistant: b\\n\\nHuman: c\\n\\nAssistant:"`` -> user/assistant/user
    messages; None when ``prompt`` is not an HH transcript ending with the assistant's turn."""
    if not prompt.endswith(ASSISTANT) or not prompt.lstrip().startswith("Human:"):
        return None
    parts = re.split(r"(?:^|\n\n)(Human|Assistant):", prompt.lstrip("\n"))
    # parts: ["", "Human", " a", "Assistant", " b", ..., "Assistant", ""]
    if parts[0].strip():
        return None
    roles = {"Human": "user", "Assistant": "assistant"}
    messages = [{"role": roles[parts[i]], "content": parts[i + 1].strip()} for i in range(1, len(parts) - 2, 2)]
    return messages if messages and messages[-1]["role"] == "user" else None


def _split_implicit(chosen: Text, rejected: Text, fail: Fail) -> tuple[Text, Text, Text]:
    if isinstance(chosen, str) != isinstance(rejected, str):
        fail("'chosen' and 'rejected' must both be strings or both be message lists")
    if isinstance(chosen, str):
        prompt = hh_prompt(chosen, rejected)
        if prompt is not None:
            return prompt, chosen[len(prompt):], rejected[len(prompt):]
        return extract_prompt(chosen, rejected)
    prompt, c, r = extract_prompt(chosen, rejected)
    if not prompt:
        fail("'chosen' and 'rejected' conversations share no leading message to use as the prompt; "
             "give an explicit 'prompt'")
    return prompt, c, r


# --------------------------------------------------------------------------------------------
# Fields
# --------------------------------------------------------------------------------------------


def _check_text(value, field: str, fail: Fail) -> Text:
    """A string or a non-empty list of {role, content} string messages."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and value and all(isinstance(m, dict) for m in value):
        for m in value:
            if not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
                fail(f"'{field}' has a message without string 'role' and 'content': {m!r:.80}")
        return [{"role": m["role"], "content": m["content"]} for m in value]
    fail(f"'{field}' must be a string or a list of {{'role', 'content'}} messages, got {_describe(value)}")


def _describe(value) -> str:
    if isinstance(value, list):
        return "an empty list" if not value else f"a list of {type(value[0]).__name__}"
    return type(value).__name__


def _require(row: dict, keys: Sequence[str], kind: str, fail: Fail) -> None:
    missing = [k for k in keys if k not in row]
    if missing:
        fail(f"missing {' and '.join(repr(m) for m in missing)}; expected {EXPECTED[kind]}")


def _paired_parts(row: dict, fail: Fail) -> tuple[Text, Text, Text]:
    chosen = _check_text(row["chosen"], "chosen", fail)
    rejected = _check_text(row["rejected"], "rejected", fail)
    prompt = row.get("prompt")
    if prompt is None:
        return _split_implicit(chosen, rejected, fail)
    prompt = _check_text(prompt, "prompt", fail)
    if isinstance(chosen, list) != isinstance(rejected, list):
        fail("'chosen' and 'rejected' must both be strings or both be message lists")
    if isinstance(chosen, list) and isinstance(prompt, str):
        # TRL (maybe_extract_prompt): a text prompt beside conversational completions is a label;
        # the prompt is implicit in the conversations.
        return _split_implicit(chosen, rejected, fail)
    if isinstance(prompt, list) and isinstance(chosen, str):
        fail("'prompt' is a message list but 'chosen'/'rejected' are strings; use messages for all or strings for all")
    return prompt, chosen, rejected


def _is_openai(row: dict) -> bool:
    return "preferred_output" in row or "non_preferred_output" in row or isinstance(row.get("input"), dict)


def _messages(value, field: str, fail: Fail) -> Messages:
    """A non-empty list of {role, content} string messages (not text)."""
    if not isinstance(value, list) or not value:
        fail(f"'{field}' must be a non-empty list of {{'role', 'content'}} messages, got {_describe(value)}; "
             f"expected {OPENAI}")
    return _check_text(value, field, fail)


def _openai_parts(row: dict, outputs: Sequence[str], fail: Fail) -> tuple[Messages, Messages | None, Messages | None]:
    """(prompt, chosen, rejected) of an OpenAI row; ``outputs`` are required, the others may be None."""
    missing = [k for k in ("input", *outputs) if k not in row]
    if missing:
        fail(f"missing {' and '.join(repr(m) for m in missing)}; expected {OPENAI}")
    given = row["input"]
    if not isinstance(given, dict) or "messages" not in given:
        fail(f"'input' must be an object with 'messages' (the prompt: a list of {{'role', 'content'}} messages); "
             f"expected {OPENAI}")
    if given.get("tools"):
        fail("'input.tools' is not supported: prompts are rendered from their messages alone and would lose the "
             "tools; remove 'tools' (or leave it empty) to use the row without them")
    prompt = _messages(given["messages"], "input.messages", fail)
    chosen, rejected = (None if k not in row else _messages(row[k], k, fail)
                        for k in ("preferred_output", "non_preferred_output"))
    for field, reply in (("preferred_output", chosen), ("non_preferred_output", rejected)):
        if reply is not None and any(m["role"] != "assistant" for m in reply):
            fail(f"'{field}' must hold the assistant's reply (role 'assistant'), "
                 f"got roles {[m['role'] for m in reply]}")
    return prompt, chosen, rejected


def _pair(row: dict, kind: str, fail: Fail) -> tuple[Text, Text | None, Text | None] | None:
    """(prompt, chosen, rejected) of a paired row: TRL's ``chosen``/``rejected`` or OpenAI's
    format (where a completion ``kind`` does not read may be None); None for any other row."""
    if _is_openai(row):
        return _openai_parts(row, OPENAI_OUTPUTS[kind], fail)
    if "chosen" in row and "rejected" in row:
        return _paired_parts(row, fail)
    return None


def _prompt_completion(row: dict, fail: Fail) -> tuple[Text, Text]:
    """A row's ``prompt`` and ``completion``, both text or both messages."""
    prompt = _check_text(row["prompt"], "prompt", fail)
    completion = _check_text(row["completion"], "completion", fail)
    if isinstance(prompt, list) != isinstance(completion, list):
        fail("'prompt' and 'completion' must both be strings or both be message lists")
    return prompt, completion


def _samples(row: dict, fail: Fail) -> tuple:
    samples = row.get("samples", [])
    if isinstance(samples, np.ndarray):
        samples = samples.tolist()
    if not isinstance(samples, list):
        fail(f"'samples' must be a list of completions, got {type(samples).__name__}")
    return tuple(_check_text(s, f"samples[{i}]", fail) for i, s in enumerate(samples))


# --------------------------------------------------------------------------------------------
# Rows -> records
# --------------------------------------------------------------------------------------------


def parse_row(row: Row, kind: str) -> list[PreferenceRecord]:
    """The records of one row as ``kind`` (see the module docstring): one, or two for a paired
    row unpaired (chosen then rejected, the same ``source``), or one per sample (sft)."""
    fail, source, value = row.fail, row.where, row.value
    if not isinstance(value, dict):
        fail(f"expected a JSON object with {EXPECTED[kind]}, got {type(value).__name__}")
    value = {k: v for k, v in value.items() if v is not None}
    if kind == "sft" and "messages" in value:
        return _sft_conversation(value, source, fail)
    pair = _pair(value, kind, fail)
    if kind == "paired":
        if pair is None:
            _require(value, ("chosen", "rejected"), kind, fail)
        prompt, chosen, rejected = pair
        return [PreferenceRecord("paired", prompt, chosen=chosen, rejected=rejected, source=source,
                                 margin=_margin(value.get("margin"), fail))]
    if kind == "unpaired":
        if pair is not None:
            prompt, chosen, rejected = pair
            return [PreferenceRecord("unpaired", prompt, completion=chosen, label=True, source=source),
                    PreferenceRecord("unpaired", prompt, completion=rejected, label=False, source=source)]
        _require(value, ("prompt", "completion", "label"), kind, fail)
        prompt, completion = _prompt_completion(value, fail)
        return [PreferenceRecord("unpaired", prompt, completion=completion, label=_label(value["label"], fail),
                                 source=source)]
    if kind == "sft":
        return _sft_records(value, pair, source, fail)
    # negatives: prompt/rejected[/samples], or a paired row whose chosen is left unused
    if pair is not None:
        prompt, _, rejected = pair
    else:
        _require(value, ("prompt", "rejected"), kind, fail)
        prompt = _check_text(value["prompt"], "prompt", fail)
        rejected = _check_text(value["rejected"], "rejected", fail)
    samples = _samples(value, fail)
    if any(isinstance(c, list) != isinstance(prompt, list) for c in (rejected, *samples)):
        fail("'prompt', 'rejected' and 'samples' must all be strings or all be message lists")
    return [PreferenceRecord("negatives", prompt, rejected=rejected, samples=samples, source=source)]


def _margin(margin, fail: Fail) -> float | None:
    if margin is None:
        return None
    if isinstance(margin, bool) or not isinstance(margin, (int, float, np.integer, np.floating)) \
            or not np.isfinite(margin):
        fail(f"'margin' must be a finite number (the reward margin the pair requires), got {margin!r:.40}")
    return float(margin)


def _label(label, fail: Fail) -> bool:
    if isinstance(label, (int, np.integer)) and not isinstance(label, bool) and label in (0, 1):
        label = bool(label)
    if not isinstance(label, (bool, np.bool_)):
        fail(f"'label' must be a bool (true: desirable), got {label!r:.40}")
    return bool(label)


def _sft_conversation(row: dict, source: str, fail: Fail) -> list[PreferenceRecord]:
    messages = _check_text(row["messages"], "messages", fail)
    if not isinstance(messages, list) or len(messages) < 2 or messages[-1]["role"] != "assistant":
        fail("'messages' must be a conversation of >= 2 messages ending with the assistant's reply")
    return [PreferenceRecord("sft", messages[:-1], completion=messages[-1:], source=source)]


def _sft_records(row: dict, pair, source: str, fail: Fail) -> list[PreferenceRecord]:
    if pair is not None:
        prompt, chosen, _ = pair
        return [PreferenceRecord("sft", prompt, completion=chosen, source=source)]
    if "prompt" in row and "samples" in row:
        prompt = _check_text(row["prompt"], "prompt", fail)
        samples = _samples(row, fail)
        if any(isinstance(c, list) != isinstance(prompt, list) for c in samples):
            fail("'prompt' and 'samples' must all be strings or all be message lists")
        return [PreferenceRecord("sft", prompt, completion=c, source=source) for c in samples]
    _require(row, ("prompt", "completion"), "sft", fail)
    prompt, completion = _prompt_completion(row, fail)
    return [PreferenceRecord("sft", prompt, completion=completion, source=source)]
