"""Decoders as sentence encoders: prompts, layer choice and Token Prepending (Fu et al., ACL
2025, arXiv 2412.11556) on a tiny random Llama, against transformers' PyTorch Llama with
forward pre-hooks doing the reference's in-place replacement."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxalign.cli import _embedder, build_parser, main
from jaxalign.inference.prompt_embed import (PROMPTS, PST, PromptEmbedder, absolute_layer, preprocess,
                                             prompt_templates, render, with_pst_token)
from jaxalign.models.decoders import load_decoder
from jaxalign.models.llama.model import TokenPrepending
from jaxalign.ops.pooling import PoolingConfig
from jaxalign.sharding import MeshConfig, make_mesh

from test_decoder_parity import random_batch, save_tiny_decoder
from torch_refs import torch

LAYERS = 4
SENTENCES = ["w1 w2 w3", "w4", "w5 w6 w7 w8 w9 w10 w11?", 'w12 "w13"']


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tiny-llama")
    model = save_tiny_decoder(directory, "LlamaForCausalLM", tie_word_embeddings=False, num_hidden_layers=LAYERS)
    return model, load_decoder(directory)


def pst_batch(pst: int, side="left"):
    """random_batch rows with ``pst`` at a row-dependent position (absent from the 1-token row)."""
    ids, mask = random_batch(side)
    for row, col in ((0, 5), (1, 10), (2, 4)):
        ids[row, col] = pst
    return ids, mask


def table_row(dec, token):
    return dec.params["embed"]["embedding"][token]


def test_tp_exit_at_or_below_start_is_the_plain_forward(tiny):
    _, dec = tiny
    ids, mask = pst_batch(7)
    plain = np.asarray(dec.hidden(dec.params, ids, mask))
    for start, exit_ in ((2, 2), (3, 1)):
        tp = TokenPrepending(7, start, exit_, table_row(dec, 7))
        np.testing.assert_array_equal(np.asarray(dec.hidden(dec.params, ids, mask, prepend=tp)), plain)


def test_pst_state_at_tp_start_is_previous_layers_last_token_state(tiny):
    _, dec = tiny
    ids, mask = pst_batch(7)
    tp = TokenPrepending(7, 1, 3, table_row(dec, 7))
    plain = np.asarray(dec.hidden(dec.params, ids, mask, output_layer=1))
    replaced = np.asarray(dec.hidden(dec.params, ids, mask, output_layer=1, prepend=tp))
    for row, col in ((0, 5), (1, 10), (2, 4)):
        np.testing.assert_array_equal(replaced[row, col], plain[row, -1])  # left-padded: last = -1
        np.testing.assert_array_equal(np.delete(replaced[row], col, 0), np.delete(plain[row], col, 0))
    np.testing.assert_array_equal(replaced[3], plain[3])  # no PST in that row


def test_tokens_before_pst_are_unchanged(tiny):
    _, dec = tiny
    ids, mask = pst_batch(7)
    tp = TokenPrepending(7, 1, 3, table_row(dec, 7))
    plain = np.asarray(dec.hidden(dec.params, ids, mask))
    ours = np.asarray(dec.hidden(dec.params, ids, mask, prepend=tp))
    for row, col in ((0, 5), (1, 10), (2, 4)):
        real = mask[row] > 0
        before, after = real & (np.arange(ids.shape[1]) < col), real & (np.arange(ids.shape[1]) >= col)
        np.testing.assert_allclose(ours[row, before], plain[row, before], atol=1e-6)
        assert np.abs(ours[row, after] - plain[row, after]).max() > 1e-3


def test_output_layer_is_the_raw_layer_output(tiny):
    _, dec = tiny
    ids, mask = random_batch("left")
    assert np.array_equal(np.asarray(dec.hidden(dec.params, ids, mask, output_layer=LAYERS)),
                          np.asarray(dec.hidden(dec.params, ids, mask)))
    np.testing.assert_array_equal(np.asarray(dec.hidden(dec.params, ids, mask, output_layer=0)),
                                  np.asarray(dec.params["embed"]["embedding"])[ids])
    with pytest.raises(ValueError, match="outside the model's depth"):
        dec.hidden(dec.params, ids, mask, output_layer=LAYERS + 1)
    with pytest.raises(ValueError, match=f"outside the model's depth: choose 0..{LAYERS}"):
        absolute_layer(-(LAYERS + 2), LAYERS)


def torch_prompt_embeddings(model, tokenizer, prompts, pst, tp, layer, mode):
    """The reference procedure in PyTorch: left padding, a pre-hook on layers [tp_start, tp_exit)
    writing the last-token state into the first PST position in place, hidden_states[layer]."""
    tokenizer.padding_side = "left"
    batch = tokenizer(prompts, padding=True, return_tensors="pt")
    ids, mask = batch["input_ids"], batch["attention_mask"]
    first = (ids == pst).int().argmax(1)

    def hook(_, args, kwargs):
        h = args[0] if args else kwargs["hidden_states"]
        h[torch.arange(h.shape[0]), first] = h[:, -1]

    handles = [model.model.layers[i].register_forward_pre_hook(hook, with_kwargs=True) for i in range(*tp)] if tp else []
    try:
        with torch.no_grad():
            model.model.embed_tokens.weight[pst] = 0.0  # our PST embedding
            positions = torch.clamp(mask.cumsum(1) - 1, min=0)
            out = model(input_ids=ids, attention_mask=mask, position_ids=positions, output_hidden_states=True)
    finally:
        for h in handles:
            h.remove()
    states = out.hidden_states[layer].numpy()
    if mode == "last":
        return states[:, -1]
    m = mask.numpy()[..., None]
    return (states * m).sum(1) / m.sum(1)


@pytest.mark.parametrize("mode,layer,tp", [("last", -2, (1, 3)), ("mean", 2, (1, 3)), ("last", -1, None),
                                           ("mean", 1, (0, 2))])
def test_prompt_embeddings_match_transformers_with_hooks(tiny, mode, layer, tp):
    model, dec = tiny
    template = f'w1 w2 : {PST} "*sent 0*" w3 w4 :"'
    embedder = PromptEmbedder(dec, template, PoolingConfig(mode, layer=layer), token_prepending=tp, batch_size=2,
                              buckets=(8, 16))
    ours = embedder(SENTENCES)
    assert ours.shape == (len(SENTENCES), dec.config.hidden_size)
    tokenizer, pst = with_pst_token(dec.tokenizer)
    templates = prompt_templates(template, tp is not None)
    ref = torch_prompt_embeddings(model, tokenizer, [render(templates[0], s) for s in SENTENCES], pst, tp, layer, mode)
    np.testing.assert_allclose(ours, ref, atol=1e-4, rtol=1e-4)
    if tp is not None:  # the replacement matters on both sides
        plain = torch_prompt_embeddings(model, tokenizer, [render(templates[0], s) for s in SENTENCES], pst, None, layer, mode)
        assert np.abs(plain - ref).max() > 1e-3


def test_metaeol_averages_its_prompts(tiny):
    _, dec = tiny
    pooling = PoolingConfig("last", layer=-2)
    mean = PromptEmbedder(dec, "metaeol", pooling, batch_size=4)(SENTENCES[:2])
    each = [PromptEmbedder(dec, t, pooling, batch_size=4)(SENTENCES[:2]) for t in PROMPTS["metaeol"]]
    assert len(each) == 8
    np.testing.assert_allclose(mean, np.mean(each, 0), rtol=1e-6, atol=1e-6)


def test_prompts_and_preprocessing_follow_the_reference():
    assert preprocess("a b") == "a b." and preprocess("is it?") == "is it." and preprocess("a 'b'") == "a 'b'"
    assert preprocess('say "hi"') == "say 'hi'"  # a final quote counts as an ending
    assert preprocess('he said "why?"') == "he said 'why?'"
    assert render(PROMPTS["prompteol"][0], "A cat") == 'This sentence : <PST> "A cat." means in one word:"'
    assert prompt_templates("prompteol", False) == ('This sentence : "*sent 0*" means in one word:"',)
    assert len(prompt_templates("metaeol", True)) == 8 and all(PST in t for t in prompt_templates("metaeol", True))
    with pytest.raises(ValueError, match=r"sentence placeholder \*sent 0\*"):
        prompt_templates("Summarise: {}", False)
    with pytest.raises(ValueError, match="token prepending needs <PST> in the template"):
        prompt_templates('This sentence : "*sent 0*" means', True)


def test_tokenizer_that_cannot_take_pst_is_refused():
    class Frozen:
        def add_tokens(self, tokens):
            raise NotImplementedError("no added tokens")

    with pytest.raises(ValueError, match="cannot take the <PST> token"):
        with_pst_token(Frozen())


def test_pst_id_is_looked_up_and_may_lie_past_the_embedding_table(tiny):
    _, dec = tiny
    _, pst = with_pst_token(dec.tokenizer)
    assert pst == len(dec.tokenizer)  # a new token
    ids, mask = pst_batch(dec.config.vocab_size + 5)
    tp = TokenPrepending(dec.config.vocab_size + 5, 1, 3, jnp.zeros((dec.config.hidden_size,)))
    assert np.isfinite(np.asarray(jax.jit(lambda p: dec.hidden(p, ids, mask, prepend=tp))(dec.params))).all()


# ----------------------------------------------------------------------------------------- CLI


def test_cli_embed_and_eval_sts_with_a_decoder(tiny, tmp_path, capsys):
    model, dec = tiny
    src, out = tmp_path / "in.txt", tmp_path / "out.npy"
    src.write_text("\n".join(SENTENCES) + "\n")
    flags = ["--model", str(dec.path), "--batch-size", "2", "--pooling", "mean", "--layer", "3",
             "--token-prepending", "--tp-start", "0", "--tp-exit", "2"]
    assert main(["embed", "--input", str(src), "--output", str(out), *flags]) == 0
    expected = PromptEmbedder(dec, "prompteol", PoolingConfig("mean", layer=3), token_prepending=(0, 2),
                              batch_size=2)(SENTENCES)
    np.testing.assert_allclose(np.load(out), expected, rtol=1e-6, atol=1e-6)
    assert main(["eval", "sts", "--data", "builtin:sts-mini", "--prompt", "pcot", *flags]) == 0
    assert "sts-mini" in capsys.readouterr().out


@pytest.mark.parametrize("flags,message", [
    (["--prompt", "no placeholder"], r"sentence placeholder \*sent 0\*"),
    (["--layer", "9"], "outside the model's depth: choose 0..4"),
    (["--tp-exit", "3"], "add --token-prepending"),
    (["--pooling", "cls"], "decoder pooling 'cls': choose last or mean"),
])
def test_cli_decoder_errors_name_the_fix(tiny, tmp_path, flags, message):
    _, dec = tiny
    args = build_parser().parse_args(["embed", "--input", "x", "--output", "y", "--model", str(dec.path), *flags])
    with pytest.raises(ValueError, match=message):
        _embedder(args)


def test_cli_decoder_flags_are_refused_for_an_encoder():
    args = build_parser().parse_args(["embed", "--input", "x", "--output", "y", "--token-prepending"])
    with pytest.raises(ValueError, match="--token-prepending: only for a decoder --model"):
        _embedder(args)


def test_mteb_meta_takes_a_prompt_embedder(tiny):
    mteb_eval = pytest.importorskip("jaxalign.eval.mteb")
    _, dec = tiny
    meta = mteb_eval.embedder_meta(PromptEmbedder(dec, "ke", PoolingConfig("mean", layer=2), token_prepending=(1, 2)),
                                   "jaxalign/tiny")
    assert meta.experiment_kwargs == {"mode": "mean", "layer": 2, "prompt": "ke", "token_prepending": (1, 2)}
    assert mteb_eval.embedder_meta(PromptEmbedder(dec), "jaxalign/tiny").experiment_kwargs == {
        "prompt": "prompteol", "token_prepending": None}
    assert meta.max_tokens == dec.max_length


def test_sharded_prompt_embeddings_equal_single_device(tiny):
    _, dec = tiny
    mesh = make_mesh(MeshConfig(2, 2, 2))
    pooling, tp = PoolingConfig("last", layer=-2), (1, 3)
    single = PromptEmbedder(dec, "prompteol", pooling, token_prepending=tp, batch_size=4)(SENTENCES)
    sharded = PromptEmbedder(load_decoder(dec.path, mesh=mesh), "prompteol", pooling, token_prepending=tp,
                             batch_size=4, mesh=mesh)
    np.testing.assert_allclose(sharded(SENTENCES), single, rtol=1e-5, atol=1e-5)
