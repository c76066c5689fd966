"""Reward-model training loss: the Bradley–Terry NLL of TRL's ``RewardTrainer``.

A pure function of the scalar rewards ``r_w, r_l`` ``[batch]`` a reward model gives the chosen
and rejected completion of each pair (Ouyang et al. 2022, "Training language models to follow
instructions with human feedback", eq. 1; TRL ``RewardTrainer.compute_loss``). Options are
keyword arguments checked on a direct call (:func:`jaxalign.losses.registry.checked`); training
calls ``fn.unchecked``.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from jaxalign.losses.numerics import cast, float_dtype
from jaxalign.losses.registry import checked


@checked("reward")
def bradley_terry_loss(
    chosen_rewards: Any,
    rejected_rewards: Any,
    margin: Any = None,
    *,
    center_rewards_coefficient: float = 0.0,
) -> jax.Array:
    """``-log σ(r_w - r_l - m) + c · (r_w + r_l)²`` per pair.

    As TRL's ``RewardTrainer``: the optional per-pair ``margin`` column ``m`` (Llama 2's margin
    loss, Touvron et al. 2023, §3.2.2) asks the chosen reward to exceed the rejected one by
    ``m``; ``center_rewards_coefficient`` ``c`` (TRL ``RewardConfig``; Eisenstein et al. 2023,
    "Helping or Herding?") pulls the rewards towards zero mean. The batch mean of this function
    is TRL's loss exactly: TRL adds ``c · mean((r_w + r_l)²)`` to the mean NLL.

    Args:
      chosen_rewards: ``[batch]`` rewards ``r_w`` of the chosen completions.
      rejected_rewards: ``[batch]`` ``r_l``.
      margin: ``[batch]`` required margins ``m``; ``None``: 0.
      center_rewards_coefficient: ``c >= 0``; 0: off (TRL's ``None``).

    Returns:
      ``[batch]`` per-pair losses.
    """
    dtype = float_dtype(chosen_rewards, rejected_rewards, margin)
    rw, rl, m = cast(dtype, chosen_rewards, rejected_rewards, margin)
    z = rw - rl if m is None else rw - rl - m
    return -jax.nn.log_sigmoid(z) + center_rewards_coefficient * jnp.square(rw + rl)


def reward_metrics(chosen_rewards: jax.Array, rejected_rewards: jax.Array) -> dict[str, jax.Array]:
    """TRL ``RewardTrainer``'s logged metrics as batch means (no gradient): ``accuracy``
    ``mean(r_w > r_l)`` (ties count as wrong), ``margin`` ``mean(r_w - r_l)``, and the mean
    chosen and rejected rewards."""
    rw, rl = jax.lax.stop_gradient(chosen_rewards), jax.lax.stop_gradient(rejected_rewards)
    return {"accuracy": jnp.mean((rw > rl).astype(jnp.float32)), "margin": jnp.mean(rw - rl),
            "rewards/chosen": jnp.mean(rw), "rewards/rejected": jnp.mean(rl)}
