"""Configuration of the Llama-family causal decoders (Llama 2/3, SmolLM, Qwen2, Qwen3, Mistral).

All of them are the same pre-norm transformer (RMSNorm, rotary embeddings, grouped-query
attention, SwiGLU MLP); they differ only in switches this config names explicitly:
q/k/v (and o) projection biases, per-head q/k RMSNorm (Qwen3), a sliding attention window
(Mistral, Qwen with ``use_sliding_window``), the RoPE scaling variant and tied embeddings.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from jaxalign.models.bert.config import UnsupportedModelError

SUPPORTED_MODEL_TYPES = ("llama", "qwen2", "qwen3", "mistral")
ROPE_TYPES = ("default", "linear", "dynamic", "llama3", "yarn")
ACTIVATIONS = ("silu", "swish")


@dataclasses.dataclass(frozen=True)
class RopeScaling:
    """A RoPE scaling variant, named as in Hugging Face ``rope_parameters`` / ``rope_scaling``.

    ``dynamic`` (NTK) only changes the frequencies beyond ``max_position_embeddings``, which
    jaxalign never runs past, so inside that range it equals the unscaled RoPE.
    """

    rope_type: str
    factor: float | None = None
    low_freq_factor: float | None = None  # llama3
    high_freq_factor: float | None = None  # llama3
    original_max_position_embeddings: int | None = None  # llama3, yarn
    attention_factor: float | None = None  # yarn
    beta_fast: float | None = None  # yarn
    beta_slow: float | None = None  # yarn
    mscale: float | None = None  # yarn
    mscale_all_dim: float | None = None  # yarn
    truncate: bool = True  # yarn


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
    """Hyper-parameters of a Llama-style decoder, named as in Hugging Face ``config.json``.

    ``attention_bias`` puts biases on the q/k/v projections, ``attention_out_bias`` on the
    output projection (Llama's ``attention_bias`` sets both; Qwen2 has only the first).
    ``sliding_layers`` flags the layers that use ``sliding_window`` (``None``: all of them).
    """

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    model_type: str = "llama"
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: RopeScaling | None = None
    rope_freq_factors: tuple[float, ...] | None = None  # llama.cpp ``rope_freqs`` divisors (GGUF only)
    max_position_embeddings: int = 2048
    tie_word_embeddings: bool = False
    attention_bias: bool = False
    attention_out_bias: bool = False
    mlp_bias: bool = False
    qk_norm: bool = False
    sliding_window: int | None = None
    sliding_layers: tuple[bool, ...] | None = None
    hidden_act: str = "silu"
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()
    pad_token_id: int | None = None

    def __post_init__(self):
        if self.num_attention_heads % self.num_key_value_heads:
            raise UnsupportedModelError(
                f"num_attention_heads {self.num_attention_heads} is not a multiple of "
                f"num_key_value_heads {self.num_key_value_heads}"
            )
        if self.head_dim % 2:
            raise UnsupportedModelError(f"head_dim {self.head_dim} must be even for rotary embeddings")
        if self.hidden_act not in ACTIVATIONS:
            raise UnsupportedModelError(f"hidden_act {self.hidden_act!r} is not supported; supported: {ACTIVATIONS}")
        if self.rope_freq_factors is not None and len(self.rope_freq_factors) != self.head_dim // 2:
            raise UnsupportedModelError(
                f"rope_freq_factors has {len(self.rope_freq_factors)} entries; expected head_dim / 2 = {self.head_dim // 2}"
            )
        if self.sliding_layers is not None and len(self.sliding_layers) != self.num_hidden_layers:
            raise UnsupportedModelError(
                f"sliding_layers has {len(self.sliding_layers)} entries for {self.num_hidden_layers} layers"
            )

    @property
    def num_key_value_groups(self) -> int:
        return self.num_attention_heads // self.num_key_value_heads

    def layer_window(self, layer: int) -> int | None:
        """The sliding attention window of ``layer`` (``None``: full causal attention)."""
        if self.sliding_window is None:
            return None
        if self.sliding_layers is None or self.sliding_layers[layer]:
            return self.sliding_window
        return None

    def truncated(self, num_layers: int) -> "LlamaConfig":
        """The config of the first ``num_layers`` layers."""
        layers = None if self.sliding_layers is None else self.sliding_layers[:num_layers]
        return dataclasses.replace(self, num_hidden_layers=num_layers, sliding_layers=layers)

    def rope_frequencies(self) -> tuple[np.ndarray, float]:
        """``(inv_freq [head_dim // 2] float32, attention_scaling)`` exactly as ``transformers``
        computes them (``modeling_rope_utils``), in float32."""
        return rope_frequencies(self)

    @classmethod
    def from_hf(cls, hf: Mapping[str, Any], *, source: str = "config.json") -> "LlamaConfig":
        """Builds the config from a Hugging Face ``config.json`` dict, naming ``source`` and the
        field in every error."""
        model_type = hf.get("model_type")
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise UnsupportedModelError(
                f"{source}: model_type {model_type!r} is not a supported decoder; supported: {', '.join(SUPPORTED_MODEL_TYPES)}"
            )
        required = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
        missing = [k for k in required if hf.get(k) is None]
        if missing:
            raise UnsupportedModelError(f"{source}: missing required fields {missing}")
        heads = int(hf["num_attention_heads"])
        kv_heads = int(hf.get("num_key_value_heads") or heads)
        head_dim = hf.get("head_dim")
        if head_dim is None:
            if hf["hidden_size"] % heads:
                raise UnsupportedModelError(
                    f"{source}: hidden_size {hf['hidden_size']} is not divisible by num_attention_heads {heads} "
                    "and no head_dim is given"
                )
            head_dim = hf["hidden_size"] // heads
        if hf.get("hidden_act", "silu") not in ACTIVATIONS:
            raise UnsupportedModelError(
                f"{source}: hidden_act {hf.get('hidden_act')!r} is not supported; supported: {', '.join(ACTIVATIONS)}"
            )
        if heads % kv_heads:
            raise UnsupportedModelError(
                f"{source}: num_attention_heads {heads} is not a multiple of num_key_value_heads {kv_heads}"
            )
        rope_theta, rope_scaling = _rope_from_hf(hf, source)

        # Projection biases and q/k norms per family, as the transformers modules build them.
        attention_bias = bool(hf.get("attention_bias", False))
        attention_out_bias = attention_bias
        qk_norm = False
        if model_type == "qwen2":
            attention_bias, attention_out_bias = True, False
        elif model_type == "qwen3":
            qk_norm = True
        elif model_type == "mistral":
            attention_bias = attention_out_bias = False

        sliding_window, sliding_layers = _sliding_from_hf(hf, model_type, int(hf["num_hidden_layers"]), source)
        eos = hf.get("eos_token_id")
        eos_ids = tuple(int(e) for e in eos) if isinstance(eos, (list, tuple)) else (() if eos is None else (int(eos),))
        return cls(
            vocab_size=int(hf["vocab_size"]),
            hidden_size=int(hf["hidden_size"]),
            intermediate_size=int(hf["intermediate_size"]),
            num_hidden_layers=int(hf["num_hidden_layers"]),
            num_attention_heads=heads,
            num_key_value_heads=kv_heads,
            head_dim=int(head_dim),
            model_type=model_type,
            rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
            rope_theta=rope_theta,
            rope_scaling=rope_scaling,
            rope_freq_factors=None if hf.get("rope_freq_factors") is None else tuple(float(f) for f in hf["rope_freq_factors"]),
            max_position_embeddings=int(hf.get("max_position_embeddings", 2048)),
            tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
            attention_bias=attention_bias,
            attention_out_bias=attention_out_bias,
            mlp_bias=bool(hf.get("mlp_bias", False)),
            qk_norm=qk_norm,
            sliding_window=sliding_window,
            sliding_layers=sliding_layers,
            hidden_act=hf.get("hidden_act", "silu"),
            bos_token_id=hf.get("bos_token_id"),
            eos_token_ids=eos_ids,
            pad_token_id=hf.get("pad_token_id"),
        )


def _rope_from_hf(hf: Mapping[str, Any], source: str) -> tuple[float, RopeScaling | None]:
    """RoPE base and scaling from either the transformers>=5 ``rope_parameters`` dict or the older
    top-level ``rope_theta`` + ``rope_scaling`` fields."""
    params = dict(hf.get("rope_parameters") or {})
    legacy = hf.get("rope_scaling") or {}
    field = "rope_parameters" if params else "rope_scaling"
    if params and all(isinstance(v, Mapping) or v is None for v in params.values()):
        raise UnsupportedModelError(f"{source}: rope_parameters per layer type ({sorted(params)}) are not supported")
    params = {**legacy, **params}
    if hf.get("partial_rotary_factor", params.get("partial_rotary_factor", 1.0)) not in (None, 1.0):
        raise UnsupportedModelError(f"{source}: partial_rotary_factor != 1 is not supported")
    theta = params.get("rope_theta", hf.get("rope_theta"))
    theta = 10000.0 if theta is None else float(theta)
    rope_type = params.get("rope_type", params.get("type", "default")) or "default"
    if rope_type not in ROPE_TYPES:
        raise UnsupportedModelError(
            f"{source}: {field}.rope_type {rope_type!r} is not supported; supported: {', '.join(ROPE_TYPES)}"
        )
    if rope_type == "default":
        return theta, None

    def need(key):
        if params.get(key) is None:
            raise UnsupportedModelError(f"{source}: {field}.{key} is required for rope_type {rope_type!r}")
        return params[key]

    original = params.get("original_max_position_embeddings")
    if rope_type in ("llama3", "yarn") and original is None:
        # transformers falls back to the model's own maximum length (standardize_rope_params)
        original = hf.get("original_max_position_embeddings", hf.get("max_position_embeddings", 2048))
    opt = lambda k: None if params.get(k) is None else float(params[k])  # noqa: E731
    if rope_type in ("linear", "dynamic"):
        return theta, RopeScaling(rope_type, factor=float(need("factor")))
    if rope_type == "llama3":
        return theta, RopeScaling(
            "llama3",
            factor=float(need("factor")),
            low_freq_factor=float(need("low_freq_factor")),
            high_freq_factor=float(need("high_freq_factor")),
            original_max_position_embeddings=int(original),
        )
    return theta, RopeScaling(  # yarn
        "yarn",
        factor=opt("factor"),
        original_max_position_embeddings=int(original),
        attention_factor=opt("attention_factor"),
        beta_fast=opt("beta_fast"),
        beta_slow=opt("beta_slow"),
        mscale=opt("mscale"),
        mscale_all_dim=opt("mscale_all_dim"),
        truncate=bool(params.get("truncate", True)),
    )


def _sliding_from_hf(hf, model_type: str, num_layers: int, source: str) -> tuple[int | None, tuple[bool, ...] | None]:
    if model_type == "mistral":
        window = hf.get("sliding_window")
        return (None, None) if window is None else (int(window), None)
    if model_type in ("qwen2", "qwen3"):
        if not hf.get("use_sliding_window", False) or hf.get("sliding_window") is None:
            return None, None
        types = hf.get("layer_types")
        if types is not None:
            if len(types) != num_layers:
                raise UnsupportedModelError(f"{source}: layer_types has {len(types)} entries for {num_layers} layers")
            unknown = sorted(set(types) - {"full_attention", "sliding_attention"})
            if unknown:
                raise UnsupportedModelError(f"{source}: layer_types {unknown} are not supported")
            layers = tuple(t == "sliding_attention" for t in types)
        else:
            first = int(hf.get("max_window_layers", 28))
            layers = tuple(i >= first for i in range(num_layers))
        return (int(hf["sliding_window"]), layers) if any(layers) else (None, None)
    if hf.get("sliding_window") is not None:
        raise UnsupportedModelError(f"{source}: sliding_window is not supported for model_type {model_type!r}")
    return None, None


def rope_frequencies(cfg: LlamaConfig) -> tuple[np.ndarray, float]:
    inv_freq, scaling = _scaled_frequencies(cfg)
    if cfg.rope_freq_factors is not None:  # llama.cpp: theta / freq_factor
        inv_freq = (inv_freq / np.asarray(cfg.rope_freq_factors, np.float32)).astype(np.float32)
    return inv_freq, scaling


def _scaled_frequencies(cfg: LlamaConfig) -> tuple[np.ndarray, float]:
    dim = cfg.head_dim
    inv_freq = (1.0 / (np.float32(cfg.rope_theta) ** (np.arange(0, dim, 2, dtype=np.float32) / np.float32(dim)))).astype(
        np.float32
    )
    s = cfg.rope_scaling
    if s is None or s.rope_type == "dynamic":
        return inv_freq, 1.0
    if s.rope_type == "linear":
        return (inv_freq / np.float32(s.factor)).astype(np.float32), 1.0
    if s.rope_type == "llama3":
        old = s.original_max_position_embeddings
        low_wavelen = old / s.low_freq_factor
        high_wavelen = old / s.high_freq_factor
        wavelen = (2 * math.pi / inv_freq).astype(np.float32)
        scaled = np.where(wavelen > low_wavelen, inv_freq / np.float32(s.factor), inv_freq).astype(np.float32)
        smooth = ((old / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor)).astype(np.float32)
        smoothed = ((1 - smooth) * scaled / np.float32(s.factor) + smooth * scaled).astype(np.float32)
        medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
        return np.where(medium, smoothed, scaled).astype(np.float32), 1.0
    # yarn
    factor = s.factor if s.factor is not None else cfg.max_position_embeddings / s.original_max_position_embeddings

    def get_mscale(scale, m=1.0):
        return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

    attention_factor = s.attention_factor
    if attention_factor is None:
        if s.mscale and s.mscale_all_dim:
            attention_factor = float(get_mscale(factor, s.mscale) / get_mscale(factor, s.mscale_all_dim))
        else:
            attention_factor = get_mscale(factor)
    beta_fast, beta_slow = s.beta_fast or 32, s.beta_slow or 1
    base = cfg.rope_theta

    def correction_dim(rotations):
        return (dim * math.log(s.original_max_position_embeddings / (rotations * 2 * math.pi))) / (2 * math.log(base))

    low, high = correction_dim(beta_fast), correction_dim(beta_slow)
    if s.truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001
    ramp = np.clip((np.arange(dim // 2, dtype=np.float32) - low) / (high - low), 0, 1).astype(np.float32)
    pos_freqs = (np.float32(base) ** (np.arange(0, dim, 2, dtype=np.float32) / np.float32(dim))).astype(np.float32)
    extrapolation = (1.0 / pos_freqs).astype(np.float32)
    interpolation = (1.0 / (np.float32(factor) * pos_freqs)).astype(np.float32)
    extrapolation_factor = (1 - ramp).astype(np.float32)
    inv = interpolation * (1 - extrapolation_factor) + extrapolation * extrapolation_factor
    return inv.astype(np.float32), float(attention_factor)
