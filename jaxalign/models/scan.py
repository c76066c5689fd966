"""Stacked transformer layers run with ``jax.lax.scan``, and their rematerialisation policies.

A model holds its ``L`` layers as *one* layer module whose every parameter has a leading
``[L, ...]`` axis (logical axis ``layers``), built by :func:`stacked` with ``nnx.vmap``. Its
forward pass is :func:`run_layers`: ``jax.lax.scan`` over the stacked state with the layer's
own ``__call__`` as the body, so tracing, lowering and compiling cost one layer whatever the
depth (a Python loop over ``L`` modules compiles ``L`` copies). ``scan=False`` runs the same
body in a Python loop over slices of the stacked state (a debugging aid: the same code, one
layer at a time).

Rematerialisation (``remat``, training only), per layer as MaxText's policies:

* ``none``: keep every activation of every layer for the backward pass;
* ``full``: keep only each layer's input, recompute the rest;
* ``minimal`` (alias ``dots``): also keep the outputs of the matmuls with no batch dimension
  (``jax.checkpoint_policies.dots_with_no_batch_dims_saveable``);
* ``save_qkv_proj``: keep the query/key/value projection outputs (named with
  ``jax.ad_checkpoint.checkpoint_name``, see :data:`QKV_NAMES`), recompute the rest;
* ``offload_qkv_proj``: as ``save_qkv_proj`` but the saved projections move to host memory
  (``pinned_host``) between the passes; only on a backend with host memory kinds.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

QKV_NAMES = ("query_proj", "key_proj", "value_proj")
REMAT_ALIASES = {"dots": "minimal"}
REMAT_POLICIES = ("none", "full", "minimal", "save_qkv_proj", "offload_qkv_proj")
HOST_MEMORY = "pinned_host"


def check_remat(name: str, field: str = "remat") -> str:
    """The canonical policy name of ``name`` (``dots`` -> ``minimal``), or a ValueError naming
    ``field`` and the choices; raised before anything is traced."""
    canonical = REMAT_ALIASES.get(name, name)
    if canonical not in REMAT_POLICIES:
        choices = ", ".join((*REMAT_POLICIES, *REMAT_ALIASES))
        raise ValueError(f"{field}={name!r} is not a remat policy; choose one of {choices}")
    if canonical == "offload_qkv_proj":
        kinds = {m.kind for m in jax.devices()[0].addressable_memories()}
        if HOST_MEMORY not in kinds:
            raise ValueError(f"{field}={name!r} offloads to {HOST_MEMORY} memory, which the {jax.default_backend()} "
                             f"backend lacks (it has {sorted(kinds)}); use save_qkv_proj instead")
    return canonical


def remat_policy(name: str):
    """The ``jax.checkpoint`` policy of a (checked) policy name; ``None`` for ``none``."""
    name = check_remat(name)
    if name == "none":
        return None
    if name == "full":
        return jax.checkpoint_policies.nothing_saveable
    if name == "minimal":
        return jax.checkpoint_policies.dots_with_no_batch_dims_saveable
    if name == "save_qkv_proj":
        return jax.checkpoint_policies.save_only_these_names(*QKV_NAMES)
    return jax.checkpoint_policies.save_and_offload_only_these_names(
        names_which_can_be_saved=(), names_which_can_be_offloaded=QKV_NAMES, offload_src="device",
        offload_dst=HOST_MEMORY)


def stacked(make: Callable[[nnx.Rngs], nnx.Module], num_layers: int, rngs: nnx.Rngs) -> nnx.Module:
    """``num_layers`` independently initialised layers ``make(rngs)`` as one module whose
    parameters are stacked on a leading ``[num_layers, ...]`` axis."""

    @nnx.split_rngs(splits=num_layers)
    @nnx.vmap(in_axes=(0,), out_axes=0, axis_size=num_layers)
    def build(rngs):
        return make(rngs)

    return build(rngs)


def runs(keys: Sequence[Any]) -> list[tuple[int, int, Any]]:
    """``(start, stop, key)`` for each run of consecutive equal ``keys`` (one per layer): the
    layers that share one static configuration (e.g. an attention window) and one scan."""
    out: list[tuple[int, int, Any]] = []
    for i, key in enumerate(keys):
        if out and out[-1][2] == key:
            out[-1] = (out[-1][0], i + 1, key)
        else:
            out.append((i, i + 1, key))
    return out


def run_layers(layers: nnx.Module, body: Callable, carry, xs=None, *, start: int = 0, stop: int,
               remat: str = "none", scan: bool = True):
    """Runs ``body(layer, carry, x) -> (carry, y)`` over layers ``start..stop-1`` of the stacked
    module ``layers``: ``layer`` is that layer's module (unstacked parameters), ``x`` its slice of
    ``xs`` (a pytree of ``[stop - start, ...]`` arrays, or None). Returns the last carry and the
    ``y`` stacked ``[stop - start, ...]`` (None where ``body`` returns None).

    ``remat`` wraps each layer in ``jax.checkpoint`` with that policy; ``scan=False`` loops in
    Python over the same body (unscanned debugging mode)."""
    graphdef, state = nnx.split(layers)
    state = jax.tree.map(lambda a: a[start:stop], state)

    def step(carry, inputs):
        layer_state, x = inputs
        return body(nnx.merge(graphdef, layer_state), carry, x)

    policy = remat_policy(remat)
    if policy is not None:
        step = jax.checkpoint(step, policy=policy, prevent_cse=not scan)
    if scan:
        return jax.lax.scan(step, carry, (state, xs))
    ys = []
    for i in range(stop - start):
        carry, y = step(carry, jax.tree.map(lambda a, i=i: a[i], (state, xs)))
        ys.append(y)
    return carry, jax.tree.map(lambda *y: jnp.stack(y), *ys) if ys and ys[0] is not None else None


__all__ = ["QKV_NAMES", "REMAT_ALIASES", "REMAT_POLICIES", "check_remat", "remat_policy", "run_layers", "runs", "stacked"]
