"""Model families and loading. Each family lives in its own sub-package (``bert/``)."""

from jaxalign.models.registry import DEFAULT_ENCODER, Encoder, load_encoder, resolve_model_path

__all__ = ["DEFAULT_ENCODER", "Encoder", "load_encoder", "resolve_model_path"]
