"""SIGTERM and Ctrl-C in a one-process run: the step under way finishes, a checkpoint is saved
(an asynchronous save already under way completes), the run returns saying why, and running
it again continues exactly where the uninterrupted run would be. (Several processes: see
tests/test_multiprocess_cli.py.)"""

import os
import signal

import numpy as np
import pytest

from jaxalign.config import load_recipe
from jaxalign.config.run import TrainConfig
from jaxalign.training.trainer import Run, train

SMALL = ["model.num_layers=1", "model.max_length=16", "data.batch_size=8", "data.buckets=16", "eval.data=null",
         "log.every=1", "steps=6", "checkpoint.every=2"]


def config(tmp_path, *extra) -> TrainConfig:
    return load_recipe(TrainConfig, None, [*SMALL, f"checkpoint.dir={tmp_path}/ckpt", *extra])


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    return train(config(tmp_path_factory.mktemp("whole")), progress=False)["losses"]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_saves_at_the_step_boundary_and_the_rerun_resumes_exactly(tmp_path, monkeypatch, uninterrupted, sig):
    next_batch = Run.next_batch

    def signalled(self, step):  # the signal arrives while step 3 (index 2) is prepared
        if step == 2:
            os.kill(os.getpid(), sig)
        return next_batch(self, step)

    before = signal.getsignal(sig)  # SIG_IGN for SIGINT in a background job (as CI may run us)
    with monkeypatch.context() as m:
        m.setattr(Run, "next_batch", signalled)
        first = train(config(tmp_path), progress=False)
    assert first["stopped_by"] == sig.name and first["steps"] == 3 and "export" not in first
    last = tmp_path / "ckpt" / "last"
    # Step 2's scheduled (asynchronous) save and the stop's save both completed; nothing half-written.
    assert sorted(p.name for p in last.iterdir()) == ["2", "3"]
    assert signal.getsignal(sig) == before  # handlers put back
    second = train(config(tmp_path), progress=False)
    assert second["resumed_from"] == 3 and "stopped_by" not in second
    losses = {**first["losses"], **second["losses"]}
    assert sorted(losses) == list(range(1, 7))
    np.testing.assert_allclose([losses[s] for s in range(1, 7)], [uninterrupted[s] for s in range(1, 7)], rtol=1e-6)
