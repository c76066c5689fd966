"""Numerics shared by the preference losses: dtype promotion and stable log-space helpers.

Inputs may be NumPy or JAX arrays of any float or integer type. Arithmetic runs in the inputs'
floating type: float64 stays float64 (under ``jax_enable_x64``), float32 stays float32, and
bfloat16/float16 and integers are promoted to float32 (float64 under x64), as in
:mod:`jaxalign.losses.contrastive`. Nothing is forced to float32.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp

LOG2 = math.log(2.0)


def float_dtype(*xs: Any) -> jnp.dtype:
    """The inputs' common float type, at least float32; integers give the default float type."""
    dtype = jnp.result_type(*[x for x in xs if x is not None])
    if not jnp.issubdtype(dtype, jnp.floating):
        return jax.dtypes.canonicalize_dtype(jnp.float64)
    return jnp.promote_types(dtype, jnp.float32)


def cast(dtype, *xs):
    """Each input as a ``dtype`` array (``None`` stays ``None``)."""
    return tuple(None if x is None else jnp.asarray(x).astype(dtype) for x in xs)


def log1mexp(x: jax.Array) -> jax.Array:
    """``log(1 - exp(x))`` for ``x <= 0``, accurate everywhere (Mächler 2012).

    ``log(-expm1(x))`` near 0 (where ``1 - exp(x)`` cancels) and ``log1p(-exp(x))`` below
    ``-log 2`` (where ``exp(x)`` is tiny). Each branch gets an input clamped to its own region,
    so the unused branch neither overflows nor puts NaN into the gradient. ``x = 0`` gives
    ``-inf`` (a sequence of probability one has no complement).
    """
    near = x > -LOG2
    x_near = jnp.where(near, x, -LOG2)
    x_far = jnp.where(near, -LOG2, x)
    return jnp.where(near, jnp.log(-jnp.expm1(x_near)), jnp.log1p(-jnp.exp(x_far)))


def smoothed_bt_nll(z: jax.Array, eps: Any) -> jax.Array:
    """``-(1-ε) log σ(z) - ε log σ(-z)``: the Bradley–Terry NLL with labels flipped w.p. ε (cDPO)."""
    return -(1 - eps) * jax.nn.log_sigmoid(z) - eps * jax.nn.log_sigmoid(-z)


def clamped_lengths(lengths: Any, dtype) -> jax.Array:
    """Completion token counts as floats, clamped at 1 (an empty completion divides by 1)."""
    return jnp.maximum(jnp.asarray(lengths).astype(dtype), 1)


def batch_token_nll(chosen_logps: jax.Array, chosen_lengths: Any) -> jax.Array:
    """Scalar mean NLL over all chosen completion tokens of the batch: ``-Σ c_w / max(Σ |y_w|, 1)``.

    The lengths are the raw token counts (an empty completion adds no token), not the per-example
    clamped ones used to length-normalise.
    """
    tokens = jnp.sum(jnp.asarray(chosen_lengths).astype(chosen_logps.dtype))
    return -jnp.sum(chosen_logps) / jnp.maximum(tokens, 1)
