"""Declarative checkpoint -> parameter mapping, loaded straight into a target sharding.

A model family describes its checkpoint layout once, as a list of :class:`ParamRule`:
our parameter path, the checkpoint tensor name, a layout transform and the parameter's
logical axes (which :mod:`jaxalign.sharding.rules` turns into a sharding). A rule whose
checkpoint name holds ``{i}`` is a *stacked* layer parameter: the checkpoint's per-layer
tensors ``0..L-1`` are one ``[L, ...]`` parameter with a leading ``layers`` axis (the
scanned layers of :mod:`jaxalign.models.scan`). The generic :func:`load_params` then

* checks every parameter has its tensor(s) of the right shape and every tensor is used,
  reporting *all* problems in one error,
* builds each parameter with ``jax.make_array_from_callback``, so each device reads only
  its own slice (of the layers and of each tensor) from the memory-mapped file (no full host
  copy per device).

:func:`load_module` wraps it for a Flax NNX model (built abstractly, never with real
arrays), :func:`dropped_layers` turns a layer truncation into ``ignore`` patterns, and
:func:`bind` rebuilds the module from a parameter dict inside traced functions.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, SingleDeviceSharding

from jaxalign.sharding.rules import named_sharding
from jaxalign.weights.safetensors_io import CheckpointError, SafetensorsCheckpoint

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class ParamRule:
    """One parameter: ``ours`` is our parameter path, ``theirs`` the checkpoint tensor name.

    ``theirs`` with ``{i}`` (layer index) makes the parameter stacked: ``[L, ...]``, layer ``i``
    read from tensor ``theirs.format(i=i)``. ``transpose`` reverses a tensor's dimensions
    (PyTorch ``Linear`` stores ``[out, in]``; we use ``[in, out]``). ``axes`` are the logical
    axes of one tensor in *our* layout; :attr:`param_axes` adds the leading ``layers`` axis.
    """

    ours: str
    theirs: str
    axes: tuple[str | None, ...]
    transpose: bool = False

    @property
    def stacked(self) -> bool:
        return "{i}" in self.theirs

    @property
    def param_axes(self) -> tuple[str | None, ...]:
        return ("layers", *self.axes) if self.stacked else self.axes

    def tensor_names(self, num_layers: int) -> list[str]:
        """The checkpoint tensors of this parameter, layer by layer when stacked."""
        return [self.theirs.format(i=i) for i in range(num_layers)] if self.stacked else [self.theirs]

    def layer_shape(self, shape: Sequence[int]) -> tuple[int, ...]:
        """One checkpoint tensor's shape for a parameter of ``shape``."""
        shape = tuple(shape[1:] if self.stacked else shape)
        return shape[::-1] if self.transpose else shape


def flatten(tree: Mapping, prefix: str = "") -> dict[str, Any]:
    """Nested dict -> {"a.b.0.c": leaf}."""
    out = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def unflatten(flat: Mapping[str, Any], like: Mapping) -> dict:
    """Inverse of :func:`flatten`, taking key types (int list indices) from ``like``."""
    out = {}
    for k, v in like.items():
        if isinstance(v, Mapping):
            out[k] = unflatten({p[len(str(k)) + 1 :]: x for p, x in flat.items() if p.startswith(f"{k}.")}, v)
        else:
            out[k] = flat[str(k)]
    return out


def strip_prefix(names: Sequence[str], prefixes: Sequence[str]) -> dict[str, str]:
    """Maps checkpoint names to names without a task-head prefix such as ``bert.``.

    Only strips when *every* backbone tensor carries the prefix, i.e. the checkpoint was saved
    from a ``BertFor...`` wrapper rather than ``BertModel``.
    """
    for prefix in prefixes:
        if any(n.startswith(prefix) for n in names):
            return {n[len(prefix) :] if n.startswith(prefix) else n: n for n in names}
    return {n: n for n in names}


def load_params(
    checkpoint: SafetensorsCheckpoint,
    rules: Sequence[ParamRule],
    abstract: Mapping,
    *,
    num_layers: int,
    mesh: Mesh | None = None,
    dtype=jnp.float32,
    prefixes: Sequence[str] = (),
    ignore: Sequence[str] = (),
) -> tuple[dict, dict]:
    """Loads ``checkpoint`` into a nested dict shaped like ``abstract`` (ShapeDtypeStructs).

    Returns ``(params, axes)``: the arrays (sharded over ``mesh`` by their logical axes, or on
    the default device) and the logical axes tree used, for building shardings elsewhere.
    ``ignore`` holds fnmatch patterns of checkpoint tensors that are not parameters
    (buffers, pre-training heads); they are logged, not loaded.
    """
    targets = flatten(abstract)
    names = strip_prefix(checkpoint.keys(), prefixes)
    by_ours = {r.ours: r for r in rules}

    missing, misshaped, unmapped, used = [], [], [], set()
    for path, target in targets.items():
        rule = by_ours.get(path)
        if rule is None:
            unmapped.append(path)
            continue
        if rule.stacked and target.shape[0] != num_layers:
            unmapped.append(f"{path} (stacks {target.shape[0]} layers, the model has {num_layers})")
            continue
        expect = rule.layer_shape(target.shape)
        for name in rule.tensor_names(num_layers):
            used.add(name)
            if name not in names:
                missing.append(f"{name} (for {path}, shape {expect})")
            elif (shape := checkpoint.shape(names[name])) != expect:
                misshaped.append(f"{names[name]}: checkpoint {shape}, model expects {expect}")
    unexpected = [
        names[n] for n in names if n not in used and not any(fnmatch.fnmatch(n, pat) for pat in ignore)
    ]
    ignored = [names[n] for n in names if n not in used and names[n] not in unexpected]
    problems = []
    if unmapped:
        problems.append("model parameters with no mapping rule (a bug in the family's table): " + ", ".join(unmapped))
    if missing:
        problems.append(f"{len(missing)} missing tensor(s): " + "; ".join(missing))
    if misshaped:
        problems.append(f"{len(misshaped)} mis-shaped tensor(s): " + "; ".join(misshaped))
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected tensor(s): " + ", ".join(sorted(unexpected)))
    if problems:
        raise CheckpointError(
            f"checkpoint {checkpoint.directory} does not match the model:\n  - " + "\n  - ".join(problems)
        )
    if ignored:
        log.info("ignoring %d checkpoint tensors that are not encoder parameters: %s", len(ignored), ignored)

    params, axes = {}, {}
    for path, target in targets.items():
        rule = by_ours[path]
        tensors = [names[n] for n in rule.tensor_names(num_layers)]
        shape = tuple(target.shape)
        if mesh is None:
            sharding = SingleDeviceSharding(jax.local_devices()[0])  # this process's own, in a multi-process run
        else:
            sharding = named_sharding(mesh, rule.param_axes, shape, name=path)

        def read_one(name, index, transpose=rule.transpose):
            if transpose:
                return checkpoint.read(name, index[::-1]).T.astype(dtype)
            return checkpoint.read(name, index).astype(dtype)

        def read(index, tensors=tensors, stacked=rule.stacked):
            index = tuple(index)
            if not stacked:
                return read_one(tensors[0], index)
            return np.stack([read_one(tensors[i], index[1:]) for i in range(len(tensors))[index[0]]])

        params[path] = jax.make_array_from_callback(shape, sharding, read)
        axes[path] = rule.param_axes
    return unflatten(params, abstract), unflatten(axes, abstract)


def dropped_layers(num_layers: int | None, total: int, pattern: str) -> list[str]:
    """``ignore`` patterns (``pattern`` with ``{i}``) for the checkpoint's layers past the first
    ``num_layers`` of ``total`` (``None``: keep them all), so their tensors are never read."""
    if num_layers is None:
        return []
    if not 1 <= num_layers <= total:
        raise ValueError(f"model.num_layers={num_layers}: the checkpoint has {total} layers; choose 1..{total} "
                         "(or null for all)")
    return [pattern.format(i=i) for i in range(num_layers, total)]


def load_module(
    make: Callable[[], nnx.Module],
    checkpoint,
    rules: Sequence[ParamRule],
    *,
    num_layers: int,
    mesh: Mesh | None = None,
    dtype=jnp.float32,
    prefixes: Sequence[str] = (),
    ignore: Sequence[str] = (),
) -> tuple[Any, Any, dict, dict]:
    """``(graphdef, state, params, axes)``: the module ``make`` builds, traced abstractly (no
    arrays are allocated), its abstract state as the template for :func:`bind`, and its
    parameters loaded from ``checkpoint`` by :func:`load_params`."""
    graphdef, state = nnx.split(nnx.eval_shape(make))
    params, axes = load_params(checkpoint, rules, nnx.to_pure_dict(state), num_layers=num_layers, mesh=mesh,
                               dtype=dtype, prefixes=prefixes, ignore=ignore)
    return graphdef, state, params, axes


def bind(graphdef, state, params: Mapping) -> nnx.Module:
    """The module of ``graphdef`` holding ``params`` (a nested dict shaped like ``state``'s
    pure dict): how pure functions of the parameters call the model."""
    state = jax.tree.map(lambda x: x, state)  # a fresh template: replace_by_pure_dict fills it in place
    nnx.replace_by_pure_dict(state, params)
    return nnx.merge(graphdef, state)
