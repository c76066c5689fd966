"""The one training-step builder every objective plugs into.

A task supplies ``loss_fn(params, batch, rng, frozen) -> (loss, metrics)`` (or its own
``value_and_grad`` with the same signature, e.g. GradCache). :func:`make_step` turns it into
a pure ``(state, batch, frozen) -> (state, metrics)`` function, compiled once per batch
shape with explicit shardings and the state's buffers donated. ``frozen`` holds arrays the
loss reads but never trains (a reference model, a LoRA base): an argument rather than part
of the state, so it is neither differentiated, nor given optimiser state, nor checkpointed.
Arrays the loss reads and the run *changes* without training them (TR-DPO's reference, mixed
towards the policy every few steps) are the state's ``tracked`` instead: checkpointed with it,
updated by the task's ``update_tracked`` after each step, and readable by the loss beside
``frozen`` under their own keys.

Non-finite steps (NaN/Inf in the loss or any gradient) leave parameters and optimiser state
untouched; the state counts them (``nonfinite``, consecutive) so the loop can stop with a
clear message after several in a row.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

LossFn = Callable[[Any, Any, jax.Array, Any], tuple[jax.Array, dict]]


@dataclasses.dataclass
class TrainState:
    """step: micro-steps taken; rng: raw uint32 base key (per-step keys are ``fold_in(rng, step)``,
    so a resumed run draws exactly the same dropout masks); nonfinite: consecutive skipped steps;
    skipped: all skipped steps; tracked: untrained arrays the run updates (see the module docstring)."""

    step: jax.Array
    params: Any
    opt_state: Any
    rng: jax.Array
    nonfinite: jax.Array
    skipped: jax.Array
    tracked: Any = dataclasses.field(default_factory=dict)

    @classmethod
    def create(cls, params, optimizer: optax.GradientTransformation, seed: int, tracked=None) -> "TrainState":
        zero = jnp.zeros((), jnp.int32)
        return cls(zero, params, optimizer.init(params), jax.random.PRNGKey(seed), zero, zero, tracked or {})


jax.tree_util.register_dataclass(
    TrainState, data_fields=["step", "params", "opt_state", "rng", "nonfinite", "skipped", "tracked"], meta_fields=[]
)


def _all_finite(tree) -> jax.Array:
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


def make_step(
    optimizer: optax.GradientTransformation,
    loss_fn: LossFn | None = None,
    *,
    value_and_grad: Callable | None = None,
    schedule: optax.Schedule | None = None,
    grad_accum: int = 1,
    update_tracked: Callable[[Any, Any, jax.Array], Any] | None = None,
) -> Callable[[TrainState, Any], tuple[TrainState, dict]]:
    """The pure step. Pass ``loss_fn`` or a custom ``value_and_grad`` returning
    ``((loss, metrics), grads)``; ``update_tracked(tracked, params, steps_done)`` returns the
    state's next ``tracked`` from the updated parameters."""
    if value_and_grad is None:
        if loss_fn is None:
            raise ValueError("make_step needs loss_fn or value_and_grad")
        value_and_grad = jax.value_and_grad(loss_fn, has_aux=True)

    def step(state: TrainState, batch, frozen=None) -> tuple[TrainState, dict]:
        rng = jax.random.fold_in(state.rng, state.step)
        readable = {**(frozen or {}), **state.tracked} if state.tracked else frozen
        (loss, metrics), grads = value_and_grad(state.params, batch, rng, readable)
        finite = jnp.isfinite(loss) & _all_finite(grads)

        def update(params, opt_state):
            updates, new_opt_state = optimizer.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), new_opt_state

        # A non-finite step keeps the old state: a cond, not an element-wise select between the new
        # and the old state, which reads the donated buffers after the update and so made XLA copy
        # every parameter and optimiser buffer first (0.3 s a step for 60 M parameters on CPU).
        params, opt_state = jax.lax.cond(finite, update, lambda p, s: (p, s), state.params, state.opt_state)
        skipped = (~finite).astype(jnp.int32)
        new_state = TrainState(
            step=state.step + 1,
            params=params,
            opt_state=opt_state,
            rng=state.rng,
            nonfinite=jnp.where(finite, 0, state.nonfinite + 1),
            skipped=state.skipped + skipped,
            tracked=update_tracked(state.tracked, params, state.step + 1) if update_tracked else state.tracked,
        )
        out = {"loss": loss, "grad_norm": optax.tree.norm(grads), "skipped": skipped,
               "nonfinite": new_state.nonfinite, **metrics}
        if schedule is not None:
            out["lr"] = schedule(state.step // grad_accum)
        return new_state, out

    return step


def jit_step(step, state_shardings, batch_shardings, frozen_shardings=None, *, donate: bool = True):
    """Compiles ``step`` with explicit in/out shardings; the old state's buffers are donated."""
    return jax.jit(
        step,
        in_shardings=(state_shardings, batch_shardings, frozen_shardings),
        out_shardings=(state_shardings, None),
        donate_argnums=(0,) if donate else (),
    )
