"""Reward models: TRL RewardTrainer's loss, the objective's config, the exported
LlamaForSequenceClassification scoring as `transformers` does, training through the engine
(full fine-tuning with a margin column, LoRA), and `jaxalign eval reward` with either scorer."""

import json

import jax
import numpy as np
import pytest
from test_decoder_parity import random_batch, save_tiny_decoder
from torch_refs import torch, transformers  # skips the module without torch

from jaxalign.cli import main
from jaxalign.config import ConfigError, load_recipe
from jaxalign.config.run import TrainConfig
from jaxalign.data.preference import load_preference
from jaxalign.inference.scorers import RewardModelScorer, load_scorer, score_rows
from jaxalign.losses import bradley_terry_loss
from jaxalign.models.decoders import load_decoder
from jaxalign.models.reward import (
    export_reward_model,
    init_score_head,
    load_reward_model,
    sequence_rewards,
)
from jaxalign.objectives.reward import column_rewards
from jaxalign.tasks.preference import record_margins
from jaxalign.training.trainer import Run, train


def test_loss_is_trls():
    rng = np.random.default_rng(0)
    rw, rl, m = (rng.normal(size=16).astype(np.float32) for _ in range(3))
    t = [torch.tensor(x) for x in (rw, rl, m)]
    for margin, c in ((None, 0.0), (m, 0.01)):
        ours = bradley_terry_loss(rw, rl, margin, center_rewards_coefficient=c).mean()
        # TRL RewardTrainer.compute_loss
        z = t[0] - t[1] - (t[2] if margin is not None else 0)
        ref = -torch.nn.functional.logsigmoid(z).mean() + c * torch.mean((t[0] + t[1]) ** 2)
        assert float(ours) == pytest.approx(float(ref), rel=1e-6)
    with pytest.raises(ValueError, match="center_rewards_coefficient must be >= 0"):
        bradley_terry_loss(rw, rl, center_rewards_coefficient=-1.0)


def test_config():
    cfg = load_recipe(TrainConfig, None, ["objective.name=reward", "data.kind=preference",
                                          "objective.center_rewards_coefficient=0.01"])
    assert cfg.objective.center_rewards_coefficient == 0.01 and not cfg.objective.needs_reference
    with pytest.raises(ConfigError, match="center_rewards_coefficient must be >= 0"):
        load_recipe(TrainConfig, None, ["objective.name=reward", "data.kind=preference",
                                        "objective.center_rewards_coefficient=-1"])
    with pytest.raises(ConfigError, match="does not train on data.kind=unpaired"):
        load_recipe(TrainConfig, None, ["objective.name=reward", "data.kind=unpaired"])


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
def test_export_scores_as_transformers(tmp_path, tied):
    save_tiny_decoder(tmp_path / "base", "LlamaForCausalLM", tie_word_embeddings=tied)
    decoder = load_decoder(tmp_path / "base")
    head = init_score_head(jax.random.PRNGKey(0), decoder.config.hidden_size, std=1.0)
    out = export_reward_model(decoder, jax.device_get(decoder.params), head, tmp_path / "rm")
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["LlamaForSequenceClassification"] and config["pad_token_id"] == 2
    hf = transformers.AutoModelForSequenceClassification.from_pretrained(str(out)).eval()
    assert hf.config.num_labels == 1 and hf.score.weight.shape == (1, decoder.config.hidden_size)
    ids, mask = random_batch("mixed")
    ids[1, 4] = 2  # a row ending in EOS = the pad token: both sides score the token before it
    positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0)
    with torch.inference_mode():
        ref = hf(input_ids=torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask),
                 position_ids=torch.tensor(positions, dtype=torch.long)).logits[:, 0].numpy()
    ours = np.asarray(sequence_rewards(decoder, decoder.params, head, ids, mask, 2))
    np.testing.assert_allclose(ours, ref, atol=1e-4)
    again = load_reward_model(out)
    np.testing.assert_allclose(np.asarray(again.rewards(ids, mask)), ours, atol=1e-6)
    with pytest.raises(ValueError, match="not a reward model"):
        load_reward_model(tmp_path / "base")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny random Llama (tied), a reward model exported from it, and word-level pairs."""
    root = tmp_path_factory.mktemp("rm")
    save_tiny_decoder(root / "base", "LlamaForCausalLM", tie_word_embeddings=True)
    decoder = load_decoder(root / "base")
    head = init_score_head(jax.random.PRNGKey(1), decoder.config.hidden_size, std=1.0)
    rm = export_reward_model(decoder, jax.device_get(decoder.params), head, root / "rm")
    pairs = root / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"prompt": f"w{i} w{i + 1}", "chosen": f" w{i + 2} w3",
                                         "rejected": f" w{i + 5}", "margin": float(i % 3)}) + "\n" for i in range(16)))
    return rm, root / "base", pairs


def small(tiny, *overrides) -> TrainConfig:
    _, base, pairs = tiny
    return load_recipe(TrainConfig, None, [
        f"model.name={base}", "model.max_length=32", "data.kind=preference", f"data.path={pairs}",
        "data.max_examples=8", "data.batch_size=8", "data.buckets=32", "objective.name=reward", "optim.lr=1e-2",
        "log.every=1", "steps=3", *overrides])


def test_margins_loss_export_and_eval(tiny, tmp_path):
    run = Run.build(small(tiny, "mesh.data=1", "objective.center_rewards_coefficient=0.01", f"eval.data={tiny[2]}",
                          "eval.batch_size=8"), devices=jax.devices()[:1])
    task = run.task
    batch = task.next_batch()
    assert sorted(batch["margin"]) == sorted(float(i % 3) for i in range(8))
    loss, metrics = jax.jit(task.objective.loss)(task.params, batch, jax.random.PRNGKey(0), task.frozen)
    r = np.asarray(column_rewards(task.decoder, task.params["policy"], task.params["score"], batch, 2))
    expected = bradley_terry_loss(r[:, 0], r[:, 1], batch["margin"], center_rewards_coefficient=0.01).mean()
    assert float(loss) == pytest.approx(float(expected), rel=1e-5)
    assert float(metrics["accuracy"]) == np.mean(r[:, 0] > r[:, 1])
    # held-out evaluation scores the same rows: the same accuracy on the one batch's eight pairs
    evaluated = task.evaluate(task.params)
    assert task.eval_metric == "eval/accuracy" and 0 <= evaluated["eval/accuracy"] <= 1

    params = jax.device_get(task.params)
    task.export(params, tmp_path / "rm")
    model = load_reward_model(tmp_path / "rm")
    prompts, completions = [[3, 4, 5, 6], [7, 8]], [[9, 10], [11, 12, 13]]
    trained = RewardModelScorer(task.decoder, params["score"], params["policy"])
    np.testing.assert_allclose(score_rows(RewardModelScorer(model.decoder, model.head), prompts, completions,
                                          batch_size=2), score_rows(trained, prompts, completions, batch_size=2),
                               atol=1e-5)


def test_lora_trains_adapters_and_head(tiny, tmp_path):
    summary = train(small(tiny, "model.lora.rank=4", "model.lora.targets=q_proj,v_proj", f"eval.data={tiny[2]}",
                          "eval.every=3", "eval.batch_size=8", f"export={tmp_path / 'rm'}"), progress=False)
    assert summary["losses"][3] < summary["losses"][1]  # one batch, three updates
    params = jax.device_get(summary["state"].params)
    assert set(params) == {"lora", "score"}
    assert any(float(np.abs(ab["b"]).max()) > 0 for ab in params["lora"].values())
    assert summary["eval_metrics"][3]["eval/accuracy"] >= summary["eval_metrics"][0]["eval/accuracy"]
    assert (tmp_path / "rm" / "adapter").is_dir() and load_reward_model(tmp_path / "rm").head["kernel"].shape == (64, 1)


def test_partial_margin_column_is_refused(tiny, tmp_path):
    rows = [json.loads(line) for line in tiny[2].read_text().splitlines()]
    del rows[3]["margin"]
    data = tmp_path / "partial.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(ValueError, match="15 of 16 pairs have a 'margin'"):
        record_margins(load_preference(str(data), "paired"), str(data))


def test_eval_reward_cli(tiny, tmp_path, capsys):
    rm, base, data = tiny
    out = tmp_path / "r.json"
    assert main(["eval", "reward", "--model", str(rm), "--data", str(data), "--batch-size", "8", "--json", str(out)]) == 0
    summary = json.loads(out.read_text())
    assert summary["pairs"] == 16 and 0 <= summary["accuracy"] <= 1
    assert summary["margin"] == pytest.approx(summary["rewards/chosen"] - summary["rewards/rejected"], abs=1e-6)
    # DPO's implicit reward with policy = reference: every score 0, so no pair is won
    assert main(["eval", "reward", "--scorer", f"dpo:{base},{base},0.1", "--data", str(data), "--json", str(out)]) == 0
    summary = json.loads(out.read_text())
    assert summary["accuracy"] == 0 and summary["margin"] == 0
    for argv, message in [(["--model", str(rm), "--scorer", f"reward:{rm}"], "one of the two"),
                          (["--scorer", f"dpo:{base},{base}"], "dpo:POLICY,REF,BETA"),
                          (["--scorer", "ppo:x"], "unknown scorer"),
                          (["--model", str(base)], "not a reward model")]:
        assert main(["eval", "reward", *argv, "--data", str(data)]) == 2
        assert message in capsys.readouterr().err
    assert load_scorer(f"reward:{rm}").name == f"reward:{rm}"
