"""Optimiser construction: AdamW with a decay mask, warmup + decay schedule, clipping, accumulation."""

from __future__ import annotations

import jax
import optax

from jaxalign.config.run import OptimConfig


def learning_rate_schedule(cfg: OptimConfig, total_steps: int) -> optax.Schedule:
    """Linear warmup to ``cfg.lr`` then constant, linear decay to 0, or cosine decay to 0.

    ``total_steps`` counts optimiser updates (micro-steps / grad_accum).
    """
    warmup = min(cfg.warmup_steps, total_steps)
    decay_steps = max(total_steps - warmup, 1)
    if cfg.schedule == "constant":
        decay = optax.constant_schedule(cfg.lr)
    elif cfg.schedule == "linear":
        decay = optax.linear_schedule(cfg.lr, 0.0, decay_steps)
    else:
        decay = optax.cosine_decay_schedule(cfg.lr, decay_steps)
    if warmup == 0:
        return decay
    return optax.join_schedules([optax.linear_schedule(0.0, cfg.lr, warmup), decay], [warmup])


def decay_mask(params) -> object:
    """True for matrices (kernels, embeddings), False for biases and norm scales: the usual
    BERT/Transformer convention of not decaying 1-D parameters."""
    return jax.tree.map(lambda p: p.ndim >= 2, params)


def build_optimizer(cfg: OptimConfig, total_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """Returns the optimiser and its learning-rate schedule (for logging)."""
    updates = max(total_steps // cfg.grad_accum, 1)
    schedule = learning_rate_schedule(cfg, updates)
    chain = []
    if cfg.clip_norm is not None:
        chain.append(optax.clip_by_global_norm(cfg.clip_norm))
    chain.append(optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay, mask=decay_mask))
    opt = optax.chain(*chain)
    if cfg.grad_accum > 1:
        opt = optax.MultiSteps(opt, every_k_schedule=cfg.grad_accum)
    return opt, schedule
