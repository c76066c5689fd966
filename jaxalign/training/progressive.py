"""Progressive rounds: one objective trained several times over, each round's frozen targets
computed by the previous round's trained encoder.

DefSent+'s progressive separate training (Liu 2024, arXiv 2405.16153; the official readme,
github.com/ryuliuxiaodong/DefSent-Plus): compute the entry embeddings with the starting
encoder, train; recompute them with the trained encoder and train again *from the original
checkpoint*; up to three times. Round ``r`` is an ordinary run of ``cfg`` (``model.name``
unchanged) whose ``objective.entry_model`` is round ``r-1``'s exported encoder, with its own
``round<r>`` subdirectory of ``log.dir`` and ``checkpoint.dir`` (so an interrupted run
resumes in the round it was in); the last round exports to ``export``.
"""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Callable
from pathlib import Path

import jax

from jaxalign.config.loader import ConfigError
from jaxalign.config.run import TrainConfig


def round_config(cfg: TrainConfig, r: int, entry_model: str | None, export: str | None) -> TrainConfig:
    """Round ``r`` (1-based) of ``cfg``: entries from ``entry_model``, exported to ``export``."""
    sub = lambda d: d and str(Path(d) / f"round{r}")
    return dataclasses.replace(
        cfg, objective=dataclasses.replace(cfg.objective, entry_model=entry_model), export=export,
        log=dataclasses.replace(cfg.log, dir=sub(cfg.log.dir)),
        checkpoint=dataclasses.replace(cfg.checkpoint, dir=sub(cfg.checkpoint.dir)))


def train_rounds(cfg: TrainConfig, train_once: Callable[..., dict], **kwargs) -> dict:
    """Runs ``train_once(round_cfg, **kwargs)`` for each of ``cfg.objective.rounds`` rounds and
    returns the last round's summary, with ``rounds``: every round's losses, evaluations and
    steps. The encoders between rounds go to ``<log.dir or checkpoint.dir>/round<r>-encoder``
    (every process must read them: a shared directory), else to a temporary directory of a
    single-process run. A round stopped early (a preemption signal) ends the sequence there."""
    work = cfg.log.dir or cfg.checkpoint.dir
    if work is None and jax.process_count() > 1:
        raise ConfigError(f"objective.rounds={cfg.objective.rounds} on {jax.process_count()} processes: set log.dir or "
                          "checkpoint.dir to a directory every process reads, for the encoders between rounds")
    with tempfile.TemporaryDirectory(prefix="jaxalign-rounds-") as scratch:
        between = lambda r: str(Path(work or scratch) / f"round{r}-encoder")
        entry_model, done = cfg.objective.entry_model, []
        for r in range(1, cfg.objective.rounds + 1):
            export = cfg.export if r == cfg.objective.rounds else between(r)
            summary = train_once(round_config(cfg, r, entry_model, export), **kwargs)
            done.append({"round": r, **{k: summary[k] for k in ("losses", "eval", "steps")}})
            if summary.get("stopped_by"):
                break
            entry_model = export
    return {**summary, "rounds": done}
