"""Matryoshka wrappers: train one embedding to work truncated (MRL) and from shallow layers (2DMSE).

Each wrapper takes a base objective ``loss_fn(*columns) -> scalar`` (for example
``functools.partial(info_nce, temperature=0.05)``) and per-column embeddings ``[batch, dim]``
that the engine has already pooled, so one forward pass with all hidden states feeds every term.
Truncation keeps the first ``d`` channels and L2-normalises them again, as sentence-transformers'
``shrink`` does, so base objectives that do not normalise (dot products) see the same inputs as
there.

Layer indices follow the hidden-state convention: layer ``n`` is the output of the ``n``-th
transformer block (``n = 0`` is the embedding output).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp

from jaxalign.losses.contrastive import cosine_similarity_matrix, l2_normalize

LossFn = Callable[..., jax.Array]


def truncate(embeddings: jax.Array, dim: int) -> jax.Array:
    """``[batch, D] -> [batch, dim]``: the first ``dim`` channels, L2-normalised, in float32 (float64 under x64)."""
    if not 0 < dim <= embeddings.shape[-1]:
        raise ValueError(f"matryoshka dim {dim} must be in [1, {embeddings.shape[-1]}] (the embedding size)")
    return l2_normalize(embeddings[..., :dim])


def matryoshka_loss(
    loss_fn: LossFn,
    embeddings: Sequence[jax.Array],
    *,
    dims: Sequence[int] = (768, 512, 256, 128, 64),
    weights: Sequence[float] | None = None,
) -> jax.Array:
    """Matryoshka Representation Learning: ``Σ_d w_d · loss_fn(*[truncate(e, d) for e in embeddings])``.

    sentence-transformers' ``MatryoshkaLoss`` with ``n_dims_per_step=-1`` (every dim each step).
    Training every prefix makes the leading channels carry the most information, so the embedding
    can be cut to any of ``dims`` at inference.

    Args:
      loss_fn: base objective taking one ``[batch, d]`` array per column.
      embeddings: one ``[batch, D]`` array per input column (e.g. anchor, positive).
      dims: prefix sizes to train, each ``<= D``.
      weights: one weight per entry of ``dims``; default all 1.

    Returns:
      Scalar loss.
    """
    if weights is None:
        weights = (1.0,) * len(dims)
    if len(weights) != len(dims):
        raise ValueError(f"matryoshka weights ({len(weights)}) and dims ({len(dims)}) must have the same length")
    return sum(w * loss_fn(*(truncate(e, d) for e in embeddings)) for d, w in zip(dims, weights))


def embedding_kl(teacher: Sequence[jax.Array], student: Sequence[jax.Array], temperature: float) -> jax.Array:
    """``KL(softmax(teacher / T) ‖ softmax(student / T))`` over the channel axis, teacher detached.

    sentence-transformers' ``AdaptiveLayerLoss`` term (and AnglE's ``compute_distillation_loss``):
    every sentence embedding is read as a distribution over its ``D`` channels; the columns are
    stacked into ``[columns · batch, D]`` and the per-row KL is averaged over those rows (torch's
    ``reduction="batchmean"``). The teacher gets no gradient.

    Args:
      teacher: one ``[batch, D]`` array per column (the last layer).
      student: the same columns from a shallower layer.
      temperature: softmax temperature ``T``.

    Returns:
      Scalar KL (not yet multiplied by ``T``).
    """
    t = jnp.concatenate([x.astype(jnp.promote_types(x.dtype, jnp.float32)) for x in teacher])
    s = jnp.concatenate([x.astype(jnp.promote_types(x.dtype, jnp.float32)) for x in student])
    log_p = jax.nn.log_softmax(jax.lax.stop_gradient(t) / temperature, axis=-1)
    log_q = jax.nn.log_softmax(s / temperature, axis=-1)
    return jnp.sum(jnp.exp(log_p) * (log_p - log_q)) / t.shape[0]


def similarity_kl(teacher: Sequence[jax.Array], student: Sequence[jax.Array], temperature: float) -> jax.Array:
    """``KL(softmax(S_teacher / T) ‖ softmax(S_student / T))`` over each anchor's candidates, teacher detached.

    ``S = cos(column 0, [column 1; column 2; ...])`` is the ``[batch, (columns - 1) · batch]``
    anchor-candidate similarity matrix that InfoNCE scores; the per-anchor KL is averaged over
    anchors. Needs at least two columns.
    """
    if len(teacher) < 2:
        raise ValueError("the similarity KL needs an anchor column and at least one candidate column")

    def sims(cols):
        return cosine_similarity_matrix(cols[0], jnp.concatenate(cols[1:]))

    log_p = jax.nn.log_softmax(jax.lax.stop_gradient(sims(teacher)) / temperature, axis=-1)
    log_q = jax.nn.log_softmax(sims(student) / temperature, axis=-1)
    return jnp.mean(jnp.sum(jnp.exp(log_p) * (log_p - log_q), axis=-1))


_KL = {"embeddings": embedding_kl, "similarities": similarity_kl}


def matryoshka_2d_loss(
    loss_fn: LossFn,
    last: Sequence[jax.Array],
    sampled: Sequence[jax.Array],
    *,
    layer_index: int | jax.Array,
    dim: int,
    kl_temperature: float = 0.3,
    kl_weight: float = 1.0,
    kl_over: str = "embeddings",
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """2D Matryoshka Sentence Embeddings (2DMSE) for one sampled layer ``n`` and dim ``d``.

    ``L = L(last, full) + L(n, full) / n + kl_weight · T · KL(last ‖ n) + L(last, :d) + L(n, :d) / n``

    The caller samples ``n`` (and ``d``) per step and pools both layers from one forward pass.
    Shallow layers are down-weighted by ``1 / n`` so they do not dominate the last layer, and the
    KL term aligns the shallow layer with the (detached) last layer. This is the 2DMSE paper's
    objective; sentence-transformers' ``Matryoshka2dLoss`` weights its terms differently (one
    sampled dim per layer, no separate full-size term, prior layers weighted 1 by default), which
    :func:`adaptive_layer_loss` follows.

    The KL follows the reference implementations: sentence-transformers' ``AdaptiveLayerLoss``
    (which ``Matryoshka2dLoss`` wraps) and AnglE's trainer both apply it to the untruncated
    embeddings themselves, softmax over the channel axis, columns stacked, ``batchmean`` (see
    :func:`embedding_kl`). ``kl_over="similarities"`` instead aligns the softmax of the
    anchor-candidate cosine matrices (:func:`similarity_kl`), a distribution over candidates rather
    than channels; it is not what either reference computes.

    Args:
      loss_fn: base objective taking one ``[batch, d]`` array per column.
      last: one ``[batch, D]`` array per column, pooled from the last layer.
      sampled: the same columns pooled from layer ``n``.
      layer_index: ``n >= 1``, the sampled layer (hidden-state index); may be traced.
      dim: ``d``, the sampled Matryoshka size; static.
      kl_temperature: ``T``; ``0`` drops the KL term, as in sentence-transformers.
      kl_weight: multiplies the KL term.
      kl_over: ``"embeddings"`` (the references) or ``"similarities"``.

    Returns:
      ``(loss, metrics)``; ``metrics`` holds the unweighted terms ``last_full``, ``layer_full``,
      ``last_dim``, ``layer_dim`` and, when ``T > 0``, ``kl``.
    """
    if len(last) != len(sampled):
        raise ValueError(f"last ({len(last)}) and sampled ({len(sampled)}) must have the same columns")
    if kl_over not in _KL:
        raise ValueError(f"kl_over must be one of {', '.join(_KL)}, got {kl_over!r}")
    n = jnp.asarray(layer_index, jnp.result_type(float))
    terms = {
        "last_full": loss_fn(*last),
        "layer_full": loss_fn(*sampled),
        "last_dim": loss_fn(*(truncate(e, dim) for e in last)),
        "layer_dim": loss_fn(*(truncate(e, dim) for e in sampled)),
    }
    loss = terms["last_full"] + terms["last_dim"] + (terms["layer_full"] + terms["layer_dim"]) / n
    if kl_temperature > 0:
        terms["kl"] = _KL[kl_over](last, sampled, kl_temperature)
        loss = loss + kl_weight * kl_temperature * terms["kl"]
    return loss, terms


def adaptive_layer_loss(
    loss_fn: LossFn,
    last: Sequence[jax.Array],
    layers: Sequence[Sequence[jax.Array]],
    layer_indices: Sequence[int] | jax.Array,
    *,
    last_layer_weight: float = 1.0,
    prior_layers_weight: float = 1.0,
    kl_weight: float = 1.0,
    kl_temperature: float = 0.3,
    layer_weighting: str = "uniform",
) -> jax.Array:
    """sentence-transformers' ``AdaptiveLayerLoss`` over precomputed per-layer embeddings.

    ``w_last · L(last) + Σ_l [prior_w · ω(l) / k · L(layer_l) + kl_weight · T · KL(last ‖ layer_l)]``
    over the ``k`` given prior layers, with :func:`embedding_kl` and the layer weight ``ω``:
    ``"uniform"`` 1 (the library default), ``"linear"`` ``1 / (1 + l)`` (the library's behaviour
    before the option existed), ``"log"`` ``1 / (1 + ln(1 + l))`` (ESE). With
    ``loss_fn = lambda *c: matryoshka_loss(base, c, dims=...)`` it is ``Matryoshka2dLoss`` with
    ``n_dims_per_step=-1``; the library's default draws one dim per call instead.

    Args:
      loss_fn: base objective taking one ``[batch, D]`` array per column.
      last: one ``[batch, D]`` array per column from the last layer.
      layers: for each sampled prior layer, the same columns from that layer.
      layer_indices: the hidden-state index of each entry of ``layers`` (0 = embedding output);
        may be traced.
      last_layer_weight, prior_layers_weight, kl_weight: term weights.
      kl_temperature: ``T``; ``0`` drops the KL terms.
      layer_weighting: ``"uniform"``, ``"linear"`` or ``"log"``.

    Returns:
      Scalar loss.
    """
    if len(layers) != len(layer_indices):
        raise ValueError(f"layers ({len(layers)}) and layer_indices ({len(layer_indices)}) must have the same length")
    idx = jnp.asarray(layer_indices, jnp.result_type(float))
    if layer_weighting == "uniform":
        weight = jnp.ones_like(idx)
    elif layer_weighting == "linear":
        weight = 1.0 / (1.0 + idx)
    elif layer_weighting == "log":
        weight = 1.0 / (1.0 + jnp.log1p(idx))
    else:
        raise ValueError(f"layer_weighting must be uniform, linear or log, got {layer_weighting!r}")
    loss = last_layer_weight * loss_fn(*last)
    for i, cols in enumerate(layers):
        loss = loss + prior_layers_weight * weight[i] / len(layers) * loss_fn(*cols)
        if kl_temperature > 0:
            loss = loss + kl_weight * kl_temperature * embedding_kl(last, cols, kl_temperature)
    return loss
