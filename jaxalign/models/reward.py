"""Reward models: a causal decoder with a linear scalar head on the last real token.

The layout of ``transformers``' ``LlamaForSequenceClassification`` with ``num_labels=1`` (the
model TRL's ``RewardTrainer`` trains): ``r = score(h_T)``, ``h`` the final-normed hidden states
and ``T`` the last position whose token is not the pad token, exactly as ``transformers`` picks
it (``(arange(T) * (input_ids != pad_token_id)).argmax(-1)``), so that a pad token that is also
the EOS closing a completion is skipped on both sides. Here positions outside the attention
mask are never picked either. The head is a bias-free ``[H, 1]`` kernel (their ``score.weight``
``[1, H]`` transposed), initialised ``N(0, initializer_range²)`` as ``transformers`` does.

:func:`export_reward_model` writes the Hugging Face checkpoint and :func:`load_reward_model`
reads one back (any ``*ForSequenceClassification`` of the Llama family with one label).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from safetensors.numpy import save_file

from jaxalign.models.decoders import Decoder, load_decoder, resolve_decoder_path
from jaxalign.models.export import checkpoint_tensors
from jaxalign.models.llama import weights as llama_weights
from jaxalign.weights.safetensors_io import CheckpointError, SafetensorsCheckpoint

SCORE_TENSOR = "score.weight"
HEAD_AXES = {"kernel": ("embed", None)}
_SEQUENCE_CLASSIFICATION = {"llama": "LlamaForSequenceClassification", "mistral": "MistralForSequenceClassification",
                            "qwen2": "Qwen2ForSequenceClassification", "qwen3": "Qwen3ForSequenceClassification"}


def init_score_head(key: jax.Array, hidden_size: int, std: float = 0.02) -> dict:
    """The ``{"kernel": [H, 1]}`` head, ``N(0, std²)`` (``transformers``' ``initializer_range``)."""
    return {"kernel": std * jax.random.normal(key, (hidden_size, 1), jnp.float32)}


def last_token_index(input_ids: jax.Array, attention_mask: jax.Array, pad_id: int) -> jax.Array:
    """``[N]`` index of each row's last real, non-pad token (0 for a row with none), for right-
    or left-padded ``[N, T]`` batches: ``transformers``' ``last_non_pad_token`` rule."""
    real = (attention_mask > 0) & (input_ids != pad_id)
    return jnp.argmax(jnp.arange(input_ids.shape[-1]) * real, axis=-1)


def sequence_rewards(decoder: Decoder, backbone: dict, head: dict, input_ids: jax.Array,
                     attention_mask: jax.Array, pad_id: int) -> jax.Array:
    """``[N]`` float32 rewards of ``[N, T]`` token rows: the head on the hidden state of each
    row's last real token (:func:`last_token_index`)."""
    hidden = decoder.hidden(backbone, input_ids, attention_mask)
    last = last_token_index(input_ids, attention_mask, pad_id)
    h = jnp.take_along_axis(hidden, last[:, None, None], axis=1)[:, 0]
    return (h.astype(jnp.float32) @ head["kernel"].astype(jnp.float32))[:, 0]


@dataclasses.dataclass
class RewardModel:
    """A loaded reward model: the decoder (backbone parameters in ``decoder.params``) and its head."""

    decoder: Decoder
    head: dict

    @property
    def pad_id(self) -> int:
        return int(self.decoder.tokenizer.pad_token_id)  # load_decoder gives every tokenizer one

    def rewards(self, input_ids: jax.Array, attention_mask: jax.Array) -> jax.Array:
        """``[N]`` rewards of ``[N, T]`` token rows (traceable; jit it)."""
        return sequence_rewards(self.decoder, self.decoder.params, self.head, input_ids, attention_mask, self.pad_id)


def export_reward_model(decoder: Decoder, backbone: dict, head: dict, directory: str | Path) -> Path:
    """Writes a ``LlamaForSequenceClassification`` checkpoint (``num_labels=1``, float32,
    ``score.weight [1, H]``, ``pad_token_id`` the tokenizer's pad) with the tokenizer files,
    that ``AutoModelForSequenceClassification`` and :func:`load_reward_model` read. An untied
    LM head is kept (``transformers`` reports it unused) so the backbone round-trips whole."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = checkpoint_tensors(llama_weights.RULES, backbone, decoder.config.num_hidden_layers, prefix="model.")
    tensors[SCORE_TENSOR] = np.ascontiguousarray(np.asarray(head["kernel"], np.float32).T)
    save_file(tensors, str(directory / "model.safetensors"), metadata={"format": "pt"})
    hf = dict(decoder.hf_config)
    hf.update(num_hidden_layers=decoder.config.num_hidden_layers, torch_dtype="float32",
              architectures=[_SEQUENCE_CLASSIFICATION[hf["model_type"]]], num_labels=1,
              id2label={"0": "LABEL_0"}, label2id={"LABEL_0": 0}, pad_token_id=int(decoder.tokenizer.pad_token_id))
    (directory / "config.json").write_text(json.dumps(hf, indent=2))
    decoder.tokenizer.save_pretrained(str(directory))
    return directory


def load_reward_model(path: str | Path, *, dtype=jnp.float32, num_layers: int | None = None,
                      mesh: jax.sharding.Mesh | None = None) -> RewardModel:
    """Reads a one-label ``*ForSequenceClassification`` checkpoint directory of the Llama family."""
    directory = resolve_decoder_path(path)
    checkpoint = None if directory.suffix == ".gguf" else SafetensorsCheckpoint(directory)
    if checkpoint is None or SCORE_TENSOR not in checkpoint:
        raise CheckpointError(f"{path}: not a reward model (no {SCORE_TENSOR} tensor); train one with "
                              "objective.name=reward, or score with --scorer dpo:POLICY,REF,BETA")
    score = np.asarray(checkpoint.read(SCORE_TENSOR), np.float32)
    if score.ndim != 2 or score.shape[0] != 1:
        raise CheckpointError(f"{path}: {SCORE_TENSOR} is {list(score.shape)}; a reward model has one label, [1, H]")
    decoder = load_decoder(directory, dtype=dtype, num_layers=num_layers, mesh=mesh, ignore=(SCORE_TENSOR,))
    if score.shape[1] != decoder.config.hidden_size:
        raise CheckpointError(f"{path}: {SCORE_TENSOR} is {list(score.shape)}, the hidden size is "
                              f"{decoder.config.hidden_size}")
    return RewardModel(decoder, {"kernel": jnp.asarray(score.T)})
