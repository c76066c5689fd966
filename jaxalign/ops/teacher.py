"""Token-level teacher terms through two or three LM heads, chunk by chunk.

DCKD and ADPA compare the student's next-token distribution with an aligned teacher's at
every completion position: sums over the vocabulary of functions of several ``[rows, T, V]``
logits tensors. As for the policy's own log-probs (:mod:`jaxalign.ops.logprobs`), each chunk
of positions makes its logits, reduces them to one value per position and drops them; the
teachers' logits carry no gradient. The formulas themselves are
:func:`jaxalign.losses.token_level.forward_kl_terms` and :func:`~jaxalign.losses.token_level.expected_advantage`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxalign.losses.token_level import expected_advantage, forward_kl_terms
from jaxalign.ops.logprobs import lm_logits, map_chunks


def _log_softmax(hidden: jax.Array, unembed: jax.Array) -> jax.Array:
    return jax.nn.log_softmax(lm_logits(hidden, unembed), axis=-1)


def distill_kl(hidden: jax.Array, unembed: jax.Array, teacher_hidden: jax.Array, teacher_unembed: jax.Array,
               targets: jax.Array, *, top_k: int | None = None, renormalize: bool = False,
               chunk: int = 64) -> tuple[jax.Array, jax.Array]:
    """The student's log-prob of each target and the forward KL to the teacher, per position.

    hidden: [N, T, H] student hidden states, unembed [H, V]; teacher_hidden: [N, T, H'] and
    teacher_unembed [H', V] (same vocabulary); targets: [N, T] the token each position predicts.
    ``top_k``: the KL runs over the teacher's k most likely ids (null: the whole vocabulary).
    Returns ``(token_logps [N, T], kl [N, T])``, float32.
    """

    def one(h, th, t):
        student = _log_softmax(h, unembed)
        teacher = jax.lax.stop_gradient(_log_softmax(th, teacher_unembed))
        picked = jnp.take_along_axis(student, t[..., None], axis=-1)[..., 0]
        if top_k is not None:
            teacher, ids = jax.lax.top_k(teacher, top_k)
            student = jnp.take_along_axis(student, ids, axis=-1)
        return picked, forward_kl_terms(student, teacher, renormalize)

    return map_chunks(one, (hidden, teacher_hidden, targets), chunk=chunk)


def advantage_expectation(hidden: jax.Array, unembed: jax.Array, teacher_hidden: jax.Array,
                          teacher_unembed: jax.Array, reference_hidden: jax.Array, reference_unembed: jax.Array, *,
                          chunk: int = 64) -> jax.Array:
    """ADPA's ``Σ_v π_θ(v|s_t) A(s_t, v)`` per position, ``A = log π_teacher - log π_teacher-ref``.

    Hidden states [N, T, ·] of the student, the DPO-trained teacher and the teacher's reference
    with their LM heads (one vocabulary). Returns float32 [N, T].
    """

    def one(h, th, rh):
        advantage = _log_softmax(th, teacher_unembed) - _log_softmax(rh, reference_unembed)
        return expected_advantage(_log_softmax(h, unembed), jax.lax.stop_gradient(advantage))

    return map_chunks(one, (hidden, teacher_hidden, reference_hidden), chunk=chunk)
