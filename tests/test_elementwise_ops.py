"""Dropout, LayerNorm and GELU of ``jaxalign.ops`` (the BERT's): values and gradients against their
formulas in float64, the keep rate of the 16-bit dropout draw, and what each saves for the backward pass."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from precision import x64

from jaxalign.ops.activations import gelu
from jaxalign.ops.dropout import dropout, keep_mask, keep_threshold
from jaxalign.ops.normalization import layer_norm


def saved(f, x) -> list[jax.Array]:
    """The arrays ``f``'s backward pass keeps: the leaves of its VJP closure."""
    return jax.tree.leaves(jax.vjp(f, x)[1])


@pytest.mark.parametrize("rate", [0.1, 0.5])
def test_keep_rate_is_the_16_bit_threshold(rate):
    shape = (64, 512, 64)  # 2.1M draws: the standard error of the kept fraction is < 3.5e-4
    p = keep_threshold(rate) / 2**16
    assert abs(p - (1 - rate)) <= 2**-17
    mask = np.asarray(jax.jit(keep_mask, static_argnums=(1, 2))(jax.random.key(0), shape, rate))
    assert mask.shape == shape and mask.dtype == bool
    sigma = np.sqrt(p * (1 - p) / mask.size)
    assert abs(mask.mean() - p) < 5 * sigma
    # Every quarter of the last axis (the four 16-bit slices of each Threefry block) keeps at p too.
    for q in range(4):
        assert abs(mask[..., q::4].mean() - p) < 10 * sigma


def test_masks_depend_on_the_key_only():
    shape = (3, 7, 5)  # a last axis that is no multiple of 4
    a, b = jax.random.key(1), jax.random.key(2)
    m = lambda k: np.asarray(keep_mask(k, shape, 0.5))
    np.testing.assert_array_equal(m(a), m(a))
    assert (m(a) != m(b)).any()
    legacy = np.asarray(keep_mask(jax.random.PRNGKey(1), shape, 0.5))  # raw uint32[2] keys draw the same bits
    np.testing.assert_array_equal(legacy, m(a))
    rbg = keep_mask(jax.random.key(1, impl="rbg"), shape, 0.5)  # another PRNG implementation still works
    assert rbg.shape == shape and 0 < np.asarray(rbg).mean() < 1


def test_dropout_scales_kept_values_and_its_gradient_is_the_mask():
    x = jax.random.normal(jax.random.key(3), (16, 33))
    w = jax.random.normal(jax.random.key(4), x.shape)
    key, rate = jax.random.key(5), 0.25
    y = dropout(x, rate, key)
    keep = np.asarray(keep_mask(key, x.shape, rate))
    np.testing.assert_allclose(np.asarray(y), np.where(keep, np.asarray(x) / (1 - rate), 0), rtol=1e-6)
    grad = jax.grad(lambda x: (dropout(x, rate, key) * w).sum())(x)
    np.testing.assert_allclose(np.asarray(grad), np.where(keep, np.asarray(w) / (1 - rate), 0), rtol=1e-6)
    assert dropout(x, 0.0, key) is x
    np.testing.assert_array_equal(np.asarray(dropout(x, 1.0, key)), 0)
    with pytest.raises(ValueError, match="rate 1.5"):
        dropout(x, 1.5, key)


def test_dropout_saves_only_its_mask():
    x = jnp.ones((8, 128))
    residuals = saved(lambda x: dropout(x, 0.1, jax.random.key(0)), x)
    big = [a for a in residuals if a.size == x.size]
    assert [a.dtype for a in big] == [jnp.dtype(bool)], [(a.shape, a.dtype) for a in residuals]


def _layer_norm_formula(x, scale, bias, eps):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / jnp.sqrt(var + eps) * scale + bias


@x64
def test_layer_norm_value_and_gradients_match_the_formula_in_float64():
    ks = jax.random.split(jax.random.key(6), 4)
    x = 3 + 2 * jax.random.normal(ks[0], (4, 6, 24), jnp.float64)
    scale, bias = 1 + jax.random.normal(ks[1], (24,), jnp.float64), jax.random.normal(ks[2], (24,), jnp.float64)
    g = jax.random.normal(ks[3], x.shape, jnp.float64)
    ours, vjp = jax.vjp(lambda *a: layer_norm(*a, 1e-12, jnp.float64), x, scale, bias)
    ref, ref_vjp = jax.vjp(lambda *a: _layer_norm_formula(*a, 1e-12), x, scale, bias)
    np.testing.assert_allclose(np.asarray(ours), np.asarray(ref), rtol=1e-12, atol=1e-12)
    for a, b in zip(vjp(g), ref_vjp(g)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-10, atol=1e-10)


def test_layer_norm_equals_flax_in_float32_and_saves_one_full_array():
    x = 5 + jax.random.normal(jax.random.key(7), (8, 384))
    ln = nnx.LayerNorm(384, epsilon=1e-12, use_fast_variance=False, rngs=nnx.Rngs(0))
    ln.scale[...] = 1 + jax.random.normal(jax.random.key(8), (384,))
    ln.bias[...] = jax.random.normal(jax.random.key(9), (384,))
    ours = lambda x: layer_norm(x, ln.scale[...], ln.bias[...], 1e-12, jnp.float32)
    np.testing.assert_allclose(np.asarray(ours(x)), np.asarray(ln(x)), rtol=2e-6, atol=2e-6)
    ga, gb = jax.grad(lambda x: (ours(x) ** 2).sum())(x), jax.grad(lambda x: (ln(x) ** 2).sum())(x)
    np.testing.assert_allclose(np.asarray(ga), np.asarray(gb), rtol=1e-4, atol=1e-4)
    assert sum(a.size == x.size for a in saved(ours, x)) == 1
    bf16 = layer_norm(x.astype(jnp.bfloat16), ln.scale[...], ln.bias[...], 1e-12, jnp.bfloat16)
    assert bf16.dtype == jnp.bfloat16
    assert jax.grad(lambda x: layer_norm(x, ln.scale[...], ln.bias[...], 1e-12, jnp.bfloat16).astype(
        jnp.float32).sum())(x.astype(jnp.bfloat16)).dtype == jnp.bfloat16


@x64
def test_gelu_equals_jax_and_its_gradient_the_formula_in_float64():
    x = jnp.linspace(-8, 8, 1001, dtype=jnp.float64)
    np.testing.assert_array_equal(np.asarray(gelu(x)), np.asarray(jax.nn.gelu(x, approximate=False)))
    ours = jax.vmap(jax.grad(gelu))(x)
    ref = jax.vmap(jax.grad(lambda x: jax.nn.gelu(x, approximate=False)))(x)
    np.testing.assert_allclose(np.asarray(ours), np.asarray(ref), rtol=1e-13, atol=1e-15)
    x32 = x.astype(jnp.float32)
    np.testing.assert_array_equal(np.asarray(gelu(x32)), np.asarray(jax.nn.gelu(x32, approximate=False)))
    assert [a.shape for a in saved(gelu, x32)] == [x32.shape]
