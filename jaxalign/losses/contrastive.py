"""Contrastive and ranking objectives over sentence embeddings: InfoNCE, CoSENT, AnglE.

Pure functions in the style of optax: arrays in, a scalar loss out. Numeric options (temperature,
scale, weights) may be Python floats or traced scalars; flags such as ``symmetric`` are static.
They follow sentence-transformers' definitions (``MultipleNegativesRankingLoss``,
``CoSENTLoss``, ``AnglELoss``) and SimCSE's ``hard_negative_weight``.

Numerics, shared by every function here:

* Inputs may be bfloat16, float16 or float32; all arithmetic runs in float32 (float64 under x64),
  and the loss is returned in that type.
* Similarity matmuls use ``Precision.HIGHEST``. At temperature 0.05 a cosine is multiplied by 20
  before the softmax, and the default float32 matmul on TPU (and TF32 on GPU) rounds its inputs to
  bfloat16, which would put errors of ~1e-2 into the logits.
* Nothing reads array values on the Python side, so the functions jit, and under ``jit`` with a
  batch-sharded input the candidates are the global batch: XLA gathers the shards for the
  similarity matmul and routes the gradient of every candidate back to the shard that owns it.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

_EPS = 1e-12  # torch.nn.functional.normalize's default


def _compute_dtype(x: jax.Array) -> jnp.dtype:
    return jnp.promote_types(x.dtype, jnp.float32)


def l2_normalize(x: jax.Array) -> jax.Array:
    """``[..., dim]`` rows scaled to unit L2 norm, in float32 (float64 under x64).

    ``x / max(||x||, 1e-12)`` as torch's ``F.normalize``: an all-zero row stays zero instead of NaN.
    """
    x = x.astype(_compute_dtype(x))
    return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), _EPS**2))


def cosine_similarity_matrix(a: jax.Array, b: jax.Array) -> jax.Array:
    """All-pairs cosine similarity.

    Args:
      a: ``[n, dim]`` embeddings.
      b: ``[m, dim]`` embeddings.

    Returns:
      ``[n, m]`` with ``out[i, j] = cos(a_i, b_j)``, in float32 (float64 under x64). Rows are
      normalised with ``max(||x||, 1e-12)`` in the denominator, so an all-zero row gives zeros
      instead of NaN.
    """
    return jnp.matmul(l2_normalize(a), l2_normalize(b).T, precision=jax.lax.Precision.HIGHEST)


def _diagonal_cross_entropy(logits: jax.Array) -> jax.Array:
    """``-log softmax(logits[i])[i]`` for ``logits [B, M >= B]``, accurate near zero.

    Written as ``log(1 + Σ_{j≠i} exp(l_ij - l_ii))`` with ``log1p``: late in contrastive
    training the target dominates and the loss is ~1e-3, where ``logsumexp(l) - l_ii``
    cancels two numbers of size ~1/τ and keeps only ~1e-4 relative accuracy in float32.
    """
    batch = logits.shape[0]
    d = logits - jnp.diagonal(logits)[:, None]
    is_target = jnp.arange(logits.shape[1])[None, :] == jnp.arange(batch)[:, None]
    others = jnp.where(is_target, -jnp.inf, d)
    m = jnp.maximum(jnp.max(others, axis=1), 0.0)
    return m + jnp.log1p(jnp.expm1(-m) + jnp.sum(jnp.exp(others - m[:, None]), axis=1))


def info_nce(
    anchors: jax.Array,
    positives: jax.Array,
    negatives: jax.Array | None = None,
    *,
    temperature: float = 0.05,
    symmetric: bool = False,
    hard_negative_weight: float = 0.0,
) -> jax.Array:
    """InfoNCE with in-batch negatives (MultipleNegativesRankingLoss, SimCSE).

    Each anchor is scored against every candidate of the batch: all ``batch`` positives, then all
    ``batch * k`` hard negatives, in the order ``[P_0 .. P_{B-1}, N_{0,0} .. N_{0,k-1}, N_{1,0} ..]``.
    The loss is the cross-entropy of ``cos(anchor_i, candidates) / temperature`` with target
    ``P_i``, averaged over anchors. Keeping all positives first (never interleaving positives and
    negatives per example) is what makes label ``i`` point at anchor ``i``'s own positive.

    Args:
      anchors: ``[batch, dim]``.
      positives: ``[batch, dim]``; ``positives[i]`` is the target of ``anchors[i]``.
      negatives: ``[batch, k, dim]`` hard negatives, ``negatives[i]`` mined for ``anchors[i]``, or
        ``None`` for in-batch negatives only.
      temperature: softmax temperature τ; sentence-transformers' ``scale`` is ``1 / τ``.
      symmetric: also train the positive -> anchor direction, ``CE(cos(p_i, anchors) / τ, i)``, and
        return the mean of both directions, as sentence-transformers'
        ``MultipleNegativesSymmetricRankingLoss`` (``directions=("query_to_doc", "doc_to_query")``,
        ``partition_mode="per_direction"``). The reverse direction sees no hard negatives.
      hard_negative_weight: SimCSE's ``hard_negative_weight``: added, in logit space (after the
        division by τ), to the logits of each anchor's own hard negatives only; other anchors'
        hard negatives stay unweighted in-batch negatives.

    Returns:
      Scalar loss in float32 (float64 under x64).
    """
    a = l2_normalize(anchors)
    p = l2_normalize(positives)
    highest = jax.lax.Precision.HIGHEST
    pos_logits = jnp.matmul(a, p.T, precision=highest) / temperature  # [B, B], target on the diagonal
    logits = pos_logits
    if negatives is not None:
        batch, k = negatives.shape[0], negatives.shape[1]
        n = l2_normalize(negatives)
        neg_logits = jnp.einsum("id,jkd->ijk", a, n, precision=highest) / temperature  # [B, B, k]
        neg_logits = neg_logits + hard_negative_weight * jnp.eye(batch, dtype=neg_logits.dtype)[:, :, None]
        logits = jnp.concatenate([pos_logits, neg_logits.reshape(batch, batch * k)], axis=1)
    loss = jnp.mean(_diagonal_cross_entropy(logits))
    if symmetric:
        loss = (loss + jnp.mean(_diagonal_cross_entropy(pos_logits.T))) / 2
    return loss


def _ranking_loss(sims: jax.Array, scores: jax.Array, scale: float) -> jax.Array:
    """``log(1 + Σ_{y_i < y_j} exp(scale · (s_i - s_j)))`` over pairs of examples.

    Every pair whose gold scores are ordered ``y_i < y_j`` is penalised when its predicted
    similarities disagree, ``s_i > s_j``. The ``1 +`` is a zero logit appended to a logsumexp, so
    the loss is stable for any scale and equals ``log 1 = 0`` when no pair is ordered.
    """
    s = scale * sims
    y = scores.astype(_compute_dtype(scores))
    diff = s[:, None] - s[None, :]
    pairs = jnp.where(y[:, None] < y[None, :], diff, -jnp.inf).reshape(-1)
    return jax.nn.logsumexp(jnp.concatenate([jnp.zeros((1,), s.dtype), pairs]))


def cosent(emb1: jax.Array, emb2: jax.Array, scores: jax.Array, *, scale: float = 20.0) -> jax.Array:
    """CoSENT: rank the pairs' cosine similarities in the order of their gold scores.

    ``log(1 + Σ_{y_i < y_j} exp(scale · (cos_i - cos_j)))`` with ``cos_i = cos(emb1_i, emb2_i)``,
    sentence-transformers' ``CoSENTLoss``. Only the order of ``scores`` matters; ties contribute
    no pair.

    Args:
      emb1: ``[batch, dim]`` first sentence of each pair.
      emb2: ``[batch, dim]`` second sentence of each pair.
      scores: ``[batch]`` gold similarity (any real or boolean values).
      scale: inverse temperature.

    Returns:
      Scalar loss in float32 (float64 under x64).
    """
    cos = jnp.sum(l2_normalize(emb1) * l2_normalize(emb2), axis=-1)
    return _ranking_loss(cos, scores, scale)


def angle_similarity(x: jax.Array, y: jax.Array) -> jax.Array:
    """AnglE's pairwise similarity ``|cos(x, y) + sin(x, y)|``, sentence-transformers' ``pairwise_angle_sim``.

    Each row is read as a complex vector, real part = the first half of the channels, imaginary
    part = the second half (an odd ``dim`` is zero-padded by one channel). After L2 normalisation,
    ``Re + Im`` of the summed element-wise quotient ``x / y`` (AnglE's "angle difference in complex
    space") reduces to ``cos + sin`` with ``sin = Σ_k (Im x_k · Re y_k - Re x_k · Im y_k)``.

    Args:
      x: ``[batch, dim]``.
      y: ``[batch, dim]``.

    Returns:
      ``[batch]`` similarities in float32 (float64 under x64).
    """
    if x.shape[-1] % 2:
        pad = [(0, 0)] * (x.ndim - 1) + [(0, 1)]
        x, y = jnp.pad(x, pad), jnp.pad(y, pad)
    x, y = l2_normalize(x), l2_normalize(y)
    half = x.shape[-1] // 2
    cos = jnp.sum(x * y, axis=-1)
    sin = jnp.sum(x[..., half:] * y[..., :half] - x[..., :half] * y[..., half:], axis=-1)
    return jnp.abs(cos + sin)


def angle(emb1: jax.Array, emb2: jax.Array, scores: jax.Array, *, scale: float = 20.0) -> jax.Array:
    """AnglE loss: CoSENT's ranking objective with :func:`angle_similarity` in place of cosine.

    Matches sentence-transformers' ``AnglELoss`` for (sentence1, sentence2, score) pairs. AnglE
    optimises the angle difference in complex space because the gradient of cosine vanishes near
    its extremes (similarities of ±1).

    Args:
      emb1: ``[batch, dim]`` first sentence of each pair.
      emb2: ``[batch, dim]`` second sentence of each pair.
      scores: ``[batch]`` gold similarity.
      scale: inverse temperature.

    Returns:
      Scalar loss in float32 (float64 under x64).
    """
    return _ranking_loss(angle_similarity(emb1, emb2), scores, scale)
