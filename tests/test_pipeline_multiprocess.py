"""The streaming pipeline in real multi-process runs (``jax.distributed`` on 127.0.0.1, see
``tests/mp_harness.py``): 2 processes x 2 devices streaming from one token cache (one
process builds it, the other waits for it) train exactly as 1 process x 4 devices on the
in-memory path, across an epoch boundary and with shuffling; a checkpoint the streaming run
writes resumes on the in-memory path of another topology."""

import json
import shutil

import numpy as np
import pytest

from mp_harness import train_scenarios

WORDS = "the quick brown fox jumps over a lazy dog while seven tired cats watch from an old red barn".split()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Sentences and preference pairs whose lengths span several buckets."""
    root = tmp_path_factory.mktemp("stream-mp-data")
    text = lambda i: " ".join(WORDS[(i + k) % len(WORDS)] for k in range(1 + (7 * i) % 24)) + f" {i}"
    (root / "sentences.txt").write_text("".join(text(i) + "\n" for i in range(24)))
    rows = [{"prompt": text(i) + "?", "chosen": f" yes, {i}.", "rejected": f" no {i} never."} for i in range(12)]
    (root / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def scenario(data, name: str, pipeline: str, kind: str, *extra: str) -> dict:
    common = ["model.num_layers=1", "eval.data=null", "log.every=1", "steps=5", "optim.lr=1e-3",
              "optim.schedule=constant", f"data.pipeline={pipeline}", f"data.cache_dir={data / 'cache'}"]
    if kind == "contrastive":  # 3 batches of 8 per epoch
        specific = ["model.max_length=32", f"data.path={data / 'sentences.txt'}", "data.batch_size=8",
                    "data.buckets=[8,16,32]"]
    else:  # 3 batches of 4 per epoch
        specific = ["model.name=SmolLM2-135M-Instruct", "model.max_length=48", "data.kind=preference",
                    f"data.path={data / 'pairs.jsonl'}", "data.batch_size=4", "data.buckets=[16,32,48]",
                    "objective.name=dpo", "optim.lr=1e-4"]
    return {"name": name, "overrides": [*common, *specific, *extra]}


@pytest.fixture(scope="module")
def runs(data, tmp_path_factory):
    written = tmp_path_factory.mktemp("stream-mp-ckpt") / "ckpt"
    two = train_scenarios([
        scenario(data, "simcse", "streaming", "contrastive"),
        scenario(data, "dpo", "streaming", "preference"),
        {**scenario(data, "simcse-stopped", "streaming", "contrastive", f"checkpoint.dir={written}",
                    "checkpoint.every=100"), "stop_at": 2},
    ], tmp_path_factory.mktemp("stream-mp-2x2"), 2, 2)
    resumed = tmp_path_factory.mktemp("stream-mp-resume") / "ckpt"
    shutil.copytree(written, resumed)
    one = train_scenarios([
        scenario(data, "simcse", "memory", "contrastive"),
        scenario(data, "dpo", "memory", "preference"),
        scenario(data, "simcse-resumed", "memory", "contrastive", f"checkpoint.dir={resumed}", "checkpoint.every=100"),
    ], tmp_path_factory.mktemp("stream-mp-1x4"), 1, 4)
    return two, one


@pytest.mark.parametrize("name", ["simcse", "dpo"])
def test_two_streaming_processes_train_as_one_in_memory(runs, name):
    two, one = runs
    assert len(one[name]["losses"]) == 5 and np.all(np.isfinite(one[name]["losses"]))
    np.testing.assert_allclose(two[name]["losses"], one[name]["losses"], rtol=1e-5)
    for key, ref in one[name]["params"].items():
        if "['key']['bias']" in key:
            continue  # its gradient is exactly 0 (softmax ignores a per-query constant): Adam amplifies rounding
        err = np.linalg.norm(two[name]["params"][key] - ref) / max(np.linalg.norm(ref), 1e-12)
        assert err <= 1e-5, f"{key}: relative error {err:.2e}"


def test_a_streaming_checkpoint_resumes_in_memory_on_one_process(runs):
    two, one = runs
    np.testing.assert_allclose(two["simcse-stopped"]["losses"], one["simcse"]["losses"][:2], rtol=1e-5)
    np.testing.assert_allclose(one["simcse-resumed"]["losses"], one["simcse"]["losses"][2:], rtol=1e-5)
