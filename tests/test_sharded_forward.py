"""The encoder forward under jax.jit with explicit shardings equals the single-device run."""

import jax
import numpy as np
import pytest

from jaxalign.inference.embed import Embedder, bucketed_batches, jit_encode
from jaxalign.models import load_encoder
from jaxalign.ops.pooling import PoolingConfig
from jaxalign.sharding import MeshConfig, ShardingConfigError, make_mesh

MESHES = [(8, 1, 1), (2, 4, 1), (2, 2, 2)]
POOLING = PoolingConfig("mean_top_k", top_k=2)  # exercises all hidden states, not just the last


@pytest.fixture(scope="module")
def batch(minilm, real_sentences):
    return bucketed_batches(minilm.tokenizer, real_sentences[:16], batch_size=16, max_length=64)[0]


@pytest.fixture(scope="module")
def single(minilm, batch):
    return np.asarray(jit_encode(minilm, POOLING)(minilm.params, *batch.arrays))


@pytest.mark.parametrize("shape", MESHES, ids=lambda s: "x".join(map(str, s)))
def test_sharded_equals_single_device(minilm, batch, single, shape):
    mesh = make_mesh(MeshConfig(*shape))
    enc = load_encoder(minilm.path, mesh=mesh)
    leaf = enc.params["layers"]["up"]["kernel"]
    assert len(leaf.sharding.device_set) == 8
    f = jit_encode(enc, POOLING, mesh)
    with jax.set_mesh(mesh):
        out = f(enc.params, *batch.arrays)
    assert out.sharding.spec[0] == ("data", "fsdp")
    np.testing.assert_allclose(np.asarray(out), single, rtol=1e-5, atol=1e-5)


def test_misfit_batch_rejected_before_compilation(minilm):
    mesh = make_mesh(MeshConfig(2, 4, 1))
    with pytest.raises(ShardingConfigError, match="batch size 12 is not divisible by the data-parallel size 8"):
        Embedder(minilm, batch_size=12, mesh=mesh)
