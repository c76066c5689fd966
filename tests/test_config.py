"""Recipes and overrides: typed, validated, with errors that name the field and the fix."""

import pytest

from jaxalign.config import ConfigError, load_recipe, parse_overrides
from jaxalign.config.run import TrainConfig


def test_recipe_and_overrides(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("steps: 10\noptim:\n  lr: 3.0e-5\nobjective:\n  name: whitenedcse\n  whitening:\n    groups: 16\n")
    cfg = load_recipe(TrainConfig, recipe, ["optim.lr=1e-5", "data.buckets=16,32", "checkpoint.dir=null", "mesh.data=2"])
    assert cfg.steps == 10 and cfg.optim.lr == 1e-5 and cfg.objective.whitening.groups == 16
    assert cfg.data.buckets == (16, 32) and cfg.checkpoint.dir is None and cfg.mesh.data == 2


@pytest.mark.parametrize(
    "override, message",
    [
        ("objective.name=simclr", "objective.name: 'simclr' is not one of"),
        ("optim.lrr=1", "unknown option optim.lrr; valid options of optim: lr"),
        ("optim.lr=fast", "optim.lr: expected float"),
        ("optim.lr=-1", "optim.lr=-1.0: must be > 0"),
        ("steps=2.5", "steps: expected an integer"),
        ("data.shuffle=maybe", "data.shuffle: expected true/false"),
        ("objective.name=whitenedcse objective.whitening.method=svd", "objective.whitening.method: 'svd' is not one of"),
        ("nonsense", "expected key=value"),
    ],
)
def test_bad_overrides(override, message):
    with pytest.raises(ConfigError, match=message):
        load_recipe(TrainConfig, None, override.split(" "))


@pytest.mark.parametrize("overrides, message", [
    (["objective.beta=0.5"], r"objective.beta is an option of objective.name=dpo\|simpo\|cpo\|orpo\|kto\|asft\|d2o\|"
                             r"poft, not of objective.name=simcse: drop it, or set objective.name to dpo or simpo"),
    (["objective.name=simpo", "data.kind=preference", "objective.loss_type=[ipo]"],
     r"objective.loss_type is an option of objective.name=dpo, not of objective.name=simpo"),
    (["objective.name=dpo", "data.kind=preference", "objective.temperature=0.1"],
     r"objective.temperature is an option of objective.name=simcse\|whitenedcse\|matryoshka\|2dmse"),
    (["objective.name=dpo", "data.kind=preference", "objective.bogus=1"], r"unknown option objective.bogus"),
    (["objective.name=dpo", "data.kind=preference", "objective.loss_type=[hinge]", "objective.discopop_tau=0.1"],
     r"loss 'hinge' does not take option 'discopop_tau'"),
    (["objective.name=dpo"], r"objective.name=dpo does not train on data.kind=sentences: set data.kind=preference"),
    (["objective.name=cosent"], r"set data.kind=pairs"),
])
def test_an_option_of_another_objective_is_named(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_recipe(TrainConfig, None, overrides)


def test_each_objective_has_its_own_typed_options(tmp_path):
    from jaxalign.config.objectives import DPO, OBJECTIVES, SimPO

    cfg = load_recipe(TrainConfig, None, ["objective.name=simpo", "data.kind=preference"])
    assert isinstance(cfg.objective, SimPO) and cfg.objective.beta == 2.0  # SimPO's own default
    cfg = load_recipe(TrainConfig, None, ["objective.name=dpo", "data.kind=preference", "objective.loss_type=[ipo,sft]",
                                          "objective.loss_weights=[1,0.1]"])
    assert isinstance(cfg.objective, DPO) and cfg.objective.loss_type == ("ipo", "sft") and cfg.objective.beta == 0.1
    # a recipe section without a name takes the default objective's
    recipe = tmp_path / "r.yaml"
    recipe.write_text("objective: {temperature: 0.1}\n")
    assert load_recipe(TrainConfig, recipe).objective.temperature == 0.1
    # every field of every objective is documented
    from jaxalign.config import field_docs

    for name, cls in OBJECTIVES.items():
        import dataclasses

        missing = [f.name for f in dataclasses.fields(cls) if f.name != "name" and f.name not in field_docs(cls)]
        assert not missing, (name, missing)


def test_help_lists_options_from_the_dataclasses():
    from jaxalign.config import describe_options

    rows = {name: (default, doc) for name, default, doc in describe_options(TrainConfig)}
    assert rows["objective.name=dpo"][0] is None and rows["objective.name=dpo"][1].startswith("The DPO family")
    assert rows["optim.lr"] == ("3e-05", "peak learning rate (AdamW)")
    assert rows["objective.simpo_gamma"][0] == "0.5" and "target reward margin" in rows["objective.simpo_gamma"][1]
    assert rows["mesh.fsdp"][1].startswith("data parallelism with parameters")


def test_bad_recipe_files(tmp_path):
    with pytest.raises(ConfigError, match="no such recipe file"):
        load_recipe(TrainConfig, tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a list\n")
    with pytest.raises(ConfigError, match="must be a YAML mapping"):
        load_recipe(TrainConfig, bad)
    bad.write_text("model:\n  nmae: x\n")
    with pytest.raises(ConfigError, match="unknown option model.nmae"):
        load_recipe(TrainConfig, bad)


def test_override_parsing():
    assert parse_overrides(["a.b=1", "a.c=x", "d=true"]) == {"a": {"b": 1, "c": "x"}, "d": True}
