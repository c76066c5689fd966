"""Model merging: each method against a NumPy reference, the checkpoints `jaxalign merge` writes,
the Self Positioning search and the errors for bad input."""

import contextlib
import io
import json
import shutil

import jax
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from jaxalign.cli import main
from jaxalign.models import load_encoder
from jaxalign.models import merge
from jaxalign.models.bert import weights as bert_weights
from jaxalign.models.export import checkpoint_tensors, export_hf
from jaxalign.models.self_positioning import info_nce_probe_loss, probe_batches, search
from jaxalign.data.corpora import read_nli

SHAPES = {"a": (3, 4), "b": (5,), "c": (2, 2, 2)}


def random_tree(seed):
    rng = np.random.default_rng(seed)
    return {k: rng.normal(size=s) for k, s in SHAPES.items()}


def flat(tree):
    return np.concatenate([np.ravel(tree[k]) for k in sorted(tree)])


def np_slerp(v0, v1, t):
    """Textbook SLERP of two flat vectors (Shoemake 1985)."""
    alpha = np.arccos(v0 @ v1 / np.linalg.norm(v0) / np.linalg.norm(v1))
    return (np.sin((1 - t) * alpha) * v0 + np.sin(t * alpha) * v1) / np.sin(alpha)


@pytest.fixture
def x64():
    with jax.enable_x64(True):
        yield


@pytest.mark.usefixtures("x64")
def test_weighted_average_matches_numpy():
    vs = [random_tree(i) for i in range(3)]
    w = [0.5, 1.0, 2.5]
    got = flat(jax.device_get(merge.weighted_average(vs, w, scale=1.7)))
    want = 1.7 * sum(wi * flat(v) for wi, v in zip(w, vs)) / sum(w)
    np.testing.assert_allclose(got, want, rtol=1e-12)
    np.testing.assert_allclose(flat(merge.weighted_average(vs)), np.mean([flat(v) for v in vs], 0), rtol=1e-12)


@pytest.mark.usefixtures("x64")
def test_task_vectors_round_trip():
    base, model = random_tree(0), random_tree(1)
    (v,) = merge.task_vectors(base, [model])
    np.testing.assert_allclose(flat(merge.apply_task_vector(base, v)), flat(model), rtol=1e-12)


@pytest.mark.usefixtures("x64")
def test_slerp_endpoints_and_numpy():
    v0, v1 = random_tree(0), random_tree(1)
    np.testing.assert_allclose(flat(merge.slerp(v0, v1, 0.0)), flat(v0), atol=1e-12)
    np.testing.assert_allclose(flat(merge.slerp(v0, v1, 1.0)), flat(v1), atol=1e-12)
    np.testing.assert_allclose(flat(merge.slerp(v0, v1, 0.3)), np_slerp(flat(v0), flat(v1), 0.3), rtol=1e-10)
    # the angle is global: per-tensor SLERP would give a different result
    per_tensor = np.concatenate([np_slerp(np.ravel(v0[k]), np.ravel(v1[k]), 0.3) for k in sorted(SHAPES)])
    assert not np.allclose(flat(merge.slerp(v0, v1, 0.3)), per_tensor)


@pytest.mark.usefixtures("x64")
def test_slerp_of_parallel_vectors_is_linear_and_finite():
    v0 = random_tree(0)
    v1 = jax.tree.map(lambda x: 2 * x, v0)
    np.testing.assert_allclose(flat(merge.slerp(v0, v1, 0.25)), 1.25 * flat(v0), rtol=1e-6)
    grad = jax.grad(lambda t: sum(x.sum() for x in jax.tree.leaves(merge.slerp(v0, v1, t))))(0.25)
    assert np.isfinite(grad)


@pytest.mark.usefixtures("x64")
def test_slerp_weighted_conventions():
    vi, vj = random_tree(0), random_tree(1)
    fi, fj = flat(vi), flat(vj)
    ai, aj = 0.7, 2.1
    alpha = np.arccos(fi @ fj / np.linalg.norm(fi) / np.linalg.norm(fj))
    # METHODS' two readings of f(V_i, V_j, a_i, a_j), written out directly
    standard = (np.sin(ai / (ai + aj) * alpha) * fi + np.sin(aj / (ai + aj) * alpha) * fj) / np.sin(alpha)
    transcribed = (np.sin(aj / (ai + aj) * alpha) * fi + np.sin(ai / (ai + aj) * alpha) * fj) / np.sin(alpha)
    np.testing.assert_allclose(flat(merge.slerp_weighted(vi, vj, ai, aj)), standard, rtol=1e-10)
    np.testing.assert_allclose(flat(merge.slerp_weighted(vi, vj, ai, aj, convention="transcribed")), transcribed,
                               rtol=1e-10)
    # endpoints: all weight on V_i gives V_i (standard) and V_j (transcribed)
    np.testing.assert_allclose(flat(merge.slerp_weighted(vi, vj, 1.0, 0.0)), fi, atol=1e-12)
    np.testing.assert_allclose(flat(merge.slerp_weighted(vi, vj, 1.0, 0.0, convention="transcribed")), fj, atol=1e-12)
    with pytest.raises(ValueError, match="convention"):
        merge.slerp_weighted(vi, vj, ai, aj, convention="paper")


@pytest.mark.usefixtures("x64")
@pytest.mark.parametrize("convention", ["standard", "transcribed"])
def test_slerp_iterative_matches_numpy(convention):
    vs = [random_tree(i) for i in range(3)]
    a = [0.5, 1.5, 3.0]
    merged = flat(vs[0])
    for k in range(1, 3):
        prior = np.mean(a[:k])
        share = a[k] / (prior + a[k])
        merged = np_slerp(merged, flat(vs[k]), share if convention == "standard" else 1 - share)
    np.testing.assert_allclose(flat(merge.slerp_iterative(vs, a, convention=convention)), merged, rtol=1e-9, atol=1e-12)


@pytest.mark.usefixtures("x64")
def test_ties_hand_example():
    # density 0.5 keeps the 2 largest |x| of each 4-entry vector
    v1 = {"w": np.array([3.0, -1.0, 0.5, -2.0])}   # trimmed: [3, 0, 0, -2]
    v2 = {"w": np.array([1.0, -4.0, 0.1, 2.0])}    # trimmed: [0, -4, 0, 2]
    v3 = {"w": np.array([-1.0, -3.0, 0.2, 5.0])}   # trimmed: [0, -3, 0, 5]
    # sums [3, -7, 0, 5] -> signs [+, -, 0, +]; agreeing means [3, (-4-3)/2, 0, (2+5)/2]
    got = merge.ties([v1, v2, v3], density=0.5)["w"]
    np.testing.assert_allclose(got, [3.0, -3.5, 0.0, 3.5])
    np.testing.assert_allclose(merge.ties([v1, v2, v3], density=0.5, scale=2.0)["w"], [6.0, -7.0, 0.0, 7.0])


def np_ties(vectors, density):
    out = {}
    for name in vectors[0]:
        xs = np.stack([v[name].ravel() for v in vectors])
        k = int(density * xs.shape[1])
        trimmed = np.zeros_like(xs)
        for row, x in enumerate(xs):
            keep = np.argsort(-np.abs(x), kind="stable")[:k]
            trimmed[row, keep] = x[keep]
        sign = np.sign(trimmed.sum(0))
        merged = np.zeros(xs.shape[1])
        for col in range(xs.shape[1]):
            agree = [t for t in trimmed[:, col] if t != 0 and np.sign(t) == sign[col]]
            merged[col] = np.mean(agree) if agree else 0.0
        out[name] = merged.reshape(vectors[0][name].shape)
    return out


@pytest.mark.usefixtures("x64")
@pytest.mark.parametrize("density", [0.3, 0.6, 1.0])
def test_ties_matches_numpy(density):
    vs = [random_tree(i) for i in range(4)]
    got, want = merge.ties(vs, density=density), np_ties(vs, density)
    for name in SHAPES:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-12)


# --- checkpoints -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """A one-layer all-MiniLM-L6-v2 as the base and two noisy copies of it as fine-tuned models."""
    root = tmp_path_factory.mktemp("merge")
    enc = load_encoder("all-MiniLM-L6-v2", num_layers=1)
    base = export_hf(enc, jax.device_get(enc.params), root / "base")
    models = []
    for seed in (1, 2):
        rng = np.random.default_rng(seed)
        params = jax.tree.map(lambda x: np.asarray(x) + 0.01 * rng.normal(size=x.shape).astype(np.float32),
                              jax.device_get(enc.params))
        models.append(export_hf(enc, params, root / f"ft{seed}"))
    return root, base, models


def cli(*args):
    return main(["merge", *map(str, args)])


def test_cli_average_writes_a_loadable_checkpoint(checkpoints, tmp_path):
    root, base, models = checkpoints
    assert cli("--base", base, "--models", *models, "--method", "average", "--weights", 1, 3, "--scale", 0.8,
               "--output", tmp_path / "avg") == 0
    b = load_file(base / "model.safetensors")
    m1, m2 = (load_file(m / "model.safetensors") for m in models)
    out = load_file(tmp_path / "avg" / "model.safetensors")
    assert set(out) == set(b)
    for name in b:
        want = b[name] + 0.8 * (1 * (m1[name] - b[name]) + 3 * (m2[name] - b[name])) / 4
        np.testing.assert_allclose(out[name], want, rtol=1e-5, atol=1e-6)
    for f in ("config.json", "tokenizer.json", "modules.json", "1_Pooling/config.json"):
        assert (tmp_path / "avg" / f).read_bytes() == (base / f).read_bytes()
    merged = load_encoder(tmp_path / "avg")
    loaded = checkpoint_tensors(bert_weights.RULES, jax.device_get(merged.params), 1)
    assert len(loaded) > 10
    for name, value in loaded.items():
        np.testing.assert_array_equal(value, out[name])


def test_merged_checkpoint_loads_in_sentence_transformers(checkpoints, tmp_path):
    st = pytest.importorskip("sentence_transformers")
    _, base, models = checkpoints
    assert cli("--base", base, "--models", *models, "--method", "average", "--output", tmp_path / "t") == 0
    from jaxalign.inference.embed import Embedder

    sentences = ["A man plays a guitar.", "Two dogs run through a field of grass."]
    ours = Embedder(load_encoder(tmp_path / "t"), batch_size=2)(sentences)
    ref = st.SentenceTransformer(str(tmp_path / "t"), device="cpu").encode(sentences)
    np.testing.assert_allclose(ours, ref, atol=1e-4)


@pytest.mark.parametrize("method,extra", [("ties", ["--density", "0.4"]), ("slerp", ["--weights", "1", "2"]),
                                          ("slerp", ["--convention", "transcribed"])])
def test_cli_methods_equal_the_pure_functions(checkpoints, tmp_path, method, extra):
    _, base, models = checkpoints
    assert cli("--base", base, "--models", *models, "--method", method, *extra, "--output", tmp_path / "m") == 0
    b = load_file(base / "model.safetensors")
    vs = merge.task_vectors(b, [load_file(m / "model.safetensors") for m in models])
    if method == "ties":
        v = merge.ties(vs, density=0.4)
    else:
        weights = [1.0, 2.0] if "--weights" in extra else [1.0, 1.0]
        v = merge.slerp_iterative(vs, weights, convention="transcribed" if "transcribed" in extra else "standard")
    out = load_file(tmp_path / "m" / "model.safetensors")
    for name in b:
        np.testing.assert_allclose(out[name], b[name] + np.asarray(v[name]), rtol=1e-5, atol=1e-6)


def test_self_positioning_search_reduces_its_objective(checkpoints):
    _, base, models = checkpoints
    enc = load_encoder(base)
    vectors = merge.task_vectors(enc.params, [load_encoder(m).params for m in models])
    batches = probe_batches(enc.tokenizer, read_nli("builtin:nli-mini")[:16], batch_size=8, max_length=16)
    loss = info_nce_probe_loss(enc, enc.params, enc.pooling)
    result = search(loss, vectors, batches, steps=30, learning_rate=0.05, mu=0.01)
    assert np.all(np.isfinite(result.weights)) and np.all(result.weights > 0) and np.isfinite(result.scale)
    assert np.isfinite(result.objectives).all()
    assert result.objectives[-2:].mean() < result.objectives[:2].mean(), result.objectives


def test_cli_self_positioning(checkpoints, tmp_path, capsys):
    _, base, models = checkpoints
    assert cli("--base", base, "--models", *models, "--method", "self-positioning", "--steps", 5,
               "--batch-size", 8, "--max-examples", 16, "--max-length", 16, "--output", tmp_path / "sp") == 0
    line = capsys.readouterr().out
    assert "lambda =" in line and "objective" in line
    assert load_encoder(tmp_path / "sp").config.num_hidden_layers == 1


# --- errors, each before any compute ----------------------------------------------------------

def error_of(*args) -> str:
    """What `jaxalign merge ARGS` prints to stderr; it must exit with status 2 (bad input)."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert cli(*args) == 2
    return err.getvalue()


def test_errors(checkpoints, tmp_path):
    root, base, models = checkpoints
    out = ["--output", tmp_path / "o"]
    assert "no such directory" in error_of("--base", tmp_path / "nope", "--models", *models, "--method",
                                        "average", *out)
    assert "--weights has 3 values for 2 --models" in error_of("--base", base, "--models", *models, "--method",
                                                            "average", "--weights", 1, 2, 3, *out)
    assert "at least 2 --models" in error_of("--base", base, "--models", models[0], "--method", "slerp", *out)
    assert "--density" in error_of("--base", base, "--models", *models, "--method", "ties", "--density", 0, *out)
    assert "fewer than one --batch-size" in error_of("--base", base, "--models", *models, "--method",
                                                  "self-positioning", "--max-examples", 3, "--batch-size", 8, *out)

    # a model with one tensor of a different shape, one with a tensor missing, one of another family
    tensors = load_file(models[0] / "model.safetensors")
    for name, change in (("reshaped", lambda t: {**t, "pooler.dense.bias": t["pooler.dense.bias"][:10]}),
                         ("missing", lambda t: {k: v for k, v in t.items() if k != "encoder.layer.0.output.dense.bias"})):
        bad = tmp_path / name
        shutil.copytree(models[0], bad)
        save_file(change(tensors), str(bad / "model.safetensors"))
    msg = error_of("--base", base, "--models", models[0], tmp_path / "reshaped", "--method", "average", *out)
    assert "'pooler.dense.bias' has shape (10,)" in msg and "(384,)" in msg
    msg = error_of("--base", base, "--models", tmp_path / "missing", "--method", "average", *out)
    assert "no tensor 'encoder.layer.0.output.dense.bias'" in msg
    other = tmp_path / "other"
    shutil.copytree(models[0], other)
    cfg = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**cfg, "model_type": "llama"}))
    assert "model_type 'llama'" in error_of("--base", base, "--models", other, "--method", "average", *out)
    assert not (tmp_path / "o").exists()


def tiny_decoder(directory, tokenizer_dir, seed, dtype=np.float32):
    """A one-layer Llama of width 8 with MiniLM's tokenizer, random weights (HF names, ``dtype``)."""
    directory.mkdir()
    for f in tokenizer_dir.iterdir():
        if f.name.startswith(("tokenizer", "vocab", "special_tokens")):
            shutil.copy(f, directory / f.name)
    config = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "vocab_size": 30522, "hidden_size": 8,
              "intermediate_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1,
              "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "max_position_embeddings": 64, "tie_word_embeddings": True}
    (directory / "config.json").write_text(json.dumps(config))
    shapes = {"model.embed_tokens.weight": (30522, 8), "model.norm.weight": (8,),
              **{f"model.layers.0.{k}": s for k, s in (
                  ("self_attn.q_proj.weight", (8, 8)), ("self_attn.k_proj.weight", (4, 8)),
                  ("self_attn.v_proj.weight", (4, 8)), ("self_attn.o_proj.weight", (8, 8)),
                  ("mlp.gate_proj.weight", (16, 8)), ("mlp.up_proj.weight", (16, 8)), ("mlp.down_proj.weight", (8, 16)),
                  ("input_layernorm.weight", (8,)), ("post_attention_layernorm.weight", (8,)))}}
    rng = np.random.default_rng(seed)
    save_file({k: rng.normal(size=s).astype(dtype) for k, s in shapes.items()}, str(directory / "model.safetensors"))
    return directory


def test_cli_merges_decoders(checkpoints, tmp_path):
    from jaxalign.models.decoders import load_decoder

    _, encoder_base, _ = checkpoints
    base, model = (tiny_decoder(tmp_path / name, encoder_base, seed) for seed, name in enumerate(("base", "ft")))
    assert cli("--base", base, "--models", model, "--method", "average", "--scale", 0.5, "--output", tmp_path / "m") == 0
    b, m = (jax.device_get(load_decoder(d).params) for d in (base, model))
    merged = jax.device_get(load_decoder(tmp_path / "m").params)
    assert len(jax.tree.leaves(merged)) == 11
    jax.tree.map(lambda x, y, z: np.testing.assert_allclose(x, y + 0.5 * (z - y), rtol=1e-5, atol=1e-6), merged, b, m)
    assert "self-positioning searches through an encoder" in error_of(
        "--base", base, "--models", model, model, "--method", "self-positioning", "--output", tmp_path / "sp")



def test_bfloat16_checkpoints_merge_in_float32_and_stay_bfloat16(checkpoints, tmp_path):
    """Published LLM checkpoints are mostly bfloat16, which NumPy lacks: read through ml_dtypes,
    merged in float32, written back as bfloat16 that torch reads."""
    import ml_dtypes
    from safetensors.torch import load_file

    from jaxalign.models.decoders import load_decoder

    _, encoder_base, _ = checkpoints
    base, model = (tiny_decoder(tmp_path / name, encoder_base, seed, ml_dtypes.bfloat16)
                   for seed, name in enumerate(("base", "ft")))
    assert cli("--base", base, "--models", model, "--method", "average", "--scale", 0.5, "--output", tmp_path / "m") == 0
    written = load_file(str(tmp_path / "m" / "model.safetensors"))
    assert {str(t.dtype) for t in written.values()} == {"torch.bfloat16"}
    b, m = (jax.device_get(load_decoder(d).params) for d in (base, model))
    merged = jax.device_get(load_decoder(tmp_path / "m").params)
    exact = jax.tree.map(lambda y, z: (y + 0.5 * (z - y)).astype(ml_dtypes.bfloat16).astype(np.float32), b, m)
    jax.tree.map(lambda x, y: np.testing.assert_array_equal(x, y), merged, exact)
