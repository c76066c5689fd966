"""The reward-model objective: scalar rewards of each completion column and the Bradley–Terry loss.

A batch holds the preference task's ``[B, 2, T]`` (chosen, rejected) token columns and, when the
data has a ``margin`` column, ``margin [B]``. The decoder runs once over the ``2B`` rows; the
head reads each row's last real token (:func:`jaxalign.models.reward.sequence_rewards`); the
loss is :func:`jaxalign.losses.bradley_terry_loss` (TRL's ``RewardTrainer``).
"""

from __future__ import annotations

import jax

from jaxalign import losses
from jaxalign.config import objectives
from jaxalign.models.decoders import Decoder
from jaxalign.models.reward import sequence_rewards


def column_rewards(decoder: Decoder, backbone: dict, head: dict, batch: dict, pad_id: int) -> jax.Array:
    """``[B, C]`` rewards of the ``[B, C, T]`` token columns of ``batch``."""
    ids = batch["input_ids"]
    b, c, t = ids.shape
    rewards = sequence_rewards(decoder, backbone, head, ids.reshape(b * c, t),
                               batch["attention_mask"].reshape(b * c, t), pad_id)
    return rewards.reshape(b, c)


def reward_loss(cfg: objectives.Reward, decoder: Decoder, backbone: dict, head: dict, batch: dict,
                pad_id: int) -> tuple[jax.Array, dict]:
    """``(mean loss, metrics)`` of one batch: TRL ``RewardTrainer``'s loss and logged metrics."""
    rewards = column_rewards(decoder, backbone, head, batch, pad_id)
    chosen, rejected = rewards[:, 0], rewards[:, 1]
    per_pair = losses.bradley_terry_loss.unchecked(chosen, rejected, batch.get("margin"), **cfg.loss_options())
    return per_pair.mean(), losses.reward_metrics(chosen, rejected)
