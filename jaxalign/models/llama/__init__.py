"""Llama-family causal decoders (Llama 2/3, SmolLM, Qwen2, Qwen3, Mistral)."""

from jaxalign.models.llama.config import LlamaConfig, RopeScaling
from jaxalign.models.llama.model import KVCache, LlamaForCausalLM, position_ids

__all__ = ["KVCache", "LlamaConfig", "LlamaForCausalLM", "RopeScaling", "position_ids"]
