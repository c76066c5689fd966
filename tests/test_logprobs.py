"""Chunked LM-head log-probs equal the direct log_softmax-and-gather, values and gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxalign.ops.logprobs import LOGIT_BYTES, completion_logps, logits_chunk, token_logps


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


def test_whole_logits_equal_chunked_in_float64_without_recomputation():
    """The memory budget's two paths, whole logits (one chunk, not rematerialised) and chunks
    (rematerialised), give the same log-probs, WPO term and gradients; only the chunked one runs
    the LM-head matmul again in the backward pass (4 matmuls against 3)."""
    with jax.enable_x64(True):
        k = jax.random.split(jax.random.PRNGKey(2), 3)
        hidden = jax.random.normal(k[0], (3, 10, 8), jnp.float64)
        unembed = jax.random.normal(k[1], (8, 50), jnp.float64)
        targets = jax.random.randint(k[2], (3, 10), 0, 50)

        def run(chunk):
            f = lambda h, w: token_logps(h, w, targets, chunk=chunk, log_sum_sq=True)
            (lp, lss), grads = f(hidden, unembed), jax.grad(lambda h, w: f(h, w)[0].sum(), argnums=(0, 1))(hidden,
                                                                                                            unembed)
            jaxpr = str(jax.make_jaxpr(jax.grad(lambda h, w: f(h, w)[0].sum(), argnums=(0, 1)))(hidden, unembed))
            return lp, lss, grads, jaxpr.count("dot_general")

        whole, chunked = run(10), run(3)
        for a, b in zip([whole[0], whole[1], *whole[2]], [chunked[0], chunked[1], *chunked[2]]):
            assert a.dtype == jnp.float64
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(whole[0], direct(hidden, unembed, targets), rtol=1e-12)
        assert (whole[3], chunked[3]) == (3, 4)


def test_logits_chunk_follows_the_memory_budget():
    need = 8 * 255 * 49152 * LOGIT_BYTES / 2**20  # MiB for SmolLM2's 4 pairs x 256 tokens
    assert logits_chunk(8, 255, 49152, chunk=64, memory_mb=need) == 255  # fits: whole, no recomputation
    assert logits_chunk(8, 255, 49152, chunk=64, memory_mb=need - 1) == 64
    assert logits_chunk(8, 255, 49152, chunk=64, memory_mb=0) == 64  # 0: always chunked


def test_completion_window_equals_every_position_in_float64():
    """With no completion longer than ``window``, the LM head on the window's positions only gives
    the same summed log-probs, WPO term and gradients as on every position: prompts of different
    lengths, a completion ending at the last token (its window moved left), one mid-row, and a row
    without completion tokens."""
    with jax.enable_x64(True):
        k = jax.random.split(jax.random.PRNGKey(3), 3)
        hidden = jax.random.normal(k[0], (4, 12, 8), jnp.float64)
        unembed = jax.random.normal(k[1], (8, 30), jnp.float64)
        ids = jax.random.randint(k[2], (4, 12), 0, 30)
        mask = np.zeros((4, 12), np.int32)
        mask[0, 3:7] = 1  # 4 tokens after a 3-token prompt
        mask[1, 9:12] = 1  # 3 tokens ending at the last one: the window moves left into the prompt
        mask[2, 1:5] = 1
        window = 4

        def sums(h, w, win):
            out = completion_logps(h, w, ids, mask, chunk=5, log_sum_sq=True, window=win)
            wpo = (out.log_sum_sq * out.mask).sum(-1)
            return out.summed, out.lengths, wpo, out.per_token.shape[1]

        full, windowed = sums(hidden, unembed, None), sums(hidden, unembed, window)
        assert (full[3], windowed[3]) == (11, window)
        for a, b in zip(full[:3], windowed[:3]):
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
        np.testing.assert_array_equal(windowed[1], [4, 3, 4, 0])
        grad = lambda win: jax.grad(lambda h, w: sums(h, w, win)[0].sum(), argnums=(0, 1))(hidden, unembed)
        for a, b in zip(grad(None), grad(window)):
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
