"""Preference data for the DPO family (paired), KTO (unpaired) and D²O (negatives), read in
the formats TRL accepts and tokenised once to arrays that collate to static, bucketed shapes.

Reading (:func:`load_preference`)
    ``spec`` is a local ``.jsonl``/``.jsonl.gz``/``.json``/``.json.gz``/``.parquet`` file, a
    directory (every such file under it, sorted by path), ``builtin:prefs-mini`` (a small set
    jaxalign generates, see :func:`builtin_prefs_mini`), ``hf:NAME[:split]``
    (``datasets.load_dataset``) or ``tfds:NAME[:split]``. Each row may be

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
    * unpaired (KTO): ``prompt``/``completion``/``label`` (bool). ``kind="unpaired"`` also
      accepts paired rows and unpairs them like TRL's ``unpair_preference_dataset``.
    * negatives (D²O): ``prompt``/``rejected``, optionally ``samples`` (self-generated
      completions). ``kind="negatives"`` also accepts paired rows (their ``chosen`` unused).
    * sft (one completion per prompt: PoFT's targets, ADPA's student generations):
      ``prompt``/``completion`` (TRL's prompt-completion format), ``messages`` (TRL's
      conversational SFT format: the last message, the assistant's, is the completion),
      ``prompt``/``samples`` (each sample a record: ``jaxalign generate --num-samples`` output),
      or paired rows (the ``chosen`` completion; ``rejected`` unused).

    A malformed row raises :class:`DataFormatError` naming the file, the line (the row of a
    Parquet file or JSON array) and the fields expected.

Tokenising (:func:`tokenize_preference`) and collating (:func:`collate_preference`)
    See their docstrings; in short: TRL 1.x ``DPOTrainer``/``KTOTrainer`` token ids, each
    example a :class:`PreferenceExample` of int32 arrays for :class:`~jaxalign.data.stream.BatchStream`,
    and batches ``{"input_ids", "attention_mask", "loss_mask": int32 [B, C, T], ...}`` with
    ``T`` a length bucket.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import logging
import random
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal, Union

import numpy as np

from jaxalign.data.errors import DataFormatError, decode_utf8
from jaxalign.inference.embed import bucket_length

log = logging.getLogger(__name__)

Kind = Literal["paired", "unpaired", "negatives", "sft"]
KINDS = ("paired", "unpaired", "negatives", "sft")
Messages = list  # list of {"role": str, "content": str}
Text = Union[str, Messages]

ASSISTANT = "\n\nAssistant:"
HUMAN = "\n\nHuman:"
FILE_SUFFIXES = (".jsonl", ".jsonl.gz", ".json", ".json.gz", ".parquet")

EXPECTED = {
    "paired": "'chosen' and 'rejected' (strings, or lists of {'role', 'content'} messages), optionally 'prompt'",
    "unpaired": "'prompt', 'completion' and 'label' (bool), or paired 'chosen' and 'rejected' (optionally 'prompt')",
    "negatives": "'prompt' and 'rejected', optionally 'samples' (a list of completions), or paired 'chosen' and "
                 "'rejected' (optionally 'prompt')",
    "sft": "'prompt' and 'completion', 'messages' (a conversation ending with the assistant's reply), 'prompt' and "
           "'samples' (a list of completions), or paired 'chosen' and 'rejected' (optionally 'prompt')",
}


# --------------------------------------------------------------------------------------------
# Records
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class PreferenceRecord:
    """One preference row with its prompt made explicit.

    ``prompt`` and the completions are all strings (text) or all message lists
    (conversational). Paired: ``chosen``/``rejected``; unpaired: ``completion``/``label``;
    sft: ``completion``; negatives: ``rejected`` and ``samples``. ``source`` is where it came from (``file:line``).
    """

    kind: str
    prompt: Text
    chosen: Text | None = None
    rejected: Text | None = None
    completion: Text | None = None
    label: bool | None = None
    samples: tuple = ()
    source: str = ""

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


def _is_messages(value) -> bool:
    return isinstance(value, list) and bool(value) and isinstance(value[0], dict) and "role" in value[0]


def _check_text(value, field: str, fail) -> Text:
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


def _split_implicit(chosen: Text, rejected: Text, fail) -> tuple[Text, Text, Text]:
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


def _paired_parts(row: dict, fail) -> tuple[Text, Text, Text]:
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


def _require(row: dict, keys: Sequence[str], kind: str, fail) -> None:
    missing = [k for k in keys if k not in row]
    if missing:
        fail(f"missing {' and '.join(repr(m) for m in missing)}; expected {EXPECTED[kind]}")


def _prompt_completion(row: dict, fail) -> tuple[Text, Text]:
    """A row's ``prompt`` and ``completion``, both text or both messages."""
    prompt = _check_text(row["prompt"], "prompt", fail)
    completion = _check_text(row["completion"], "completion", fail)
    if isinstance(prompt, list) != isinstance(completion, list):
        fail("'prompt' and 'completion' must both be strings or both be message lists")
    return prompt, completion


def _parse_row(row: Any, kind: str, source: str, fail) -> list[PreferenceRecord]:
    if not isinstance(row, dict):
        fail(f"expected a JSON object with {EXPECTED[kind]}, got {type(row).__name__}")
    row = {k: v for k, v in row.items() if v is not None}
    paired = "chosen" in row and "rejected" in row
    if kind == "paired":
        _require(row, ("chosen", "rejected"), kind, fail)
        prompt, chosen, rejected = _paired_parts(row, fail)
        return [PreferenceRecord("paired", prompt, chosen=chosen, rejected=rejected, source=source)]
    if kind == "unpaired":
        if paired:
            prompt, chosen, rejected = _paired_parts(row, fail)
            return [PreferenceRecord("unpaired", prompt, completion=chosen, label=True, source=source),
                    PreferenceRecord("unpaired", prompt, completion=rejected, label=False, source=source)]
        _require(row, ("prompt", "completion", "label"), kind, fail)
        prompt, completion = _prompt_completion(row, fail)
        label = row["label"]
        if isinstance(label, (int, np.integer)) and not isinstance(label, bool) and label in (0, 1):
            label = bool(label)
        if not isinstance(label, (bool, np.bool_)):
            fail(f"'label' must be a bool (true: desirable), got {label!r:.40}")
        return [PreferenceRecord("unpaired", prompt, completion=completion, label=bool(label), source=source)]
    if kind == "sft":
        return _sft_records(row, paired, source, fail)
    # negatives: prompt/rejected[/samples], or a paired row whose chosen is left unused
    if paired:
        prompt, _, rejected = _paired_parts(row, fail)
    else:
        _require(row, ("prompt", "rejected"), kind, fail)
        prompt = _check_text(row["prompt"], "prompt", fail)
        rejected = _check_text(row["rejected"], "rejected", fail)
    samples = _samples(row, fail)
    if any(isinstance(c, list) != isinstance(prompt, list) for c in (rejected, *samples)):
        fail("'prompt', 'rejected' and 'samples' must all be strings or all be message lists")
    return [PreferenceRecord("negatives", prompt, rejected=rejected, samples=samples, source=source)]


def _samples(row: dict, fail) -> tuple:
    samples = row.get("samples", [])
    if isinstance(samples, np.ndarray):
        samples = samples.tolist()
    if not isinstance(samples, list):
        fail(f"'samples' must be a list of completions, got {type(samples).__name__}")
    return tuple(_check_text(s, f"samples[{i}]", fail) for i, s in enumerate(samples))


def _sft_records(row: dict, paired: bool, source: str, fail) -> list[PreferenceRecord]:
    if "messages" in row:
        messages = _check_text(row["messages"], "messages", fail)
        if not isinstance(messages, list) or len(messages) < 2 or messages[-1]["role"] != "assistant":
            fail("'messages' must be a conversation of >= 2 messages ending with the assistant's reply")
        return [PreferenceRecord("sft", messages[:-1], completion=messages[-1:], source=source)]
    if paired:
        prompt, chosen, _ = _paired_parts(row, fail)
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


# --------------------------------------------------------------------------------------------
# Sources
# --------------------------------------------------------------------------------------------


def _open_bytes(path: Path):
    """The file's (decompressed) bytes: decoded here, line by line, so that a binary or
    non-UTF-8 file fails naming the line and byte offset (:func:`decode_utf8`)."""
    if path.name.endswith(".gz"):
        return gzip.open(path, "rb")
    return path.open("rb")


def _jsonl_rows(path: Path) -> Iterator[tuple[int, Any, bool]]:
    with _open_bytes(path) as f:
        offset = 0
        for line_no, raw in enumerate(f, 1):
            line = decode_utf8(raw, path, line_no, offset)
            offset += len(raw)
            if not line.strip():
                continue
            try:
                yield line_no, json.loads(line), True
            except json.JSONDecodeError as e:
                raise DataFormatError(path, f"not valid JSON ({e.msg}, column {e.colno}); expected one JSON "
                                            "object per line", line_no) from None


def _json_rows(path: Path) -> Iterator[tuple[int, Any, bool]]:
    """A JSON array of records (``{"data": [...]}`` too), or JSON lines under a .json name."""
    with _open_bytes(path) as f:
        text = decode_utf8(f.read(), path)
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        yield from _jsonl_rows(path)
        return
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        data = data["data"]
    if isinstance(data, dict):  # a single record
        data = [data]
    if not isinstance(data, list):
        raise DataFormatError(path, f"expected a JSON array of records, got {type(data).__name__}")
    for number, row in enumerate(data, 1):
        yield number, row, False


def _parquet_rows(path: Path) -> Iterator[tuple[int, Any, bool]]:
    try:
        import pyarrow.parquet as pq
    except ImportError:  # pragma: no cover - pyarrow comes with datasets
        raise DataFormatError(path, "reading Parquet needs pyarrow (pip install pyarrow)") from None
    try:
        table = pq.read_table(path)
    except Exception as e:
        raise DataFormatError(path, f"not a readable Parquet file ({type(e).__name__}: {e})") from None
    for number, row in enumerate(table.to_pylist(), 1):
        yield number, row, False


def _file_rows(path: Path) -> Iterator[tuple[int, Any, bool]]:
    name = path.name
    if name.endswith((".jsonl", ".jsonl.gz")):
        return _jsonl_rows(path)
    if name.endswith((".json", ".json.gz")):
        return _json_rows(path)
    if name.endswith(".parquet"):
        return _parquet_rows(path)
    raise DataFormatError(path, f"unknown preference file type; expected one of {', '.join(FILE_SUFFIXES)}")


def _remote_rows(spec: str) -> Iterator[tuple[int, Any, bool]]:
    scheme, _, rest = spec.partition(":")
    name, _, split = rest.partition(":")
    split = split or "train"
    try:
        if scheme == "hf":
            import datasets

            rows = datasets.load_dataset(name, split=split)
        else:
            import tensorflow_datasets as tfds

            rows = [_decode(ex) for ex in tfds.as_numpy(tfds.load(name, split=split))]
    except Exception as e:
        raise DataFormatError(spec, f"cannot load ({type(e).__name__}: {e}); pass a local path instead") from None
    for number, row in enumerate(rows, 1):
        yield number, row, False


def _decode(value):
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, np.ndarray):
        return [_decode(v) for v in value.tolist()]
    if isinstance(value, dict):
        return {k: _decode(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_decode(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def _sources(spec) -> list[tuple[str, Iterable[tuple[int, Any, bool]]]]:
    """(name for messages, rows as (number, row, number is a line number)) per source of ``spec``."""
    spec_s = str(spec)
    if spec_s in BUILTIN:
        return [(spec_s, ((n, row, False) for n, row in enumerate(BUILTIN[spec_s](), 1)))]
    if spec_s.startswith("builtin:"):
        raise DataFormatError(spec_s, f"unknown built-in preference set; choose from {', '.join(BUILTIN)}")
    if spec_s.startswith(("hf:", "tfds:")):
        return [(spec_s, _remote_rows(spec_s))]
    path = Path(spec_s).expanduser()
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.name.endswith(FILE_SUFFIXES)
                       and not any(part.startswith(".") for part in p.relative_to(path).parts))
        if not files:
            raise DataFormatError(path, f"no preference files ({', '.join(FILE_SUFFIXES)}) in this directory")
        return [(str(p), _file_rows(p)) for p in files]
    if not path.is_file():
        raise DataFormatError(path, "no such preference file or directory")
    return [(str(path), _file_rows(path))]


def load_preference(spec, kind: Kind = "paired", max_examples: int | None = None,
                    skip_examples: int = 0) -> list[PreferenceRecord]:
    """Preference records of ``kind`` from ``spec`` (see the module docstring for specs and formats).

    ``skip_examples`` rows are passed over first (so one file can hold a training part and a
    held-out part), then ``max_examples`` caps the rows read (a paired row unpaired for KTO gives
    two records). ``kind="unpaired"`` on paired rows follows TRL's ``unpair_preference_dataset``:
    every chosen completion (label True) then every rejected one (label False), so that
    neighbouring records rarely share a prompt; pairs whose chosen equals their rejected
    completion are dropped there (counted and logged), as their labels contradict each other.
    """
    if kind not in KINDS:
        raise ValueError(f"kind={kind!r}: choose one of {', '.join(KINDS)}")
    records: list[PreferenceRecord] = []
    rows_read = rows_seen = 0
    for name, rows in _sources(spec):
        for number, row, is_line in rows:
            if max_examples is not None and rows_read >= max_examples:
                break
            rows_seen += 1
            if rows_seen <= skip_examples:
                continue

            def fail(message, _name=name, _number=number, _is_line=is_line):
                if _is_line:
                    raise DataFormatError(_name, message, _number)
                raise DataFormatError(_name, f"row {_number}: {message}")

            source = f"{name}:{number}" if is_line else f"{name} row {number}"
            records += _parse_row(row, kind, source, fail)
            rows_read += 1
    if not records:
        if rows_seen and skip_examples:
            raise DataFormatError(spec, f"skipping {skip_examples} rows leaves none: it has {rows_seen} rows")
        raise DataFormatError(spec, f"empty: no preference rows (expected rows with {EXPECTED[kind]})")
    if kind == "unpaired":
        records = _order_unpaired(records)
    return records


def _order_unpaired(records: list[PreferenceRecord]) -> list[PreferenceRecord]:
    """Unpaired records from paired rows come in (chosen, rejected) twins with the same source:
    reorder them as TRL does (all chosen, then all rejected) and drop identical twins."""
    out_true, out_false, rest, identical = [], [], [], 0
    i = 0
    while i < len(records):
        r = records[i]
        twin = records[i + 1] if i + 1 < len(records) else None
        if (twin is not None and r.label is True and twin.label is False and twin.source == r.source
                and twin.prompt == r.prompt):
            if r.completion == twin.completion:
                identical += 1
            else:
                out_true.append(r)
                out_false.append(twin)
            i += 2
        else:
            rest.append(r)
            i += 1
    if identical:
        log.info("unpairing: dropped %d pairs whose chosen equals their rejected completion", identical)
    if not out_true:
        return rest
    return rest + out_true + out_false


# --------------------------------------------------------------------------------------------
# Tokenisation
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, eq=False)
class PreferenceExample:
    """One tokenised example: int32 ``prompt`` ids and one int32 array per completion column.

    Paired: (chosen, rejected); negatives: (rejected, sample 1..K); unpaired (KTO): one
    completion, its KL column being made at collation from another example of the batch.
    ``label`` is set for unpaired data; ``index`` is the record's position in the list given
    to :func:`tokenize_preference`.
    """

    prompt: np.ndarray
    completions: tuple[np.ndarray, ...]
    label: bool | None = None
    index: int = -1

    @property
    def length(self) -> int:
        """Tokens in this example's longest sequence (prompt + its longest completion)."""
        return len(self.prompt) + max(len(c) for c in self.completions)


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


def _hh_messages(prompt: str) -> list[dict] | None:
    """``"\\n\\nHuman: a\\n\\nAssistant: b\\n\\nHuman: c\\n\\nAssistant:"`` -> user/assistant/user messages."""
    if not prompt.endswith(ASSISTANT) or not prompt.lstrip().startswith("Human:"):
        return None
    parts = re.split(r"(?:^|\n\n)(Human|Assistant):", prompt.lstrip("\n"))
    # parts: ["", "Human", " a", "Assistant", " b", ..., "Assistant", ""]
    if parts[0].strip():
        return None
    roles = {"Human": "user", "Assistant": "assistant"}
    messages = [{"role": roles[parts[i]], "content": parts[i + 1].strip()} for i in range(1, len(parts) - 2, 2)]
    return messages if messages and messages[-1]["role"] == "user" else None


def _as_conversation(prompt: str, completion: str) -> tuple[list, list]:
    messages = _hh_messages(prompt) or [{"role": "user", "content": prompt.strip()}]
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
    completion token: that is an error naming the record (TRL 1.x silently drops it); set
    ``max_prompt_length`` below ``max_length`` to truncate such prompts instead.

    Dropped, counted per reason in ``drops`` and logged once: ``identical`` (paired records
    whose chosen equals their rejected completion; they carry no preference), ``empty
    completion`` (a completion that is empty or whitespace, before EOS or template),
    ``empty prompt`` (no prompt token would remain to predict the first completion token
    from), ``too few samples`` (negatives with fewer than ``num_samples`` samples).

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
                 num_samples: int | None = None):
        if not isinstance(max_length, int) or max_length < 2:
            raise ValueError(f"max_length={max_length!r}: must be an int >= 2 (a prompt token and a completion token)")
        if max_prompt_length is not None and not 1 <= max_prompt_length < max_length:
            raise ValueError(f"max_prompt_length={max_prompt_length}: must be >= 1 and < max_length={max_length}, "
                             "leaving room for the completion")
        if max_completion_length is not None and max_completion_length < 1:
            raise ValueError(f"max_completion_length={max_completion_length}: must be >= 1")
        if num_samples is not None and num_samples < 0:
            raise ValueError(f"num_samples={num_samples}: must be >= 0")
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.max_prompt_length = max_prompt_length
        self.max_completion_length = max_completion_length
        self.chat_template = chat_template
        self.num_samples = num_samples
        self.pad_id = _pad_id(tokenizer)
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
        if too_long:
            i, r, n = too_long[0]
            raise ValueError(
                f"record {i} ({r.source}): its prompt is {n} tokens, leaving no room for a completion within "
                f"max_length={self.max_length} ({len(too_long)} record(s) in all); set max_prompt_length "
                f"(< max_length) to keep the end of long prompts, or raise max_length")
        if merged:
            log.warning("%d prompt(s) were not a token prefix of prompt + completion (tokens merged across the "
                        "boundary, or the template renders the prompt differently alone); their completions start "
                        "where the two differ, as in TRL", merged)
        truncated = Counter({k: v for k, v in truncated.items() if v})
        if drops or truncated:
            log.info("preference data: kept %d of %d records; dropped %s; truncated %s", len(examples), len(records),
                     dict(drops) or "none", dict(truncated) or "none")
        if not examples:
            raise ValueError(f"every one of the {len(records)} preference records was dropped ({dict(drops)})")
        columns = {"paired": ("chosen", "rejected"), "unpaired": ("completion", "kl_completion"), "sft": ("completion",),
                   "negatives": ("rejected", *(f"sample_{j}" for j in range(1, (k or 0) + 1)))}[kind]
        return TokenizedPreference(examples, kind, columns, self.max_length, self.pad_id, dict(drops), dict(truncated))


def tokenize_preference(tokenizer, records: Sequence[PreferenceRecord], *, max_length: int,
                        max_prompt_length: int | None = None, max_completion_length: int | None = None,
                        chat_template: str | None = None, num_samples: int | None = None) -> TokenizedPreference:
    """Tokenises ``records`` once; see :class:`PreferenceTokenizer` for the exact semantics."""
    return PreferenceTokenizer(tokenizer, max_length=max_length, max_prompt_length=max_prompt_length,
                               max_completion_length=max_completion_length, chat_template=chat_template,
                               num_samples=num_samples)(records)


def _pad_id(tokenizer) -> int:
    for attr in ("pad_token_id", "eos_token_id"):
        value = getattr(tokenizer, attr, None)
        if value is not None:
            return int(value)
    return 0


# --------------------------------------------------------------------------------------------
# Collation
# --------------------------------------------------------------------------------------------


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
    if not examples:
        raise ValueError("cannot collate an empty batch")
    unpaired = examples[0].label is not None
    if any((ex.label is not None) != unpaired for ex in examples):
        raise ValueError("a batch mixes unpaired (labelled) and paired examples")
    B = len(examples)
    if unpaired:
        if B < 2:
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


# --------------------------------------------------------------------------------------------
# builtin:prefs-mini
# --------------------------------------------------------------------------------------------


def _hh(question: str) -> str:
    return f"{HUMAN} {question}{ASSISTANT}"


_NUMBER_WORDS = "zero one two three four five six seven eight nine ten eleven twelve".split()

_CAPITALS = [  # (country, capital, a tempting wrong answer)
    ("France", "Paris", "Lyon"), ("Japan", "Tokyo", "Kyoto"), ("Italy", "Rome", "Milan"),
    ("Spain", "Madrid", "Barcelona"), ("Germany", "Berlin", "Munich"), ("Canada", "Ottawa", "Toronto"),
    ("Australia", "Canberra", "Sydney"), ("Egypt", "Cairo", "Alexandria"), ("Kenya", "Nairobi", "Mombasa"),
    ("Brazil", "Brasília", "Rio de Janeiro"), ("Argentina", "Buenos Aires", "Córdoba"), ("Norway", "Oslo", "Bergen"),
    ("Sweden", "Stockholm", "Gothenburg"), ("Portugal", "Lisbon", "Porto"), ("Greece", "Athens", "Thessaloniki"),
    ("Ireland", "Dublin", "Cork"), ("Poland", "Warsaw", "Kraków"), ("India", "New Delhi", "Mumbai"),
    ("China", "Beijing", "Shanghai"), ("Peru", "Lima", "Cusco"), ("Austria", "Vienna", "Salzburg"),
    ("Finland", "Helsinki", "Turku"), ("Denmark", "Copenhagen", "Aarhus"), ("Turkey", "Ankara", "Istanbul"),
    ("Morocco", "Rabat", "Casablanca"), ("New Zealand", "Wellington", "Auckland"), ("Nigeria", "Abuja", "Lagos"),
]

_COLOURS = [  # (thing, colour, wrong colour)
    ("a ripe banana", "yellow", "blue"), ("fresh grass", "green", "purple"),
    ("the sky on a clear day", "blue", "green"),
    ("fresh snow", "white", "orange"), ("a lump of coal", "black", "white"), ("a ripe tomato", "red", "blue"),
    ("a carrot", "orange", "purple"), ("cow's milk", "white", "green"), ("a ripe lemon", "yellow", "red"),
    ("a lime", "green", "pink"), ("an emerald", "green", "yellow"), ("a pumpkin", "orange", "blue"),
    ("a ruby", "red", "green"), ("a flamingo's feathers", "pink", "blue"), ("charcoal", "black", "yellow"),
    ("a cup of black coffee", "dark brown", "bright green"), ("a strawberry", "red", "blue"),
    ("an aubergine's skin", "dark purple", "orange"),
]

_SPELLING = [  # (word, common misspelling)
    ("necessary", "neccessary"), ("separate", "seperate"), ("definitely", "definately"), ("receive", "recieve"),
    ("accommodate", "acommodate"), ("embarrass", "embarass"), ("rhythm", "rythm"), ("occurrence", "occurence"),
    ("conscience", "concience"), ("beginning", "begining"), ("calendar", "calender"), ("independent", "independant"),
    ("library", "libary"), ("February", "Febuary"), ("Wednesday", "Wensday"), ("government", "goverment"),
    ("environment", "enviroment"), ("achieve", "acheive"), ("believe", "beleive"), ("tomorrow", "tommorow"),
    ("weird", "wierd"), ("friend", "freind"), ("address", "adress"), ("business", "buisness"),
]

_PLURALS = [("mouse", "mice"), ("child", "children"), ("goose", "geese"), ("tooth", "teeth"), ("foot", "feet"),
            ("woman", "women"), ("sheep", "sheep"), ("leaf", "leaves"), ("knife", "knives"), ("box", "boxes"),
            ("city", "cities"), ("man", "men")]
_WRONG_PLURALS = ["mouses", "childs", "gooses", "tooths", "foots", "womans", "sheeps", "leafs", "knifes", "boxs",
                  "citys", "mans"]

_OPPOSITES = [("hot", "cold"), ("tall", "short"), ("early", "late"), ("empty", "full"), ("open", "closed"),
              ("heavy", "light"), ("ancient", "modern"), ("quiet", "loud"), ("wide", "narrow"), ("sweet", "sour"),
              ("above", "below"), ("arrive", "depart")]

_FACTS = [  # (question, short answer, a longer explanation, wrong answer)
    ("How many days are there in a week?", "There are seven days in a week.",
     "Monday, Tuesday, Wednesday, Thursday, Friday, Saturday and Sunday.", "There are five days in a week."),
    ("How many months are there in a year?", "A year has twelve months.",
     "They run from January to December.", "A year has ten months."),
    ("How many legs does a spider have?", "A spider has eight legs.",
     "That is one way to tell spiders from insects, which have six.", "A spider has six legs."),
    ("How many legs does an insect have?", "An insect has six legs.",
     "Its legs are attached to the middle part of its body, the thorax.", "An insect has eight legs."),
    ("How many sides does a triangle have?", "A triangle has three sides.",
     "It also has three corners, and its angles add up to 180 degrees.", "A triangle has four sides."),
    ("How many sides does a hexagon have?", "A hexagon has six sides.",
     "The cells of a honeycomb are a familiar example.", "A hexagon has eight sides."),
    ("At what temperature does pure water boil at sea level?", "Pure water boils at 100 degrees Celsius at sea level.",
     "That is 212 degrees Fahrenheit; at high altitude it boils at a lower temperature.",
     "Water boils at 50 degrees Celsius."),
    ("At what temperature does pure water freeze?", "Pure water freezes at 0 degrees Celsius.",
     "That is 32 degrees Fahrenheit.", "Water freezes at 10 degrees Celsius."),
    ("How many hours are there in a day?", "A day has 24 hours.",
     "That is the time the Earth takes to turn once relative to the Sun.", "A day has 12 hours."),
    ("How many minutes are there in an hour?", "An hour has 60 minutes.",
     "And each minute has 60 seconds, so an hour has 3600 seconds.", "An hour has 100 minutes."),
    ("How many planets are there in our solar system?", "There are eight planets in our solar system.",
     "Mercury, Venus, Earth, Mars, Jupiter, Saturn, Uranus and Neptune.", "There are twelve planets."),
    ("What is the largest planet in our solar system?", "Jupiter is the largest planet in our solar system.",
     "It is a gas giant, more than eleven times as wide as the Earth.", "Mars is the largest planet."),
    ("Which planet is closest to the Sun?", "Mercury is the planet closest to the Sun.",
     "It is also the smallest of the eight planets.", "Neptune is the closest planet to the Sun."),
    ("What gas do plants take in from the air to make their food?", "Plants take in carbon dioxide.",
     "With sunlight and water they turn it into sugar and release oxygen; this is photosynthesis.",
     "Plants take in helium."),
    ("How many letters are there in the English alphabet?", "The English alphabet has 26 letters.",
     "Five of them, A, E, I, O and U, are vowels.", "The English alphabet has 30 letters."),
    ("How many degrees are there in a right angle?", "A right angle is 90 degrees.",
     "Two right angles make a straight line of 180 degrees.", "A right angle is 45 degrees."),
    ("What is the chemical symbol for water?", "Water is H2O.",
     "Each molecule has two hydrogen atoms and one oxygen atom.", "Water is CO2."),
    ("How many days are there in a leap year?", "A leap year has 366 days.",
     "The extra day is the 29th of February.", "A leap year has 365 days."),
    ("Which ocean is the largest?", "The Pacific Ocean is the largest ocean.",
     "It covers about a third of the Earth's surface.", "The Atlantic Ocean is the largest ocean."),
    ("What do bees make from nectar?", "Bees make honey from nectar.",
     "They store it in the wax cells of their hive as food for the colony.", "Bees make milk from nectar."),
]

_REQUESTS = [  # (request, a helpful answer)
    ("Could you help me write a short thank-you note to my neighbour for watering my plants?",
     "Of course! Here is a short note:\n\nDear neighbour, thank you so much for watering my plants while I was away. "
     "They look wonderful, and I really appreciate your kindness. Please let me know if I can ever return the favour."),
    ("Can you give me two tips for sleeping better?",
     "Certainly. First, try to go to bed and get up at the same time every day, even at weekends. Second, keep screens "
     "out of the bedroom for the last half hour before sleep, and keep the room cool and dark."),
    ("Please suggest a polite way to decline an invitation to a party.",
     "You could say: \"Thank you so much for inviting me. I'm afraid I can't make it that evening, but I hope you "
     "have a wonderful time, and I'd love to catch up soon.\""),
    ("Could you explain what a noun is, in one sentence?",
     "Happily: a noun is a word that names a person, place, thing or idea, such as \"teacher\", \"London\", "
     "\"chair\" or \"happiness\"."),
    ("Can you help me remember to drink more water during the day?",
     "Sure! Keep a filled bottle on your desk, drink a glass with every meal, and set a gentle reminder on your "
     "phone every couple of hours. Small, regular sips add up."),
    ("Would you suggest a simple breakfast that is quick to make?",
     "Gladly. Porridge is quick and filling: simmer oats in milk or water for a few minutes and top it with sliced "
     "banana or a spoonful of honey."),
    ("Please help me write a one-line apology to a friend for being late.",
     "Here is one: \"I'm really sorry I kept you waiting today; thank you for your patience, and next time the coffee "
     "is on me.\""),
    ("Can you tell me how to say thank you in French?", "Of course: \"thank you\" in French is \"merci\". "
     "To say \"thank you very much\", you can say \"merci beaucoup\"."),
    ("Could you recommend a way to start learning to cook?",
     "Certainly! Start with a few simple dishes you enjoy, such as an omelette, a pasta sauce and a soup, and cook "
     "each one several times. Reading the whole recipe before you begin also helps a lot."),
    ("Please give me a kind message to write in a birthday card for my grandmother.",
     "How about: \"Happy birthday, Grandma! Thank you for all your love, stories and wonderful cooking. I hope your "
     "day is as warm and special as you are.\""),
    ("Can you suggest how to keep a houseplant healthy?",
     "Happily. Give it the light its species likes, water it when the top of the soil feels dry rather than on a "
     "fixed schedule, and make sure the pot can drain."),
    ("Could you help me plan a short walk for a rainy afternoon?",
     "Of course. Pick a familiar route of about half an hour, wear a waterproof jacket and shoes with good grip, and "
     "plan to finish near a café where you can warm up with a hot drink."),
]

_RUDE = ["That is such an easy question. Look it up yourself.", "Why are you bothering me with this?",
         "Figure it out on your own.", "I can't be bothered to answer that.", "Ugh, ask someone else."]
_UNHELPFUL = ["I don't know.", "Maybe. It depends.", "Who can say?", "That's not something I want to talk about.",
              "Hmm."]


def builtin_prefs_mini() -> list[dict]:
    """``builtin:prefs-mini``: about 300 preference pairs jaxalign generates from templates.

    Simple, true facts (arithmetic, unit conversions, spelling, plurals, opposites, colours of
    things, capitals of real countries, general knowledge) and polite requests, asked in the
    HH-RLHF style (``prompt = "\\n\\nHuman: ...\\n\\nAssistant:"``, a few with two turns); the
    chosen reply is correct, helpful and polite (short, or with an explanation), the rejected
    one wrong, rude or unhelpful. TRL-standard rows (``prompt``/``chosen``/``rejected``);
    deterministic (a fixed seed). Ours to ship (CC0): nothing is copied from any data set.
    """
    rng = random.Random(20240611)
    rows: list[dict] = []

    def add(prompt: str, chosen: str, wrong: str, style: int):
        """style 0: the wrong answer; 1: rude; 2: unhelpful; 3: wrong and rude."""
        rejected = {0: wrong, 1: rng.choice(_RUDE), 2: rng.choice(_UNHELPFUL),
                    3: f"{wrong} {rng.choice(_RUDE)}"}[style % 4]
        rows.append({"prompt": prompt, "chosen": " " + chosen, "rejected": " " + rejected})

    # Arithmetic
    ops = [("plus", lambda a, b: a + b), ("minus", lambda a, b: a - b), ("times", lambda a, b: a * b)]
    seen = set()
    while len(seen) < 60:
        name, fn = ops[len(seen) % 3]
        a, b = rng.randint(2, 20), rng.randint(2, 12)
        if name == "minus" and b > a:
            a, b = b, a
        if (a, name, b) in seen:
            continue
        seen.add((a, name, b))
        answer = fn(a, b)
        q = rng.choice([f"What is {a} {name} {b}?", f"Could you tell me what {a} {name} {b} is?",
                        f"Please work out {a} {name} {b}."])
        chosen = f"{a} {name} {b} is {answer}."
        if len(seen) % 3 == 0:
            check = {"plus": f"You can check it: {answer} minus {b} gives back {a}.",
                     "minus": f"You can check it: {answer} plus {b} gives back {a}.",
                     "times": f"That is the sum of {b} copies of {a}."}[name]
            chosen += " " + check
        add(_hh(q), chosen, f"{a} {name} {b} is {answer + rng.choice([-2, -1, 1, 3, 10])}.", len(seen))

    # Unit conversions
    units = [("kilometres", "kilometre", "metres", 1000), ("metres", "metre", "centimetres", 100),
             ("kilograms", "kilogram", "grams", 1000), ("hours", "hour", "minutes", 60),
             ("minutes", "minute", "seconds", 60), ("days", "day", "hours", 24),
             ("litres", "litre", "millilitres", 1000),
             ("weeks", "week", "days", 7), ("feet", "foot", "inches", 12), ("yards", "yard", "feet", 3),
             ("years", "year", "months", 12), ("centimetres", "centimetre", "millimetres", 10)]
    for j in range(48):
        big, one, small, factor = units[j % len(units)]
        n = rng.randint(2, 9) if j % 2 else rng.randint(11, 40)
        q = rng.choice([f"How many {small} are there in {n} {big}?", f"Convert {n} {big} to {small}, please.",
                        f"What is {n} {big} in {small}?"])
        chosen = f"{n} {big} is {n * factor} {small}."
        if j % 3 == 0:
            chosen = f"There are {factor} {small} in one {one}, so {n} {big} is {n} × {factor} = {n * factor} {small}."
        wrong = n * factor * rng.choice([10, 2]) if j % 2 else n * factor // rng.choice([10, 2]) or n + 1
        add(_hh(q), chosen, f"{n} {big} is {wrong} {small}.", j + 1)

    # Spelling
    for j, (word, miss) in enumerate(_SPELLING):
        letters = "-".join(word.upper())
        q = rng.choice([f"How do you spell \"{word}\"?", f"Can you spell {word} for me?"])
        chosen = f"It is spelled {word}: {letters}." if j % 2 else f"Sure! \"{word}\" is spelled {letters}."
        add(_hh(q), chosen, f"It is spelled {miss}: {'-'.join(miss.upper())}.", j)

    # Plurals and opposites
    for j, ((one, many), wrong) in enumerate(zip(_PLURALS, _WRONG_PLURALS)):
        add(_hh(f"What is the plural of \"{one}\"?"), f"The plural of \"{one}\" is \"{many}\".",
            f"The plural of \"{one}\" is \"{wrong}\".", j)
    for j, (a, b) in enumerate(_OPPOSITES):
        add(_hh(f"What is the opposite of \"{a}\"?"), f"The opposite of \"{a}\" is \"{b}\".",
            f"The opposite of \"{a}\" is \"{a}\".", j + 1)

    # Colours and capitals
    for j, (thing, colour, wrong) in enumerate(_COLOURS):
        chosen = f"{thing[0].upper()}{thing[1:]} is usually {colour}." if j % 2 else f"It is usually {colour}."
        add(_hh(f"What colour is {thing}?"), chosen, f"It is {wrong}.", j)
    for j, (country, capital, wrong) in enumerate(_CAPITALS):
        chosen = f"The capital of {country} is {capital}."
        if country in ("Australia", "Canada", "Brazil", "Turkey", "Nigeria", "Morocco", "New Zealand"):
            chosen += f" Many people guess {wrong}, which is a larger city, but {capital} is the capital."
        q = rng.choice([f"What is the capital of {country}?", f"Which city is the capital of {country}?"])
        add(_hh(q), chosen, f"The capital of {country} is {wrong}.", j + 2)

    # General knowledge and polite requests
    for j, (q, short, more, wrong) in enumerate(_FACTS):
        add(_hh(q), short if j % 3 == 1 else f"{short} {more}", wrong, j)
    for j, (q, answer) in enumerate(_REQUESTS):
        for style in (1, 2):  # rude, then unhelpful: a request has no "wrong answer"
            add(_hh(q), answer, "", style)

    # Two-turn follow-ups
    for j in range(20):
        a, b, c = rng.randint(2, 9), rng.randint(2, 9), rng.randint(2, 5)
        first = f"{a} plus {b} is {a + b}."
        prompt = f"{HUMAN} What is {a} plus {b}?{ASSISTANT} {first}{HUMAN} And what is that times {c}?{ASSISTANT}"
        add(prompt, f"{a + b} times {c} is {(a + b) * c}.", f"{a + b} times {c} is {(a + b) * c + c}.", j)
    return rows


BUILTIN = {"builtin:prefs-mini": builtin_prefs_mini}

__all__ = ["PreferenceRecord", "PreferenceExample", "TokenizedPreference", "PreferenceTokenizer", "load_preference",
           "tokenize_preference", "collate_preference", "extract_prompt", "hh_prompt", "builtin_prefs_mini"]
