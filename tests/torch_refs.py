"""Tiny Hugging Face checkpoints written by `transformers` (PyTorch) for parity and loading tests."""

from pathlib import Path

import pytest

torch = pytest.importorskip("torch", reason="PyTorch references need `pip install torch==2.13.0`")
transformers = pytest.importorskip("transformers")

TINY = dict(vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
            max_position_embeddings=64)


def save_tiny(directory: Path, model_type: str = "bert", head: str = "", max_shard_size: str | None = None, **overrides):
    """Saves a randomly initialised ``<Model|ForMaskedLM>`` plus a tokenizer copied from MiniLM's vocab."""
    torch.manual_seed(0)
    cfg_cls = {"bert": transformers.BertConfig, "roberta": transformers.RobertaConfig}[model_type]
    config = cfg_cls(**{**TINY, **overrides})
    name = {"bert": "Bert", "roberta": "Roberta"}[model_type] + (head or "Model")
    model = getattr(transformers, name)(config).eval()
    kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.save_pretrained(directory, **kwargs)
    return model
