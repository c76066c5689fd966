"""Scanned layers (jaxalign.models.scan): the scan equals the same layer code run in a Python
loop, forward and gradients under every remat policy; stacked checkpoints load and export back
bit-exactly; bad remat names and too-deep truncations fail before anything compiles."""

from __future__ import annotations

import functools
import typing

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import load_file

from jaxalign.config.run import ModelConfig
from jaxalign.models import scan as scan_lib
from jaxalign.models.bert.config import BertConfig
from jaxalign.models.bert.model import BertEncoder
from jaxalign.models.decoders import load_decoder
from jaxalign.models.export import export_decoder
from jaxalign.models.llama.config import LlamaConfig
from jaxalign.models.llama.model import LlamaForCausalLM, TokenPrepending
from jaxalign.sharding.rules import DEFAULT_RULES

# three layers: full attention, then two sliding-window layers (Qwen2's max_window_layers=1)
LLAMA = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=3, num_attention_heads=4,
                    num_key_value_heads=2, head_dim=8, sliding_window=3, sliding_layers=(False, True, True))


def batch(rows=3, length=10, vocab=64):
    rng = np.random.default_rng(0)
    ids = jnp.asarray(rng.integers(3, vocab, (rows, length)), jnp.int32)
    mask = jnp.asarray(np.arange(length)[None] < np.array([length, 6, 1][:rows])[:, None], jnp.int32)
    return ids, mask


def llama_pair(remat="none", cfg=LLAMA, dtype=jnp.float32):
    """(scanned, looped) graphdefs of one model and its state: the same weights."""
    kw = dict(remat=remat, dtype=dtype, param_dtype=dtype)
    scanned = nnx.split(LlamaForCausalLM(cfg, **kw, rngs=nnx.Rngs(0)))
    looped = nnx.split(LlamaForCausalLM(cfg, **kw, scan=False, rngs=nnx.Rngs(0)))
    return scanned[0], looped[0], scanned[1]


def remat_policies():
    hosts = {m.kind for m in jax.devices()[0].addressable_memories()}
    return [p for p in scan_lib.REMAT_POLICIES if p != "offload_qkv_proj" or scan_lib.HOST_MEMORY in hosts]


def test_parameters_are_stacked_with_a_layers_axis():
    state = nnx.to_pure_dict(nnx.state(nnx.eval_shape(lambda: LlamaForCausalLM(LLAMA, rngs=nnx.Rngs(0)))))
    assert state["layers"]["attention"]["q"]["kernel"].shape == (3, 32, 32)
    assert state["layers"]["mlp"]["down"]["kernel"].shape == (3, 48, 32)
    assert ("layers", None) in DEFAULT_RULES
    # each layer its own initialisation
    model = LlamaForCausalLM(LLAMA, rngs=nnx.Rngs(0))
    q = np.asarray(model.layers.attention.q.kernel[...])
    assert not np.allclose(q[0], q[1])


@pytest.mark.parametrize("remat", remat_policies())
def test_scan_equals_loop_with_gradients(remat):
    """In float64, so that XLA's different fusion of a scan and of an unrolled loop (float32
    rounding of order 1e-5 in the gradients) cannot hide a real difference."""
    with jax.enable_x64(True):
        _scan_equals_loop(remat)


def _loss(graphdef, state):
    ids, mask = batch()
    model = nnx.merge(graphdef, state)
    hidden = model(ids, mask)[0]
    return jnp.sum(jnp.tanh(model.logits(hidden)) * mask[..., None]), hidden


@functools.lru_cache(maxsize=1)
def _gradients_without_remat():
    graphdef, _, state = llama_pair("none", dtype=jnp.float64)
    return jax.tree.leaves(jax.jit(jax.grad(lambda s: _loss(graphdef, s)[0]))(state))


def _scan_equals_loop(remat):
    g_scan, g_loop, state = llama_pair(remat, dtype=jnp.float64)
    loss = _loss
    (l_scan, h_scan), d_scan = jax.jit(jax.value_and_grad(loss, argnums=1, has_aux=True), static_argnums=0)(g_scan, state)
    (l_loop, h_loop), d_loop = jax.jit(jax.value_and_grad(loss, argnums=1, has_aux=True), static_argnums=0)(g_loop, state)
    assert h_scan.dtype == jnp.float64
    np.testing.assert_allclose(h_scan, h_loop, atol=1e-10)
    np.testing.assert_allclose(l_scan, l_loop, rtol=1e-10)
    for a, b in zip(jax.tree.leaves(d_scan), jax.tree.leaves(d_loop), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-10)
    # remat changes what is stored, never the gradient
    for a, b in zip(jax.tree.leaves(d_scan), _gradients_without_remat(), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-10)


def test_save_qkv_proj_saves_the_projections():
    """Under save_qkv_proj the backward pass keeps the named q/k/v outputs; under full nothing."""
    ids, mask = batch()
    saved = {}
    for remat in ("full", "save_qkv_proj"):
        graphdef, state = nnx.split(LlamaForCausalLM(LLAMA, remat=remat, rngs=nnx.Rngs(0)))
        f = lambda s, g=graphdef: jnp.sum(nnx.merge(g, s)(ids, mask)[0])
        jaxpr = jax.make_jaxpr(jax.linearize(f, state)[1])(state)
        saved[remat] = sum(int(np.prod(v.aval.shape)) for v in jaxpr.jaxpr.constvars)
    q_k_v = 3 * (32 + 16 + 16) * 3 * 10  # layers x (N D + 2 K D) x rows x length
    assert saved["save_qkv_proj"] - saved["full"] >= q_k_v


def test_output_layer_and_token_prepending_equal_loop():
    with jax.enable_x64(True):
        _output_layer_and_token_prepending()


def _output_layer_and_token_prepending():
    g_scan, g_loop, state = llama_pair(dtype=jnp.float64)
    ids, mask = batch()
    tp = TokenPrepending(token_id=5, start=1, exit=2, embedding=jnp.ones((32,), jnp.float64))
    ids = ids.at[:, 2].set(5)
    for kwargs in ({"output_layer": 2}, {"output_layer": 0}, {"prepend": tp}, {"prepend": tp, "output_layer": 2}):
        a, b = (jax.jit(lambda s, g=g, kw=kwargs: nnx.merge(g, s)(ids, mask, **kw)[0])(state) for g in (g_scan, g_loop))
        np.testing.assert_allclose(a, b, atol=1e-10, err_msg=str(kwargs))
    # the prefix of a deeper model: running only the first n layers is the n-layer model
    shallow = LlamaForCausalLM(LLAMA.truncated(2), dtype=jnp.float64, param_dtype=jnp.float64, rngs=nnx.Rngs(0))
    nnx.update(shallow, jax.tree.map(lambda x: x[:2] if x.ndim and x.shape[0] == 3 else x,
                                     nnx.state(nnx.merge(g_scan, state)), is_leaf=lambda x: isinstance(x, jax.Array)))
    raw = nnx.merge(g_scan, state)(ids, mask, output_layer=2)[0]
    np.testing.assert_allclose(shallow.norm(raw), shallow(ids, mask)[0], atol=1e-10)


def test_bert_scan_equals_loop_with_dropout_and_hidden_states():
    cfg = BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=48)
    g_scan, state = nnx.split(BertEncoder(cfg, rngs=nnx.Rngs(0)))
    g_loop, _ = nnx.split(BertEncoder(cfg, scan=False, rngs=nnx.Rngs(0)))
    assert nnx.to_pure_dict(state)["layers"]["attention"]["query"]["kernel"].shape == (3, 32, 32)
    ids, mask = batch()
    for deterministic in (True, False):
        def run(graphdef, state, deterministic=deterministic):
            rngs = None if deterministic else nnx.Rngs(dropout=jax.random.key(1))
            out = nnx.merge(graphdef, state)(ids, mask, deterministic=deterministic, rngs=rngs,
                                             output_hidden_states=True)
            return out.last_hidden_state, out.hidden_states

        (a, ha), (b, hb) = (jax.jit(run, static_argnums=0)(g, state) for g in (g_scan, g_loop))
        np.testing.assert_allclose(a, b, atol=1e-6)
        assert len(ha) == len(hb) == 4
        for x, y in zip(ha, hb):
            np.testing.assert_allclose(x, y, atol=1e-6)
        np.testing.assert_allclose(ha[-1], a)


def test_stacked_checkpoint_round_trips_through_export(tmp_path):
    from test_decoder_parity import save_tiny_decoder

    save_tiny_decoder(tmp_path / "hf", "Qwen2ForCausalLM", tie_word_embeddings=False, num_hidden_layers=3)
    original = load_file(str(tmp_path / "hf" / "model.safetensors"))
    dec = load_decoder(tmp_path / "hf")
    q = np.asarray(dec.params["layers"]["attention"]["q"]["kernel"])
    assert q.shape[0] == 3
    for i in range(3):
        np.testing.assert_array_equal(q[i], original[f"model.layers.{i}.self_attn.q_proj.weight"].T)
    export_decoder(dec, jax.device_get(dec.params), tmp_path / "out")
    exported = load_file(str(tmp_path / "out" / "model.safetensors"))
    assert set(exported) == set(original)
    for name, tensor in original.items():
        np.testing.assert_array_equal(exported[name], tensor.astype(np.float32), err_msg=name)

    shallow = load_decoder(tmp_path / "hf", num_layers=2)
    assert shallow.params["layers"]["attention"]["q"]["kernel"].shape[0] == 2
    np.testing.assert_array_equal(shallow.params["layers"]["attention"]["q"]["kernel"], q[:2])


def test_bad_remat_and_num_layers_fail_before_compiling(tmp_path):
    from test_decoder_parity import save_tiny_decoder

    with pytest.raises(ValueError, match=r"remat='dotz' is not a remat policy; choose one of none, full, minimal"):
        LlamaForCausalLM(LLAMA, remat="dotz", rngs=nnx.Rngs(0))
    assert LlamaForCausalLM(LLAMA, remat="dots", rngs=nnx.Rngs(0)).remat == "minimal"  # the old name
    # the config's choices are exactly the model's
    choices = typing.get_args(typing.get_type_hints(ModelConfig)["remat"])
    assert set(choices) == {*scan_lib.REMAT_POLICIES, *scan_lib.REMAT_ALIASES}
    save_tiny_decoder(tmp_path, "LlamaForCausalLM", tie_word_embeddings=True)
    with pytest.raises(ValueError, match=r"model.num_layers=5: the checkpoint has 2 layers"):
        load_decoder(tmp_path, num_layers=5)


def test_missing_layer_tensors_are_named_together(tmp_path):
    from safetensors.numpy import save_file
    from test_decoder_parity import save_tiny_decoder

    from jaxalign.weights.safetensors_io import CheckpointError

    save_tiny_decoder(tmp_path, "LlamaForCausalLM", tie_word_embeddings=True)
    tensors = load_file(str(tmp_path / "model.safetensors"))
    del tensors["model.layers.1.self_attn.q_proj.weight"]
    tensors["model.layers.0.mlp.up_proj.weight"] = tensors["model.layers.0.mlp.up_proj.weight"][:5]
    save_file(tensors, str(tmp_path / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"(?s)1 missing tensor.*layers\.1\.self_attn\.q_proj\.weight.*"
                                              r"1 mis-shaped tensor.*layers\.0\.mlp\.up_proj\.weight"):
        load_decoder(tmp_path)


def test_program_size_does_not_grow_with_depth():
    """One layer body is lowered whatever the depth (an unrolled loop lowers L copies)."""
    ids, mask = batch()

    def program(layers, scan):
        cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=layers,
                          num_attention_heads=4, num_key_value_heads=2, head_dim=8)
        graphdef, state = nnx.split(nnx.eval_shape(lambda: LlamaForCausalLM(cfg, remat="full", scan=scan,
                                                                             rngs=nnx.Rngs(0))))
        loss = lambda s: jnp.sum(nnx.merge(graphdef, s)(ids, mask)[0])
        return len(jax.jit(jax.grad(loss)).lower(state).as_text())

    assert program(8, scan=True) < 1.05 * program(2, scan=True)
    assert program(8, scan=False) > 2 * program(2, scan=False)  # the measure would see an unrolled loop


def test_lora_adapters_are_stacked_and_saved_per_layer(tmp_path):
    from test_decoder_parity import save_tiny_decoder

    from jaxalign.config.run import LoraConfig
    from jaxalign.models import lora

    save_tiny_decoder(tmp_path / "hf", "LlamaForCausalLM", tie_word_embeddings=True, num_hidden_layers=3)
    dec = load_decoder(tmp_path / "hf")
    cfg = LoraConfig(rank=2, alpha=4.0, targets=("q_proj", "down_proj"))
    modules, adapters, axes = lora.decoder_adapters(dec, cfg, jax.random.key(0))
    q = "layers.attention.q.kernel"
    assert modules[q] == "layers.{i}.self_attn.q_proj"
    assert adapters[q]["a"].shape == (3, 64, 2) and adapters[q]["b"].shape == (3, 2, 64)
    assert axes[q] == {"a": ("layers", "embed", None), "b": ("layers", None, "heads")}
    adapters = jax.tree.map(lambda x: x + jax.random.normal(jax.random.key(1), x.shape), adapters)
    adapted = lora.apply_lora(dec.params, adapters, 2.0)
    for i in range(3):  # each layer gets its own A B
        np.testing.assert_allclose(adapted["layers"]["attention"]["q"]["kernel"][i],
                                   dec.params["layers"]["attention"]["q"]["kernel"][i]
                                   + 2.0 * adapters[q]["a"][i] @ adapters[q]["b"][i], rtol=1e-6, atol=1e-6)
    lora.save_adapter(tmp_path / "adapter", adapters, modules, cfg, "tiny")
    saved = load_file(str(tmp_path / "adapter" / lora.ADAPTER_WEIGHTS))
    assert saved["base_model.model.model.layers.2.self_attn.q_proj.lora_A.weight"].shape == (2, 64)  # PEFT: [r, in]
    assert len(saved) == 2 * 2 * 3
    loaded, _ = lora.load_adapter(tmp_path / "adapter", modules, 3)
    for path in adapters:
        np.testing.assert_array_equal(loaded[path]["a"], adapters[path]["a"])
        np.testing.assert_array_equal(loaded[path]["b"], adapters[path]["b"])
    with pytest.raises(ValueError, match=r"no adapter for layers\.3\.self_attn\.q_proj"):
        lora.load_adapter(tmp_path / "adapter", modules, 4)
