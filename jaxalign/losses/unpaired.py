"""Preference losses without a chosen/rejected pair: KTO (unpaired examples) and D²O (negatives only).

KTO follows TRL's ``KTOTrainer`` (``loss_type="kto"``; Ethayarajh et al. 2024); D²O follows
"Negating Negatives" (Duan et al. 2024). Inputs are summed completion log-probabilities under
the policy and the reference model (no gradient into the reference).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from jaxalign.losses.numerics import cast, float_dtype
from jaxalign.losses.registry import checked


@checked("kto")
def kto_loss(
    policy_logps: Any,
    ref_logps: Any,
    labels: Any,
    policy_kl_logps: Any = None,
    ref_kl_logps: Any = None,
    *,
    beta: float = 0.1,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
) -> jax.Array:
    """KTO on unpaired examples, TRL ``KTOTrainer`` (``loss_type="kto"``).

    ``z = max(0, mean_batch(policy_kl_logps - ref_kl_logps))`` with no gradient, the batch's
    estimate of ``KL(π‖π_ref)`` from mismatched (prompt, completion) pairs; with ``h = c - r``,
    a desirable example costs ``w_d (1 - σ(β(h - z)))`` and an undesirable one
    ``w_u (1 - σ(β(z - h)))``. The mean over the batch is TRL's loss (which concatenates the
    weighted desirable and undesirable losses and averages them).

    Args:
      policy_logps: ``[batch]`` summed completion log-probs under the policy.
      ref_logps: ``[batch]`` the same under the reference model (no gradient).
      labels: ``[batch]`` bool, True for desirable.
      policy_kl_logps: ``[batch]`` policy log-probs of mismatched pairs (completion ``i`` with
        another example's prompt); ``None`` gives ``z = 0`` (TRL when the KL is not computed).
      ref_kl_logps: ``[batch]`` the same under the reference model.
      beta: β.
      desirable_weight, undesirable_weight: ``w_d, w_u`` (>= 0).

    Returns:
      ``[batch]`` per-example losses.
    """
    dtype = float_dtype(policy_logps, ref_logps, policy_kl_logps, ref_kl_logps)
    p, r, pk, rk = cast(dtype, policy_logps, ref_logps, policy_kl_logps, ref_kl_logps)
    r = jax.lax.stop_gradient(r)
    if pk is None or rk is None:
        z = jnp.zeros((), dtype)
    else:
        z = jax.lax.stop_gradient(jnp.maximum(jnp.mean(pk - rk), 0))
    h = p - r
    desirable = desirable_weight * (1 - jax.nn.sigmoid(beta * (h - z)))
    undesirable = undesirable_weight * (1 - jax.nn.sigmoid(beta * (z - h)))
    return jnp.where(jnp.asarray(labels).astype(bool), desirable, undesirable)


@checked("d2o")
def d2o_loss(
    policy_sample_logps: Any,
    ref_sample_logps: Any,
    policy_rejected_logps: Any,
    ref_rejected_logps: Any,
    *,
    beta: float = 0.1,
    alpha: float = 0.1,
) -> jax.Array:
    """D²O (negatives only): ``-log σ((β/K) Σ_i h(y_i) - α h(y_l))``.

    ``h(y) = log π_θ(y|x) - log π_ref(y|x)``; the ``y_i`` are ``K`` self-generated samples (the
    paper uses K = 11) and ``y_l`` the human-dispreferred completion. ``(β/K) Σ_i`` is ``β ·
    mean_i``: the mean already divides by K once.

    Args:
      policy_sample_logps: ``[batch, K]`` summed log-probs of the samples under the policy.
      ref_sample_logps: ``[batch, K]`` the same under the reference model (no gradient).
      policy_rejected_logps: ``[batch]`` summed log-probs of ``y_l`` under the policy.
      ref_rejected_logps: ``[batch]`` under the reference model (no gradient).
      beta: β, on the samples' term.
      alpha: α, on the dispreferred term.

    Returns:
      ``[batch]`` per-example losses.
    """
    dtype = float_dtype(policy_sample_logps, ref_sample_logps, policy_rejected_logps, ref_rejected_logps)
    ps, rs, pl, rl = cast(dtype, policy_sample_logps, ref_sample_logps, policy_rejected_logps, ref_rejected_logps)
    rs, rl = jax.lax.stop_gradient(rs), jax.lax.stop_gradient(rl)
    return -jax.nn.log_sigmoid(beta * jnp.mean(ps - rs, axis=-1) - alpha * (pl - rl))
