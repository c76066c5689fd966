"""Self-generated completions for preference data: D²O's ``samples``, ADPA's student responses.

D²O trains on a dispreferred completion and ``K`` samples the model itself generates for
the same prompt. :func:`write_self_samples` reads preference records (any format
:func:`~jaxalign.data.preference.load_preference` reads; a paired row's ``chosen`` is
unused), renders and truncates each prompt exactly as training will
(:func:`~jaxalign.data.preference.tokens.tokenize_preference` with the same settings), samples ``K``
continuations per prompt with :func:`~jaxalign.inference.generate.generate`, and writes a
jsonl file of ``{"prompt", "rejected", "samples"}`` records that ``data.kind=negatives``
reads back, and ``data.kind=sft`` too (each sample a record of its own). In a multi-process
run the prompts are shared out between the processes and the file is written once.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import jax
from tqdm.auto import tqdm

from jaxalign.data.preference import load_preference
from jaxalign.data.preference.tokens import tokenize_preference
from jaxalign.distributed import gather, is_main
from jaxalign.inference.generate import generate
from jaxalign.models.decoders import Decoder


def write_self_samples(
    decoder: Decoder,
    data: str,
    output: str | Path,
    *,
    num_samples: int,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int = 0,
    stop_token_ids=None,
    seed: int = 0,
    max_examples: int | None = None,
    skip_examples: int = 0,
    max_prompt_length: int | None = None,
    chat_template: str | None = None,
    batch_size: int = 32,
) -> int:
    """Writes ``output`` (jsonl) with ``num_samples`` samples per record; returns the number of
    records written (records dropped by tokenisation, e.g. empty completions, are left out).
    Sampling settings are :func:`~jaxalign.inference.generate.generate`'s; a sample that stops
    at once is empty, and training drops its record (counted as ``empty completion``)."""
    if num_samples < 1:
        raise ValueError(f"num_samples={num_samples}: must be >= 1")
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size}: must be >= 1")
    records = load_preference(data, "negatives", max_examples, skip_examples)
    # max_length only bounds prompt + completion; generation checks the model's own limit.
    tokens = tokenize_preference(decoder.tokenizer, records, max_length=decoder.max_length,
                                 max_prompt_length=max_prompt_length, chat_template=chat_template, num_samples=0)
    output = Path(output)
    prompts_per_call = max(1, batch_size // num_samples)
    examples = tokens.examples
    starts = range(0, len(examples), prompts_per_call)

    def lines(start: int) -> list[str]:
        chunk = examples[start:start + prompts_per_call]
        prompts = [ex.prompt.tolist() for ex in chunk for _ in range(num_samples)]
        out = generate(decoder, None, prompts, max_new_tokens=max_new_tokens, temperature=temperature,
                       top_p=top_p, top_k=top_k, stop_token_ids=stop_token_ids, seed=seed + start)
        rows = []
        for i, ex in enumerate(chunk):
            record = records[ex.index]
            texts = out.texts[i * num_samples:(i + 1) * num_samples]
            samples = [[{"role": "assistant", "content": t}] for t in texts] if record.conversational else texts
            rows.append(json.dumps({"prompt": record.prompt, "rejected": record.rejected, "samples": samples},
                                   ensure_ascii=False))
        return rows

    # Each process samples every P-th chunk (seeded by the chunk's start, so the samples are the
    # one-process run's); process 0 gathers each round's chunks and writes them in order.
    procs, me = jax.process_count(), jax.process_index()
    tmp = output.with_suffix(output.suffix + ".tmp")
    if is_main():
        output.parent.mkdir(parents=True, exist_ok=True)
    with open(tmp if is_main() else os.devnull, "w", encoding="utf-8") as f:
        rounds = range(0, len(starts), procs)
        for r in tqdm(rounds, desc="self-samples", unit="round", disable=not is_main()):
            mine = lines(starts[r + me]) if r + me < len(starts) else []
            for chunk in gather("self-samples", json.dumps(mine)):
                f.writelines(line + "\n" for line in json.loads(chunk))
    if not is_main():
        return len(examples)
    tmp.replace(output)  # atomic: a killed run leaves no half-written data set
    return len(examples)
