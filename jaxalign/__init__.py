"""jaxalign: JAX/Flax training for alignment objectives (contrastive embeddings, preference optimisation)."""

__version__ = "0.1.0"
