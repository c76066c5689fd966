"""LayerNorm as a pure function whose backward pass saves one normalised array.

``flax.nnx.LayerNorm`` differentiated by JAX keeps about four arrays of ``x``'s shape for the
backward pass (centred input, its square, the scaled product, ...); :func:`layer_norm` keeps
the normalised ``x_hat`` and the per-row ``1 / sigma`` and computes the input gradient in
closed form, ``dx = (dxh - mean(dxh) - x_hat * mean(dxh * x_hat)) / sigma`` with
``dxh = dy * scale``, as PyTorch's LayerNorm does.

Statistics as ``nnx.LayerNorm(use_fast_variance=False)``: over the last axis, two-pass variance
(``mean((x - mean x)^2)``, which PyTorch matches to float32 rounding), in float32 or wider.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def layer_norm(x: jax.Array, scale: jax.Array, bias: jax.Array, eps: float, dtype) -> jax.Array:
    """x [..., H], scale and bias [H] (one dtype) -> [..., H] in ``dtype``:
    ``(x - mean) / sqrt(var + eps) * scale + bias``."""
    return _fwd(x, scale, bias, eps, dtype)[0]


def _fwd(x, scale, bias, eps, dtype):
    wide = jnp.promote_types(x.dtype, jnp.float32)
    xw = x.astype(wide)
    centred = xw - xw.mean(-1, keepdims=True)
    inv_sigma = jax.lax.rsqrt((centred * centred).mean(-1, keepdims=True) + eps)
    x_hat = centred * inv_sigma
    y = x_hat * scale.astype(wide) + bias.astype(wide)
    # The scalar zero carries x's dtype (for dx) into the backward pass.
    return y.astype(dtype), (x_hat, inv_sigma, scale, jnp.zeros((), x.dtype))


def _bwd(eps, dtype, residuals, g):
    x_hat, inv_sigma, scale, x_zero = residuals
    g = g.astype(x_hat.dtype)
    rows = tuple(range(g.ndim - 1))
    d_scale = (g * x_hat).sum(rows).astype(scale.dtype)
    d_bias = g.sum(rows).astype(scale.dtype)
    dxh = g * scale.astype(x_hat.dtype)
    dx = inv_sigma * (dxh - dxh.mean(-1, keepdims=True) - x_hat * (dxh * x_hat).mean(-1, keepdims=True))
    return dx.astype(x_zero.dtype), d_scale, d_bias


layer_norm.defvjp(_fwd, _bwd)
