"""Preference-optimisation losses over sequence log-probabilities: the DPO family and its relatives.

Pure functions in the style of optax: arrays of log-probabilities in, per-example losses
``[batch]`` out (the training loss is their mean). The DPO family follows TRL's ``DPOTrainer``
(``loss_type`` names and ``DPOConfig`` option names, TRL >= 1.0 semantics) as summarised in
``REFERENCE.md`` §1; SimPO/CPO, ORPO and KTO follow TRL's CPO, ORPO and KTO trainers; ASFT, PoFT,
D²O, DCKD and ADPA follow their papers' formulas as written in ``REFERENCE.md``.

Notation (REFERENCE.md): ``c_w, c_l`` policy log-probs of the chosen / rejected completion summed
over completion tokens (prompt masked), ``r_w, r_l`` the same under the reference model,
``h = c - r`` the log-ratio, ``Δ = h_w - h_l``, ``|y|`` the completion length in tokens.

Numerics, shared by every function here:

* Inputs may be NumPy or JAX arrays, of any float or integer type. Arithmetic runs in the inputs'
  floating type: float64 stays float64 (under ``jax_enable_x64``), float32 stays float32, and
  bfloat16/float16 and integers are promoted to float32 (float64 under x64), as in
  :mod:`jaxalign.losses.contrastive`. Nothing is forced to float32.
* ``log σ`` is ``jax.nn.log_sigmoid`` and ``log(1 - exp(x))`` is :func:`log1mexp`, so large
  log-ratios and long completions neither overflow nor lose precision.
* Nothing reads array values on the Python side, so every function traces under ``jax.jit``.
  ``loss_type`` and the options are Python values used while tracing: jit a closure (or
  ``functools.partial``) over them and pass only the log-prob arrays::

      loss_fn = jax.jit(functools.partial(dpo_loss, loss_type="ipo", beta=0.5))
      per_example = loss_fn(pc, pr, rc, rr, chosen_lengths=lw, rejected_lengths=ll)

  Batch reductions inside a loss (``aot``'s sort, ``sft``'s token mean, KTO's KL estimate) run
  over the *global* batch under ``jit`` with a batch-sharded input.
* Option checks (:func:`validate_loss_options`) run at trace time and cost nothing per step. A
  numeric option passed as a traced array (e.g. ``bco_delta``) skips its value checks.

Differences between TRL 1.16's code and REFERENCE.md, and which this module follows:

* ``sigmoid`` with ``label_smoothing``: TRL 1.x ignores ``label_smoothing`` for ``sigmoid``;
  REFERENCE (and TRL <= 0.28, Tunix) apply the conservative-DPO form
  ``-(1-ε) log σ(βΔ) - ε log σ(-βΔ)``. This module applies cDPO: ε = 0 (the default) is TRL 1.x.
* ``bco_pair``: TRL 1.x drops the running-mean shift δ; REFERENCE (and TRL 0.x) subtract it.
  Option ``bco_delta`` (default 0.0, i.e. TRL 1.x) carries δ; the caller keeps the running mean.
* ``exo_pair`` at ε = 0: TRL 0.x silently used ε = 1e-3, TRL 1.x raises. This module raises
  (``ValueError`` naming the paper's 1e-3), so a config never runs a loss it did not ask for.
* ``f_alpha_divergence_coef`` defaults to 0.5, TRL 1.16's ``DPOConfig`` default (TRL 0.x used
  1.0, at which the α-divergence is exactly reverse KL). α within 1e-6 of 1 falls back to the
  reverse-KL score as TRL does (REFERENCE's formula is 0/0 there). The exponent ``(α-1)h`` is
  clamped at 80 in float32 (TRL's value); TRL has no float64 entry, here it is 700.
* f-divergence scores apply to ``sigmoid, hinge, ipo, exo_pair, robust, discopop, sigmoid_norm``
  (REFERENCE). TRL also admits ``sft`` in that set (the score does not enter it) and rejects a
  non-default ``f_divergence_type`` with any other loss; both are followed here.
* ``robust`` with ε outside [0, 0.5): TRL only warns; this module raises.
* ``sft``: TRL's value is the mean NLL over *all* chosen completion tokens of the batch, expanded
  to every example; here ``-Σ c_w / max(Σ |y_w|, 1)`` from the summed log-probs, likewise
  broadcast to ``[batch]`` (so the batch mean is the token mean).
* ``discopop``: TRL computes ``m · exp(-z)``, which is ``0 · inf = NaN`` once ``z`` is very
  negative; here the same value is ``exp(log σ(z/τ) - z)``, finite everywhere.
* WPO weighting (``use_weighting``) and LD-DPO (``ld_alpha``) act on per-token log-probs, before
  the sum: :func:`wpo_weights` and :func:`ld_logps` take those, and ``dpo_loss`` the results
  (WPO: multiply its output by the weights; LD-DPO: pass the ``ld_logps`` sums as ``c`` and
  ``r``). TR-DPO reference syncing is a training-loop concern (``objective.sync_ref_model``).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp

__all__ = [
    "DPO_LOSS_TYPES",
    "F_DIVERGENCE_TYPES",
    "LOSSES",
    "Interval",
    "LossSpec",
    "adpa_loss",
    "asft_loss",
    "cpo_loss",
    "d2o_loss",
    "dckd_loss",
    "dckd_combine",
    "dpo_loss",
    "expected_advantage",
    "f_divergence_score",
    "forward_kl_terms",
    "kto_loss",
    "ld_logps",
    "log1mexp",
    "orpo_loss",
    "poft_loss",
    "preference_metrics",
    "simpo_loss",
    "token_mean_contributions",
    "validate_loss_options",
    "wpo_weights",
]

_LOG2 = math.log(2.0)

F_DIVERGENCE_TYPES = ("reverse_kl", "forward_kl", "js_divergence", "alpha_divergence")

# ---------------------------------------------------------------------------------------- registry


@dataclasses.dataclass(frozen=True)
class Interval:
    """A real interval with open or closed ends, for option ranges in error messages."""

    low: float
    high: float
    low_closed: bool = True
    high_closed: bool = True

    def __contains__(self, x: float) -> bool:
        above = x >= self.low if self.low_closed else x > self.low
        below = x <= self.high if self.high_closed else x < self.high
        return above and below

    def __str__(self) -> str:
        return f"{'[' if self.low_closed else '('}{self.low:g}, {self.high:g}{']' if self.high_closed else ')'}"


@dataclasses.dataclass(frozen=True)
class LossSpec:
    """What a loss needs, for validating a config before anything is compiled.

    Attributes:
      function: the function of this module that computes it (``"dpo_loss"`` for the DPO family,
        whose members are selected by ``loss_type``).
      options: option names it takes besides ``beta`` (TRL ``DPOConfig``/``CPOConfig``/``KTOConfig``
        names where TRL has the loss, else the function's keyword names).
      needs_reference: whether it reads reference-model log-probs.
      needs_lengths: whether it needs completion lengths (or a token mask) to length-normalise.
      default_beta: the default β (for ORPO and ASFT it is the weight λ, for SimPO 2.0).
      label_smoothing: the valid range of ``label_smoothing`` when the loss reads it, else ``None``.
      f_divergence: whether ``f_divergence_type`` changes it (the score replaces the log-ratio).
    """

    function: str
    options: frozenset[str]
    needs_reference: bool
    needs_lengths: bool
    default_beta: float = 0.1
    label_smoothing: Interval | None = None
    f_divergence: bool = False


_F_DIV = frozenset({"f_divergence_type", "f_alpha_divergence_coef"})
_WEIGHTS = frozenset({"loss_weights"})
_LS = frozenset({"label_smoothing"})
_HALF_CLOSED = Interval(0.0, 0.5)  # cDPO: probability that a label is flipped


def _dpo(*, options=frozenset(), lengths=False, ref=True, smoothing=None, f_div=False) -> LossSpec:
    opts = _WEIGHTS | options | (_LS if smoothing else frozenset()) | (_F_DIV if f_div else frozenset())
    return LossSpec("dpo_loss", frozenset(opts), ref, lengths, 0.1, smoothing, f_div)


LOSSES: dict[str, LossSpec] = {
    # DPO family: dpo_loss(loss_type=...)
    "sigmoid": _dpo(smoothing=_HALF_CLOSED, f_div=True),
    "robust": _dpo(smoothing=Interval(0.0, 0.5, True, False), f_div=True),
    "hinge": _dpo(f_div=True),
    "ipo": _dpo(lengths=True, f_div=True),
    "exo_pair": _dpo(smoothing=Interval(0.0, 0.5, False, True), f_div=True),
    "nca_pair": _dpo(),
    "bco_pair": _dpo(options=frozenset({"bco_delta"})),
    "sppo_hard": _dpo(),
    "aot": _dpo(smoothing=_HALF_CLOSED),
    "aot_unpaired": _dpo(smoothing=_HALF_CLOSED),
    "apo_zero": _dpo(),
    "apo_down": _dpo(),
    "discopop": _dpo(options=frozenset({"discopop_tau"}), f_div=True),
    # TRL admits sft with a non-default f_divergence_type (the score does not enter the loss).
    "sft": LossSpec("dpo_loss", _WEIGHTS | _F_DIV, needs_reference=False, needs_lengths=True),
    "sigmoid_norm": _dpo(lengths=True, f_div=True),
    # Other families: one function each.
    "simpo": LossSpec("simpo_loss", frozenset({"simpo_gamma", "cpo_alpha", "label_smoothing"}),
                      False, True, 2.0, _HALF_CLOSED),
    "cpo": LossSpec("cpo_loss", frozenset({"cpo_alpha", "label_smoothing"}), False, True, 0.1, _HALF_CLOSED),
    "orpo": LossSpec("orpo_loss", frozenset(), False, True, 0.1),
    "kto": LossSpec("kto_loss", frozenset({"desirable_weight", "undesirable_weight"}), True, False),
    "asft": LossSpec("asft_loss", frozenset(), False, True, 0.1),
    "poft": LossSpec("poft_loss", frozenset(), False, True, 1.0),
    "d2o": LossSpec("d2o_loss", frozenset({"alpha"}), True, False),
    "dckd": LossSpec("dckd_loss", frozenset({"sft_weight", "distill_weight", "chosen_weight", "rejected_weight",
                                             "renormalize"}), False, True),
    "adpa": LossSpec("adpa_loss", frozenset(), False, True),
}

DPO_LOSS_TYPES = tuple(name for name, spec in LOSSES.items() if spec.function == "dpo_loss")


def _concrete(x: Any) -> float | None:
    """``x`` as a Python float, or ``None`` when it is traced (no value to check at trace time)."""
    try:
        return float(x)
    except (jax.errors.ConcretizationTypeError, jax.errors.TracerArrayConversionError, TypeError):
        return None


def _as_loss_types(loss_type: str | Sequence[str]) -> tuple[str, ...]:
    return (loss_type,) if isinstance(loss_type, str) else tuple(loss_type)


def validate_loss_options(loss_type: str | Sequence[str], beta: Any, options: Mapping[str, Any] | None = None) -> None:
    """Rejects a loss configuration that cannot run, before anything is traced or compiled.

    Args:
      loss_type: a name of :data:`LOSSES`, or a list of DPO-family names (combined with
        ``loss_weights``, MPO-style).
      beta: the loss's β (λ for ORPO and ASFT); must be > 0.
      options: the loss's options by name, ``label_smoothing`` included (TRL names: see
        :class:`LossSpec`.options for each loss).

    Raises:
      ValueError: naming the problem and the fix, for an unknown loss name (listing the known
        ones), a list mixing in a non-DPO loss, an option no listed loss takes (naming the option
        and the loss, listing what it takes), a non-default ``f_divergence_type`` with a loss it
        does not apply to, ``beta <= 0``, ``label_smoothing`` outside a listed loss's valid range
        (e.g. ``robust`` needs [0, 0.5), ``exo_pair`` needs ε > 0), ``loss_weights`` whose
        length differs from the number of loss types, ``discopop_tau <= 0``, or an unknown
        ``f_divergence_type``. Values that are traced arrays are not checked. As in TRL, every DPO
        loss accepts ``f_divergence_type="reverse_kl"`` (the default); another value needs every
        listed loss to have an f-divergence form.
    """
    types = _as_loss_types(loss_type)
    options = dict(options or {})
    if not types:
        raise ValueError("loss_type is empty; give a loss name or a list of DPO loss names")
    for name in types:
        if name not in LOSSES:
            raise ValueError(f"unknown loss_type {name!r}; known loss types: {', '.join(LOSSES)}")
    if len(types) > 1:
        others = [n for n in types if LOSSES[n].function != "dpo_loss"]
        if others:
            raise ValueError(
                f"only DPO-family losses can be combined in a loss_type list; {others} are computed by "
                f"{sorted({LOSSES[n].function for n in others})}. DPO losses: {', '.join(DPO_LOSS_TYPES)}"
            )
    specs = [LOSSES[n] for n in types]
    label = repr(types[0]) if len(types) == 1 else repr(list(types))

    b = _concrete(beta)
    if b is not None and not b > 0:
        raise ValueError(f"beta must be > 0 for loss {label}, got {beta}")

    for key, value in options.items():
        if any(key in s.options for s in specs):
            continue
        if key == "label_smoothing" and _concrete(value) in (0.0, None):
            continue  # the default (no smoothing) is fine for every loss
        if key in _F_DIV and all(s.function == "dpo_loss" for s in specs):
            continue  # as TRL: any DPO loss takes the default reverse KL; other values are checked below
        takes = sorted(set().union(*(s.options for s in specs)))
        subject = f"loss {label} does not take" if len(types) == 1 else f"none of the losses {label} takes"
        verb = "it takes" if len(types) == 1 else "they take"
        raise ValueError(
            f"{subject} option {key!r}; {verb}: {', '.join(takes) if takes else 'no options'}"
        )

    if "label_smoothing" in options:
        eps = _concrete(options["label_smoothing"])
        for name, spec in zip(types, specs):
            if eps is None or spec.label_smoothing is None or eps in spec.label_smoothing:
                continue
            hint = (" (EXO needs ε > 0; its paper recommends 1e-3, the value TRL 0.x substituted silently "
                    "for 0)") if name == "exo_pair" else ""
            raise ValueError(
                f"label_smoothing={eps:g} is outside {spec.label_smoothing} for loss {name!r}{hint}"
            )

    if "loss_weights" in options and options["loss_weights"] is not None:
        n = len(options["loss_weights"])
        if n != len(types):
            raise ValueError(
                f"loss_weights has {n} entries for {len(types)} loss types {list(types)}; give one weight per loss type"
            )

    f_div = options.get("f_divergence_type", "reverse_kl")
    if f_div not in F_DIVERGENCE_TYPES:
        raise ValueError(f"unknown f_divergence_type {f_div!r}; known: {', '.join(F_DIVERGENCE_TYPES)}")
    if f_div != "reverse_kl":
        plain = [n for n, s in zip(types, specs) if "f_divergence_type" not in s.options]
        if plain:
            supported = [n for n, s in LOSSES.items() if "f_divergence_type" in s.options]
            raise ValueError(
                f"f_divergence_type={f_div!r} does not apply to loss {plain[0]!r}, which uses the log-ratio "
                f"directly; losses with an f-divergence score: {', '.join(supported)}"
            )
    if "f_alpha_divergence_coef" in options and f_div != "alpha_divergence":
        raise ValueError(
            "option 'f_alpha_divergence_coef' only applies with f_divergence_type='alpha_divergence', "
            f"got f_divergence_type={f_div!r}"
        )
    if "discopop_tau" in options:
        tau = _concrete(options["discopop_tau"])
        if tau is not None and not tau > 0:
            raise ValueError(f"discopop_tau must be > 0, got {tau:g}")
    for key in ("desirable_weight", "undesirable_weight", "cpo_alpha", "sft_weight", "distill_weight",
                "chosen_weight", "rejected_weight"):
        value = _concrete(options[key]) if key in options else None
        if value is not None and value < 0:
            raise ValueError(f"{key} must be >= 0 for loss {label}, got {value:g}")


# ---------------------------------------------------------------------------------------- numerics


def _float_dtype(*xs: Any) -> jnp.dtype:
    """The inputs' common float type, at least float32; integers give the default float type."""
    dtype = jnp.result_type(*[x for x in xs if x is not None])
    if not jnp.issubdtype(dtype, jnp.floating):
        return jax.dtypes.canonicalize_dtype(jnp.float64)
    return jnp.promote_types(dtype, jnp.float32)


def _cast(dtype, *xs):
    return tuple(None if x is None else jnp.asarray(x).astype(dtype) for x in xs)


def log1mexp(x: jax.Array) -> jax.Array:
    """``log(1 - exp(x))`` for ``x <= 0``, accurate everywhere (Mächler 2012).

    ``log(-expm1(x))`` near 0 (where ``1 - exp(x)`` cancels) and ``log1p(-exp(x))`` below
    ``-log 2`` (where ``exp(x)`` is tiny). Each branch gets an input clamped to its own region,
    so the unused branch neither overflows nor puts NaN into the gradient. ``x = 0`` gives
    ``-inf`` (a sequence of probability one has no complement).
    """
    near = x > -_LOG2
    x_near = jnp.where(near, x, -_LOG2)
    x_far = jnp.where(near, -_LOG2, x)
    return jnp.where(near, jnp.log(-jnp.expm1(x_near)), jnp.log1p(-jnp.exp(x_far)))


def _cdpo(z: jax.Array, eps: Any) -> jax.Array:
    """``-(1-ε) log σ(z) - ε log σ(-z)``: the Bradley–Terry NLL with labels flipped w.p. ε."""
    return -(1 - eps) * jax.nn.log_sigmoid(z) - eps * jax.nn.log_sigmoid(-z)


def _lengths(lengths: Any, dtype) -> jax.Array:
    """Completion token counts as floats, clamped at 1 (an empty completion divides by 1)."""
    return jnp.maximum(jnp.asarray(lengths).astype(dtype), 1)


def _batch_token_nll(chosen_logps: jax.Array, chosen_lengths: Any) -> jax.Array:
    """Scalar mean NLL over all chosen completion tokens of the batch: ``-Σ c_w / max(Σ |y_w|, 1)``.

    The lengths are the raw token counts (an empty completion adds no token), not the per-example
    clamped ones used to length-normalise.
    """
    tokens = jnp.sum(jnp.asarray(chosen_lengths).astype(chosen_logps.dtype))
    return -jnp.sum(chosen_logps) / jnp.maximum(tokens, 1)


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
        return _LOG2 + jax.nn.log_sigmoid(h)
    if f_divergence_type == "alpha_divergence":
        alpha = float(f_alpha_divergence_coef)
        if abs(alpha - 1.0) < 1e-6:
            return h
        clamp = 700.0 if jnp.finfo(h.dtype).bits >= 64 else 80.0
        return jnp.expm1(jnp.minimum((alpha - 1.0) * h, clamp)) / (alpha - 1.0)
    raise ValueError(f"unknown f_divergence_type {f_divergence_type!r}; known: {', '.join(F_DIVERGENCE_TYPES)}")


# ---------------------------------------------------------------------------------------- DPO family


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
    """Per-pair DPO-family losses, TRL ``DPOTrainer`` ``loss_type`` names (REFERENCE.md §1).

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

    ``aot``/``aot_unpaired`` sort over the batch, so their element ``i`` belongs to the ``i``-th
    smallest margin, not to pair ``i``; only their mean is meaningful (as in TRL).

    Args:
      policy_chosen_logps: ``[batch]`` ``c_w``, summed completion log-probs under the policy.
      policy_rejected_logps: ``[batch]`` ``c_l``.
      ref_chosen_logps: ``[batch]`` ``r_w`` under the reference model; no gradient flows into it
        (TRL runs the reference under ``no_grad``). May be ``None`` when only ``sft`` is asked for.
      ref_rejected_logps: ``[batch]`` ``r_l``; likewise.
      loss_type: one name of :data:`DPO_LOSS_TYPES`, or a list/tuple of names whose losses are
        summed with ``loss_weights`` (default 1.0 each), TRL's multi-loss (MPO) combination.
      beta: β (> 0; IPO's τ). A Python float or a traced scalar.
      label_smoothing: ε for ``sigmoid``, ``robust``, ``exo_pair``, ``aot``, ``aot_unpaired``.
      chosen_lengths: ``[batch]`` completion token counts of the chosen completions; needed by
        ``ipo`` and ``sigmoid_norm`` (each count clamped at 1) and ``sft`` (their sum, clamped at 1).
      rejected_lengths: ``[batch]`` likewise, needed by ``ipo`` and ``sigmoid_norm``.
      **options: ``DPOConfig`` names: ``f_divergence_type`` (``"reverse_kl"``),
        ``f_alpha_divergence_coef`` (0.5, TRL 1.16's default; static), ``discopop_tau`` (0.05),
        ``loss_weights`` (list, one per loss type), ``bco_delta`` (0.0; may be a traced scalar,
        the caller's running mean of the rewards ``β·h``).

    Returns:
      ``[batch]`` per-example losses in the inputs' float type (see module doc); the training
      loss is their mean.

    Raises:
      ValueError: at trace time, from :func:`validate_loss_options`, for a loss that is not in the
        DPO family, or for missing lengths / reference log-probs a loss needs.
    """
    types = _as_loss_types(loss_type)
    validate_loss_options(types, beta, {"label_smoothing": label_smoothing, **options})
    for name in types:
        spec = LOSSES[name]
        if spec.function != "dpo_loss":
            raise ValueError(
                f"loss_type {name!r} is not a dpo_loss loss; use {spec.function}. "
                f"dpo_loss takes: {', '.join(DPO_LOSS_TYPES)}"
            )
        if spec.needs_reference and (ref_chosen_logps is None or ref_rejected_logps is None):
            raise ValueError(f"loss {name!r} needs ref_chosen_logps and ref_rejected_logps")
        if name == "sft" and chosen_lengths is None:
            raise ValueError("loss 'sft' needs chosen_lengths (completion token counts) for its per-token mean")
        if spec.needs_lengths and name != "sft" and (chosen_lengths is None or rejected_lengths is None):
            raise ValueError(
                f"loss {name!r} needs chosen_lengths and rejected_lengths (completion token counts) "
                "to length-normalise the log-ratios"
            )

    dtype = _float_dtype(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps)
    pc, pr, rc, rr = _cast(dtype, policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps)
    rc, rr = (None if x is None else jax.lax.stop_gradient(x) for x in (rc, rr))
    eps = label_smoothing
    f_div = options.get("f_divergence_type", "reverse_kl")
    alpha = options.get("f_alpha_divergence_coef", 0.5)
    weights = options.get("loss_weights")
    weights = [1.0] * len(types) if weights is None else list(weights)

    if rc is not None and rr is not None:
        h_w, h_l = pc - rc, pr - rr
        s_w = f_divergence_score(h_w, f_div, alpha)
        s_l = f_divergence_score(h_l, f_div, alpha)
        delta = s_w - s_l
    if chosen_lengths is not None:
        len_w = _lengths(chosen_lengths, dtype)
    if rejected_lengths is not None:
        len_l = _lengths(rejected_lengths, dtype)

    total = jnp.zeros(pc.shape, dtype)
    for name, weight in zip(types, weights, strict=True):
        if name == "sigmoid":
            loss = _cdpo(beta * delta, eps)
        elif name == "robust":
            loss = (-(1 - eps) * jax.nn.log_sigmoid(beta * delta) + eps * jax.nn.log_sigmoid(-beta * delta)) / (
                1 - 2 * eps
            )
        elif name == "hinge":
            loss = jax.nn.relu(1 - beta * delta)
        elif name == "ipo":
            loss = (s_w / len_w - s_l / len_l - 1 / (2 * beta)) ** 2
        elif name == "exo_pair":
            z = beta * delta
            loss = jax.nn.sigmoid(z) * (jax.nn.log_sigmoid(z) - jnp.log1p(-eps)) + jax.nn.sigmoid(-z) * (
                jax.nn.log_sigmoid(-z) - jnp.log(eps)
            )
        elif name == "nca_pair":
            loss = (
                -jax.nn.log_sigmoid(beta * h_w)
                - 0.5 * jax.nn.log_sigmoid(-beta * h_w)
                - 0.5 * jax.nn.log_sigmoid(-beta * h_l)
            )
        elif name == "bco_pair":
            shift = jax.lax.stop_gradient(jnp.asarray(options.get("bco_delta", 0.0), dtype))
            loss = -jax.nn.log_sigmoid(beta * h_w - shift) - jax.nn.log_sigmoid(-(beta * h_l - shift))
        elif name == "sppo_hard":
            loss = (h_w - 1 / (2 * beta)) ** 2 + (h_l + 1 / (2 * beta)) ** 2
        elif name == "aot":
            margin = jnp.sort(pc - pr, axis=0) - jnp.sort(rc - rr, axis=0)
            loss = _cdpo(beta * margin, eps)
        elif name == "aot_unpaired":
            margin = jnp.sort(h_w, axis=0) - jnp.sort(h_l, axis=0)
            loss = _cdpo(beta * margin, eps)
        elif name == "apo_zero":
            loss = (1 - jax.nn.sigmoid(beta * h_w)) + jax.nn.sigmoid(beta * h_l)
        elif name == "apo_down":
            loss = jax.nn.sigmoid(beta * h_w) + (1 - jax.nn.sigmoid(beta * (h_w - h_l)))
        elif name == "discopop":
            tau = options.get("discopop_tau", 0.05)
            z = beta * delta
            # (1-m)·(-log σ(z)) + m·exp(-z) with m = σ(z/τ), the second term as one exp so that a
            # very negative z (m -> 0, exp(-z) -> inf) gives 0 rather than 0·inf = NaN.
            loss = jax.nn.sigmoid(-z / tau) * jax.nn.softplus(-z) + jnp.exp(jax.nn.log_sigmoid(z / tau) - z)
        elif name == "sft":
            loss = jnp.broadcast_to(_batch_token_nll(pc, chosen_lengths), pc.shape)
        elif name == "sigmoid_norm":
            loss = -jax.nn.log_sigmoid(beta * (s_w / len_w - s_l / len_l))
        else:  # unreachable: validate_loss_options knows every name
            raise AssertionError(name)
        total = total + weight * loss
    return total


def ld_logps(per_token_logps: Any, mask: Any, ld_alpha: float) -> jax.Array:
    """LD-DPO's length-desensitised sequence log-probs (TRL's ``ld_alpha``).

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
    dtype = _float_dtype(per_token_logps)
    logps, m = _cast(dtype, per_token_logps, mask)
    position = jnp.cumsum(m, axis=-1)  # 1-based index within the completion
    shared = jnp.min(jnp.sum(m, axis=-1), axis=-1)[:, None, None]
    head = jnp.sum(logps * m * (position <= shared), axis=-1)
    tail = jnp.sum(logps * m * (position > shared), axis=-1)
    return head + ld_alpha * tail


def wpo_weights(per_token_logps: Any, log_sum_sq_probs: Any, mask: Any) -> jax.Array:
    """WPO's per-pair weights (TRL's ``use_weighting``, eq. 2 of the WPO paper), no gradient.

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
    dtype = _float_dtype(per_token_logps, log_sum_sq_probs)
    logps, lss, m = _cast(dtype, per_token_logps, log_sum_sq_probs, mask)
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
    dtype = _float_dtype(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps)
    pc, pr, rc, rr = (
        jax.lax.stop_gradient(x)
        for x in _cast(dtype, policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps)
    )
    chosen, rejected = beta * (pc - rc), beta * (pr - rr)
    return {
        "rewards/chosen": jnp.mean(chosen),
        "rewards/rejected": jnp.mean(rejected),
        "rewards/accuracies": jnp.mean((chosen > rejected).astype(dtype)),
        "rewards/margins": jnp.mean(chosen - rejected),
        "logps/chosen": jnp.mean(pc),
        "logps/rejected": jnp.mean(pr),
    }


# ---------------------------------------------------------------------------------------- reference-free


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
    validate_loss_options("simpo", beta, {"simpo_gamma": simpo_gamma, "label_smoothing": label_smoothing,
                                          "cpo_alpha": cpo_alpha})
    dtype = _float_dtype(policy_chosen_logps, policy_rejected_logps)
    pc, pr = _cast(dtype, policy_chosen_logps, policy_rejected_logps)
    len_w, len_l = _lengths(chosen_lengths, dtype), _lengths(rejected_lengths, dtype)
    loss = _cdpo(beta * (pc / len_w - pr / len_l) - simpo_gamma, label_smoothing)
    return loss + cpo_alpha * _batch_token_nll(pc, chosen_lengths)


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
    validate_loss_options("cpo", beta, {"cpo_alpha": cpo_alpha, "label_smoothing": label_smoothing})
    dtype = _float_dtype(policy_chosen_logps, policy_rejected_logps)
    pc, pr = _cast(dtype, policy_chosen_logps, policy_rejected_logps)
    nll = _batch_token_nll(pc, chosen_lengths)
    return _cdpo(beta * (pc - pr), label_smoothing) + cpo_alpha * nll


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
    validate_loss_options("orpo", beta, {})
    dtype = _float_dtype(policy_chosen_logps, policy_rejected_logps)
    pc, pr = _cast(dtype, policy_chosen_logps, policy_rejected_logps)
    len_w, len_l = _lengths(chosen_lengths, dtype), _lengths(rejected_lengths, dtype)
    mean_w, mean_l = pc / len_w, pr / len_l
    log_odds = (mean_w - mean_l) - (log1mexp(mean_w) - log1mexp(mean_l))
    return _batch_token_nll(pc, chosen_lengths) - beta * jax.nn.log_sigmoid(log_odds)


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
    validate_loss_options("kto", beta, {"desirable_weight": desirable_weight, "undesirable_weight": undesirable_weight})
    dtype = _float_dtype(policy_logps, ref_logps, policy_kl_logps, ref_kl_logps)
    p, r, pk, rk = _cast(dtype, policy_logps, ref_logps, policy_kl_logps, ref_kl_logps)
    r = jax.lax.stop_gradient(r)
    if pk is None or rk is None:
        z = jnp.zeros((), dtype)
    else:
        z = jax.lax.stop_gradient(jnp.maximum(jnp.mean(pk - rk), 0))
    h = p - r
    desirable = desirable_weight * (1 - jax.nn.sigmoid(beta * (h - z)))
    undesirable = undesirable_weight * (1 - jax.nn.sigmoid(beta * (z - h)))
    return jnp.where(jnp.asarray(labels).astype(bool), desirable, undesirable)


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
    validate_loss_options("asft", beta, {})
    dtype = _float_dtype(policy_chosen_logps, policy_rejected_logps)
    pc, pr = _cast(dtype, policy_chosen_logps, policy_rejected_logps)
    mean_w = pc / _lengths(chosen_lengths, dtype)
    mean_l = pr / _lengths(rejected_lengths, dtype)
    return -mean_w - beta * (mean_w + log1mexp(mean_l))


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
    tokenizer's length). β = 1 is REFERENCE's formula; β scales the Bradley–Terry logit.

    Args:
      policy_logps: ``[batch]`` summed completion log-probs under the policy.
      lengths: ``[batch]`` completion token counts under the policy's tokenizer (clamped at 1).
      aligned_scores: ``[batch, M]`` the aligned models' ``r_j`` (no gradient).
      beta: β.

    Returns:
      ``[batch]`` per-example losses.
    """
    validate_loss_options("poft", beta, {})
    dtype = _float_dtype(policy_logps, aligned_scores)
    p, scores = _cast(dtype, policy_logps, aligned_scores)
    r_theta = p / _lengths(lengths, dtype)
    margin = jnp.mean(r_theta[:, None] - jax.lax.stop_gradient(scores), axis=-1)
    return -jax.nn.log_sigmoid(beta * margin)


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
    validate_loss_options("d2o", beta, {"alpha": alpha})
    dtype = _float_dtype(policy_sample_logps, ref_sample_logps, policy_rejected_logps, ref_rejected_logps)
    ps, rs, pl, rl = _cast(dtype, policy_sample_logps, ref_sample_logps, policy_rejected_logps, ref_rejected_logps)
    rs, rl = jax.lax.stop_gradient(rs), jax.lax.stop_gradient(rl)
    return -jax.nn.log_sigmoid(beta * jnp.mean(ps - rs, axis=-1) - alpha * (pl - rl))


# ---------------------------------------------------------------------------------------- token-level


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


def dckd_combine(chosen_kl: Any, chosen_mask: Any, rejected_kl: Any, rejected_mask: Any, chosen_token_logps: Any, *,
                 sft_weight: float = 1.0, distill_weight: float = 1.0, chosen_weight: float = 1.0,
                 rejected_weight: float = 1.0) -> jax.Array:
    """DCKD from per-position terms: ``w_sft · NLL(y_w) + w_dist · [w_c · KL_w + w_r · KL_l]``.

    ``chosen_kl``/``rejected_kl`` are :func:`forward_kl_terms` per position ``[batch, seq]``;
    each of NLL, ``KL_w`` and ``KL_l`` is a mean per completion token over the batch (see
    :func:`token_mean_contributions`). Returns ``[batch]`` contributions whose mean is the loss.
    """
    validate_loss_options("dckd", 1.0, {"sft_weight": sft_weight, "distill_weight": distill_weight,
                                        "chosen_weight": chosen_weight, "rejected_weight": rejected_weight})
    kl_w = token_mean_contributions(chosen_kl, chosen_mask)
    kl_l = token_mean_contributions(rejected_kl, rejected_mask)
    nll = token_mean_contributions(-chosen_token_logps, chosen_mask)
    return sft_weight * nll + distill_weight * (chosen_weight * kl_w + rejected_weight * kl_l)


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
    same per position, chunk by chunk (:mod:`jaxalign.tasks.teacher`), and combines with
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
        (REFERENCE gives no defaults; 1.0 each here).
      renormalize: static; see :func:`forward_kl_terms`.

    Returns:
      ``[batch]`` per-example contributions (their mean is the loss).
    """
    dtype = _float_dtype(student_chosen_topk_logps, teacher_chosen_topk_logps, student_rejected_topk_logps,
                         teacher_rejected_topk_logps, student_chosen_token_logps)
    sw, tw, mw, sl, tl, ml, tok = _cast(
        dtype, student_chosen_topk_logps, teacher_chosen_topk_logps, chosen_mask, student_rejected_topk_logps,
        teacher_rejected_topk_logps, rejected_mask, student_chosen_token_logps,
    )
    tw, tl = jax.lax.stop_gradient(tw), jax.lax.stop_gradient(tl)
    return dckd_combine(forward_kl_terms(sw, tw, renormalize), mw, forward_kl_terms(sl, tl, renormalize), ml, tok,
                        sft_weight=sft_weight, distill_weight=distill_weight, chosen_weight=chosen_weight,
                        rejected_weight=rejected_weight)


def expected_advantage(student_logps: jax.Array, advantages: jax.Array) -> jax.Array:
    """``[..., V] -> [...]``: ``Σ_v π_θ(v|s_t) A(s_t, v)``, gradient through ``π_θ`` only."""
    return jnp.sum(jnp.exp(student_logps) * jax.lax.stop_gradient(advantages), axis=-1)


def adpa_loss(student_logps: Any, advantages: Any, mask: Any) -> jax.Array:
    """ADPA: ``-(1/N_tok) Σ_t Σ_v π_θ(v|s_t) A(s_t, v)``, advantage-weighted student probabilities.

    ``A(s_t, v) = log π_teacher-dpo(v|s_t) - log π_teacher-ref(v|s_t)`` on student-generated
    responses (no gradient). ``N_tok`` counts the masked tokens of the whole batch; example
    ``b`` gets its share ``-B · Σ_t m_bt Σ_v π_θ A / N_tok``, so the mean of the returned vector
    is exactly the formula. Training computes :func:`expected_advantage` chunk by chunk
    (:mod:`jaxalign.tasks.teacher`) and takes the same token mean.

    Args:
      student_logps: ``[batch, seq, vocab]`` student log-probs (log-softmax over the vocabulary),
        or ``[batch, seq, k]`` the same gathered at a top-k subset of ids (the sum then runs over
        that subset; log-probs must not be renormalised over it).
      advantages: same shape as ``student_logps``.
      mask: ``[batch, seq]`` 1 on response tokens.

    Returns:
      ``[batch]`` per-example contributions (their mean is the loss).
    """
    dtype = _float_dtype(student_logps, advantages)
    logps, adv, m = _cast(dtype, student_logps, advantages, mask)
    return token_mean_contributions(-expected_advantage(logps, adv), m)
