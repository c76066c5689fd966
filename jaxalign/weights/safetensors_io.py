"""Lazy, slice-level reading of Hugging Face safetensors checkpoints.

Handles a single ``model.safetensors`` and sharded checkpoints described by
``model.safetensors.index.json``. Tensors are never read whole unless asked: loaders
request the slice each device needs (see :mod:`jaxalign.weights.loader`).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from safetensors import safe_open


class CheckpointError(ValueError):
    """A checkpoint directory that is missing files or tensors, or holds the wrong ones."""


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
        view = self._open(self._file_of[name]).get_slice(name)
        if index is None:
            index = tuple(slice(None) for _ in view.get_shape())
        return np.asarray(view[index])
