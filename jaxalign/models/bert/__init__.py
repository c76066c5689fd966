"""BERT-family encoders (BERT, MiniLM, RoBERTa, XLM-R)."""

from jaxalign.models.bert.config import BertConfig, UnsupportedModelError
from jaxalign.models.bert.model import BertEncoder, EncoderOutput

__all__ = ["BertConfig", "BertEncoder", "EncoderOutput", "UnsupportedModelError"]
