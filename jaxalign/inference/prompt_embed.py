"""Sentence embeddings from a causal decoder: a prompt around the sentence, one token state (or
the mean of them) at a chosen layer, optionally with Token Prepending.

Prompts and sentence preprocessing follow the Token Prepending reference code (Fu et al., ACL
2025, arXiv 2412.11556; github.com/fuyuchenIfyw/token_prepending, ``evaluate.py``), which
collects PromptEOL (Jiang et al., 2023, arXiv 2307.16645), Pretended CoT and Knowledge
Enhancement (Zhang et al., 2024, arXiv 2404.03921) and MetaEOL (Lei et al., 2024, arXiv
2402.18458; the embeddings of its 8 prompts are averaged). Each template holds the sentence
placeholder ``*sent 0*`` and, for Token Prepending, ``<PST>`` right before the quoted
sentence; without Token Prepending the ``<PST> `` is dropped, giving the original prompt.

Batches are left-padded as the reference's are. Positions count real tokens, so a row's
embedding does not depend on its padding (the reference's ``arange(T)`` positions shift a
left-padded row's RoPE phases uniformly, which leaves its attention unchanged up to rounding).
"""

from __future__ import annotations

import copy
import dataclasses
import json
from collections.abc import Callable, Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from jaxalign.inference.embed import DEFAULT_BUCKETS, Embedder
from jaxalign.models.bert.model import EncoderOutput
from jaxalign.models.decoders import Decoder
from jaxalign.models.llama.model import TokenPrepending
from jaxalign.ops.dropout import dropout
from jaxalign.ops.pooling import PoolingConfig, matryoshka, pool

SENTENCE = "*sent 0*"
EMBEDDING_CONFIG = "embedding.json"  # a trained decoder sentence encoder's prompt, pooling and layer
PST = "<PST>"
_EOL = f'this sentence : {PST} "{SENTENCE}"'
PROMPTS: dict[str, tuple[str, ...]] = {
    "prompteol": (f'This sentence : {PST} "{SENTENCE}" means in one word:"',),
    "pcot": (f'After thinking step by step , {_EOL} means in one word:"',),
    "ke": ("The essence of a sentence is often captured by its main subjects and actions, while descriptive terms "
           f'provide additional but less central details. With this in mind , {_EOL} means in one word:"',),
    "metaeol": (
        "In this task, you're presented with a text excerpt. Your task is to categorize the excerpt into a broad "
        "category such as 'Education', 'Technology', 'Health', 'Business', 'Environment', 'Politics', or 'Culture'. "
        "These categories help in organizing content for better accessibility and targeting. For this task, "
        f'{_EOL} should be classified under one general category in one word:"',
        "In this task, you're given a statement and you need to determine whether it's presenting an 'Opinion' or "
        "a 'Fact'. This distinction is vital for information verification, educational purposes, and content "
        f'analysis. For this task, {_EOL} discriminates between opinion and fact in one word:"',
        "In this task, you're given a review from an online platform. Your task is to generate a rating for the "
        "product based on the review on a scale of 1-5, where 1 means 'extremely negative' and 5 means "
        f"'extremely positive'. For this task, {_EOL} reflects the sentiment in one word:\"",
        "In this task, you're reading a personal diary entry. Your task is to identify the predominant emotion "
        f'expressed, such as joy, sadness, anger, fear, or love. For this task, {_EOL} conveys the emotion in one word:"',
        "In this task, you're presented with two sentences. Your task is to assess whether the sentences convey "
        "the same meaning. Use 'identical', 'similar', 'different', or 'unrelated' to describe the relationship. "
        f'To enhance the performance of this task, {_EOL} means in one word:"',
        "In this task, you're given a sentence and a phrase. Your task is to determine if the phrase can be a "
        "contextual synonym within the given sentence. Options include 'yes', 'no', or 'partially'. To enhance "
        f'the performance of this task, {_EOL} means in one word:"',
        "In this task, you're examining a news article. Your task is to extract the most critical fact from the "
        f'article. For this task, {_EOL} encapsulates the key fact in one word:"',
        "In this task, you're reviewing a scientific abstract. Your task is to identify the main entities (e.g., "
        "proteins, diseases) and their relations (e.g., causes, treats). For this task, "
        f'{_EOL} highlights the primary entity or relation in one word:"',
    ),
}
# (tp_start, tp_exit) of the reference's config.yaml: LLaMA-2-7B for the Llama and Mistral
# families (LLaMA-3-8B's is (1, 3)), Qwen2-7B for the Qwen families.
TP_DEFAULTS = {"llama": (1, 7), "mistral": (1, 7), "qwen2": (1, 6), "qwen3": (1, 6)}
POOLING_MODES = ("last", "mean")
DEFAULT_POOLING = PoolingConfig(mode="last", layer=-2)  # the reference's output_layer in 4 of its 5 configs


def preprocess(sentence: str) -> str:
    """The reference ``batcher``'s cleaning: end with ``.`` unless it ends in ``.?"'``, turn
    ``"`` into ``'``, and a final ``?`` into ``.``."""
    s = sentence
    if s and s[-1] not in ".?\"'":
        s += "."
    s = s.replace('"', "'")
    if s and s[-1] == "?":
        s = s[:-1] + "."
    return s


def render(template: str, sentence: str) -> str:
    """The prompt for one sentence: the preprocessed sentence in place of ``*sent 0*``, stripped."""
    return template.replace(SENTENCE, preprocess(sentence)).strip()


def prompt_templates(prompt: str, token_prepending: bool) -> tuple[str, ...]:
    """The templates for a prompt name (``prompteol``, ``pcot``, ``ke``, ``metaeol``) or one custom
    template, with ``<PST> `` kept for Token Prepending and dropped otherwise."""
    templates = PROMPTS.get(prompt.lower(), (prompt,))
    if SENTENCE not in templates[0]:
        raise ValueError(f"prompt {prompt!r} is neither a known prompt ({', '.join(PROMPTS)}) nor a template with "
                         f"the sentence placeholder {SENTENCE}; e.g. 'This sentence : {PST} \"{SENTENCE}\" means in one word:\"'")
    if token_prepending and PST not in templates[0]:
        raise ValueError(f"prompt {prompt!r}: token prepending needs {PST} in the template, right before the quoted "
                         f"sentence (this sentence : {PST} \"{SENTENCE}\" ...)")
    return templates if token_prepending else tuple(t.replace(f"{PST} ", "").replace(PST, "") for t in templates)


def with_pst_token(tokenizer) -> tuple[object, int]:
    """A copy of ``tokenizer`` that reads ``<PST>`` as one token, and that token's id."""
    tok = copy.deepcopy(tokenizer)
    try:
        tok.add_tokens([PST])
        pst = tok.convert_tokens_to_ids(PST)
        ids = tok(f"this sentence : {PST} \"a\"", add_special_tokens=False)["input_ids"]
    except Exception as e:  # tokenizers without added-token support raise their own types
        raise ValueError(f"the tokenizer cannot take the {PST} token that token prepending needs: {e}") from e
    if pst is None or ids.count(pst) != 1:
        raise ValueError(f"the tokenizer does not read {PST} as one token (got ids {ids}); token prepending needs it")
    return tok, int(pst)


def saved_embedding(model: str | Path) -> dict:
    """``{"prompt", "pooling", "layer"}`` of a decoder trained as a sentence encoder (its export
    directory's ``embedding.json``), or ``{}``: the defaults ``jaxalign embed`` and ``eval sts``
    take for it, so a trained model embeds as it was trained."""
    path = Path(model).expanduser() / EMBEDDING_CONFIG
    return json.loads(path.read_text()) if path.is_file() else {}


def absolute_layer(layer: int, depth: int) -> int:
    """``transformers``' ``hidden_states`` index (0 embeddings, i the raw output of layer i, ``depth``
    the final-normed output; negative from the end) as 0..depth."""
    n = layer if layer >= 0 else depth + 1 + layer
    if not 0 <= n <= depth:
        raise ValueError(f"output layer {layer} is outside the model's depth: choose 0..{depth} or -{depth + 1}..-1 "
                         f"({depth} layers; -1 is the final-normed output, -2 the raw output of layer {depth - 1})")
    return n


def prompt_encode_fn(decoder: Decoder, pooling: PoolingConfig, output_layer: int,
                     prepend: TokenPrepending | None) -> Callable:
    """Pure ``(params, input_ids, attention_mask, token_type_ids) -> [B, H]`` float32 embeddings:
    the ``pooling.mode`` pooling of the layer-``output_layer`` states."""
    flat = dataclasses.replace(pooling, layer=-1, normalize=False, truncate_dim=None)

    def f(params, input_ids, attention_mask, token_type_ids):
        h = decoder.hidden(params, input_ids, attention_mask, output_layer=output_layer, prepend=prepend)
        return pool((h,), attention_mask, flat)

    return f


@dataclasses.dataclass(frozen=True)
class PromptEncoder:
    """A decoder behind one prompt template, seen as a sentence encoder by the contrastive
    objectives (the ``Encoder`` interface: ``apply``, ``config``, ``params``, ``axes``,
    ``tokenizer``, ``pooling``, ``max_length``), as PromptEOL fine-tuning trains it (Jiang et
    al., 2023, arXiv 2307.16645: the prompt around each sentence, the last token's state).

    Texts reach it already rendered (:meth:`render`); ``apply`` returns the states of layer
    ``output_layer`` (0..L, ``transformers``' ``hidden_states`` index, L the final-normed output)
    as ``last_hidden_state``, so a pooling of layer -1 pools that layer. A decoder has no
    dropout of its own: ``embedding_dropout`` > 0 drops input-embedding entries when a dropout
    key is given, the noise unsupervised SimCSE's two views need.
    """

    decoder: Decoder
    template: str
    output_layer: int
    pooling: PoolingConfig
    embedding_dropout: float = 0.0

    @classmethod
    def build(cls, decoder: Decoder, prompt: str, pooling: PoolingConfig, *, embedding_dropout: float = 0.0
              ) -> "PromptEncoder":
        templates = prompt_templates(prompt, token_prepending=False)
        if len(templates) > 1:
            raise ValueError(f"prompt {prompt!r} averages {len(templates)} prompts' embeddings; training takes one "
                             f"template: choose {', '.join(k for k, v in PROMPTS.items() if len(v) == 1)} or a template")
        if pooling.mode not in POOLING_MODES:
            raise ValueError(f"decoder pooling {pooling.mode!r}: choose {' or '.join(POOLING_MODES)}")
        layer = absolute_layer(pooling.layer, decoder.config.num_hidden_layers)
        return cls(decoder, templates[0], layer, dataclasses.replace(pooling, layer=-1), embedding_dropout)

    @property
    def config(self):
        return self.decoder.config

    @property
    def params(self) -> dict:
        return self.decoder.params

    @property
    def axes(self) -> dict:
        return self.decoder.axes

    @property
    def tokenizer(self):
        return self.decoder.tokenizer

    @property
    def max_length(self) -> int:
        return self.decoder.max_length

    @property
    def transformers_layer(self) -> int:
        """:attr:`output_layer` as a pooling layer index for :class:`PromptEmbedder`."""
        depth = self.decoder.config.num_hidden_layers
        return -1 if self.output_layer == depth else self.output_layer

    def render(self, sentence: str) -> str:
        return render(self.template, sentence)

    def apply(self, params: dict, input_ids: jax.Array, attention_mask: jax.Array, token_type_ids=None, *,
              dropout_rng: jax.Array | None = None, output_hidden_states: bool = False) -> EncoderOutput:
        if output_hidden_states:
            raise ValueError("a decoder sentence encoder gives one layer's states; poolings over several layers "
                             "and objective.name=2dmse are for encoders")
        embeds = None
        if dropout_rng is not None and self.embedding_dropout > 0:
            table = params["embed"]["embedding"]
            x = jnp.take(table, input_ids, axis=0)
            embeds = dropout(x, self.embedding_dropout, dropout_rng)
        h = self.decoder.hidden(params, input_ids, attention_mask, output_layer=self.output_layer, inputs_embeds=embeds)
        return EncoderOutput(h, None, None)

    def embedder(self, *, batch_size: int, max_length: int | None = None, mesh: Mesh | None = None) -> "PromptEmbedder":
        """The :class:`PromptEmbedder` that embeds as this encoder trains (unnormalised)."""
        pooling = dataclasses.replace(self.pooling, layer=self.transformers_layer, normalize=False, truncate_dim=None)
        return PromptEmbedder(self.decoder, self.template, pooling, batch_size=batch_size, max_length=max_length,
                              mesh=mesh)


class PromptEmbedder:
    """Embeds sentences with a decoder and prompts; called like :class:`Embedder`
    (``embedder(sentences, params=...) -> [N, H]``), so every evaluator takes it.

    ``pooling.mode`` is ``last`` or ``mean``; ``pooling.layer`` indexes ``transformers``'
    ``hidden_states`` (see :func:`absolute_layer`); normalisation and truncation apply to the
    average over the prompts' embeddings. ``token_prepending``: ``(tp_start, tp_exit)``, or None;
    the ``<PST>`` input embedding is zeros.
    """

    default_pooling = DEFAULT_POOLING

    def __init__(
        self,
        decoder: Decoder,
        prompt: str = "prompteol",
        pooling: PoolingConfig | None = None,
        *,
        token_prepending: tuple[int, int] | None = None,
        batch_size: int = 64,
        max_length: int | None = None,
        mesh: Mesh | None = None,
        buckets: Sequence[int] = DEFAULT_BUCKETS,
    ):
        self.pooling = pooling or DEFAULT_POOLING
        if self.pooling.mode not in POOLING_MODES:
            raise ValueError(f"decoder pooling {self.pooling.mode!r}: choose {' or '.join(POOLING_MODES)}")
        self.templates = prompt_templates(prompt, token_prepending is not None)
        output_layer = absolute_layer(self.pooling.layer, decoder.config.num_hidden_layers)
        prepend = None
        if token_prepending is not None:
            tokenizer, pst = with_pst_token(decoder.tokenizer)
            decoder = dataclasses.replace(decoder, tokenizer=tokenizer)
            prepend = TokenPrepending(pst, *token_prepending, jnp.zeros((decoder.config.hidden_size,), decoder.dtype))
        self.encoder = decoder
        self.settings = {"prompt": prompt, "token_prepending": token_prepending}
        self.embedder = Embedder(decoder, self.pooling, batch_size=batch_size, max_length=max_length, mesh=mesh,
                                 buckets=buckets, encode=prompt_encode_fn(decoder, self.pooling, output_layer, prepend),
                                 padding_side="left")
        self.max_length = self.embedder.max_length

    def __call__(self, sentences: Sequence[str], *, params=None, progress: bool = False, desc: str = "embedding") -> np.ndarray:
        """[len(sentences), H] float32: the mean over the prompts of each prompt's embedding."""
        per_prompt = [self.embedder([render(t, s) for s in sentences], params=params, progress=progress, desc=desc)
                      for t in self.templates]
        mean = np.mean(per_prompt, axis=0, dtype=np.float32)
        return np.asarray(matryoshka(mean, self.pooling.truncate_dim, self.pooling.normalize), np.float32)


__all__ = ["DEFAULT_POOLING", "EMBEDDING_CONFIG", "PROMPTS", "PST", "SENTENCE", "TP_DEFAULTS", "PromptEmbedder", "PromptEncoder", "absolute_layer", "preprocess",
           "prompt_encode_fn", "prompt_templates", "render", "saved_embedding", "with_pst_token"]
