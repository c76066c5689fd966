"""Packed preference batches (data.packing = padding_free, shared_prompt) against the padded ones:
the layout, the shared-prompt attention mask, and per-sequence log-probs, every sequence loss and
their gradients equal to 1e-5 (float32) on a tiny random Llama, sharded and on SmolLM2."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxalign.config import objectives
from jaxalign.config.loader import ConfigError
from jaxalign.data.preference.collate import PreferenceExample, collate_preference
from jaxalign.data.preference.packing import pack_preference, row_lengths
from jaxalign.losses import DPO_LOSS_TYPES
from jaxalign.models.decoders import load_decoder
from jaxalign.objectives.preference import SEQUENCE_LOSSES, PreferenceObjective
from jaxalign.objectives.scoring import PACKED_AXES, sequence_logps
from jaxalign.ops.attention import AttentionMask, BranchSegments, attention, einsum_attention, select
from jaxalign.sharding import MeshConfig, make_mesh, named_sharding

from test_decoder_parity import save_tiny_decoder

MAX_LENGTH = 24
BUCKETS = (8, 16, 32)
MODES = ("padding_free", "shared_prompt")


def examples(kind: str, n: int = 8, vocab: int = 128, seed: int = 0) -> list[PreferenceExample]:
    """``n`` random examples of ``kind`` (C columns: paired 2, sft 1, negatives 3, unpaired 1 + KL)."""
    rng = np.random.default_rng(seed)
    columns = {"paired": 2, "sft": 1, "negatives": 3, "unpaired": 1}[kind]
    out = []
    for i in range(n):
        p = int(rng.integers(1, 9))
        comps = tuple(rng.integers(3, vocab, int(rng.integers(1, MAX_LENGTH - p + 1))).astype(np.int32)
                      for _ in range(columns))
        out.append(PreferenceExample(rng.integers(3, vocab, p).astype(np.int32), comps,
                                     label=bool(i % 2) if kind == "unpaired" else None, index=i))
    return out


def padded(exs):
    return collate_preference(exs, buckets=BUCKETS, max_length=MAX_LENGTH, pad_id=2)


def packed(exs, mode, **kw):
    return pack_preference(exs, packing=mode, rows=kw.pop("rows", None), max_length=MAX_LENGTH, buckets=BUCKETS,
                           pad_id=2, **kw)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tiny-llama")
    save_tiny_decoder(directory, "LlamaForCausalLM", tie_word_embeddings=False, attention_bias=True)
    return load_decoder(directory, attention="einsum")


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kind", ["paired", "negatives", "unpaired"])
def test_layout_maps_every_completion_token_back(mode, kind):
    exs = examples(kind)
    pad, pk = padded(exs), packed(exs, mode, rows=4, shards=2)
    R, L = pk["input_ids"].shape
    b, c, _ = pad["input_ids"].shape
    assert R == 4 and L in row_lengths(BUCKETS, 2 * c * MAX_LENGTH)  # 2 = examples per row
    # every completion token, through token_index, is the padded batch's token at the same place
    tc = pk["loss_mask"].shape[-1]
    for i in range(b):
        for j in range(c):
            want = pad["input_ids"][i, j][pad["loss_mask"][i, j] > 0]
            n = len(want)
            assert pk["loss_mask"][i, j].sum() == n and pk["loss_mask"][i, j, :n].all() and tc >= n
            slots = pk["token_index"][i, j, :n]
            np.testing.assert_array_equal(pk["input_ids"].reshape(-1)[slots], want)
            # its position is its position in the padded row; its predecessor predicts it as there
            p = int(np.argmax(pad["loss_mask"][i, j]))  # the prompt length
            np.testing.assert_array_equal(pk["positions"].reshape(-1)[slots], np.arange(p, p + n))
            pred = pk["predecessor"].reshape(-1)[slots] + slots // L * L
            np.testing.assert_array_equal(pk["input_ids"].reshape(-1)[pred[0]], pad["input_ids"][i, j, p - 1])
            np.testing.assert_array_equal(pred[1:], slots[:-1])
            assert ((slots // L < 2) == (i < b // 2)).all()  # each device's rows hold its own examples
    if mode == "padding_free":  # every real token once
        assert pk["attention_mask"].sum() == pad["attention_mask"].sum() and "branch_ids" not in pk
    else:  # the prompt once per example
        prompts = sum(len(ex.prompt) for ex in exs)
        assert pk["attention_mask"].sum() == pad["attention_mask"].sum() - (c - 1) * prompts


def test_packing_bad_input_names_the_field():
    exs = examples("paired")
    with pytest.raises(ValueError, match="data.packed_length"):
        packed(exs, "padding_free", packed_length=8)
    with pytest.raises(ValueError, match="data.packed_rows"):
        packed(exs, "padding_free", rows=1, packed_length=32)
    with pytest.raises(ValueError, match="data.packed_rows=3"):
        packed(exs, "shared_prompt", rows=3, shards=2)
    with pytest.raises(ValueError, match="max_length"):
        pack_preference(exs, packing="shared_prompt", rows=None, max_length=8, buckets=BUCKETS, pad_id=2)


def test_config_refuses_packing_where_it_cannot_apply():
    from jaxalign.config.run import DataConfig, ModelConfig, TrainConfig

    with pytest.raises(ConfigError, match="data.packing"):
        DataConfig(kind="nli", packing="padding_free")
    with pytest.raises(ConfigError, match="data.packing=shared_prompt with objective.name=reward"):
        TrainConfig(model=ModelConfig(max_length=64), data=DataConfig(kind="preference", packing="shared_prompt"),
                    objective=objectives.Reward())
    from jaxalign.tasks.preference import check_packing

    cfg = TrainConfig(model=ModelConfig(max_length=64), objective=objectives.DPO(),
                      data=DataConfig(kind="preference", batch_size=8, packing="padding_free", packed_rows=6))
    with pytest.raises(ConfigError, match="data.packed_rows=6: must be a multiple of the data-parallel size 4.*8"):
        check_packing(cfg, make_mesh(MeshConfig(data=2, fsdp=2, tensor=2)))


def test_branch_mask_shares_the_prompt_only():
    """[prompt, chosen, rejected] with branches: against a dense mask written out by hand, for einsum
    and xla; cuDNN and splash refuse it, naming the kernels that take it."""
    group = jnp.asarray([[1, 1, 1, 1, 1, 1, 2, 2, 2, 0]])
    branch = jnp.asarray([[0, 0, 1, 1, 2, 2, 0, 1, 2, 0]])
    key_mask = (group > 0).astype(jnp.int32)
    seg = BranchSegments(group, branch)
    mask = AttentionMask(key_mask=key_mask, causal=True, q_segments=seg, kv_segments=seg)
    want = np.zeros((10, 10), bool)
    for q in range(9):
        for k in range(q + 1):
            same = group[0, q] == group[0, k]
            want[q, k] = bool(same and key_mask[0, k] and (branch[0, k] == 0 or branch[0, k] == branch[0, q]))
    np.testing.assert_array_equal(np.asarray(mask.dense(10, 10)[0]), want)
    rng = np.random.default_rng(0)
    q, k, v = (jnp.asarray(rng.standard_normal(s), jnp.float32) for s in ((1, 10, 4, 8), (1, 10, 2, 8), (1, 10, 2, 8)))
    np.testing.assert_allclose(attention(q, k, v, mask, implementation="xla"),
                               einsum_attention(q, k, v, mask, scale=8 ** -0.5), atol=1e-6)
    qh = jnp.asarray(q, jnp.bfloat16)
    for kernel in ("cudnn", "splash"):
        with pytest.raises(ValueError, match="shared-prompt mask.*use auto, xla or einsum"):
            select(kernel, qh, qh[:, :, :2], mask, backend="gpu" if kernel == "cudnn" else "tpu")
    assert select("auto", qh, qh[:, :, :2], mask, backend="gpu") == "xla"


def objective_cases():
    """(id, objective config, data kind): every sequence-level loss of the registry."""
    smoothing = {"exo_pair": 1e-3}  # EXO is infinite without it (TRL's default)
    cases = [(f"dpo-{t}", objectives.DPO(loss_type=(t,), label_smoothing=smoothing.get(t, 0.0)), "paired")
             for t in DPO_LOSS_TYPES]
    cases += [("simpo", objectives.SimPO(), "paired"), ("cpo", objectives.CPO(), "paired"),
              ("orpo", objectives.ORPO(), "paired"), ("asft", objectives.ASFT(), "paired"),
              ("kto", objectives.KTO(), "unpaired"), ("d2o", objectives.D2O(), "negatives"),
              ("poft", objectives.PoFT(aligned_models=("unused",)), "sft")]
    return cases


def perturbed(params, scale=0.02):
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.PRNGKey(1), len(leaves))
    return treedef.unflatten([x + scale * jax.random.normal(k, x.shape, x.dtype) for x, k in zip(leaves, keys)])


def loss_and_grad(objective, params, frozen, batch):
    fn = jax.jit(jax.value_and_grad(lambda p, b: objective.loss(p, b, jax.random.PRNGKey(0), frozen), has_aux=True))
    (loss, _), grads = fn(params, batch)
    return loss, grads


def assert_trees_close(got, want, tol=1e-5):
    """Every leaf within ``tol`` of the reference, relative to the leaf's scale (at least 1)."""
    for x, y in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        x, y = np.asarray(x), np.asarray(y)
        assert np.abs(x - y).max() <= tol * max(1.0, np.abs(y).max()), np.abs(x - y).max()


@pytest.mark.parametrize("mode", MODES)
def test_every_loss_and_its_gradient_equal_padded(tiny, mode):
    """Per-sequence log-probs, lengths and their vector-Jacobian products (the model's backward)
    packed equal padded; every sequence loss reads nothing else, so its value and its parameter
    gradient (the VJP of dloss/dlogps) are compared through them, one compiled VJP per data kind."""
    def logps_and_vjp(p, b, ct):
        out, back = jax.vjp(lambda q: sequence_logps(tiny, q, b, chunk=16)[0], p)
        return out, back(ct)[0]

    vjp = jax.jit(logps_and_vjp)
    lengths = jax.jit(lambda b: sequence_logps(tiny, tiny.params, b, chunk=16)[1])
    reference = perturbed(tiny.params)
    aligned = jnp.asarray(np.random.default_rng(2).standard_normal((8, 2)) - 20, jnp.float32)
    rng = np.random.default_rng(4)
    for kind in ("paired", "unpaired", "negatives", "sft"):
        exs = examples(kind, seed=3)
        batches = {"padded": padded(exs), "packed": packed(exs, mode, rows=4)}
        ct = jnp.asarray(rng.standard_normal(batches["padded"]["input_ids"].shape[:2]), jnp.float32)
        scored = {k: (*vjp(tiny.params, b, ct), vjp(reference, b, ct)[0], lengths(b)) for k, b in batches.items()}
        (want_logps, want_vjp, want_ref, want_len), (logps, got_vjp, ref, got_len) = scored["padded"], scored["packed"]
        np.testing.assert_allclose(logps, want_logps, atol=1e-5, rtol=1e-6)
        np.testing.assert_allclose(ref, want_ref, atol=1e-5, rtol=1e-6)
        np.testing.assert_array_equal(got_len, want_len)
        assert_trees_close(got_vjp, want_vjp)
        cases = [c for c in objective_cases() if c[2] == kind]
        batch = {"label": batches["padded"].get("label"), "aligned_scores": aligned}

        @jax.jit  # every loss of the kind in one program: one compile, not one per eager op
        def losses(lp, r, n):
            return [jax.value_and_grad(lambda lp, cfg=cfg: SEQUENCE_LOSSES[cfg.name](cfg, lp, n, r, batch)[0].mean())(lp)
                    for _, cfg, _ in cases]

        for (name, _, _), (want, dwant), (got, dgot) in zip(cases, losses(want_logps, want_ref, want_len),
                                                            losses(logps, ref, got_len)):
            np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5, err_msg=name)
            np.testing.assert_allclose(dgot, dwant, atol=1e-5, rtol=1e-5, err_msg=name)
            assert_trees_close(vjp(tiny.params, batches["packed"], dgot)[1],
                               vjp(tiny.params, batches["padded"], dwant)[1])


@pytest.mark.parametrize("mode", MODES)
def test_per_token_objectives_equal_padded(tiny, mode):
    """WPO's weights and LD-DPO's weighted sums read per-token log-probs: the whole objective's
    loss and gradient (policy and a perturbed reference forward) packed equal padded."""
    objective = PreferenceObjective(objectives.DPO(use_weighting=True, ld_alpha=0.5), tiny)
    params, frozen = {"policy": tiny.params}, {"reference": perturbed(tiny.params)}
    exs = examples("paired", seed=6)
    want = loss_and_grad(objective, params, frozen, padded(exs))
    got = loss_and_grad(objective, params, frozen, packed(exs, mode))
    np.testing.assert_allclose(got[0], want[0], atol=1e-5, rtol=1e-5)
    assert_trees_close(got[1], want[1])


@pytest.mark.parametrize("mode", MODES)
def test_logps_compile_once_per_row_length(tiny, mode):
    fn = jax.jit(lambda p, b: sequence_logps(tiny, p, b, chunk=16))
    lengths = set()
    for seed in range(4):
        batch = packed(examples("paired", seed=seed), mode, rows=4)
        lengths.add(batch["input_ids"].shape)
        fn(tiny.params, batch)
    assert fn._cache_size() == len(lengths)


def test_sharded_packed_step_equals_single_device(tiny):
    """The shared-prompt DPO loss and gradient on 8 simulated devices (data x fsdp = 2 x 4) equal
    the single-device step."""
    objective = PreferenceObjective(objectives.DPO(), tiny)
    params, frozen = {"policy": tiny.params}, {"reference": perturbed(tiny.params)}
    exs = examples("paired", seed=5)
    batch = packed(exs, "shared_prompt", rows=8, shards=8)
    want = loss_and_grad(objective, params, frozen, batch)
    mesh = make_mesh(MeshConfig(data=2, fsdp=4, tensor=1))
    sharded = load_decoder(tiny.path, mesh=mesh, attention="einsum")
    objective = PreferenceObjective(objectives.DPO(), sharded)
    params = {"policy": sharded.params}
    frozen = {"reference": perturbed(sharded.params)}
    placed = {k: jax.device_put(v, named_sharding(mesh, PACKED_AXES[k])) for k, v in batch.items()}
    with jax.set_mesh(mesh):
        got = loss_and_grad(objective, params, frozen, placed)
    np.testing.assert_allclose(got[0], want[0], atol=1e-6)
    assert_trees_close(got[1], want[1])


def test_smollm2_dpo_packed_equals_padded(smol_tokenizer):
    """SmolLM2-135M-Instruct cut to 2 layers, HH-style text: sequence log-probs, the DPO loss and its
    gradient packed (both modes) equal padded."""
    decoder = load_decoder("SmolLM2-135M-Instruct", num_layers=2)
    tok = decoder.tokenizer
    texts = [("Human: How do I bake bread?\n\nAssistant:", " Mix flour, water, yeast and salt.", " I don't know."),
             ("Human: What is the capital of France?\n\nAssistant:", " Paris.", " It is Lyon, I think, or maybe Nice."),
             ("Human: Tell me a joke.\n\nAssistant:", " Why did the chicken cross the road?", " No."),
             ("Human: Hi\n\nAssistant:", " Hello! How can I help you today?", " Hey.")]
    ids = lambda s: np.asarray(tok(s)["input_ids"], np.int32)  # noqa: E731
    exs = [PreferenceExample(ids(p), (ids(c), ids(r)), index=i) for i, (p, c, r) in enumerate(texts)]
    objective = PreferenceObjective(objectives.DPO(), decoder)
    params, frozen = {"policy": decoder.params}, {"reference": perturbed(decoder.params, 0.002)}
    logps = jax.jit(lambda b: sequence_logps(decoder, decoder.params, b, chunk=32)[0])
    pad = collate_preference(exs, buckets=(32, 64), max_length=64, pad_id=int(tok.pad_token_id))
    want_logps, want = logps(pad), loss_and_grad(objective, params, frozen, pad)
    for mode in MODES:
        pk = pack_preference(exs, packing=mode, rows=2, max_length=64, buckets=(32, 64), pad_id=int(tok.pad_token_id))
        np.testing.assert_allclose(logps(pk), want_logps, atol=1e-5, rtol=1e-6, err_msg=mode)
        got = loss_and_grad(objective, params, frozen, pk)
        np.testing.assert_allclose(got[0], want[0], atol=1e-5, err_msg=mode)
        assert_trees_close(got[1], want[1])
