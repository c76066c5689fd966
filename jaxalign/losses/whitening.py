"""Whitening operators for WhitenedCSE (shuffled group whitening, SGW) and post-hoc BERT-whitening.

WhitenedCSE puts ``SGW(x) -> Linear -> tanh`` in its training-only projection head: for each view
of a batch ``x [batch, dim]`` it permutes the channels at random, splits them into ``groups``
contiguous groups of ``d = dim / groups`` channels, centres each group over the batch, whitens it
with its covariance ``Xcᵀ Xc / N`` and undoes the permutation. The functions here are pure and
shape-static, in the style of optax: every option is a Python value, so all argument checks run at
trace time, before anything is compiled.

Numerics, decided once for every caller:

* Statistics are float32 (float64 under x64) even for bfloat16 inputs, and every matmul uses
  ``Precision.HIGHEST``: on TPU (and with TF32 on GPU) the default float32 matmul rounds its inputs
  to bfloat16, which is too coarse for a covariance that is about to be inverted.
* Shrinkage ``Σ̃ = (1 - eps) Σ + eps I``, ``eps`` in the units of ``Σ`` (absolute, not relative to
  its trace). ``W`` whitens ``Σ̃``: ``Wᵀ Σ̃ W = I``. The eigenvalues of ``Σ̃`` are at least ``eps``,
  so ZCA clamps the computed ones there and stays finite for any ``eps > 0``; Cholesky has no such
  guard and returns NaN unless ``eps`` clears float32 rounding of ``Σ`` (a few ``1e-7 λ_max``);
  Newton-Schulz is finite whenever ``tr Σ̃ > 0``.
* ZCA differentiates through its own closed-form rule (see ``_zca``), not through ``eigh``:
  autodiff of ``eigh`` divides by eigenvalue gaps and returns inf/NaN for the repeated
  eigenvalues that rank-deficient data plus shrinkage produce.
* A batch of ``N`` centred rows has rank at most ``N - 1``, so the covariance of ``d`` channels is
  singular when ``N <= d``. Without shrinkage that is an error, raised with the fix; with
  ``eps > 0`` it is allowed.

Methods (``WHITENING_METHODS``):

* ``zca`` - ``W = U diag(S^-1/2) Uᵀ`` from ``eigh``; symmetric, the whitening closest to the
  identity, permutation-equivariant. WhitenedCSE's choice.
* ``cholesky`` - ``W = L^-T`` with ``Σ̃ = L Lᵀ`` (W-MSE); upper triangular, cheap, but depends on
  the channel order.
* ``newton_schulz`` - IterNorm's matmul-only iteration for ``Σ̃^-1/2`` (see
  ``whitening_matrix``); only approximately white after few iterations.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

WHITENING_METHODS = ("zca", "cholesky", "newton_schulz")

_mm = functools.partial(jnp.matmul, precision=lax.Precision.HIGHEST)


def _t(a: jax.Array) -> jax.Array:
    return jnp.swapaxes(a, -1, -2)


def _check_options(method: str, eps: float, ns_iters: int) -> None:
    if method not in WHITENING_METHODS:
        raise ValueError(f"whitening method={method!r} is unknown; choose one of {', '.join(WHITENING_METHODS)}")
    if not 0.0 <= eps <= 1.0:
        raise ValueError(f"shrinkage eps must be in [0, 1] (Σ̃ = (1 - eps) Σ + eps I), got {eps}")
    if method == "newton_schulz" and ns_iters < 1:
        raise ValueError(f"ns_iters must be >= 1 for method='newton_schulz', got {ns_iters}")


def _eigh_inv_sqrt(cov: jax.Array, floor: float) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Eigenvectors ``U``, ``r = √S`` and ``U diag(1/r) Uᵀ`` of a symmetric ``cov [..., d, d]``."""
    s, u = jnp.linalg.eigh(cov)
    # Σ̃'s eigenvalues are >= eps exactly; float32 rounding (~1e-7 λ_max) could push them below, even negative.
    r = jnp.sqrt(jnp.maximum(s, floor))
    return u, r, _mm(u / r[..., None, :], _t(u))


@functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
def _zca(cov: jax.Array, floor: float) -> jax.Array:
    """``cov^-1/2`` of a symmetric ``cov [..., d, d]`` whose eigenvalues are ``>= floor``."""
    return _eigh_inv_sqrt(cov, floor)[2]


@_zca.defjvp
def _zca_jvp(floor, primals, tangents):
    (cov,), (dcov,) = primals, tangents
    u, r, w = _eigh_inv_sqrt(cov, floor)
    # Daleckii-Krein: d f(Σ) = U (F ∘ Uᵀ dΣ U) Uᵀ with F_ij = (f(s_i) - f(s_j)) / (s_i - s_j). For
    # f(s) = s^-1/2 and r = √s this divided difference is exactly -1 / (r_i r_j (r_i + r_j)), which
    # has no cancellation and tends to f'(s_i) as s_j -> s_i, so repeated eigenvalues are harmless.
    ri, rj = r[..., :, None], r[..., None, :]
    f = -1.0 / (ri * rj * (ri + rj))
    dsym = 0.5 * (dcov + _t(dcov))  # eigh reads the symmetric part of its input
    dw = _mm(_mm(u, f * _mm(_mm(_t(u), dsym), u)), _t(u))
    return w, dw


def _cholesky(cov: jax.Array) -> jax.Array:
    lower = jnp.linalg.cholesky(cov)
    eye = jnp.broadcast_to(jnp.eye(cov.shape[-1], dtype=cov.dtype), cov.shape)
    l_inv = lax.linalg.triangular_solve(lower, eye, left_side=True, lower=True)
    return _t(l_inv)


def _coupled_newton_schulz_step(_, yz):
    # module-level, not a closure, so that eager calls hit JAX's trace cache
    y, z = yz
    t = 1.5 * jnp.eye(y.shape[-1], dtype=y.dtype) - 0.5 * _mm(z, y)
    return _mm(y, t), _mm(t, z)


def _newton_schulz(cov: jax.Array, iters: int) -> jax.Array:
    # IterNorm's P_{k+1} = 1.5 P_k - 0.5 P_k³ Σ_N written literally is unstable: near the fixed
    # point it multiplies rounding errors by |1 - (r + r²)/2| per step, r² an eigenvalue ratio,
    # which exceeds 1 once the condition number passes ~2.4 (at condition number 10 float32
    # diverges after 20-30 steps; float64 only delays it). The coupled form (Higham) has the same
    # iterates in exact arithmetic, Z_k = P_k and Y_k = Σ_N P_k, costs the same three matmuls per
    # step, and stays at the fixed point.
    trace = jnp.trace(cov, axis1=-2, axis2=-1)[..., None, None]
    eye = jnp.broadcast_to(jnp.eye(cov.shape[-1], dtype=cov.dtype), cov.shape)
    _, z = lax.fori_loop(0, iters, _coupled_newton_schulz_step, (cov / trace, eye))
    return z / jnp.sqrt(trace)


def whitening_matrix(cov: jax.Array, *, method: str = "zca", eps: float = 0.0, ns_iters: int = 5) -> jax.Array:
    """Whitening matrix ``W`` of a covariance ``cov [groups, d, d]`` or ``[d, d]``.

    ``Xc @ W`` is white for centred data ``Xc`` whose covariance is ``cov``: ``Wᵀ Σ̃ W = I`` with
    the shrunk covariance ``Σ̃ = (1 - eps) cov + eps I``. Computed in float32 (float64 if ``cov``
    is float64); returns ``W`` with the shape of ``cov``.

    ``method="newton_schulz"`` is IterNorm: ``Σ_N = Σ̃ / tr Σ̃``, ``P_0 = I``,
    ``P_{k+1} = 1.5 P_k - 0.5 P_k³ Σ_N``, ``W = P_T / √tr Σ̃`` with ``T = ns_iters`` - matmuls
    only, so fast on TPU and always finitely differentiable (computed in the equivalent, stable
    coupled form). It approximates ``Σ̃^-1/2``: along an eigenvector with eigenvalue ``λ`` of
    ``Σ_N``, ``q_k = p_k √λ`` follows ``q_{k+1} = q_k (3 - q_k²) / 2`` from ``q_0 = √λ``, which
    converges to 1 iff ``0 < λ < 3``. The trace normalisation guarantees ``λ <= 1``, but a small
    ``q`` grows only about 1.5x per step, so whitening needs ``T`` of about
    ``log_1.5(√(tr Σ̃ / λ_min)) + 3``. With ``T = 5`` the output variance along that direction is
    ``q_5²``: 0.99 at ``λ = 0.1``, 0.89 at 0.04, 0.43 at 0.01, 0.06 at 0.001. An isotropic group
    of ``d`` channels has ``λ = 1/d``, so the default is within about 10% of white for
    ``d <= 24`` and a partial ("soft") whitening for larger groups or ill-conditioned data.
    """
    _check_options(method, eps, ns_iters)
    if cov.ndim < 2 or cov.shape[-1] != cov.shape[-2]:
        raise ValueError(f"cov must have shape [groups, d, d] or [d, d], got {cov.shape}")
    cov = cov.astype(jnp.promote_types(cov.dtype, jnp.float32))
    if eps:
        cov = (1.0 - eps) * cov + eps * jnp.eye(cov.shape[-1], dtype=cov.dtype)
    if method == "zca":
        return _zca(cov, eps)
    if method == "cholesky":
        return _cholesky(cov)
    return _newton_schulz(cov, ns_iters)


def _group_size(x: jax.Array, groups: int, eps: float, num_shards: int) -> tuple[int, int]:
    """Checks the static shapes; returns (rows per shard, channels per group)."""
    if x.ndim != 2:
        raise ValueError(f"x must have shape [batch, dim], got {x.shape}")
    batch, dim = x.shape
    if groups < 1 or dim % groups:
        raise ValueError(f"groups={groups} must be a positive divisor of the embedding dim {dim}")
    if num_shards < 1 or batch % num_shards:
        raise ValueError(f"num_shards={num_shards} must be a positive divisor of the batch size {batch}")
    n, d = batch // num_shards, dim // groups
    where = f"batch N={n}" if num_shards == 1 else f"per-shard batch N={batch}/{num_shards}={n}"
    if n < 2:
        raise ValueError(f"{where} too small: whitening needs at least 2 rows to estimate a covariance")
    if n <= d and eps == 0:
        raise ValueError(
            f"{where} too small for groups of d={d} channels (dim {dim} / groups {groups}): covariance is "
            f"singular (rank <= N-1 < d); use more groups, a larger batch or eps>0"
        )
    return n, d


def group_whiten(
    x: jax.Array,
    *,
    groups: int,
    method: str = "zca",
    eps: float = 0.0,
    stop_gradient: bool = True,
    ns_iters: int = 5,
    num_shards: int = 1,
) -> jax.Array:
    """Group whitening of ``x [batch, dim]`` over the batch; returns ``[batch, dim]`` in ``x.dtype``.

    The channels are split into ``groups`` contiguous groups of ``d = dim / groups``; each group is
    centred over the batch, its covariance ``Xcᵀ Xc / N`` computed in float32 and whitened with
    ``whitening_matrix``, so ``y`` has zero mean and (shrunk) identity covariance within each group
    while groups stay correlated with each other. Smaller groups need fewer rows (``N > d``) and
    whiten less.

    ``stop_gradient=True`` detaches ``W`` so the gradient flows through the centred ``x`` only (the
    mean is not detached), as WhitenedCSE's released code does; ``False`` differentiates through
    ``W`` as well.

    ``num_shards > 1`` computes the statistics separately for each contiguous block of
    ``N / num_shards`` rows - one data-parallel shard each, like per-device BatchNorm - with no
    collectives. The default 1 uses the global batch, so the result does not depend on how ``x``
    is sharded (under ``jit`` XLA inserts the reductions).
    """
    _check_options(method, eps, ns_iters)
    n, d = _group_size(x, groups, eps, num_shards)
    stats_dtype = jnp.promote_types(x.dtype, jnp.float32)

    def whiten_shard(xs: jax.Array) -> jax.Array:
        xg = xs.astype(stats_dtype).reshape(n, groups, d)
        xc = xg - xg.mean(axis=0)
        cov = jnp.einsum("ngi,ngj->gij", xc, xc, precision=lax.Precision.HIGHEST) / n
        w = whitening_matrix(cov, method=method, eps=eps, ns_iters=ns_iters)
        if stop_gradient:
            w = lax.stop_gradient(w)
        return jnp.einsum("ngi,gij->ngj", xc, w, precision=lax.Precision.HIGHEST).reshape(n, groups * d)

    y = jax.vmap(whiten_shard)(x.reshape(num_shards, n, -1))
    return y.reshape(x.shape).astype(x.dtype)


def shuffled_group_whiten(
    x: jax.Array,
    key: jax.Array,
    *,
    groups: int,
    method: str = "zca",
    eps: float = 0.0,
    stop_gradient: bool = True,
    ns_iters: int = 5,
    num_shards: int = 1,
) -> jax.Array:
    """Shuffled group whitening (SGW) of ``x [batch, dim]``; returns ``[batch, dim]`` in ``x.dtype``.

    The channels are permuted by ``jax.random.permutation(key, dim)``, group-whitened
    (``group_whiten``, same options) and put back in their original order. So the groups are
    random sets of channels, a fresh draw per key; WhitenedCSE uses the shuffle to make the
    views of a sentence differ and to decorrelate channels across groups over training.
    """
    perm = jax.random.permutation(key, x.shape[-1])
    y = group_whiten(x[:, perm], groups=groups, method=method, eps=eps, stop_gradient=stop_gradient,
                     ns_iters=ns_iters, num_shards=num_shards)
    return y[:, jnp.argsort(perm)]


def multi_view_sgw(views: Sequence[jax.Array], key: jax.Array, **kw) -> list[jax.Array]:
    """SGW of each view ``[batch, dim]`` with its own channel shuffle; returns a list of ``[batch, dim]``.

    WhitenedCSE whitens its ``num_pos`` positive views (e.g. 3 dropout views) each with a
    different permutation: view ``i`` uses ``jax.random.split(key, len(views))[i]``. ``kw`` are
    ``shuffled_group_whiten``'s options (``groups`` is required).
    """
    keys = jax.random.split(key, len(views))
    return [shuffled_group_whiten(v, k, **kw) for v, k in zip(views, keys)]


def bert_whitening(embeddings, *, k: int | None = None, eps: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Fits post-hoc BERT-whitening on ``embeddings [n, dim]``; returns ``mu [dim]`` and ``W [dim, k]``.

    ``y = (x - mu) @ W`` with ``W = U Λ^-1/2 [:, :k]``: ``U, Λ`` the eigenvectors and eigenvalues of
    the (shrunk, ``(1 - eps) Σ + eps I``) covariance in decreasing order, so the ``k`` kept
    components are the highest-variance ones (``k=None`` keeps all ``dim``). A one-off fit over a
    corpus, so it runs in float64 NumPy; the results are float64 NumPy arrays.
    """
    x = np.asarray(embeddings, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"embeddings must have shape [n >= 2, dim], got {x.shape}")
    dim = x.shape[1]
    k = dim if k is None else k
    if not 1 <= k <= dim:
        raise ValueError(f"k={k} must be in [1, dim={dim}] (or None for all components)")
    if not 0.0 <= eps <= 1.0:
        raise ValueError(f"shrinkage eps must be in [0, 1], got {eps}")
    mu = x.mean(axis=0)
    xc = x - mu
    cov = (1.0 - eps) * (xc.T @ xc) / x.shape[0] + eps * np.eye(dim)
    s, u = np.linalg.eigh(cov)
    s, u = s[::-1][:k], u[:, ::-1][:, :k]
    floor = np.abs(s[0]) * dim * np.finfo(np.float64).eps
    if s[-1] <= floor:
        rank = int((s > floor).sum())
        raise ValueError(f"the covariance has only {rank} non-negligible eigenvalues, fewer than k={k}: "
                         f"use k <= {rank}, more embeddings or eps>0")
    return mu, u / np.sqrt(s)


def apply_whitening(x, mu, w):
    """``(x - mu) @ w`` for ``x [..., dim]``, ``mu [dim]``, ``w [dim, k]`` from ``bert_whitening``.

    Works on NumPy or JAX arrays (the result follows the usual dtype promotion).
    """
    return (x - mu) @ w
