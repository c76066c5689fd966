"""The decoder forward under jax.jit with explicit shardings, on the 8 simulated CPU devices,
equals the single-device run: the whole-sequence logits and a cached prefill + decode step.

A tiny random Llama checkpoint (grouped-query attention, q/k/v/o biases, untied head), written
with jaxalign's own export table so the test needs neither torch nor the SmolLM2 file.
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import save_file

from jaxalign.models.decoders import load_decoder
from jaxalign.models.export import checkpoint_tensors
from jaxalign.models.llama import LlamaConfig, LlamaForCausalLM, position_ids
from jaxalign.models.llama import weights as llama_weights
from jaxalign.sharding import MeshConfig, make_mesh, named_sharding, tree_shardings

MESHES = [(8, 1, 1), (2, 4, 1), (2, 2, 2)]
HF = dict(model_type="llama", vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, rms_norm_eps=1e-6,
          attention_bias=True, tie_word_embeddings=False, rope_theta=10000.0, bos_token_id=1, eos_token_id=2)
LENGTHS = (12, 5, 9, 1, 7, 12, 3, 10)  # 8 rows: the batch splits over data x fsdp = 8 on every mesh


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    directory = tmp_path_factory.mktemp("tiny-llama")
    config = LlamaConfig.from_hf(HF)
    abstract = nnx.to_pure_dict(nnx.state(nnx.eval_shape(lambda: LlamaForCausalLM(config, rngs=nnx.Rngs(0))), nnx.Param))
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda s: 0.2 * rng.standard_normal(s.shape), abstract)
    tensors = checkpoint_tensors(llama_weights.RULES, params, config.num_hidden_layers, "model.")
    tensors = {name: t + ("norm" in name) for name, t in tensors.items()}  # norm scales around 1
    save_file(tensors, str(directory / "model.safetensors"))
    (directory / "config.json").write_text(json.dumps(HF))
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"w{i}": i + 3 for i in range(60)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>").save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def batch():
    """Right-padded rows (even) and left-padded rows (odd) of varied lengths."""
    rng = np.random.default_rng(1)
    t = max(LENGTHS)
    ids = np.full((len(LENGTHS), t), 2, np.int32)
    mask = np.zeros_like(ids)
    for row, n in enumerate(LENGTHS):
        cols = slice(0, n) if row % 2 == 0 else slice(t - n, t)
        ids[row, cols], mask[row, cols] = rng.integers(3, 128, n), 1
    return ids, mask


def cached_step(decoder):
    """Prefill a left-padded batch into the cache, then one decode step: that step's logits."""

    def f(params, ids, mask):
        cache = decoder.init_cache(ids.shape[0], ids.shape[1] + 4)
        hidden, cache = decoder.forward_cached(params, ids, mask, position_ids(mask), cache)
        nxt = jnp.argmax(decoder.unembed(params, hidden[:, -1]), axis=-1)[:, None]
        positions = mask.sum(axis=1, keepdims=True)
        hidden, _ = decoder.forward_cached(params, nxt, jnp.ones_like(nxt), positions, cache)
        return decoder.unembed(params, hidden[:, 0])

    return f


def left_padded(ids, mask):
    t = ids.shape[1]
    out_ids, out_mask = np.full_like(ids, 2), np.zeros_like(mask)
    for row, n in enumerate(mask.sum(1)):
        real = ids[row][mask[row] > 0]
        out_ids[row, t - n:], out_mask[row, t - n:] = real, 1
    return out_ids, out_mask


@pytest.fixture(scope="module")
def single(checkpoint, batch):
    dec = load_decoder(checkpoint)
    return np.asarray(jax.jit(dec.logits)(dec.params, *batch)), np.asarray(jax.jit(cached_step(dec))(dec.params, *left_padded(*batch)))


@pytest.mark.parametrize("shape", MESHES, ids=lambda s: "x".join(map(str, s)))
def test_sharded_decoder_equals_single_device(checkpoint, batch, single, shape):
    mesh = make_mesh(MeshConfig(*shape))
    dec = load_decoder(checkpoint, mesh=mesh)
    assert len(dec.params["layers"]["mlp"]["up"]["kernel"].sharding.device_set) == 8
    if shape[2] > 1:  # tensor parallel: the head and the vocabulary are split
        assert dec.params["lm_head"]["kernel"].sharding.spec == named_sharding(mesh, ("embed", "vocab")).spec
        assert not dec.params["layers"]["attention"]["k"]["kernel"].sharding.is_fully_replicated
    params_sharding = tree_shardings(mesh, dec.axes, dec.params)
    tokens = named_sharding(mesh, ("batch", "length"))
    logits = jax.jit(dec.logits, in_shardings=(params_sharding, tokens, tokens),
                     out_shardings=named_sharding(mesh, ("batch", "length", "act_vocab")))
    step = jax.jit(cached_step(dec), in_shardings=(params_sharding, tokens, tokens),
                   out_shardings=named_sharding(mesh, ("batch", "act_vocab")))
    with jax.set_mesh(mesh):
        out = logits(dec.params, *batch)
        out_step = step(dec.params, *left_padded(*batch))
    assert out.sharding.spec[0] == ("data", "fsdp")
    mask = batch[1][..., None]
    np.testing.assert_allclose(np.asarray(out) * mask, single[0] * mask, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(out_step), single[1], rtol=1e-5, atol=1e-5)
