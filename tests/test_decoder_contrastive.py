"""Decoders trained as sentence encoders by the contrastive engine (prompt + last-token or mean
pooling, PromptEOL fine-tuning, Jiang et al. 2023): the training embedding equals the
evaluation embedding, LoRA and GradCache give the uncached full-batch gradients, the sharded
step equals the single-device step, and a trained model exports and embeds as it was trained."""

import json

import jax
import numpy as np
import pytest

from jaxalign.cli import main
from jaxalign.config import load_recipe
from jaxalign.config.run import TrainConfig
from jaxalign.data.stream import to_global
from jaxalign.inference.prompt_embed import EMBEDDING_CONFIG, PromptEncoder, render
from jaxalign.models.decoders import load_decoder
from jaxalign.ops.pooling import PoolingConfig, pool
from jaxalign.training.trainer import Run, train

from test_decoder_parity import save_tiny_decoder
from trees import assert_trees_close

TEMPLATE = 'w1 w2 : "*sent 0*" w3 w4:"'


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tiny-llama")
    save_tiny_decoder(directory, "LlamaForCausalLM", tie_word_embeddings=True, num_hidden_layers=3)
    return directory


def config(model, *overrides) -> TrainConfig:
    base = [f"model.name={model}", f"model.prompt={TEMPLATE}", "model.max_length=32", "data.kind=nli",
            "data.path=builtin:nli-mini", "data.batch_size=8", "data.buckets=32", "eval.data=null", "log.every=1",
            "steps=2", "model.dropout=false", "optim.lr=1e-3"]
    return load_recipe(TrainConfig, None, [*base, *overrides])


def loss_and_grads(run: Run, local: dict):
    batch = to_global(local, run.batch_shardings)
    f = jax.jit(run.task.value_and_grad())
    with jax.set_mesh(run.mesh):
        (loss, _), grads = f(run.task.params, batch, jax.random.PRNGKey(0), run.task.frozen)
    return float(loss), jax.device_get(grads)


@pytest.mark.parametrize("mode,layer", [("last", -1), ("mean", 2)])
def test_training_embedding_is_the_evaluation_embedding(tiny, mode, layer):
    """Right-padded rendered texts through the objective's encoder == the left-padded prompt
    embedder of the raw sentences (what evaluation and `jaxalign embed` use)."""
    encoder = PromptEncoder.build(load_decoder(tiny), TEMPLATE, PoolingConfig(mode=mode, layer=layer))
    sentences = ["w5 w6 w7", "w8", "w9 w10 w11 w12 w13 w14"]
    tok = encoder.tokenizer([render(TEMPLATE, s) for s in sentences], padding=True, return_tensors="np")
    assert tok["attention_mask"][:, -1].min() == 0  # right padding: the rows' ends differ
    out = encoder.apply(encoder.params, tok["input_ids"], tok["attention_mask"])
    trained = np.asarray(pool((out.last_hidden_state,), tok["attention_mask"], encoder.pooling))
    served = encoder.embedder(batch_size=4)(sentences)
    np.testing.assert_allclose(trained, served, atol=2e-5)


def test_lora_gradcache_equals_uncached_and_sharded_equals_single(tiny):
    lora = ["model.lora.rank=4", "model.lora.targets=q_proj,v_proj,down_proj"]
    single = Run.build(config(tiny, *lora, "mesh.data=1"), devices=jax.devices()[:1])
    local = single.task.next_batch()
    assert set(single.task.params) == {"lora", "head"} and set(single.task.frozen) == {"base"}
    loss, grads = loss_and_grads(single, local)
    assert np.isfinite(loss) and any(np.abs(g).max() > 0 for g in jax.tree.leaves(grads["lora"]))
    cached = Run.build(config(tiny, *lora, "mesh.data=1", "objective.cache_chunk=2"), devices=jax.devices()[:1])
    c_loss, c_grads = loss_and_grads(cached, local)
    assert c_loss == pytest.approx(loss, rel=1e-5)
    assert_trees_close(c_grads, grads, rtol=1e-4)
    sharded = Run.build(config(tiny, *lora, "mesh.data=2", "mesh.fsdp=2", "mesh.tensor=2"))
    s_loss, s_grads = loss_and_grads(sharded, local)
    assert s_loss == pytest.approx(loss, rel=1e-5)
    assert_trees_close(s_grads, grads, rtol=1e-4)


def test_trains_exports_and_embeds_as_trained(tiny, tmp_path, capsys):
    export = tmp_path / "out"
    cfg = config(tiny, "model.lora.rank=4", "model.pooling=mean", "model.layer=2", "eval.data=builtin:sts-mini",
                 "eval.every=2", f"export={export}")
    summary = train(cfg, progress=False)
    losses = list(summary["losses"].values())
    assert all(np.isfinite(losses)) and losses[0] != losses[1]
    saved = json.loads((export / EMBEDDING_CONFIG).read_text())
    assert saved == {"prompt": TEMPLATE, "pooling": "mean", "layer": 2}
    assert (export / "adapter" / "adapter_config.json").is_file()
    main(["eval", "sts", "--model", str(export), "--data", "builtin:sts-mini", "--json", str(tmp_path / "sts.json")])
    score = json.loads((tmp_path / "sts.json").read_text())["avg_all"]
    assert score == pytest.approx(summary["eval"][2], abs=1e-3)


def test_unsupervised_views_need_embedding_dropout(tiny):
    unsup = ["data.kind=sentences", "data.path=builtin:sentences-mini", "model.dropout=true"]
    with pytest.raises(ValueError, match="model.embedding_dropout"):
        Run.build(config(tiny, *unsup), devices=jax.devices()[:1])
    run = Run.build(config(tiny, *unsup, "model.embedding_dropout=0.1"), devices=jax.devices()[:1])
    views = run.task.objective.embed(run.task.params["encoder"], *(run.task.next_batch()[k][:, :4]
                                                                  for k in ("input_ids", "attention_mask")),
                                     jax.random.PRNGKey(0))
    assert views.shape[0] == 2 and float(np.abs(views[0] - views[1]).max()) > 1e-4


@pytest.mark.parametrize("overrides,message", [
    (["model.prompt=metaeol"], "training takes one template"),
    (["model.prompt=no placeholder"], "placeholder"),
    (["model.pooling=cls"], "choose last or mean"),
    (["model.layer=9"], "outside the model's depth"),
    (["objective.name=2dmse", "objective.matryoshka_dims=32"], "for encoders"),
])
def test_bad_decoder_settings_fail_before_compiling(tiny, overrides, message):
    with pytest.raises(ValueError, match=message):
        Run.build(config(tiny, *overrides), devices=jax.devices()[:1])


def test_decoder_options_on_an_encoder_are_refused():
    cfg = load_recipe(TrainConfig, None, ["model.prompt=prompteol", "model.lora.rank=2", "eval.data=null"])
    with pytest.raises(ValueError, match="model.prompt, model.lora.rank: for decoder models"):
        Run.build(cfg, devices=jax.devices()[:1])
