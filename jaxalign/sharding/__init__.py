"""Meshes and logical-axis sharding rules."""

from jaxalign.sharding.mesh import (
    BATCH_AXES,
    MESH_AXES,
    MeshConfig,
    ShardingConfigError,
    batch_parallel_size,
    check_batch_size,
    make_mesh,
)
from jaxalign.sharding.rules import DEFAULT_RULES, constrain, logical_to_spec, named_sharding, tree_shardings

__all__ = [
    "BATCH_AXES",
    "DEFAULT_RULES",
    "MESH_AXES",
    "MeshConfig",
    "ShardingConfigError",
    "batch_parallel_size",
    "check_batch_size",
    "constrain",
    "logical_to_spec",
    "make_mesh",
    "named_sharding",
    "tree_shardings",
]
