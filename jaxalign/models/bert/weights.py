"""Hugging Face checkpoint layout of the BERT family, in one declarative table.

``ours`` paths follow :class:`jaxalign.models.bert.model.BertEncoder`; ``theirs`` are the
``BertModel``/``RobertaModel`` state-dict names (a ``bert.``/``roberta.`` wrapper prefix is
stripped automatically). Logical axes feed :mod:`jaxalign.sharding.rules`.
"""

from jaxalign.weights.loader import ParamRule

_LN = (("scale", "weight"), ("bias", "bias"))


def _linear(ours: str, theirs: str, axes: tuple[str, str]) -> list[ParamRule]:
    return [
        ParamRule(f"{ours}.kernel", f"{theirs}.weight", axes, transpose=True),
        ParamRule(f"{ours}.bias", f"{theirs}.bias", (axes[1],)),
    ]


def _norm(ours: str, theirs: str) -> list[ParamRule]:
    return [ParamRule(f"{ours}.{a}", f"{theirs}.{b}", ("norm",)) for a, b in _LN]


RULES: list[ParamRule] = [
    ParamRule("embeddings.word.embedding", "embeddings.word_embeddings.weight", ("vocab", "embed")),
    ParamRule("embeddings.position.embedding", "embeddings.position_embeddings.weight", ("positions", "embed")),
    ParamRule("embeddings.token_type.embedding", "embeddings.token_type_embeddings.weight", ("token_types", "embed")),
    *_norm("embeddings.norm", "embeddings.LayerNorm"),
    *_linear("layers.attention.query", "encoder.layer.{i}.attention.self.query", ("embed", "heads")),
    *_linear("layers.attention.key", "encoder.layer.{i}.attention.self.key", ("embed", "heads")),
    *_linear("layers.attention.value", "encoder.layer.{i}.attention.self.value", ("embed", "heads")),
    *_linear("layers.attention.output", "encoder.layer.{i}.attention.output.dense", ("heads", "embed")),
    *_norm("layers.attention_norm", "encoder.layer.{i}.attention.output.LayerNorm"),
    *_linear("layers.up", "encoder.layer.{i}.intermediate.dense", ("embed", "mlp")),
    *_linear("layers.down", "encoder.layer.{i}.output.dense", ("mlp", "embed")),
    *_norm("layers.mlp_norm", "encoder.layer.{i}.output.LayerNorm"),
    *_linear("pooler.dense", "pooler.dense", ("embed", "heads")),
]

# Wrapper prefixes of BertFor*/RobertaFor* checkpoints.
PREFIXES = ("bert.", "roberta.")

# Checkpoint tensors that are not encoder parameters: buffers and pre-training heads.
IGNORE = ("embeddings.position_ids", "cls.*", "lm_head.*", "classifier.*", "qa_outputs.*")

POOLER_TENSOR = "pooler.dense.weight"
