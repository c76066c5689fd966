"""Lazy, slice-level reading of Hugging Face safetensors checkpoints.

Handles a single ``model.safetensors`` and sharded checkpoints described by
``model.safetensors.index.json``. Tensors are never read whole unless asked: loaders
request the slice each device needs (see :mod:`jaxalign.weights.loader`). Dtypes NumPy lacks
(``BF16``, the most common dtype of published LLM checkpoints, and the float8 kinds), which
``safetensors``' NumPy reader refuses, are read from a memory map of the file as
``ml_dtypes`` arrays, still slice by slice.
"""

from __future__ import annotations

import json
from pathlib import Path

import ml_dtypes
import numpy as np
from safetensors import safe_open


class CheckpointError(ValueError):
    """A checkpoint directory that is missing files or tensors, or holds the wrong ones."""


NUMPY_LACKS = {"BF16": ml_dtypes.bfloat16, "F8_E4M3": ml_dtypes.float8_e4m3fn, "F8_E5M2": ml_dtypes.float8_e5m2}
SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"


class SafetensorsCheckpoint:
    """Name -> lazily sliceable tensor view over one or several safetensors files."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        if (self.directory / INDEX_FILE).is_file():
            index_path = self.directory / INDEX_FILE
            try:
                weight_map = json.loads(index_path.read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError) as e:
                raise CheckpointError(f"{index_path}: not a safetensors index (expected a 'weight_map' object): {e}") from e
            files = {name: self.directory / fname for name, fname in weight_map.items()}
        elif (self.directory / SINGLE_FILE).is_file():
            files = None
        else:
            raise CheckpointError(
                f"{self.directory}: no {SINGLE_FILE} or {INDEX_FILE}; jaxalign reads Hugging Face safetensors "
                "checkpoints (convert a pytorch_model.bin with `transformers` save_pretrained(safe_serialization=True))"
            )
        self._handles: dict[Path, object] = {}
        if files is None:
            path = self.directory / SINGLE_FILE
            self._file_of = {name: path for name in self._open(path).keys()}
        else:
            for path in set(files.values()):
                if not path.is_file():
                    raise CheckpointError(f"{INDEX_FILE} in {self.directory} names {path.name}, which does not exist")
            self._file_of = files

    def _open(self, path: Path):
        if path not in self._handles:
            try:
                self._handles[path] = safe_open(str(path), framework="numpy")
            except Exception as e:  # safetensors raises its own error types
                raise CheckpointError(f"{path}: cannot be read as safetensors: {e}") from e
        return self._handles[path]

    def keys(self) -> list[str]:
        return list(self._file_of)

    def __contains__(self, name: str) -> bool:
        return name in self._file_of

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._open(self._file_of[name]).get_slice(name).get_shape())

    def read(self, name: str, index: tuple[slice, ...] | None = None) -> np.ndarray:
        """Reads tensor ``name`` or just ``index`` (a tuple of slices) of it."""
        path = self._file_of[name]
        view = self._open(path).get_slice(name)
        if index is None:
            index = tuple(slice(None) for _ in view.get_shape())
        if view.get_dtype() in NUMPY_LACKS:
            return np.asarray(self._memory_map(path, name)[index])
        return np.asarray(view[index])

    def _memory_map(self, path: Path, name: str) -> np.ndarray:
        """Tensor ``name`` of file ``path`` as a read-only memory map: the file is an 8-byte
        little-endian header size, a JSON header of ``{name: {dtype, shape, data_offsets}}`` and
        the data, offsets counted from the header's end."""
        with open(path, "rb") as f:
            size = int.from_bytes(f.read(8), "little")
            entry = json.loads(f.read(size))[name]
        start, end = entry["data_offsets"]
        raw = np.memmap(path, np.uint8, mode="r", offset=8 + size + start, shape=(end - start,))
        return raw.view(NUMPY_LACKS[entry["dtype"]]).reshape(entry["shape"])
