"""The preference-loss registry: what each loss (under TRL's name) takes, and the option checks.

:data:`LOSSES` maps every loss name (TRL ``loss_type`` names for the DPO family, the objective
name for the others) to a :class:`LossSpec`: the options it takes, whether it reads reference
log-probs or completion lengths, its default β and valid label-smoothing range.
:func:`validate_loss_options` rejects a configuration that cannot run, naming the option and the
fix. Training runs it once, when the objective's config is built; the public loss functions
(decorated with :func:`checked`) run it on each direct call, on Python values before any array
work, and ``fn.unchecked`` is the bare function the training objective calls.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax

F_DIVERGENCE_TYPES = ("reverse_kl", "forward_kl", "js_divergence", "alpha_divergence")


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
    "reward": LossSpec("bradley_terry_loss", frozenset({"center_rewards_coefficient"}), False, False, 1.0),
}

DPO_LOSS_TYPES = tuple(name for name, spec in LOSSES.items() if spec.function == "dpo_loss")


def _concrete(x: Any) -> float | None:
    """``x`` as a Python float, or ``None`` when it is traced (no value to check at trace time)."""
    try:
        return float(x)
    except (jax.errors.ConcretizationTypeError, jax.errors.TracerArrayConversionError, TypeError):
        return None


def as_loss_types(loss_type: str | Sequence[str]) -> tuple[str, ...]:
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
    types = as_loss_types(loss_type)
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
                "chosen_weight", "rejected_weight", "center_rewards_coefficient"):
        value = _concrete(options[key]) if key in options else None
        if value is not None and value < 0:
            raise ValueError(f"{key} must be >= 0 for loss {label}, got {value:g}")


def check_dpo_inputs(types: Sequence[str], *, reference: bool, chosen_lengths: bool, rejected_lengths: bool) -> None:
    """Rejects DPO-family losses whose inputs are missing: another family's loss, reference
    log-probs a loss reads, or the completion lengths it normalises by."""
    for name in types:
        spec = LOSSES[name]
        if spec.function != "dpo_loss":
            raise ValueError(
                f"loss_type {name!r} is not a dpo_loss loss; use {spec.function}. "
                f"dpo_loss takes: {', '.join(DPO_LOSS_TYPES)}"
            )
        if spec.needs_reference and not reference:
            raise ValueError(f"loss {name!r} needs ref_chosen_logps and ref_rejected_logps")
        if name == "sft" and not chosen_lengths:
            raise ValueError("loss 'sft' needs chosen_lengths (completion token counts) for its per-token mean")
        if spec.needs_lengths and name != "sft" and not (chosen_lengths and rejected_lengths):
            raise ValueError(
                f"loss {name!r} needs chosen_lengths and rejected_lengths (completion token counts) "
                "to length-normalise the log-ratios"
            )


def checked(loss_type: str | None = None) -> Callable[[Callable], Callable]:
    """Makes a loss function check its options on every direct call.

    ``loss_type`` names the registry entry whose options the function's keyword-only arguments
    are (``beta`` is checked as β); ``None`` is ``dpo_loss``, whose ``loss_type`` argument names
    the entries and whose array inputs are checked with :func:`check_dpo_inputs`. The checks run
    on the call's Python values (a traced value is not checked) before the function; the function
    itself stays reachable, unchecked, as ``.unchecked``.
    """

    def decorate(fn: Callable) -> Callable:
        signature = inspect.signature(fn)
        keywords = [p.name for p in signature.parameters.values() if p.kind is p.KEYWORD_ONLY and p.name != "beta"]

        @functools.wraps(fn)
        def public(*args, **kwargs):
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            arguments = dict(bound.arguments)
            if loss_type is not None:
                validate_loss_options(loss_type, arguments.get("beta", 1.0), {k: arguments[k] for k in keywords})
            else:
                types = as_loss_types(arguments["loss_type"])
                validate_loss_options(types, arguments["beta"],
                                      {"label_smoothing": arguments["label_smoothing"], **arguments["options"]})
                check_dpo_inputs(
                    types,
                    reference=arguments["ref_chosen_logps"] is not None and arguments["ref_rejected_logps"] is not None,
                    chosen_lengths=arguments["chosen_lengths"] is not None,
                    rejected_lengths=arguments["rejected_lengths"] is not None,
                )
            return fn(*args, **kwargs)

        public.unchecked = fn
        return public

    return decorate
