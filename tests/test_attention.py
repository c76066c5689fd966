"""The attention op's kernels against the einsum reference, for every mask kind, forward and
gradients; the choice of kernel per backend; both models through each kernel.

The ``splash`` kernel runs in the Pallas interpreter here (CPU); ``cudnn`` needs a GPU, so only
its choice and its errors are tested.
"""

import functools
import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxalign.models.bert.config import BertConfig
from jaxalign.models.bert.model import BertEncoder
from jaxalign.models.llama.config import LlamaConfig
from jaxalign.models.llama.model import KVCache, LlamaForCausalLM
from jaxalign.ops import attention as attn
from jaxalign.ops.attention import AttentionMask
from jaxalign.sharding.mesh import MeshConfig, make_mesh

TOL = 1e-5


def qkv(b=3, t=16, s=None, n=4, k=2, d=8, seed=0, dtype=jnp.float32):
    """Random q [B, T, N, D], k, v [B, S, K, D]."""
    r = np.random.default_rng(seed)
    s = t if s is None else s
    return tuple(jnp.asarray(r.standard_normal(shape), dtype) for shape in ((b, t, n, d), (b, s, k, d), (b, s, k, d)))


def padding(lengths, t, side):
    """[B, T] int32 masks of real tokens, padded on ``side``."""
    pos = np.arange(t)[None]
    lengths = np.asarray(lengths)[:, None]
    return jnp.asarray(pos < lengths if side == "right" else pos >= t - lengths, jnp.int32)


def masks(t):
    """Every mask kind over T = S = t tokens, for 3 rows (the left-padded rows 1 and 2 begin
    with queries that see no key)."""
    right, left = padding([t, t - 3, 5], t, "right"), padding([t, t - 3, 5], t, "left")
    seg = jnp.asarray(np.stack([np.arange(t) >= t // 2, np.arange(t) >= 3, np.arange(t) >= t - 4]), jnp.int32)
    return {
        "causal+right": AttentionMask(key_mask=right, causal=True),
        "causal+left": AttentionMask(key_mask=left, causal=True),
        "window+left": AttentionMask(key_mask=left, causal=True, window=4),
        "segments+causal+right": AttentionMask(key_mask=right, causal=True, q_segments=seg, kv_segments=seg),
        "bidirectional+right": AttentionMask(key_mask=right),
        "segments+bidirectional+right": AttentionMask(key_mask=right, q_segments=seg, kv_segments=seg),
    }


def run(kernel, *args, **kw):
    """kernel(*args, **kw) compiled once (op by op, small calls cost more in dispatch)."""
    return jax.jit(functools.partial(kernel, **kw))(*args)


def loss_and_grads(kernel, q, k, v, mask, weights):
    """The weighted sum of the output and its gradients with respect to q, k, v."""
    f = lambda q, k, v: jnp.sum(kernel(q, k, v, mask, scale=q.shape[-1] ** -0.5) * weights)
    return jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2)))(q, k, v)


def assert_close(a, b, tol=TOL):
    """Every leaf of a finite and within ``tol`` of b's, relative to b's largest entry (at least
    1): a parameter's gradient sums many float32 terms whose order differs between kernels."""
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        x, y = np.asarray(x), np.asarray(y)
        assert np.all(np.isfinite(x)), "non-finite values"
        np.testing.assert_allclose(x, y, atol=tol * max(1.0, float(np.abs(y).max(initial=0))), rtol=tol)


@pytest.mark.parametrize("kind", list(masks(16)))
def test_xla_matches_einsum_forward_and_gradients(kind):
    q, k, v = qkv()
    mask = masks(16)[kind]
    ref, out = (run(kernel, q, k, v, mask, scale=8**-0.5) for kernel in (attn.einsum_attention, attn.xla_attention))
    assert_close(out, ref)  # everywhere, rows without a visible key too
    weights = jnp.asarray(np.random.default_rng(1).standard_normal(q.shape), jnp.float32)
    assert_close(loss_and_grads(attn.xla_attention, q, k, v, mask, weights),
                 loss_and_grads(attn.einsum_attention, q, k, v, mask, weights))


def test_cache_step_matches_einsum():
    """Three new queries at slots 5..7 of a 16-slot cache, left-padded rows, a window."""
    q, k, v = qkv(t=3, s=16)
    key_mask = padding([8, 6, 2], 16, "left") * (jnp.arange(16) < 8)
    for window in (None, 4):
        mask = AttentionMask(key_mask=key_mask, causal=True, window=window, q_offset=jnp.int32(5))
        assert_close(run(attn.xla_attention, q, k, v, mask, scale=0.3), run(attn.einsum_attention, q, k, v, mask, scale=0.3))


@pytest.mark.parametrize("kind", ["window+left", "segments+causal+right", "bidirectional+right"])
def test_splash_matches_einsum_at_real_tokens(kind):
    """Splash (Pallas interpreter) over 128 tokens: equal outputs and gradients wherever a query
    is a real token; padding queries attend among padding instead, so they carry no loss."""
    t = 128
    q, k, v = qkv(b=3, t=t, n=2, k=1, d=8)
    mask = masks(t)[kind]
    real = mask.key_mask[:, :, None, None].astype(jnp.float32)
    weights = jnp.asarray(np.random.default_rng(1).standard_normal(q.shape), jnp.float32) * real
    splash = lambda *a, **kw: attn.splash_attention(*a, **kw, interpret=True)
    (loss, grads), (ref_loss, ref_grads) = (loss_and_grads(f, q, k, v, mask, weights)
                                            for f in (splash, attn.einsum_attention))
    out = run(splash, q, k, v, mask, scale=8**-0.5)
    assert np.all(np.isfinite(np.asarray(out)))
    assert_close(out * real, run(attn.einsum_attention, q, k, v, mask, scale=8**-0.5) * real)
    assert_close((loss, grads), (ref_loss, ref_grads), tol=1e-4)


def test_splash_under_a_mesh_shards_batch_and_heads():
    """Inside ``jax.set_mesh`` (data 2, fsdp 2, tensor 2 over the 8 simulated devices) splash runs
    under shard_map, rows over data x fsdp and heads over tensor, and still matches."""
    q, k, v = qkv(b=4, t=128, n=4, k=2, d=8)
    key_mask = padding([128, 123, 68, 28], 128, "left")
    mask = AttentionMask(key_mask=key_mask, causal=True, window=16)
    weights = jnp.asarray(np.random.default_rng(1).standard_normal(q.shape), jnp.float32) * key_mask[:, :, None, None]
    splash = lambda *a, **kw: attn.splash_attention(*a, **kw, interpret=True)
    ref = loss_and_grads(attn.einsum_attention, q, k, v, mask, weights)
    with jax.set_mesh(make_mesh(MeshConfig(2, 2, 2))):
        out = jax.jit(lambda q, k, v: loss_and_grads(splash, q, k, v, mask, weights))(q, k, v)
    assert_close(out, ref, tol=1e-4)


def test_auto_picks_the_backends_kernel_and_warns_once_when_it_cannot(caplog):
    attn._warned.clear()
    q32, k32, _ = qkv()
    q16, k16, _ = qkv(dtype=jnp.bfloat16)
    mask = masks(16)["causal+right"]
    cache = AttentionMask(key_mask=mask.key_mask, causal=True, q_offset=jnp.int32(3))
    assert attn.select("auto", q16, k16, mask, backend="cpu") == "xla"
    assert attn.select("auto", q16, k16, mask, backend="gpu") == "cudnn"
    assert attn.select("auto", q16, k16, cache, backend="gpu") == "xla"
    assert attn.select("auto", q16, k16, mask, backend="gpu", dropout=True) == "einsum"
    q128, k128, _ = qkv(t=128)
    with jax.set_mesh(make_mesh(MeshConfig(8, 1, 1))):
        assert attn.select("auto", q128, k128, mask, backend="tpu") == "splash"
    with caplog.at_level(logging.WARNING, logger="jaxalign.ops.attention"):
        for _ in range(3):
            assert attn.select("auto", q32, k32, mask, backend="gpu") == "xla"
            assert attn.select("auto", q32, k32, mask, backend="tpu") == "xla"
            assert attn.select("auto", q128, k128, mask, backend="tpu") == "xla"  # 8 devices, no mesh set
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 3, messages
    assert "bfloat16" in messages[0] and "multiple of 128" in messages[1] and "jax.set_mesh" in messages[2]


def test_explicit_kernel_the_backend_lacks_fails_naming_the_alternatives():
    with pytest.raises(ValueError, match="cudnn needs a GPU.*use auto .*xla or einsum"):
        attn.check_available("cudnn", "cpu")
    with pytest.raises(ValueError, match="splash needs a TPU and this backend is gpu.*auto \\(here cudnn\\)"):
        attn.check_available("splash", "gpu")
    with pytest.raises(ValueError, match="unknown: choose one of auto, xla, cudnn, splash, einsum"):
        attn.check_available("flash")
    q, k, _ = qkv()
    mask = masks(16)["causal+right"]
    with pytest.raises(ValueError, match="cudnn: cuDNN flash attention needs bfloat16.*use auto, xla or einsum"):
        attn.select("cudnn", q, k, mask, backend="gpu")
    with pytest.raises(ValueError, match="splash: splash attention needs .* multiple of 128.*use auto, xla or einsum"):
        attn.select("splash", q, k, mask, backend="tpu")
    with pytest.raises(ValueError, match="xla: attention dropout .*use auto or einsum"):
        attn.select("xla", q, k, mask, dropout=True)
    with pytest.raises(ValueError, match="model.attention=cudnn needs a GPU"):  # when the model is built
        LlamaForCausalLM(tiny_llama(), attention="cudnn", rngs=nnx.Rngs(0))


def tiny_llama(**kw) -> LlamaConfig:
    return LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=1, num_attention_heads=4,
                       num_key_value_heads=2, head_dim=8, **kw)


def split_pair(build):
    """(graphdef, params) of the einsum and xla versions of one model, same weights."""
    (g_ref, state), (g_xla, _) = (nnx.split(build(a)) for a in ("einsum", "xla"))
    return g_ref, g_xla, state


@pytest.mark.parametrize("side,window", [("right", None), ("left", 3)])
def test_llama_forward_and_gradients_match_einsum(side, window):
    g_ref, g_xla, state = split_pair(lambda a: LlamaForCausalLM(tiny_llama(sliding_window=window), attention=a,
                                                                  rngs=nnx.Rngs(0)))
    ids = jnp.asarray(np.random.default_rng(0).integers(0, 64, (3, 12)), jnp.int32)
    mask = padding([12, 7, 3], 12, side)

    def loss(graphdef, state):
        hidden, _ = nnx.merge(graphdef, state)(ids, mask)
        return jnp.sum(hidden * mask[..., None]), hidden

    ref, out = (jax.jit(jax.value_and_grad(functools.partial(loss, g), has_aux=True))(state) for g in (g_ref, g_xla))
    assert_close(out, ref)


def test_llama_cache_steps_match_einsum():
    g_ref, g_xla, state = split_pair(lambda a: LlamaForCausalLM(tiny_llama(sliding_window=4), attention=a,
                                                                  rngs=nnx.Rngs(0)))
    ids = jnp.asarray(np.random.default_rng(0).integers(0, 64, (2, 9)), jnp.int32)
    mask = padding([6, 3], 6, "left")

    @functools.partial(jax.jit, static_argnums=0)
    def decode(graphdef, state):
        model = nnx.merge(graphdef, state)
        cache = KVCache.zeros(model.config, 2, 9)
        pos = jnp.maximum(jnp.cumsum(mask, axis=1) - 1, 0) * mask
        prefill, cache = model(ids[:, :6], mask, positions=pos, cache=cache)
        steps = [prefill]
        for i in range(6, 9):
            pos = pos[:, -1:] + 1
            h, cache = model(ids[:, i:i + 1], jnp.ones((2, 1), jnp.int32), positions=pos, cache=cache)
            steps.append(h)
        return jnp.concatenate(steps, axis=1) * jnp.concatenate([mask, jnp.ones((2, 3), jnp.int32)], 1)[..., None]

    assert_close(decode(g_xla, state), decode(g_ref, state))


def test_llama_packed_segments_equal_separate_sequences():
    """Two sequences packed into one row with segment ids and restarted positions give each
    sequence's own hidden states."""
    graphdef, state = nnx.split(LlamaForCausalLM(tiny_llama(), attention="xla", rngs=nnx.Rngs(0)))
    ids = jnp.asarray(np.random.default_rng(0).integers(0, 64, (1, 10)), jnp.int32)
    segments = jnp.asarray([[0] * 6 + [1] * 4], jnp.int32)
    positions = jnp.asarray([list(range(6)) + list(range(4))], jnp.int32)

    @jax.jit
    def packed_and_separate(state):
        model = nnx.merge(graphdef, state)
        packed, _ = model(ids, jnp.ones_like(ids), positions=positions, segment_ids=segments)
        first, _ = model(ids[:, :6], jnp.ones((1, 6), jnp.int32))
        second, _ = model(ids[:, 6:], jnp.ones((1, 4), jnp.int32))
        return packed, jnp.concatenate([first, second], axis=1)

    assert_close(*packed_and_separate(state))


def tiny_bert() -> BertConfig:
    return BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=48)


def test_bert_forward_and_gradients_match_einsum():
    g_ref, g_xla, state = split_pair(lambda a: BertEncoder(tiny_bert(), attention=a, rngs=nnx.Rngs(0)))
    ids = jnp.asarray(np.random.default_rng(0).integers(0, 64, (3, 12)), jnp.int32)
    mask = padding([12, 7, 1], 12, "right")

    def loss(graphdef, state):
        hidden = nnx.merge(graphdef, state)(ids, mask).last_hidden_state
        return jnp.sum(hidden * mask[..., None]), hidden

    ref, out = (jax.jit(jax.value_and_grad(functools.partial(loss, g), has_aux=True))(state) for g in (g_ref, g_xla))
    assert_close(out, ref)


def test_bert_attention_dropout_runs_through_einsum_under_auto_and_fails_for_xla():
    ids, mask = jnp.ones((2, 8), jnp.int32), jnp.ones((2, 8), jnp.int32)

    def train_forward(attention):
        model = BertEncoder(tiny_bert(), attention=attention, rngs=nnx.Rngs(0))
        return jax.jit(lambda: model(ids, mask, deterministic=False, rngs=nnx.Rngs(dropout=0)).last_hidden_state)()

    assert_close(train_forward("auto"), train_forward("einsum"))
    with pytest.raises(ValueError, match="model.attention=xla: attention dropout"):
        train_forward("xla")
