"""Deita's model-based complexity and quality scores (Liu et al., ICLR 2024, arXiv 2312.15685;
github.com/hkust-nlp/deita, ``src/deita/selection/scorer``).

A scorer LM reads a fixed prompt and its next-token distribution over the digits "1".."6" is
turned into an expected score ``sum_i i * softmax(logits of the six digits)_i`` (the softmax
over those six tokens only), read at the first generated position, i.e. the logits after the
prompt's last token. The released scorers are LLaMA fine-tunes
(``hkust-nlp/deita-{complexity,quality}-scorer``); any decoder jaxalign loads can score, with
its own digit tokens looked up in its tokenizer. A tokenizer without a single-token digit
gets the reference's fallback score 3.0 for every example.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from jaxalign.inference.embed import DEFAULT_BUCKETS, Embedder
from jaxalign.models.decoders import Decoder
from jaxalign.ops.pooling import PoolingConfig, last_token

# Exact, including the two spaces before the complexity prompt's last newline.
COMPLEXITY_PROMPT = ("You are a helpful assistant. Please identify the complexity score of the following user query. "
                     "\n##Query: {instruction}  \n##Complexity: ")
QUALITY_PROMPT = ("You are a helpful assistant. Please identify the quality score of the Response corresponding to "
                  "the Question. \n #Question#:\n{instruction}\n#Response#:\n{output} \n##Quality: ")
FALLBACK = 3.0
DIGITS = "123456"


def expected_score(digit_logits: jax.Array) -> jax.Array:
    """``[..., 6]`` logits of "1".."6" -> ``[...]`` expected score in [1, 6] (float32 or wider)."""
    p = jax.nn.softmax(digit_logits.astype(jnp.promote_types(digit_logits.dtype, jnp.float32)), axis=-1)
    return (p * jnp.arange(1, 7, dtype=p.dtype)).sum(-1)


def digit_ids(tokenizer) -> tuple[int, ...] | None:
    """The ids of the single tokens "1".."6" (as the scorer would generate them), or None when
    the tokenizer spells some digit with several tokens or none."""
    ids = []
    for d in DIGITS:
        found = tokenizer.convert_tokens_to_ids(d)
        if found is None or found == tokenizer.unk_token_id:
            encoded = tokenizer(d, add_special_tokens=False)["input_ids"]
            found = encoded[0] if len(encoded) == 1 else None
        if found is None or found == tokenizer.unk_token_id:
            return None
        ids.append(int(found))
    return tuple(ids)


def digit_logits_fn(decoder: Decoder, ids: Sequence[int]):
    """Pure ``(params, input_ids, attention_mask, token_type_ids) -> [B, 6]`` float32 logits of the
    digits after each row's last real token; only six columns of the LM head are multiplied."""
    columns = jnp.asarray(ids)

    def f(params, input_ids, attention_mask, token_type_ids):
        last = last_token(decoder.hidden(params, input_ids, attention_mask), attention_mask)  # [B, H]
        head = jnp.take(decoder.unembed_kernel(params), columns, axis=1).astype(jnp.float32)  # [H, 6]
        return last @ head

    return f


class DeitaScorer:
    """Complexity and quality scores from one decoder: ``complexity(instructions) -> [N]``,
    ``quality(instructions, outputs) -> [N]``. Prompts go through the bucketed, sharded
    :class:`~jaxalign.inference.embed.Embedder` (left padding); an instruction or output too long
    for ``max_length`` is cut at its end so that the prompt's closing ``##Quality:`` stays."""

    def __init__(self, decoder: Decoder, *, batch_size: int = 8, max_length: int = 2048, mesh: Mesh | None = None,
                 buckets: Sequence[int] = (*DEFAULT_BUCKETS, 1024, 2048)):
        self.decoder = decoder
        self.max_length = min(max_length, decoder.max_length)
        self.ids = digit_ids(decoder.tokenizer)
        self.embedder = None if self.ids is None else Embedder(
            decoder, PoolingConfig(mode="last"), batch_size=batch_size, max_length=self.max_length, mesh=mesh, buckets=buckets,
            encode=digit_logits_fn(decoder, self.ids), padding_side="left")

    def _fit(self, template: str, **texts: str) -> str:
        """``template`` filled with ``texts``, each cut to an equal share of the token budget left."""
        tok = self.decoder.tokenizer
        budget = self.max_length - len(tok(template.format(**{k: "" for k in texts}))["input_ids"]) - 1
        ids = {k: tok(v, add_special_tokens=False)["input_ids"] for k, v in texts.items()}
        if sum(map(len, ids.values())) <= budget:
            return template.format(**texts)
        share = max(budget // len(texts), 1)
        return template.format(**{k: tok.decode(v[:share]) if len(v) > share else texts[k] for k, v in ids.items()})

    def _score(self, prompts: list[str], progress: bool, desc: str) -> np.ndarray:
        if self.embedder is None:
            return np.full(len(prompts), FALLBACK, np.float32)
        logits = self.embedder(prompts, progress=progress, desc=desc)
        return np.asarray(expected_score(jnp.asarray(logits)), np.float32)

    def complexity(self, instructions: Sequence[str], *, progress: bool = False) -> np.ndarray:
        prompts = [self._fit(COMPLEXITY_PROMPT, instruction=i) for i in instructions]
        return self._score(prompts, progress, "complexity")

    def quality(self, instructions: Sequence[str], outputs: Sequence[str], *, progress: bool = False) -> np.ndarray:
        prompts = [self._fit(QUALITY_PROMPT, instruction=i, output=o) for i, o in zip(instructions, outputs)]
        return self._score(prompts, progress, "quality")


__all__ = ["COMPLEXITY_PROMPT", "DIGITS", "FALLBACK", "QUALITY_PROMPT", "DeitaScorer", "digit_ids", "digit_logits_fn",
           "expected_score"]
