"""Objectives as plug-ins of the training engine: what to embed or score, which head, which loss.

The typed options of each objective (``ja.objectives.DPO(beta=0.1)``, ``SimCSE``, ...) are in
:mod:`jaxalign.config.objectives` and exported here.
"""

from jaxalign.config.objectives import (
    ADPA,
    ASFT,
    CPO,
    D2O,
    DCKD,
    DPO,
    DSE,
    KTO,
    OBJECTIVES,
    ORPO,
    AnglE,
    CoSENT,
    DefSent,
    Matryoshka,
    ObjectiveConfig,
    PoFT,
    Reward,
    SimCSE,
    SimPO,
    TwoDMSE,
    WhitenedCSE,
    WhiteningConfig,
)

__all__ = ["ADPA", "ASFT", "CPO", "D2O", "DCKD", "DPO", "DSE", "KTO", "OBJECTIVES", "ORPO", "AnglE", "CoSENT",
           "DefSent", "Matryoshka", "ObjectiveConfig", "PoFT", "Reward", "SimCSE", "SimPO", "TwoDMSE", "WhitenedCSE", "WhiteningConfig"]
