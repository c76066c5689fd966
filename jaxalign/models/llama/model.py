"""Llama-family causal decoder as Flax NNX modules (pre-RMSNorm, RoPE, grouped-query attention,
SwiGLU), with an optional preallocated key/value cache for generation.

Shapes: ``B`` batch, ``T`` new tokens, ``S`` attended key/value slots (``T`` without a cache,
the cache length with one), ``H`` hidden size, ``N`` query heads, ``K`` key/value heads,
``G = N / K`` queries per key/value head, ``D`` head dim, ``V`` vocabulary.

Padding: rows may be right- or left-padded. Position ids count real tokens only
(``cumsum(attention_mask) - 1``, as ``transformers`` does for padded generation), and keys at
padding slots are masked, so a row's real tokens see exactly what they would unpadded.
Values at padding positions are undefined.

Layers: one stacked :class:`Layer` whose parameters are ``[L, ...]`` (``layers.attention.q.kernel``
is ``[L, H, N * D]``), run by ``jax.lax.scan`` (:mod:`jaxalign.models.scan`), so compile time
does not grow with depth. Layers with different static settings (Qwen2's per-layer sliding
windows, Token Prepending's replaced range) are scanned in runs of consecutive equal layers.
Rematerialisation (``remat``, training only) is per layer, with the named policies of
:mod:`jaxalign.models.scan`.

The cache is a pure pytree passed in and returned (:class:`KVCache`): one write offset shared
by all rows (prompts are left-padded to a common length), a ``[B, S]`` mask of the slots that
hold real tokens, and ``[L, B, S, K, D]`` keys and values, scanned with the layers.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx
from jax.ad_checkpoint import checkpoint_name

from jaxalign.models import scan as scan_lib
from jaxalign.models.llama.config import LlamaConfig
from jaxalign.ops.attention import AttentionMask, attention, check_available
from jaxalign.ops.pooling import last_index
from jaxalign.sharding.rules import constrain

ACTIVATION_AXES = ("batch", "length", "act_embed")
LOGITS_AXES = ("batch", "length", "act_vocab")
CACHE_AXES = ("batch", "length", None, None)  # one layer's keys or values
STACKED_CACHE_AXES = ("layers", *CACHE_AXES)


def _stat_dtype(dtype):
    """float32, or wider when computing in float64 (a float64 run is then float64 throughout)."""
    return jnp.promote_types(dtype, jnp.float32)


@dataclasses.dataclass
class KVCache:
    """Preallocated keys/values for ``S`` slots; ``index`` slots (all rows alike) are written."""

    keys: jax.Array  # [L, B, S, K, D]
    values: jax.Array  # [L, B, S, K, D]
    mask: jax.Array  # [B, S] int32, 1 where the slot holds a real token
    index: jax.Array  # int32 scalar: the next slot to write

    @property
    def length(self) -> int:
        return self.mask.shape[1]

    @classmethod
    def zeros(cls, cfg: LlamaConfig, batch: int, length: int, dtype=jnp.float32) -> "KVCache":
        shape = (cfg.num_hidden_layers, batch, length, cfg.num_key_value_heads, cfg.head_dim)
        kv = lambda: constrain(jnp.zeros(shape, dtype), STACKED_CACHE_AXES)  # noqa: E731
        return cls(kv(), kv(), jnp.zeros((batch, length), jnp.int32), jnp.zeros((), jnp.int32))


jax.tree_util.register_dataclass(KVCache, data_fields=["keys", "values", "mask", "index"], meta_fields=[])


def position_ids(attention_mask: jax.Array) -> jax.Array:
    """Positions counting real tokens only: ``cumsum(mask) - 1`` (padding gets 0)."""
    mask = attention_mask.astype(jnp.int32)
    return jnp.maximum(jnp.cumsum(mask, axis=-1) - 1, 0) * mask


class RMSNorm(nnx.Module):
    """``x / rms(x) * scale``, the statistics in float32 whatever the compute dtype."""

    def __init__(self, dim: int, eps: float, *, dtype, param_dtype=jnp.float32):
        self.scale = nnx.Param(jnp.ones((dim,), param_dtype))
        self.eps, self.dtype = eps, dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        dtype = self.dtype or x.dtype
        x32 = x.astype(_stat_dtype(x.dtype))
        y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return self.scale[...].astype(dtype) * y.astype(dtype)


def rotary(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """Rotates x [B, T, *, D] by cos/sin [B, T, D] (the "rotate half" layout of transformers)."""
    x32 = x.astype(_stat_dtype(x.dtype))
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x32[..., half:], x32[..., :half]], axis=-1)
    return (x32 * cos[:, :, None] + rotated * sin[:, :, None]).astype(x.dtype)


class Attention(nnx.Module):
    def __init__(self, cfg: LlamaConfig, *, dtype, param_dtype, implementation: str = "auto", rngs: nnx.Rngs):
        h, n, k, d = cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        lin = lambda i, o, bias: nnx.Linear(i, o, use_bias=bias, dtype=dtype, param_dtype=param_dtype, rngs=rngs)  # noqa: E731
        self.q = lin(h, n * d, cfg.attention_bias)
        self.k = lin(h, k * d, cfg.attention_bias)
        self.v = lin(h, k * d, cfg.attention_bias)
        self.o = lin(n * d, h, cfg.attention_out_bias)
        if cfg.qk_norm:
            self.q_norm = RMSNorm(d, cfg.rms_norm_eps, dtype=dtype, param_dtype=param_dtype)
            self.k_norm = RMSNorm(d, cfg.rms_norm_eps, dtype=dtype, param_dtype=param_dtype)
        else:
            self.q_norm = self.k_norm = None
        self.num_heads, self.num_kv_heads, self.head_dim = n, k, d
        self.implementation = implementation
        self.dtype = dtype

    def __call__(self, x, cos, sin, kv_mask, segments=None, cache_kv=None, write_index=None, window=None):
        """x [B, T, H]; cos/sin [B, T, D]; kv_mask [B, S] (1 = real key); segments [B, T] segment
        ids of packed sequences (whole batches only) or None; window: the layer's sliding
        attention window (static; None: full causal). With ``cache_kv=(k, v)`` ([B, S, K, D])
        the new keys/values are written at slot ``write_index`` first, and the queries sit at
        slots ``write_index + arange(T)``; returns (out, (k, v)). The projections' outputs are
        named for the ``save_qkv_proj`` remat policies."""
        b, t, _ = x.shape
        q = checkpoint_name(self.q(x), "query_proj").reshape(b, t, self.num_heads, self.head_dim)
        k = checkpoint_name(self.k(x), "key_proj").reshape(b, t, self.num_kv_heads, self.head_dim)
        v = checkpoint_name(self.v(x), "value_proj").reshape(b, t, self.num_kv_heads, self.head_dim)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = rotary(q, cos, sin), rotary(k, cos, sin)
        if cache_kv is not None:
            ck, cv = cache_kv
            k = jax.lax.dynamic_update_slice(ck, k.astype(ck.dtype), (0, write_index, 0, 0))
            v = jax.lax.dynamic_update_slice(cv, v.astype(cv.dtype), (0, write_index, 0, 0))
            k, v = constrain(k, CACHE_AXES), constrain(v, CACHE_AXES)
        mask = AttentionMask(key_mask=kv_mask, causal=True, window=window, q_offset=write_index,
                             q_segments=segments, kv_segments=segments)
        context = attention(q, k, v, mask, implementation=self.implementation).reshape(b, t, -1)
        return self.o(context), (k, v)


class MLP(nnx.Module):
    def __init__(self, cfg: LlamaConfig, *, dtype, param_dtype, rngs: nnx.Rngs):
        h, m = cfg.hidden_size, cfg.intermediate_size
        lin = lambda i, o: nnx.Linear(i, o, use_bias=cfg.mlp_bias, dtype=dtype, param_dtype=param_dtype, rngs=rngs)  # noqa: E731
        self.gate, self.up, self.down = lin(h, m), lin(h, m), lin(m, h)

    def __call__(self, x):
        return self.down(jax.nn.silu(self.gate(x)) * self.up(x))


class Layer(nnx.Module):
    def __init__(self, cfg: LlamaConfig, *, dtype, param_dtype, attention: str = "auto", rngs: nnx.Rngs):
        self.attention_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, dtype=dtype, param_dtype=param_dtype)
        self.attention = Attention(cfg, dtype=dtype, param_dtype=param_dtype, implementation=attention, rngs=rngs)
        self.mlp_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, dtype=dtype, param_dtype=param_dtype)
        self.mlp = MLP(cfg, dtype=dtype, param_dtype=param_dtype, rngs=rngs)

    def __call__(self, x, cos, sin, kv_mask, segments=None, cache_kv=None, write_index=None, window=None):
        h, kv = self.attention(self.attention_norm(x), cos, sin, kv_mask, segments, cache_kv, write_index, window)
        x = x + h
        x = x + self.mlp(self.mlp_norm(x))
        return constrain(x, ACTIVATION_AXES), kv


@dataclasses.dataclass(frozen=True)
class TokenPrepending:
    """Token Prepending (Fu et al., ACL 2025, arXiv 2412.11556; official code
    github.com/fuyuchenIfyw/token_prepending, ``senllm/modeling_llama.py``): the input of every
    layer ``i`` in ``[start, exit)`` has its state at the first ``token_id`` position replaced
    by the previous layer's state at the row's last real token, so tokens after that position
    see a summary of the whole sentence under plain causal attention.

    Attributes:
      token_id: the ``<PST>`` id in the tokenizer (it may lie past the embedding table).
      start: first layer (0-based) whose input is replaced; the code's ``tp_starting_index``.
      exit: first layer no longer replaced; the code's ``tp_exiting_index``. ``exit <= start``
        disables the replacement.
      embedding: [H] input embedding of the token, which need not be in the embedding table (the
        reference adds a ``torch.randn`` row; the paper's Table 4 finds zeros, ones, uniform,
        Gaussian and a space token's embedding equally good).
    """

    token_id: int
    start: int
    exit: int
    embedding: jax.Array

    def replaces(self, layer: int) -> bool:
        return self.start <= layer < self.exit

    def embed(self, embed: nnx.Embed, input_ids: jax.Array) -> jax.Array:
        """[B, T, H] input embeddings, the token's own vector at its positions."""
        is_pst = input_ids == self.token_id
        x = embed(jnp.where(is_pst, 0, input_ids))
        return jnp.where(is_pst[..., None], self.embedding.astype(x.dtype), x)

    def replace(self, x: jax.Array, input_ids: jax.Array, last: jax.Array) -> jax.Array:
        """x [B, T, H] with the first ``token_id`` position of each row set to x at ``last`` [B]
        (rows without the token are unchanged)."""
        is_pst = input_ids == self.token_id
        first = jnp.arange(x.shape[1])[None] == jnp.argmax(is_pst, axis=1)[:, None]
        state = jnp.take_along_axis(x, last[:, None, None], axis=1)  # [B, 1, H]
        return jnp.where((first & is_pst)[..., None], state, x)


jax.tree_util.register_dataclass(TokenPrepending, data_fields=["embedding"], meta_fields=["token_id", "start", "exit"])


class LlamaForCausalLM(nnx.Module):
    """Decoder-only transformer with an LM head (tied to the embedding or its own).

    ``dtype`` is the compute dtype; parameters are stored in ``param_dtype`` (float32 by default).
    ``attention``: the attention kernel, one of ``jaxalign.ops.attention.IMPLEMENTATIONS``.
    ``remat``: the per-layer rematerialisation policy (:data:`jaxalign.models.scan.REMAT_POLICIES`).
    ``scan=False`` runs the stacked layers in a Python loop instead of ``jax.lax.scan`` (the same
    layer code; for debugging).
    """

    def __init__(self, cfg: LlamaConfig, *, dtype=jnp.float32, param_dtype=jnp.float32, remat: str = "none",
                 attention: str = "auto", scan: bool = True, rngs: nnx.Rngs):
        self.remat = scan_lib.check_remat(remat)
        check_available(attention)
        self.config = cfg
        self.dtype = dtype
        self.scan = scan
        self.embed = nnx.Embed(cfg.vocab_size, cfg.hidden_size, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.layers = scan_lib.stacked(
            lambda r: Layer(cfg, dtype=dtype, param_dtype=param_dtype, attention=attention, rngs=r),
            cfg.num_hidden_layers, rngs)
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, dtype=dtype, param_dtype=param_dtype)
        if cfg.tie_word_embeddings:
            self.lm_head = None
        else:
            self.lm_head = nnx.Linear(
                cfg.hidden_size, cfg.vocab_size, use_bias=False, dtype=dtype, param_dtype=param_dtype, rngs=rngs
            )

    def rope(self, positions: jax.Array) -> tuple[jax.Array, jax.Array]:
        """cos, sin [B, T, D] for integer positions [B, T], computed in float32 as transformers does
        (even in a float64 run, which then matches a float64 transformers run to rounding)."""
        inv_freq, scaling = self.config.rope_frequencies()
        wide = _stat_dtype(self.dtype or jnp.float32)
        freqs = positions.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq, jnp.float32)
        emb = jnp.concatenate([freqs, freqs], axis=-1)
        return (jnp.cos(emb) * scaling).astype(wide), (jnp.sin(emb) * scaling).astype(wide)

    def __call__(
        self,
        input_ids: jax.Array,
        attention_mask: jax.Array,
        *,
        positions: jax.Array | None = None,
        cache: KVCache | None = None,
        output_layer: int | None = None,
        prepend: TokenPrepending | None = None,
        inputs_embeds: jax.Array | None = None,
        segment_ids: jax.Array | None = None,
    ) -> tuple[jax.Array, KVCache | None]:
        """Final-normed hidden states [B, T, H] (and the updated cache).

        Without ``cache``: a whole padded batch, positions from the mask. With ``cache``: the
        next ``T`` tokens are written at ``cache.index`` and attend to every real slot before
        them; ``positions`` [B, T] must then be given (the running count of real tokens).

        ``output_layer`` n < L returns instead the raw (un-normed) input of layer n, i.e. the
        output of layer n (0 = the embeddings, ``transformers``' ``hidden_states[n]``), running
        only the first n layers; n = L is the final-normed output. ``prepend``: Token
        Prepending (whole batches only); a layer's input is replaced before the layer runs, and
        the output at ``output_layer`` n carries layer n's replacement, as the reference's
        in-place write does. ``inputs_embeds`` [B, T, H] replaces the embedding lookup of
        ``input_ids`` (as in ``transformers``), e.g. to apply dropout to it. ``segment_ids``
        [B, T]: packed sequences (whole batches only), a token attends only within its segment
        (pass each segment's ``positions`` too).
        """
        t = input_ids.shape[1]
        depth = self.config.num_hidden_layers
        if output_layer is not None and not 0 <= output_layer <= depth:
            raise ValueError(f"output_layer {output_layer} is outside the model's depth: 0 (embeddings) to {depth}")
        if positions is None:
            if cache is not None:
                raise ValueError("with a cache, pass the positions of the new tokens")
            positions = position_ids(attention_mask)
        if cache is not None and (prepend is not None or output_layer is not None or segment_ids is not None):
            raise ValueError("output_layer, token prepending and segment_ids run on whole batches, not with a "
                             "key/value cache")
        if inputs_embeds is not None:
            x = inputs_embeds.astype(self.dtype or inputs_embeds.dtype)
        else:
            x = self.embed(input_ids) if prepend is None else prepend.embed(self.embed, input_ids)
        x = constrain(x, ACTIVATION_AXES)
        last = None if prepend is None else last_index(attention_mask)
        cos, sin = self.rope(positions)
        if cache is None:
            kv_mask, write = attention_mask, None
        else:
            write = cache.index
            kv_mask = jax.lax.dynamic_update_slice(cache.mask, attention_mask.astype(cache.mask.dtype), (0, write))

        stop = depth if output_layer is None else output_layer
        keys, values = [], []
        for start, end, (window, replaced) in scan_lib.runs(
                [(self.config.layer_window(i), prepend is not None and prepend.replaces(i)) for i in range(stop)]):

            def body(layer, x, cache_kv, window=window, replaced=replaced):
                if replaced:
                    x = prepend.replace(x, input_ids, last)
                x, kv = layer(x, cos, sin, kv_mask, segment_ids, cache_kv, write, window)
                return x, None if cache is None else kv

            xs = None if cache is None else (cache.keys[start:end], cache.values[start:end])
            x, kv = scan_lib.run_layers(self.layers, body, x, xs, start=start, stop=end,
                                        remat=self.remat if cache is None else "none", scan=self.scan)
            if kv is not None:
                keys.append(kv[0])
                values.append(kv[1])
        if output_layer is not None and output_layer < depth:
            if prepend is not None and prepend.replaces(output_layer):
                x = prepend.replace(x, input_ids, last)
            return x, None
        x = self.norm(x)
        if cache is None:
            return x, None
        stack = lambda parts: constrain(jnp.concatenate(parts) if len(parts) > 1 else parts[0], STACKED_CACHE_AXES)  # noqa: E731
        return x, KVCache(stack(keys), stack(values), kv_mask, cache.index + t)

    def unembed_kernel(self) -> jax.Array:
        """The [H, V] output projection (the transposed embedding when tied)."""
        if self.lm_head is None:
            return self.embed.embedding[...].T
        return self.lm_head.kernel[...]

    def logits(self, hidden: jax.Array) -> jax.Array:
        """[..., H] hidden states -> [..., V] logits in float32 (float64 when computing in float64)."""
        kernel = self.unembed_kernel().astype(self.dtype or hidden.dtype)
        out = jnp.einsum("...h,hv->...v", hidden.astype(kernel.dtype), kernel, preferred_element_type=_stat_dtype(kernel.dtype))
        return constrain(out, LOGITS_AXES) if out.ndim == 3 else out
