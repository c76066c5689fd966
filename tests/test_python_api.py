"""The Python API as the docs show it: README's and docs/python_api.md's code blocks run as written."""

import re
from pathlib import Path

import numpy as np
import pytest

import jaxalign as ja

ROOT = Path(__file__).resolve().parent.parent


def python_blocks(path: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.S)


def test_readme_code_runs():
    blocks = python_blocks(ROOT / "README.md")
    assert blocks, "README.md has no python example"
    for block in blocks:
        namespace: dict = {}
        exec(compile(block, "README.md", "exec"), namespace)
    per_pair = namespace["per_pair"]  # the losses example: 2 pairs, policy = reference gives ln 2 each
    np.testing.assert_allclose(np.asarray(per_pair), np.log(2.0), rtol=1e-6)


def test_public_names_resolve():
    for name in ja.__all__:
        assert getattr(ja, name) is not None, name
    assert callable(ja.train) and ja.losses.dpo_loss is ja.losses.dpo.dpo_loss
    with pytest.raises(AttributeError, match="no attribute 'trian'"):
        ja.trian


def test_python_errors_name_the_fix():
    with pytest.raises(ValueError, match=r"unknown loss_type 'dpox'; known loss types: sigmoid"):
        ja.losses.dpo_loss(np.zeros(2), np.zeros(2), np.zeros(2), np.zeros(2), loss_type="dpox")
    with pytest.raises(ja.ConfigError, match=r"unknown loss_type 'dpox'"):
        ja.objectives.DPO(loss_type=("dpox",))
    with pytest.raises(ja.ConfigError, match=r"objective.name=dpo does not train on data.kind=sentences"):
        ja.TrainConfig(objective=ja.objectives.DPO())
    with pytest.raises(ja.ConfigError, match=r"objective.beta is an option of objective.name=dpo"):
        ja.load_recipe(None, "objective.beta=0.5")


def test_the_beta_sweep_of_the_docs_runs(tmp_path, monkeypatch):
    """docs/python_api.md's sweep, as written but for its first line (two β, two steps, one
    layer): the runs, a plot of their held-out reward accuracies and one of their curves."""
    (block,) = python_blocks(ROOT / "docs" / "python_api.md")
    first, rest = block.split("\n", 1)
    assert first.startswith("BETAS, STEPS, EVERY, LAYERS = ")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile("BETAS, STEPS, EVERY, LAYERS = (0.1, 0.5), 2, 2, 1\n" + rest, "docs/python_api.md", "exec"),
         namespace)
    results = namespace["results"]
    assert sorted(results) == [0.1, 0.5]
    for beta, result in results.items():
        assert sorted(result["eval_metrics"]) == [0, 2]
        assert result["eval_metrics"][0]["eval/rewards/margins"] == 0.0  # policy = reference at step 0
        assert result["losses"][1] == pytest.approx(np.log(2.0), abs=1e-5)
        assert (tmp_path / f"runs/dpo_beta_{beta}/metrics.jsonl").is_file()
    assert (tmp_path / "dpo_beta_sweep.png").stat().st_size > 10_000
    assert (tmp_path / "dpo_beta_curves.png").stat().st_size > 10_000
