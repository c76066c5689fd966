"""Pooling modes against direct NumPy computations, in float64 where it matters."""

import jax.numpy as jnp
import numpy as np
import pytest

from jaxalign.ops.pooling import PoolingConfig, pool

RNG = np.random.default_rng(0)
B, T, H, L = 3, 5, 4, 4
HIDDEN = [RNG.normal(size=(B, T, H)).astype(np.float32) for _ in range(L)]
# right padding, left padding, no padding
MASK = np.array([[1, 1, 1, 0, 0], [0, 0, 1, 1, 1], [1, 1, 1, 1, 1]], np.int32)


def ref_mean(h, m):
    return np.stack([h[b][m[b] > 0].mean(0) for b in range(B)])


@pytest.mark.parametrize(
    "cfg, expect",
    [
        (PoolingConfig("mean"), ref_mean(HIDDEN[-1], MASK)),
        (PoolingConfig("max"), np.stack([HIDDEN[-1][b][MASK[b] > 0].max(0) for b in range(B)])),
        (PoolingConfig("cls"), HIDDEN[-1][:, 0]),
        (PoolingConfig("cls_before_pooler"), HIDDEN[-1][:, 0]),
        (PoolingConfig("last"), np.stack([HIDDEN[-1][0, 2], HIDDEN[-1][1, 4], HIDDEN[-1][2, 4]])),
        (PoolingConfig("mean", layer=1), ref_mean(HIDDEN[1], MASK)),
        (PoolingConfig("mean_top_k", top_k=2), (ref_mean(HIDDEN[-1], MASK) + ref_mean(HIDDEN[-2], MASK)) / 2),
        (PoolingConfig("concat_top_k", top_k=2, layer=2), np.concatenate([ref_mean(HIDDEN[1], MASK), ref_mean(HIDDEN[2], MASK)], -1)),
        (PoolingConfig("mean_first_last"), (ref_mean(HIDDEN[1], MASK) + ref_mean(HIDDEN[-1], MASK)) / 2),
    ],
    ids=lambda c: c.mode if isinstance(c, PoolingConfig) else "",
)
def test_modes(cfg, expect):
    out = pool([jnp.asarray(h) for h in HIDDEN], jnp.asarray(MASK), cfg)
    np.testing.assert_allclose(np.asarray(out), expect, rtol=1e-6, atol=1e-6)


def test_pad_values_do_not_leak():
    poisoned = [h.copy() for h in HIDDEN]
    poisoned[-1][MASK == 0] = 1e6
    for mode in ("mean", "max", "last"):
        a = pool(HIDDEN, MASK, PoolingConfig(mode))
        b = pool(poisoned, MASK, PoolingConfig(mode))
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6)


def test_matryoshka_truncate_then_normalize():
    out = np.asarray(pool(HIDDEN, MASK, PoolingConfig("mean", truncate_dim=2, normalize=True)))
    ref = ref_mean(HIDDEN[-1], MASK)[:, :2]
    np.testing.assert_allclose(out, ref / np.linalg.norm(ref, axis=-1, keepdims=True), rtol=1e-6)
    with pytest.raises(ValueError, match="exceeds the embedding size"):
        pool(HIDDEN, MASK, PoolingConfig("mean", truncate_dim=H + 1))


def test_pooler_output_and_errors():
    pooled = RNG.normal(size=(B, H)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(pool(HIDDEN, MASK, PoolingConfig("cls_pooler"), pooled)), pooled)
    with pytest.raises(ValueError, match="needs a checkpoint with a pooler"):
        pool(HIDDEN, MASK, PoolingConfig("cls_pooler"))
    with pytest.raises(ValueError, match="unknown"):
        PoolingConfig("median")
    with pytest.raises(ValueError, match="out of range"):
        pool(HIDDEN, MASK, PoolingConfig("mean", layer=L))
