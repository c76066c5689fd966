"""Preference objectives as plug-ins of the generic training step: what each computes from a batch.

A batch holds ``[B, C, T]`` token columns (chosen and rejected; KTO's completion and its KL
completion; D²O's rejected completion and its K samples; one target for PoFT and ADPA),
plus, when precomputed, the reference's log-probs ``ref_logps [B, C]`` and PoFT's
``aligned_scores [B, M]``. :meth:`PreferenceObjective.loss` scores every column under the
policy (and the reference, no gradient) with :func:`~jaxalign.objectives.scoring.sequence_logps`
and hands the ``[B, C]`` log-probs to the objective's loss from :mod:`jaxalign.losses`; DCKD and
ADPA compare the policy with frozen teacher LMs at every completion position instead
(:mod:`jaxalign.ops.teacher`). The losses are called unchecked: the objective's config checked
its options once, when it was built.

Parameters as the loss sees them: trainable ``{"policy": ...}`` or ``{"lora": ...}`` (a reward
model's scalar head beside them, ``"score"``: :mod:`jaxalign.objectives.reward`); frozen
``{"reference": ...}``, ``{"base": ...}`` (LoRA: the base is also the reference), the teachers
``{"teacher", "teacher_reference"}``, or nothing; tracked (TR-DPO) ``{"reference": ...}``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp

from jaxalign import losses
from jaxalign.config import objectives
from jaxalign.models import lora as lora_lib
from jaxalign.models.decoders import Decoder
from jaxalign.objectives.reward import reward_loss
from jaxalign.objectives.scoring import TOKEN_AXES, sequence_logps
from jaxalign.ops.teacher import advantage_expectation, distill_kl

BATCH_AXES = {**TOKEN_AXES, "label": ("batch",), "ref_logps": ("batch", None), "aligned_scores": ("batch", None),
              "margin": ("batch",)}
TEACHERS = ("teacher", "teacher_reference")  # objective config fields naming frozen teacher LMs


def _pair_metrics(cfg, chosen, rejected, ref) -> dict:
    zero = jnp.zeros_like(chosen)
    rc, rr = (ref[:, 0], ref[:, 1]) if ref is not None else (zero, zero)
    return losses.preference_metrics(chosen, rejected, rc, rr, cfg.reward_beta)


def _dpo(cfg: objectives.DPO, logps, lengths, ref, batch):
    chosen, rejected = logps[:, 0], logps[:, 1]
    options = {k: v for k, v in cfg.loss_options().items() if k != "label_smoothing"}
    rc, rr = (ref[:, 0], ref[:, 1]) if ref is not None else (jnp.zeros_like(chosen), jnp.zeros_like(rejected))
    loss = losses.dpo_loss.unchecked(chosen, rejected, rc, rr, loss_type=cfg.loss_type, beta=cfg.beta,
                                     label_smoothing=cfg.label_smoothing, chosen_lengths=lengths[:, 0],
                                     rejected_lengths=lengths[:, 1], **options)
    return loss, _pair_metrics(cfg, chosen, rejected, ref)


def _reference_free(fn: Callable) -> Callable:
    """SimPO, ORPO, ASFT: ``fn(c_w, c_l, |y_w|, |y_l|, beta=, **options)``."""

    def loss(cfg, logps, lengths, ref, batch):
        chosen, rejected = logps[:, 0], logps[:, 1]
        out = fn.unchecked(chosen, rejected, lengths[:, 0], lengths[:, 1], beta=cfg.beta, **cfg.loss_options())
        return out, _pair_metrics(cfg, chosen, rejected, ref)

    return loss


def _cpo(cfg: objectives.CPO, logps, lengths, ref, batch):
    chosen, rejected = logps[:, 0], logps[:, 1]
    out = losses.cpo_loss.unchecked(chosen, rejected, lengths[:, 0], beta=cfg.beta, **cfg.loss_options())
    return out, _pair_metrics(cfg, chosen, rejected, ref)


def _kto(cfg: objectives.KTO, logps, lengths, ref, batch):
    loss = losses.kto_loss.unchecked(logps[:, 0], ref[:, 0], batch["label"], logps[:, 1], ref[:, 1], beta=cfg.beta,
                                     **cfg.loss_options())
    return loss, {"logps/completion": logps[:, 0].mean()}


def _d2o(cfg: objectives.D2O, logps, lengths, ref, batch):
    loss = losses.d2o_loss.unchecked(logps[:, 1:], ref[:, 1:], logps[:, 0], ref[:, 0], beta=cfg.beta, alpha=cfg.alpha)
    return loss, {"logps/rejected": logps[:, 0].mean(), "logps/samples": logps[:, 1:].mean()}


def _poft(cfg: objectives.PoFT, logps, lengths, ref, batch):
    scores = batch["aligned_scores"]
    loss = losses.poft_loss.unchecked(logps[:, 0], lengths[:, 0], scores, beta=cfg.beta)
    mean_logp = logps[:, 0] / jnp.maximum(lengths[:, 0], 1)
    return loss, {"logps/completion": logps[:, 0].mean(), "poft/margin": (mean_logp - scores.mean(-1)).mean()}


# objective.name -> (config, [B, C] log-probs, [B, C] lengths, [B, C] reference log-probs or None, batch)
#   -> ([B] per-example losses, metrics)
SEQUENCE_LOSSES: dict[str, Callable] = {
    "dpo": _dpo, "simpo": _reference_free(losses.simpo_loss), "orpo": _reference_free(losses.orpo_loss),
    "asft": _reference_free(losses.asft_loss), "cpo": _cpo, "kto": _kto, "d2o": _d2o, "poft": _poft,
}


@dataclasses.dataclass(frozen=True)
class PreferenceObjective:
    """A preference objective over a decoder, with the parameter layout the task built.

    Attributes:
      cfg: the objective's options (:mod:`jaxalign.config.objectives`).
      decoder: the policy's model.
      teachers: DCKD's ``teacher``, ADPA's ``teacher`` and ``teacher_reference`` (frozen).
      lora_scale: ``alpha / rank`` when the policy is LoRA adapters over a frozen base, else None.
      sync_period: TR-DPO: micro-steps between reference syncs (``ref_model_sync_steps`` ×
        ``grad_accum``); 0 when the reference is not tracked.
      completion_window: the data's ``max_completion_length`` (no completion is longer), so the
        LM head runs only on that many positions per row; None: on every position.
    """

    cfg: objectives.PreferenceConfig
    decoder: Decoder
    teachers: dict[str, Decoder] = dataclasses.field(default_factory=dict)
    lora_scale: float | None = None
    sync_period: int = 0
    completion_window: int | None = None

    def policy_params(self, params: dict, frozen: dict) -> dict:
        if "lora" in params:
            return lora_lib.apply_lora(frozen["base"], params["lora"], self.lora_scale)
        return params["policy"]

    def reference_params(self, params: dict, frozen: dict) -> dict:
        """The reference: the LoRA base, a frozen (or tracked) copy, or (before training) the policy."""
        if "base" in frozen:
            return frozen["base"]
        return frozen.get("reference", params.get("policy"))

    def logps(self, params: dict, batch: dict, **kw):
        return sequence_logps(self.decoder, params, batch, chunk=self.cfg.logps_chunk,
                              ld_alpha=getattr(self.cfg, "ld_alpha", None),
                              logits_memory_mb=self.cfg.logits_memory_mb, window=self.completion_window, **kw)

    def loss(self, params: dict, batch: dict, rng: jax.Array, frozen: dict) -> tuple[jax.Array, dict]:
        """``(params, batch, rng, frozen) -> (loss, metrics)``, the engine's loss signature."""
        if self.cfg.name == "reward":  # a scalar head on the policy's last hidden state, no LM head
            return reward_loss(self.cfg, self.decoder, self.policy_params(params, frozen), params["score"], batch,
                               int(self.decoder.tokenizer.pad_token_id))
        if self.teachers:
            return self.teacher_loss(params, batch, frozen)
        wpo = getattr(self.cfg, "use_weighting", False)
        logps, lengths, *weights = self.logps(self.policy_params(params, frozen), batch, weights=wpo)
        if "ref_logps" in batch:
            ref = batch["ref_logps"]
        elif self.cfg.needs_reference:
            ref = jax.lax.stop_gradient(self.logps(self.reference_params(params, frozen), batch)[0])
        else:
            ref = None
        per_example, metrics = SEQUENCE_LOSSES[self.cfg.name](self.cfg, logps, lengths, ref, batch)
        if wpo:
            per_example = per_example * weights[0]
            metrics["wpo/weights"] = weights[0].mean()
        return per_example.mean(), metrics

    def teacher_loss(self, params: dict, batch: dict, frozen: dict) -> tuple[jax.Array, dict]:
        """DCKD or ADPA: the student against frozen teacher LMs at every completion position."""
        cfg = self.cfg
        ids = batch["input_ids"]
        b, c, t = ids.shape
        flat_ids, flat_mask = ids.reshape(b * c, t), batch["attention_mask"].reshape(b * c, t)
        mask = batch["loss_mask"][..., 1:].astype(jnp.float32)  # [B, C, T-1]: position t scores token t+1

        def states(decoder: Decoder, p: dict) -> tuple[jax.Array, jax.Array]:
            """Hidden states at the predicting positions [B*C, T-1, H] and the LM head."""
            return decoder.hidden(p, flat_ids, flat_mask)[:, :-1], decoder.unembed_kernel(p)

        h, w = states(self.decoder, self.policy_params(params, frozen))
        teachers = {k: jax.tree.map(jax.lax.stop_gradient, states(d, frozen[k])) for k, d in self.teachers.items()}
        unflat = lambda x: x.reshape(b, c, t - 1)
        token_mean = lambda x, m: losses.token_mean_contributions(x, m).mean()
        if cfg.name == "dckd":
            tok, kl = distill_kl(h, w, *teachers["teacher"], flat_ids[:, 1:], top_k=cfg.teacher_top_k,
                                 renormalize=cfg.renormalize, chunk=cfg.logps_chunk)
            tok, kl = unflat(tok), unflat(kl)
            loss = losses.dckd_combine.unchecked(kl[:, 0], mask[:, 0], kl[:, 1], mask[:, 1], tok[:, 0],
                                                 **cfg.loss_options())
            return loss.mean(), {"nll/chosen": token_mean(-tok[:, 0], mask[:, 0]),
                                 "distill/kl_chosen": token_mean(kl[:, 0], mask[:, 0]),
                                 "distill/kl_rejected": token_mean(kl[:, 1], mask[:, 1])}
        expected = unflat(advantage_expectation(h, w, *teachers["teacher"], *teachers["teacher_reference"],
                                                chunk=cfg.logps_chunk))[:, 0]
        per_example = losses.token_mean_contributions(-expected, mask[:, 0])
        return per_example.mean(), {"adpa/advantage": -per_example.mean()}

    def update_tracked(self, tracked: dict, params: dict, steps_done: jax.Array) -> dict:
        """TR-DPO: ``ref <- α · policy + (1 - α) · ref`` after every ``sync_period`` micro-steps
        (TRL's ``SyncRefModelCallback``)."""
        alpha = self.cfg.ref_model_mixup_alpha
        mix = lambda ref: jax.tree.map(lambda r, p: (alpha * p + (1 - alpha) * r).astype(r.dtype), ref,
                                       params["policy"])
        return {"reference": jax.lax.cond(steps_done % self.sync_period == 0, mix, lambda ref: ref,
                                          tracked["reference"])}
