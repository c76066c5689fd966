"""Device mesh construction from a typed config.

Every jaxalign program runs over one `jax.sharding.Mesh` with three named axes:

* ``data``   - pure data parallelism (replicated parameters, split batch),
* ``fsdp``   - data parallelism with parameters sharded over the same devices (ZeRO-3),
* ``tensor`` - tensor (model) parallelism inside a layer.

The batch is split over ``data`` x ``fsdp``; see :mod:`jaxalign.sharding.rules` for where each
logical tensor axis goes.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")


class ShardingConfigError(ValueError):
    """A mesh, batch or tensor shape that cannot be laid out on the devices at hand."""


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """Mesh axis sizes; exactly one may be -1, meaning "whatever fills the devices".

    Attributes:
      data: data parallelism: the batch is split over it.
      fsdp: data parallelism with parameters and optimiser state sharded over it too (ZeRO-3).
      tensor: tensor parallelism: attention heads and MLP columns split over it.
    """

    data: int = -1
    fsdp: int = 1
    tensor: int = 1

    def sizes(self) -> tuple[int, int, int]:
        return (self.data, self.fsdp, self.tensor)

    @classmethod
    def parse(cls, text: str) -> "MeshConfig":
        """Parses ``"2,4,1"`` (data,fsdp,tensor) as used on the command line."""
        try:
            parts = [int(p) for p in text.split(",")]
        except ValueError:
            parts = []
        if len(parts) != 3:
            raise ShardingConfigError(
                f"mesh {text!r}: expected three comma-separated integers data,fsdp,tensor, e.g. '8,1,1' or '-1,1,1'"
            )
        return cls(*parts)


def resolve_axis_sizes(config: MeshConfig, num_devices: int) -> tuple[int, int, int]:
    """Returns concrete (data, fsdp, tensor) sizes whose product is ``num_devices``."""
    sizes = list(config.sizes())
    for name, size in zip(MESH_AXES, sizes):
        if size == 0 or size < -1:
            raise ShardingConfigError(f"mesh.{name}={size}: axis sizes must be positive, or -1 to fill the devices")
    fills = [i for i, s in enumerate(sizes) if s == -1]
    if len(fills) > 1:
        raise ShardingConfigError(
            f"mesh {tuple(sizes)}: only one axis may be -1 (fill); set the others explicitly"
        )
    fixed = math.prod(s for s in sizes if s != -1)
    if fills:
        if num_devices % fixed:
            raise ShardingConfigError(
                f"mesh {tuple(sizes)}: the fixed axes multiply to {fixed}, which does not divide the "
                f"{num_devices} available devices; choose sizes whose product divides {num_devices}"
            )
        sizes[fills[0]] = num_devices // fixed
    elif fixed != num_devices:
        raise ShardingConfigError(
            f"mesh data={sizes[0]}, fsdp={sizes[1]}, tensor={sizes[2]} multiplies to {fixed} devices but "
            f"{num_devices} are available; make the product {num_devices} or set one axis to -1"
        )
    return tuple(sizes)  # type: ignore[return-value]


def make_mesh(config: MeshConfig = MeshConfig(), devices: Sequence[jax.Device] | None = None) -> Mesh:
    """Builds the (data, fsdp, tensor) mesh over ``devices`` (default: all devices).

    Uses ``jax.make_mesh`` when laying out all devices, so that physical topology (ICI rings on
    TPU, NVLink islands on GPU) is respected; an explicit device list is laid out in order.
    """
    devices = list(jax.devices() if devices is None else devices)
    sizes = resolve_axis_sizes(config, len(devices))
    axis_types = (AxisType.Auto,) * len(MESH_AXES)
    if len(devices) == len(jax.devices()):
        return jax.make_mesh(sizes, MESH_AXES, axis_types=axis_types, devices=devices)
    return Mesh(np.asarray(devices).reshape(sizes), MESH_AXES, axis_types=axis_types)


def batch_parallel_size(mesh: Mesh) -> int:
    """How many ways the batch dimension is split on ``mesh``."""
    return math.prod(mesh.shape[a] for a in BATCH_AXES if a in mesh.shape)


def check_batch_size(batch_size: int, mesh: Mesh, what: str = "batch size") -> None:
    """Raises a clear error if ``batch_size`` cannot be split evenly over the data axes."""
    n = batch_parallel_size(mesh)
    if batch_size % n:
        raise ShardingConfigError(
            f"{what} {batch_size} is not divisible by the data-parallel size {n} "
            f"(mesh data={mesh.shape['data']} x fsdp={mesh.shape['fsdp']}); use a multiple of {n}"
        )
