"""Bad input and faults: each fails early in one line naming the field or file and the fix, or
is survived (a corrupted newest checkpoint), instead of a traceback, a silent loss of an
earlier run or a wrong result."""

import gzip
import json
import logging
import re
import shutil
from pathlib import Path

import pytest

from jaxalign.cli import main
from jaxalign.config import ConfigError, load_recipe
from jaxalign.data.corpora import read_sentences
from jaxalign.data.errors import DataFormatError
from jaxalign.data.preference import load_preference
from jaxalign.training.checkpoint import Checkpointer, ResumeError, run_fingerprint
from jaxalign.config.run import TrainConfig
from jaxalign.training.metrics import MetricsWriter
from jaxalign.training.trainer import NonFiniteError, Run, nonfinite_message, train

SMALL = ["model.num_layers=1", "model.max_length=16", "data.batch_size=16", "data.buckets=16", "eval.data=null",
         "log.every=1", "log.tensorboard=false", "checkpoint.every=2", "steps=4"]


def config(run_dir, *overrides) -> TrainConfig:
    return load_recipe(TrainConfig, None, [*SMALL, f"checkpoint.dir={run_dir / 'ckpt'}", f"log.dir={run_dir}",
                                           *overrides])


def metric_steps(run_dir) -> list[int]:
    return [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def earlier_run(tmp_path_factory):
    """A finished 4-step run with checkpoints at steps 2 and 4 and its metrics.jsonl."""
    run_dir = tmp_path_factory.mktemp("earlier") / "run"
    train(config(run_dir), progress=False)
    return run_dir


@pytest.fixture
def copy_of(earlier_run, tmp_path):
    """A private copy of the earlier run, for a test to damage or continue."""
    return shutil.copytree(earlier_run, tmp_path / "run")


@pytest.fixture
def no_loading(monkeypatch):
    """Fails the test if the model is loaded: the check under test must come first."""
    def build(*args, **kwargs):
        raise AssertionError("the model was loaded before the check")

    monkeypatch.setattr(Run, "build", build)


def test_corrupted_newest_checkpoint_falls_back_to_the_step_before(copy_of, caplog):
    for data in (copy_of / "ckpt" / "last" / "4" / "state").rglob("d/*"):
        with data.open("r+b") as f:
            f.truncate(data.stat().st_size // 2)
    with caplog.at_level(logging.WARNING):
        summary = train(config(copy_of, "steps=6"), progress=False)
    assert summary["resumed_from"] == 2 and summary["steps"] == 6
    skipped = [r.getMessage() for r in caplog.records if "skipped checkpoint step 4" in r.getMessage()]
    assert len(skipped) == 1 and "\n" not in skipped[0] and "resuming from step 2" in skipped[0]
    assert any(f"resuming from step 2 of {copy_of / 'ckpt'}" in r.getMessage() for r in caplog.records)
    last = copy_of / "ckpt" / "last"
    assert (last / "4.unrestorable").is_dir() and (last / "6").is_dir()
    # the steps run again after the resume have one row each, not two
    assert metric_steps(copy_of) == [1, 2, 3, 4, 5, 6]


def test_resume_false_refuses_an_earlier_run_unless_overwriting(copy_of, no_loading):
    with pytest.raises(ResumeError, match=r"holds an earlier run \(last/ steps 2, 4\).*checkpoint.overwrite=true"):
        train(config(copy_of, "checkpoint.resume=false"), progress=False)
    assert (copy_of / "ckpt" / "last" / "4").is_dir()


def test_overwrite_clears_the_earlier_checkpoints_and_metrics(copy_of):
    summary = train(config(copy_of, "checkpoint.resume=false", "checkpoint.overwrite=true", "steps=2"), progress=False)
    assert summary["resumed_from"] == 0
    assert sorted(p.name for p in (copy_of / "ckpt" / "last").iterdir()) == ["2"]
    assert metric_steps(copy_of) == [1, 2]


def test_a_checkpoint_past_the_requested_steps_is_refused(copy_of, no_loading):
    with pytest.raises(ResumeError, match="checkpoint at step 4, past steps=3: .*raise steps to at least 4"):
        train(config(copy_of, "steps=3"), progress=False)


def test_another_runs_checkpoint_is_refused_in_one_line(copy_of):
    with pytest.raises(ResumeError) as e:
        train(config(copy_of, "model.num_layers=2"), progress=False)
    message = str(e.value)
    assert "\n" not in message and len(message) < 600
    assert str(copy_of / "ckpt") in message and "model.num_layers: 1 -> 2" in message


def test_a_checkpoint_without_fingerprint_still_restores(copy_of):
    meta = copy_of / "ckpt" / "last" / "4" / "meta" / "metadata"
    stored = json.loads(meta.read_text())
    meta.write_text(json.dumps({k: v for k, v in stored.items() if k != "fingerprint"}))
    cfg = config(copy_of, "steps=6")
    run = Run.build(cfg)
    state = run.init_state()
    ckpt = Checkpointer(cfg.checkpoint, run_fingerprint(cfg, state))
    try:
        _, stream, step = ckpt.resume(state)
    finally:
        ckpt.close()
    assert step == 4 and stream.position == stored["stream"]["position"]


@pytest.mark.parametrize("override, message", [
    ("log.every=0", "log.every=0: must be >= 1"),
    ("eval.every=0", "eval.every=0: must be >= 1"),
    ("checkpoint.every=0", "checkpoint.every=0: must be >= 1"),
    ("checkpoint.keep_last=0", "checkpoint.keep_last=0: must be >= 1"),
    ("checkpoint.keep_best=0", "checkpoint.keep_best=0: must be >= 1"),
    ("data.max_examples=0", "data.max_examples=0: must be >= 1, or null"),
    ("eval.max_examples=0", "eval.max_examples=0: must be >= 1, or null"),
    ("checkpoint.overwrite=true", "set checkpoint.resume=false to start over"),
])
def test_settings_that_would_fail_later_are_refused_on_load(override, message):
    with pytest.raises(ConfigError, match=message):
        load_recipe(TrainConfig, None, [override])


def test_unusable_output_directories_fail_before_loading(tmp_path, no_loading):
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    with pytest.raises(ConfigError, match=re.escape(f"log.dir={a_file}: is a file, not a directory")):
        train(config(tmp_path, f"log.dir={a_file}"), progress=False)
    with pytest.raises(ConfigError, match=re.escape(f"checkpoint.dir={a_file}/ckpt: cannot write there")):
        train(config(tmp_path, f"checkpoint.dir={a_file}/ckpt"), progress=False)


def test_nonfinite_advice_leaves_out_what_is_already_set():
    default = nonfinite_message(load_recipe(TrainConfig, None, ["optim.warmup_steps=10"]))
    assert "lower optim.lr (now 3e-05)" in default
    assert "clip_norm" not in default and "float32" not in default and "warmup" not in default
    loose = nonfinite_message(load_recipe(TrainConfig, None, ["optim.clip_norm=null", "model.dtype=bfloat16"]))
    assert "set optim.clip_norm" in loose and "use model.dtype=float32" in loose and "add optim.warmup_steps" in loose


@pytest.fixture
def recipe(tmp_path) -> str:
    path = tmp_path / "recipe.yaml"
    path.write_text("steps: 1\n")
    return str(path)


def _train_raising(monkeypatch, error: BaseException) -> None:
    def fail(cfg, **kwargs):
        raise error

    monkeypatch.setattr("jaxalign.training.trainer.train", fail)


def test_cli_prints_a_nonfinite_stop_as_one_line(monkeypatch, capsys, recipe):
    cfg = load_recipe(TrainConfig, None, [])
    _train_raising(monkeypatch, NonFiniteError(nonfinite_message(cfg)))
    assert main(["train", recipe]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err and "5 consecutive steps had NaN/Inf" in err


def test_cli_shows_bugs_and_verbose_errors_with_their_traceback(monkeypatch, recipe):
    _train_raising(monkeypatch, KeyError("a bug"))
    with pytest.raises(KeyError, match="a bug"):
        main(["train", recipe])
    _train_raising(monkeypatch, ConfigError("bad input"))
    assert main(["train", recipe]) == 2
    with pytest.raises(ConfigError, match="bad input"):
        main(["-v", "train", recipe])


def test_binary_files_are_named_with_line_and_offset(tmp_path):
    binary = tmp_path / "corpus.txt"
    binary.write_bytes(b"A first sentence.\nA second \xff\xfe sentence.\n")
    with pytest.raises(DataFormatError, match=re.escape(f"{binary}:2: not UTF-8 text: byte 0xff at offset 27")):
        read_sentences(str(binary))
    row = json.dumps({"prompt": "p", "chosen": "a", "rejected": "b"}).encode() + b"\n"
    for name, opener in (("prefs.jsonl", open), ("prefs.jsonl.gz", gzip.open)):
        path = tmp_path / name
        with opener(path, "wb") as f:
            f.write(row + b'{"prompt": "\x89PNG"}\n')
        expected = f"{path}:2: not UTF-8 text: byte 0x89 at offset {len(row) + 12}"
        with pytest.raises(DataFormatError, match=re.escape(expected)):
            load_preference(str(path))


def test_metrics_rows_of_steps_run_again_are_dropped(tmp_path):
    writer = MetricsWriter(str(tmp_path), tensorboard=False)
    for step in (0, 1, 2, 3):
        writer.write(step, {"loss": float(step)})
    with (tmp_path / "metrics.jsonl").open("a") as f:
        f.write('{"step": 4, "lo')  # a row cut short by a kill
    writer.discard_from(3)
    assert metric_steps(tmp_path) == [0, 1, 2]
    writer.discard_from(0)
    assert (tmp_path / "metrics.jsonl").read_text() == ""


def test_checkpoint_dir_may_be_a_bucket_url():
    """gs:// (and any epath URL) stays a URL; a local path becomes absolute, with ~ expanded."""
    from jaxalign.config.run import checkpoint_path

    assert str(checkpoint_path("gs://bucket/runs/dpo")) == "gs://bucket/runs/dpo"
    assert str(checkpoint_path("~/runs/x")) == str(Path.home() / "runs" / "x")
