"""Inference: batched embedding and batched generation with a key/value cache."""

from jaxalign.inference.generate import Generation, generate

__all__ = ["Generation", "generate"]
