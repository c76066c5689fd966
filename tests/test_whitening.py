"""Whitening operators (WhitenedCSE's shuffled group whitening, BERT-whitening) against float64 NumPy.

The references below are written from the WhitenedCSE paper's formulas, independently of
``jaxalign.losses.whitening``: group covariance ``Xcᵀ Xc / N``, ZCA ``U diag(S^-1/2) Uᵀ``,
Cholesky ``L^-T``, IterNorm's literal recursion, shrinkage ``(1 - eps) Σ + eps I``.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from jaxalign.losses.whitening import (
    WHITENING_METHODS,
    apply_whitening,
    bert_whitening,
    group_whiten,
    multi_view_sgw,
    shuffled_group_whiten,
    whitening_matrix,
)

# ---------------------------------------------------------------- float64 NumPy references


def np_cov(x):
    xc = x - x.mean(0)
    return xc.T @ xc / len(x)


def np_zca(cov):
    s, u = np.linalg.eigh(cov)
    return (u / np.sqrt(s)) @ u.T


def np_iternorm(cov, iters):
    """IterNorm exactly as written: Σ_N = Σ/tr Σ, P_0 = I, P_{k+1} = 1.5 P_k - 0.5 P_k³ Σ_N."""
    tr = np.trace(cov)
    sigma_n, p = cov / tr, np.eye(len(cov))
    for _ in range(iters):
        p = 1.5 * p - 0.5 * p @ p @ p @ sigma_n
    return p / np.sqrt(tr)


def np_group_zca(x, groups, eps=0.0):
    x = np.asarray(x, np.float64)
    d = x.shape[1] // groups
    out = []
    for g in range(groups):
        xg = x[:, g * d:(g + 1) * d]
        cov = (1 - eps) * np_cov(xg) + eps * np.eye(d)
        out.append((xg - xg.mean(0)) @ np_zca(cov))
    return np.concatenate(out, axis=1)


def group_covs(y, groups):
    """Per-group covariance of y [N, D] -> [groups, d, d], float64."""
    y = np.asarray(y, np.float64)
    d = y.shape[1] // groups
    return np.stack([np_cov(y[:, g * d:(g + 1) * d]) for g in range(groups)])


def correlated(rng, n, dim, cond=30.0, mean=3.0):
    """n samples of dim correlated channels, non-zero mean, covariance condition number ~cond."""
    q, _ = np.linalg.qr(rng.standard_normal((dim, dim)))
    scale = np.sqrt(np.geomspace(1.0, 1.0 / cond, dim))
    return (rng.standard_normal((n, dim)) * scale) @ q.T + mean


def spd(rng, d, cond):
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    return (q * np.geomspace(1.0, 1.0 / cond, d)) @ q.T


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def f32(a):
    return jnp.asarray(a, jnp.float32)


# Most tests share the shapes x [64, 16] and cov [8, 8] (or [2, 8, 8]): eager JAX compiles each
# operation once per shape, so reusing shapes keeps the file fast.
N, DIM = 64, 16
NS_CONVERGED = 60  # Newton-Schulz iterations that converge for the condition numbers used here


# ---------------------------------------------------------------- whitening matrices


@pytest.mark.parametrize("method,iters,atol",
                         [("zca", 5, 1e-4), ("cholesky", 5, 1e-4), ("newton_schulz", NS_CONVERGED, 1e-3)])
def test_group_output_has_identity_covariance(rng, method, iters, atol):
    x = correlated(rng, N, DIM)
    y = group_whiten(f32(x), groups=2, method=method, ns_iters=iters)
    covs = group_covs(y, 2)
    np.testing.assert_allclose(covs, np.broadcast_to(np.eye(8), covs.shape), atol=atol)
    np.testing.assert_allclose(np.asarray(y, np.float64).mean(0), 0.0, atol=1e-4)
    # groups stay correlated with each other: this is group, not full, whitening
    assert np.abs(np_cov(np.asarray(y, np.float64))[:8, 8:]).max() > 0.05


def test_zca_matches_eigh_reference(rng):
    cov = np.stack([spd(rng, 8, 100.0), spd(rng, 8, 10.0)])
    w = np.asarray(whitening_matrix(f32(cov), method="zca"))
    ref = np.stack([np_zca(c) for c in cov])
    np.testing.assert_allclose(w, ref, rtol=0, atol=2e-4 * np.abs(ref).max())
    np.testing.assert_allclose(w, np.swapaxes(w, 1, 2), atol=1e-5)
    np.testing.assert_allclose(np.asarray(whitening_matrix(f32(cov[1]))), w[1], atol=1e-5)  # [d, d] too
    # and the whole group_whiten pipeline against the per-group NumPy reference
    x = f32(correlated(rng, N, DIM))
    np.testing.assert_allclose(np.asarray(group_whiten(x, groups=2)), np_group_zca(np.asarray(x), 2), atol=2e-4)


def test_float64_under_x64(rng):
    cov = np.stack([spd(rng, 8, 100.0), spd(rng, 8, 10.0)])
    with jax.enable_x64(True):
        w = whitening_matrix(jnp.asarray(cov))
        assert w.dtype == jnp.float64
        np.testing.assert_allclose(np.asarray(w), np.stack([np_zca(c) for c in cov]), atol=1e-10)


def test_cholesky_is_inverse_transposed_factor(rng):
    cov = spd(rng, 8, 100.0)
    w = np.asarray(whitening_matrix(f32(cov), method="cholesky"), np.float64)
    np.testing.assert_allclose(w.T @ cov @ w, np.eye(8), atol=1e-4)
    np.testing.assert_array_equal(np.tril(w, -1), 0.0)  # L^-T is upper triangular
    np.testing.assert_allclose(w, np.linalg.inv(np.linalg.cholesky(cov)).T, rtol=1e-4, atol=1e-5)


def test_newton_schulz_is_iternorm_recursion(rng):
    cov = spd(rng, 8, 1e3) * 7.0  # trace != 1: checks the Σ/tr Σ and 1/√tr Σ scalings
    w5 = np.asarray(whitening_matrix(f32(cov), method="newton_schulz"))
    np.testing.assert_allclose(w5, np_iternorm(cov, 5), atol=1e-5 * np.abs(w5).max())
    # 5 iterations leave the small-eigenvalue directions under-whitened (documented); more converge
    zca = np_zca(cov)
    assert np.abs(w5 - zca).max() > 0.1 * np.abs(zca).max()
    w = np.asarray(whitening_matrix(f32(cov), method="newton_schulz", ns_iters=NS_CONVERGED))
    np.testing.assert_allclose(w, zca, atol=1e-4 * np.abs(zca).max())
    # IterNorm's recursion as written amplifies rounding once the condition number exceeds ~2.4 and
    # diverges within those iterations even in float64; the coupled implementation stays put.
    with np.errstate(all="ignore"):
        assert not np.isfinite(np_iternorm(cov, NS_CONVERGED)).all()


def test_shrinkage(rng):
    eps = 0.1
    cov = spd(rng, 8, 1e4)
    shrunk = (1 - eps) * cov + eps * np.eye(8)
    np.testing.assert_allclose(np.asarray(whitening_matrix(f32(cov), eps=eps)), np_zca(shrunk),
                               atol=1e-4 * np.abs(np_zca(shrunk)).max())
    for method in ("cholesky", "newton_schulz"):
        w = np.asarray(whitening_matrix(f32(cov), method=method, eps=eps, ns_iters=NS_CONVERGED), np.float64)
        np.testing.assert_allclose(w.T @ shrunk @ w, np.eye(8), atol=1e-4)
    x = f32(correlated(rng, N, DIM))
    np.testing.assert_allclose(np.asarray(group_whiten(x, groups=2, eps=eps)),
                               np_group_zca(np.asarray(x), 2, eps=eps), atol=1e-4)


# ---------------------------------------------------------------- shuffling and views


def test_sgw_with_one_group_is_plain_whitening(rng):
    # ZCA is a spectral function of Σ, hence permutation-equivariant: (P Σ Pᵀ)^-1/2 = P Σ^-1/2 Pᵀ
    x = f32(correlated(rng, N, DIM))
    plain = group_whiten(x, groups=1)
    for seed in (0, 1):
        sgw = shuffled_group_whiten(x, jax.random.key(seed), groups=1)
        np.testing.assert_allclose(np.asarray(sgw), np.asarray(plain), atol=2e-4)


def test_sgw_groups_are_random_and_white(rng):
    groups, d = 4, DIM // 4
    x = f32(correlated(rng, N, DIM))
    key = jax.random.key(3)
    y = np.asarray(shuffled_group_whiten(x, key, groups=groups), np.float64)
    other = np.asarray(shuffled_group_whiten(x, jax.random.key(4), groups=groups))
    assert np.abs(other - y).max() > 0.1
    # Read the groups off the output alone: channels of one group are exactly uncorrelated.
    c = np_cov(y)
    np.testing.assert_allclose(np.diag(c), 1.0, atol=1e-4)
    found = {frozenset(np.flatnonzero(np.abs(row) < 1e-4)) | {i} for i, row in enumerate(c)}
    assert all(len(g) == d for g in found) and len(found) == groups
    # ... and they are the contiguous blocks of the documented permutation
    perm = np.asarray(jax.random.permutation(key, DIM))
    assert found == {frozenset(perm[g * d:(g + 1) * d]) for g in range(groups)}
    covs = group_covs(y[:, perm], groups)
    np.testing.assert_allclose(covs, np.broadcast_to(np.eye(d), covs.shape), atol=1e-4)


def test_multi_view_sgw_uses_one_shuffle_per_view(rng):
    x = f32(correlated(rng, N, DIM))
    key = jax.random.key(0)
    ys = multi_view_sgw([x, x, x], key, groups=4)
    assert len(ys) == 3
    for y, k in zip(ys, jax.random.split(key, 3)):
        np.testing.assert_array_equal(np.asarray(y), np.asarray(shuffled_group_whiten(x, k, groups=4)))
    assert np.abs(np.asarray(ys[0]) - np.asarray(ys[1])).max() > 0.1


# ---------------------------------------------------------------- gradients


def test_stop_gradient_gradient_is_through_centred_x_only(rng):
    groups, d = 2, DIM // 2
    x = correlated(rng, N, DIM)
    r = rng.standard_normal((N, DIM))

    def grads(x):
        def loss(x, stop):
            return (group_whiten(x, groups=groups, stop_gradient=stop) * f32(r)).sum()
        return jax.grad(loss)(x, True), jax.grad(loss)(x, False)

    g_stop, g_full = (np.asarray(g, np.float64) for g in jax.jit(grads)(f32(x)))
    # by hand: L = <(x - mean) W, R> with W constant  =>  dL/dx = (R - mean(R)) Wᵀ, block-diagonal W
    x32 = np.asarray(f32(x), np.float64)
    w = np.zeros((DIM, DIM))
    for g in range(groups):
        w[g * d:(g + 1) * d, g * d:(g + 1) * d] = np_zca(np_cov(x32[:, g * d:(g + 1) * d]))
    np.testing.assert_allclose(g_stop, (r - r.mean(0)) @ w.T, atol=1e-4 * np.abs(g_stop).max())
    assert np.abs(g_full - g_stop).max() > 0.1 * np.abs(g_stop).max()


def test_zca_gradient_matches_finite_differences(rng):
    # ZCA differentiates through its own Daleckii-Krein rule; check it in float64 on generic data
    # and on rank-3 data, whose shrunk covariance has a 5-fold repeated eigenvalue (eps) where
    # autodiff through eigh returns NaN. Perturbing the data, not the covariance, keeps Σ positive
    # semi-definite, as in training. (Cholesky and Newton-Schulz use JAX's own derivatives.)
    def w_of_data(x):
        xc = x - x.mean(0)
        return whitening_matrix(xc.T @ xc / len(x), eps=0.05)

    with jax.enable_x64(True):
        for x in (correlated(rng, 16, 8), rng.standard_normal((16, 3)) @ rng.standard_normal((3, 8))):
            check_grads(jax.jit(w_of_data), (jnp.asarray(x),), order=1, modes=["fwd", "rev"], atol=1e-6, rtol=1e-6)


def test_near_singular_with_shrinkage_is_finite(rng):
    # Three blocks of N = d + 2 = 10 rows, groups of d = 8: rank-3 data, plain data with only
    # N = d + 2 rows, and groups whose channels have condition number 1e7; one shard each.
    cases = f32(np.concatenate([
        rng.standard_normal((10, 3)) @ rng.standard_normal((3, DIM)),
        correlated(rng, 10, DIM, cond=100.0),
        np.concatenate([correlated(rng, 10, 8, cond=1e7), correlated(rng, 10, 8, cond=1e7)], axis=1),
    ]))
    r = f32(rng.standard_normal(cases.shape))

    def outputs_and_grads(x):
        out = {}
        for method in WHITENING_METHODS:
            # gradients through W; with W detached (the default) the gradient is (R - mean R) Wᵀ,
            # finite whenever the forward pass is
            fn = functools.partial(group_whiten, groups=2, method=method, eps=1e-3, stop_gradient=False, num_shards=3)
            y, vjp = jax.vjp(fn, x)
            out[method] = y, vjp(r)[0]
        return out

    results = jax.jit(outputs_and_grads)(cases)
    for method, (y, grad) in results.items():
        for i, case in enumerate(("rank-deficient", "N = d + 2", "condition 1e7")):
            assert np.isfinite(np.asarray(y[10 * i:10 * (i + 1)])).all(), (method, case)
            assert np.isfinite(np.asarray(grad[10 * i:10 * (i + 1)])).all(), (method, case)
    blocks = np.asarray(cases).reshape(3, 10, DIM)
    ref = np.concatenate([np_group_zca(b, 2, eps=1e-3) for b in blocks])
    np.testing.assert_allclose(np.asarray(results["zca"][0]), ref, atol=1e-3 * np.abs(ref).max())


def test_zca_with_shrinkage_below_float32_rounding_is_finite(rng):
    # Rank 3 per group of 8 channels, λ_max ~ 20: float32 rounding (~1e-7 λ_max) exceeds eps = 1e-6,
    # so computed eigenvalues of Σ̃ can come out below eps, even negative; ZCA clamps them at eps,
    # their exact lower bound. (Cholesky has no such guard; Newton-Schulz needs none.)
    x = f32(rng.standard_normal((N, 3)) @ rng.standard_normal((3, DIM)))
    assert np.isfinite(np.asarray(group_whiten(x, groups=2, eps=1e-6))).all()


# ---------------------------------------------------------------- shards, dtypes, jit


def test_num_shards_whitens_each_block_separately(rng):
    x = f32(correlated(rng, N, DIM))
    y = np.asarray(group_whiten(x, groups=2, num_shards=2))
    halves = np.concatenate([np_group_zca(np.asarray(x[:32]), 2), np_group_zca(np.asarray(x[32:]), 2)])
    np.testing.assert_allclose(y, halves, atol=2e-4)
    assert np.abs(y - np.asarray(group_whiten(x, groups=2))).max() > 0.01


def test_bfloat16_input_keeps_float32_statistics(rng):
    x = jnp.asarray(correlated(rng, N, DIM), jnp.bfloat16)
    ys = jax.jit(lambda x: [group_whiten(x, groups=2, method=m, ns_iters=NS_CONVERGED) for m in WHITENING_METHODS])(x)
    for method, y in zip(WHITENING_METHODS, ys):
        assert y.dtype == jnp.bfloat16
        assert np.isfinite(np.asarray(y, np.float32)).all()
        # the same float32 computation on the (exactly representable) upcast input, rounded once
        ref = group_whiten(x.astype(jnp.float32), groups=2, method=method, ns_iters=NS_CONVERGED)
        np.testing.assert_allclose(np.asarray(y, np.float32), np.asarray(ref), rtol=1e-2, atol=1e-2)
    np.testing.assert_allclose(np.asarray(ys[0], np.float64), np_group_zca(np.asarray(x, np.float64), 2),
                               rtol=1e-2, atol=2e-2)


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize("shape,kwargs,match", [
    ((16, 16), dict(groups=5), "groups=5 must be a positive divisor of the embedding dim 16"),
    ((16, 16), dict(groups=0), "groups=0"),
    ((1, 16), dict(groups=16), "at least 2 rows"),
    ((8, 16), dict(groups=1),
     r"batch N=8 too small for groups of d=16 channels.*use more groups, a larger batch or eps>0"),
    ((16, 16), dict(groups=1), "batch N=16 too small"),  # N = d: centred rank N-1 < d
    ((16, 16), dict(groups=2, method="pca"), "method='pca' is unknown; choose one of zca, cholesky, newton_schulz"),
    ((16, 16), dict(groups=2, num_shards=3), "num_shards=3 must be a positive divisor of the batch size 16"),
    ((16, 16), dict(groups=2, num_shards=2), r"per-shard batch N=16/2=8 too small for groups of d=8"),
    ((16, 16), dict(groups=2, eps=-0.1), r"eps must be in \[0, 1\]"),
    ((16, 16), dict(groups=2, method="newton_schulz", ns_iters=0), "ns_iters must be >= 1"),
    ((4, 4, 4), dict(groups=2), r"x must have shape \[batch, dim\]"),
])
def test_errors(shape, kwargs, match):
    with pytest.raises(ValueError, match=match):
        group_whiten(jnp.zeros(shape), **kwargs)


def test_errors_are_raised_at_trace_time():
    with pytest.raises(ValueError, match="too small for groups"):
        jax.jit(functools.partial(group_whiten, groups=1)).lower(jax.ShapeDtypeStruct((8, 16), jnp.float32))
    with pytest.raises(ValueError, match="groups=3"):
        jax.jit(functools.partial(shuffled_group_whiten, groups=3)).lower(
            jax.ShapeDtypeStruct((32, 16), jnp.float32), jax.random.key(0))
    # shrinkage makes the small batch legal
    jax.jit(functools.partial(group_whiten, groups=1, eps=0.1)).lower(jax.ShapeDtypeStruct((8, 16), jnp.float32))


def test_whitening_matrix_errors():
    with pytest.raises(ValueError, match="unknown"):
        whitening_matrix(jnp.eye(4), method="svd")
    with pytest.raises(ValueError, match=r"cov must have shape \[groups, d, d\]"):
        whitening_matrix(jnp.ones((4, 3)))


# ---------------------------------------------------------------- post-hoc BERT-whitening


def test_bert_whitening_matches_svd_formula(rng):
    x = correlated(rng, 300, 12)
    mu, w = bert_whitening(x)
    assert mu.shape == (12,) and w.shape == (12, 12) and w.dtype == np.float64
    y = apply_whitening(x, mu, w)
    np.testing.assert_allclose(np_cov(y), np.eye(12), atol=1e-10)
    # Su et al.'s recipe: U, s, _ = svd(cov); W = U diag(1/√s). Columns' signs are arbitrary, so
    # compare the sign-invariant Gram matrix of the top-k outputs.
    u, s, _ = np.linalg.svd(np_cov(x))
    k = 4
    ref = (x - x.mean(0)) @ (u / np.sqrt(s))[:, :k]
    mu, w = bert_whitening(x, k=k)
    yk = apply_whitening(x, mu, w)
    assert yk.shape == (300, k)
    np.testing.assert_allclose(yk @ yk.T, ref @ ref.T, atol=1e-8)
    np.testing.assert_allclose(np.asarray(apply_whitening(f32(x), mu, w)), yk, atol=1e-3)


def test_bert_whitening_shrinkage_and_errors(rng):
    x = rng.standard_normal((5, 8))  # rank 4 covariance
    with pytest.raises(ValueError, match="only 4 non-negligible eigenvalues, fewer than k=8"):
        bert_whitening(x)
    mu, w = bert_whitening(x, k=4)
    np.testing.assert_allclose(np_cov(apply_whitening(x, mu, w)), np.eye(4), atol=1e-8)
    mu, w = bert_whitening(x, eps=0.1)
    shrunk = 0.9 * np_cov(x) + 0.1 * np.eye(8)
    np.testing.assert_allclose(w.T @ shrunk @ w, np.eye(8), atol=1e-10)
    for k in (0, 9):
        with pytest.raises(ValueError, match=f"k={k} must be in"):
            bert_whitening(x, k=k)
    with pytest.raises(ValueError, match="embeddings must have shape"):
        bert_whitening(x[:1])
