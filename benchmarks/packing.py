"""Padding, padding-free packing and packing with a shared prompt: the DPO step on real HH-RLHF lengths.

What: the jitted DPO step (loss and gradient of the policy, the frozen reference's forward in
the step) of SmolLM2-135M-Instruct cut to ``--layers`` layers, on ``--batches`` global batches of
``--pairs`` pairs drawn (seeded) from HH-RLHF ``helpful-base`` test (``$JAXALIGN_DATA/hh-rlhf/``),
tokenised as training tokenises them (``--max-length``, ``--max-prompt-length``), in each of
``data.packing``'s three modes on the same batches:

* ``none``: every column padded to the batch's length bucket, ``[pairs, 2, T]``;
* ``padding_free``: the ``2 x pairs`` sequences packed into ``--rows`` rows;
* ``shared_prompt``: each pair as ``[prompt, chosen, rejected]`` in ``--rows`` rows.

Reported per mode: tokens/s, counting only real tokens (each sequence's prompt + completion, the
prompt once per column, as the padded step sees them), so every mode is credited with the same
tokens per batch; MFU, the real tokens' matmul FLOPs (those of ``benchmarks/dpo_step.py``'s
formula applied to each real sequence: policy ``6 N_mm n + 12 L n^2 H_q``, reference ``2 N_mm n +
4 L n^2 H_q``) over time x the measured matmul peak of this machine; and real tokens / computed
positions (``B x 2 x T`` padded, ``R x L`` packed). The shared prompt computes fewer FLOPs than
it is credited with (each prompt once), so its MFU is an effective one (above 100 % when the
prompts are long); ``MFU computed`` counts instead the FLOPs of every computed position, each row
of ``L`` positions costed as one sequence of ``L`` tokens (the dense attention the kernels run).

Before timing, each mode's mean chosen and rejected log-probs on every batch must equal the
padded step's to 1e-5 (relative), or the script exits with status 1 (the loss itself is ln 2 up
to float32 noise here: the reference is the policy's own weights). Every shape compiles once, untimed (compiles are counted); then
``--repeats`` rounds over the batches, the three modes interleaved in an order reversing every
round (``jaxalign.benchmarking.interleave``), so that load from other jobs falls on all alike.
The load average is recorded before and after. Results: a table on stdout and JSON (``--json``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from jaxalign.benchmarking import check_counts, interleave, machine_info, matmul_peak

MODES = ("none", "padding_free", "shared_prompt")
DATA = Path(os.environ.get("JAXALIGN_DATA", REPO.parent / "shared" / "data"))


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                epilog="See benchmarks/README.md (section 'Packing') for results.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data", default=str(DATA / "hh-rlhf" / "helpful-base" / "test.jsonl.gz"),
                   help="HH-RLHF preference pairs (JSON lines, gzipped)")
    p.add_argument("--layers", type=int, default=2, help="SmolLM2-135M-Instruct layers kept")
    p.add_argument("--pairs", type=int, default=4, help="pairs per batch")
    p.add_argument("--rows", type=int, default=2, help="packed rows per batch (data.packed_rows)")
    p.add_argument("--batches", type=int, default=3, help="batches drawn from the data (the same for every mode)")
    p.add_argument("--repeats", type=int, default=2, help="timed rounds over the batches")
    p.add_argument("--max-length", type=int, default=512, help="model.max_length")
    p.add_argument("--max-prompt-length", type=int, default=256, help="data.max_prompt_length")
    p.add_argument("--buckets", type=int, nargs="+", default=[64, 128, 256, 512], help="data.buckets")
    p.add_argument("--chunk", type=int, default=128, help="objective.logps_chunk")
    p.add_argument("--peak-size", type=int, default=1024, help="side of the float32 matmul timed for the peak")
    p.add_argument("--seed", type=int, default=0, help="which batches are drawn")
    p.add_argument("--json", default=str(REPO / "benchmarks" / "results" / "packing.json"), help="results file")
    args = p.parse_args(argv)
    check_counts(p, args, ("layers", "pairs", "rows", "batches", "repeats", "max_length", "max_prompt_length",
                           "chunk", "peak_size"))
    return args


def sequence_flops(cfg, n: int) -> tuple[float, float]:
    """Matmul FLOPs of one real sequence of ``n`` tokens: (policy forward + backward, reference forward)."""
    L, H, I, V = cfg.num_hidden_layers, cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size
    Q, K = cfg.num_attention_heads * cfg.head_dim, cfg.num_key_value_heads * cfg.head_dim
    n_mm = L * (2 * H * Q + 2 * H * K + 3 * H * I) + H * V
    attn = 4 * L * n * n * Q
    return 6 * n_mm * n + 3 * attn, 2 * n_mm * n + attn


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    import jax
    import numpy as np

    from jaxalign.config import objectives
    from jaxalign.data.preference import load_preference
    from jaxalign.data.preference.collate import collate_preference
    from jaxalign.data.preference.packing import pack_preference
    from jaxalign.data.preference.tokens import tokenize_preference
    from jaxalign.models.decoders import load_decoder
    from jaxalign.objectives.preference import PreferenceObjective

    load_before = os.getloadavg()
    decoder = load_decoder("SmolLM2-135M-Instruct", num_layers=args.layers)
    tokens = tokenize_preference(decoder.tokenizer, load_preference(args.data, "paired"), max_length=args.max_length,
                                 max_prompt_length=args.max_prompt_length)
    rng = np.random.default_rng(args.seed)
    picks = [rng.choice(len(tokens), args.pairs, replace=False) for _ in range(args.batches)]
    draws = [[tokens.examples[i] for i in pick] for pick in picks]

    def build(mode, exs):
        if mode == "none":
            return collate_preference(exs, buckets=args.buckets, max_length=args.max_length, pad_id=tokens.pad_id)
        return pack_preference(exs, packing=mode, rows=args.rows, max_length=args.max_length, buckets=args.buckets,
                               pad_id=tokens.pad_id)

    batches = {mode: [build(mode, exs) for exs in draws] for mode in MODES}
    objective = PreferenceObjective(objectives.DPO(logps_chunk=args.chunk), decoder)
    params, frozen = {"policy": decoder.params}, {"reference": jax.tree.map(lambda x: x + 0, decoder.params)}
    key = jax.random.PRNGKey(0)
    step = jax.jit(jax.value_and_grad(lambda p, b, f: objective.loss(p, b, key, f), has_aux=True))
    run = lambda b: jax.block_until_ready(step(params, b, frozen))  # noqa: E731

    real = [int(b["attention_mask"].sum()) for b in batches["none"]]
    lengths = [[len(ex.prompt) + len(c) for ex in exs for c in ex.completions] for exs in draws]
    flops = [[sum(sequence_flops(decoder.config, n)[i] for n in ns) for i in (0, 1)] for ns in lengths]
    first = {mode: [run(b)[0] for b in bs] for mode, bs in batches.items()}  # compiles every shape
    losses = {mode: [float(loss) for loss, _ in out] for mode, out in first.items()}
    for mode in MODES[1:]:
        for (_, got), (_, want) in zip(first[mode], first["none"]):
            for key in ("logps/chosen", "logps/rejected"):
                if abs(float(got[key]) - float(want[key])) > 1e-5 * abs(float(want[key])):
                    print(f"{mode}: {key} {float(got[key])} != padded {float(want[key])}", file=sys.stderr)
                    return 1
    peak = matmul_peak(args.peak_size, 3)
    times = {mode: [0.0] * args.batches for mode in MODES}
    for i in range(args.batches):
        t = interleave({mode: (lambda b=batches[mode][i]: run(b)) for mode in MODES}, args.repeats)
        for mode in MODES:
            times[mode][i] = statistics.median(t[mode])
    load_after = os.getloadavg()

    results = {"machine": {**machine_info("flax", "torch"), "load_average_before": load_before,
                           "load_average_after": load_after},
               "settings": {k: v for k, v in vars(args).items()}, "matmul_peak": peak,
               "batches": [{"pairs": args.pairs, "sequence_lengths": ns} for ns in lengths],
               "flop_formula": "per real sequence of n tokens: policy 6*N_mm*n + 12*L*n^2*H_q, reference "
                               "2*N_mm*n + 4*L*n^2*H_q (benchmarks/dpo_step.py's, T -> n)",
               "modes": {}}
    total_time = {mode: sum(times[mode]) for mode in MODES}
    total_real, total_flops = sum(real), sum(f[0] + f[1] for f in flops)
    for mode in MODES:
        positions = [int(np.prod(b["input_ids"].shape)) for b in batches[mode]]
        computed = sum(math.prod(b["input_ids"].shape[:-1]) * sum(sequence_flops(decoder.config, b["input_ids"].shape[-1]))
                       for b in batches[mode])
        results["modes"][mode] = {
            "shapes": [list(b["input_ids"].shape) for b in batches[mode]],
            "compiles": len({tuple(b["input_ids"].shape) for b in batches[mode]}),
            "median_step_s": times[mode], "losses": losses[mode],
            "real_tokens": real, "computed_positions": positions,
            "real_per_computed": total_real / sum(positions),
            "tokens_per_s": total_real / total_time[mode],
            "mfu": total_flops / total_time[mode] / (peak["peak_gflops"] * 1e9),
            "computed_flops": computed, "mfu_computed": computed / total_time[mode] / (peak["peak_gflops"] * 1e9),
            "speedup_vs_padding": total_time["none"] / total_time[mode],
        }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(results, indent=2))

    print(f"DPO step, SmolLM2-135M-Instruct x {args.layers} layers, {args.batches} HH-RLHF batches of {args.pairs} "
          f"pairs, packed into {args.rows} rows; matmul peak {peak['peak_gflops']:.1f} GFLOP/s; load average "
          f"{load_before[0]:.1f} -> {load_after[0]:.1f}")
    print(f"{'mode':<15}{'shapes':<34}{'real/computed':>14}{'tokens/s':>10}{'MFU':>8}{'MFU computed':>14}"
          f"{'vs padding':>12}")
    for mode, m in results["modes"].items():
        shapes = " ".join("x".join(map(str, s)) for s in m["shapes"])
        print(f"{mode:<15}{shapes:<34}{m['real_per_computed']:>14.2f}{m['tokens_per_s']:>10.0f}"
              f"{100 * m['mfu']:>7.1f}%{100 * m['mfu_computed']:>13.1f}%{m['speedup_vs_padding']:>11.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
