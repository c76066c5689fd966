"""Each training objective's options, as its own typed dataclass.

``TrainConfig.objective`` is one of these, chosen by its ``name`` (``objective.name=dpo``); a
recipe or override sets only the options of that objective, and an option of another objective
is refused naming the objectives it belongs to. Each class checks its own options once, when
the configuration is built, so nothing is checked again inside the compiled step. Every field is
documented in its class's ``Attributes:`` section, which ``jaxalign train --help`` prints.

Preference objectives take TRL's option names and defaults (``DPOConfig``, ``CPOConfig``,
``ORPOConfig``, ``KTOConfig``) where TRL has the loss.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar, Literal

from jaxalign.config.loader import ConfigError
from jaxalign.losses.registry import DPO_LOSS_TYPES, LOSSES, validate_loss_options


def _check(cond: bool, message: str) -> None:
    if not cond:
        raise ConfigError(message)


@dataclasses.dataclass(frozen=True)
class WhiteningConfig:
    """WhitenedCSE's shuffled group whitening of the embeddings before InfoNCE.

    Attributes:
      groups: channel groups whitened separately (must divide the embedding size).
      method: zca (eigendecomposition), cholesky, or newton_schulz (iterative, matmuls only).
      eps: shrinkage of the covariance towards the identity.
      stop_gradient: detach the whitening matrix, as the released WhitenedCSE code does.
      num_pos: positives per anchor, each with its own channel shuffle.
      statistics: global: over the global batch (identical on any mesh, like the single-device run);
        per_shard: per data-parallel shard (like per-device BatchNorm, no collectives).
      ns_iters: Newton-Schulz iterations.
    """

    groups: int = 32
    method: Literal["zca", "cholesky", "newton_schulz"] = "zca"
    eps: float = 0.0
    stop_gradient: bool = True
    num_pos: int = 2
    statistics: Literal["global", "per_shard"] = "global"
    ns_iters: int = 5

    def __post_init__(self):
        _check(self.groups >= 1, f"objective.whitening.groups={self.groups}: must be >= 1")
        _check(self.num_pos >= 1, f"objective.whitening.num_pos={self.num_pos}: must be >= 1")
        _check(self.ns_iters >= 1, f"objective.whitening.ns_iters={self.ns_iters}: must be >= 1")


@dataclasses.dataclass(frozen=True)
class ObjectiveBase:
    """What every objective has: its name, which selects the class."""

    name: str = ""
    family: ClassVar[str] = ""  # "contrastive" (sentence encoders) or "preference" (causal LMs)
    data_kinds: ClassVar[tuple[str, ...]] = ()  # the data.kind values it trains on


# ---------------------------------------------------------------------------------------- contrastive


@dataclasses.dataclass(frozen=True)
class ContrastiveConfig(ObjectiveBase):
    """What every contrastive objective (sentence encoders) has: GradCache's chunk."""

    family: ClassVar[str] = "contrastive"
    data_kinds: ClassVar[tuple[str, ...]] = ("sentences", "nli", "pairs")
    cache_chunk: int | None = None

    def __post_init__(self):
        _check(self.cache_chunk is None or self.cache_chunk >= 1,
               f"objective.cache_chunk={self.cache_chunk}: must be >= 1 or null")


@dataclasses.dataclass(frozen=True)
class InfoNCEConfig(ContrastiveConfig):
    """What the InfoNCE objectives share: the temperature and the direction."""

    temperature: float = 0.05
    symmetric: bool = False

    def __post_init__(self):
        super().__post_init__()
        _check(self.temperature > 0, f"objective.temperature={self.temperature}: must be > 0")


@dataclasses.dataclass(frozen=True)
class SimCSE(InfoNCEConfig):
    """SimCSE (Gao et al. 2021): InfoNCE with in-batch (+ hard) negatives: two dropout views of
    each sentence (``sentences``: unsupervised), entailment positives and contradiction hard
    negatives (``nli``: supervised), or multiple-negatives ranking on ``pairs``.

    Attributes:
      temperature: InfoNCE temperature.
      symmetric: also the reverse direction (positives against the anchors).
      hard_negative_weight: log-weight on the hard negatives (supervised SimCSE).
      head: mlp: SimCSE's training-only MLP over the pooled embedding; none: no head.
      cache_chunk: GradCache: embed in chunks of this many examples (same loss and gradients,
        activations of one chunk at a time); null: the whole batch at once.
    """

    name: Literal["simcse"] = "simcse"
    hard_negative_weight: float = 0.0
    head: Literal["none", "mlp"] = "none"


@dataclasses.dataclass(frozen=True)
class WhitenedCSE(InfoNCEConfig):
    """WhitenedCSE (Zhuo et al. 2023): shuffled group whitening of ``whitening.num_pos + 1``
    dropout views, InfoNCE between the anchor and each positive, through an MLP head.

    Attributes:
      temperature: InfoNCE temperature.
      symmetric: also the reverse direction.
      whitening: the group whitening (objective.whitening.groups, ...).
      cache_chunk: GradCache chunk (examples); null: off.
    """

    name: Literal["whitenedcse"] = "whitenedcse"
    data_kinds: ClassVar[tuple[str, ...]] = ("sentences",)
    whitening: WhiteningConfig = WhiteningConfig()


@dataclasses.dataclass(frozen=True)
class Matryoshka(InfoNCEConfig):
    """Matryoshka representation learning (Kusupati et al. 2022): InfoNCE summed over embedding
    prefixes.

    Attributes:
      temperature: InfoNCE temperature.
      symmetric: also the reverse direction.
      hard_negative_weight: log-weight on hard negatives (nli data).
      head: mlp or none, as SimCSE's.
      matryoshka_dims: the embedding prefixes trained (each <= the embedding size).
      cache_chunk: GradCache chunk (examples); null: off.
    """

    name: Literal["matryoshka"] = "matryoshka"
    hard_negative_weight: float = 0.0
    head: Literal["none", "mlp"] = "none"
    matryoshka_dims: tuple[int, ...] = (384, 256, 128, 64, 32)

    def __post_init__(self):
        super().__post_init__()
        _check(len(self.matryoshka_dims) >= 1 and min(self.matryoshka_dims) >= 1,
               f"objective.matryoshka_dims={list(self.matryoshka_dims)}: give one or more sizes >= 1")


@dataclasses.dataclass(frozen=True)
class TwoDMSE(Matryoshka):
    """2D Matryoshka sentence embeddings (Li et al. 2024): the last layer at full size plus a
    layer and a Matryoshka dim sampled per step, with a KL from the full model to the sampled layer.

    Attributes:
      temperature: InfoNCE temperature.
      symmetric: also the reverse direction.
      hard_negative_weight: log-weight on hard negatives (nli data).
      head: mlp or none.
      matryoshka_dims: the embedding prefixes sampled from.
      kl_temperature: temperature of the KL from the last layer to the sampled one.
      cache_chunk: GradCache chunk (examples); null: off.
    """

    name: Literal["2dmse"] = "2dmse"
    kl_temperature: float = 0.3

    def __post_init__(self):
        super().__post_init__()
        _check(self.kl_temperature > 0, f"objective.kl_temperature={self.kl_temperature}: must be > 0")


@dataclasses.dataclass(frozen=True)
class CoSENT(ContrastiveConfig):
    """CoSENT (Su 2022): a ranking loss over the cosine similarities of scored pairs.

    Attributes:
      scale: the scale on cosine differences (20 in the paper).
      cache_chunk: GradCache chunk (examples); null: off.
    """

    name: Literal["cosent"] = "cosent"
    data_kinds: ClassVar[tuple[str, ...]] = ("pairs",)
    scale: float = 20.0

    def __post_init__(self):
        super().__post_init__()
        _check(self.scale > 0, f"objective.scale={self.scale}: must be > 0")


@dataclasses.dataclass(frozen=True)
class AnglE(CoSENT):
    """AnglE (Li and Li 2024): CoSENT's ranking loss over angle differences in complex space.

    Attributes:
      scale: the scale on angle differences.
      cache_chunk: GradCache chunk (examples); null: off.
    """

    name: Literal["angle"] = "angle"


@dataclasses.dataclass(frozen=True)
class DSE(ContrastiveConfig):
    """Distilled sentence embedding (Barkan et al. 2020): a pair head regressing gold scores and
    a teacher encoder's cosine similarity of each pair (computed once before training).

    Attributes:
      alpha: weight of the gold-score loss against the teacher's.
      teacher: the teacher encoder (packaged name or checkpoint); null: the initial model.
      cache_chunk: GradCache chunk (examples); null: off.
    """

    name: Literal["dse"] = "dse"
    data_kinds: ClassVar[tuple[str, ...]] = ("pairs",)
    alpha: float = 0.5
    teacher: str | None = None

    def __post_init__(self):
        super().__post_init__()
        _check(0 <= self.alpha <= 1, f"objective.alpha={self.alpha}: must be in [0, 1]")


@dataclasses.dataclass(frozen=True)
class DefSent(ObjectiveBase):
    """DefSent+ (Liu 2024, arXiv 2405.16153; github.com/ryuliuxiaodong/DefSent-Plus): each
    definition sentence classified among all dictionary entries by a frozen, bias-free head
    whose rows are the entries' embeddings from the encoder (cross-entropy, no temperature),
    optionally over several rounds of progressive training (``rounds``).

    Attributes:
      entry_pooling: an entry's embedding from all its definitions: ac: the mean raw [CLS]
        state; amp: the mean of their masked token means.
      sentence_pooling: what the head reads of a definition, through the checkpoint's pooler
        (dense + tanh): cls: the [CLS] state (BERT's pooler output); mean: the masked token
        mean; null: cls with entry_pooling=ac, mean with amp (a pairing of jaxalign's: the
        official code sets the two apart).
      isotropic: FastICA over the standardised entry embeddings (unit-variance sources, x100),
        the official code's ICA transform; needs at least as many entries as embedding channels.
      rounds: progressive training: each round retrains model.name with entry embeddings from
        the previous round's trained encoder (the official readme goes up to 3).
      entry_model: the encoder that computes the first round's entry embeddings (cut to model.num_layers
        too); null: model.name.
      chunk: entries per softmax chunk: [batch, chunk] logits at a time (a multiple of the
        mesh's fsdp x tensor size, which the entry matrix is split over).
    """

    name: Literal["defsent"] = "defsent"
    family: ClassVar[str] = "contrastive"
    data_kinds: ClassVar[tuple[str, ...]] = ("definitions",)
    entry_pooling: Literal["ac", "amp"] = "ac"
    sentence_pooling: Literal["cls", "mean"] | None = None
    isotropic: bool = False
    rounds: int = 1
    entry_model: str | None = None
    chunk: int = 4096

    def __post_init__(self):
        _check(self.rounds >= 1, f"objective.rounds={self.rounds}: must be >= 1")
        _check(self.chunk >= 1, f"objective.chunk={self.chunk}: must be >= 1")

    @property
    def classifier_pooling(self) -> str:
        """``sentence_pooling``, resolved."""
        return self.sentence_pooling or {"ac": "cls", "amp": "mean"}[self.entry_pooling]


# ---------------------------------------------------------------------------------------- preference


@dataclasses.dataclass(frozen=True)
class PreferenceConfig(ObjectiveBase):
    """What every preference objective (causal LMs) has: the LM-head chunk; it checks its loss
    options against :data:`jaxalign.losses.LOSSES` once, when built."""

    family: ClassVar[str] = "preference"
    data_kinds: ClassVar[tuple[str, ...]] = ("preference",)
    logps_chunk: int = 64
    logits_memory_mb: float = 2048.0

    def __post_init__(self):
        _check(self.logps_chunk >= 1, f"objective.logps_chunk={self.logps_chunk}: must be >= 1")
        _check(self.logits_memory_mb >= 0, f"objective.logits_memory_mb={self.logits_memory_mb}: must be >= 0 "
                                           "(0: always chunked)")
        _check(self.reward_beta > 0, f"objective.beta={self.reward_beta}: must be > 0")
        names = self.loss_names
        try:
            validate_loss_options(names if len(names) > 1 else names[0], self.reward_beta, self.loss_options())
        except ValueError as e:
            raise ConfigError(f"objective: {e}") from None

    @property
    def loss_names(self) -> tuple[str, ...]:
        """The registry entries (:data:`jaxalign.losses.LOSSES`) this objective computes."""
        return (self.name,)

    @property
    def needs_reference(self) -> bool:
        return any(LOSSES[n].needs_reference for n in self.loss_names)

    @property
    def reward_beta(self) -> float:
        """β of the implicit rewards ``β (log π - log π_ref)`` in logged and evaluated metrics."""
        return getattr(self, "beta", 0.1)

    def loss_options(self) -> dict:
        """The options the loss function takes, by its keyword names (β apart)."""
        return {}


@dataclasses.dataclass(frozen=True)
class WithReferenceConfig(PreferenceConfig):
    """Preference objectives that read a reference model's log-probs."""

    reference: Literal["model", "precomputed"] = "model"
    reference_model: str | None = None


_DPO_OPTIONS = ("loss_weights", "label_smoothing", "f_divergence_type", "f_alpha_divergence_coef", "discopop_tau",
                "bco_delta")  # DPO's fields passed to dpo_loss by name


@dataclasses.dataclass(frozen=True)
class DPO(WithReferenceConfig):
    """The DPO family (Rafailov et al. 2023) under TRL's ``DPOConfig`` names, one loss or several
    summed (``loss_type: [sigmoid, sft]`` with ``loss_weights``: TRL's MPO combination).

    Attributes:
      beta: β, the scale of the log-ratios (IPO's τ).
      loss_type: one or more of sigmoid, robust, hinge, ipo, exo_pair, nca_pair, bco_pair,
        sppo_hard, aot, aot_unpaired, apo_zero, apo_down, discopop, sft, sigmoid_norm.
      loss_weights: one weight per loss_type; null: 1 each.
      label_smoothing: cDPO / robust / exo_pair / aot: the probability that a label is flipped.
      f_divergence_type: reverse_kl (DPO), forward_kl, js_divergence or alpha_divergence (f-DPO).
      f_alpha_divergence_coef: α of the alpha divergence (only with alpha_divergence).
      discopop_tau: DiscoPOP's temperature τ.
      bco_delta: BCO's reward shift δ (TRL 1.x: 0).
      reference: model: the reference's log-probs computed in the step (no gradient);
        precomputed: once before training over the whole data set and cached to disk (TRL's
        precompute_ref_log_probs).
      reference_model: the reference model; null: the initial policy (model.name).
      use_weighting: WPO: each pair's loss times exp(mean log p - log sum p^2) of both completions.
      ld_alpha: LD-DPO: weight of the longer completion's tokens past the shorter's length; null: off.
      sync_ref_model: TR-DPO: ref <- a * policy + (1 - a) * ref every ref_model_sync_steps updates.
      ref_model_mixup_alpha: TR-DPO's a.
      ref_model_sync_steps: TR-DPO's period, in optimiser updates.
      logps_chunk: sequence positions per LM-head chunk: [rows, chunk, vocab] logits at a time.
      logits_memory_mb: the policy's and reference's log-probs use the whole [rows, length, vocab]
        float32 logits, computed once (no recomputation in the backward pass), when they, their
        softmax and their gradient fit in this many MiB (jaxalign.ops.logprobs.logits_chunk);
        chunks of logps_chunk positions, rematerialised, otherwise. 0: always chunked.
    """

    name: Literal["dpo"] = "dpo"
    beta: float = 0.1
    loss_type: tuple[str, ...] = ("sigmoid",)
    loss_weights: tuple[float, ...] | None = None
    label_smoothing: float = 0.0
    f_divergence_type: str = "reverse_kl"
    f_alpha_divergence_coef: float = 0.5
    discopop_tau: float = 0.05
    bco_delta: float = 0.0
    use_weighting: bool = False
    ld_alpha: float | None = None
    sync_ref_model: bool = False
    ref_model_mixup_alpha: float = 0.6
    ref_model_sync_steps: int = 512

    def __post_init__(self):
        others = [n for n in self.loss_type if n in LOSSES and LOSSES[n].function != "dpo_loss"]
        _check(not others, f"objective.loss_type={list(self.loss_type)}: only DPO-family losses "
                           f"({', '.join(DPO_LOSS_TYPES)}); SimPO, CPO, ORPO, KTO, ASFT, D2O, PoFT, DCKD and ADPA "
                           "are objective.name values of their own")
        super().__post_init__()
        _check(self.ld_alpha is None or 0 <= self.ld_alpha <= 1, f"objective.ld_alpha={self.ld_alpha}: must be in [0, 1]")
        _check(0 < self.ref_model_mixup_alpha <= 1,
               f"objective.ref_model_mixup_alpha={self.ref_model_mixup_alpha}: must be in (0, 1]")
        _check(self.ref_model_sync_steps >= 1, f"objective.ref_model_sync_steps={self.ref_model_sync_steps}: must be >= 1")
        _check(not (self.use_weighting and {"aot", "aot_unpaired"} & set(self.loss_type)),
               "objective.use_weighting: WPO weights are not defined for the aot losses (as in TRL)")
        if self.sync_ref_model:
            why = ("objective.reference=precomputed: a synced reference changes" if self.reference == "precomputed"
                   else f"objective.loss_type={self.loss_names}: it reads no reference" if not self.needs_reference
                   else None)
            _check(why is None, f"objective.sync_ref_model (TR-DPO) with {why}; drop one of the two")

    @property
    def loss_names(self) -> tuple[str, ...]:
        return tuple(self.loss_type)

    def loss_options(self) -> dict:
        """The options set away from their defaults (a loss refuses an option it does not take)."""
        fields = self.__dataclass_fields__
        return {k: getattr(self, k) for k in _DPO_OPTIONS if getattr(self, k) != fields[k].default}


@dataclasses.dataclass(frozen=True)
class SimPO(PreferenceConfig):
    """SimPO (Meng et al. 2024; TRL's CPO trainer with loss_type=simpo): length-averaged
    log-probs with a target margin, no reference model; cpo_alpha > 0 adds the chosen NLL (CPO-SimPO).

    Attributes:
      beta: β (2.0 in the paper's recipes).
      simpo_gamma: the target reward margin γ.
      label_smoothing: ε in [0, 0.5].
      cpo_alpha: weight of the chosen NLL; 0: pure SimPO.
      logps_chunk: sequence positions per LM-head chunk.
      logits_memory_mb: whole logits, not chunked, when they fit this many MiB (as DPO's); 0: always chunked.
    """

    name: Literal["simpo"] = "simpo"
    beta: float = 2.0
    simpo_gamma: float = 0.5
    label_smoothing: float = 0.0
    cpo_alpha: float = 0.0

    def loss_options(self) -> dict:
        return {"simpo_gamma": self.simpo_gamma, "label_smoothing": self.label_smoothing, "cpo_alpha": self.cpo_alpha}


@dataclasses.dataclass(frozen=True)
class CPO(PreferenceConfig):
    """CPO (Xu et al. 2024): ``-log σ(β(c_w - c_l)) + cpo_alpha · NLL(chosen)`` on summed
    log-probs, no reference model (TRL's CPO trainer, loss_type=sigmoid).

    Attributes:
      beta: β.
      cpo_alpha: weight of the NLL (behaviour-cloning) term.
      label_smoothing: ε in [0, 0.5].
      logps_chunk: sequence positions per LM-head chunk.
      logits_memory_mb: whole logits, not chunked, when they fit this many MiB (as DPO's); 0: always chunked.
    """

    name: Literal["cpo"] = "cpo"
    beta: float = 0.1
    cpo_alpha: float = 1.0
    label_smoothing: float = 0.0

    def loss_options(self) -> dict:
        return {"cpo_alpha": self.cpo_alpha, "label_smoothing": self.label_smoothing}


@dataclasses.dataclass(frozen=True)
class ORPO(PreferenceConfig):
    """ORPO (Hong et al. 2024): ``NLL(chosen) - λ log σ(log odds ratio)``, no reference model.

    Attributes:
      beta: λ, the weight of the odds-ratio term (TRL's ORPOConfig.beta).
      logps_chunk: sequence positions per LM-head chunk.
      logits_memory_mb: whole logits, not chunked, when they fit this many MiB (as DPO's); 0: always chunked.
    """

    name: Literal["orpo"] = "orpo"
    beta: float = 0.1


@dataclasses.dataclass(frozen=True)
class ASFT(PreferenceConfig):
    """ASFT (Wang et al. 2024): absolute likelihoods of both completions, no reference model.

    Attributes:
      beta: λ, the weight of the alignment term (the paper gives none; 0.1 is ORPO's).
      logps_chunk: sequence positions per LM-head chunk.
      logits_memory_mb: whole logits, not chunked, when they fit this many MiB (as DPO's); 0: always chunked.
    """

    name: Literal["asft"] = "asft"
    beta: float = 0.1


@dataclasses.dataclass(frozen=True)
class KTO(WithReferenceConfig):
    """KTO (Ethayarajh et al. 2024; TRL's KTOTrainer): desirable and undesirable completions,
    unpaired, against a KL estimate from mismatched pairs of the batch.

    Attributes:
      beta: β.
      desirable_weight: w_d, the weight of desirable examples.
      undesirable_weight: w_u, the weight of undesirable examples.
      reference: model only: the KL completions are paired within each batch.
      reference_model: the reference model; null: the initial policy.
      logps_chunk: sequence positions per LM-head chunk.
      logits_memory_mb: whole logits, not chunked, when they fit this many MiB (as DPO's); 0: always chunked.
    """

    name: Literal["kto"] = "kto"
    data_kinds: ClassVar[tuple[str, ...]] = ("unpaired",)
    beta: float = 0.1
    desirable_weight: float = 1.0
    undesirable_weight: float = 1.0

    def __post_init__(self):
        super().__post_init__()
        _check(self.reference == "model", "objective.reference=precomputed: KTO's KL completions are paired within "
                                          "each batch; use objective.reference=model")

    def loss_options(self) -> dict:
        return {"desirable_weight": self.desirable_weight, "undesirable_weight": self.undesirable_weight}


@dataclasses.dataclass(frozen=True)
class D2O(WithReferenceConfig):
    """D²O (Duan et al. 2024, "Negating Negatives"): dispreferred completions only, against K
    self-generated samples per prompt (``jaxalign generate --data ... --num-samples K``).

    Attributes:
      beta: β, on the samples' term.
      alpha: α, on the dispreferred term.
      reference: model or precomputed, as DPO's.
      reference_model: the reference model; null: the initial policy.
      logps_chunk: sequence positions per LM-head chunk.
      logits_memory_mb: whole logits, not chunked, when they fit this many MiB (as DPO's); 0: always chunked.
    """

    name: Literal["d2o"] = "d2o"
    data_kinds: ClassVar[tuple[str, ...]] = ("negatives",)
    beta: float = 0.1
    alpha: float = 0.1

    def loss_options(self) -> dict:
        return {"alpha": self.alpha}


@dataclasses.dataclass(frozen=True)
class PoFT(PreferenceConfig):
    """PoFT (Preference-oriented fine-tuning): ``-log σ(β mean_j (r_θ - r_j))`` on (prompt,
    target) pairs, with ``r_j`` each target's length-normalised log-likelihood under M fixed
    aligned models (their own tokenizers; scored once and cached).

    Attributes:
      beta: β, the scale of the Bradley-Terry logit (1 in the paper).
      aligned_models: the M aligned models scoring each target.
      logps_chunk: sequence positions per LM-head chunk.
      logits_memory_mb: whole logits, not chunked, when they fit this many MiB (as DPO's); 0: always chunked.
    """

    name: Literal["poft"] = "poft"
    data_kinds: ClassVar[tuple[str, ...]] = ("sft",)
    beta: float = 1.0
    aligned_models: tuple[str, ...] = ()

    def __post_init__(self):
        super().__post_init__()
        _check(bool(self.aligned_models),
               "objective.name=poft needs objective.aligned_models: the aligned models scoring each target")


@dataclasses.dataclass(frozen=True)
class DCKD(PreferenceConfig):
    """DCKD (dual-constrained knowledge distillation): SFT on the chosen completion plus forward
    KL to an aligned teacher LM on the chosen and rejected tokens.

    Attributes:
      teacher: the aligned teacher LM (same vocabulary as the policy).
      teacher_top_k: KL over the teacher's k most likely tokens; null: the whole vocabulary.
      renormalize: with teacher_top_k, renormalise both distributions over the k ids (the exact
        KL of the restricted distributions) instead of full-vocabulary log-probs at those ids.
      sft_weight: w_sft, the weight of the chosen NLL.
      distill_weight: w_dist, the weight of the KL terms.
      chosen_weight: w_c, the chosen completion's KL.
      rejected_weight: w_r, the rejected completion's KL.
      logps_chunk: sequence positions per LM-head chunk.
      logits_memory_mb: unused: the teacher terms are always chunked (logps_chunk).
    """

    name: Literal["dckd"] = "dckd"
    teacher: str | None = None
    teacher_top_k: int | None = None
    renormalize: bool = False
    sft_weight: float = 1.0
    distill_weight: float = 1.0
    chosen_weight: float = 1.0
    rejected_weight: float = 1.0

    def __post_init__(self):
        super().__post_init__()
        _check(bool(self.teacher), "objective.name=dckd needs objective.teacher: a causal LM sharing the policy's "
                                   "vocabulary")
        _check(self.teacher_top_k is None or self.teacher_top_k >= 1,
               f"objective.teacher_top_k={self.teacher_top_k}: must be >= 1 or null (the whole vocabulary)")

    def loss_options(self) -> dict:
        return {"sft_weight": self.sft_weight, "distill_weight": self.distill_weight,
                "chosen_weight": self.chosen_weight, "rejected_weight": self.rejected_weight}


@dataclasses.dataclass(frozen=True)
class ADPA(PreferenceConfig):
    """ADPA (advantage-guided distillation): the student's own responses weighted token by token
    by the advantage ``log π_teacher - log π_teacher_reference`` of an aligned teacher.

    Attributes:
      teacher: the aligned (DPO-trained) teacher LM (same vocabulary).
      teacher_reference: the teacher's reference model (same vocabulary).
      logps_chunk: sequence positions per LM-head chunk.
      logits_memory_mb: unused: the teacher terms are always chunked (logps_chunk).
    """

    name: Literal["adpa"] = "adpa"
    data_kinds: ClassVar[tuple[str, ...]] = ("sft",)
    teacher: str | None = None
    teacher_reference: str | None = None

    def __post_init__(self):
        super().__post_init__()
        for field in ("teacher", "teacher_reference"):
            _check(bool(getattr(self, field)), f"objective.name=adpa needs objective.{field}: a causal LM sharing the "
                                               "policy's vocabulary")


@dataclasses.dataclass(frozen=True)
class Reward(PreferenceConfig):
    """A reward model (Ouyang et al. 2022; TRL's ``RewardTrainer``): the decoder with a linear
    scalar head on the last real token of prompt + completion, trained with the Bradley–Terry
    loss ``-log σ(r_w - r_l - margin)``, margin being the data's per-pair ``margin`` column
    (0 without one), plus ``center_rewards_coefficient · mean((r_w + r_l)²)``. The head is always
    trained, under full fine-tuning or LoRA; the export is a ``LlamaForSequenceClassification``.

    Attributes:
      center_rewards_coefficient: weight of the reward-centring term (TRL ``RewardConfig``,
        Eisenstein et al. 2023); 0: off (TRL's null).
      logps_chunk: unused: a reward model runs no LM head.
      logits_memory_mb: unused.
    """

    name: Literal["reward"] = "reward"
    center_rewards_coefficient: float = 0.0

    def loss_options(self) -> dict:
        return {"center_rewards_coefficient": self.center_rewards_coefficient}


OBJECTIVES: dict[str, type[ObjectiveBase]] = {
    cls.__dataclass_fields__["name"].default: cls
    for cls in (SimCSE, WhitenedCSE, CoSENT, AnglE, Matryoshka, TwoDMSE, DSE, DefSent,
                DPO, SimPO, CPO, ORPO, KTO, ASFT, D2O, PoFT, DCKD, ADPA, Reward)
}
CONTRASTIVE_OBJECTIVES = tuple(n for n, c in OBJECTIVES.items() if c.family == "contrastive")
PREFERENCE_OBJECTIVES = tuple(n for n, c in OBJECTIVES.items() if c.family == "preference")

ObjectiveConfig = (SimCSE | WhitenedCSE | CoSENT | AnglE | Matryoshka | TwoDMSE | DSE | DefSent
                   | DPO | SimPO | CPO | ORPO | KTO | ASFT | D2O | PoFT | DCKD | ADPA | Reward)
