"""The DPO family under TRL's ``loss_type`` names: one pure function per loss, and ``dpo_loss``.

Each loss is a function of the quantities it reads, as arrays ``[batch]``, with its options as
keyword arguments, in the manner of optax (Rafailov et al. 2023, "Direct Preference
Optimization"; TRL ``DPOTrainer``, TRL >= 1.0 semantics). Notation: ``c_w, c_l`` policy
log-probs of the chosen / rejected completion summed over completion tokens (prompt masked),
``r_w, r_l`` the same under the reference model, ``h = c - r`` the log-ratio, ``s = f(h)`` its
f-divergence score (``s = h`` by default), ``|y|`` the completion length in tokens. Losses take
the score (``chosen_scores``), the log-ratio (``chosen_logratios``) or the raw log-probs, as TRL's
do. :data:`DPO_LOSSES` maps the names to the functions and :func:`dpo_loss` is their weighted
sum (TRL's multi-loss / MPO combination), computing each input once.

Arithmetic runs in the inputs' float type (:mod:`jaxalign.losses.numerics`); nothing reads
array values on the Python side, so every function traces under ``jax.jit``. ``loss_type`` and
the options are Python values used while tracing: jit a closure (or ``functools.partial``)
over them and pass only the log-prob arrays::

    loss_fn = jax.jit(functools.partial(dpo_loss, loss_type="ipo", beta=0.5))
    per_example = loss_fn(pc, pr, rc, rr, chosen_lengths=lw, rejected_lengths=ll)

Batch reductions inside a loss (``aot``'s sort, ``sft``'s token mean) run over the *global*
batch under ``jit`` with a batch-sharded input.

Where TRL 1.16's code and the papers differ, this module follows:

* ``sigmoid`` with ``label_smoothing``: TRL 1.x ignores it for ``sigmoid``; the conservative-DPO
  form ``-(1-ε) log σ(βΔ) - ε log σ(-βΔ)`` (Mitchell 2023; TRL <= 0.28, Tunix) is applied here.
  ε = 0 (the default) is TRL 1.x.
* ``bco_pair``: TRL 1.x drops the running-mean shift δ; the BCO paper (and TRL 0.x) subtract it.
  Option ``bco_delta`` (default 0.0, i.e. TRL 1.x) carries δ; the caller keeps the running mean.
* ``exo_pair`` at ε = 0: TRL 0.x silently used ε = 1e-3, TRL 1.x raises. This module raises
  (naming the paper's 1e-3), so a config never runs a loss it did not ask for.
* ``f_alpha_divergence_coef`` defaults to 0.5, TRL 1.16's ``DPOConfig`` default (TRL 0.x used
  1.0, at which the α-divergence is exactly reverse KL). α within 1e-6 of 1 falls back to the
  reverse-KL score as TRL does (the closed form is 0/0 there). The exponent ``(α-1)h`` is
  clamped at 80 in float32 (TRL's value); TRL has no float64 entry, here it is 700.
* f-divergence scores apply to ``sigmoid, hinge, ipo, exo_pair, robust, discopop, sigmoid_norm``
  (Wang et al. 2023, "Beyond Reverse KL"). TRL also admits ``sft`` in that set (the score does
  not enter it) and rejects a non-default ``f_divergence_type`` with any other loss; both are
  followed here.
* ``robust`` with ε outside [0, 0.5): TRL only warns; this module raises.
* ``sft``: TRL's value is the mean NLL over *all* chosen completion tokens of the batch, expanded
  to every example; here ``-Σ c_w / max(Σ |y_w|, 1)`` from the summed log-probs, likewise
  broadcast to ``[batch]`` (so the batch mean is the token mean).
* ``discopop``: TRL computes ``m · exp(-z)``, which is ``0 · inf = NaN`` once ``z`` is very
  negative; here the same value is ``exp(log σ(z/τ) - z)``, finite everywhere.
* WPO weighting (``use_weighting``) and LD-DPO (``ld_alpha``) act on per-token log-probs, before
  the sum: :func:`wpo_weights` and :func:`ld_logps` take those, and ``dpo_loss`` the results
  (WPO: multiply its output by the weights; LD-DPO: pass the ``ld_logps`` sums as ``c`` and
  ``r``). TR-DPO reference syncing is a training-loop concern.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from jaxalign.losses.numerics import (
    LOG2,
    batch_token_nll,
    cast,
    clamped_lengths,
    float_dtype,
    smoothed_bt_nll,
)
from jaxalign.losses.registry import F_DIVERGENCE_TYPES, as_loss_types, checked


def _floats(*xs):
    return cast(float_dtype(*xs), *xs)


def f_divergence_score(
    logratios: jax.Array, f_divergence_type: str = "reverse_kl", f_alpha_divergence_coef: float = 0.5
) -> jax.Array:
    """The f-DPO score ``s = f'(π/π_ref)`` of log-ratios ``h``, elementwise (TRL ``DPOTrainer``).

    ``reverse_kl``: ``h``; ``forward_kl``: ``1 - exp(-h)``; ``js_divergence``: ``log 2 + log σ(h)``;
    ``alpha_divergence``: ``(exp((α-1)h) - 1) / (α-1)``, with the exponent clamped at 80 (float32)
    or 700 (float64) so it stays finite, and ``h`` itself for ``|α-1| < 1e-6`` (the limit).
    Preference losses then use ``Δ = s_w - s_l`` in place of ``h_w - h_l``.

    Args:
      logratios: any shape, e.g. ``[batch]``.
      f_divergence_type: one of :data:`F_DIVERGENCE_TYPES`; static.
      f_alpha_divergence_coef: α of the α-divergence; static (its distance to 1 picks the branch).

    Returns:
      Scores of the same shape and float type.
    """
    h = logratios
    if f_divergence_type == "reverse_kl":
        return h
    if f_divergence_type == "forward_kl":
        return -jnp.expm1(-h)
    if f_divergence_type == "js_divergence":
        return LOG2 + jax.nn.log_sigmoid(h)
    if f_divergence_type == "alpha_divergence":
        alpha = float(f_alpha_divergence_coef)
        if abs(alpha - 1.0) < 1e-6:
            return h
        clamp = 700.0 if jnp.finfo(h.dtype).bits >= 64 else 80.0
        return jnp.expm1(jnp.minimum((alpha - 1.0) * h, clamp)) / (alpha - 1.0)
    raise ValueError(f"unknown f_divergence_type {f_divergence_type!r}; known: {', '.join(F_DIVERGENCE_TYPES)}")


# ------------------------------------------------------------------------------- one function per loss


def sigmoid_loss(chosen_scores: Any, rejected_scores: Any, *, beta: float = 0.1,
                 label_smoothing: float = 0.0) -> jax.Array:
    """DPO (``sigmoid``): ``-(1-ε) log σ(βΔ) - ε log σ(-βΔ)``, ``Δ = s_w - s_l`` (cDPO for ε > 0)."""
    sw, sl = _floats(chosen_scores, rejected_scores)
    return smoothed_bt_nll(beta * (sw - sl), label_smoothing)


def robust_loss(chosen_scores: Any, rejected_scores: Any, *, beta: float = 0.1,
                label_smoothing: float = 0.0) -> jax.Array:
    """Robust DPO (Chowdhury et al. 2024): ``[-(1-ε) log σ(βΔ) + ε log σ(-βΔ)] / (1-2ε)``, ε in [0, 0.5)."""
    sw, sl = _floats(chosen_scores, rejected_scores)
    z, eps = beta * (sw - sl), label_smoothing
    return (-(1 - eps) * jax.nn.log_sigmoid(z) + eps * jax.nn.log_sigmoid(-z)) / (1 - 2 * eps)


def hinge_loss(chosen_scores: Any, rejected_scores: Any, *, beta: float = 0.1) -> jax.Array:
    """SLiC (``hinge``): ``relu(1 - βΔ)``."""
    sw, sl = _floats(chosen_scores, rejected_scores)
    return jax.nn.relu(1 - beta * (sw - sl))


def ipo_loss(chosen_scores: Any, rejected_scores: Any, chosen_lengths: Any, rejected_lengths: Any, *,
             beta: float = 0.1) -> jax.Array:
    """IPO (Azar et al. 2023), length-normalised as TRL: ``(s_w/|y_w| - s_l/|y_l| - 1/(2β))²``, β = IPO's τ."""
    sw, sl = _floats(chosen_scores, rejected_scores)
    lw, ll = clamped_lengths(chosen_lengths, sw.dtype), clamped_lengths(rejected_lengths, sw.dtype)
    return (sw / lw - sl / ll - 1 / (2 * beta)) ** 2


def exo_pair_loss(chosen_scores: Any, rejected_scores: Any, *, beta: float = 0.1,
                  label_smoothing: float) -> jax.Array:
    """EXO (Ji et al. 2024): ``σ(βΔ)[log σ(βΔ) - log(1-ε)] + σ(-βΔ)[log σ(-βΔ) - log ε]``, ε in (0, 0.5]
    (no default: the paper recommends 1e-3)."""
    sw, sl = _floats(chosen_scores, rejected_scores)
    z, eps = beta * (sw - sl), label_smoothing
    return (jax.nn.sigmoid(z) * (jax.nn.log_sigmoid(z) - jnp.log1p(-eps))
            + jax.nn.sigmoid(-z) * (jax.nn.log_sigmoid(-z) - jnp.log(eps)))


def nca_pair_loss(chosen_logratios: Any, rejected_logratios: Any, *, beta: float = 0.1) -> jax.Array:
    """NCA (Chen et al. 2024): ``-log σ(β h_w) - ½ log σ(-β h_w) - ½ log σ(-β h_l)``."""
    hw, hl = _floats(chosen_logratios, rejected_logratios)
    return (-jax.nn.log_sigmoid(beta * hw) - 0.5 * jax.nn.log_sigmoid(-beta * hw)
            - 0.5 * jax.nn.log_sigmoid(-beta * hl))


def bco_pair_loss(chosen_logratios: Any, rejected_logratios: Any, *, beta: float = 0.1,
                  bco_delta: Any = 0.0) -> jax.Array:
    """BCO (Jung et al. 2024): ``-log σ(β h_w - δ) - log σ(-(β h_l - δ))``, δ = ``bco_delta`` (no gradient;
    may be a traced scalar, the caller's running mean of the rewards ``β·h``)."""
    hw, hl = _floats(chosen_logratios, rejected_logratios)
    shift = jax.lax.stop_gradient(jnp.asarray(bco_delta, hw.dtype))
    return -jax.nn.log_sigmoid(beta * hw - shift) - jax.nn.log_sigmoid(-(beta * hl - shift))


def sppo_hard_loss(chosen_logratios: Any, rejected_logratios: Any, *, beta: float = 0.1) -> jax.Array:
    """SPPO with hard labels (Wu et al. 2024): ``(h_w - 1/(2β))² + (h_l + 1/(2β))²``."""
    hw, hl = _floats(chosen_logratios, rejected_logratios)
    return (hw - 1 / (2 * beta)) ** 2 + (hl + 1 / (2 * beta)) ** 2


def aot_loss(policy_chosen_logps: Any, policy_rejected_logps: Any, ref_chosen_logps: Any, ref_rejected_logps: Any,
             *, beta: float = 0.1, label_smoothing: float = 0.0) -> jax.Array:
    """AOT (Melnyk et al. 2024), paired: cDPO of ``sort_batch(c_w - c_l) - sort_batch(r_w - r_l)``.

    Element ``i`` belongs to the ``i``-th smallest margin, not to pair ``i``; only the mean is
    meaningful (as in TRL)."""
    pc, pr, rc, rr = _floats(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps)
    margin = jnp.sort(pc - pr, axis=0) - jnp.sort(rc - rr, axis=0)
    return smoothed_bt_nll(beta * margin, label_smoothing)


def aot_unpaired_loss(chosen_logratios: Any, rejected_logratios: Any, *, beta: float = 0.1,
                      label_smoothing: float = 0.0) -> jax.Array:
    """AOT, unpaired: cDPO of ``sort_batch(h_w) - sort_batch(h_l)`` (only the mean is meaningful)."""
    hw, hl = _floats(chosen_logratios, rejected_logratios)
    return smoothed_bt_nll(beta * (jnp.sort(hw, axis=0) - jnp.sort(hl, axis=0)), label_smoothing)


def apo_zero_loss(chosen_logratios: Any, rejected_logratios: Any, *, beta: float = 0.1) -> jax.Array:
    """APO-zero (D'Oosterlinck et al. 2024): ``(1 - σ(β h_w)) + σ(β h_l)``."""
    hw, hl = _floats(chosen_logratios, rejected_logratios)
    return (1 - jax.nn.sigmoid(beta * hw)) + jax.nn.sigmoid(beta * hl)


def apo_down_loss(chosen_logratios: Any, rejected_logratios: Any, *, beta: float = 0.1) -> jax.Array:
    """APO-down: ``σ(β h_w) + (1 - σ(β (h_w - h_l)))``."""
    hw, hl = _floats(chosen_logratios, rejected_logratios)
    return jax.nn.sigmoid(beta * hw) + (1 - jax.nn.sigmoid(beta * (hw - hl)))


def discopop_loss(chosen_scores: Any, rejected_scores: Any, *, beta: float = 0.1,
                  discopop_tau: float = 0.05) -> jax.Array:
    """DiscoPOP (Chris Lu et al. 2024): ``z = βΔ``, ``m = σ(z/τ)``: ``(1-m)(-log σ(z)) + m exp(-z)``."""
    sw, sl = _floats(chosen_scores, rejected_scores)
    z = beta * (sw - sl)
    # m·exp(-z) as one exp, so that a very negative z (m -> 0, exp(-z) -> inf) gives 0, not 0·inf = NaN.
    return jax.nn.sigmoid(-z / discopop_tau) * jax.nn.softplus(-z) + jnp.exp(jax.nn.log_sigmoid(z / discopop_tau) - z)


def sft_loss(policy_chosen_logps: Any, chosen_lengths: Any) -> jax.Array:
    """``sft``: ``-Σ c_w / max(Σ |y_w|, 1)``, the batch's mean NLL per chosen token, on every example."""
    (pc,) = _floats(policy_chosen_logps)
    return jnp.broadcast_to(batch_token_nll(pc, chosen_lengths), pc.shape)


def sigmoid_norm_loss(chosen_scores: Any, rejected_scores: Any, chosen_lengths: Any, rejected_lengths: Any, *,
                      beta: float = 0.1) -> jax.Array:
    """``sigmoid_norm``: ``-log σ(β(s_w/|y_w| - s_l/|y_l|))``."""
    sw, sl = _floats(chosen_scores, rejected_scores)
    lw, ll = clamped_lengths(chosen_lengths, sw.dtype), clamped_lengths(rejected_lengths, sw.dtype)
    return -jax.nn.log_sigmoid(beta * (sw / lw - sl / ll))


DPO_LOSSES: dict[str, Callable[..., jax.Array]] = {
    "sigmoid": sigmoid_loss, "robust": robust_loss, "hinge": hinge_loss, "ipo": ipo_loss, "exo_pair": exo_pair_loss,
    "nca_pair": nca_pair_loss, "bco_pair": bco_pair_loss, "sppo_hard": sppo_hard_loss, "aot": aot_loss,
    "aot_unpaired": aot_unpaired_loss, "apo_zero": apo_zero_loss, "apo_down": apo_down_loss,
    "discopop": discopop_loss, "sft": sft_loss, "sigmoid_norm": sigmoid_norm_loss,
}


def _inputs(fn: Callable) -> tuple[list[str], set[str]]:
    """A loss function's array inputs (positional parameters) and its keyword options."""
    params = inspect.signature(fn).parameters.values()
    return ([p.name for p in params if p.kind is p.POSITIONAL_OR_KEYWORD],
            {p.name for p in params if p.kind is p.KEYWORD_ONLY})


_DPO_INPUTS = {name: _inputs(fn) for name, fn in DPO_LOSSES.items()}  # read once, not at every trace


# ------------------------------------------------------------------------------- the weighted sum


@checked()
def dpo_loss(
    policy_chosen_logps: Any,
    policy_rejected_logps: Any,
    ref_chosen_logps: Any,
    ref_rejected_logps: Any,
    *,
    loss_type: str | Sequence[str] = "sigmoid",
    beta: float = 0.1,
    label_smoothing: float = 0.0,
    chosen_lengths: Any = None,
    rejected_lengths: Any = None,
    **options: Any,
) -> jax.Array:
    """Per-pair DPO-family losses, TRL ``DPOTrainer`` ``loss_type`` names, summed with ``loss_weights``.

    With ``h_w = c_w - r_w``, ``h_l = c_l - r_l``, f-divergence scores ``s = f(h)`` (see
    :func:`f_divergence_score`; ``s = h`` by default), ``Δ = s_w - s_l`` and ``ε`` =
    ``label_smoothing``:

    ================  ==================================================================================
    ``sigmoid``       ``-(1-ε) log σ(βΔ) - ε log σ(-βΔ)`` (cDPO; TRL 1.x has no ε here, see module doc)
    ``robust``        ``[-(1-ε) log σ(βΔ) + ε log σ(-βΔ)] / (1-2ε)``, ε in [0, 0.5)
    ``hinge``         ``relu(1 - βΔ)`` (SLiC)
    ``ipo``           ``(s_w/|y_w| - s_l/|y_l| - 1/(2β))²``
    ``exo_pair``      ``σ(βΔ)[log σ(βΔ) - log(1-ε)] + σ(-βΔ)[log σ(-βΔ) - log ε]``, ε in (0, 0.5]
    ``nca_pair``      ``-log σ(β h_w) - ½ log σ(-β h_w) - ½ log σ(-β h_l)``
    ``bco_pair``      ``-log σ(β h_w - δ) - log σ(-(β h_l - δ))``, δ = ``bco_delta`` (no gradient)
    ``sppo_hard``     ``(h_w - 1/(2β))² + (h_l + 1/(2β))²``
    ``aot``           cDPO of ``δ = sort_batch(c_w - c_l) - sort_batch(r_w - r_l)``
    ``aot_unpaired``  cDPO of ``δ = sort_batch(h_w) - sort_batch(h_l)``
    ``apo_zero``      ``(1 - σ(β h_w)) + σ(β h_l)``
    ``apo_down``      ``σ(β h_w) + (1 - σ(β (h_w - h_l)))``
    ``discopop``      ``z = βΔ``, ``m = σ(z/τ)``: ``(1-m)(-log σ(z)) + m exp(-z)``
    ``sft``           ``-Σ c_w / Σ |y_w|``, the batch's mean NLL per chosen token, on every example
    ``sigmoid_norm``  ``-log σ(β(s_w/|y_w| - s_l/|y_l|))``
    ================  ==================================================================================

    The f-divergence score enters exactly ``sigmoid, robust, hinge, ipo, exo_pair, discopop,
    sigmoid_norm``; ``nca_pair, bco_pair, sppo_hard, apo_*, aot_unpaired`` use ``h`` and ``aot`` the
    raw log-probs (a non-default ``f_divergence_type`` with those is rejected, as TRL does).

    Args:
      policy_chosen_logps: ``[batch]`` ``c_w``, summed completion log-probs under the policy.
      policy_rejected_logps: ``[batch]`` ``c_l``.
      ref_chosen_logps: ``[batch]`` ``r_w`` under the reference model; no gradient flows into it
        (TRL runs the reference under ``no_grad``). May be ``None`` when only ``sft`` is asked for.
      ref_rejected_logps: ``[batch]`` ``r_l``; likewise.
      loss_type: one name of :data:`DPO_LOSSES`, or a list/tuple of names whose losses are
        summed with ``loss_weights`` (default 1.0 each), TRL's multi-loss (MPO) combination.
      beta: β (> 0; IPO's τ). A Python float or a traced scalar.
      label_smoothing: ε for ``sigmoid``, ``robust``, ``exo_pair``, ``aot``, ``aot_unpaired``.
      chosen_lengths: ``[batch]`` completion token counts of the chosen completions; needed by
        ``ipo`` and ``sigmoid_norm`` (each count clamped at 1) and ``sft`` (their sum, clamped at 1).
      rejected_lengths: ``[batch]`` likewise, needed by ``ipo`` and ``sigmoid_norm``.
      **options: ``DPOConfig`` names: ``f_divergence_type`` (``"reverse_kl"``),
        ``f_alpha_divergence_coef`` (0.5, TRL 1.16's default; static), ``discopop_tau`` (0.05),
        ``loss_weights`` (list, one per loss type), ``bco_delta`` (0.0; may be a traced scalar).

    Returns:
      ``[batch]`` per-example losses in the inputs' float type; the training loss is their mean.

    Raises:
      ValueError: before any array work (:func:`jaxalign.losses.registry.validate_loss_options`
        and :func:`~jaxalign.losses.registry.check_dpo_inputs`), for an unknown loss name, a loss
        outside the DPO family, an option no listed loss takes, or missing lengths / reference
        log-probs a loss needs. ``dpo_loss.unchecked`` skips those checks (training checks its
        config once).
    """
    types = as_loss_types(loss_type)
    pc, pr, rc, rr = _floats(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps)
    rc, rr = (None if x is None else jax.lax.stop_gradient(x) for x in (rc, rr))
    terms = {"policy_chosen_logps": pc, "policy_rejected_logps": pr, "ref_chosen_logps": rc,
             "ref_rejected_logps": rr, "chosen_lengths": chosen_lengths, "rejected_lengths": rejected_lengths}
    if rc is not None and rr is not None:
        f_div = options.get("f_divergence_type", "reverse_kl"), options.get("f_alpha_divergence_coef", 0.5)
        terms.update(chosen_logratios=pc - rc, rejected_logratios=pr - rr)
        terms.update(chosen_scores=f_divergence_score(pc - rc, *f_div), rejected_scores=f_divergence_score(pr - rr, *f_div))
    settings = {"beta": beta, "label_smoothing": label_smoothing, **options}
    weights = options.get("loss_weights")
    total = jnp.zeros(pc.shape, pc.dtype)
    for name, weight in zip(types, [1.0] * len(types) if weights is None else weights, strict=True):
        fn, (inputs, keywords) = DPO_LOSSES[name], _DPO_INPUTS[name]
        total = total + weight * fn(*(terms[k] for k in inputs), **{k: settings[k] for k in keywords if k in settings})
    return total


def ld_logps(per_token_logps: Any, mask: Any, ld_alpha: float) -> jax.Array:
    """LD-DPO's length-desensitised sequence log-probs (Liu et al. 2024; TRL's ``ld_alpha``).

    Each pair's first ``ℓ = min(|y_w|, |y_l|)`` completion tokens count fully and the rest
    (the longer completion's verbose tail) with weight ``α``: ``Σ_{i ≤ ℓ} log p_i + α Σ_{i > ℓ} log p_i``.
    Applied alike to the policy's and the reference's per-token log-probs.

    Args:
      per_token_logps: ``[batch, 2, seq]`` per-token log-probs of (chosen, rejected), 0 off the completion.
      mask: ``[batch, 2, seq]`` 1 at the completion positions.
      ld_alpha: α in [0, 1] (1: plain sums; TRL's recipes use 0.5 or less).

    Returns:
      ``[batch, 2]`` summed log-probs.
    """
    logps, m = _floats(per_token_logps, mask)
    position = jnp.cumsum(m, axis=-1)  # 1-based index within the completion
    shared = jnp.min(jnp.sum(m, axis=-1), axis=-1)[:, None, None]
    head = jnp.sum(logps * m * (position <= shared), axis=-1)
    tail = jnp.sum(logps * m * (position > shared), axis=-1)
    return head + ld_alpha * tail


def wpo_weights(per_token_logps: Any, log_sum_sq_probs: Any, mask: Any) -> jax.Array:
    """WPO's per-pair weights (Zhou et al. 2024, eq. 2; TRL's ``use_weighting``), no gradient.

    Per sequence ``w = exp(mean_t(log p_t - log Σ_v p_v²))`` over its completion tokens
    (lengths clamped at 1); the pair's weight is ``w_chosen · w_rejected``, multiplying every
    loss type's per-pair loss.

    Args:
      per_token_logps: ``[batch, 2, seq]`` per-token log-probs of (chosen, rejected).
      log_sum_sq_probs: ``[batch, 2, seq]`` ``log Σ_v p_v²`` at the same positions.
      mask: ``[batch, 2, seq]`` 1 at the completion positions.

    Returns:
      ``[batch]`` weights.
    """
    logps, lss, m = _floats(per_token_logps, log_sum_sq_probs, mask)
    mean = jnp.sum((logps - lss) * m, axis=-1) / jnp.maximum(jnp.sum(m, axis=-1), 1)
    w = jnp.exp(jax.lax.stop_gradient(mean))
    return w[:, 0] * w[:, 1]


def preference_metrics(
    policy_chosen_logps: Any,
    policy_rejected_logps: Any,
    ref_chosen_logps: Any,
    ref_rejected_logps: Any,
    beta: float,
) -> dict[str, jax.Array]:
    """TRL ``DPOTrainer``'s logged metrics, as batch means (scalars, no gradient).

    Implicit rewards are ``β·h`` (the plain log-ratio, whatever the f-divergence).

    Args:
      policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps: ``[batch]``.
      beta: β.

    Returns:
      ``rewards/chosen`` ``mean(β h_w)``, ``rewards/rejected`` ``mean(β h_l)``,
      ``rewards/accuracies`` ``mean(β h_w > β h_l)`` (ties count as wrong),
      ``rewards/margins`` ``mean(β h_w - β h_l)``, ``logps/chosen`` ``mean(c_w)``,
      ``logps/rejected`` ``mean(c_l)``.
    """
    pc, pr, rc, rr = (jax.lax.stop_gradient(x) for x in _floats(policy_chosen_logps, policy_rejected_logps,
                                                                 ref_chosen_logps, ref_rejected_logps))
    chosen, rejected = beta * (pc - rc), beta * (pr - rr)
    return {
        "rewards/chosen": jnp.mean(chosen),
        "rewards/rejected": jnp.mean(rejected),
        "rewards/accuracies": jnp.mean((chosen > rejected).astype(chosen.dtype)),
        "rewards/margins": jnp.mean(chosen - rejected),
        "logps/chosen": jnp.mean(pc),
        "logps/rejected": jnp.mean(pr),
    }
