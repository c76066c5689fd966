"""Contrastive objectives against float64 NumPy references written from their formulas, and against
sentence-transformers' own PyTorch loss code (``compute_loss_from_embeddings``) where it exists."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from precision import x64

from jaxalign.losses.contrastive import (
    angle,
    angle_similarity,
    cosent,
    cosine_similarity_matrix,
    info_nce,
    l2_normalize,
)
from jaxalign.losses.distill import dse_loss, dse_pair_features
from jaxalign.losses.matryoshka import (
    adaptive_layer_loss,
    embedding_kl,
    matryoshka_2d_loss,
    matryoshka_loss,
    similarity_kl,
)

B, K, D = 6, 2, 16

# Compiling dominates this file's runtime, so every loss runs through one jitted value-and-grad
# program per (static flags, shapes, dtypes), with the same keyword set on every call (a different
# set of keywords is a different cache entry). Temperatures, scales and weights are traced: sweeping
# them does not recompile.
_info_nce_vg = jax.jit(jax.value_and_grad(info_nce, argnums=(0, 1, 2)), static_argnames="symmetric")
_cosent_vg = jax.jit(jax.value_and_grad(cosent, argnums=(0, 1)))
_angle_vg = jax.jit(jax.value_and_grad(angle, argnums=(0, 1)))


def jit_info_nce_grad(a, p, n=None, *, temperature=0.05, symmetric=False, hard_negative_weight=0.0):
    return _info_nce_vg(a, p, n, temperature=temperature, symmetric=symmetric,
                        hard_negative_weight=hard_negative_weight)


def jit_info_nce(*args, **kwargs):
    return jit_info_nce_grad(*args, **kwargs)[0]


def jit_cosent(e1, e2, scores, *, scale=20.0):
    return _cosent_vg(e1, e2, scores, scale=scale)


def jit_angle(e1, e2, scores, *, scale=20.0):
    return _angle_vg(e1, e2, scores, scale=scale)

jit_matryoshka_2d = jax.jit(matryoshka_2d_loss, static_argnames=("loss_fn", "dim", "kl_temperature", "kl_over"))


def data(seed, b=B, k=K, d=D):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(b, d)), rng.normal(size=(b, d)), rng.normal(size=(b, k, d))


# ---------------------------------------------------------------- NumPy references (loops, float64)


def np_cos(x, y):
    dot = sum(float(x[t]) * float(y[t]) for t in range(len(x)))
    norm_x = math.sqrt(sum(float(v) ** 2 for v in x))
    norm_y = math.sqrt(sum(float(v) ** 2 for v in y))
    return dot / max(norm_x, 1e-12) / max(norm_y, 1e-12)


def np_logsumexp(values):
    m = max(values)
    return m + math.log(sum(math.exp(v - m) for v in values))


def np_info_nce(a, p, n=None, tau=0.05, w=0.0, symmetric=False, weight_all_negatives=False, interleaved=False):
    """Candidates listed one by one; ``interleaved`` reproduces the P0,N00,N01,P1,... layout bug."""
    b = len(a)
    k = 0 if n is None else n.shape[1]
    if interleaved:
        cands = [(c, owner) for i in range(b) for c, owner in [(p[i], None)] + [(n[i][j], i) for j in range(k)]]
    else:
        cands = [(p[j], None) for j in range(b)] + [(n[i][j], i) for i in range(b) for j in range(k)]
    fwd = 0.0
    for i in range(b):
        logits = []
        for c, owner in cands:
            bonus = w if owner is not None and (owner == i or weight_all_negatives) else 0.0
            logits.append(np_cos(a[i], c) / tau + bonus)
        fwd += np_logsumexp(logits) - logits[i]
    fwd /= b
    if not symmetric:
        return fwd
    bwd = 0.0
    for j in range(b):
        logits = [np_cos(p[j], a[i]) / tau for i in range(b)]
        bwd += np_logsumexp(logits) - logits[j]
    return (fwd + bwd / b) / 2


def np_ranking(sims, y, scale):
    total = 1.0
    for i in range(len(sims)):
        for j in range(len(sims)):
            if y[i] < y[j]:
                total += math.exp(scale * (sims[i] - sims[j]))
    return math.log(total)


def np_cosent(e1, e2, y, scale=20.0):
    return np_ranking([np_cos(e1[i], e2[i]) for i in range(len(e1))], y, scale)


def np_angle_sim(x, y):
    """AnglE's angle difference in complex space: first half real, second half imaginary."""
    if len(x) % 2:
        x, y = np.append(x, 0.0), np.append(y, 0.0)
    h = len(x) // 2
    zx, zy = x[:h] + 1j * x[h:], y[:h] + 1j * y[h:]
    w = sum(zx[t] * np.conj(zy[t]) for t in range(h)) / (np.linalg.norm(x) * np.linalg.norm(y))
    return abs(w.real + w.imag)


def np_angle(e1, e2, y, scale=20.0):
    return np_ranking([np_angle_sim(e1[i], e2[i]) for i in range(len(e1))], y, scale)


def np_kl_rows(teacher_rows, student_rows, temp):
    """Mean over rows of KL(softmax(t/T) || softmax(s/T))."""
    total = 0.0
    for t, s in zip(teacher_rows, student_rows):
        lp = [v / temp - np_logsumexp([u / temp for u in t]) for v in t]
        lq = [v / temp - np_logsumexp([u / temp for u in s]) for v in s]
        total += sum(math.exp(lp[c]) * (lp[c] - lq[c]) for c in range(len(t)))
    return total / len(teacher_rows)


def np_embedding_kl(teacher_cols, student_cols, temp):
    return np_kl_rows(np.concatenate(teacher_cols), np.concatenate(student_cols), temp)


def np_similarity_kl(teacher_cols, student_cols, temp):
    def sims(cols):
        cands = np.concatenate(cols[1:])
        return [[np_cos(a, c) for c in cands] for a in cols[0]]

    return np_kl_rows(sims(teacher_cols), sims(student_cols), temp)


# ---------------------------------------------------------------- sentence-transformers (PyTorch)


@pytest.fixture(scope="module")
def st():
    """sentence-transformers' loss classes; their ``compute_loss_from_embeddings`` needs no model."""
    pytest.importorskip("torch")
    return pytest.importorskip("sentence_transformers.sentence_transformer.losses")


def t64(x):
    import torch

    return torch.tensor(np.asarray(x, np.float64), requires_grad=True)


# ---------------------------------------------------------------- cosine matrix


@x64
def test_cosine_similarity_matrix():
    a, b, _ = data(0)
    out = np.asarray(jax.jit(cosine_similarity_matrix)(jnp.asarray(a), jnp.asarray(b[:4])))
    ref = [[np_cos(a[i], b[j]) for j in range(4)] for i in range(B)]
    np.testing.assert_allclose(out, ref, rtol=1e-12, atol=1e-12)


def test_cosine_similarity_matrix_dtypes_and_zero_rows():
    a, b, _ = data(1)
    a[0] = 0.0
    out = jax.jit(cosine_similarity_matrix)(jnp.asarray(a, jnp.bfloat16), jnp.asarray(b, jnp.bfloat16))
    assert out.dtype == jnp.float32
    assert np.all(np.isfinite(np.asarray(out))) and np.all(np.asarray(out)[0] == 0)
    ref = np.array([[np_cos(a[i], b[j]) for j in range(B)] for i in range(B)])
    np.testing.assert_allclose(np.asarray(out), ref, atol=2e-2)


# ---------------------------------------------------------------- InfoNCE


@x64
@pytest.mark.parametrize("with_negs, symmetric", [(False, False), (True, False), (True, True)])
def test_info_nce_matches_numpy(with_negs, symmetric):
    a, p, n = data(2)
    n = n if with_negs else None
    for tau in (0.05, 0.1, 1.0):
        for w in (0.0, 1.5):
            got = jit_info_nce(jnp.asarray(a), jnp.asarray(p), None if n is None else jnp.asarray(n),
                               temperature=tau, symmetric=symmetric, hard_negative_weight=w)
            ref = np_info_nce(a, p, n, tau=tau, w=w, symmetric=symmetric)
            assert got.dtype == jnp.float64
            np.testing.assert_allclose(float(got), ref, rtol=1e-11, err_msg=f"tau={tau} w={w}")


@x64
def test_hard_negative_weight_applies_to_own_negatives_only():
    a, p, n = data(3)
    got = float(jit_info_nce(jnp.asarray(a), jnp.asarray(p), jnp.asarray(n), hard_negative_weight=2.0))
    np.testing.assert_allclose(got, np_info_nce(a, p, n, w=2.0), rtol=1e-11)
    assert abs(got - np_info_nce(a, p, n, w=2.0, weight_all_negatives=True)) > 1e-3
    assert abs(got - np_info_nce(a, p, n, w=0.0)) > 1e-3


@x64
def test_candidate_order_targets_own_positive():
    """Anchor i equals its positive and is orthogonal to every hard negative: the loss must be ~0.
    The interleaved P,N,N,P,N,N layout would label anchor 1 with anchor 0's hard negative."""
    eye = np.eye(D)
    a = p = eye[:B]
    n = np.stack([[eye[B + (K * i + j) % (D - B)] for j in range(K)] for i in range(B)])  # [B, K, D]
    got = float(jit_info_nce(jnp.asarray(a), jnp.asarray(p), jnp.asarray(n)))
    assert got < 1e-6
    # The naive float64 reference (logsumexp - target, both ~1/τ) is only good to ~1e-15 absolute.
    np.testing.assert_allclose(got, np_info_nce(a, p, n), rtol=1e-9, atol=1e-13)
    assert np_info_nce(a, p, n, interleaved=True) > 10.0


@pytest.mark.torch_ref
@x64
@pytest.mark.parametrize("symmetric", [False, True])
def test_info_nce_and_grads_match_sentence_transformers(st, symmetric):
    """Value and gradient (float64 autograd) against MultipleNegativesRankingLoss. Its candidates are
    ``[P; N_col0; N_col1]``, a different order of the same set, which must not change the loss."""
    import warnings

    a, p, n = data(4)
    tau = 0.05
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        cls = st.MultipleNegativesSymmetricRankingLoss if symmetric else st.MultipleNegativesRankingLoss
        ref_loss = cls(None, scale=1 / tau)
    ta, tp, tn = t64(a), t64(p), t64(n)
    ref = ref_loss.compute_loss_from_embeddings([ta, tp] + [tn[:, j] for j in range(K)], None)
    ref.backward()

    got, grads = jit_info_nce_grad(jnp.asarray(a), jnp.asarray(p), jnp.asarray(n), temperature=tau, symmetric=symmetric)
    np.testing.assert_allclose(float(got), ref.item(), rtol=1e-11)
    for g, t in zip(grads, (ta, tp, tn)):
        np.testing.assert_allclose(np.asarray(g), t.grad.numpy(), rtol=1e-9, atol=1e-12)


@pytest.mark.torch_ref
@x64
def test_info_nce_grads_with_hard_negative_weight_match_simcse_formula():
    """SimCSE's own construction (K = 1): cos / temp, then a weight matrix adding ``w`` to column
    ``B + i`` of row ``i``; differentiated by torch autograd in float64."""
    torch = pytest.importorskip("torch")

    a, p, n = data(5, k=1)
    tau, w = 0.05, 0.7
    ta, tp, tn = t64(a), t64(p), t64(n[:, 0])
    cos = torch.nn.functional.cosine_similarity
    cos_sim = cos(ta[:, None], tp[None, :], dim=-1) / tau
    z1_z3 = cos(ta[:, None], tn[None, :], dim=-1) / tau
    cos_sim = torch.cat([cos_sim, z1_z3], 1)
    weights = torch.tensor([[0.0] * B + [0.0] * i + [w] + [0.0] * (B - i - 1) for i in range(B)], dtype=torch.float64)
    ref = torch.nn.functional.cross_entropy(cos_sim + weights, torch.arange(B))
    ref.backward()

    got, grads = jit_info_nce_grad(jnp.asarray(a), jnp.asarray(p), jnp.asarray(n), temperature=tau,
                                   hard_negative_weight=w)
    np.testing.assert_allclose(float(got), ref.item(), rtol=1e-11)
    for g, t in zip(grads, (ta, tp, tn)):
        np.testing.assert_allclose(np.asarray(g).reshape(t.shape), t.grad.numpy(), rtol=1e-9, atol=1e-12)


@x64
def test_info_nce_grad_matches_finite_differences():
    a, p, n = data(6)
    _, grads = jit_info_nce_grad(jnp.asarray(a), jnp.asarray(p), jnp.asarray(n), temperature=0.1, symmetric=True,
                                 hard_negative_weight=0.5)
    ref = functools.partial(np_info_nce, tau=0.1, w=0.5, symmetric=True)
    rng, h = np.random.default_rng(0), 1e-6
    for which, (x, g) in enumerate(zip((a, p, n), grads)):
        for flat in rng.choice(x.size, size=8, replace=False):
            idx = np.unravel_index(flat, x.shape)
            hi, lo = [a.copy(), p.copy(), n.copy()], [a.copy(), p.copy(), n.copy()]
            hi[which][idx] += h
            lo[which][idx] -= h
            np.testing.assert_allclose(float(g[idx]), (ref(*hi) - ref(*lo)) / (2 * h), rtol=1e-5, atol=1e-8)


def test_info_nce_float32():
    """float32 in, float32 out (bfloat16 inputs: ``test_matryoshka_2d_jit_traced_layer_and_detached_teacher``)."""
    a, p, n = data(7, b=16)
    got = jit_info_nce(*(jnp.asarray(x, jnp.float32) for x in (a, p, n)), hard_negative_weight=0.5)
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(float(got), np_info_nce(a, p, n, w=0.5), rtol=1e-5)


def test_info_nce_sharded_batch_matches_unsharded():
    """With the batch split over 8 devices, the candidates are still the global batch and every
    shard gets its gradient."""
    devices = np.array(jax.devices()[:8])
    if len(devices) < 8:
        pytest.skip("needs 8 (simulated) devices")
    mesh = jax.sharding.Mesh(devices, ("data",))
    spec = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    a, p, n = (jnp.asarray(x, jnp.float32) for x in data(8, b=16))
    ref_loss, ref_grads = jit_info_nce_grad(a, p, n, hard_negative_weight=0.5)
    sharded = [jax.device_put(x, spec) for x in (a, p, n)]
    loss, grads = jit_info_nce_grad(*sharded, hard_negative_weight=0.5)
    np.testing.assert_allclose(float(loss), float(ref_loss), rtol=1e-6)
    for g, r in zip(grads, ref_grads):
        assert len(g.sharding.device_set) == 8
        np.testing.assert_allclose(np.asarray(g), np.asarray(r), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(float(loss), np_info_nce(*data(8, b=16), w=0.5), rtol=1e-5)


# ---------------------------------------------------------------- CoSENT and AnglE

SCORES = np.array([0.1, 0.9, 0.5, 0.5, 0.0, 1.0])  # includes a tie, which must form no pair


@x64
@pytest.mark.parametrize("dim", [16, 7])
def test_cosent_and_angle_match_numpy(dim):
    e1, e2, _ = data(9, d=dim)
    args = jnp.asarray(e1), jnp.asarray(e2), jnp.asarray(SCORES)
    for scale in (1.0, 20.0):
        for fn, ref in ((jit_cosent, np_cosent), (jit_angle, np_angle)):
            np.testing.assert_allclose(float(fn(*args, scale=scale)[0]), ref(e1, e2, SCORES, scale), rtol=1e-11)


@x64
def test_ranking_loss_without_ordered_pairs_is_zero():
    e1, e2, _ = data(10)
    loss, grads = jit_cosent(jnp.asarray(e1), jnp.asarray(e2), jnp.ones(B))
    assert float(loss) == 0.0
    assert all(np.all(np.asarray(g) == 0) for g in grads)


@x64
def test_angle_similarity_matches_complex_division():
    e1, e2, _ = data(11, d=7)  # odd: one zero channel is padded
    got = np.asarray(jax.jit(angle_similarity)(jnp.asarray(e1), jnp.asarray(e2)))
    np.testing.assert_allclose(got, [np_angle_sim(e1[i], e2[i]) for i in range(B)], rtol=1e-12)


@pytest.mark.torch_ref
@x64
@pytest.mark.parametrize("name", ["CoSENTLoss", "AnglELoss"])
@pytest.mark.parametrize("dim", [16, 7])
def test_cosent_and_angle_match_sentence_transformers(st, name, dim):
    import torch

    e1, e2, _ = data(12, d=dim)
    ref_loss = getattr(st, name)(None, scale=20.0)
    t1, t2 = t64(e1), t64(e2)
    ref = ref_loss.compute_loss_from_embeddings([t1, t2], torch.tensor(SCORES))
    ref.backward()
    fn = {"CoSENTLoss": jit_cosent, "AnglELoss": jit_angle}[name]
    got, (g1, g2) = fn(jnp.asarray(e1), jnp.asarray(e2), jnp.asarray(SCORES))
    np.testing.assert_allclose(float(got), ref.item(), rtol=1e-11)
    np.testing.assert_allclose(np.asarray(g1), t1.grad.numpy(), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(np.asarray(g2), t2.grad.numpy(), rtol=1e-9, atol=1e-12)


def test_cosent_and_angle_jit_bf16():
    e1, e2, _ = data(13)
    for fn, ref in ((jit_cosent, np_cosent), (jit_angle, np_angle)):
        got, _ = fn(jnp.asarray(e1, jnp.bfloat16), jnp.asarray(e2, jnp.bfloat16), jnp.asarray(SCORES, jnp.bfloat16))
        assert got.dtype == jnp.float32
        np.testing.assert_allclose(float(got), ref(e1, e2, SCORES), rtol=5e-2)


# ---------------------------------------------------------------- Matryoshka


@x64
def test_matryoshka_loss_dims_and_weights():
    a, p, n = data(14)
    dims = (16, 8, 4)
    run = jax.jit(lambda cols, weights: matryoshka_loss(info_nce, cols, dims=dims, weights=weights))
    for weights in ((1.0, 0.5, 0.25), (1.0, 1.0, 1.0)):
        got = run([jnp.asarray(a), jnp.asarray(p), jnp.asarray(n)], jnp.asarray(weights))
        ref = sum(w * np_info_nce(a[:, :d], p[:, :d], n[..., :d]) for d, w in zip(dims, weights))
        np.testing.assert_allclose(float(got), ref, rtol=1e-11)


def test_matryoshka_truncation_renormalises_and_default_weights():
    """Truncated columns reach the base loss with unit norm, as sentence-transformers' ``shrink``;
    without weights every dim counts once."""
    a, p, _ = data(15)
    seen = []

    def base(x, y):
        seen.append(np.asarray(x))
        return jnp.sum(x * y)

    got = matryoshka_loss(base, [jnp.asarray(a, jnp.float32), jnp.asarray(p, jnp.float32)], dims=(4, 2))
    np.testing.assert_allclose(seen[0], a[:, :4] / np.linalg.norm(a[:, :4], axis=-1, keepdims=True), rtol=1e-5)
    ref = sum(np_cos(a[i, :d], p[i, :d]) for d in (4, 2) for i in range(B))
    np.testing.assert_allclose(float(got), ref, rtol=1e-5)


def test_matryoshka_argument_checks():
    a, p, _ = data(16)
    cols = [jnp.asarray(a), jnp.asarray(p)]
    with pytest.raises(ValueError, match="embedding size"):
        matryoshka_loss(info_nce, cols, dims=(32,))
    with pytest.raises(ValueError, match="same length"):
        matryoshka_loss(info_nce, cols, dims=(8, 4), weights=(1.0,))


@x64
def test_matryoshka_2d_formula():
    """L = L(last) + L(n)/n + w·T·KL + L(last, :d) + L(n, :d)/n with n = 3, d = 8, T = 0.3."""
    rng = np.random.default_rng(17)
    last = [rng.normal(size=(B, D)) for _ in range(3)]
    sampled = [rng.normal(size=(B, D)) for _ in range(3)]
    n_layer, d, temp, kl_w = 3, 8, 0.3, 0.7

    def base(x, y, z):
        return info_nce(x, y, z[:, None, :])

    loss, metrics = jit_matryoshka_2d(base, [jnp.asarray(x) for x in last], [jnp.asarray(x) for x in sampled],
                                      layer_index=n_layer, dim=d, kl_temperature=temp, kl_weight=kl_w)

    def ref_base(cols, dim=D):
        return np_info_nce(cols[0][:, :dim], cols[1][:, :dim], cols[2][:, None, :dim])

    kl = np_embedding_kl(last, sampled, temp)
    expect = {"last_full": ref_base(last), "layer_full": ref_base(sampled), "last_dim": ref_base(last, d),
              "layer_dim": ref_base(sampled, d), "kl": kl}
    for key, value in expect.items():
        np.testing.assert_allclose(float(metrics[key]), value, rtol=1e-10, err_msg=key)
    total = (expect["last_full"] + expect["layer_full"] / n_layer + kl_w * temp * kl + expect["last_dim"]
             + expect["layer_dim"] / n_layer)
    np.testing.assert_allclose(float(loss), total, rtol=1e-10)


def test_matryoshka_2d_jit_traced_layer_and_detached_teacher():
    """bfloat16 columns, the layer index traced (one compile for every n), the KL over similarity
    matrices, and the last layer a teacher that receives no gradient from the KL term."""
    a, p, _ = data(18)
    a2, p2, _ = data(19)
    last = [jnp.asarray(a, jnp.bfloat16), jnp.asarray(p, jnp.bfloat16)]
    sampled = [jnp.asarray(a2, jnp.bfloat16), jnp.asarray(p2, jnp.bfloat16)]
    for n in (1, 4):
        loss, m = jit_matryoshka_2d(info_nce, last, sampled, layer_index=jnp.int32(n), dim=8, kl_over="similarities")
        assert loss.dtype == jnp.float32
        expect = m["last_full"] + m["last_dim"] + (m["layer_full"] + m["layer_dim"]) / n + 0.3 * m["kl"]
        np.testing.assert_allclose(float(loss), float(expect), rtol=1e-6)
    rounded = [[np.asarray(x, np.float64) for x in cols] for cols in (last, sampled)]
    np.testing.assert_allclose(float(m["kl"]), np_similarity_kl(*rounded, 0.3), rtol=1e-4)
    np.testing.assert_allclose(float(m["last_full"]), np_info_nce(*rounded[0]), rtol=1e-5)  # bf16 in, f32 math

    def kl_only(last, sampled):
        return matryoshka_2d_loss(lambda *c: 0.0, last, sampled, layer_index=2, dim=8)[0]

    g_last, g_sampled = jax.jit(jax.grad(kl_only, argnums=(0, 1)))(last, sampled)
    assert all(np.all(np.asarray(g) == 0) for g in g_last)
    assert all(np.any(np.asarray(g) != 0) for g in g_sampled)


@pytest.mark.torch_ref
@x64
def test_embedding_kl_matches_adaptive_layer_loss_call(st):
    """sentence-transformers' AdaptiveLayerLoss: ``F.kl_div(log_softmax(emb / T), softmax(final / T).detach(),
    reduction="batchmean")`` on the columns' embeddings concatenated along the batch."""
    import torch
    import torch.nn.functional as F

    rng = np.random.default_rng(20)
    teacher = [rng.normal(size=(B, D)) for _ in range(2)]
    student = [rng.normal(size=(B, D)) for _ in range(2)]
    temp = 0.3
    final = F.softmax(torch.tensor(np.concatenate(teacher)) / temp, dim=-1)
    ref = F.kl_div(F.log_softmax(torch.tensor(np.concatenate(student)) / temp, dim=-1), final, reduction="batchmean")
    jt, js = [jnp.asarray(x) for x in teacher], [jnp.asarray(x) for x in student]
    got = jax.jit(embedding_kl, static_argnums=2)(jt, js, temp)
    np.testing.assert_allclose(float(got), ref.item(), rtol=1e-11)
    got_sim = jax.jit(similarity_kl, static_argnums=2)(jt, js, temp)
    np.testing.assert_allclose(float(got_sim), np_similarity_kl(teacher, student, temp), rtol=1e-10)


@x64
@pytest.mark.parametrize("weighting", ["uniform", "linear", "log"])
def test_adaptive_layer_loss(weighting):
    rng = np.random.default_rng(21)
    last = [rng.normal(size=(B, D)) for _ in range(2)]
    layers = [[rng.normal(size=(B, D)) for _ in range(2)] for _ in range(2)]
    idx, temp = (1, 3), 0.3

    def mean_pair_cos(x, y):  # a cheap base loss: this test is about the layer terms around it
        return jnp.mean(jnp.sum(l2_normalize(x) * l2_normalize(y), axis=-1))

    def np_mean_pair_cos(x, y):
        return sum(np_cos(x[i], y[i]) for i in range(len(x))) / len(x)

    run = jax.jit(functools.partial(adaptive_layer_loss, mean_pair_cos, last_layer_weight=1.5, prior_layers_weight=0.5,
                                    kl_weight=2.0, kl_temperature=temp, layer_weighting=weighting))
    got = run([jnp.asarray(x) for x in last], [[jnp.asarray(x) for x in c] for c in layers], jnp.asarray(idx))
    omega = {"uniform": lambda i: 1.0, "linear": lambda i: 1 / (1 + i),
             "log": lambda i: 1 / (1 + math.log(1 + i))}[weighting]
    ref = 1.5 * np_mean_pair_cos(*last)
    for i, cols in zip(idx, layers):
        ref += 0.5 * omega(i) / len(layers) * np_mean_pair_cos(*cols) + 2.0 * temp * np_embedding_kl(last, cols, temp)
    np.testing.assert_allclose(float(got), ref, rtol=1e-10)


# ---------------------------------------------------------------- DSE


@x64
def test_dse_pair_features():
    u, v, _ = data(22)
    got = np.asarray(jax.jit(dse_pair_features)(jnp.asarray(u), jnp.asarray(v)))
    assert got.shape == (B, 4 * D)
    for i in range(B):
        for t in range(D):
            assert got[i, t] == u[i, t] and got[i, D + t] == v[i, t]
            assert got[i, 2 * D + t] == u[i, t] * v[i, t] and got[i, 3 * D + t] == abs(u[i, t] - v[i, t])


def test_dse_pair_features_bf16_in_float32():
    assert dse_pair_features(jnp.ones((2, 3), jnp.bfloat16), jnp.ones((2, 3), jnp.bfloat16)).dtype == jnp.float32


@x64
@pytest.mark.parametrize("shape", [(B,), (B, 3)])
def test_dse_loss(shape):
    rng = np.random.default_rng(23)
    student, teacher = rng.normal(size=shape), rng.normal(size=shape)
    task, alpha = 0.8, 0.3
    sq = [float(s - t) ** 2 for s, t in zip(student.ravel(), teacher.ravel())]
    ref = (1 - alpha) * task + alpha * sum(sq) / len(sq)
    fn = functools.partial(dse_loss, alpha=alpha)
    run = jax.jit(jax.value_and_grad(fn, argnums=(0, 1)))
    got, (g_student, g_teacher) = run(jnp.asarray(student), jnp.asarray(teacher), task)
    np.testing.assert_allclose(float(got), ref, rtol=1e-12)
    np.testing.assert_allclose(np.asarray(g_student), 2 * alpha * (student - teacher) / student.size, rtol=1e-12)
    assert np.all(np.asarray(g_teacher) == 0)
    with pytest.raises(ValueError, match="shape"):
        dse_loss(jnp.zeros((B,)), jnp.zeros((B, 1)), 0.0)
