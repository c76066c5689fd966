"""Peak memory of the DPO loss gradient against vocabulary size: chunked log-probs vs full logits.

What: XLA's compiled memory analysis (nothing is executed) of ``jax.grad`` of the sigmoid DPO
loss of a tiny model (tied embedding ``[V, H]``, one ``tanh`` dense layer) on ``--pairs`` x 2 x
``--length`` tokens, the reference log-probs given (precomputed), for each vocabulary size V,
with the completion log-probs computed two ways:

* ``chunked``: :func:`jaxalign.ops.logprobs.completion_logps` (``--chunk`` positions of
  ``[rows, chunk, V]`` logits at a time, rematerialised in the backward pass);
* ``full``: the whole ``[rows, T, V]`` logits and their ``log_softmax``, as TRL and Tunix do.

Why: at a large vocabulary the logits, not the weights, set the memory of a preference step; the
chunked path should grow with V only through the weights (and one chunk), the full one with
``rows * T * V`` floats. ``peak_bytes`` = arguments + outputs + temporaries - aliased.

    python benchmarks/vocab_memory.py --vocab 8192 32768 131072 262144
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from jaxalign.benchmarking import (
    check_counts,
    compiled_memory,
    machine_info,
    peak_memory,
)

WAYS = ("chunked", "full")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--vocab", type=int, nargs="+", default=[8192, 16384, 32768, 65536, 131072, 262144],
                   help="vocabulary sizes V")
    p.add_argument("--pairs", type=int, default=4, help="preference pairs (2 rows each)")
    p.add_argument("--length", type=int, default=512, help="tokens per row")
    p.add_argument("--hidden", type=int, default=64, help="the tiny model's width H")
    p.add_argument("--chunk", type=int, default=64, help="positions per LM-head chunk of the chunked path")
    p.add_argument("--json", type=Path, default=REPO / "benchmarks" / "results" / "vocab_memory.json")
    args = p.parse_args(argv)
    check_counts(p, args, ["pairs", "length", "hidden", "chunk"])
    if min(args.vocab) < 2:
        p.error("--vocab sizes must be >= 2")
    return args


def dpo_grad(way: str, chunk: int):
    """``grad(params, ids [B, 2, T], loss_mask [B, 2, T], ref_logps [B, 2])`` of the DPO loss."""
    import jax
    import jax.numpy as jnp

    from jaxalign.losses.dpo import sigmoid_loss
    from jaxalign.ops.logprobs import completion_logps

    def logps(hidden, unembed, ids, mask):
        if way == "chunked":
            return completion_logps(hidden, unembed, ids, mask, chunk=chunk).summed
        logits = jnp.einsum("nth,hv->ntv", hidden[:, :-1], unembed, preferred_element_type=jnp.float32)
        picked = jnp.take_along_axis(jax.nn.log_softmax(logits, -1), ids[:, 1:, None], -1)[..., 0]
        return (picked * mask[:, 1:]).sum(-1)

    def loss(params, ids, mask, ref):
        b, c, t = ids.shape
        flat_ids, flat_mask = ids.reshape(b * c, t), mask.reshape(b * c, t).astype(jnp.float32)
        hidden = jnp.tanh(params["embed"][flat_ids] @ params["dense"])
        scores = logps(hidden, params["embed"].T, flat_ids, flat_mask).reshape(b, c) - ref
        return sigmoid_loss(scores[:, 0], scores[:, 1], beta=0.1).mean()

    return jax.jit(jax.grad(loss))


def measure(v: int, args) -> dict:
    import jax
    import jax.numpy as jnp

    shape = lambda s, dtype=jnp.float32: jax.ShapeDtypeStruct(s, dtype)
    params = {"embed": shape((v, args.hidden)), "dense": shape((args.hidden, args.hidden))}
    inputs = (params, shape((args.pairs, 2, args.length), jnp.int32), shape((args.pairs, 2, args.length), jnp.int32),
              shape((args.pairs, 2)))
    row = {"vocab": v, "weights_bytes": 4 * (v + args.hidden) * args.hidden,
           "logits_bytes": 4 * 2 * args.pairs * (args.length - 1) * v}
    for way in WAYS:
        row[way] = compiled_memory(dpo_grad(way, args.chunk).lower(*inputs).compile())
    return row


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    from rich.console import Console
    from rich.table import Table

    rows = [measure(v, args) for v in args.vocab]
    gib = lambda b: f"{b / 2**30:.3f}"
    table = Table(title=f"DPO loss gradient, compiled peak memory (GiB): {args.pairs} pairs x 2 x {args.length} tokens, "
                        f"H={args.hidden}, chunk {args.chunk}")
    for col in ("V", "weights", "[rows, T, V] logits", "chunked", "full", "full / chunked"):
        table.add_column(col, justify="right")
    for r in rows:
        c, f = r["chunked"].get("peak_bytes"), r["full"].get("peak_bytes")
        table.add_row(str(r["vocab"]), gib(r["weights_bytes"]), gib(r["logits_bytes"]),
                      *(gib(x) if x else "n/a" for x in (c, f)), f"{f / c:.1f}x" if c and f else "n/a")
    Console(width=200).print(table)
    results = {"benchmark": "vocab_memory", "machine": machine_info(), "pairs": args.pairs, "length": args.length,
               "hidden": args.hidden, "chunk": args.chunk, "ways": list(WAYS), "rows": rows, "memory": peak_memory()}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2) + "\n")
    print(f"results written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
