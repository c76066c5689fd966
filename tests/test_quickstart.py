"""The README's quickstart as shipped: its recipe improves the metric it prints, its training
set holds none of the evaluation's sentences, and no command starts with transformers' "PyTorch
was not found" advisory on a machine without torch (the quickstart's environment has none)."""

import logging
import os
import re
import subprocess
import sys
from pathlib import Path

from jaxalign.cli import _eval_line
from jaxalign.data.corpora import read_corpus
from jaxalign.data.sts import load_sts

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
CLI = "from jaxalign.cli import main; sys.exit(main())"


def without_torch(code: str, *argv: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", NO_TORCH + code, *argv], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300, check=False)


def test_commands_print_no_torch_advisory_without_torch():
    control = without_torch("import transformers")
    assert control.returncode == 0 and ADVISORY in control.stderr, "torch was not hidden: the test proves nothing"
    for argv in (["--help"], ["eval", "sts", "--data", "builtin:sts-mini", "--batch-size", "16"]):
        run = without_torch(CLI, *argv)
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


def test_quickstart_improves_the_score_it_prints(tmp_path):
    """``jaxalign train experiments/quickstart.yaml`` as a user runs it (one CPU device, no torch;
    its files under tmp_path): the last line says sts-mini, held out, improved by more than 10
    points. The shipped run, seeds 0, 1, 2: 68.47 -> 82.57, 83.74, 83.29; STS-B dev, which it
    never sees, 63.03 -> 77.40, 77.56, 77.44; under a minute on 2 CPU cores."""
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # not the suite's 8 simulated devices
    run = without_torch(CLI, "train", str(QUICKSTART), f"log.dir={tmp_path}", "checkpoint.dir=null", "export=null",
                        env=env)
    assert run.returncode == 0, run.stderr
    assert ADVISORY not in run.stderr
    line = re.search(r"eval/sts on builtin:sts-mini: step 0: ([\d.]+) -> step 40: ([\d.]+), improved by", run.stdout)
    assert line, run.stdout
    before, after = map(float, line.groups())
    assert before == 68.47 and after > before + 10, line[0]


def test_the_eval_line_says_plainly_whether_the_score_improved():
    assert (_eval_line("eval/sts", "builtin:sts-mini", {0: 68.472, 20: 83.12, 40: 82.57})
            == "eval/sts on builtin:sts-mini: step 0: 68.47 -> step 40: 82.57, improved by 14.1; best 83.12 at step 20")
    assert (_eval_line("eval/sts", "builtin:sts-mini", {0: 88.45, 20: 87.65})
            == "eval/sts on builtin:sts-mini: step 0: 88.45 -> step 20: 87.65, no improvement (-0.8); best 88.45 at step 0")
    assert _eval_line("eval/sts", "d", {40: 82.57}) == "eval/sts on d: step 40: 82.57"  # resumed at the last evaluation
