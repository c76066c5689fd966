"""Bad input through the command line: one clear line on stderr, exit code 2, no traceback."""

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


def test_help_documents_every_option():
    parser = build_parser()
    for action in parser._subparsers._group_actions[0].choices["embed"]._actions:
        assert action.help, action.dest


def test_eval_sts_with_bert_whitening(tmp_path):
    import json

    out = tmp_path / "w.json"
    argv = ["eval", "sts", "--bert-whitening", "builtin:sentences-mini", "--whitening-dim", "64", "--json", str(out)]
    assert main(argv) == 0
    payload = json.loads(out.read_text())
    assert payload["whitening_dim"] == 64 and -100 <= payload["tasks"]["sts-mini"]["all"] <= 100
