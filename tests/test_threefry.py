"""Threefry unrolled on CPU: the same hash (known-answer vector, identical draws), no loop."""

import jax
import jax.numpy as jnp
import numpy as np
from jax._src.random import threefry2x32 as jax_threefry

from jaxalign.ops import threefry


def test_known_answer_and_no_rolled_loop():
    assert threefry.fuse_on_cpu()
    # Salmon et al. (2011), Threefry-2x32 with 20 rounds: the test vector JAX's own tests use.
    key = np.array([0x13198A2E, 0x03707344], np.uint32)
    count = np.array([0x243F6A88, 0x85A308D3], np.uint32)
    out = jax.jit(jax_threefry.threefry_2x32)(key, count)
    np.testing.assert_array_equal(np.asarray(out), np.array([0xC4923A9C, 0x483DF7A0], np.uint32))
    compiled = jax.jit(lambda k: jax.random.bernoulli(k, 0.9, (64, 32))).lower(jax.random.key(0)).compile().as_text()
    assert "while" not in compiled


def test_draws_match_the_rolled_lowering():
    k = jnp.array([7, 11], jnp.uint32)
    x = jnp.arange(2 * 1000, dtype=jnp.uint32).reshape(2, 1000)
    hashed = {rolled: jax.jit(lambda k, x, rolled=rolled: jax_threefry._threefry2x32_lowering(
        k[0], k[1], x[0], x[1], use_rolled_loops=rolled))(k, x) for rolled in (True, False)}
    np.testing.assert_array_equal(np.asarray(hashed[True]), np.asarray(hashed[False]))
