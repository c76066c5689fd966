"""Model families and loading. Each family lives in its own sub-package (``bert/``)."""

from jaxalign.models.decoders import DEFAULT_DECODER, Decoder, load_decoder
from jaxalign.models.registry import DEFAULT_ENCODER, Encoder, load_encoder, resolve_model_path

__all__ = ["DEFAULT_DECODER", "DEFAULT_ENCODER", "Decoder", "Encoder", "load_decoder", "load_encoder", "resolve_model_path"]
