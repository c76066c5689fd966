"""BERT-family encoder as Flax NNX modules (post-LayerNorm transformer, as in the original BERT).

Shapes: ``B`` batch, ``T`` sequence length, ``H`` hidden size, ``N`` heads, ``D`` head dim.
Dropout is active only with ``deterministic=False`` and takes its randomness from an explicit
``rngs`` argument, so training steps stay pure functions of their inputs (layer ``i`` draws from
one key of ``rngs`` folded with ``i``). Dropout, LayerNorm and the exact GELU are the
:mod:`jaxalign.ops` versions whose backward passes save only what they need (one boolean mask,
one normalised array, the GELU's input), which matters most under ``jax.lax.scan``, where every
saved array is a stacked ``[L, ...]`` buffer that XLA fills and copies.

Layers: one stacked :class:`Layer` whose parameters are ``[L, ...]`` (``layers.attention.query.kernel``
is ``[L, H, H]``), run by ``jax.lax.scan`` (:mod:`jaxalign.models.scan`).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from jaxalign.models import scan as scan_lib
from jaxalign.models.bert.config import BertConfig
from jaxalign.ops.activations import gelu
from jaxalign.ops.attention import AttentionMask, attention, check_available
from jaxalign.ops.dropout import dropout
from jaxalign.ops.normalization import layer_norm
from jaxalign.sharding.rules import constrain

ACTIVATION_AXES = ("batch", "length", "act_embed")


def _activation(name: str):
    if name == "gelu":
        return gelu
    if name in ("gelu_new", "gelu_pytorch_tanh"):
        return lambda x: jax.nn.gelu(x, approximate=True)
    return jax.nn.relu


class LayerNorm(nnx.LayerNorm):
    """``nnx.LayerNorm``'s parameters (``scale``, ``bias`` [H]) computed by :func:`jaxalign.ops.normalization.layer_norm`
    (two-pass variance, as PyTorch: the fast E[x^2]-E[x]^2 form loses ~1e-5)."""

    def __call__(self, x: jax.Array) -> jax.Array:
        return layer_norm(x, self.scale[...], self.bias[...], self.epsilon,
                          self.dtype or jnp.result_type(x, self.scale[...]))


def _layer_norm(cfg: BertConfig, dtype, rngs) -> LayerNorm:
    return LayerNorm(cfg.hidden_size, epsilon=cfg.layer_norm_eps, use_fast_variance=False, dtype=dtype, rngs=rngs)


class Dropout(nnx.Module):
    """:func:`jaxalign.ops.dropout.dropout` at ``rate``, drawing one key from ``rngs.dropout`` per call."""

    def __init__(self, rate: float):
        self.rate = rate

    def __call__(self, x: jax.Array, *, deterministic: bool, rngs: nnx.Rngs | None) -> jax.Array:
        if deterministic or self.rate == 0.0:
            return x
        return dropout(x, self.rate, rngs.dropout())


@dataclasses.dataclass
class EncoderOutput:
    """``last_hidden_state`` [B, T, H]; ``hidden_states`` (embeddings, layer 1..L), each [B, T, H];
    ``pooler_output`` [B, H] (tanh(dense(CLS)), ``None`` when the checkpoint has no pooler)."""

    last_hidden_state: jax.Array
    hidden_states: tuple[jax.Array, ...] | None
    pooler_output: jax.Array | None


jax.tree_util.register_dataclass(
    EncoderOutput, data_fields=["last_hidden_state", "hidden_states", "pooler_output"], meta_fields=[]
)


class Embeddings(nnx.Module):
    def __init__(self, cfg: BertConfig, *, dtype, rngs: nnx.Rngs):
        self.word = nnx.Embed(cfg.vocab_size, cfg.hidden_size, dtype=dtype, rngs=rngs)
        self.position = nnx.Embed(cfg.max_position_embeddings, cfg.hidden_size, dtype=dtype, rngs=rngs)
        self.token_type = nnx.Embed(cfg.type_vocab_size, cfg.hidden_size, dtype=dtype, rngs=rngs)
        self.norm = _layer_norm(cfg, dtype, rngs)
        self.dropout = Dropout(cfg.hidden_dropout_prob)

    def __call__(self, input_ids, token_type_ids, position_ids, *, deterministic: bool, rngs) -> jax.Array:
        x = self.word(input_ids) + self.token_type(token_type_ids) + self.position(position_ids)
        return self.dropout(self.norm(x), deterministic=deterministic, rngs=rngs)


class SelfAttention(nnx.Module):
    def __init__(self, cfg: BertConfig, *, dtype, implementation: str = "auto", rngs: nnx.Rngs):
        h = cfg.hidden_size
        self.num_heads, self.head_dim, self.dtype = cfg.num_attention_heads, cfg.head_dim, dtype
        self.implementation = implementation
        self.query = nnx.Linear(h, h, dtype=dtype, rngs=rngs)
        self.key = nnx.Linear(h, h, dtype=dtype, rngs=rngs)
        self.value = nnx.Linear(h, h, dtype=dtype, rngs=rngs)
        self.output = nnx.Linear(h, h, dtype=dtype, rngs=rngs)
        self.attention_dropout = Dropout(cfg.attention_probs_dropout_prob)
        self.dropout = Dropout(cfg.hidden_dropout_prob)

    def __call__(self, x: jax.Array, mask: AttentionMask, *, deterministic: bool, rngs) -> jax.Array:
        """x [B, T, H]; mask: the keys each query sees (padding, segments)."""
        b, t, _ = x.shape
        split = lambda y: y.reshape(b, t, self.num_heads, self.head_dim)
        q, k, v = split(self.query(x)), split(self.key(x)), split(self.value(x))
        dropout = None
        if not deterministic and self.attention_dropout.rate > 0:
            dropout = lambda p: self.attention_dropout(p, deterministic=False, rngs=rngs)
        context = attention(q, k, v, mask, implementation=self.implementation, dropout=dropout).reshape(b, t, -1)
        return self.dropout(self.output(context), deterministic=deterministic, rngs=rngs)


class Layer(nnx.Module):
    def __init__(self, cfg: BertConfig, *, dtype, attention: str = "auto", rngs: nnx.Rngs):
        self.attention = SelfAttention(cfg, dtype=dtype, implementation=attention, rngs=rngs)
        self.attention_norm = _layer_norm(cfg, dtype, rngs)
        self.up = nnx.Linear(cfg.hidden_size, cfg.intermediate_size, dtype=dtype, rngs=rngs)
        self.down = nnx.Linear(cfg.intermediate_size, cfg.hidden_size, dtype=dtype, rngs=rngs)
        self.mlp_norm = _layer_norm(cfg, dtype, rngs)
        self.dropout = Dropout(cfg.hidden_dropout_prob)
        self.act = _activation(cfg.hidden_act)

    def __call__(self, x, mask: AttentionMask, *, deterministic: bool, rngs) -> jax.Array:
        x = self.attention_norm(x + self.attention(x, mask, deterministic=deterministic, rngs=rngs))
        h = self.dropout(self.down(self.act(self.up(x))), deterministic=deterministic, rngs=rngs)
        return constrain(self.mlp_norm(x + h), ACTIVATION_AXES)


class Pooler(nnx.Module):
    def __init__(self, cfg: BertConfig, *, dtype, rngs: nnx.Rngs):
        self.dense = nnx.Linear(cfg.hidden_size, cfg.hidden_size, dtype=dtype, rngs=rngs)

    def __call__(self, cls_hidden: jax.Array) -> jax.Array:
        return jnp.tanh(self.dense(cls_hidden))


class BertEncoder(nnx.Module):
    """Bidirectional transformer encoder. ``dtype`` is the compute dtype (params stay float32);
    ``attention`` the attention kernel, one of ``jaxalign.ops.attention.IMPLEMENTATIONS``;
    ``scan=False`` runs the stacked layers in a Python loop (the same layer code; for debugging)."""

    def __init__(self, cfg: BertConfig, *, dtype=jnp.float32, attention: str = "auto", scan: bool = True,
                 rngs: nnx.Rngs):
        check_available(attention)
        self.config = cfg
        self.scan = scan
        self.embeddings = Embeddings(cfg, dtype=dtype, rngs=rngs)
        self.layers = scan_lib.stacked(lambda r: Layer(cfg, dtype=dtype, attention=attention, rngs=r),
                                       cfg.num_hidden_layers, rngs)
        self.pooler = Pooler(cfg, dtype=dtype, rngs=rngs) if cfg.with_pooler else None

    def position_ids(self, attention_mask: jax.Array) -> jax.Array:
        b, t = attention_mask.shape
        if self.config.position_offset == 0:
            return jnp.broadcast_to(jnp.arange(t), (b, t))
        # RoBERTa: padding positions get pad_token_id, real tokens pad_token_id+1, +2, ...
        mask = attention_mask.astype(jnp.int32)
        return jnp.cumsum(mask, axis=1) * mask + self.config.pad_token_id

    def __call__(
        self,
        input_ids: jax.Array,
        attention_mask: jax.Array,
        token_type_ids: jax.Array | None = None,
        *,
        deterministic: bool = True,
        rngs: nnx.Rngs | None = None,
        output_hidden_states: bool = False,
        segment_ids: jax.Array | None = None,
    ) -> EncoderOutput:
        """input_ids, attention_mask, token_type_ids: [B, T] integers (mask 1 = real token);
        segment_ids [B, T]: packed sequences, a token attends only within its segment."""
        if token_type_ids is None:
            token_type_ids = jnp.zeros_like(input_ids)
        x = self.embeddings(
            input_ids, token_type_ids, self.position_ids(attention_mask), deterministic=deterministic, rngs=rngs
        )
        x = constrain(x, ACTIVATION_AXES)
        mask = AttentionMask(key_mask=attention_mask, q_segments=segment_ids, kv_segments=segment_ids)
        key = None if deterministic else rngs.dropout()

        def body(layer, x, index):
            layer_rngs = None if key is None else nnx.Rngs(dropout=jax.random.fold_in(key, index))
            x = layer(x, mask, deterministic=deterministic, rngs=layer_rngs)
            return x, x if output_hidden_states else None

        depth = self.config.num_hidden_layers
        first = x
        x, hidden = scan_lib.run_layers(self.layers, body, x, jnp.arange(depth), stop=depth, scan=self.scan)
        pooled = self.pooler(x[:, 0]) if self.pooler is not None else None
        hidden = (first, *hidden) if output_hidden_states else None
        return EncoderOutput(x, hidden, pooled)
