"""Configuration of the BERT-family bidirectional encoders (BERT, MiniLM, RoBERTa, XLM-R)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from jaxalign.weights.errors import UnsupportedModelError

SUPPORTED_MODEL_TYPES = ("bert", "roberta", "xlm-roberta")
ACTIVATIONS = ("gelu", "gelu_new", "gelu_pytorch_tanh", "relu")


@dataclasses.dataclass(frozen=True)
class BertConfig:
    """Hyper-parameters of a BERT-style encoder, named as in Hugging Face ``config.json``.

    ``position_offset`` is 0 for BERT and ``pad_token_id + 1`` for RoBERTa/XLM-R, whose position
    ids count only non-padding tokens and start after the padding index.
    """

    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-12
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    pad_token_id: int = 0
    model_type: str = "bert"
    position_offset: int = 0
    with_pooler: bool = True

    def __post_init__(self):
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} is not divisible by num_attention_heads {self.num_attention_heads}"
            )
        if self.hidden_act not in ACTIVATIONS:
            raise UnsupportedModelError(f"hidden_act {self.hidden_act!r} is not supported; supported: {ACTIVATIONS}")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @classmethod
    def from_hf(cls, hf: Mapping[str, Any], *, with_pooler: bool = True, source: str = "config.json") -> "BertConfig":
        """Builds the config from a Hugging Face ``config.json`` dict."""
        model_type = hf.get("model_type")
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise UnsupportedModelError(
                f"{source}: model_type {model_type!r} is not a supported encoder; supported: {', '.join(SUPPORTED_MODEL_TYPES)}"
            )
        if hf.get("position_embedding_type", "absolute") != "absolute":
            raise UnsupportedModelError(
                f"{source}: position_embedding_type {hf['position_embedding_type']!r} is not supported (only 'absolute')"
            )
        fields = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in hf.items() if k in fields}
        missing = [k for k in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size") if k not in kwargs]
        if missing:
            raise UnsupportedModelError(f"{source}: missing required fields {missing}")
        if kwargs.get("pad_token_id") is None:
            kwargs["pad_token_id"] = 0
        offset = kwargs["pad_token_id"] + 1 if model_type in ("roberta", "xlm-roberta") else 0
        return cls(**kwargs, position_offset=offset, with_pooler=with_pooler)
