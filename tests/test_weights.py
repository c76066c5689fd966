"""Checkpoint loading: formats, prefixes, sharded placement and every kind of mismatch."""

import json

import jax
import numpy as np
import pytest

from jaxalign.models import load_encoder
from jaxalign.models.bert.config import UnsupportedModelError
from jaxalign.models.registry import resolve_model_path
from jaxalign.sharding import MeshConfig, ShardingConfigError, make_mesh
from jaxalign.weights import CheckpointError

from torch_refs import save_tiny  # noqa: E402  (skips the module without torch)


def add_tokenizer(directory, minilm_path):
    # Tokenizer files from the real MiniLM checkpoint; the tiny vocab is too small for them,
    # which is itself tested below, so tests that need loading use a large enough vocab.
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        (directory / name).write_bytes((minilm_path / name).read_bytes())


@pytest.fixture(scope="module")
def minilm_path():
    return resolve_model_path("all-MiniLM-L6-v2")


def tiny(tmp_path, minilm_path, **kw):
    model = save_tiny(tmp_path, vocab_size=30522, **kw)
    add_tokenizer(tmp_path, minilm_path)
    return model


def test_sharded_safetensors_with_index(tmp_path, minilm_path):
    model = tiny(tmp_path, minilm_path, max_shard_size="200KB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    enc = load_encoder(tmp_path)
    ref = model.embeddings.word_embeddings.weight.detach().numpy()
    np.testing.assert_array_equal(np.asarray(enc.params["embeddings"]["word"]["embedding"]), ref)
    q = model.encoder.layer[1].attention.self.query.weight.detach().numpy()
    np.testing.assert_array_equal(np.asarray(enc.params["layers"]["attention"]["query"]["kernel"][1]), q.T)


def test_wrapper_prefix_and_pretraining_head_are_handled(tmp_path, minilm_path):
    tiny(tmp_path, minilm_path, head="ForMaskedLM")
    enc = load_encoder(tmp_path)
    assert enc.config.with_pooler is False  # BertForMaskedLM has no pooler
    assert enc.pooling.mode == "cls"


def test_loads_straight_into_target_sharding(tmp_path, minilm_path):
    tiny(tmp_path, minilm_path)
    mesh = make_mesh(MeshConfig(2, 2, 2))
    enc = load_encoder(tmp_path, mesh=mesh)
    kernel = enc.params["layers"]["up"]["kernel"]  # [layers=2, embed=32, mlp=64] -> layers replicated, fsdp x tensor
    assert kernel.sharding.spec == jax.sharding.PartitionSpec(None, "fsdp", "tensor")
    assert kernel.addressable_shards[0].data.shape == (2, 16, 32)


def test_mismatches_are_all_named(tmp_path, minilm_path):
    from safetensors.numpy import load_file, save_file

    tiny(tmp_path, minilm_path)
    tensors = load_file(tmp_path / "model.safetensors")
    del tensors["encoder.layer.1.output.dense.bias"]
    tensors["encoder.layer.0.intermediate.dense.weight"] = np.zeros((63, 32), np.float32)
    tensors["encoder.layer.0.surprise.weight"] = np.zeros(3, np.float32)
    save_file(tensors, tmp_path / "model.safetensors")
    with pytest.raises(CheckpointError) as e:
        load_encoder(tmp_path)
    msg = str(e.value)
    assert "1 missing tensor(s): encoder.layer.1.output.dense.bias" in msg
    assert "encoder.layer.0.intermediate.dense.weight: checkpoint (63, 32), model expects (64, 32)" in msg
    assert "1 unexpected tensor(s): encoder.layer.0.surprise.weight" in msg


def test_bad_model_inputs(tmp_path, minilm_path):
    with pytest.raises(CheckpointError, match="no such directory, and not a packaged model name"):
        load_encoder(tmp_path / "nope")
    (tmp_path / "gpt").mkdir()
    (tmp_path / "gpt" / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(UnsupportedModelError, match="model_type 'gpt2' is not a supported encoder"):
        load_encoder(tmp_path / "gpt")
    small = tmp_path / "small"
    save_tiny(small)  # vocab 120 < the tokenizer's 30522
    add_tokenizer(small, minilm_path)
    with pytest.raises(CheckpointError, match="tokenizer has 30522 tokens but the model's vocab_size is 120"):
        load_encoder(small)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(CheckpointError, match="no model.safetensors"):
        load_encoder(tmp_path / "empty")


def test_indivisible_tensor_rejected_before_compilation(tmp_path, minilm_path):
    tiny(tmp_path, minilm_path)
    with pytest.raises(ShardingConfigError, match="not divisible"):
        load_encoder(tmp_path, mesh=make_mesh(MeshConfig(1, 1, 8)))  # 4 heads' 32 dims fine, vocab 30522 / 8 not

