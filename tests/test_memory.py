"""Each array of a run is held once: the train state takes over the task's parameters (donated,
not copied), a frozen reference that is the initial policy stays the one extra copy, and TR-DPO's
tracked reference is a real copy of the policy (the step donates the state). Counted with
``jax.live_arrays()`` on a tiny random Llama."""

import gc

import jax
import numpy as np
import pytest
import test_overoptimisation
from test_overoptimisation import tiny_config

from jaxalign.training.trainer import Run

tiny = test_overoptimisation.tiny  # the tiny random Llama and its preference data (a module fixture)

NO_EVAL = ["eval.data=null", "steps=2"]


def live_bytes() -> int:
    """Bytes of the distinct device buffers alive (two arrays may view one buffer)."""
    gc.collect()
    return sum({x.unsafe_buffer_pointer(): x.nbytes for x in jax.live_arrays()}.values())


def tree_bytes(tree) -> int:
    return sum(x.nbytes for x in jax.tree.leaves(tree))


def pointers(tree) -> set[int]:
    return {x.unsafe_buffer_pointer() for x in jax.tree.leaves(tree)}


# (overrides, how many copies of the policy's parameters the run holds besides the optimiser's)
CASES = {
    "precomputed reference": (["objective.reference=precomputed"], 1),
    "reference-free (SimPO)": (["objective.name=simpo"], 1),
    "reference is the initial policy": (["objective.reference=model"], 2),
    "TR-DPO tracked reference": (["objective.sync_ref_model=true", "objective.ref_model_sync_steps=1"], 2),
}


@pytest.mark.parametrize("case", list(CASES))
def test_the_state_holds_the_parameters_once(tiny, tmp_path, case):
    overrides, copies = CASES[case]
    cfg = tiny_config(tiny, *NO_EVAL, f"checkpoint.dir={tmp_path}", *overrides)
    before = live_bytes()
    run = Run.build(cfg, devices=jax.devices()[:1])
    policy = tree_bytes(run.task.params)
    assert policy > 0
    with jax.set_mesh(run.mesh):
        state = run.init_state()
    assert run.task.params is None and run.task.tracked is None
    held = live_bytes() - before
    # Adam's two moments, plus the policy ``copies`` times (a tiny remainder: step counters, key).
    expected = 2 * policy + copies * policy
    assert expected <= held <= expected + 1024, (held, expected, policy)
    assert held == tree_bytes(state) + tree_bytes(run.task.frozen) - tree_bytes(
        [x for x in jax.tree.leaves(run.task.frozen) if x.unsafe_buffer_pointer() in pointers(state)])
    if state.tracked:
        assert not pointers(state.tracked) & pointers(state.params)
        np.testing.assert_array_equal(*(np.concatenate([np.ravel(x) for x in jax.tree.leaves(t)])
                                        for t in (state.tracked["reference"], state.params["policy"])))
    if "reference" in run.task.frozen:
        assert not pointers(run.task.frozen["reference"]) & pointers(state.params)
    step = run.step_fn()
    with jax.set_mesh(run.mesh):
        for n in range(2):
            state, metrics = step(state, run.next_batch(n), run.task.frozen)
    assert np.isfinite(float(metrics["loss"]))
    assert live_bytes() - before <= expected + 1024  # the step's donated state is not kept either


def test_a_second_state_from_one_run_is_refused(tiny, tmp_path):
    run = Run.build(tiny_config(tiny, *NO_EVAL), devices=jax.devices()[:1])
    with jax.set_mesh(run.mesh):
        run.init_state()
        with pytest.raises(RuntimeError, match="build a new Run"):
            run.init_state()
