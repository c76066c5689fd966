"""Writing trained models back as Hugging Face (and sentence-transformers) checkpoints.

The inverse of loading: the family's declarative table maps each parameter back to its
checkpoint name and layout, so what `transformers` and `sentence-transformers` load from the
exported directory computes what jaxalign did.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

from jaxalign.models.bert import weights as bert_weights
from jaxalign.models.decoders import Decoder
from jaxalign.models.llama import weights as llama_weights
from jaxalign.models.registry import Encoder, read_json
from jaxalign.ops.pooling import PoolingConfig
from jaxalign.weights.loader import ParamRule, flatten

ST_POOLING_KEYS = {"mean": "pooling_mode_mean_tokens", "cls": "pooling_mode_cls_token", "max": "pooling_mode_max_tokens",
                   "last": "pooling_mode_lasttoken"}


def checkpoint_tensors(rules: Sequence[ParamRule], params: dict, num_layers: int, prefix: str = "") -> dict:
    """Checkpoint name -> float32 tensor in the checkpoint's layout, for every parameter (a
    stacked ``[L, ...]`` parameter unstacked into its ``L`` per-layer tensors)."""
    flat = {k: np.asarray(v, np.float32) for k, v in flatten(params).items()}
    tensors = {}
    for rule in rules:
        if rule.ours not in flat:
            continue
        value = flat[rule.ours]
        layers = value if rule.stacked else [value]
        for name, layer in zip(rule.tensor_names(num_layers), layers, strict=True):
            name = name if name.startswith("lm_head.") else prefix + name
            tensors[name] = np.ascontiguousarray(layer.T if rule.transpose else layer)
    return tensors


def export_decoder(decoder: Decoder, params: dict, directory: str | Path) -> Path:
    """Writes ``config.json``, ``model.safetensors`` (``LlamaForCausalLM`` names, float32) and the
    tokenizer with its chat template: a checkpoint ``AutoModelForCausalLM`` and jaxalign load."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = checkpoint_tensors(llama_weights.RULES, params, decoder.config.num_hidden_layers, prefix="model.")
    save_file(tensors, str(directory / "model.safetensors"), metadata={"format": "pt"})
    hf = dict(decoder.hf_config)
    hf.update(num_hidden_layers=decoder.config.num_hidden_layers, torch_dtype="float32")
    hf.setdefault("architectures", [_CAUSAL_LM[hf["model_type"]]])
    (directory / "config.json").write_text(json.dumps(hf, indent=2))
    decoder.tokenizer.save_pretrained(str(directory))
    return directory


_CAUSAL_LM = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM",
              "qwen3": "Qwen3ForCausalLM"}


def export_hf(encoder: Encoder, params: dict, directory: str | Path, pooling: PoolingConfig | None = None) -> Path:
    """Writes ``config.json``, ``model.safetensors``, the tokenizer and, where the pooling is one
    sentence-transformers has, its ``modules.json`` / ``1_Pooling`` / ``2_Normalize`` files."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    pooling = pooling or encoder.pooling
    cfg = encoder.config
    save_file(checkpoint_tensors(bert_weights.RULES, params, cfg.num_hidden_layers),
              str(directory / "model.safetensors"), metadata={"format": "pt"})

    hf = read_json(encoder.path / "config.json")
    hf.update(num_hidden_layers=cfg.num_hidden_layers, architectures=[{"bert": "BertModel", "roberta": "RobertaModel",
                                                                       "xlm-roberta": "XLMRobertaModel"}[cfg.model_type]])
    (directory / "config.json").write_text(json.dumps(hf, indent=2))
    encoder.tokenizer.save_pretrained(str(directory))

    if pooling.mode in ST_POOLING_KEYS and pooling.layer == -1 and pooling.truncate_dim is None:
        modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
                   {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
        (directory / "1_Pooling").mkdir(exist_ok=True)
        st_pool = {"word_embedding_dimension": cfg.hidden_size, **{v: k == pooling.mode for k, v in ST_POOLING_KEYS.items()}}
        (directory / "1_Pooling" / "config.json").write_text(json.dumps(st_pool, indent=2))
        if pooling.normalize:
            (directory / "2_Normalize").mkdir(exist_ok=True)
            modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
        (directory / "modules.json").write_text(json.dumps(modules, indent=2))
        (directory / "sentence_bert_config.json").write_text(
            json.dumps({"max_seq_length": encoder.max_length, "do_lower_case": False}, indent=2))
    return directory


__all__ = ["checkpoint_tensors", "export_decoder", "export_hf"]
