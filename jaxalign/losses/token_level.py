"""Token-level distillation from aligned teachers: DCKD's forward KL and ADPA's advantage.

Both read per-position distributions, not sequence sums. Training computes the per-position
terms chunk by chunk through the LM heads (:mod:`jaxalign.ops.teacher`) and combines them with
:func:`dckd_combine` / :func:`token_mean_contributions`; :func:`dckd_loss` and :func:`adpa_loss`
are the same losses from whole arrays, for tests and direct use.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from jaxalign.losses.numerics import cast, float_dtype
from jaxalign.losses.registry import checked


def token_mean_contributions(per_token: jax.Array, mask: jax.Array) -> jax.Array:
    """``[batch, seq] -> [batch]`` whose batch mean is the mean of ``per_token`` over masked tokens.

    Example ``b`` contributes ``B · Σ_t m_bt x_bt / max(N, 1)`` with ``N = Σ m`` over the whole
    batch, so every token weighs the same however the tokens are split among examples.
    """
    total = jnp.maximum(jnp.sum(mask), 1)
    return per_token.shape[0] * jnp.sum(per_token * mask, axis=-1) / total


def forward_kl_terms(student_logps: jax.Array, teacher_logps: jax.Array, renormalize: bool = False) -> jax.Array:
    """``[..., k] -> [...]``: ``Σ_k p_T (log p_T - log p_θ)`` at each position (``0 log 0 = 0``).

    Over the whole vocabulary this is ``KL(p_T ‖ p_θ)``. Over the teacher's top-k ids, the
    log-probs as given (``renormalize=False``) are full-vocabulary ones at those ids: the
    gradient is that of the cross-entropy to the teacher's top-k mass. ``renormalize=True``
    renormalises both over the k ids: the exact KL of the two restricted distributions (>= 0).
    """
    if renormalize:
        teacher_logps = jax.nn.log_softmax(teacher_logps, axis=-1)
        student_logps = jax.nn.log_softmax(student_logps, axis=-1)
    teacher_probs = jnp.exp(teacher_logps)
    return jnp.sum(jnp.where(teacher_probs > 0, teacher_probs * (teacher_logps - student_logps), 0.0), axis=-1)


@checked("dckd")
def dckd_combine(chosen_kl: Any, chosen_mask: Any, rejected_kl: Any, rejected_mask: Any, chosen_token_logps: Any, *,
                 sft_weight: float = 1.0, distill_weight: float = 1.0, chosen_weight: float = 1.0,
                 rejected_weight: float = 1.0) -> jax.Array:
    """DCKD from per-position terms: ``w_sft · NLL(y_w) + w_dist · [w_c · KL_w + w_r · KL_l]``.

    ``chosen_kl``/``rejected_kl`` are :func:`forward_kl_terms` per position ``[batch, seq]``;
    each of NLL, ``KL_w`` and ``KL_l`` is a mean per completion token over the batch (see
    :func:`token_mean_contributions`). Returns ``[batch]`` contributions whose mean is the loss.
    """
    kl_w = token_mean_contributions(chosen_kl, chosen_mask)
    kl_l = token_mean_contributions(rejected_kl, rejected_mask)
    nll = token_mean_contributions(-chosen_token_logps, chosen_mask)
    return sft_weight * nll + distill_weight * (chosen_weight * kl_w + rejected_weight * kl_l)


@checked("dckd")
def dckd_loss(
    student_chosen_topk_logps: Any,
    teacher_chosen_topk_logps: Any,
    chosen_mask: Any,
    student_rejected_topk_logps: Any,
    teacher_rejected_topk_logps: Any,
    rejected_mask: Any,
    student_chosen_token_logps: Any,
    *,
    sft_weight: float = 1.0,
    distill_weight: float = 1.0,
    chosen_weight: float = 1.0,
    rejected_weight: float = 1.0,
    renormalize: bool = False,
) -> jax.Array:
    """DCKD: SFT on the chosen completion plus forward KL to an aligned teacher on both completions.

    ``w_sft · NLL(y_w) + w_dist · [w_c · KL_w + w_r · KL_l]`` with, at each completion position,
    ``KL(p_T ‖ p_θ) = Σ_v p_T(v) (log p_T(v) - log p_θ(v))`` over the vocabulary, or over the
    teacher's top-k ids (:func:`forward_kl_terms`). Each of NLL, ``KL_w`` and ``KL_l`` is a mean
    per completion token over the batch; example ``b`` gets its share, ``B · Σ_t m_bt x_bt / N``,
    so the mean of the returned vector is exactly the token-mean loss. Training computes the
    same per position, chunk by chunk (:mod:`jaxalign.ops.teacher`), and combines with
    :func:`dckd_combine`.

    Args:
      student_chosen_topk_logps: ``[batch, seq, k]`` student log-probs (log-softmax over the
        vocabulary) at the teacher's top-k ids (k = vocabulary: all of them), chosen completion.
      teacher_chosen_topk_logps: ``[batch, seq, k]`` the teacher's log-probs there (no gradient).
      chosen_mask: ``[batch, seq]`` 1 on chosen completion tokens, 0 on prompt and padding.
      student_rejected_topk_logps: ``[batch, seq', k]`` likewise for the rejected completion.
      teacher_rejected_topk_logps: ``[batch, seq', k]``.
      rejected_mask: ``[batch, seq']``.
      student_chosen_token_logps: ``[batch, seq]`` student log-probs of the chosen tokens themselves.
      sft_weight, distill_weight, chosen_weight, rejected_weight: ``w_sft, w_dist, w_c, w_r``
        (the paper gives no defaults; 1.0 each here).
      renormalize: static; see :func:`forward_kl_terms`.

    Returns:
      ``[batch]`` per-example contributions (their mean is the loss).
    """
    dtype = float_dtype(student_chosen_topk_logps, teacher_chosen_topk_logps, student_rejected_topk_logps,
                         teacher_rejected_topk_logps, student_chosen_token_logps)
    sw, tw, mw, sl, tl, ml, tok = cast(
        dtype, student_chosen_topk_logps, teacher_chosen_topk_logps, chosen_mask, student_rejected_topk_logps,
        teacher_rejected_topk_logps, rejected_mask, student_chosen_token_logps,
    )
    tw, tl = jax.lax.stop_gradient(tw), jax.lax.stop_gradient(tl)
    return dckd_combine.unchecked(forward_kl_terms(sw, tw, renormalize), mw, forward_kl_terms(sl, tl, renormalize), ml, tok,
                        sft_weight=sft_weight, distill_weight=distill_weight, chosen_weight=chosen_weight,
                        rejected_weight=rejected_weight)


def expected_advantage(student_logps: jax.Array, advantages: jax.Array) -> jax.Array:
    """``[..., V] -> [...]``: ``Σ_v π_θ(v|s_t) A(s_t, v)``, gradient through ``π_θ`` only."""
    return jnp.sum(jnp.exp(student_logps) * jax.lax.stop_gradient(advantages), axis=-1)


@checked("adpa")
def adpa_loss(student_logps: Any, advantages: Any, mask: Any) -> jax.Array:
    """ADPA: ``-(1/N_tok) Σ_t Σ_v π_θ(v|s_t) A(s_t, v)``, advantage-weighted student probabilities.

    ``A(s_t, v) = log π_teacher-dpo(v|s_t) - log π_teacher-ref(v|s_t)`` on student-generated
    responses (no gradient). ``N_tok`` counts the masked tokens of the whole batch; example
    ``b`` gets its share ``-B · Σ_t m_bt Σ_v π_θ A / N_tok``, so the mean of the returned vector
    is exactly the formula. Training computes :func:`expected_advantage` chunk by chunk
    (:mod:`jaxalign.ops.teacher`) and takes the same token mean.

    Args:
      student_logps: ``[batch, seq, vocab]`` student log-probs (log-softmax over the vocabulary),
        or ``[batch, seq, k]`` the same gathered at a top-k subset of ids (the sum then runs over
        that subset; log-probs must not be renormalised over it).
      advantages: same shape as ``student_logps``.
      mask: ``[batch, seq]`` 1 on response tokens.

    Returns:
      ``[batch]`` per-example contributions (their mean is the loss).
    """
    dtype = float_dtype(student_logps, advantages)
    logps, adv, m = cast(dtype, student_logps, advantages, mask)
    return token_mean_contributions(-expected_advantage(logps, adv), m)
