"""Contrastive sentence-embedding objectives as plug-ins of the generic training step.

An objective is two pure functions, split so that GradCache can cache between them:

* ``embed(encoder_params, input_ids, attention_mask, rng) -> E``: token arrays
  ``[C, B, T]`` (C text columns) to pooled embeddings ``[C*V, B, D]`` (V views per column:
  two dropout views for unsupervised SimCSE, ``num_pos + 1`` for WhitenedCSE), or
  ``[C*V, L+1, B, D]`` for 2D Matryoshka, which pools every layer;
* ``loss(head_params, E, batch, rng) -> (loss, metrics)``.

The encoder is a BERT-family :class:`~jaxalign.models.registry.Encoder` or a decoder behind a
prompt (:class:`~jaxalign.inference.prompt_embed.PromptEncoder`); its parameters are trained
whole (``params["encoder"]``) or through LoRA adapters over a frozen base (``params["lora"]``,
``frozen["base"]``).

The batch is the *global* batch: inside ``jax.jit`` with sharded inputs, the similarity
matrices span every shard and gradients reach every shard, so in-batch negatives are
the same on any mesh.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp

from jaxalign.config.objectives import ContrastiveConfig
from jaxalign.inference.prompt_embed import PromptEncoder
from jaxalign.losses.contrastive import angle, cosent, info_nce
from jaxalign.losses.distill import dse_loss, dse_pair_features
from jaxalign.losses.matryoshka import matryoshka_2d_loss, matryoshka_loss
from jaxalign.losses.whitening import multi_view_sgw
from jaxalign.models.lora import apply_lora
from jaxalign.models.registry import Encoder
from jaxalign.objectives import heads
from jaxalign.ops.pooling import PoolingConfig, pool

TEXT_COLUMNS = {"sentences": 1, "nli": 3, "pairs": 2}


@dataclasses.dataclass(frozen=True)
class ContrastiveObjective:
    cfg: ContrastiveConfig
    data_kind: str
    encoder: Encoder | PromptEncoder
    pooling: PoolingConfig
    dropout: bool = True
    num_shards: int = 1  # data-parallel shards, for per-shard whitening statistics
    lora_scale: float | None = None  # alpha / rank when training LoRA adapters

    def __post_init__(self):
        name = self.cfg.name
        if name == "whitenedcse":
            d, g = self.dim, self.cfg.whitening.groups
            if d % g:
                raise ValueError(f"objective.whitening.groups={g} does not divide the embedding size {d}; "
                                 f"choose a divisor of {d}")
        if name in ("matryoshka", "2dmse"):
            bad = [d for d in self.cfg.matryoshka_dims if not 0 < d <= self.dim]
            if bad:
                raise ValueError(f"objective.matryoshka_dims {bad} are outside 1..{self.dim} (the embedding size)")
        if name == "2dmse" and self.encoder.config.num_hidden_layers < 2:
            raise ValueError("objective.name=2dmse samples a layer below the last: the model needs >= 2 layers")
        if isinstance(self.encoder, PromptEncoder):
            if self.all_layers or self.pooling.needs_all_layers:
                raise ValueError(f"objective.name={name} with pooling {self.pooling.mode} (layer {self.pooling.layer}) "
                                 "pools several layers: for encoders only; a decoder pools last or mean of one layer")
            if self.views > 1 and self.data_kind == "sentences" and not (self.dropout and self.encoder.embedding_dropout):
                raise ValueError(f"objective.name={name} on single sentences contrasts dropout views, and a decoder has "
                                 "no dropout of its own: set model.embedding_dropout > 0 (and model.dropout: true), "
                                 "or train on nli or pairs data")

    @property
    def dim(self) -> int:
        return self.encoder.config.hidden_size

    @property
    def text_columns(self) -> int:
        return TEXT_COLUMNS[self.data_kind]

    @property
    def numeric_columns(self) -> tuple[str, ...]:
        """Float columns after the text: gold pair scores, and DSE's precomputed teacher scores."""
        if self.data_kind != "pairs":
            return ()
        return ("score", "teacher") if self.cfg.name == "dse" else ("score",)

    @property
    def views(self) -> int:
        if self.cfg.name == "whitenedcse":
            return self.cfg.whitening.num_pos + 1
        return 2 if self.data_kind == "sentences" else 1

    @property
    def all_layers(self) -> bool:
        return self.cfg.name == "2dmse"

    def check_batch(self, batch_size: int) -> None:
        """Batch-size requirements that are static, checked before compiling."""
        if self.cfg.name == "whitenedcse":
            w = self.cfg.whitening
            per_stat = batch_size // (self.num_shards if w.statistics == "per_shard" else 1)
            group = self.dim // w.groups
            if per_stat <= group and w.eps == 0:
                raise ValueError(
                    f"data.batch_size={batch_size} gives {per_stat} rows per whitening statistic, not more than the "
                    f"group size {group}: the covariance is singular. Use more groups (objective.whitening.groups), "
                    "a larger batch, or objective.whitening.eps > 0")
        if self.cfg.cache_chunk is not None and batch_size % self.cfg.cache_chunk:
            raise ValueError(f"objective.cache_chunk={self.cfg.cache_chunk} does not divide data.batch_size={batch_size}")

    def init_head(self, key) -> tuple[dict, dict]:
        if self.cfg.name == "dse":
            return heads.init_pair_head(key, self.dim)
        if self.cfg.name == "whitenedcse" or getattr(self.cfg, "head", "none") == "mlp":
            return heads.init_mlp_head(key, self.dim)
        return {}, {}

    def encoder_params(self, params: dict, frozen: dict | None) -> dict:
        """The encoder's parameters: trained whole, or the frozen base with the adapters applied."""
        if "lora" in params:
            return apply_lora(frozen["base"], params["lora"], self.lora_scale)
        return params["encoder"]

    def embed(self, params, input_ids: jax.Array, attention_mask: jax.Array, rng: jax.Array | None) -> jax.Array:
        """[C, B, T] tokens -> [C*V, B, D] (or [C*V, L+1, B, D]) float32 embeddings, one forward."""
        c, b, t = input_ids.shape
        v = self.views
        # Rows ordered (example, column, view): the batch axis stays major, so a batch-sharded
        # input stays sharded the same way without any data movement.
        rows = lambda x: jnp.repeat(x, v, axis=0).transpose(1, 0, 2).reshape(b * c * v, t)
        ids, mask = rows(input_ids), rows(attention_mask)
        out = self.encoder.apply(params, ids, mask, dropout_rng=rng if self.dropout else None,
                                 output_hidden_states=self.all_layers or self.pooling.needs_all_layers)
        hidden = out.hidden_states if out.hidden_states is not None else (out.last_hidden_state,)
        if self.all_layers:
            per_layer = [pool(hidden, mask, dataclasses.replace(self.pooling, layer=i)) for i in range(len(hidden))]
            e = jnp.stack(per_layer)  # [L+1, B*C*V, D]
            return e.reshape(len(hidden), b, c * v, -1).transpose(2, 0, 1, 3)
        e = pool(hidden, mask, self.pooling, out.pooler_output)
        return e.reshape(b, c * v, -1).transpose(1, 0, 2)

    def _info_nce(self, *columns):
        cfg = self.cfg
        anchors, positives = columns[0], columns[1]
        negatives = columns[2][:, None] if len(columns) > 2 else None
        hard = {"hard_negative_weight": cfg.hard_negative_weight} if negatives is not None else {}
        return info_nce(anchors, positives, negatives, temperature=cfg.temperature, symmetric=cfg.symmetric, **hard)

    def loss(self, head_params, e: jax.Array, batch: dict, rng: jax.Array) -> tuple[jax.Array, dict]:
        cfg, name = self.cfg, self.cfg.name
        head = (lambda x: heads.mlp_head(head_params, x)) if head_params and name != "dse" else (lambda x: x)
        if name == "simcse":
            return self._info_nce(*[head(x) for x in e]), {}
        if name == "matryoshka":
            return matryoshka_loss(self._info_nce, [head(x) for x in e], dims=cfg.matryoshka_dims), {}
        if name == "whitenedcse":
            w = cfg.whitening
            views = multi_view_sgw(list(e), rng, groups=w.groups, method=w.method, eps=w.eps,
                                   stop_gradient=w.stop_gradient, ns_iters=w.ns_iters,
                                   num_shards=self.num_shards if w.statistics == "per_shard" else 1)
            z = [head(x) for x in views]
            return sum(self._info_nce(z[0], zj) for zj in z[1:]), {}
        if name in ("cosent", "angle"):
            fn = cosent if name == "cosent" else angle
            return fn(e[0], e[1], batch["score"], scale=cfg.scale), {}
        if name == "2dmse":
            return self._loss_2d(e, rng)
        # dse
        logits = heads.pair_head(head_params, dse_pair_features(e[0], e[1]))
        task = jnp.mean((logits - batch["score"] / 5.0) ** 2)
        return dse_loss(logits, batch["teacher"], task, alpha=cfg.alpha), {"task_loss": task}

    def _loss_2d(self, e: jax.Array, rng: jax.Array) -> tuple[jax.Array, dict]:
        """Samples a layer n in [1, L-1] and a Matryoshka dim per step. Both are traced (the dim
        through ``lax.switch`` over the static choices), so sampling never recompiles."""
        num_layers = e.shape[1] - 1
        k_layer, k_dim = jax.random.split(rng)
        n = jax.random.randint(k_layer, (), 1, num_layers)
        dims = self.cfg.matryoshka_dims
        which = jax.random.randint(k_dim, (), 0, len(dims))
        last = [x[-1] for x in e]
        sampled = [jax.lax.dynamic_index_in_dim(x, n, 0, keepdims=False) for x in e]
        branches = [
            lambda last, sampled, n, d=d: matryoshka_2d_loss(self._info_nce, last, sampled, layer_index=n, dim=d,
                                                             kl_temperature=self.cfg.kl_temperature)
            for d in dims
        ]
        loss, metrics = jax.lax.switch(which, branches, last, sampled, n)
        return loss, {**metrics, "layer": n, "dim": jnp.asarray(dims)[which]}


def loss_fn(objective: ContrastiveObjective) -> Callable:
    """``(params, batch, rng, frozen) -> (loss, metrics)`` with ``params = {"encoder" | "lora",
    "head"}`` (``frozen = {"base"}`` under LoRA)."""

    def f(params, batch, rng, frozen=None):
        k_embed, k_loss = jax.random.split(rng)
        e = objective.embed(objective.encoder_params(params, frozen), batch["input_ids"], batch["attention_mask"],
                            k_embed)
        return objective.loss(params["head"], e, batch, k_loss)

    return f


def cached_value_and_grad(objective: ContrastiveObjective, chunk: int) -> Callable:
    """GradCache: the loss and gradients of :func:`loss_fn` with activations for ``chunk``
    examples at a time.

    1. embed every chunk without gradients (``lax.map``: one chunk's activations live at once);
    2. differentiate the loss with respect to the cached embeddings (and the head);
    3. re-embed chunk by chunk with the same dropout keys and pull the embedding gradients back
       through the encoder (``vjp``), summing parameter gradients.

    Chunk ``k`` holds examples ``k, k+n, k+2n, ...`` (n chunks), so every chunk spans all data
    shards of a batch-sharded input. Equal to the uncached step when dropout is off; with
    dropout, each chunk's masks are replayed exactly between the two passes.
    """

    def value_and_grad(params, batch, rng, frozen=None):
        ids, mask = batch["input_ids"], batch["attention_mask"]
        c, b, t = ids.shape
        n = b // chunk
        k_embed, k_loss = jax.random.split(rng)
        split = lambda x: x.reshape(c, chunk, n, t).transpose(2, 0, 1, 3)  # [n, C, chunk, T]
        xs = (split(ids), split(mask), jax.random.split(k_embed, n))
        # Differentiated: everything but the head (the whole encoder, or LoRA adapters).
        trainable = {k: v for k, v in params.items() if k != "head"}
        embed = lambda p, i, m, k: objective.embed(objective.encoder_params(p, frozen), i, m, k)  # -> [..., chunk, D]
        cached = jax.lax.map(lambda a: jax.lax.stop_gradient(embed(trainable, *a)), xs)
        e = jnp.moveaxis(cached, 0, -2)  # [..., chunk, n, D]
        e = e.reshape(*e.shape[:-3], b, e.shape[-1])
        (loss, metrics), (g_head, g_e) = jax.value_and_grad(objective.loss, argnums=(0, 1), has_aux=True)(
            params["head"], e, batch, k_loss)
        g_chunks = jnp.moveaxis(g_e.reshape(*g_e.shape[:-2], chunk, n, g_e.shape[-1]), -2, 0)

        def accumulate(total, a):
            i, m, k, g = a
            _, pullback = jax.vjp(lambda p: embed(p, i, m, k), trainable)
            return jax.tree.map(jnp.add, total, pullback(g)[0]), None

        zeros = jax.tree.map(jnp.zeros_like, trainable)
        g_trainable, _ = jax.lax.scan(accumulate, zeros, (*xs, g_chunks))
        return (loss, metrics), {**g_trainable, "head": g_head}

    return value_and_grad
