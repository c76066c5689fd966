"""Multi-process training equals the one-process run: real processes joined by
``jax.distributed`` on 127.0.0.1 (2 x 2 and 4 x 1 devices against 1 x 4), with data whose
length buckets differ between the processes' slices of a batch (the case that once made
processes compile different programs and compute silently wrong losses). A checkpoint
written by 2 processes on mesh (4, 1, 1) resumes on 1 process with mesh (1, 2, 2) and on 4
processes, continuing the uninterrupted run."""

import json
import shutil

import numpy as np
import pytest

from mp_harness import train_scenarios

WORDS = "the quick brown fox jumps over a lazy dog while seven tired cats watch from an old red barn".split()


def long_sentence(i: int) -> str:
    return " ".join(WORDS[(i + k) % len(WORDS)] for k in range(22)) + f" {i}"


def short_sentence(i: int) -> str:
    return f"item {i} here"


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Unshuffled data whose batches put the long rows in the first processes' slices."""
    root = tmp_path_factory.mktemp("mp-data")
    # Batches of 8: [4 long + 4 short], [8 short], [2 long + 6 short].
    kinds = "LLLLSSSS" + "SSSSSSSS" + "LLSSSSSS"
    sentences = [long_sentence(i) if k == "L" else short_sentence(i) for i, k in enumerate(kinds)]
    (root / "sentences.txt").write_text("\n".join(sentences) + "\n")
    # Preference batches of 4: [2 long + 2 short], [4 short], [1 long + 3 short].
    kinds = "LLSS" + "SSSS" + "LSSS"
    rows = [{"prompt": (long_sentence(i) if k == "L" else short_sentence(i)) + "?",
             "chosen": f" yes, {i}.", "rejected": f" no {i} never, not at all."} for i, k in enumerate(kinds)]
    (root / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


# Adam with eps far below |g| turns rounding noise in a gradient that is ~0 (attention key
# biases: their exact gradient is 0, softmax ignores a per-query constant) into full-size steps
# of random sign; eps=1e-3 keeps each update a smooth function of its gradient, so comparing
# parameters measures the run, not Adam's amplification of rounding.
ADAM = "optim.eps=1e-3"


def contrastive(data, name: str, *extra: str) -> dict:
    return {"name": name, "overrides": [
        "model.num_layers=1", "model.max_length=32", f"data.path={data / 'sentences.txt'}", "data.batch_size=8",
        "data.buckets=[8,16,32]", "data.shuffle=false", "eval.data=null", "log.every=1", "steps=3", "optim.lr=1e-3",
        "optim.schedule=constant", ADAM, *extra]}


def preference(data, name: str, *extra: str) -> dict:
    return {"name": name, "overrides": [
        "model.name=SmolLM2-135M-Instruct", "model.num_layers=1", "model.max_length=48", "data.kind=preference",
        f"data.path={data / 'pairs.jsonl'}", "data.batch_size=4", "data.buckets=[16,32,48]", "data.shuffle=false",
        "objective.name=dpo", "eval.data=null", "log.every=1", "steps=3", "optim.lr=1e-4",
        "optim.schedule=constant", ADAM, *extra]}


def scenarios(data, run_dir) -> list[dict]:
    return [
        contrastive(data, "simcse"),
        contrastive(data, "whitenedcse", "objective.name=whitenedcse", "objective.whitening.groups=48",
                    "objective.whitening.eps=0.1"),
        contrastive(data, "gradcache", "objective.cache_chunk=4"),
        preference(data, "dpo"),
        # Reference log-probs computed once before training, split over the processes; each run
        # computes its own (the cache lives in its checkpoint directory).
        preference(data, "dpo-precomputed", "objective.reference=precomputed", f"checkpoint.dir={run_dir}/ckpt",
                   "checkpoint.every=100"),
        preference(data, "dpo-lora", "model.lora.rank=4"),
    ]


# 2 x 2 first: it writes the checkpoint that the other topologies resume.
TOPOLOGIES = {"2x2": (2, 2), "1x4": (1, 4), "4x1": (4, 1)}
# 2 x 2 runs every scenario; 4 x 1 (four processes compiling at once on a 2-core CI machine,
# twice the cost) one of each data kind, with slices of one device each.
ON_4X1 = ("simcse", "dpo")
CASES = [(s, "2x2") for s in ("simcse", "whitenedcse", "gradcache", "dpo", "dpo-precomputed", "dpo-lora")] + [
    (s, "4x1") for s in ON_4X1]
RESUME_MESH = {"1x4": ["mesh.data=1", "mesh.fsdp=2", "mesh.tensor=2"], "4x1": []}


@pytest.fixture(scope="module")
def runs(data, tmp_path_factory):
    out = {}
    written = tmp_path_factory.mktemp("mp-checkpoint") / "ckpt"
    for name, (procs, devices) in TOPOLOGIES.items():
        root = tmp_path_factory.mktemp(f"mp-{name}")
        todo = [s for s in scenarios(data, root) if name != "4x1" or s["name"] in ON_4X1]
        if name == "2x2":  # the first step of "simcse", checkpointed
            todo.append({**contrastive(data, "simcse-stopped", f"checkpoint.dir={written}", "checkpoint.every=100"),
                         "stop_at": 1})
        else:  # its continuation, from a copy of that checkpoint, on another process count and mesh
            shutil.copytree(written, root / "resumed")
            todo.append(contrastive(data, "simcse-resumed", f"checkpoint.dir={root / 'resumed'}", "checkpoint.every=100",
                                    *RESUME_MESH[name]))
        out[name] = train_scenarios(todo, root / "out", procs, devices)
    return out


def test_data_puts_different_buckets_in_different_slices(data):
    """The premise: with per-slice buckets, process 0 and process 1 would pad differently."""
    from jaxalign.data.stream import BatchStream, Tokenized
    from jaxalign.inference.embed import bucket_length
    from jaxalign.models import load_encoder

    sentences = [(s,) for s in (data / "sentences.txt").read_text().splitlines()]
    tokens = Tokenized(load_encoder("all-MiniLM-L6-v2").tokenizer, sentences, 1, 32)
    stream = BatchStream(sentences, 8, shuffle=False, process_index=0, process_count=2)
    batch = stream.next()
    lengths = [bucket_length(max(len(tokens.ids[ex[0]]) for ex in batch[i * 4:(i + 1) * 4]), (8, 16, 32), 32)
               for i in range(2)]
    assert lengths[0] != lengths[1], lengths


@pytest.mark.parametrize("scenario, topology", CASES, ids=[f"{s}-{t}" for s, t in CASES])
def test_multi_process_run_equals_one_process(runs, scenario, topology):
    one, many = runs["1x4"][scenario], runs[topology][scenario]
    assert len(one["losses"]) == 3 and np.all(np.isfinite(one["losses"]))
    np.testing.assert_allclose(many["losses"], one["losses"], rtol=1e-5)
    assert not np.allclose(one["losses"][0], one["losses"][-1], rtol=1e-4), "training must move the loss"
    assert_params_close(many["params"], one["params"])


def assert_params_close(got: dict, want: dict, rtol: float = 1e-5) -> None:
    """Each tensor within ``rtol`` of the reference, in norm."""
    assert got.keys() == want.keys()
    for key, ref in want.items():
        err = np.linalg.norm(got[key] - ref) / max(np.linalg.norm(ref), 1e-12)
        assert err <= rtol, f"{key}: relative error {err:.2e}"


@pytest.mark.parametrize("topology", ["1x4", "4x1"])
def test_checkpoint_of_two_processes_resumes_on_other_topologies(runs, topology):
    """Written by 2 processes on mesh (4, 1, 1); resumed on 1 process with mesh (1, 2, 2) and on
    4 processes: the continuation is the uninterrupted run's, batches included (the data
    position is global)."""
    uninterrupted = runs["1x4"]["simcse"]
    np.testing.assert_allclose(runs["2x2"]["simcse-stopped"]["losses"], uninterrupted["losses"][:1], rtol=1e-5)
    resumed = runs[topology]["simcse-resumed"]
    np.testing.assert_allclose(resumed["losses"], uninterrupted["losses"][1:], rtol=1e-5)
    assert_params_close(resumed["params"], uninterrupted["params"])
