"""Recipes and overrides: typed, validated, with errors that name the field and the fix."""

import pytest

from jaxalign.config import ConfigError, load_recipe, parse_overrides
from jaxalign.train.config import TrainConfig


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
        ("objective.whitening.method=svd", "objective.whitening.method: 'svd' is not one of"),
        ("nonsense", "expected key=value"),
    ],
)
def test_bad_overrides(override, message):
    with pytest.raises(ConfigError, match=message):
        load_recipe(TrainConfig, None, [override])


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
