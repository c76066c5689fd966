"""Chunked LM-head log-probs equal the direct log_softmax-and-gather, values and gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxalign.ops.logprobs import completion_logps, token_logps


def direct(hidden, unembed, targets):
    logp = jax.nn.log_softmax(hidden @ unembed, axis=-1)
    return jnp.take_along_axis(logp, targets[..., None], -1)[..., 0]


@pytest.mark.parametrize("chunk", [1, 4, 7, 64])
def test_chunked_equals_direct(chunk):
    k = jax.random.split(jax.random.PRNGKey(0), 3)
    hidden = jax.random.normal(k[0], (3, 10, 8))
    unembed = jax.random.normal(k[1], (8, 50))
    targets = jax.random.randint(k[2], (3, 10), 0, 50)
    np.testing.assert_allclose(token_logps(hidden, unembed, targets, chunk=chunk), direct(hidden, unembed, targets),
                               rtol=1e-5, atol=1e-5)
    g = jax.grad(lambda h, w: token_logps(h, w, targets, chunk=chunk).sum(), argnums=(0, 1))(hidden, unembed)
    g_ref = jax.grad(lambda h, w: direct(h, w, targets).sum(), argnums=(0, 1))(hidden, unembed)
    for a, b in zip(g, g_ref):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_completion_logps_counts_completion_tokens_only():
    k = jax.random.split(jax.random.PRNGKey(1), 3)
    hidden = jax.random.normal(k[0], (2, 6, 4))
    unembed = jax.random.normal(k[1], (4, 11))
    ids = jax.random.randint(k[2], (2, 6), 0, 11)
    mask = jnp.array([[0, 0, 1, 1, 1, 0], [0, 1, 1, 0, 0, 0]])
    out = completion_logps(hidden, unembed, ids, mask, chunk=4, log_sum_sq=True)
    full = np.asarray(direct(hidden[:, :-1], unembed, ids[:, 1:]))
    # token t is predicted at position t-1
    np.testing.assert_allclose(out.summed, [full[0, 1:4].sum(), full[1, 0:2].sum()], rtol=1e-5)
    np.testing.assert_array_equal(out.lengths, [3, 2])
    assert out.per_token.shape == (2, 5) and float(out.per_token[0, 0]) == 0.0
    # WPO's log Σ_v p_v² at every position
    p = np.asarray(jax.nn.softmax(hidden[:, :-1] @ unembed, axis=-1), np.float64)
    np.testing.assert_allclose(out.log_sum_sq, np.log((p ** 2).sum(-1)), rtol=1e-5, atol=1e-6)
