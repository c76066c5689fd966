"""Reference-free preference losses: SimPO, CPO, ORPO, ASFT, and PoFT's scores from aligned models.

Pure functions of summed completion log-probabilities ``[batch]`` (``c_w, c_l``) and completion
lengths, following TRL's CPO (``loss_type="sigmoid"`` and ``"simpo"``) and ORPO trainers and the
ASFT and PoFT papers. Options are keyword arguments; each public function checks them on a
direct call (:func:`jaxalign.losses.registry.checked`), training calls ``fn.unchecked``.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from jaxalign.losses.numerics import batch_token_nll, cast, clamped_lengths, float_dtype, log1mexp, smoothed_bt_nll
from jaxalign.losses.registry import checked


@checked("simpo")
def simpo_loss(
    policy_chosen_logps: Any,
    policy_rejected_logps: Any,
    chosen_lengths: Any,
    rejected_lengths: Any,
    *,
    beta: float = 2.0,
    simpo_gamma: float = 0.5,
    label_smoothing: float = 0.0,
    cpo_alpha: float = 0.0,
) -> jax.Array:
    """SimPO: ``-log σ(β(c̄_w - c̄_l) - γ)`` on length-averaged log-probs, no reference model.

    ``c̄ = c / |y|``. As TRL's CPO trainer (``loss_type="simpo"``) label smoothing gives the cDPO
    form ``-(1-ε) log σ(z) - ε log σ(-z)``; pure SimPO has ``cpo_alpha = 0`` (no NLL term), and
    ``cpo_alpha > 0`` adds ``cpo_alpha ·`` the batch's mean NLL per chosen token (CPO-SimPO).

    Args:
      policy_chosen_logps: ``[batch]`` summed completion log-probs ``c_w``.
      policy_rejected_logps: ``[batch]`` ``c_l``.
      chosen_lengths: ``[batch]`` completion token counts (clamped at 1).
      rejected_lengths: ``[batch]``.
      beta: β, 2.0 in the paper's recipes.
      simpo_gamma: target reward margin γ (TRL ``CPOConfig.simpo_gamma``).
      label_smoothing: ε in [0, 0.5].
      cpo_alpha: weight of the chosen NLL.

    Returns:
      ``[batch]`` per-example losses.
    """
    dtype = float_dtype(policy_chosen_logps, policy_rejected_logps)
    pc, pr = cast(dtype, policy_chosen_logps, policy_rejected_logps)
    len_w, len_l = clamped_lengths(chosen_lengths, dtype), clamped_lengths(rejected_lengths, dtype)
    loss = smoothed_bt_nll(beta * (pc / len_w - pr / len_l) - simpo_gamma, label_smoothing)
    return loss + cpo_alpha * batch_token_nll(pc, chosen_lengths)


@checked("cpo")
def cpo_loss(
    policy_chosen_logps: Any,
    policy_rejected_logps: Any,
    chosen_lengths: Any,
    *,
    beta: float = 0.1,
    cpo_alpha: float = 1.0,
    label_smoothing: float = 0.0,
) -> jax.Array:
    """CPO: ``-log σ(β(c_w - c_l)) + cpo_alpha · NLL(chosen)``, no reference model.

    Summed (not averaged) log-probs, as TRL's CPO trainer with ``loss_type="sigmoid"``; label
    smoothing gives cDPO. The NLL is the batch's mean NLL per chosen completion token,
    ``-Σ c_w / Σ |y_w|`` (TRL: cross-entropy over the chosen tokens), added to every example.

    Args:
      policy_chosen_logps: ``[batch]`` ``c_w``.
      policy_rejected_logps: ``[batch]`` ``c_l``.
      chosen_lengths: ``[batch]`` chosen completion token counts.
      beta: β.
      cpo_alpha: weight of the NLL (behaviour-cloning) term.
      label_smoothing: ε in [0, 0.5].

    Returns:
      ``[batch]`` per-example losses.
    """
    dtype = float_dtype(policy_chosen_logps, policy_rejected_logps)
    pc, pr = cast(dtype, policy_chosen_logps, policy_rejected_logps)
    nll = batch_token_nll(pc, chosen_lengths)
    return smoothed_bt_nll(beta * (pc - pr), label_smoothing) + cpo_alpha * nll


@checked("orpo")
def orpo_loss(
    policy_chosen_logps: Any,
    policy_rejected_logps: Any,
    chosen_lengths: Any,
    rejected_lengths: Any,
    *,
    beta: float = 0.1,
) -> jax.Array:
    """ORPO: ``NLL(chosen) - λ log σ(log_odds)``, no reference model.

    With length-averaged log-probs ``c̄ = c/|y|``,
    ``log_odds = (c̄_w - c̄_l) - (log(1 - exp(c̄_w)) - log(1 - exp(c̄_l)))``, the log odds ratio of
    the chosen over the rejected completion; ``log(1 - exp(·))`` is :func:`log1mexp`. NLL is the
    batch's mean NLL per chosen completion token. (TRL's ORPO trainer takes that NLL over the prompt
    tokens too; the paper's SFT term, and this one, cover the completion.)

    Args:
      policy_chosen_logps: ``[batch]`` summed ``c_w``.
      policy_rejected_logps: ``[batch]`` summed ``c_l``.
      chosen_lengths: ``[batch]`` completion token counts (clamped at 1).
      rejected_lengths: ``[batch]``.
      beta: λ, the odds-ratio weight (TRL ``ORPOConfig.beta``).

    Returns:
      ``[batch]`` per-example losses.
    """
    dtype = float_dtype(policy_chosen_logps, policy_rejected_logps)
    pc, pr = cast(dtype, policy_chosen_logps, policy_rejected_logps)
    len_w, len_l = clamped_lengths(chosen_lengths, dtype), clamped_lengths(rejected_lengths, dtype)
    mean_w, mean_l = pc / len_w, pr / len_l
    log_odds = (mean_w - mean_l) - (log1mexp(mean_w) - log1mexp(mean_l))
    return batch_token_nll(pc, chosen_lengths) - beta * jax.nn.log_sigmoid(log_odds)


@checked("asft")
def asft_loss(
    policy_chosen_logps: Any,
    policy_rejected_logps: Any,
    chosen_lengths: Any,
    rejected_lengths: Any,
    *,
    beta: float = 0.1,
) -> jax.Array:
    """ASFT (absolute likelihood, no reference): ``-log p̄_w - λ[log σ(r_w) + log σ(-r_l)]``.

    ``p̄ = exp(c/|y|)`` is the per-token geometric-mean likelihood and ``r = log p̄ - log(1 - p̄)``
    its log-odds. Since ``σ(log-odds) = p̄``, the bracket is ``log p̄_w + log(1 - p̄_l)``, computed
    so (with :func:`log1mexp`) rather than through the odds, which overflow as ``p̄ -> 1``. The
    paper gives no default λ; 0.1 (ORPO's, whose code ASFT builds on) is this module's choice.

    Args:
      policy_chosen_logps: ``[batch]`` summed ``c_w``.
      policy_rejected_logps: ``[batch]`` summed ``c_l``.
      chosen_lengths: ``[batch]`` completion token counts (clamped at 1).
      rejected_lengths: ``[batch]``.
      beta: λ, the weight of the alignment term.

    Returns:
      ``[batch]`` per-example losses.
    """
    dtype = float_dtype(policy_chosen_logps, policy_rejected_logps)
    pc, pr = cast(dtype, policy_chosen_logps, policy_rejected_logps)
    mean_w = pc / clamped_lengths(chosen_lengths, dtype)
    mean_l = pr / clamped_lengths(rejected_lengths, dtype)
    return -mean_w - beta * (mean_w + log1mexp(mean_l))


@checked("poft")
def poft_loss(
    policy_logps: Any,
    lengths: Any,
    aligned_scores: Any,
    *,
    beta: float = 1.0,
) -> jax.Array:
    """PoFT: ``-log σ(β (1/M) Σ_j (r_θ - r_j))`` on (x, y) pairs, no reference model.

    ``r_θ = c / |y|`` is the policy's length-normalised log-likelihood of the target, ``r_j`` the
    same precomputed under each of ``M`` fixed aligned models (each normalised by its own
    tokenizer's length). β = 1 is the paper's formula; β scales the Bradley–Terry logit.

    Args:
      policy_logps: ``[batch]`` summed completion log-probs under the policy.
      lengths: ``[batch]`` completion token counts under the policy's tokenizer (clamped at 1).
      aligned_scores: ``[batch, M]`` the aligned models' ``r_j`` (no gradient).
      beta: β.

    Returns:
      ``[batch]`` per-example losses.
    """
    dtype = float_dtype(policy_logps, aligned_scores)
    p, scores = cast(dtype, policy_logps, aligned_scores)
    r_theta = p / clamped_lengths(lengths, dtype)
    margin = jnp.mean(r_theta[:, None] - jax.lax.stop_gradient(scores), axis=-1)
    return -jax.nn.log_sigmoid(beta * margin)
