"""jaxalign: JAX/Flax training for alignment objectives (contrastive embeddings, preference optimisation).

The public API for scripts and notebooks (``docs/python_api.md``)::

    import jaxalign as ja

    cfg = ja.TrainConfig(
        model=ja.ModelConfig(name="SmolLM2-135M-Instruct", max_length=128),
        data=ja.DataConfig(kind="preference", path="builtin:prefs-mini", batch_size=8),
        objective=ja.objectives.DPO(beta=0.1, loss_type=("sigmoid",)),
        steps=50,
    )
    result = ja.train(cfg)                      # losses, evaluations, throughput, final state
    cfg = ja.load_recipe("experiments/dpo_small.yaml", "objective.beta=0.3")   # or from a recipe

Configs: :class:`TrainConfig` and its sections, ``ja.objectives.<Objective>`` (one typed class
per objective). Running: :func:`train`. Models: :func:`load_encoder`, :func:`load_decoder`,
:class:`Embedder`, :func:`generate`. Evaluation: :func:`load_sts`, :func:`evaluate_sts`,
:func:`evaluate_preference`. Losses: :mod:`jaxalign.losses` (``ja.losses.dpo_loss``, ...).
Pictures: :func:`plot_runs`.

Names resolve on first use (PEP 562), so ``import jaxalign`` and the ``jaxalign`` command stay
fast until a model, a loss or the trainer is actually needed.
"""

from __future__ import annotations

import importlib
import logging

__version__ = "0.1.0"


def _not_torch_advisory(record: logging.LogRecord) -> bool:
    """Drops transformers' "PyTorch was not found" advisory, and nothing else.

    transformers logs it when it is imported without torch. jaxalign uses transformers for
    tokenizers and configs only and never needs torch, so on a machine without torch (the
    quickstart's) it would be the first line of every command, and a false alarm.
    """
    return not record.getMessage().startswith("PyTorch was not found")


# On the logger before any jaxalign module imports transformers (the advisory is logged at its
# import). A filter rather than TRANSFORMERS_NO_ADVISORY_WARNINGS or a lower verbosity: every
# other transformers warning still reaches the user, and no environment leaks to subprocesses.
logging.getLogger("transformers").addFilter(_not_torch_advisory)


_EXPORTS = {
    # configuration
    "TrainConfig": "jaxalign.config.run", "ModelConfig": "jaxalign.config.run",
    "DataConfig": "jaxalign.config.run", "OptimConfig": "jaxalign.config.run",
    "EvalConfig": "jaxalign.config.run", "LogConfig": "jaxalign.config.run",
    "CheckpointConfig": "jaxalign.config.run", "LoraConfig": "jaxalign.config.run",
    "MeshConfig": "jaxalign.sharding.mesh", "ConfigError": "jaxalign.config",
    # running
    "train": "jaxalign.training.trainer",
    # models and inference
    "load_encoder": "jaxalign.models.registry", "load_decoder": "jaxalign.models.decoders",
    "Embedder": "jaxalign.inference.embed", "generate": "jaxalign.inference.generate",
    "load_reward_model": "jaxalign.models.reward", "load_scorer": "jaxalign.inference.scorers",
    "run_best_of_n": "jaxalign.inference.best_of_n_sampling",
    # evaluation
    "load_sts": "jaxalign.data.sts", "evaluate_sts": "jaxalign.eval.sts",
    "evaluate_preference": "jaxalign.eval.preference",
    "evaluate_scorer": "jaxalign.eval.reward",
    # pictures
    "plot_runs": "jaxalign.viz", "plot_benchmarks": "jaxalign.viz",
}
_MODULES = ("losses", "objectives")

__all__ = sorted([*_EXPORTS, *_MODULES, "load_recipe"])


def load_recipe(path=None, *overrides: str):
    """A :class:`TrainConfig` from a YAML recipe (or none) and ``key=value`` overrides, validated
    as ``jaxalign train`` validates them (:class:`ConfigError` names the field and the fix)."""
    from jaxalign.config import load_recipe as load
    from jaxalign.config.run import TrainConfig

    return load(TrainConfig, path, overrides)


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
    elif name in _MODULES:
        value = importlib.import_module(f"jaxalign.{name}")
    else:
        raise AttributeError(f"module 'jaxalign' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__():
    return __all__
