"""Inference: batched embedding (and, later, generation)."""
