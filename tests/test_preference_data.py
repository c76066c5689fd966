"""Preference data: reading (HH-RLHF, TRL formats), tokenisation (TRL semantics), collation."""

import dataclasses
import gzip
import json
import logging
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from conftest import DATA, shared_file
from jaxalign.data import sources
from jaxalign.data.errors import DataFormatError
from jaxalign.data.preference import load_preference
from jaxalign.data.preference.collate import collate_preference
from jaxalign.data.preference.records import PreferenceRecord, extract_prompt
from jaxalign.data.preference.tokens import tokenize_preference
from jaxalign.data.stream import BatchStream
from jaxalign.inference.embed import bucket_length

BUCKETS = (16, 32, 64, 128, 256, 512)
HH = ("hh-rlhf/helpful-base/test.jsonl.gz", "hh-rlhf/harmless-base/test.jsonl.gz")


@pytest.fixture(scope="module")
def tok(smol_tokenizer):
    return smol_tokenizer


def decode(tok, ids) -> str:
    return tok.decode([int(i) for i in ids], skip_special_tokens=False, clean_up_tokenization_spaces=False)


def raw_rows(path: Path, limit=None) -> list[dict]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return rows[:limit]


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


def builtin_prefs_mini() -> list[dict]:
    return [row.value for row in sources.rows("builtin:prefs-mini")]


def sequences(batch, b, c):
    """(all real tokens, completion tokens) of one row of a collated batch."""
    ids = batch["input_ids"][b, c]
    return ids[batch["attention_mask"][b, c] == 1], ids[batch["loss_mask"][b, c] == 1]


# ----------------------------------------------------------------------------------- builtin set


def test_builtin_prefs_mini_is_varied_and_well_formed():
    rows = builtin_prefs_mini()
    assert len(rows) == 265 and all(list(r) == ["prompt", "chosen", "rejected"] for r in rows)
    assert all(r["chosen"] != r["rejected"] and r["chosen"].strip() and r["rejected"].strip() for r in rows)
    assert all(r["prompt"].startswith("\n\nHuman: ") and r["prompt"].endswith("\n\nAssistant:") for r in rows)
    lengths = sorted(len(r["chosen"]) for r in rows)
    assert lengths[0] < 25 and lengths[-1] > 150  # short answers and explanations
    assert sum(r["prompt"].count("\n\nHuman:") == 2 for r in rows) >= 10  # some two-turn prompts
    records = load_preference("builtin:prefs-mini")
    assert len(records) == len(rows) and records[0].kind == "paired" and records[0].source.startswith("builtin:")
    assert load_preference("builtin:prefs-mini", max_examples=10) == records[:10]


# ----------------------------------------------------------------------------------- HH-RLHF


def test_hh_rlhf_prompt_extraction():
    for rel in HH:
        path = shared_file(rel)
        raw = raw_rows(path)
        records = load_preference(path)
        assert len(records) == len(raw)
        for row, rec in zip(raw, records):
            assert rec.prompt.endswith("\n\nAssistant:")
            assert rec.prompt + rec.chosen == row["chosen"] and rec.prompt + rec.rejected == row["rejected"]
        # Rows whose chosen holds a second "\n\nAssistant:" in its reply: the prompt stops at the last one both share.
        odd = [(row, rec) for row, rec in zip(raw, records)
               if rec.prompt != row["chosen"][: row["chosen"].rfind("\n\nAssistant:") + 12]]
        assert odd and all(rec.chosen.count("\n\nAssistant:") >= 1 for _, rec in odd)


def test_hh_rlhf_identical_pairs_are_dropped_and_counted(tok, caplog):
    path = shared_file(HH[0])
    raw = raw_rows(path, limit=800)
    identical = sum(r["chosen"] == r["rejected"] for r in raw)
    assert identical > 0
    records = load_preference(path, max_examples=800)
    empty = sum(r.chosen != r.rejected and not (r.chosen.strip() and r.rejected.strip()) for r in records)
    with caplog.at_level(logging.INFO, logger="jaxalign.data.preference"):
        tp = tokenize_preference(tok, records, max_length=512, max_prompt_length=384)
    assert tp.drops["identical"] == identical
    assert tp.drops.get("empty completion", 0) == empty
    assert len(tp) == 800 - identical - empty
    assert len([r for r in caplog.records if "dropped" in r.getMessage()]) == 1  # logged once


def test_hh_rlhf_loss_mask_decodes_to_the_completions(tok):
    path = shared_file(HH[1])
    records = load_preference(path, max_examples=24)
    tp = tokenize_preference(tok, records, max_length=2048)
    batch = collate_preference(tp.examples[:8], buckets=BUCKETS, max_length=2048, pad_id=tp.pad_id)
    for b, ex in enumerate(tp.examples[:8]):
        rec = records[ex.index]
        for c, text in enumerate((rec.chosen, rec.rejected)):
            seq, completion = sequences(batch, b, c)
            assert decode(tok, completion) == text + tok.eos_token
            assert decode(tok, seq) == rec.prompt + text + tok.eos_token


# ----------------------------------------------------------------------------------- formats

STANDARD = [
    {"prompt": "The sky is", "chosen": " blue.", "rejected": " green."},
    {"prompt": "Two plus two is", "chosen": " four.", "rejected": " five, obviously."},
    {"prompt": "Water freezes at", "chosen": " zero degrees Celsius.", "rejected": " ninety degrees."},
]


def test_standard_rows_from_jsonl_gz_json_parquet_and_directories(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", STANDARD[:2])
    with gzip.open(tmp_path / "b.jsonl.gz", "wt", encoding="utf-8") as f:
        f.write(json.dumps(STANDARD[2]) + "\n\n")
    (tmp_path / "c.json").write_text(json.dumps(STANDARD), encoding="utf-8")
    expected = [PreferenceRecord("paired", r["prompt"], chosen=r["chosen"], rejected=r["rejected"]) for r in STANDARD]
    strip = lambda recs: [PreferenceRecord(r.kind, r.prompt, chosen=r.chosen, rejected=r.rejected) for r in recs]
    assert strip(load_preference(tmp_path / "a.jsonl") + load_preference(tmp_path / "b.jsonl.gz")) == expected
    assert strip(load_preference(tmp_path / "c.json")) == expected
    assert load_preference(tmp_path / "a.jsonl")[1].source == f"{tmp_path / 'a.jsonl'}:2"
    try:
        import pandas as pd

        pd.DataFrame(STANDARD).to_parquet(tmp_path / "d.parquet")
    except ImportError:  # pragma: no cover
        pass
    else:
        assert strip(load_preference(tmp_path / "d.parquet")) == expected
    everything = load_preference(tmp_path)  # sorted: a.jsonl, b.jsonl.gz, c.json, d.parquet
    assert strip(everything)[:6] == expected + expected
    assert load_preference(tmp_path, max_examples=4)[3].source.endswith("c.json row 1")


def test_implicit_prompt_matches_trl_extract_prompt():
    pairs = [("The sky is blue.", "The sky is green."), ("Q: 2+2? A: four", "Q: 2+2? A: six"),
             ("abc", "xyz"), ("Hello there, friend", "Hello there!")]
    expected = [("The sky is", " blue.", " green."), ("Q: 2+2? A:", " four", " six"), ("", "abc", "xyz"),
                ("Hello there", ", friend", "!")]
    assert [extract_prompt(c, r) for c, r in pairs] == expected
    trl_data_utils = pytest.importorskip("trl.data_utils")
    for (c, r), want in zip(pairs, expected):
        if c[0] != r[0]:
            continue  # TRL's loop compares chosen[-1] when the first characters differ
        got = trl_data_utils.extract_prompt({"chosen": c, "rejected": r})
        assert (got["prompt"], got["chosen"], got["rejected"]) == want
    conv = [{"role": "user", "content": "Sky?"}, {"role": "assistant", "content": "Blue."}]
    bad = [conv[0], {"role": "assistant", "content": "Green."}]
    want = trl_data_utils.extract_prompt({"chosen": conv, "rejected": bad})
    assert extract_prompt(conv, bad) == (want["prompt"], want["chosen"], want["rejected"])


def test_implicit_prompt_rows(tmp_path):
    path = write_jsonl(tmp_path / "implicit.jsonl", [{"chosen": "The sky is blue.", "rejected": "The sky is green."}])
    (rec,) = load_preference(path)
    assert (rec.prompt, rec.chosen, rec.rejected) == ("The sky is", " blue.", " green.")


CONV_EXPLICIT = {
    "prompt": [{"role": "user", "content": "What colour is a ripe banana?"}],
    "chosen": [{"role": "assistant", "content": "A ripe banana is yellow."}],
    "rejected": [{"role": "assistant", "content": "Purple."}],
}
CONV_IMPLICIT = {
    "chosen": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Capital of France?"},
               {"role": "assistant", "content": "Paris."}],
    "rejected": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Capital of France?"},
                 {"role": "assistant", "content": "Lyon, I think."}],
}


def test_conversational_rows_use_the_chat_template(tok, tmp_path, monkeypatch):
    records = load_preference(write_jsonl(tmp_path / "conv.jsonl", [CONV_EXPLICIT, CONV_IMPLICIT]))
    assert records[1].prompt == CONV_IMPLICIT["chosen"][:2] and records[1].chosen == CONV_IMPLICIT["chosen"][2:]
    tp = tokenize_preference(tok, records, max_length=256)
    for ex, rec in zip(tp.examples, records):
        want_prompt = tok.apply_chat_template(rec.prompt, add_generation_prompt=True, tokenize=True,
                                              return_dict=True)["input_ids"]
        assert ex.prompt.tolist() == want_prompt
        for comp_ids, comp in zip(ex.completions, (rec.chosen, rec.rejected)):
            full = tok.apply_chat_template(rec.prompt + comp, tokenize=True, return_dict=True)["input_ids"]
            assert ex.prompt.tolist() + comp_ids.tolist() == full
            assert decode(tok, comp_ids) == comp[-1]["content"] + "<|im_end|>\n"  # the template's end of turn
    monkeypatch.setattr(tok, "chat_template", None)
    with pytest.raises(ValueError, match=r"record 0 \(.*conv.jsonl:1\) is conversational, but the tokenizer has no "
                                         r"chat template"):
        tokenize_preference(tok, records, max_length=256)


def test_auto_chat_template_renders_text_records_as_conversations(tok):
    records = load_preference("builtin:prefs-mini")
    two_turn = next(r for r in records if r.prompt.count("Human:") == 2)
    tp = tokenize_preference(tok, [two_turn], max_length=256, chat_template="auto")
    turns = re.findall(r"(Human|Assistant): ([^\n]*)", two_turn.prompt)
    messages = [{"role": "user" if who == "Human" else "assistant", "content": text.strip()} for who, text in turns]
    assert len(messages) == 3
    want = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert decode(tok, tp.examples[0].prompt) == want
    assert decode(tok, tp.examples[0].completions[0]) == two_turn.chosen.strip() + "<|im_end|>\n"


def test_unpaired_rows_and_paired_rows_unpaired(tok, tmp_path):
    rows = [{"prompt": f"Question {i}:", "completion": f" answer {i}.", "label": i % 2 == 0} for i in range(6)]
    records = load_preference(write_jsonl(tmp_path / "kto.jsonl", rows), kind="unpaired")
    assert [r.label for r in records] == [True, False] * 3
    tp = tokenize_preference(tok, records, max_length=64)
    assert tp.columns == ("completion", "kl_completion")
    batch = collate_preference(tp.examples[:4], buckets=BUCKETS, max_length=64, pad_id=tp.pad_id)
    assert batch["input_ids"].shape == (4, 2, 16) and batch["label"].tolist() == [True, False, True, False]
    assert batch["label"].dtype == bool
    for b in range(4):
        own = tp.examples[b]
        seq, completion = sequences(batch, b, 0)
        kl_seq, kl_completion = sequences(batch, b, 1)
        assert completion.tolist() == own.completions[0].tolist()
        assert kl_completion.tolist() == tp.examples[(b - 1) % 4].completions[0].tolist()  # rolled by one
        assert kl_seq[: len(own.prompt)].tolist() == own.prompt.tolist()

    paired = STANDARD + [{"prompt": "Same", "chosen": " x", "rejected": " x"}]
    unpaired = load_preference(write_jsonl(tmp_path / "pairs.jsonl", paired), kind="unpaired")
    assert [(r.completion, r.label) for r in unpaired] == (
        [(r["chosen"], True) for r in STANDARD] + [(r["rejected"], False) for r in STANDARD])  # TRL's order
    with pytest.raises(ValueError, match="need >= 2 examples"):
        collate_preference(tp.examples[:1], buckets=BUCKETS, max_length=64, pad_id=tp.pad_id)
    # Per-process slices of a global batch: the same bucket and KL roll as the one-process batch.
    parts = [collate_preference(tp.examples[:4], buckets=BUCKETS, max_length=64, pad_id=tp.pad_id,
                                local=slice(2 * i, 2 * i + 2)) for i in range(2)]
    for key in batch:
        np.testing.assert_array_equal(np.concatenate([p[key] for p in parts]), batch[key])


def test_negatives_rows(tok, tmp_path):
    rows = [{"prompt": "Name a fruit:", "rejected": " a chair.", "samples": [" an apple.", " a pear.", " a plum."]},
            {"prompt": "Name a colour:", "rejected": " seven.", "samples": [" red.", " blue."]},
            {"prompt": "Name a day:", "rejected": " Bob.", "samples": [" Monday."]}]
    records = load_preference(write_jsonl(tmp_path / "d2o.jsonl", rows), kind="negatives")
    assert records[0].samples == (" an apple.", " a pear.", " a plum.")
    tp = tokenize_preference(tok, records, max_length=64)
    assert tp.columns == ("rejected", "sample_1") and len(tp) == 3  # K = the fewest samples any record has
    tp2 = tokenize_preference(tok, records, max_length=64, num_samples=2)
    assert tp2.columns == ("rejected", "sample_1", "sample_2") and tp2.drops == {"too few samples": 1}
    batch = collate_preference(tp2.examples, buckets=BUCKETS, max_length=64, pad_id=tp2.pad_id)
    assert batch["input_ids"].shape == (2, 3, 16)
    for c, text in enumerate((" a chair.", " an apple.", " a pear.")):
        assert decode(tok, sequences(batch, 0, c)[1]) == text + tok.eos_token
    # paired rows read as negatives keep prompt and rejected
    (neg,) = load_preference(write_jsonl(tmp_path / "p.jsonl", STANDARD[:1]), kind="negatives")
    assert (neg.prompt, neg.rejected, neg.samples) == ("The sky is", " green.", ())


def test_sft_rows_in_every_format(tok, tmp_path):
    conversation = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]
    rows = [{"prompt": "Name a fruit:", "completion": " an apple."},
            {"messages": conversation},
            {"prompt": "Name a day:", "rejected": " Bob.", "samples": [" Monday.", " Friday."]},
            STANDARD[0]]
    records = load_preference(write_jsonl(tmp_path / "sft.jsonl", rows), kind="sft")
    assert [(r.prompt, r.completion) for r in records] == [
        ("Name a fruit:", " an apple."), (conversation[:1], conversation[1:]),
        ("Name a day:", " Monday."), ("Name a day:", " Friday."), ("The sky is", " blue.")]
    text = [r for r in records if not r.conversational]
    tp = tokenize_preference(tok, text, max_length=64)
    assert tp.columns == ("completion",) and len(tp) == 4
    batch = collate_preference(tp.examples, buckets=BUCKETS, max_length=64, pad_id=tp.pad_id)
    assert batch["input_ids"].shape[:2] == (4, 1) and "label" not in batch
    assert decode(tok, sequences(batch, 2, 0)[1]) == " Friday." + tok.eos_token


OPENAI = {
    "input": {"messages": [{"role": "system", "content": "Be brief."},
                           {"role": "user", "content": "What colour is a ripe banana?"}],
              "tools": [], "parallel_tool_calls": True},
    "preferred_output": [{"role": "assistant", "content": "A ripe banana is yellow."}],
    "non_preferred_output": [{"role": "assistant", "content": "Purple."}],
}
OPENAI_AS_TRL = {"prompt": OPENAI["input"]["messages"], "chosen": OPENAI["preferred_output"],
                 "rejected": OPENAI["non_preferred_output"]}


def test_openai_preference_rows_read_as_trl_conversational(tok, tmp_path):
    second = {"input": {"messages": [{"role": "user", "content": "Capital of France?"}]},
              "preferred_output": [{"role": "assistant", "content": "Paris."}],
              "non_preferred_output": [{"role": "assistant", "content": "Lyon, I think."}]}
    openai = write_jsonl(tmp_path / "openai.jsonl", [OPENAI, second])
    trl = write_jsonl(tmp_path / "trl.jsonl", [OPENAI_AS_TRL, {"prompt": second["input"]["messages"],
                                                               "chosen": second["preferred_output"],
                                                               "rejected": second["non_preferred_output"]}])
    unsourced = lambda records: [dataclasses.replace(r, source="") for r in records]
    for kind in ("paired", "unpaired", "negatives", "sft"):
        assert unsourced(load_preference(openai, kind=kind)) == unsourced(load_preference(trl, kind=kind)), kind
    (rec,) = load_preference(openai, max_examples=1)
    assert (rec.prompt, rec.chosen, rec.rejected) == (OPENAI["input"]["messages"], OPENAI["preferred_output"],
                                                      OPENAI["non_preferred_output"])
    assert rec.source == f"{openai}:1"

    ours = tokenize_preference(tok, load_preference(openai), max_length=256)
    theirs = tokenize_preference(tok, load_preference(trl), max_length=256)
    assert len(ours) == len(theirs) == 2
    for a, b in zip(ours.examples, theirs.examples):
        assert a.prompt.tolist() == b.prompt.tolist()
        assert [c.tolist() for c in a.completions] == [c.tolist() for c in b.completions]
    want = tok.apply_chat_template(OPENAI["input"]["messages"], add_generation_prompt=True, tokenize=True,
                                   return_dict=True)["input_ids"]
    assert ours.examples[0].prompt.tolist() == want
    assert decode(tok, ours.examples[0].completions[0]) == "A ripe banana is yellow.<|im_end|>\n"

    # sft needs only the preferred reply, negatives only the non-preferred one
    sft = {k: v for k, v in OPENAI.items() if k != "non_preferred_output"}
    neg = {k: v for k, v in OPENAI.items() if k != "preferred_output"}
    (s,) = load_preference(write_jsonl(tmp_path / "sft.jsonl", [sft]), kind="sft")
    (n,) = load_preference(write_jsonl(tmp_path / "neg.jsonl", [neg]), kind="negatives")
    assert (s.prompt, s.completion) == (OPENAI["input"]["messages"], OPENAI["preferred_output"])
    assert (n.prompt, n.rejected, n.samples) == (OPENAI["input"]["messages"], OPENAI["non_preferred_output"], ())


def _openai(**changes) -> str:
    row = {**OPENAI, **changes}
    return json.dumps(STANDARD[0]) + "\n" + json.dumps({k: v for k, v in row.items() if v is not ...}) + "\n"


@pytest.mark.parametrize("content,match,kind", [
    (_openai(non_preferred_output=...), r":2: missing 'non_preferred_output'; expected OpenAI's preference format: "
                                        r"'input' \(\{'messages': \[\.\.\.\]\}\), 'preferred_output' and "
                                        r"'non_preferred_output'", "paired"),
    (_openai(preferred_output=...), r":2: missing 'preferred_output'; expected OpenAI's", "sft"),
    (_openai(preferred_output="Yellow."), r":2: 'preferred_output' must be a non-empty list of \{'role', 'content'\} "
                                          r"messages, got str; expected OpenAI's", "paired"),
    (_openai(non_preferred_output=[]), r":2: 'non_preferred_output' must be a non-empty list .*got an empty list",
     "negatives"),
    (_openai(input={"messages": [{"role": "user"}]}), r":2: 'input.messages' has a message without string 'role' "
                                                      r"and 'content'", "paired"),
    (_openai(input={"prompt": "Banana?"}), r":2: 'input' must be an object with 'messages'", "paired"),
    (_openai(input="Banana?"), r":2: 'input' must be an object with 'messages'", "unpaired"),
    (_openai(input={**OPENAI["input"], "tools": [{"type": "function", "function": {"name": "f"}}]}),
     r":2: 'input.tools' is not supported: .*remove 'tools' \(or leave it empty\)", "paired"),
    (_openai(preferred_output=[{"role": "user", "content": "Yellow."}]),
     r":2: 'preferred_output' must hold the assistant's reply \(role 'assistant'\), got roles \['user'\]", "paired"),
])
def test_malformed_openai_rows_name_file_line_and_fix(tmp_path, content, match, kind):
    _expect(tmp_path, "openai.jsonl", content, match, kind)


# ----------------------------------------------------------------------------------- tokenisation


def test_truncation_keeps_the_prompt_end_and_the_completion_start(tok):
    prompt = " ".join(f"word{i}" for i in range(40)) + "\nAnswer:"
    completion = " " + " ".join(f"tok{i}" for i in range(30))
    rec = PreferenceRecord("paired", prompt, chosen=completion, rejected=" no.")
    full_prompt = tok(prompt)["input_ids"]
    full_chosen = tok(prompt + completion + tok.eos_token)["input_ids"][len(full_prompt):]
    assert full_chosen[-1] == tok.eos_token_id and len(full_prompt) > 40

    untouched = tokenize_preference(tok, [rec], max_length=1000).examples[0]
    assert untouched.prompt.tolist() == full_prompt and untouched.completions[0].tolist() == full_chosen

    ex = tokenize_preference(tok, [rec], max_length=1000, max_prompt_length=8, max_completion_length=5).examples[0]
    assert ex.prompt.tolist() == full_prompt[-8:]  # the prompt keeps its end
    assert decode(tok, ex.prompt).endswith("\nAnswer:")
    assert ex.completions[0].tolist() == full_chosen[:5]  # truncated on the right: no EOS
    assert ex.completions[1].tolist()[-1] == tok.eos_token_id  # short completions keep their EOS

    tp = tokenize_preference(tok, [rec], max_length=20, max_prompt_length=12)
    ex = tp.examples[0]
    assert ex.prompt.tolist() == full_prompt[-12:] and ex.completions[0].tolist() == full_chosen[:8]
    assert tp.truncated == {"prompt to max_prompt_length": 1, "completion to max_length": 1}

    with pytest.raises(ValueError, match=r"record 1 \(\): its prompt is \d+ tokens, leaving no room for a "
                                         r"completion within max_length=20 .*set max_prompt_length"):
        tokenize_preference(tok, [PreferenceRecord("paired", "Hi:", chosen=" a", rejected=" b"), rec], max_length=20)
    with pytest.raises(ValueError, match="max_prompt_length=20: must be >= 1 and < max_length=20"):
        tokenize_preference(tok, [rec], max_length=20, max_prompt_length=20)
    with pytest.raises(ValueError, match="max_completion_length=0"):
        tokenize_preference(tok, [rec], max_length=20, max_completion_length=0)
    with pytest.raises(ValueError, match="max_length=1"):
        tokenize_preference(tok, [rec], max_length=1)


class CharTokenizer:
    """A tokenizer that adds a BOS (Llama-style): characters as ids (ord + 10), BOS 1, "</s>" the EOS 2."""

    bos_token_id, eos_token_id, pad_token_id, eos_token, chat_template = 1, 2, 0, "</s>", None

    def __call__(self, texts, add_special_tokens=True, **kwargs):
        single = isinstance(texts, str)
        out = [self._encode(t, add_special_tokens) for t in ([texts] if single else texts)]
        return {"input_ids": out[0] if single else out}

    def _encode(self, text, special):
        ids = [1] if special else []
        for i, part in enumerate(text.split("</s>")):
            ids += ([2] if i else []) + [ord(ch) + 10 for ch in part]
        return ids


def test_a_bos_is_kept_in_front_of_a_truncated_prompt():
    chars = CharTokenizer()
    rec = PreferenceRecord("paired", "abcdefghij", chosen=" xyz", rejected=" no")
    ex = tokenize_preference(chars, [rec], max_length=64).examples[0]
    assert ex.prompt.tolist() == [1] + [ord(c) + 10 for c in "abcdefghij"]
    assert ex.completions[0].tolist() == [ord(c) + 10 for c in " xyz"] + [2]
    ex = tokenize_preference(chars, [rec], max_length=64, max_prompt_length=4).examples[0]
    assert ex.prompt.tolist() == [1] + [ord(c) + 10 for c in "hij"]
    batch = collate_preference([ex], buckets=(8, 16), max_length=64, pad_id=0)
    assert batch["input_ids"].shape == (1, 2, 16)
    assert batch["loss_mask"][0, 0].tolist() == [0] * 4 + [1] * 5 + [0] * 7


def test_drops_are_counted_not_errors(tok, caplog):
    records = [PreferenceRecord("paired", "Q1:", chosen=" yes", rejected=" no"),
               PreferenceRecord("paired", "Q2:", chosen=" same", rejected=" same"),
               PreferenceRecord("paired", "Q3:", chosen="   ", rejected=" no"),
               PreferenceRecord("paired", "", chosen="x", rejected="y")]
    with caplog.at_level(logging.INFO, logger="jaxalign.data.preference"):
        tp = tokenize_preference(tok, records, max_length=32)
    assert tp.drops == {"identical": 1, "empty completion": 1, "empty prompt": 1}
    assert [ex.index for ex in tp.examples] == [0]
    assert len(caplog.records) == 1 and "dropped" in caplog.records[0].getMessage()
    with pytest.raises(ValueError, match="every one of the 2 preference records was dropped"):
        tokenize_preference(tok, records[1:3], max_length=32)


def test_long_prompts_can_be_dropped_and_counted(tok, caplog):
    short = PreferenceRecord("paired", "Hi:", chosen=" a", rejected=" b")
    long = PreferenceRecord("paired", " ".join(f"word{i}" for i in range(40)) + "\nAnswer:", chosen=" yes", rejected=" no")
    with caplog.at_level(logging.INFO, logger="jaxalign.data.preference"):
        tp = tokenize_preference(tok, [short, long], max_length=20, long_prompts="drop")
    assert tp.drops == {"prompt too long": 1} and [ex.index for ex in tp.examples] == [0]
    assert "prompt too long" in caplog.records[-1].getMessage()
    n = len(tok(long.prompt)["input_ids"])
    with pytest.raises(ValueError, match=re.escape(
            "every one of the 1 preference records was dropped ({'prompt too long': 1}); their prompts are up to "
            f"{n} tokens: raise max_length above that (now 20), or set max_prompt_length (< max_length)")):
        tokenize_preference(tok, [long], max_length=20, long_prompts="drop")
    assert len(tokenize_preference(tok, [long], max_length=20, max_prompt_length=12, long_prompts="drop")) == 1
    with pytest.raises(ValueError, match="long_prompts='skip': choose 'error' or 'drop'"):
        tokenize_preference(tok, [long], max_length=20, long_prompts="skip")


def test_collated_batches_have_static_bucketed_shapes(tok):
    tp = tokenize_preference(tok, load_preference("builtin:prefs-mini"), max_length=96)
    assert tp.drops == {} and tp.columns == ("chosen", "rejected")
    stream = BatchStream(tp.examples, 8, seed=3, process_index=0, process_count=1)
    shapes = set()
    for _ in range(stream.batches_per_epoch):
        examples = stream.next()
        batch = tp.collate(examples, BUCKETS)
        B, C, T = batch["input_ids"].shape
        assert (B, C) == (8, 2) and T in BUCKETS + (96,)
        assert T == bucket_length(max(ex.length for ex in examples), BUCKETS, 96)
        assert all(v.dtype == np.int32 and v.shape == (8, 2, T) for v in batch.values())
        assert (batch["loss_mask"] <= batch["attention_mask"]).all() and (batch["loss_mask"][..., 0] == 0).all()
        for b, ex in enumerate(examples):
            for c in range(2):
                n = len(ex.prompt) + len(ex.completions[c])
                assert batch["attention_mask"][b, c].tolist() == [1] * n + [0] * (T - n)
                assert batch["loss_mask"][b, c].sum() == len(ex.completions[c])
                assert (batch["input_ids"][b, c, n:] == tp.pad_id).all()
        shapes.add(T)
    assert len(shapes) >= 2, shapes  # several buckets, not one padded length
    # a batch longer than every bucket pads to max_length
    assert collate_preference(examples, buckets=(8,), max_length=96, pad_id=0)["input_ids"].shape[-1] == 96


# ----------------------------------------------------------------------------------- errors


def _expect(tmp_path, name, content, match, kind="paired"):
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    with pytest.raises(DataFormatError, match=re.escape(str(path)) + match):
        load_preference(path, kind=kind)


GOOD = json.dumps(STANDARD[0])


@pytest.mark.parametrize("name,content,match,kind", [
    ("bad.jsonl", GOOD + "\n{not json\n", r":2: not valid JSON .*expected one JSON object per line", "paired"),
    ("missing.jsonl", GOOD + "\n" + GOOD + '\n{"prompt": "p", "chosen": "c"}\n',
     r":3: missing 'rejected'; expected 'chosen' and 'rejected'", "paired"),
    ("types.jsonl", '{"chosen": 3, "rejected": "r"}\n', r":1: 'chosen' must be a string or a list of .*got int",
     "paired"),
    ("mixed.jsonl", '{"prompt": [{"role": "user", "content": "q"}], "chosen": "a", "rejected": "b"}\n',
     r":1: 'prompt' is a message list but 'chosen'/'rejected' are strings", "paired"),
    ("message.jsonl", '{"chosen": [{"role": "user"}], "rejected": [{"role": "user", "content": "x"}]}\n',
     r":1: 'chosen' has a message without string 'role' and 'content'", "paired"),
    ("list.jsonl", '["chosen", "rejected"]\n', r":1: expected a JSON object with 'chosen' and 'rejected'", "paired"),
    ("label.jsonl", '{"prompt": "p", "completion": "c", "label": "yes"}\n', r":1: 'label' must be a bool", "unpaired"),
    ("kto.jsonl", '{"prompt": "p", "completion": "c"}\n', r":1: missing 'label'; expected 'prompt', 'completion' "
                                                           r"and 'label'", "unpaired"),
    ("samples.jsonl", '{"prompt": "p", "rejected": "r", "samples": "s"}\n', r":1: 'samples' must be a list",
     "negatives"),
    ("d2o.jsonl", '{"prompt": "p"}\n', r":1: missing 'rejected'; expected 'prompt' and 'rejected'", "negatives"),
    ("sft.jsonl", '{"prompt": "p"}\n', r":1: missing 'completion'; expected 'prompt' and 'completion'", "sft"),
    ("chat.jsonl", '{"messages": [{"role": "user", "content": "q"}]}\n', r":1: 'messages' must be a conversation",
     "sft"),
    ("empty.jsonl", "\n\n", r": empty: no preference rows", "paired"),
    ("array.json", json.dumps([STANDARD[0], {"prompt": "p"}]), r": row 2: missing 'chosen' and 'rejected'", "paired"),
    ("notes.txt", "hello", r": unknown preference file type", "paired"),
])
def test_malformed_inputs_name_file_and_line(tmp_path, name, content, match, kind):
    _expect(tmp_path, name, content, match, kind)


def test_other_input_errors(tmp_path):
    with pytest.raises(DataFormatError, match="no such preference file or directory"):
        load_preference(tmp_path / "nope.jsonl")
    with pytest.raises(DataFormatError, match="unknown built-in preference set; choose from builtin:prefs-mini"):
        load_preference("builtin:nope")
    with pytest.raises(ValueError, match="kind='pairs': choose one of paired, unpaired, negatives"):
        load_preference("builtin:prefs-mini", kind="pairs")
    with pytest.raises(DataFormatError, match=r"hf:no-such-user/no-such-set:test: cannot load .*pass a local path"):
        load_preference("hf:no-such-user/no-such-set:test")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataFormatError, match="no preference files"):
        load_preference(tmp_path / "empty")
    try:
        import pandas as pd
    except ImportError:  # pragma: no cover
        return
    pd.DataFrame([STANDARD[0], {"prompt": "p", "chosen": None, "rejected": "r"}]).to_parquet(tmp_path / "x.parquet")
    with pytest.raises(DataFormatError, match=r"x\.parquet: row 2: missing 'chosen'"):
        load_preference(tmp_path / "x.parquet")


# ----------------------------------------------------------------------------------- TRL parity


def _trl(module: str):
    try:
        return __import__(module, fromlist=["_"])
    except Exception as e:  # pragma: no cover
        pytest.skip(f"TRL unavailable ({type(e).__name__}: {e})")


def _trl_prepare(trainer_cls, fake_self, rows, tok, args):
    import datasets

    try:
        return trainer_cls._prepare_dataset(fake_self, datasets.Dataset.from_list(rows), tok, args, "eval")
    except (AttributeError, TypeError, KeyError) as e:  # pragma: no cover - a TRL version with another API
        pytest.skip(f"{trainer_cls.__name__}._prepare_dataset is not TRL 1.x's ({type(e).__name__}: {e})")


def _parity_rows():
    rows = [{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in builtin_prefs_mini()[::40]]
    path = DATA / HH[1]
    if path.exists():  # a few real HH-RLHF rows with their extracted prompts
        rows += [{"prompt": r.prompt, "chosen": r.chosen, "rejected": r.rejected}
                 for r in load_preference(path, max_examples=6) if r.chosen != r.rejected]
    return rows


def test_token_ids_match_trl_dpo_trainer(tok):
    dpo = _trl("trl.trainer.dpo_trainer")
    if not hasattr(dpo, "DataCollatorForPreference"):  # pragma: no cover
        pytest.skip("trl.trainer.dpo_trainer has no DataCollatorForPreference")
    args = SimpleNamespace(dataset_num_proc=None, max_length=None, truncation_mode="keep_start")
    conversational = [CONV_EXPLICIT, CONV_EXPLICIT | {"rejected": [{"role": "assistant", "content": "No"}]}]
    for rows in (_parity_rows(), conversational):
        ours = tokenize_preference(tok, [PreferenceRecord("paired", r["prompt"], chosen=r["chosen"],
                                                          rejected=r["rejected"]) for r in rows], max_length=4096)
        theirs = _trl_prepare(dpo.DPOTrainer, SimpleNamespace(_tokenizer=tok), rows, tok, args)
        assert len(ours) == len(theirs) == len(rows)
        for ex, t in zip(ours.examples, theirs):
            assert ex.prompt.tolist() == t["prompt_ids"]
            assert ex.completions[0].tolist() == t["chosen_ids"] and ex.completions[1].tolist() == t["rejected_ids"]

    # max_length truncation: TRL's collator (keep_start) against our tokeniser's, row by row
    rows = _parity_rows()
    theirs = _trl_prepare(dpo.DPOTrainer, SimpleNamespace(_tokenizer=tok), rows, tok, args)
    idx = [i for i, t in enumerate(theirs) if len(t["prompt_ids"]) < 24][:6]
    collated = dpo.DataCollatorForPreference(pad_token_id=tok.pad_token_id, max_length=24)([theirs[i] for i in idx])
    mine = tokenize_preference(tok, [PreferenceRecord("paired", rows[i]["prompt"], chosen=rows[i]["chosen"],
                                                      rejected=rows[i]["rejected"]) for i in idx], max_length=24)
    assert mine.truncated  # some completions were cut
    ours = collate_preference(mine.examples, buckets=BUCKETS, max_length=24, pad_id=tok.pad_token_id)
    n = len(idx)
    for b in range(n):
        for c in range(2):
            row = collated["input_ids"][c * n + b].numpy()
            seq, completion = sequences(ours, b, c)
            assert seq.tolist() == row[collated["attention_mask"][c * n + b].numpy() == 1].tolist()
            assert completion.tolist() == row[collated["completion_mask"][c * n + b].numpy() == 1].tolist()


def test_unpaired_token_ids_and_kl_match_trl_kto_trainer(tok, tmp_path):
    kto = _trl("trl.trainer.kto_trainer")
    rows = [{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in builtin_prefs_mini()[:8]]
    fake = SimpleNamespace(_tokenizer=tok, calculate_KL=True)
    args = SimpleNamespace(dataset_num_proc=None, max_length=None, per_device_train_batch_size=4)
    theirs = _trl_prepare(kto.KTOTrainer, fake, rows, tok, args)
    records = load_preference(write_jsonl(tmp_path / "pairs.jsonl", rows), kind="unpaired")
    ours = tokenize_preference(tok, records, max_length=4096)
    assert len(ours) == len(theirs) == 16
    for start in range(0, 16, 4):  # TRL rolls the completions within each batch of per_device_train_batch_size
        group = ours.examples[start : start + 4]
        batch = collate_preference(group, buckets=BUCKETS, max_length=4096, pad_id=tok.pad_token_id)
        for b, ex in enumerate(group):
            t = theirs[start + b]
            assert ex.prompt.tolist() == t["prompt_ids"] and ex.completions[0].tolist() == t["completion_ids"]
            assert ex.label == t["label"]
            assert sequences(batch, b, 1)[1].tolist() == t["KL_completion_ids"]
