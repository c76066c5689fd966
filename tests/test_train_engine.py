"""The training engine: sharded steps equal the single-device step, GradCache equals the
uncached step, one compile per bucket, exact resume, non-finite steps skipped and stopped."""

import jax
import numpy as np
import pytest

from jaxalign.config import load_recipe
from jaxalign.data.stream import collate, to_global
from jaxalign.objectives.contrastive import cached_value_and_grad, loss_fn
from jaxalign.tasks.contrastive import ContrastiveTask
from jaxalign.config.run import TrainConfig
from jaxalign.training.trainer import NonFiniteError, Run, train
from trees import assert_trees_close  # noqa: E402

SMALL = ["model.num_layers=1", "model.max_length=16", "data.batch_size=16", "data.buckets=16", "eval.data=null",
         "log.every=1", "steps=4"]
MESHES = [(8, 1, 1), (2, 4, 1), (2, 2, 2)]


def config(*overrides) -> TrainConfig:
    return load_recipe(TrainConfig, None, [*SMALL, *overrides])


@pytest.fixture(scope="module")
def nli_file(tmp_path_factory):
    from jaxalign.data.corpora import read_sentences

    s = [x for (x,) in read_sentences("builtin:sentences-mini")]
    path = tmp_path_factory.mktemp("nli") / "triplets.csv"
    path.write_text("sent0,sent1,hard_neg\n" + "".join(f"{s[i]},{s[i + 1]},{s[i + 40]}\n" for i in range(0, 64)))
    return str(path)


def grads_on(run: Run, local_batch: dict, seed: int = 0):
    params = run.init_state().params
    batch = to_global(local_batch, run.batch_shardings)
    f = jax.jit(jax.value_and_grad(loss_fn(run.task.objective), has_aux=True))
    with jax.set_mesh(run.mesh):
        (loss, _), grads = f(params, batch, jax.random.PRNGKey(seed))
    return float(loss), jax.device_get(grads)


OBJECTIVES = {
    "simcse-unsup": [],
    "simcse-sup-hardneg": ["data.kind=nli", "objective.hard_negative_weight=0.5"],
    "whitenedcse": ["objective.name=whitenedcse", "objective.whitening.groups=48", "objective.whitening.eps=0.1"],
}


_SINGLE: dict = {}


def single_device(name: str, extra: list[str]):
    """The single-device reference (loss, grads, batch) per objective, computed once."""
    if name not in _SINGLE:
        run = Run.build(config(*extra, "mesh.data=1"), devices=jax.devices()[:1])
        local = collate(run.task.tokens, run.task.stream.next(), run.task.objective.text_columns, (16,), 16,
                        run.task.objective.numeric_columns)
        _SINGLE[name] = (*grads_on(run, local), local)
    return _SINGLE[name]


@pytest.mark.parametrize("mesh", MESHES, ids=lambda m: "x".join(map(str, m)))
@pytest.mark.parametrize("name", list(OBJECTIVES))
def test_sharded_step_equals_single_device(name, mesh, nli_file):
    extra = list(OBJECTIVES[name])
    if "data.kind=nli" in extra:
        extra.append(f"data.path={nli_file}")
    loss1, g1, local = single_device(name, extra)
    a, f, t = mesh
    sharded = Run.build(config(*extra, f"mesh.data={a}", f"mesh.fsdp={f}", f"mesh.tensor={t}"))
    kernel = sharded.state_shardings.params["encoder"]["layers"]["up"]["kernel"]
    assert kernel.spec == jax.sharding.PartitionSpec(None, "fsdp", "tensor") and len(kernel.device_set) == 8
    loss8, g8 = grads_on(sharded, local)
    assert loss8 == pytest.approx(loss1, rel=1e-5)
    assert_trees_close(g8, g1)


def test_gradcache_equals_uncached():
    run = Run.build(config("model.dropout=false", "mesh.data=1"), devices=jax.devices()[:1])
    params = run.init_state().params
    local = collate(run.task.tokens, run.task.stream.next(), 1, (16,), 16)
    batch = to_global(local, run.batch_shardings)
    key = jax.random.PRNGKey(0)
    (loss, _), grads = jax.jit(jax.value_and_grad(loss_fn(run.task.objective), has_aux=True))(params, batch, key)
    (closs, _), cgrads = jax.jit(cached_value_and_grad(run.task.objective, chunk=4))(params, batch, key)
    assert float(closs) == pytest.approx(float(loss), rel=1e-6)
    assert_trees_close(jax.device_get(cgrads), jax.device_get(grads))


def test_one_compile_per_bucket():
    run = Run.build(config("data.buckets=8,16", "data.batch_size=8", "mesh.data=1"), devices=jax.devices()[:1])
    step = run.step_fn()
    state = run.init_state()
    shapes = set()
    for i in range(6):
        batch = run.next_batch(i)
        shapes.add(batch["input_ids"].shape)
        state, _ = step(state, batch, run.task.frozen)
    assert step._cache_size() == len(shapes)


def test_resume_reproduces_the_uninterrupted_run(tmp_path):
    common = ["steps=6", "checkpoint.every=3", "mesh.data=2", "mesh.fsdp=4"]
    straight = train(config(*common, f"checkpoint.dir={tmp_path / 'a'}"), progress=False)
    first = train(config(*common, f"checkpoint.dir={tmp_path / 'b'}"), progress=False, stop_at=3)
    assert first["resumed_from"] == 0
    # A save killed midway leaves only an unfinalised temporary directory: it must be ignored.
    (tmp_path / "b" / "last" / "5.orbax-checkpoint-tmp-0").mkdir(parents=True)
    resumed = train(config(*common, f"checkpoint.dir={tmp_path / 'b'}"), progress=False)
    assert resumed["resumed_from"] == 3
    for step in (4, 5, 6):
        assert resumed["losses"][step] == pytest.approx(straight["losses"][step], rel=1e-6, abs=1e-9)


def test_nonfinite_steps_are_skipped_then_stop(monkeypatch):
    healthy = ContrastiveTask.value_and_grad

    def poisoned(task):
        inner = healthy(task)

        def f(params, batch, rng, frozen):
            (loss, metrics), grads = inner(params, batch, rng, frozen)
            return (loss * np.nan, metrics), grads

        return f

    monkeypatch.setattr(ContrastiveTask, "value_and_grad", poisoned)
    cfg = config("steps=10", "max_nonfinite=3")
    with pytest.raises(NonFiniteError, match="3 consecutive steps had NaN/Inf"):
        train(cfg, progress=False)


def test_bad_objective_settings_fail_before_compiling():
    with pytest.raises(ValueError, match="groups=7 does not divide the embedding size 384"):
        Run.build(config("objective.name=whitenedcse", "objective.whitening.groups=7"))
    with pytest.raises(ValueError, match="rows per whitening statistic, not more than the group size 32"):
        Run.build(config("objective.name=whitenedcse", "objective.whitening.groups=12"))
    with pytest.raises(ValueError, match="objective.name=cosent does not train on data.kind=sentences: set data.kind=pairs"):
        Run.build(config("objective.name=cosent"))
    with pytest.raises(ValueError, match="data.batch_size 12 is not divisible by the data-parallel size 8"):
        Run.build(config("data.batch_size=12"))
