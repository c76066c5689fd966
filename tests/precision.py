"""Float64 in tests: formula checks run in JAX with x64 on, so float64 NumPy inputs stay float64."""

import functools

import jax


def x64(fn):
    """Runs the decorated test with float64 enabled in JAX."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with jax.enable_x64(True):
            return fn(*args, **kwargs)

    return wrapper
