"""Comparing parameter trees in tests."""

import jax
import numpy as np


def assert_trees_close(a, b, rtol=1e-5):
    """Every leaf within ``rtol`` relative error in norm, ``‖a - b‖ / ‖b‖``. Leaves whose exact
    gradient is zero (the attention key bias: softmax ignores a per-query constant) hold only
    rounding noise, so an absolute floor far below any real gradient (1e-8 of the largest
    leaf norm) applies."""
    norms = [float(np.linalg.norm(y)) for y in jax.tree.leaves(b)]
    floor = 1e-8 * max(norms)
    for (path, x), y, norm in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b), norms):
        err = float(np.linalg.norm(np.asarray(x) - np.asarray(y)))
        assert err <= rtol * norm + floor, (jax.tree_util.keystr(path), err / max(norm, 1e-30))
