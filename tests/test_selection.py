"""Data selection (`jaxalign select`): Deita's expected score against a float64 softmax and
against the logits of a plain forward, the turns of HH transcripts, the diversity filter
against a brute-force reference, the entropy change against its definition (refitting nothing,
removing each point from the plug-in entropy), resuming from the score cache, and bad options."""

import json

import jax
import numpy as np
import pytest

from jaxalign.cli import main
from jaxalign.data.preference import load_preference
from jaxalign.models.decoders import load_decoder
from jaxalign.selection import deita, select as sel
from jaxalign.selection.diversity import repr_filter
from jaxalign.selection.entropy import entropy_change

from test_decoder_parity import save_tiny_decoder, save_tokenizer


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny random Llama whose word-level tokenizer also holds the digits 1-6 as tokens."""
    directory = tmp_path_factory.mktemp("tiny-llama")
    save_tiny_decoder(directory, "LlamaForCausalLM", tie_word_embeddings=False, num_hidden_layers=2)
    import transformers
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"w{i}": i + 3 for i in range(60)},
             **{d: 63 + i for i, d in enumerate("123456")}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>",
                                         eos_token="</s>").save_pretrained(directory)
    return directory


def test_expected_score_is_the_digit_softmax_mean():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(5, 6)) * 3
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    with jax.enable_x64():
        np.testing.assert_allclose(np.asarray(deita.expected_score(jax.numpy.asarray(logits))), p @ np.arange(1, 7),
                                   rtol=1e-12)
    assert float(deita.expected_score(jax.numpy.asarray([0.0, 0, 0, 0, 0, 50]))) == pytest.approx(6.0)


def test_scores_are_the_digit_logits_after_the_prompt(tiny):
    dec = load_decoder(tiny)
    scorer = deita.DeitaScorer(dec, batch_size=2, max_length=64)
    assert scorer.ids == tuple(range(63, 69))
    instructions, outputs = ["w1 w2 w3", "w4", "w5 w6 w7 w8"], ["w9", "w10 w11", "w12"]
    got = scorer.quality(instructions, outputs)
    for i, o, g in zip(instructions, outputs, got):
        ids = dec.tokenizer(deita.QUALITY_PROMPT.format(instruction=i, output=o), return_tensors="np")["input_ids"]
        logits = np.asarray(dec.logits(dec.params, ids, np.ones_like(ids)))[0, -1, list(scorer.ids)]
        assert g == pytest.approx(float(deita.expected_score(jax.numpy.asarray(logits))), abs=1e-5)
    assert np.all((got >= 1) & (got <= 6))


def test_long_texts_are_cut_and_the_closing_prompt_kept(tiny):
    scorer = deita.DeitaScorer(load_decoder(tiny), max_length=48)
    prompt = scorer._fit(deita.QUALITY_PROMPT, instruction=" ".join(["w1"] * 100), output=" ".join(["w2"] * 100))
    assert prompt.endswith(" \n##Quality: ") and len(scorer.decoder.tokenizer(prompt)["input_ids"]) <= 48


def test_a_tokenizer_without_digit_tokens_falls_back_to_three(tmp_path):
    save_tiny_decoder(tmp_path, "LlamaForCausalLM", tie_word_embeddings=True, num_hidden_layers=1)
    scorer = deita.DeitaScorer(load_decoder(tmp_path))
    assert scorer.ids is None
    np.testing.assert_array_equal(scorer.complexity(["w1", "w2"]), [3.0, 3.0])


def test_hh_transcripts_split_into_turns(tmp_path):
    row = {"chosen": "\n\nHuman: a?\n\nAssistant: b.\n\nHuman: c?\n\nAssistant: d.",
           "rejected": "\n\nHuman: a?\n\nAssistant: b.\n\nHuman: c?\n\nAssistant: e."}
    (tmp_path / "hh.jsonl").write_text(json.dumps(row) + "\n")
    (record,) = load_preference(str(tmp_path / "hh.jsonl"))
    assert sel.turns(record) == [("a?", "b."), ("c?", "d.")]
    assert sel.conversation_text(record).endswith("USER: a? ASSISTANT: b.</s> USER: c? ASSISTANT: d.</s>")


def brute_force_filter(x, order, tau, count):
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    kept = []
    for i in order:
        if len(kept) < count and all(float(x[i] @ x[j]) <= tau for j in kept):
            kept.append(i)
    return kept


def test_repr_filter_matches_brute_force():
    rng = np.random.default_rng(1)
    centres = rng.normal(size=(4, 8))
    x = np.repeat(centres, 10, axis=0) + 0.2 * rng.normal(size=(40, 8))  # clusters of near-duplicates
    order = rng.permutation(40)
    for tau, count in ((0.9, 40), (0.5, 3), (0.99, 12)):
        assert repr_filter(x, order, tau=tau, count=count).tolist() == brute_force_filter(x, order, tau, count)
    assert len(repr_filter(x, order, tau=0.9)) < 40  # near-duplicates rejected
    with pytest.raises(ValueError, match="in \\(0, 1\\)"):
        repr_filter(x, order, tau=1.0)


def test_entropy_change_is_the_leave_one_out_plugin_entropy_difference():
    from sklearn.decomposition import PCA
    from sklearn.mixture import GaussianMixture

    rng = np.random.default_rng(2)
    x = np.concatenate([rng.normal(0, 1, (30, 5)), rng.normal(4, 0.5, (20, 5))])
    delta = entropy_change(x, dims=3)
    z = PCA(n_components=3, random_state=0).fit_transform(x)
    log_p = GaussianMixture(2, covariance_type="full", random_state=0, reg_covar=1e-4).fit(z).score_samples(z)
    h = -log_p.mean()
    loo = np.array([h - (-np.delete(log_p, i).mean()) for i in range(len(x))])
    np.testing.assert_allclose(delta, loo, rtol=1e-9, atol=1e-12)


def test_cli_selects_resumes_and_writes_loadable_rows(tiny, tmp_path, capsys):
    out = tmp_path / "selected.jsonl"
    args = ["select", "--data", "builtin:prefs-mini", "--max-examples", "12", "--scorer", str(tiny),
            "--fraction", "0.5", "--output", str(out), "--max-length", "96", "--tau", "0.999"]
    assert main(args) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 6 and [r["selection"]["rank"] for r in rows] == list(range(6))
    scores = [r["selection"]["score"] for r in rows]
    assert scores == sorted(scores, reverse=True)  # tau near 1 rejects nothing here
    cache = out.with_name(out.name + ".scores.jsonl")
    assert len(cache.read_text().splitlines()) == 12
    # Resume: drop the last scored rows from the cache; only they are scored again.
    lines = cache.read_text().splitlines()
    cache.write_text("\n".join(lines[:7]) + "\n")
    assert main(args) == 0
    assert len(cache.read_text().splitlines()) == 12
    again = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["selection"]["row"] for r in again] == [r["selection"]["row"] for r in rows]
    assert len(load_preference(str(out))) == 6
    assert main([*args[:-4], "--method", "random", "--output", str(tmp_path / "r.jsonl")]) == 0
    assert len((tmp_path / "r.jsonl").read_text().splitlines()) == 6


@pytest.mark.parametrize("extra,message", [
    (["--fraction", "0"], "in \\(0, 1\\]"),
    (["--fraction", "1.5"], "in \\(0, 1\\]"),
    (["--tau", "1"], "in \\(0, 1\\)"),
    (["--method", "best"], "choose one of deita, entropy, random"),
])
def test_bad_options_fail_before_any_model_loads(tmp_path, extra, message, capsys):
    assert main(["select", "--data", "builtin:prefs-mini", "--output", str(tmp_path / "o.jsonl"), *extra]) != 0
    assert message.replace("\\", "") in capsys.readouterr().err.replace("\\", "")
