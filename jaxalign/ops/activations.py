"""Activations whose backward pass saves only their input.

``jax.nn.gelu(x, approximate=False)`` differentiated by JAX keeps several intermediates of
``x``'s shape (the ``erfc`` and ``exp`` terms) for the backward pass; :func:`gelu` keeps ``x``
alone and recomputes the derivative ``Phi(x) + x phi(x)`` from it, as PyTorch's GELU does. In
a transformer's MLP that is one ``[B, T, intermediate]`` array saved per layer instead of three.
Forward values are bit-identical to ``jax.nn.gelu``'s.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

_SQRT_HALF = math.sqrt(0.5)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


@jax.custom_vjp
def gelu(x: jax.Array) -> jax.Array:
    """Exact GELU, ``x * Phi(x) = 0.5 x erfc(-x / sqrt 2)``, elementwise in ``x``'s dtype."""
    return 0.5 * x * jax.lax.erfc(-x * jnp.asarray(_SQRT_HALF, x.dtype))


def _gelu_fwd(x):
    return gelu(x), x


def _gelu_bwd(x, g):
    cdf = 0.5 * jax.lax.erfc(-x * jnp.asarray(_SQRT_HALF, x.dtype))
    pdf = jnp.asarray(_INV_SQRT_2PI, x.dtype) * jnp.exp(-0.5 * x * x)
    return (g * (cdf + x * pdf),)


gelu.defvjp(_gelu_fwd, _gelu_bwd)
