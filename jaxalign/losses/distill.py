"""Distilled Sentence Embedding (DSE): a bi-encoder student learns a cross-encoder teacher's pair logits.

The student embeds both sentences separately (``u``, ``v``); a small pair head
``FC(ReLU(FC(features)))``, owned by the engine, maps :func:`dse_pair_features` to pair logits
``ŷ``, and :func:`dse_loss` mixes the task loss with the squared distance to the teacher's logits.
Matching logits (not probabilities) keeps the teacher's full margin information.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def dse_pair_features(u: jax.Array, v: jax.Array) -> jax.Array:
    """``[batch, dim], [batch, dim] -> [batch, 4 · dim]``: ``[u; v; u ⊙ v; |u - v|]``.

    Computed in float32 (float64 under x64), whatever the input dtype.
    """
    dtype = jnp.promote_types(jnp.result_type(u, v), jnp.float32)
    u, v = u.astype(dtype), v.astype(dtype)
    return jnp.concatenate([u, v, u * v, jnp.abs(u - v)], axis=-1)


def dse_loss(
    student_logits: jax.Array,
    teacher_logits: jax.Array,
    task_loss: jax.Array,
    *,
    alpha: float = 0.5,
) -> jax.Array:
    """``(1 - α) · task_loss + α · mean((ŷ - teacher)²)``.

    Args:
      student_logits: ``[batch]`` or ``[batch, classes]``, the pair head's logits ``ŷ``.
      teacher_logits: the teacher's logits, same shape; gets no gradient.
      task_loss: scalar loss on the gold labels (e.g. cross-entropy of ``student_logits``).
      alpha: weight of the distillation term.

    Returns:
      Scalar loss in float32 (float64 under x64); the mean runs over every element.
    """
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"student {student_logits.shape} and teacher {teacher_logits.shape} logits differ in shape")
    dtype = jnp.promote_types(student_logits.dtype, jnp.float32)
    diff = student_logits.astype(dtype) - jax.lax.stop_gradient(teacher_logits).astype(dtype)
    return (1 - alpha) * task_loss + alpha * jnp.mean(diff * diff)
