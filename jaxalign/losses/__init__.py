"""Pure loss functions over embeddings and log-probabilities, one per loss, in optax's manner.

Contrastive (sentence embeddings): :mod:`~jaxalign.losses.contrastive` (InfoNCE, CoSENT, AnglE),
:mod:`~jaxalign.losses.matryoshka` (Matryoshka, 2D Matryoshka), :mod:`~jaxalign.losses.whitening`
(shuffled group whitening, BERT-whitening), :mod:`~jaxalign.losses.distill` (DSE).
Preference (causal LMs), by family: :mod:`~jaxalign.losses.dpo` (the DPO family under TRL's
``loss_type`` names, :func:`dpo_loss` their weighted sum), :mod:`~jaxalign.losses.reference_free`
(SimPO, CPO, ORPO, ASFT, PoFT), :mod:`~jaxalign.losses.unpaired` (KTO, D²O),
:mod:`~jaxalign.losses.reward` (reward models' Bradley–Terry loss),
:mod:`~jaxalign.losses.token_level` (DCKD, ADPA); :mod:`~jaxalign.losses.registry` names every
preference loss and checks its options.

    from jaxalign.losses import dpo_loss
    per_pair = dpo_loss(pc, pr, rc, rr, loss_type="ipo", beta=0.5, chosen_lengths=lw, rejected_lengths=ll)
"""

from jaxalign.losses.contrastive import angle, cosent, info_nce
from jaxalign.losses.distill import dse_loss
from jaxalign.losses.dpo import (
    DPO_LOSSES,
    dpo_loss,
    f_divergence_score,
    ld_logps,
    preference_metrics,
    wpo_weights,
)
from jaxalign.losses.matryoshka import matryoshka_2d_loss, matryoshka_loss
from jaxalign.losses.numerics import log1mexp
from jaxalign.losses.reference_free import asft_loss, cpo_loss, orpo_loss, poft_loss, simpo_loss
from jaxalign.losses.registry import DPO_LOSS_TYPES, F_DIVERGENCE_TYPES, LOSSES, LossSpec, validate_loss_options
from jaxalign.losses.reward import bradley_terry_loss, reward_metrics
from jaxalign.losses.token_level import (
    adpa_loss,
    dckd_combine,
    dckd_loss,
    expected_advantage,
    forward_kl_terms,
    token_mean_contributions,
)
from jaxalign.losses.unpaired import d2o_loss, kto_loss
from jaxalign.losses.whitening import bert_whitening, multi_view_sgw, shuffled_group_whiten

__all__ = [
    "DPO_LOSSES", "DPO_LOSS_TYPES", "F_DIVERGENCE_TYPES", "LOSSES", "LossSpec", "adpa_loss", "angle", "asft_loss",
    "bert_whitening", "bradley_terry_loss", "cosent", "cpo_loss", "d2o_loss", "dckd_combine", "dckd_loss", "dpo_loss", "dse_loss",
    "expected_advantage", "f_divergence_score", "forward_kl_terms", "info_nce", "kto_loss", "ld_logps", "log1mexp",
    "matryoshka_2d_loss", "matryoshka_loss", "multi_view_sgw", "orpo_loss", "poft_loss", "preference_metrics",
    "reward_metrics", "shuffled_group_whiten", "simpo_loss", "token_mean_contributions", "validate_loss_options", "wpo_weights",
]
