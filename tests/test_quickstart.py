"""The README's quickstart as shipped: its recipe improves the metric it prints, its training
set holds none of the evaluation's sentences, and no command starts with transformers' "PyTorch
was not found" advisory on a machine without torch (the quickstart's environment has none)."""

import logging
import re
import subprocess
import sys
from pathlib import Path

from jaxalign.config import load_recipe
from jaxalign.data.corpora import read_corpus
from jaxalign.data.sts import load_sts
from jaxalign.train.config import TrainConfig
from jaxalign.train.trainer import train

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = REPO / "experiments" / "quickstart.yaml"

# Run as `python -c NO_TORCH + code`: every meta-path finder is wrapped so that torch is not
# found, as on a machine without it (transformers then logs its advisory on import).
# sys.modules["torch"] = None would not do: scipy reads that entry as a module.
NO_TORCH = '''
import sys

class NoTorch:
    def __init__(self, finder):
        self.finder = finder

    def find_spec(self, name, path=None, target=None):
        return None if name.partition(".")[0] == "torch" else self.finder.find_spec(name, path, target)

    def __getattr__(self, attr):
        return getattr(self.finder, attr)

sys.meta_path[:] = [NoTorch(f) for f in sys.meta_path]
'''
ADVISORY = "PyTorch was not found"


def without_torch(code: str, *argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", NO_TORCH + code, *argv], cwd=REPO, capture_output=True, text=True,
                          timeout=300)


def test_commands_print_no_torch_advisory_without_torch():
    control = without_torch("import transformers")
    assert control.returncode == 0 and ADVISORY in control.stderr, "torch was not hidden: the test proves nothing"
    cli = "from jaxalign.cli import main; sys.exit(main())"
    for argv in (["--help"], ["eval", "sts", "--data", "builtin:sts-mini", "--batch-size", "16"]):
        run = without_torch(cli, *argv)
        assert run.returncode == 0, run.stderr
        assert ADVISORY not in run.stderr, f"jaxalign {' '.join(argv)}: {run.stderr}"
    assert "sts-mini" in run.stdout


def test_only_the_torch_advisory_is_dropped():
    """Every other transformers message still reaches the user."""
    logger = logging.getLogger("transformers")
    record = lambda message: logger.makeRecord(logger.name, logging.WARNING, __file__, 0, message, (), None)
    assert not logger.filter(record(f"{ADVISORY}. Models won't be available and only tokenizers, configuration "
                                    "and file/data utilities can be used."))
    assert logger.filter(record("Token indices sequence length is longer than the specified maximum sequence length"))


def tokens(sentence: str) -> tuple[str, ...]:
    return tuple(re.findall(r"[a-z0-9']+", sentence.lower()))


def test_nli_mini_holds_no_sts_mini_sentence():
    """No test leakage: no sentence of the training triplets is one of sts-mini's (compared
    lowercased, without punctuation), nor shares more than 60% of its content words with one."""
    stop = {"a", "an", "the", "is", "are", "was", "be", "been", "has", "in", "on", "at", "of", "to", "by", "for",
            "with", "and", "it", "its", "his", "her", "their", "this"}
    sts = {s for sub in load_sts("builtin:sts-mini")[0].subsets for s in (*sub.sentences1, *sub.sentences2)}
    train_sentences = {s for triplet in read_corpus("nli", "builtin:nli-mini") for s in triplet}
    assert len(train_sentences) > 700
    assert not {tokens(s) for s in train_sentences} & {tokens(s) for s in sts}
    for s in train_sentences:
        for t in sts:
            a, b = set(tokens(s)) - stop, set(tokens(t)) - stop
            assert len(a & b) <= 0.6 * len(a | b), f"{s!r} is close to sts-mini's {t!r}"
