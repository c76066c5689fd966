"""Attention kernels: forward + backward time and compiled temporary memory, einsum reference vs the others.

What: for every sequence length in ``--lengths``, the median time of one jitted forward +
backward of ``jaxalign.ops.attention.attention`` (the gradient of a weighted sum of the output
with respect to q, k and v) for each kernel in ``--implementations``, on a causal, right-padded
batch (the decoder's mask kind: row ``i`` of ``--batch`` keeps ``T - i * T / (4 * batch)``
real tokens), grouped-query heads ``--heads`` / ``--kv-heads`` of dim ``--head-dim``. Beside
each time, the temporary buffers XLA's compiled program allocates
(``compiled.memory_analysis().temp_size_in_bytes``), where the reference's ``[B, K, G, T, S]``
float32 scores and probabilities show. Then, unless ``--model-layers 0``, the same for a whole
decoder's loss gradient (a SmolLM2-135M-shaped Llama with ``--model-layers`` layers and random
weights, ``--model-batch`` rows of ``--model-length`` tokens, the gradient of the sum of the
final hidden states over real tokens with respect to every parameter), built with each kernel:
how much of a training step attention is.

Timing: each kernel compiles and runs once untimed, then ``--repeats`` calls interleaved across
kernels (the order reversing every round, ``jaxalign.benchmarking.interleave``), so that load
from other jobs falls on all alike; the median and the minimum are reported with the ratios
einsum / kernel (on shared cores the minimum is the steadier of the two).
Before timing, every kernel's loss and gradients must match the reference's to ``PARITY``
(relative to each array's largest entry), or the run exits with status 1; the loss weighs real
tokens only, so kernels that attend among padding (cudnn, splash) compare alike.

Default kernels: einsum and xla, plus cudnn on GPU (give ``--dtype bfloat16``) and splash on
TPU. Results: a table on stdout and JSON (``--json``), with the machine.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from jaxalign.benchmarking import check_counts, compiled_memory, interleave, machine_info, peak_memory

PARITY = {"float32": 1e-5, "bfloat16": 2e-2}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                epilog="See benchmarks/README.md (section 'Attention kernels') for results.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--lengths", type=int, nargs="+", default=[256, 512, 1024, 2048, 4096],
                   help="sequence lengths T (= S)")
    p.add_argument("--batch", type=int, default=1, help="rows per call")
    p.add_argument("--heads", type=int, default=8, help="query heads N")
    p.add_argument("--kv-heads", type=int, default=2, help="key/value heads K (N / K queries share one)")
    p.add_argument("--head-dim", type=int, default=64, help="head dim D")
    p.add_argument("--dtype", choices=sorted(PARITY), default="float32", help="q, k, v dtype")
    p.add_argument("--implementations", nargs="+", default=None,
                   help="kernels to time (einsum is always the reference); default: einsum xla and the backend's fused one")
    p.add_argument("--repeats", type=int, default=3, help="timed calls per kernel and length (interleaved; median)")
    p.add_argument("--model-layers", type=int, default=2,
                   help="layers of the SmolLM2-135M-shaped decoder whose loss gradient is timed; 0: skip it")
    p.add_argument("--model-batch", type=int, default=2, help="rows of the decoder's batch")
    p.add_argument("--model-length", type=int, default=1024, help="tokens per row of the decoder's batch")
    p.add_argument("--json", type=Path, default=REPO / "benchmarks" / "results" / "attention.json",
                   help="where to write the results as JSON")
    args = p.parse_args(argv)
    check_counts(p, args, ["batch", "heads", "kv_heads", "head_dim", "repeats", "model_batch", "model_length"])
    if args.heads % args.kv_heads:
        p.error(f"--heads {args.heads} is not a multiple of --kv-heads {args.kv_heads}")
    if min(args.lengths) < 4 * args.batch:
        p.error(f"--lengths must be >= 4 x --batch ({4 * args.batch}) for the padding pattern")
    if args.model_layers < 0:
        p.error(f"--model-layers must be >= 0, got {args.model_layers}")
    return args


def right_padded(batch: int, length: int):
    """[B, T] int32 mask: row i keeps ``T - i * T / (4 B)`` tokens (the first row is full)."""
    import jax.numpy as jnp

    keep = [length - i * length // (4 * batch) for i in range(batch)]
    return (jnp.arange(length)[None] < jnp.asarray(keep)[:, None]).astype(jnp.int32)


def attention_case(args, length: int, kernels: list[str]) -> dict:
    """Times, temporary bytes and parity of every kernel at one sequence length."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from jaxalign.ops.attention import AttentionMask, attention

    dtype = jnp.dtype(args.dtype)
    rng = np.random.default_rng(length)
    b, n, k, d = args.batch, args.heads, args.kv_heads, args.head_dim
    q, kk, v = (jnp.asarray(rng.standard_normal(shape), dtype)
                for shape in ((b, length, n, d), (b, length, k, d), (b, length, k, d)))
    key_mask = right_padded(b, length)
    weights = jnp.asarray(rng.standard_normal(q.shape), dtype) * key_mask[:, :, None, None].astype(dtype)
    mask = AttentionMask(key_mask=key_mask, causal=True)

    def step(kernel, q, kk, v, weights):
        f = lambda q, kk, v: jnp.sum((attention(q, kk, v, mask, implementation=kernel) * weights).astype(jnp.float32))
        return jax.value_and_grad(f, argnums=(0, 1, 2))(q, kk, v)

    inputs = (q, kk, v, weights)
    compiled = {name: jax.jit(functools.partial(step, name)).lower(*inputs).compile() for name in kernels}
    results = {name: jax.block_until_ready(fn(*inputs)) for name, fn in compiled.items()}
    parity = {name: max_rel_diff(results[name], results["einsum"]) for name in kernels}
    times = interleave({name: functools.partial(lambda fn: jax.block_until_ready(fn(*inputs)), fn)
                        for name, fn in compiled.items()}, args.repeats)
    return {"length": length, "times_s": times, "parity": parity,
            "temp_bytes": {name: fn.memory_analysis().temp_size_in_bytes for name, fn in compiled.items()},
            "memory": {name: compiled_memory(fn) for name, fn in compiled.items()}}


def max_rel_diff(a, b) -> float:
    """Largest |a - b| over the leaves, relative to each leaf's largest |b|."""
    import jax
    import numpy as np

    return max(float(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64)).max() /
                     max(np.abs(np.asarray(y, np.float64)).max(), 1e-30))
               for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


def model_case(args, kernels: list[str]) -> dict:
    """Times and parity of a SmolLM2-135M-shaped decoder's loss gradient, built with each kernel."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    from jaxalign.models.llama.config import LlamaConfig
    from jaxalign.models.llama.model import LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=args.model_layers,
                      num_attention_heads=9, num_key_value_heads=3, head_dim=64, tie_word_embeddings=True)
    dtype = jnp.dtype(args.dtype)
    ids = jnp.asarray(np.random.default_rng(0).integers(0, cfg.vocab_size, (args.model_batch, args.model_length)),
                      jnp.int32)
    mask = right_padded(args.model_batch, args.model_length)
    models = {name: nnx.split(LlamaForCausalLM(cfg, dtype=dtype, attention=name, rngs=nnx.Rngs(0))) for name in kernels}
    state = models["einsum"][1]

    def step(graphdef, state):
        def loss(state):
            hidden, _ = nnx.merge(graphdef, state)(ids, mask)
            return jnp.sum((hidden * mask[..., None]).astype(jnp.float32))
        return jax.value_and_grad(loss)(state)

    compiled = {name: jax.jit(functools.partial(step, graphdef)).lower(state).compile()
                for name, (graphdef, _) in models.items()}
    results = {name: jax.block_until_ready(fn(state)) for name, fn in compiled.items()}
    parity = {name: max_rel_diff(results[name], results["einsum"]) for name in kernels}
    times = interleave({name: functools.partial(lambda fn: jax.block_until_ready(fn(state)), fn)
                        for name, fn in compiled.items()}, args.repeats)
    return {"layers": args.model_layers, "batch": args.model_batch, "length": args.model_length, "times_s": times,
            "parity": parity, "temp_bytes": {name: fn.memory_analysis().temp_size_in_bytes for name, fn in compiled.items()}}


def table(title: str, rows: list[dict], kernels: list[str], label: str):
    import statistics

    from rich.table import Table

    out = Table(title=title)
    out.add_column(label, justify="right")
    for name in kernels:
        out.add_column(f"{name} ms median (min)", justify="right")
        if name != "einsum":
            out.add_column(f"einsum / {name} median (min)", justify="right")
        out.add_column(f"{name} temp MiB", justify="right")
    out.add_column("max rel. diff vs einsum", justify="right")
    for row in rows:
        cells = [str(row[label])]
        ref = row["times_s"]["einsum"]
        for name in kernels:
            t = row["times_s"][name]
            cells.append(f"{statistics.median(t) * 1e3:.1f} ({min(t) * 1e3:.1f})")
            if name != "einsum":
                cells.append(f"{statistics.median(ref) / statistics.median(t):.2f}x ({min(ref) / min(t):.2f}x)")
            cells.append(f"{row['temp_bytes'][name] / 2**20:.0f}")
        cells.append(f"{max(row['parity'].values()):.1e}")
        out.add_row(*cells)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)

    import os
    import statistics

    import jax
    from rich.console import Console

    from jaxalign.ops.attention import BACKEND_KERNELS, check_available

    console = Console() if sys.stdout.isatty() else Console(width=200)
    backend = jax.default_backend()
    kernels = args.implementations or ["einsum", "xla", *([BACKEND_KERNELS[backend]] if backend in BACKEND_KERNELS else [])]
    kernels = ["einsum", *[name for name in kernels if name != "einsum"]]
    for name in kernels:
        check_available(name)
    info = machine_info()
    rows = []
    for length in args.lengths:
        console.print(f"T={length} ...")
        rows.append(attention_case(args, length, kernels))
    model = None
    if args.model_layers:
        console.print(f"decoder, {args.model_layers} layers, {args.model_batch} x {args.model_length} tokens ...")
        model = model_case(args, kernels)
    info["load_average_after"] = os.getloadavg()

    shape = f"B={args.batch}, N={args.heads}, K={args.kv_heads}, D={args.head_dim}, {args.dtype}, causal + right padding"
    console.print(table(f"attention forward + backward, median of {args.repeats} ({shape}); {backend}, "
                        f"{info['cpu_count']} cores", rows, kernels, "length"))
    if model is not None:
        console.print(table(f"SmolLM2-135M-shaped decoder ({args.dtype}), loss gradient, median of {args.repeats}",
                            [{**model, "layers x batch x length": f"{model['layers']} x {model['batch']} x "
                                                                  f"{model['length']}"}],
                            kernels, "layers x batch x length"))
    tol = PARITY[args.dtype]
    failed = [(row.get("length", "decoder"), name, diff) for row in [*rows, *([model] if model else [])]
              for name, diff in row["parity"].items() if diff > tol]
    results = {"benchmark": "attention", "machine": info, "args": {k: str(v) if isinstance(v, Path) else v
                                                                      for k, v in vars(args).items()},
               "kernels": kernels, "rows": rows, "model": model,
               "medians_s": {str(row["length"]): {n: statistics.median(t) for n, t in row["times_s"].items()}
                             for row in rows},
               "memory": peak_memory()}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2) + "\n")
    load = info["load_average_1_5_15min"][0], info["load_average_after"][0]
    console.print(f"jax devices {', '.join(info['jax_devices'])}; 1-min load average {load[0]:.1f} before, "
                  f"{load[1]:.1f} after, on {info['cpu_count']} cores; results written to {args.json}")
    if failed:
        console.print(f"[red]parity failed (tolerance {tol}): {failed}[/red]")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
