"""Low-rank adapters (LoRA) over any model family described by a ``ParamRule`` table.

The base parameters stay frozen; each targeted kernel ``W [in, out]`` gets ``A [in, r]``
and ``B [r, out]`` and the model runs with ``W + (alpha / r) A B``. A stacked layer kernel
``[L, in, out]`` gets stacked adapters ``A [L, in, r]`` and ``B [L, r, out]``, written to disk
per layer as PEFT does. Targets are named as in
the Hugging Face checkpoint (``q_proj``, ``v_proj``, ``gate_proj``, ...), the names PEFT users
know, and adapters are saved in PEFT's layout (``adapter_config.json`` +
``adapter_model.safetensors``), so ``peft.PeftModel.from_pretrained`` loads them too.

With ``B = 0`` at initialisation (as PEFT) the adapted model starts equal to the base, so
the base doubles as the reference model of preference training: no second copy is held.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from safetensors.numpy import load_file, save_file

from jaxalign.config.run import LoraConfig
from jaxalign.models.decoders import Decoder
from jaxalign.models.llama import weights as llama_weights
from jaxalign.weights.loader import ParamRule, flatten, unflatten

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model.model."  # PeftModel( LlamaForCausalLM( model=LlamaModel ) )


def target_modules(rules: Sequence[ParamRule], base: dict, targets: Sequence[str]) -> dict[str, str]:
    """Our kernel path -> checkpoint module name (``model.layers.{i}.self_attn.q_proj``, ``{i}``
    the layer of a stacked kernel) for every kernel whose checkpoint module ends in one of
    ``targets``."""
    flat = flatten(base)
    out = {}
    for rule in rules:
        if not (rule.ours.endswith(".kernel") and rule.ours in flat and rule.theirs.endswith(".weight")):
            continue
        module = rule.theirs[: -len(".weight")]
        if module.rsplit(".", 1)[-1] in targets:
            out[rule.ours] = module
    if not out:
        known = sorted({r.theirs.rsplit(".", 2)[-2] for r in rules if r.theirs.endswith(".weight")})
        raise ValueError(f"model.lora.targets={tuple(targets)} match no projection of this model; choose from {known}")
    return out


def init_lora(base: dict, base_axes: dict, modules: dict[str, str], rank: int, key: jax.Array) -> tuple[dict, dict]:
    """Adapters ``{path: {"a": [..., in, r], "b": [..., r, out]}}`` and their logical axes
    (``...``: the layers of a stacked kernel).

    ``A`` is drawn as PEFT draws ``lora_A`` (Kaiming-uniform, bound ``1/sqrt(in)``), ``B`` is 0.
    """
    flat, flat_axes = flatten(base), flatten(base_axes)
    lora, axes = {}, {}
    for i, path in enumerate(sorted(modules)):
        *layers, fan_in, fan_out = flat[path].shape
        bound = 1.0 / math.sqrt(fan_in)
        a = jax.random.uniform(jax.random.fold_in(key, i), (*layers, fan_in, rank), jnp.float32, -bound, bound)
        lora[path] = {"a": a, "b": jnp.zeros((*layers, rank, fan_out), jnp.float32)}
        *lead, in_axis, out_axis = flat_axes[path]
        axes[path] = {"a": (*lead, in_axis, None), "b": (*lead, None, out_axis)}
    return lora, axes


def decoder_adapters(decoder: Decoder, cfg: LoraConfig, key: jax.Array) -> tuple[dict[str, str], dict, dict]:
    """A decoder's LoRA layout: (kernel path -> checkpoint module, adapters, their logical axes)."""
    modules = target_modules(llama_weights.RULES, decoder.params, cfg.targets)
    adapters, axes = init_lora(decoder.params, decoder.axes, modules, cfg.rank, key)
    return modules, adapters, axes


def _layer_modules(module: str, num_layers: int) -> list[str]:
    """The checkpoint modules of one adapted kernel: one per layer of a stacked kernel (``{i}`` in
    ``module``), else ``module`` itself."""
    return [module.format(i=i) for i in range(num_layers)] if "{i}" in module else [module]


def apply_lora(base: dict, lora: dict, scale: float) -> dict:
    """The adapted parameters: base kernels plus ``scale * A @ B``, everything else as is."""
    flat = dict(flatten(base))
    for path, ab in lora.items():
        w = flat[path]
        flat[path] = w + (scale * (ab["a"] @ ab["b"])).astype(w.dtype)
    return unflatten(flat, base)


def save_adapter(directory: str | Path, lora: dict, modules: dict[str, str], cfg: LoraConfig,
                 base_model: str) -> Path:
    """Writes PEFT's ``adapter_config.json`` and ``adapter_model.safetensors`` (adapters only)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    host = jax.device_get(lora)
    tensors = {}
    for path, ab in host.items():
        a, b = np.asarray(ab["a"], np.float32), np.asarray(ab["b"], np.float32)
        if "{i}" not in modules[path]:
            a, b = a[None], b[None]
        for module, layer_a, layer_b in zip(_layer_modules(modules[path], len(a)), a, b, strict=True):
            tensors[f"{PEFT_PREFIX}{module}.lora_A.weight"] = np.ascontiguousarray(layer_a.T)
            tensors[f"{PEFT_PREFIX}{module}.lora_B.weight"] = np.ascontiguousarray(layer_b.T)
    save_file(tensors, str(directory / ADAPTER_WEIGHTS), metadata={"format": "pt"})
    config = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": cfg.rank, "lora_alpha": cfg.alpha,
              "target_modules": sorted({m.rsplit(".", 1)[-1] for m in modules.values()}), "lora_dropout": 0.0,
              "bias": "none", "base_model_name_or_path": base_model, "fan_in_fan_out": False}
    (directory / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2))
    return directory


def load_adapter(directory: str | Path, modules: dict[str, str], num_layers: int) -> tuple[dict, LoraConfig]:
    """Reads adapters written by :func:`save_adapter` (or PEFT) for the kernels in ``modules``;
    the ``num_layers`` per-layer adapters of a stacked kernel (``{i}`` in its module) are stacked,
    and each of them must be there."""
    directory = Path(directory)
    if not (directory / ADAPTER_CONFIG).is_file() or not (directory / ADAPTER_WEIGHTS).is_file():
        raise FileNotFoundError(f"{directory}: no {ADAPTER_CONFIG} and {ADAPTER_WEIGHTS} (a LoRA adapter directory)")
    config = json.loads((directory / ADAPTER_CONFIG).read_text())
    tensors = load_file(str(directory / ADAPTER_WEIGHTS))
    cfg = LoraConfig(rank=int(config["r"]), alpha=float(config["lora_alpha"]), targets=tuple(config["target_modules"]))
    names = {n[len(PEFT_PREFIX):-len(".lora_A.weight")] for n in tensors if n.endswith(".lora_A.weight")}
    lora, used = {}, set()
    for path, module in modules.items():
        layers = _layer_modules(module, num_layers)
        present = [m for m in layers if m in names]
        if not present:
            continue
        if len(present) < len(layers):
            missing = [m for m in layers if m not in names]
            raise ValueError(f"{directory / ADAPTER_WEIGHTS}: no adapter for {', '.join(missing)}, though other "
                             f"layers of {module} have one")
        a = np.stack([tensors[f"{PEFT_PREFIX}{m}.lora_A.weight"].T for m in layers])
        b = np.stack([tensors[f"{PEFT_PREFIX}{m}.lora_B.weight"].T for m in layers])
        stacked = "{i}" in module
        lora[path] = {"a": jnp.asarray(a if stacked else a[0]), "b": jnp.asarray(b if stacked else b[0])}
        used.update(layers)
    if names - used:
        raise ValueError(f"{directory / ADAPTER_WEIGHTS}: adapter for {min(names - used)}, which this model does not have")
    return lora, cfg
