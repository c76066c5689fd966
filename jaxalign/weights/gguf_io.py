"""Reading llama.cpp GGUF checkpoints as if they were Hugging Face ones.

:class:`GGUFCheckpoint` has the interface of
:class:`~jaxalign.weights.safetensors_io.SafetensorsCheckpoint` (``keys()`` / ``shape`` /
``read``) with Hugging Face tensor names and layouts, so the declarative loader
(:func:`jaxalign.weights.loader.load_params`) reads it unchanged:

* llama.cpp names (``blk.{i}.attn_q.weight``, ``token_embd.weight``, ...) become
  ``model.layers.{i}.self_attn.q_proj.weight``, ``model.embed_tokens.weight``, ...;
* quantised tensors are dequantised with ``gguf.quants.dequantize`` (whole tensors, the last
  few kept in memory while the loader slices them);
* for the ``llama`` architecture, the row permutation llama.cpp applies to q/k projections
  (its rotary embedding pairs adjacent dimensions, transformers' pairs halves) is undone,
  as ``transformers``' ``LlamaTensorProcessor`` does, so the weights equal what
  ``AutoModelForCausalLM.from_pretrained(dir, gguf_file=...)`` loads.

:meth:`GGUFCheckpoint.hf_config` rebuilds a ``config.json``-style dict from the metadata.
"""

from __future__ import annotations

import collections
import functools
import re
from pathlib import Path
from typing import Any

import numpy as np

from jaxalign.weights.errors import UnsupportedModelError
from jaxalign.weights.safetensors_io import CheckpointError

# llama.cpp architecture -> Hugging Face model_type
ARCHITECTURES = {"llama": "llama", "qwen2": "qwen2", "qwen3": "qwen3"}

_GLOBAL = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_BLOCK = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_BLOCK_RE = re.compile(r"^blk\.(\d+)\.([a-z_]+)\.(weight|bias)$")
ROPE_FREQS = "rope_freqs.weight"  # llama.cpp's per-frequency divisors (Llama 3.x rope scaling)


def hf_name(gguf_name: str) -> str | None:
    """The Hugging Face name of a llama.cpp tensor name, or ``None`` if it has none."""
    if gguf_name in _GLOBAL:
        return _GLOBAL[gguf_name]
    m = _BLOCK_RE.match(gguf_name)
    if m and m.group(2) in _BLOCK:
        return f"model.layers.{m.group(1)}.{_BLOCK[m.group(2)]}.{m.group(3)}"
    return None


def unpermute_rows(w: np.ndarray, n_head: int) -> np.ndarray:
    """Undoes llama.cpp's q/k row permutation (``convert_hf_to_gguf.LlamaModel.permute``)."""
    dim = w.shape[0] // n_head // 2
    return w.reshape(n_head, dim, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


@functools.lru_cache(maxsize=4)
def _reader(path: str, mtime_ns: int, size: int):
    """One parsed ``GGUFReader`` per file version: parsing the metadata (a 49k-token vocabulary
    and its merges, field by field in Python) takes seconds, the read-only memory map nothing;
    ``mtime_ns`` and ``size`` make a rewritten file parse again."""
    from gguf import GGUFReader

    return GGUFReader(path)


class GGUFCheckpoint:
    """Name -> tensor view over one ``.gguf`` file, with Hugging Face names and layouts."""

    def __init__(self, path: str | Path, *, cache_size: int = 2):
        self.path = Path(path)
        try:
            import gguf  # noqa: F401
        except ImportError as e:  # pragma: no cover - gguf is a declared dependency
            raise CheckpointError(f"{self.path}: reading GGUF files needs the `gguf` package (pip install gguf)") from e
        if not self.path.is_file():
            raise CheckpointError(f"{self.path}: no such GGUF file")
        try:
            stat = self.path.stat()
            self.reader = _reader(str(self.path.resolve()), stat.st_mtime_ns, stat.st_size)
        except Exception as e:  # gguf raises ValueError/struct errors on corrupt files
            raise CheckpointError(f"{self.path}: cannot be read as GGUF: {e}") from e
        self.architecture = self.metadata("general.architecture")
        self._tensors = {}
        for t in self.reader.tensors:
            name = hf_name(t.name)
            # tensors with no Hugging Face counterpart keep their GGUF name, so the loader
            # reports them as unexpected rather than silently dropping them
            self._tensors[name or t.name] = t
        self._cache: collections.OrderedDict[str, np.ndarray] = collections.OrderedDict()
        self._cache_size = cache_size

    @property
    def directory(self) -> Path:
        """The file (named like SafetensorsCheckpoint's attribute, for the loader's messages)."""
        return self.path

    def metadata(self, key: str, default: Any = None) -> Any:
        field = self.reader.fields.get(key)
        if field is None:
            return default
        value = field.contents()
        return value.item() if isinstance(value, np.generic) else value

    def keys(self) -> list[str]:
        return [k for k in self._tensors if k != ROPE_FREQS]

    def __contains__(self, name: str) -> bool:
        return name in self._tensors

    def shape(self, name: str) -> tuple[int, ...]:
        # GGUF lists dimensions fastest-first; numpy/PyTorch order is the reverse
        return tuple(int(d) for d in reversed(self._tensors[name].shape.tolist()))

    def read(self, name: str, index: tuple[slice, ...] | None = None) -> np.ndarray:
        """Dequantised tensor ``name`` (float32, Hugging Face layout), or ``index`` of it."""
        full = self._full(name)
        return full if index is None else full[tuple(index)]

    def _full(self, name: str) -> np.ndarray:
        if name in self._cache:
            self._cache.move_to_end(name)
            return self._cache[name]
        from gguf.quants import dequantize

        t = self._tensors[name]
        try:
            w = np.asarray(dequantize(t.data, t.tensor_type), dtype=np.float32).reshape(self.shape(name))
        except NotImplementedError as e:
            raise CheckpointError(f"{self.path}: tensor {t.name} has type {t.tensor_type.name}, which gguf cannot dequantise: {e}") from e
        if self.architecture == "llama":
            heads = int(self.metadata("llama.attention.head_count"))
            if ".self_attn.q_proj." in name:
                w = unpermute_rows(w, heads)
            elif ".self_attn.k_proj." in name:
                w = unpermute_rows(w, int(self.metadata("llama.attention.head_count_kv", heads)))
        self._cache[name] = w
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return w

    def clear_cache(self) -> None:
        self._cache.clear()

    def hf_config(self) -> dict[str, Any]:
        """A Hugging Face ``config.json``-style dict from the GGUF metadata."""
        arch = self.architecture
        if arch not in ARCHITECTURES:
            raise UnsupportedModelError(
                f"{self.path}: GGUF architecture {arch!r} is not a supported decoder; supported: {', '.join(ARCHITECTURES)}"
            )
        m = lambda key, default=None: self.metadata(f"{arch}.{key}", default)  # noqa: E731
        heads = m("attention.head_count")
        required = {"block_count": m("block_count"), "embedding_length": m("embedding_length"),
                    "feed_forward_length": m("feed_forward_length"), "attention.head_count": heads}
        missing = [f"{arch}.{k}" for k, v in required.items() if v is None]
        if missing:
            raise CheckpointError(f"{self.path}: GGUF metadata lacks {missing}")
        vocab = m("vocab_size")
        if vocab is None:
            tokens = self.reader.fields.get("tokenizer.ggml.tokens")
            vocab = len(tokens.data) if tokens is not None else self.shape("model.embed_tokens.weight")[0]
        cfg: dict[str, Any] = {
            "model_type": ARCHITECTURES[arch],
            "vocab_size": int(vocab),
            "hidden_size": int(required["embedding_length"]),
            "intermediate_size": int(required["feed_forward_length"]),
            "num_hidden_layers": int(required["block_count"]),
            "num_attention_heads": int(heads),
            "num_key_value_heads": int(m("attention.head_count_kv", heads)),
            "rms_norm_eps": float(m("attention.layer_norm_rms_epsilon", 1e-6)),
            "rope_theta": float(m("rope.freq_base", 10000.0)),
            "max_position_embeddings": int(m("context_length", 2048)),
            "tie_word_embeddings": "lm_head.weight" not in self._tensors,
            "bos_token_id": self.metadata("tokenizer.ggml.bos_token_id"),
            "eos_token_id": self.metadata("tokenizer.ggml.eos_token_id"),
            "pad_token_id": self.metadata("tokenizer.ggml.padding_token_id"),
        }
        head_dim = m("attention.key_length") or (m("rope.dimension_count") if arch == "llama" else None)
        if head_dim is not None:
            cfg["head_dim"] = int(head_dim)
        if arch == "llama":
            cfg["attention_bias"] = "model.layers.0.self_attn.q_proj.bias" in self._tensors
        scaling = m("rope.scaling.type")
        if scaling not in (None, "none"):
            rope = {"rope_type": scaling, "factor": m("rope.scaling.factor")}
            if m("rope.scaling.original_context_length") is not None:
                rope["original_max_position_embeddings"] = int(m("rope.scaling.original_context_length"))
            if scaling == "yarn":
                rope.update(beta_fast=m("rope.scaling.yarn_beta_fast"), beta_slow=m("rope.scaling.yarn_beta_slow"))
            cfg["rope_scaling"] = rope
        if ROPE_FREQS in self._tensors:
            cfg["rope_freq_factors"] = [float(x) for x in self.read(ROPE_FREQS).reshape(-1)]
        return cfg
