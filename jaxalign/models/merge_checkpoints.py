"""Reading, checking and writing the Hugging Face checkpoints that ``jaxalign merge`` combines.

Merging works on checkpoint tensors by name, whatever the family (encoders and decoders alike):
every fine-tuned model must hold exactly the base's tensor names and shapes. The merged
directory is the base's directory with ``model.safetensors`` replaced, so its config, tokenizer
and sentence-transformers files are the base's.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

from jaxalign.models.registry import read_json, resolve_model_path
from jaxalign.weights.safetensors_io import INDEX_FILE, CheckpointError, SafetensorsCheckpoint


def read_tensors(path: Path) -> dict[str, np.ndarray]:
    """Every tensor of the checkpoint at ``path``, by its checkpoint name."""
    checkpoint = SafetensorsCheckpoint(path)
    return {name: checkpoint.read(name) for name in checkpoint.keys()}


def check_compatible(base: str | Path, models: Sequence[str | Path]) -> tuple[Path, list[Path]]:
    """Resolves the base and model directories and checks, before any tensor is read, that each
    model has the base's ``model_type`` and exactly its tensor names and shapes; the error names
    the model and its first differing tensor."""
    base_dir = resolve_model_path(base)
    dirs = [resolve_model_path(m) for m in models]
    base_type = read_json(base_dir / "config.json").get("model_type")
    reference = SafetensorsCheckpoint(base_dir)
    shapes = {name: reference.shape(name) for name in reference.keys()}
    for directory in dirs:
        model_type = read_json(directory / "config.json").get("model_type")
        if model_type != base_type:
            raise CheckpointError(f"{directory}: model_type {model_type!r}, but the base {base_dir} is {base_type!r}; "
                                  "merge fine-tuned checkpoints of one base model")
        checkpoint = SafetensorsCheckpoint(directory)
        names = set(checkpoint.keys())
        for name in sorted(set(shapes) | names):
            if name not in names:
                raise CheckpointError(f"{directory}: no tensor {name!r}, which the base {base_dir} has")
            if name not in shapes:
                raise CheckpointError(f"{directory}: tensor {name!r} is not in the base {base_dir}")
            if checkpoint.shape(name) != shapes[name]:
                raise CheckpointError(f"{directory}: tensor {name!r} has shape {checkpoint.shape(name)}, "
                                      f"the base {base_dir} {shapes[name]}")
    return base_dir, dirs


def write_merged(base_dir: Path, tensors: dict[str, np.ndarray], output: str | Path) -> Path:
    """Writes ``tensors`` (cast to the base's dtypes) as ``output/model.safetensors`` beside copies
    of the base's other files (config, tokenizer, sentence-transformers modules)."""
    output = Path(output)
    if output.resolve() == base_dir.resolve():
        raise ValueError(f"--output {output} is the base checkpoint; choose a new directory")
    output.mkdir(parents=True, exist_ok=True)
    for item in base_dir.iterdir():
        if item.suffix == ".safetensors" or item.name == INDEX_FILE:
            continue
        if item.is_dir():
            shutil.copytree(item, output / item.name, dirs_exist_ok=True)
        else:
            shutil.copy2(item, output / item.name)
    base = SafetensorsCheckpoint(base_dir)
    dtypes = {name: base.read(name, tuple(slice(0, 0) for _ in base.shape(name))).dtype for name in base.keys()}
    save_file({name: np.ascontiguousarray(np.asarray(t).astype(dtypes[name])) for name, t in tensors.items()},
              str(output / "model.safetensors"), metadata={"format": "pt"})
    return output


__all__ = ["check_compatible", "read_tensors", "write_merged"]
