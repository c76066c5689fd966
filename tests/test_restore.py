"""Alignment restoration (Yang et al., IEEE S&P 2025): the per-step weight choices against
their rules on random vectors, and whole runs on a tiny random Llama (aligned) and a perturbed
copy (fine-tuned): the harmful representation moves back, at most K weights a step are
restored to exactly the aligned values, rollback and the choice of the delivered checkpoint."""

import json
import math

import jax
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from jaxalign.cli import main
from jaxalign.models.decoders import load_decoder
from jaxalign.restore.masks import recovery_mask, rollback_mask
from jaxalign.restore.procedure import RestoreConfig, eligible, layer_parameter_count, restore
from jaxalign.weights.loader import flatten

from test_decoder_parity import save_tiny_decoder

HARMFUL = ["w1 w2 w3", "w4 w5", "w6 w7 w8 w9", "w10"]
BENIGN = ["w20 w21", "w22 w23 w24", "w25"]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    aligned = tmp_path_factory.mktemp("aligned")
    save_tiny_decoder(aligned, "LlamaForCausalLM", tie_word_embeddings=False, num_hidden_layers=3)
    finetuned = tmp_path_factory.mktemp("finetuned")
    for f in aligned.iterdir():
        if f.name != "model.safetensors":
            (finetuned / f.name).write_bytes(f.read_bytes())
    rng = np.random.default_rng(0)
    tensors = load_file(str(aligned / "model.safetensors"))
    save_file({k: v + (0.05 * rng.normal(size=v.shape)).astype(v.dtype) for k, v in tensors.items()},
              str(finetuned / "model.safetensors"))
    return aligned, finetuned


def test_recovery_restores_at_most_k_in_the_descent_direction():
    rng = np.random.default_rng(1)
    cur, aligned, grad = rng.normal(size=(3, 1000))
    mask = recovery_mask(cur, aligned, grad, 50)
    assert mask.sum() == 49  # the reference's strict '>' the 50th largest, no ties
    # Copying the aligned value changes w by (a - w), against the gradient: a descent step.
    assert np.all((aligned - cur)[mask] * grad[mask] < 0)
    cand = np.sign(cur - aligned) == np.sign(grad)
    assert np.abs(grad[mask]).min() > np.abs(grad[cand & ~mask]).max()


def test_rollback_returns_ceil_rate_of_the_step_within_its_mask():
    rng = np.random.default_rng(2)
    cur, finetuned, grad = rng.normal(size=(3, 1000))
    step = rng.random(1000) < 0.3
    back = rollback_mask(cur, finetuned, grad, step, 0.2)
    cand = step & (np.sign(cur - finetuned) == np.sign(grad))
    assert not np.any(back & ~cand) and back.sum() == math.ceil(cand.sum() * 0.2)
    assert np.abs(grad[back]).min() >= np.abs(grad[cand & ~back]).max()


def test_run_moves_the_harmful_representation_back(models):
    aligned, finetuned = (load_decoder(p) for p in models)
    cfg = RestoreConfig(steps=4, save_every=2, recovery_rate=0.01, batch_size=2, layer_end=2)
    result = restore(aligned, finetuned, HARMFUL, BENIGN, cfg=cfg, log=lambda _: None)
    distances = [s["harmful_distance"] for s in result["steps"]]
    assert [s["step"] for s in result["steps"]] == [0, 2, 4] and result["delivered"] == 4
    assert distances[-1] < distances[0]
    names = eligible(finetuned.params)
    assert names and all(n.startswith("layers.") and "norm" not in n for n in names)
    k = math.ceil(layer_parameter_count(finetuned.params) * 0.01)
    a, f, r = (flatten(p) for p in (aligned.params, finetuned.params, jax.device_get(result["params"])))
    restored = sum(int((np.asarray(r[n][:2]) == np.asarray(a[n][:2])).sum()) for n in names)
    assert 0 < restored <= 4 * (k - 1)
    untouched = [n for n in f if n not in names]
    assert all(np.array_equal(np.asarray(r[n]), np.asarray(f[n])) for n in untouched)
    assert all(np.array_equal(np.asarray(r[n][2:]), np.asarray(f[n][2:])) for n in names)  # layers past layer_end


def test_rollback_and_the_delivered_checkpoint(models):
    aligned, finetuned = (load_decoder(p) for p in models)
    cfg = RestoreConfig(steps=4, warmup_steps=2, save_every=2, recovery_rate=0.01, batch_size=2, layer_end=2)
    base = jax.device_get(finetuned.params)
    untouched = lambda p: all(np.array_equal(np.asarray(x), y) for x, y in zip(jax.tree.leaves(p), jax.tree.leaves(base)))
    drops = restore(aligned, finetuned, HARMFUL, BENIGN, cfg=cfg, log=lambda _: None,
                    task_score=lambda p: 1.0 if untouched(p) else 0.5)
    assert drops["rolled_back"] and drops["delivered"] == 0 and untouched(drops["params"])
    keeps = restore(aligned, finetuned, HARMFUL, BENIGN, cfg=cfg, log=lambda _: None, task_score=lambda p: 1.0)
    assert not keeps["rolled_back"] and keeps["delivered"] == 4


def test_cli_writes_checkpoints_and_report(models, tmp_path):
    aligned, finetuned = models
    out = tmp_path / "out"
    assert main(["restore", "--aligned", str(aligned), "--finetuned", str(finetuned), "--output", str(out),
                 "--steps", "2", "--save-every", "1", "--recovery-rate", "0.01", "--layer-end", "2"]) == 0
    report = json.loads((out / "restore.json").read_text())
    assert report["delivered"] == 2 and len(report["steps"]) == 3
    restored = load_decoder(out / "restored")
    assert jax.tree.map(np.shape, restored.params) == jax.tree.map(np.shape, load_decoder(finetuned).params)


def test_bad_input(models, tmp_path, capsys):
    aligned, finetuned = models
    other = tmp_path / "other"
    save_tiny_decoder(other, "LlamaForCausalLM", tie_word_embeddings=False, num_hidden_layers=2)
    a, f, o = (load_decoder(p) for p in (aligned, finetuned, other))
    with pytest.raises(ValueError, match="has 3 layers"):
        restore(a, o, HARMFUL, BENIGN)
    with pytest.raises(ValueError, match="prompt set is empty"):
        restore(a, f, [], BENIGN)
    with pytest.raises(ValueError, match="layer_end=9"):
        restore(a, f, HARMFUL, BENIGN, cfg=RestoreConfig(layer_end=9))
    with pytest.raises(ValueError, match="recovery_rate=0"):
        RestoreConfig(recovery_rate=0)
