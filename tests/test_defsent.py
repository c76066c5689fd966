"""DefSent+ (objective.name=defsent): the chunked entry cross-entropy against a float64 reference,
on one device and split over an 8-device mesh; the dictionary readers and their errors; FastICA;
and two progressive rounds trained end to end on the built-in dictionary."""

from pathlib import Path
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxalign.config import load_recipe
from jaxalign.config.loader import ConfigError
from jaxalign.config.run import TrainConfig
from jaxalign.data.definitions import read_definitions
from jaxalign.data.errors import DataFormatError
from jaxalign.losses.definition import chunk_entries, entry_cross_entropy
from jaxalign.models import load_encoder
from jaxalign.objectives.definition import DefinitionObjective
from jaxalign.objectives.entries import entry_means, isotropic
from jaxalign.sharding import MeshConfig, make_mesh
from jaxalign.sharding.rules import named_sharding
from jaxalign.tasks import definition
from jaxalign.training import progressive
from jaxalign.training.trainer import train

DEFSENT = ["objective.name=defsent", "data.kind=definitions", "data.path=builtin:defs-mini"]


def problem(n=37, b=6, d=8, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(b, d)), 3 * rng.normal(size=(n, d)), rng.integers(0, n, size=b)


def reference(q, w, labels):
    """Float64 loss, d loss / d queries and accuracy from the whole [B, N] logits."""
    logits = q @ w.T
    lse = np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1)) + logits.max(1)
    loss = np.mean(lse - logits[np.arange(len(q)), labels])
    p = np.exp(logits - lse[:, None])
    p[np.arange(len(q)), labels] -= 1
    return loss, p @ w / len(q), np.mean(logits.argmax(1) == labels)


def chunked(q, w, labels, chunk):
    def f(q):
        return entry_cross_entropy(q, jnp.asarray(chunk_entries(w, chunk)), jnp.asarray(labels), num_entries=len(w))

    (loss, acc), grad = jax.jit(jax.value_and_grad(f, has_aux=True))(jnp.asarray(q, jnp.float32))
    return float(loss), np.asarray(grad), float(acc)


@pytest.mark.parametrize("chunk", [1, 5, 37, 64])
def test_chunked_cross_entropy_equals_float64_whole_logits(chunk):
    q, w, labels = problem()
    labels[0] = int((q[0] @ w.T).argmax())  # at least one row right, so accuracy is not trivially 0
    loss, grad, acc = chunked(q, w, labels, chunk)
    ref_loss, ref_grad, ref_acc = reference(q, w, labels)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
    np.testing.assert_allclose(grad, ref_grad, rtol=1e-4, atol=1e-5)
    assert acc == pytest.approx(ref_acc) and ref_acc > 0


def test_entry_matrix_split_over_8_devices_equals_one_device():
    q, w, labels = problem(n=300, b=16, d=32, seed=1)
    single = chunked(q, w, labels, 64)
    mesh = make_mesh(MeshConfig(2, 2, 2))
    entries = chunk_entries(w, 64)  # [5, 64, 32]: every chunk's rows over fsdp x tensor = 4 devices
    placed = jax.device_put(entries, named_sharding(mesh, definition.ENTRY_AXES, entries.shape))
    assert placed.sharding.shard_shape(entries.shape) == (5, 16, 32)
    batch = named_sharding(mesh, ("batch", None))
    f = jax.jit(jax.value_and_grad(lambda q, w, y: entry_cross_entropy(q, w, y, num_entries=300), has_aux=True))
    with jax.set_mesh(mesh):
        (loss, acc), grad = f(jax.device_put(jnp.asarray(q, jnp.float32), batch), placed,
                              jax.device_put(jnp.asarray(labels), named_sharding(mesh, ("batch",))))
    np.testing.assert_allclose(float(loss), single[0], rtol=1e-6)
    np.testing.assert_allclose(np.asarray(grad), single[1], rtol=1e-5, atol=1e-6)
    assert float(acc) == pytest.approx(single[2])


def test_no_whole_logits_in_memory():
    """131k entries: the compiled loss and gradient hold chunks of logits, never all [B, N]."""
    b, d, c, k = 16, 16, 1024, 128
    f = jax.jit(jax.value_and_grad(lambda q, w, y: entry_cross_entropy(q, w, y, num_entries=c * k - 7), has_aux=True))
    shapes = [jax.ShapeDtypeStruct(s, t) for s, t in [((b, d), jnp.float32), ((k, c, d), jnp.float32),
                                                       ((b,), jnp.int32)]]
    temp = f.lower(*shapes).compile().memory_analysis().temp_size_in_bytes
    assert temp < b * c * k * 4 / 8, temp


def test_reference_format(tmp_path):
    path = tmp_path / "dict.tsv"
    path.write_text("bank\tland beside a river <|list_more_def|> a place that keeps money\n\n"
                    "run up\tto accumulate a debt\nbank\tto tilt an aircraft\n", encoding="utf-16")
    d = read_definitions(str(path))
    assert d.entries == ("bank", "run up")
    assert d.examples == [("land beside a river", 0), ("a place that keeps money", 0), ("to accumulate a debt", 1),
                          ("to tilt an aircraft", 0)]
    assert read_definitions(str(path), max_examples=3).entries == ("bank", "run up")
    mini = read_definitions("builtin:defs-mini")
    assert len(mini.entries) == 600 and len(mini.definitions) == 769 and mini.entries[0] == "dog"


# WordNet's data.* layout (offset lex_filenum ss_type w_cnt word lex_id ... p_cnt pointers | gloss),
# with glosses of our own.
WORDNET_NOUN = """\
  1 License header lines start with two spaces
  2 and are skipped.
00001740 03 n 01 thing 0 001 ~ 00001930 n 0000 | whatever can be named
09358358 17 n 02 hill 0 knoll 1 001 @ 09287968 n 0000 | a rise of the ground; "we walked up the hill"; "a knoll"
03503477 06 n 01 hill 1 001 @ 03892891 n 0000 | a heap of soil
"""
WORDNET_ADJ = """\
00001740 00 a 01 able 0 001 = 05207437 n 0000 | (of people) having what it takes; "able to read"
01381913 00 s 02 big(a) 0 old_hat(p) 0 001 & 01382086 a 0000 | well known
"""


def test_wordnet_format(tmp_path):
    (tmp_path / "data.noun").write_text(WORDNET_NOUN)
    (tmp_path / "data.adj").write_text(WORDNET_ADJ)
    d = read_definitions(str(tmp_path))
    assert d.entries == ("thing", "hill", "knoll", "able", "big", "old hat")
    assert d.examples == [("whatever can be named", 0), ("a rise of the ground", 1), ("a rise of the ground", 2),
                          ("a heap of soil", 1), ("(of people) having what it takes", 3), ("well known", 4),
                          ("well known", 5)]
    assert read_definitions(str(tmp_path / "data.adj")).entries == ("able", "big", "old hat")


def test_installed_wordnet():
    """WordNet 3.0 as Debian's wordnet-base installs it, when it is there."""
    path = Path("/usr/share/wordnet")
    if not (path / "data.adv").is_file():
        pytest.skip("WordNet is not installed (apt-get install wordnet-base)")
    d = read_definitions(str(path / "data.adv"))
    assert len(d.entries) > 3000 and all(e and "_" not in e for e in d.entries)
    assert all(d and '; "' not in d for d in d.definitions)


@pytest.mark.parametrize("name, text, message", [
    ("d.tsv", "cat\ta small furry animal\ndog\t\n", r"d.tsv:2: entry 'dog' has no definition"),
    ("d.tsv", "cat\ta pet\nparrot\n", r"d.tsv:2: entry 'parrot' has no definition"),
    ("d.tsv", "cat\ta pet\ndog\t <|list_more_def|> \n", r"d.tsv:2: entry 'dog' has no definition"),
    ("d.tsv", "\n\n", "the dictionary is empty"),
    ("data.verb", "00001740 29 v 01 breathe 0 000 | \n", r"data.verb:1: synset of 'breathe' has no definition"),
    ("data.verb", "00001740 29 v 01 breathe 0 000\n", r"data.verb:1: synset of 'breathe' has no definition"),
    ("data.noun", "00001740 03 n zz entity\n", r"data.noun:1: not a WordNet synset line"),
])
def test_bad_dictionaries_are_named_by_file_and_line(tmp_path, name, text, message):
    (tmp_path / name).write_text(text)
    with pytest.raises(DataFormatError, match=message):
        read_definitions(str(tmp_path / name))


def test_missing_dictionaries(tmp_path):
    with pytest.raises(DataFormatError, match="no WordNet database files"):
        read_definitions(str(tmp_path))
    with pytest.raises(DataFormatError, match="no such dictionary file"):
        read_definitions(str(tmp_path / "nope.tsv"))
    with pytest.raises(DataFormatError, match="unknown built-in dictionary; choose from builtin:defs-mini"):
        read_definitions("builtin:nope")


@pytest.mark.parametrize("override, message", [
    ("objective.entry_pooling=cls", r"objective.entry_pooling"),
    ("objective.sentence_pooling=max", r"objective.sentence_pooling"),
    ("objective.rounds=0", r"objective.rounds=0: must be >= 1"),
    ("data.kind=nli", r"objective.name=defsent does not train on data.kind=nli: set data.kind=definitions"),
])
def test_bad_options_fail_on_load(override, message):
    with pytest.raises(ConfigError, match=message):
        load_recipe(TrainConfig, None, [*DEFSENT, override])


def test_static_checks_before_loading():
    mesh = make_mesh(MeshConfig(2, 2, 2))
    cfg = load_recipe(TrainConfig, None, [*DEFSENT, "objective.chunk=6"])
    with pytest.raises(ConfigError, match="objective.chunk=6: .* fsdp x tensor = 4 devices; use a multiple of 4"):
        definition.check_static(cfg, mesh)
    cfg = load_recipe(TrainConfig, None, [*DEFSENT, "data.pipeline=streaming"])
    with pytest.raises(ConfigError, match="data.pipeline=memory"):
        definition.check_static(cfg, mesh)


def test_entry_means_and_isotropic():
    vectors = np.arange(12.0).reshape(6, 2)
    np.testing.assert_allclose(entry_means(vectors, np.array([0, 1, 0, 2, 2, 2]), 3),
                               [[2, 3], [2, 3], [8, 9]])
    x = np.random.default_rng(0).laplace(size=(300, 8)) @ np.random.default_rng(1).normal(size=(8, 8))
    y = isotropic(x)
    assert y.shape == (300, 8)
    np.testing.assert_allclose(y.std(0), 100, rtol=1e-6)  # unit-variance sources, x100
    np.testing.assert_allclose(y.mean(0), 0, atol=1e-8)
    np.testing.assert_allclose(np.corrcoef(y.T), np.eye(8), atol=1e-6)  # whitened
    np.testing.assert_array_equal(isotropic(x), y)  # seeded
    with pytest.raises(ValueError, match="dictionary has 5 entries for 8 channels"):
        isotropic(x[:5])


def test_checkpoint_without_pooler_is_refused():
    cfg = load_recipe(TrainConfig, None, DEFSENT)
    encoder = SimpleNamespace(config=SimpleNamespace(with_pooler=False), path="some/roberta")
    with pytest.raises(ValueError, match=r"pooler \(pooler.dense.\*\), which some/roberta lacks"):
        DefinitionObjective(cfg.objective, encoder, 10)


def test_two_progressive_rounds_train_and_export(tmp_path, monkeypatch):
    """Round 2 starts again from model.name with entries from round 1's encoder: its first loss
    differs from round 1's (same batch, same dropout), and only the last round exports."""
    whitened = []
    monkeypatch.setattr(definition, "isotropic", lambda e: whitened.append(e.shape) or e)
    cfg = load_recipe(TrainConfig, None, [
        *DEFSENT, "objective.rounds=2", "objective.entry_pooling=amp", "objective.isotropic=true",
        "objective.chunk=256", "model.num_layers=1", "model.max_length=16", "data.batch_size=8", "data.buckets=16",
        "eval.data=null", "eval.batch_size=128", "log.every=1", "steps=2", "mesh.data=2", "mesh.fsdp=2",
        "mesh.tensor=2", "optim.lr=1e-3", f"log.dir={tmp_path}/log", f"export={tmp_path}/hf"])
    summary = train(cfg, progress=False)
    first, second = summary["rounds"]
    assert [first["round"], second["round"]] == [1, 2] and summary["steps"] == 2
    losses = [*first["losses"].values(), *second["losses"].values()]
    assert all(np.isfinite(losses)) and abs(np.log(600) - losses[0]) < 0.5
    assert first["losses"][1] != second["losses"][1]
    assert whitened == [(600, 384), (600, 384)]
    assert sorted(p.name for p in (tmp_path / "log").iterdir()) == ["round1", "round1-encoder", "round2"]
    assert (Path(tmp_path) / "log" / "round2" / "metrics.jsonl").is_file()
    exported = load_encoder(tmp_path / "hf")
    assert exported.config.num_hidden_layers == 1 and exported.config.with_pooler
    trained = jax.device_get(summary["state"].params["encoder"]["layers"]["up"]["kernel"])
    np.testing.assert_allclose(exported.params["layers"]["up"]["kernel"], trained)


def test_rounds_thread_each_encoder_into_the_next(tmp_path):
    """Each round trains model.name again, its entries from the previous round's export; a
    round stopped early ends the sequence."""
    cfg = load_recipe(TrainConfig, None, [*DEFSENT, "objective.rounds=3", "objective.entry_model=start",
                                          f"log.dir={tmp_path}", f"export={tmp_path}/final"])
    seen = []

    def fake(round_cfg, stop=None):
        seen.append((round_cfg.model.name, round_cfg.objective.entry_model, round_cfg.export, round_cfg.log.dir))
        return {"losses": {}, "eval": {}, "steps": 1, "stopped_by": "SIGTERM" if len(seen) == stop else None}

    assert [r["round"] for r in progressive.train_rounds(cfg, fake)["rounds"]] == [1, 2, 3]
    name = cfg.model.name
    assert seen == [(name, "start", f"{tmp_path}/round1-encoder", f"{tmp_path}/round1"),
                    (name, f"{tmp_path}/round1-encoder", f"{tmp_path}/round2-encoder", f"{tmp_path}/round2"),
                    (name, f"{tmp_path}/round2-encoder", f"{tmp_path}/final", f"{tmp_path}/round3")]
    seen.clear()
    assert len(progressive.train_rounds(cfg, fake, stop=2)["rounds"]) == 2
