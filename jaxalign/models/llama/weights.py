"""Hugging Face checkpoint layout of the Llama family (Llama, SmolLM, Qwen2/3, Mistral), in one
declarative table.

``ours`` paths follow :class:`jaxalign.models.llama.model.LlamaForCausalLM`; ``theirs`` are the
``LlamaForCausalLM`` state-dict names with the ``model.`` prefix stripped (checkpoints saved
from the bare ``LlamaModel`` have none). GGUF files are read through the same names
(:mod:`jaxalign.weights.gguf_io` maps llama.cpp's). Rules for parameters a given config does
not have (biases, q/k norms, an untied head) are simply unused.
"""

from jaxalign.weights.loader import ParamRule


def _linear(ours: str, theirs: str, axes: tuple[str, str]) -> list[ParamRule]:
    return [
        ParamRule(f"{ours}.kernel", f"{theirs}.weight", axes, transpose=True),
        ParamRule(f"{ours}.bias", f"{theirs}.bias", (axes[1],)),
    ]


def _norm(ours: str, theirs: str) -> ParamRule:
    return ParamRule(f"{ours}.scale", f"{theirs}.weight", ("norm",))


RULES: list[ParamRule] = [
    ParamRule("embed.embedding", "embed_tokens.weight", ("vocab", "embed")),
    _norm("layers.attention_norm", "layers.{i}.input_layernorm"),
    *_linear("layers.attention.q", "layers.{i}.self_attn.q_proj", ("embed", "heads")),
    *_linear("layers.attention.k", "layers.{i}.self_attn.k_proj", ("embed", "kv_heads")),
    *_linear("layers.attention.v", "layers.{i}.self_attn.v_proj", ("embed", "kv_heads")),
    *_linear("layers.attention.o", "layers.{i}.self_attn.o_proj", ("heads", "embed")),
    _norm("layers.attention.q_norm", "layers.{i}.self_attn.q_norm"),
    _norm("layers.attention.k_norm", "layers.{i}.self_attn.k_norm"),
    _norm("layers.mlp_norm", "layers.{i}.post_attention_layernorm"),
    *_linear("layers.mlp.gate", "layers.{i}.mlp.gate_proj", ("embed", "mlp")),
    *_linear("layers.mlp.up", "layers.{i}.mlp.up_proj", ("embed", "mlp")),
    *_linear("layers.mlp.down", "layers.{i}.mlp.down_proj", ("mlp", "embed")),
    _norm("norm", "norm"),
    ParamRule("lm_head.kernel", "lm_head.weight", ("embed", "vocab"), transpose=True),
]

# Wrapper prefix of *ForCausalLM checkpoints (``lm_head.weight`` has none and is kept as is).
PREFIXES = ("model.",)

# Checkpoint tensors that are not parameters: rotary buffers of old exports.
IGNORE = ("layers.*.self_attn.rotary_emb.inv_freq", "rotary_emb.inv_freq")

LM_HEAD_TENSOR = "lm_head.weight"
