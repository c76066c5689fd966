"""Scaled dot-product attention for every model, one function with interchangeable kernels.

Shapes: ``B`` batch, ``T`` queries, ``S`` keys/values, ``N`` query heads, ``K`` key/value heads
(``N = K * G``, grouped-query attention: query head ``n`` reads key/value head ``n // G``, as
``transformers``' ``repeat_kv``), ``D`` head dim. Queries ``[B, T, N, D]``, keys and values
``[B, S, K, D]``, output ``[B, T, N, D]`` in the queries' dtype.

Which keys a query sees is described by :class:`AttentionMask` (causal, sliding window, key
padding, segments, and the slot of the first query in a cache step) rather than by a dense
array, so that each kernel gets it in the form it runs fastest:

* ``einsum``: the reference. Scores ``[B, K, G, T, S]`` in float32, masked to the float32
  minimum, softmax, weighted sum; the only kernel that applies dropout to the probabilities.
* ``xla``: ``jax.nn.dot_product_attention(implementation="xla")`` with the same dense mask;
  on CPU the same computation as ``einsum``.
* ``cudnn``: ``jax.nn.dot_product_attention(implementation="cudnn")``, cuDNN flash attention
  (GPU, bfloat16/float16). Causality and the window go to the kernel as flags; padding and
  segments as a ``[B, 1, T, S]`` mask, with padding tokens as one more segment so that no
  query row is empty.
* ``splash``: the Pallas TPU kernel ``jax.experimental.pallas.ops.tpu.splash_attention``,
  causality and the window as its static block-sparse mask, padding and segments as its
  segment ids (padding as segment 0, as for ``cudnn``). Sequences must be multiples of 128.

``auto`` picks ``cudnn`` on GPU, ``splash`` on TPU and ``xla`` elsewhere; a call that kernel
cannot take (float32 on GPU, a length that is no multiple of 128 on TPU, several TPUs outside
``jax.set_mesh``) runs through ``xla`` with one warning per reason. Dropout on the probabilities runs through ``einsum``. A cache
step (a few new queries against the cache, ``q_offset`` set) always runs through ``xla``: it
is a matrix-vector product the fused kernels do not speed up and their masks are static.

Values at query rows with no visible key (padding) are undefined but finite: the reference
and ``xla`` average every value uniformly there, the fused kernels attend among padding.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental.pallas.ops.tpu.splash_attention import (
    splash_attention_kernel as splash_kernel,
)
from jax.experimental.pallas.ops.tpu.splash_attention import (
    splash_attention_mask as splash_mask,
)
from jax.sharding import PartitionSpec

from jaxalign.sharding.rules import DEFAULT_RULES, logical_to_spec

log = logging.getLogger(__name__)

IMPLEMENTATIONS = ("auto", "xla", "cudnn", "splash", "einsum")
BACKEND_KERNELS = {"gpu": "cudnn", "tpu": "splash"}  # what auto prefers; xla elsewhere
HALF_DTYPES = (jnp.bfloat16, jnp.float16)
SPLASH_BLOCK = 128  # splash's block sizes are multiples of the TPU's 128 lanes
_NEG = float(np.finfo(np.float32).min)
_warned: set[str] = set()


@dataclasses.dataclass(frozen=True)
class BranchSegments:
    """Segment ids of packed groups whose branches share a prefix, as ``q_segments``/``kv_segments``.

    A token sees a key iff both are in the same ``group`` and the key's ``branch`` is 0 (the
    shared prefix: a prompt) or the query's own branch (with ``causal``, slots up to its own).
    A ``[prompt, chosen, rejected]`` group thus gives both completions the prompt and only
    themselves; laid out in that order, slot order is causal order within every branch.

    Attributes:
      group: [B, L] int32 group (segment) id of each token.
      branch: [B, L] int32: 0 on the shared prefix, 1, 2, ... on the branches.
    """

    group: jax.Array
    branch: jax.Array

    def visible(self, keys: BranchSegments) -> jax.Array:
        """[B, T, S] bool: query t (of these ids) may see key s (of ``keys``)."""
        same = self.group[:, :, None] == keys.group[:, None, :]
        return same & ((keys.branch[:, None, :] == 0) | (self.branch[:, :, None] == keys.branch[:, None, :]))


jax.tree_util.register_dataclass(BranchSegments, data_fields=["group", "branch"], meta_fields=[])


@dataclasses.dataclass(frozen=True)
class AttentionMask:
    """Which keys each query attends to; every field narrows it.

    Attributes:
      key_mask: [B, S] 1 where the key is a real token, 0 at padding; None: every key.
      causal: a query sees keys at slots up to its own.
      window: with ``causal``, only the last ``window`` slots (``slot > query slot - window``),
        Mistral's sliding window; None: no limit.
      q_offset: int32 scalar, the slot of the first query (query ``i`` is at slot
        ``q_offset + i``): a cache step's write index. None: whole sequences, queries and keys
        the same ``T = S`` tokens.
      q_segments: [B, T] segment ids of the queries (packed sequences): a query sees only keys
        of its own segment; or :class:`BranchSegments` (segments with a shared prefix). None:
        one segment.
      kv_segments: [B, S] segment ids of the keys (or :class:`BranchSegments`); with ``q_segments``.
    """

    key_mask: jax.Array | None = None
    causal: bool = False
    window: int | None = None
    q_offset: jax.Array | None = None
    q_segments: jax.Array | None = None
    kv_segments: jax.Array | None = None

    def __post_init__(self):
        if self.window is not None and (not self.causal or self.window < 1):
            raise ValueError(f"sliding window {self.window}: needs causal attention and a window >= 1")
        if (self.q_segments is None) != (self.kv_segments is None):
            raise ValueError("segment ids: give both q_segments and kv_segments, or neither")

    def dense(self, t: int, s: int) -> jax.Array:
        """[B or 1, T, S] bool, True where query t may attend to key s."""
        q_slots = jnp.arange(t) + (0 if self.q_offset is None else self.q_offset)
        kv_slots = jnp.arange(s)
        allowed = jnp.ones((1, t, s), bool)
        if self.causal:
            allowed &= kv_slots[None, None, :] <= q_slots[None, :, None]
        if self.window is not None:
            allowed &= kv_slots[None, None, :] > q_slots[None, :, None] - self.window
        if self.key_mask is not None:
            allowed &= self.key_mask[:, None, :] > 0
        if self.branched:
            allowed &= self.q_segments.visible(self.kv_segments)
        elif self.q_segments is not None:
            allowed &= self.q_segments[:, :, None] == self.kv_segments[:, None, :]
        return allowed

    @property
    def branched(self) -> bool:
        """Segments with a shared prefix (:class:`BranchSegments`), which only a dense mask expresses."""
        return isinstance(self.q_segments, BranchSegments)

    def kernel_segments(self) -> tuple[jax.Array, jax.Array] | None:
        """([B, T], [B, S]) int32 segment ids with padding as segment 0 and real tokens as
        ``segment + 1``, for self-attention kernels that take padding as a segment (every
        query then sees at least itself); None without padding or segments."""
        if self.branched:
            raise ValueError("segments with a shared prefix (BranchSegments) have no kernel segment ids: "
                             "use the xla or einsum kernel")
        if self.key_mask is None and self.q_segments is None:
            return None
        q_seg = jnp.ones_like(self.key_mask, jnp.int32) if self.q_segments is None else self.q_segments + 1
        kv_seg = q_seg if self.kv_segments is None else self.kv_segments + 1
        if self.key_mask is not None:
            q_seg, kv_seg = (jnp.where(self.key_mask > 0, seg, 0).astype(jnp.int32) for seg in (q_seg, kv_seg))
        return q_seg, kv_seg


jax.tree_util.register_dataclass(
    AttentionMask, data_fields=["key_mask", "q_offset", "q_segments", "kv_segments"], meta_fields=["causal", "window"]
)


def check_available(implementation: str, backend: str | None = None) -> None:
    """Raises ValueError, naming the alternatives, for an unknown implementation or one the
    ``backend`` (default: JAX's) lacks; called when a model is built, before any compilation."""
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"attention implementation {implementation!r} (model.attention) is unknown: "
                         f"choose one of {', '.join(IMPLEMENTATIONS)}")
    backend = backend or jax.default_backend()
    needs = {kernel: platform for platform, kernel in BACKEND_KERNELS.items()}.get(implementation)
    if needs is not None and backend != needs:
        raise ValueError(f"model.attention={implementation} needs a {needs.upper()} and this backend is {backend}: "
                         f"use auto (here {BACKEND_KERNELS.get(backend, 'xla')}), xla or einsum")


def unsupported(implementation: str, q: jax.Array, k: jax.Array, mask: AttentionMask,
                dropout: bool) -> str | None:
    """Why ``implementation`` cannot run this call (None: it can)."""
    if dropout and implementation != "einsum":
        return "attention dropout (training with dropout on) runs only through einsum"
    t, d = q.shape[1], q.shape[-1]
    if mask.branched and implementation in ("cudnn", "splash"):
        return ("a shared-prompt mask (segments with a shared prefix, data.packing=shared_prompt) runs only "
                "through xla or einsum")
    if implementation == "cudnn":
        if q.dtype not in HALF_DTYPES:
            return f"cuDNN flash attention needs bfloat16 or float16, not {q.dtype}"
        if d % 8 or d > 128:
            return f"cuDNN flash attention needs a head dim that is a multiple of 8 up to 128, not {d}"
        if (mask.key_mask is not None or mask.q_segments is not None) and (t % 2 or k.shape[1] % 2):
            return f"cuDNN flash attention with padding or segments needs even lengths, not {t} x {k.shape[1]}"
    if implementation == "splash":
        s = k.shape[1]
        if t != s or t % SPLASH_BLOCK:
            return f"splash attention needs self-attention over a multiple of {SPLASH_BLOCK} tokens, not {t} x {s}"
        if jax.device_count() > 1 and jax.sharding.get_abstract_mesh().empty:
            return "splash attention on several devices runs only inside jax.set_mesh (it is shard_mapped over it)"
    return None


def select(implementation: str, q: jax.Array, k: jax.Array, mask: AttentionMask, *, dropout: bool = False,
           backend: str | None = None) -> str:
    """The kernel that runs this call: ``implementation`` itself, or for ``auto`` the backend's
    fused kernel where it can take the call, else ``xla`` (``einsum`` with dropout). An
    explicit kernel that cannot take the call raises ValueError naming the alternatives."""
    backend = backend or jax.default_backend()
    if implementation == "auto":
        if dropout:
            return "einsum"
        preferred = BACKEND_KERNELS.get(backend, "xla")
        if preferred == "xla" or mask.q_offset is not None:
            return "xla"
        reason = unsupported(preferred, q, k, mask, dropout)
        if reason is None:
            return preferred
        if reason not in _warned:
            _warned.add(reason)
            log.warning("model.attention=auto: %s; using xla", reason)
        return "xla"
    if mask.q_offset is not None and implementation in BACKEND_KERNELS.values():
        return "xla"
    reason = unsupported(implementation, q, k, mask, dropout)
    if reason is not None:
        others = ["auto"] + [i for i in IMPLEMENTATIONS[1:] if i != implementation
                             and unsupported(i, q, k, mask, dropout) is None
                             and (i not in BACKEND_KERNELS.values() or BACKEND_KERNELS.get(backend) == i)]
        raise ValueError(f"model.attention={implementation}: {reason}; use {', '.join(others[:-1])} or {others[-1]}")
    return implementation


def attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: AttentionMask, *, implementation: str = "auto",
              scale: float | None = None, dropout: Callable[[jax.Array], jax.Array] | None = None) -> jax.Array:
    """Attention of q [B, T, N, D] over k, v [B, S, K, D] -> [B, T, N, D] in q's dtype.

    ``scale`` multiplies the scores (default ``D ** -0.5``); ``dropout`` maps the probabilities
    [B, K, G, T, S] to their dropped-out version (training; forces the einsum kernel).
    """
    k, v = k.astype(q.dtype), v.astype(q.dtype)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    kernel = select(implementation, q, k, mask, dropout=dropout is not None)
    if kernel == "einsum":
        return einsum_attention(q, k, v, mask, scale=scale, dropout=dropout)
    if kernel == "xla":
        return xla_attention(q, k, v, mask, scale=scale)
    if kernel == "cudnn":
        return cudnn_attention(q, k, v, mask, scale=scale)
    return splash_attention(q, k, v, mask, scale=scale)


def einsum_attention(q, k, v, mask: AttentionMask, *, scale: float,
                     dropout: Callable[[jax.Array], jax.Array] | None = None) -> jax.Array:
    """The reference: float32 (or wider) scores [B, K, G, T, S], masked, softmax, weighted sum."""
    b, t, n, d = q.shape
    kv_heads = k.shape[2]
    qg = q.reshape(b, t, kv_heads, n // kv_heads, d)
    wide = jnp.promote_types(q.dtype, jnp.float32)
    scores = jnp.einsum("btkgd,bskd->bkgts", qg, k, preferred_element_type=wide) * scale
    scores = jnp.where(mask.dense(t, k.shape[1])[:, None, None], scores, _NEG)
    probs = jax.nn.softmax(scores, axis=-1).astype(q.dtype)
    if dropout is not None:
        probs = dropout(probs)
    return jnp.einsum("bkgts,bskd->btkgd", probs, v).reshape(b, t, n, d)


def xla_attention(q, k, v, mask: AttentionMask, *, scale: float) -> jax.Array:
    """``jax.nn.dot_product_attention`` (XLA) with the dense mask [B, 1, T, S]."""
    allowed = mask.dense(q.shape[1], k.shape[1])[:, None]
    return jax.nn.dot_product_attention(q, k, v, mask=allowed, scale=scale, implementation="xla")


def cudnn_attention(q, k, v, mask: AttentionMask, *, scale: float) -> jax.Array:
    """cuDNN flash attention over whole sequences: causality and window as the kernel's own
    flags, padding and segments as a [B, 1, T, S] mask of equal kernel segments."""
    segments = mask.kernel_segments()
    allowed = None if segments is None else (segments[0][:, :, None] == segments[1][:, None, :])[:, None]
    window = None if mask.window is None else (mask.window - 1, 0)
    return jax.nn.dot_product_attention(q, k, v, mask=allowed, scale=scale, is_causal=mask.causal,
                                        local_window_size=window, implementation="cudnn")


def splash_attention(q, k, v, mask: AttentionMask, *, scale: float, interpret: bool = False) -> jax.Array:
    """The Pallas TPU splash kernel over whole sequences (T = S, a multiple of 128): causality and
    window as its static mask, padding and segments as its segment ids; vmapped over the batch.

    Inside ``jax.set_mesh`` the kernel runs under ``shard_map`` (XLA cannot partition a Pallas
    call): each device takes its rows of the batch (the ``batch`` rule's mesh axes) and, when
    both head counts divide it, its heads (``act_heads``). ``interpret`` runs the kernel in the
    Pallas interpreter (any backend, slowly: for tests)."""
    segments = mask.kernel_segments()
    run = functools.partial(_splash_local, causal=mask.causal, window=mask.window, scale=scale, interpret=interpret)
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or mesh.size == 1:
        return run(q, k, v, segments)
    spec = PartitionSpec(_mesh_axes(mesh, "batch", q.shape[0]), None,
                         _mesh_axes(mesh, "act_heads", math.gcd(q.shape[2], k.shape[2])), None)
    seg_spec = None if segments is None else (PartitionSpec(spec[0], None),) * 2
    return jax.shard_map(run, in_specs=(spec, spec, spec, seg_spec), out_specs=spec, check_vma=False)(q, k, v, segments)


def _mesh_axes(mesh, logical: str, size: int) -> tuple[str, ...] | None:
    """The mesh axes the ``logical`` rule shards over, if they divide ``size`` (else None: replicated)."""
    axes = logical_to_spec((logical,), DEFAULT_RULES)[0]
    axes = tuple(a for a in ((axes,) if isinstance(axes, str) else axes or ()) if a in mesh.axis_names)
    return axes if axes and size % math.prod(mesh.shape[a] for a in axes) == 0 else None


def _splash_local(q, k, v, segments, *, causal: bool, window: int | None, scale: float, interpret: bool) -> jax.Array:
    """:func:`splash_attention` on one device's arrays; ``segments`` from ``mask.kernel_segments()``."""
    _, t, n, _ = q.shape
    s = k.shape[1]
    static = splash_mask.FullMask((t, s))
    if causal:
        static = splash_mask.CausalMask((t, s))
    if window is not None:
        static = splash_mask.LogicalAnd(static, splash_mask.LocalMask((t, s), window_size=(window - 1, 0), offset=0))
    block = max(size for size in (512, 256, SPLASH_BLOCK) if t % size == 0 and s % size == 0)
    sizes = splash_kernel.BlockSizes(block_q=block, block_kv=block, block_kv_compute=block, block_q_dkv=block,
                                     block_kv_dkv=block, block_kv_dkv_compute=block, block_q_dq=block, block_kv_dq=block)
    kernel = splash_kernel.make_splash_mha(splash_mask.MultiHeadMask([static] * n), block_sizes=sizes, head_shards=1,
                                           q_seq_shards=1, interpret=interpret)
    heads_first = lambda x: jnp.swapaxes(x, 1, 2)  # [B, L, H, D] <-> [B, H, L, D]
    qh, kh, vh = heads_first(q * jnp.asarray(scale, q.dtype)), heads_first(k), heads_first(v)
    if segments is None:
        out = jax.vmap(kernel)(qh, kh, vh)
    else:
        out = jax.vmap(lambda q1, k1, v1, qs, ks: kernel(q1, k1, v1, splash_kernel.SegmentIds(qs, ks)))(
            qh, kh, vh, *segments)
    return heads_first(out).astype(q.dtype)
