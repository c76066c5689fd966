import jax
import numpy as np
import pytest

from jaxalign.sharding import MeshConfig, ShardingConfigError, check_batch_size, logical_to_spec, make_mesh, named_sharding
from jaxalign.sharding.mesh import resolve_axis_sizes


def test_eight_simulated_devices():
    assert len(jax.devices()) == 8


@pytest.mark.parametrize(
    "cfg, expect",
    [((-1, 1, 1), (8, 1, 1)), ((2, -1, 1), (2, 4, 1)), ((2, 2, -1), (2, 2, 2)), ((1, 8, 1), (1, 8, 1))],
)
def test_resolve_fill(cfg, expect):
    assert resolve_axis_sizes(MeshConfig(*cfg), 8) == expect


@pytest.mark.parametrize(
    "cfg, message",
    [((3, 1, 1), "multiplies to 3"), ((-1, -1, 1), "only one axis"), ((3, -1, 1), "does not divide"), ((0, 8, 1), "positive")],
)
def test_misfit_mesh_is_rejected(cfg, message):
    with pytest.raises(ShardingConfigError, match=message):
        make_mesh(MeshConfig(*cfg))


def test_mesh_axes_and_parse():
    mesh = make_mesh(MeshConfig.parse("2,2,2"))
    assert mesh.axis_names == ("data", "fsdp", "tensor") and dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
    with pytest.raises(ShardingConfigError, match="three comma-separated"):
        MeshConfig.parse("2,2")


def test_batch_divisibility():
    mesh = make_mesh(MeshConfig(2, 4, 1))
    check_batch_size(16, mesh)
    with pytest.raises(ShardingConfigError, match="not divisible by the data-parallel size 8"):
        check_batch_size(12, mesh)


def test_logical_rules_and_dim_check():
    assert logical_to_spec(("batch", "length", "act_embed")) == jax.sharding.PartitionSpec(("data", "fsdp"), None, None)
    mesh = make_mesh(MeshConfig(1, 2, 4))
    s = named_sharding(mesh, ("embed", "heads"), (384, 384))
    x = jax.device_put(np.zeros((384, 384), np.float32), s)
    assert x.addressable_shards[0].data.shape == (192, 96)
    with pytest.raises(ShardingConfigError, match="'vocab', size 30522.*not divisible.*size 4"):
        named_sharding(mesh, ("vocab", "embed"), (30522, 384), name="word embedding")
    with pytest.raises(KeyError, match="no sharding rule"):
        logical_to_spec(("nonsense",))
