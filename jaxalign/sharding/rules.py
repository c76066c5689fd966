"""The one place that maps logical tensor axes to mesh axes.

Models name the axes of every parameter and activation with *logical* names (``embed``,
``heads``, ``batch``, ...); this module turns them into `PartitionSpec`s for the mesh of
:mod:`jaxalign.sharding.mesh`. Changing the parallelism strategy means editing the rules
here, never the models (as MaxText's ``logical_axis_rules``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxalign.sharding.mesh import ShardingConfigError

LogicalAxes = tuple[str | None, ...]

# logical axis -> mesh axis (or tuple of mesh axes, or None = replicated).
# Parameters: ``embed`` is sharded over fsdp (ZeRO-3), the "wide" dimensions over tensor.
# Activations use separate names so that a parameter rule never shards an activation
# dimension over an axis the batch already uses.
DEFAULT_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    # parameters
    ("layers", None),  # the stacked layers' leading axis (jaxalign.models.scan): every device holds every layer
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),  # decoders' key/value projections (grouped-query attention)
    ("mlp", "tensor"),
    ("norm", None),
    ("positions", None),
    ("token_types", None),
    ("entries", ("fsdp", "tensor")),  # DefSent+'s frozen entry matrix: rows split over every parameter-sharding axis
    # activations
    ("batch", ("data", "fsdp")),
    ("length", None),
    ("act_embed", None),
    ("act_heads", "tensor"),
    ("act_mlp", "tensor"),
    ("act_vocab", "tensor"),
)


def logical_to_spec(axes: Sequence[str | None], rules=DEFAULT_RULES) -> PartitionSpec:
    """``("batch", "length", "act_embed")`` -> ``P(("data", "fsdp"), None, None)``."""
    table = dict(rules)
    spec = []
    for axis in axes:
        if axis is None:
            spec.append(None)
            continue
        if axis not in table:
            raise KeyError(f"logical axis {axis!r} has no sharding rule; known: {sorted(table)}")
        spec.append(table[axis])
    return PartitionSpec(*spec)


def _mesh_axis_size(mesh: Mesh, mesh_axes) -> int:
    if mesh_axes is None:
        return 1
    if isinstance(mesh_axes, str):
        mesh_axes = (mesh_axes,)
    size = 1
    for a in mesh_axes:
        size *= mesh.shape[a]
    return size


def named_sharding(
    mesh: Mesh, axes: Sequence[str | None], shape: Sequence[int] | None = None, name: str = "tensor", rules=DEFAULT_RULES
) -> NamedSharding:
    """NamedSharding for logical ``axes``; with ``shape``, checks every dim divides its mesh axes."""
    spec = logical_to_spec(axes, rules)
    if shape is not None:
        if len(shape) != len(axes):
            raise ShardingConfigError(f"{name}: shape {tuple(shape)} has {len(shape)} dims but axes {tuple(axes)} name {len(axes)}")
        for dim, (size, logical, mesh_axes) in enumerate(zip(shape, axes, spec)):
            n = _mesh_axis_size(mesh, mesh_axes)
            if size % n:
                raise ShardingConfigError(
                    f"{name}: dimension {dim} ({logical!r}, size {size}) is not divisible by mesh axes "
                    f"{mesh_axes!r} of size {n}; change the mesh (e.g. tensor=1) or the sharding rule for {logical!r}"
                )
    return NamedSharding(mesh, spec)


def tree_shardings(mesh: Mesh, axes_tree: Any, shapes_tree: Any, rules=DEFAULT_RULES) -> Any:
    """Maps a nested dict of logical axes and one of shapes to a nested dict of NamedShardings."""
    if isinstance(axes_tree, Mapping):
        return {k: tree_shardings(mesh, axes_tree[k], shapes_tree[k], rules) for k in axes_tree}
    return named_sharding(mesh, axes_tree, getattr(shapes_tree, "shape", shapes_tree), rules=rules)


def constrain(x: jax.Array, axes: Sequence[str | None], rules=DEFAULT_RULES) -> jax.Array:
    """Sharding constraint on an activation, active only inside ``jax.set_mesh(mesh)``.

    Outside a mesh context (single-device use, tests) this is the identity, so models can call
    it unconditionally.
    """
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return x
    return jax.lax.with_sharding_constraint(x, logical_to_spec(axes, rules))
