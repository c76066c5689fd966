"""Training-only heads as parameter dicts and pure functions (dropped at export).

Each ``init_*`` returns ``(params, logical_axes)`` trees of the same structure.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def init_dense(key, d_in: int, d_out: int, axes=("embed", "heads")) -> tuple[dict, dict]:
    kernel = jax.nn.initializers.lecun_normal()(key, (d_in, d_out), jnp.float32)
    return {"kernel": kernel, "bias": jnp.zeros((d_out,), jnp.float32)}, {"kernel": axes, "bias": (axes[1],)}


def dense(params: dict, x: jax.Array) -> jax.Array:
    """x [..., d_in] -> [..., d_out] in float32."""
    return x.astype(jnp.float32) @ params["kernel"] + params["bias"]


def init_mlp_head(key, dim: int) -> tuple[dict, dict]:
    """SimCSE's MLP over the pooled embedding: ``tanh(W x + b)``."""
    p, a = init_dense(key, dim, dim)
    return {"dense": p}, {"dense": a}


def mlp_head(params: dict, x: jax.Array) -> jax.Array:
    return jnp.tanh(dense(params["dense"], x))


def init_pair_head(key, dim: int) -> tuple[dict, dict]:
    """DSE's pair scorer ``FC(ReLU(FC([u; v; u*v; |u-v|])))`` -> one logit."""
    k1, k2 = jax.random.split(key)
    p1, a1 = init_dense(k1, 4 * dim, dim, ("mlp", "embed"))
    p2, a2 = init_dense(k2, dim, 1, ("embed", None))
    return {"hidden": p1, "out": p2}, {"hidden": a1, "out": a2}


def pair_head(params: dict, features: jax.Array) -> jax.Array:
    """features [B, 4D] -> logits [B]."""
    return dense(params["out"], jax.nn.relu(dense(params["hidden"], features)))[..., 0]
