"""Over-optimisation indicators (Shi et al., arXiv 2410.11677): top-k entropy and mass against
float64 NumPy from whole logits, the vocabulary-chunked LM head against whole logits, completion
masks, their logging during a tiny DPO run on a tiny random Llama (held-out completions and the
policy's own samples), early stopping on the entropy keeping the best checkpoint, and bad
settings failing on load, naming the field."""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import transformers
from safetensors.numpy import save_file
from tokenizers import Tokenizer, models, pre_tokenizers

from jaxalign.config import ConfigError, load_recipe
from jaxalign.config.run import TrainConfig
from jaxalign.data.preference import load_preference
from jaxalign.data.preference.tokens import tokenize_preference
from jaxalign.eval.preference import evaluate_preference
from jaxalign.models.decoders import load_decoder
from jaxalign.ops.topk_entropy import (
    completion_topk,
    lm_head_topk,
    topk_entropy,
    topk_logprobs,
    topk_mass,
)
from jaxalign.training.checkpoint import Checkpointer
from jaxalign.training.early_stopping import EntropyStop
from jaxalign.training.metrics import read_metrics
from jaxalign.training.trainer import Run, train
from jaxalign.viz import plot_runs

WORDS, VOCAB, WIDTH = 60, 64, 16


@pytest.fixture
def x64():
    """float64 in JAX for one test; the previous setting comes back afterwards."""
    previous = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    try:
        yield
    finally:
        jax.config.update("jax_enable_x64", previous)


def reference(logits: np.ndarray, k: int) -> dict[str, np.ndarray]:
    """The indicators in float64 NumPy from whole logits ``[..., V]``."""
    logits = np.asarray(logits, np.float64)
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    top = -np.sort(-p, axis=-1)[..., :k]
    q = top / top.sum(-1, keepdims=True)
    return {"entropy": -(q * np.log2(q)).sum(-1), "entropy_unnormalised": -(top * np.log2(top)).sum(-1),
            "mass": top.sum(-1)}


def test_indicators_from_whole_logits_float64(x64):
    logits = np.random.default_rng(0).normal(size=(3, 5, 50)) * 3
    top = topk_logprobs(jnp.asarray(logits), 10)
    assert top.dtype == jnp.float64 and top.shape == (3, 5, 10)
    want = reference(logits, 10)
    np.testing.assert_allclose(topk_entropy(top), want["entropy"], rtol=1e-12)
    np.testing.assert_allclose(topk_entropy(top, renormalise=False), want["entropy_unnormalised"], rtol=1e-12)
    np.testing.assert_allclose(topk_mass(top), want["mass"], rtol=1e-12)
    # uniform over 20 tokens: the top 10 hold half the mass; renormalised they are uniform over 10
    flat = topk_logprobs(jnp.zeros((20,), jnp.float64), 10)
    assert float(topk_mass(flat)) == pytest.approx(0.5, rel=1e-14)
    assert float(topk_entropy(flat)) == pytest.approx(math.log2(10), rel=1e-14)
    assert float(topk_entropy(flat, renormalise=False)) == pytest.approx(0.5 * math.log2(20), rel=1e-14)
    assert float(topk_entropy(flat, base=math.e)) == pytest.approx(math.log(10), rel=1e-14)


@pytest.mark.parametrize("k, vocab_chunk", [(10, 4), (10, 7), (1, 16), (10, 4096)])
def test_vocabulary_chunks_equal_whole_logits(k, vocab_chunk):
    keys = jax.random.split(jax.random.PRNGKey(0), 2)
    hidden = jax.random.normal(keys[0], (2, 6, 8))
    unembed = jax.random.normal(keys[1], (8, 50)) * 2
    np.testing.assert_allclose(lm_head_topk(hidden, unembed, k, vocab_chunk=vocab_chunk),
                               topk_logprobs(hidden @ unembed, k), rtol=1e-5, atol=1e-5)


def test_completion_topk_counts_completion_tokens_only():
    keys = jax.random.split(jax.random.PRNGKey(1), 2)
    hidden = jax.random.normal(keys[0], (2, 7, 8))
    unembed = jax.random.normal(keys[1], (8, 30))
    loss_mask = jnp.array([[0, 0, 1, 1, 1, 0, 0], [0, 1, 1, 0, 0, 0, 0]])
    out = completion_topk(hidden, unembed, loss_mask, k=5, chunk=4, vocab_chunk=8)
    want = reference(np.asarray(hidden[:, :-1] @ unembed), 5)
    scored = np.asarray(loss_mask[:, 1:], bool)  # token t is predicted at position t-1
    np.testing.assert_array_equal(out.mask, scored)
    for name in ("entropy", "entropy_unnormalised", "mass"):
        got = np.asarray(getattr(out, name))
        np.testing.assert_allclose(got[scored], want[name][scored], rtol=1e-5)
        assert not got[~scored].any()


def test_stopping_rules():
    turn = EntropyStop(patience=2)
    turn.start(3.0)
    assert [turn.update(h) for h in (3.1, 3.05, 3.2, 3.1)] == [None, None, None, None]
    assert "2 consecutive" in turn.update(3.0)
    below = EntropyStop(below=2.5)
    below.start(2.0)  # the initial model is not judged
    assert below.update(2.6) is None and "< eval.stop_entropy_below=2.5" in below.update(2.4)


# ------------------------------------------------------------------------- tiny DPO runs


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A one-layer random Llama of width 16 over a word-level tokenizer (w0 ... w59), and 48
    preference records of those words: (its directory, the records' jsonl)."""
    root = tmp_path_factory.mktemp("tiny-overopt")
    model = root / "llama"
    model.mkdir()
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"w{i}": i + 3 for i in range(WORDS)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                         pad_token="</s>").save_pretrained(model)
    config = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "vocab_size": VOCAB, "hidden_size": WIDTH,
              "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1,
              "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "max_position_embeddings": 64, "tie_word_embeddings": True,
              "bos_token_id": 1, "eos_token_id": 2}
    (model / "config.json").write_text(json.dumps(config))
    layer = {"self_attn.q_proj.weight": (WIDTH, WIDTH), "self_attn.k_proj.weight": (8, WIDTH),
             "self_attn.v_proj.weight": (8, WIDTH), "self_attn.o_proj.weight": (WIDTH, WIDTH),
             "mlp.gate_proj.weight": (32, WIDTH), "mlp.up_proj.weight": (32, WIDTH),
             "mlp.down_proj.weight": (WIDTH, 32)}
    rng = np.random.default_rng(0)
    tensors = {"model.embed_tokens.weight": rng.normal(size=(VOCAB, WIDTH)),
               **{f"model.layers.0.{k}": 0.3 * rng.normal(size=s) for k, s in layer.items()},
               **{f"model.{k}": np.ones(WIDTH) for k in ("norm.weight", "layers.0.input_layernorm.weight",
                                                          "layers.0.post_attention_layernorm.weight")}}
    save_file({k: v.astype(np.float32) for k, v in tensors.items()}, str(model / "model.safetensors"))
    words = lambda n: " ".join(f"w{i}" for i in rng.integers(0, WORDS, n))
    data = root / "prefs.jsonl"
    data.write_text("".join(json.dumps({"prompt": words(rng.integers(2, 6)), "chosen": " " + words(rng.integers(1, 6)),
                                        "rejected": " " + words(rng.integers(1, 6))}) + "\n" for _ in range(48)))
    return model, data


def tiny_config(tiny, *overrides) -> TrainConfig:
    model, data = tiny
    return load_recipe(TrainConfig, None, [
        f"model.name={model}", "model.max_length=16", "data.kind=preference", f"data.path={data}",
        "data.max_examples=32", "data.batch_size=8", "data.buckets=16", "objective.name=dpo", "objective.beta=0.5",
        "optim.lr=3e-2", "optim.schedule=constant", "log.every=1", "log.tensorboard=false",
        f"eval.data={data}", "eval.skip_examples=32", "eval.batch_size=8", *overrides])


@pytest.fixture(scope="module")
def stopped(tiny, tmp_path_factory):
    """A tiny DPO run evaluated at every step, with samples, stopped once the entropy fell twice
    in a row: (its config, summary). At this learning rate the entropy rises for 5 steps, then
    turns down (the paper's shape), so the run stops at step 7 of 12."""
    root = tmp_path_factory.mktemp("stopped")
    cfg = tiny_config(tiny, "steps=12", "optim.lr=0.1", "eval.every=1", "eval.stop_patience=2",
                      "eval.sample_prompts=4", "eval.max_new_tokens=6", f"log.dir={root / 'log'}",
                      f"checkpoint.dir={root / 'ckpt'}", "checkpoint.keep_best=1", "checkpoint.async_save=false")
    return cfg, train(cfg, progress=False)


def test_indicators_are_logged_during_dpo(tiny, stopped):
    cfg, summary = stopped
    rows = [r for r in read_metrics(f"{cfg.log.dir}/metrics.jsonl") if "eval/topk/entropy" in r]
    assert [r["step"] for r in rows] == list(range(summary["steps"] + 1))
    for row in rows:
        for prefix in ("eval/", "eval/samples/"):
            assert 0 < row[prefix + "topk/entropy"] <= math.log2(10) + 1e-6
            assert 0 < row[prefix + "topk/mass"] <= 1 + 1e-6
            assert 0 < row[prefix + "topk/entropy_unnormalised"]
        assert row["eval/logps_per_token/margin"] == pytest.approx(
            row["eval/logps_per_token/chosen"] - row["eval/logps_per_token/rejected"], abs=1e-6)

    # step 0 against whole logits of the untrained model, over every held-out completion token
    decoder = load_decoder(tiny[0])
    records = load_preference(str(tiny[1]), "paired", None, 32)
    tokens = tokenize_preference(decoder.tokenizer, records, max_length=16)
    batch = tokens.collate(tokens.examples, [16])
    ids, attention, loss_mask = (batch[k].reshape(-1, 16) for k in ("input_ids", "attention_mask", "loss_mask"))
    logits = np.asarray(decoder.hidden(decoder.params, ids, attention)[:, :-1] @ decoder.unembed_kernel(decoder.params))
    want, scored = reference(logits, 10), loss_mask[:, 1:].astype(bool)
    for name in ("entropy", "entropy_unnormalised", "mass"):
        assert rows[0][f"eval/topk/{name}"] == pytest.approx(want[name][scored].mean(), rel=1e-5)
    logp = np.take_along_axis(np.asarray(jax.nn.log_softmax(logits)), ids[:, 1:, None], -1)[..., 0]
    per_token = ((logp * scored).sum(-1) / scored.sum(-1)).reshape(-1, 2)
    assert rows[0]["eval/logps_per_token/chosen"] == pytest.approx(per_token[:, 0].mean(), rel=1e-5)
    assert rows[0]["eval/logps_per_token/rejected"] == pytest.approx(per_token[:, 1].mean(), rel=1e-5)


def test_early_stopping_stops_and_keeps_the_highest_entropy_checkpoint(stopped):
    cfg, summary = stopped
    entropy = {step: m["eval/topk/entropy"] for step, m in summary["eval_metrics"].items()}
    stopped_at = summary["steps"]
    assert stopped_at == 7 and "2 consecutive" in summary["stopped_by"]
    assert entropy[7] < entropy[6] < entropy[5] and max(entropy, key=entropy.get) == 5
    assert summary["eval_metric"] == "eval/topk/entropy"
    ckpt = Checkpointer(cfg.checkpoint)
    assert ckpt.best.all_steps() == [5]  # the turning point, not the last step
    assert ckpt.last.all_steps()[-1] == 7  # the stopping step is saved too
    ckpt.close()


def test_plot_draws_the_indicators(stopped, tmp_path):
    cfg, _ = stopped
    fig = plot_runs([cfg.log.dir], tmp_path / "runs.png")
    titles = [ax.get_title() for ax in fig.axes]
    entropy = fig.axes[titles.index("eval: top-k entropy (bits)")]
    assert [line.get_linestyle() for line in entropy.lines] == ["--", ":"]  # held-out, samples
    assert "eval: top-k mass" in titles and (tmp_path / "runs.png").stat().st_size > 0


def test_eval_preference_reports_the_indicators(tiny):
    model, data = tiny
    summary = evaluate_preference(str(model), str(data), max_examples=8, max_length=16, max_prompt_length=None,
                                  batch_size=8, topk=5)
    assert 0 < summary["topk/entropy"] <= math.log2(5) + 1e-6 and 0 < summary["topk/mass"] <= 1 + 1e-6
    assert summary["logps_per_token/chosen"] < 0
    with pytest.raises(ValueError, match="--topk=0: must be >= 1"):
        evaluate_preference(str(model), str(data), topk=0)


@pytest.mark.parametrize("override, field", [
    ("eval.topk=0", "eval.topk=0"),
    ("eval.stop_patience=0", "eval.stop_patience=0"),
    ("eval.stop_entropy_below=-0.5", "eval.stop_entropy_below=-0.5"),
    ("eval.stop_on=eval/samples/topk/entropy", "eval.sample_prompts"),
    ("eval.max_new_tokens=0", "eval.max_new_tokens=0"),
])
def test_bad_settings_fail_on_load_naming_the_field(tiny, override, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        tiny_config(tiny, override)


def test_stopping_needs_preference_evaluation_and_k_fits_the_vocabulary(tiny):
    with pytest.raises(ConfigError, match="need a preference objective and eval.data"):
        tiny_config(tiny, "eval.stop_patience=2", "eval.data=null")
    with pytest.raises(ConfigError, match=rf"eval.topk={VOCAB + 1}: more than the {VOCAB} tokens"):
        Run.build(tiny_config(tiny, f"eval.topk={VOCAB + 1}"), devices=jax.devices()[:1])
