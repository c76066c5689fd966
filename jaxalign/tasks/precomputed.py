"""Scores computed once before training, over the whole data set, and cached to disk.

Reference log-probs (``objective.reference=precomputed``, TRL's ``precompute_ref_log_probs``)
and PoFT's aligned-model scores are arrays with one row per *record* (NaN where a record has no
example), looked up by each example's record index when a batch is collated. Each is computed
collectively (every process scores its rows of each batch, :func:`score_examples`) and kept as
``<tag>-<hash>.npy`` in ``checkpoint.dir`` (else ``~/.cache/jaxalign``), keyed by everything it
depends on, so a resumed or repeated run reads it instead.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from collections.abc import Callable, Sequence

import jax
import numpy as np

from jaxalign import distributed
from jaxalign.config.run import TrainConfig, checkpoint_path
from jaxalign.data.preference.collate import PreferenceExample
from jaxalign.data.preference.records import PreferenceRecord
from jaxalign.data.preference.tokens import TokenizedPreference, tokenize_preference
from jaxalign.eval.preference import completion_lengths
from jaxalign.models.decoders import Decoder, load_decoder
from jaxalign.objectives.scoring import score_examples

log = logging.getLogger(__name__)


def cached(tag: str, key: tuple, tokens: TokenizedPreference, cache_dir: str | None,
           compute: Callable[[], np.ndarray]) -> np.ndarray:
    """``compute()``'s array, or the one cached under ``cache_dir`` for ``key`` and these token
    ids. Written atomically by process 0, so a killed run leaves no half-written file; read only
    if every process has it (computing is collective)."""
    h = hashlib.sha1(repr(key).encode())
    for ex in tokens.examples:
        h.update(ex.prompt.tobytes())
        for c in ex.completions:
            h.update(b"|" + c.tobytes())
    path = checkpoint_path(cache_dir or "~/.cache/jaxalign") / f"{tag}-{h.hexdigest()[:16]}.npy"
    if all(hit == "1" for hit in distributed.gather(f"cache {tag}", "1" if path.is_file() else "0")):
        log.info("%s from %s", tag, path)
        with path.open("rb") as f:
            return np.load(f)
    out = compute()
    if distributed.is_main():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npy")
        with tmp.open("wb") as f:
            np.save(f, out)
        tmp.rename(path)
    return out


def by_record(rows: np.ndarray, examples: Sequence[PreferenceExample], num_records: int) -> np.ndarray:
    """Rows of ``examples`` placed at their records' indices (NaN where a record has no example)."""
    out = np.full((num_records, rows.shape[1]), np.nan, np.float32)
    out[[ex.index for ex in examples]] = rows
    return out


def _score(cfg: TrainConfig, decoder: Decoder, params: dict, tokens: TokenizedPreference, mesh, desc: str):
    return score_examples(decoder, params, tokens, mesh=mesh, batch_size=cfg.data.batch_size,
                          buckets=cfg.data.buckets, chunk=cfg.objective.logps_chunk,
                          ld_alpha=getattr(cfg.objective, "ld_alpha", None), desc=desc)


def reference_logps(cfg: TrainConfig, decoder: Decoder, tokens: TokenizedPreference,
                    mesh: jax.sharding.Mesh) -> np.ndarray:
    """``[num_records, C]`` reference log-probs of every example (``objective.reference_model``,
    else the initial policy), once, cached."""
    obj = cfg.objective

    def compute():
        params = (load_decoder(obj.reference_model, mesh=mesh, dtype=decoder.dtype, num_layers=cfg.model.num_layers).params
                  if obj.reference_model else decoder.params)
        rows = _score(cfg, decoder, params, tokens, mesh, "reference log-probs")
        return by_record(rows, tokens.examples, max(ex.index for ex in tokens.examples) + 1)

    key = (obj.reference_model or cfg.model.name, cfg.model.num_layers, cfg.model.dtype, tokens.columns,
           getattr(obj, "ld_alpha", None))
    return cached("ref_logps", key, tokens, cfg.checkpoint.dir, compute)


def aligned_scores(cfg: TrainConfig, decoder: Decoder, tokens: TokenizedPreference, records: list[PreferenceRecord],
                   mesh: jax.sharding.Mesh) -> tuple[np.ndarray, TokenizedPreference]:
    """PoFT's ``[num_records, M]`` scores ``r_j = log p_j(y|x) / |y|_j``: each target under each
    of ``objective.aligned_models``, tokenised with that model's own tokenizer (same truncation
    settings), cached. Returns them with ``tokens`` less the examples an aligned model's
    tokenisation dropped (counted under ``drops``, and logged)."""
    settings = dict(max_length=cfg.model.max_length, max_prompt_length=cfg.data.max_prompt_length,
                    max_completion_length=cfg.data.max_completion_length, chat_template=cfg.data.chat_template,
                    long_prompts=cfg.data.long_prompts)
    num_records = len(records)

    def scores(name: str) -> np.ndarray:
        model = load_decoder(name, mesh=mesh, dtype=decoder.dtype)
        theirs = tokenize_preference(model.tokenizer, records, **settings)
        summed = _score(cfg, model, model.params, theirs, mesh, f"PoFT scores of {name}")
        return by_record(summed / np.maximum(completion_lengths(theirs.examples), 1), theirs.examples, num_records)

    columns = [cached("poft_scores", (name, cfg.model.dtype, sorted(settings.items())), tokens, cfg.checkpoint.dir,
                      lambda name=name: scores(name)) for name in cfg.objective.aligned_models]
    out = np.concatenate(columns, 1)
    scored = [ex for ex in tokens.examples if np.isfinite(out[ex.index]).all()]
    if not scored:
        raise ValueError("objective.aligned_models: no target survived every aligned model's tokenisation")
    if len(scored) < len(tokens.examples):
        dropped = len(tokens.examples) - len(scored)
        log.warning("PoFT: %d of %d examples dropped (an aligned model's tokenisation dropped them)", dropped,
                    len(tokens.examples))
        tokens = dataclasses.replace(tokens, examples=scored,
                                     drops={**tokens.drops, "unscored by an aligned model": dropped})
    return out, tokens

