"""The accelerator steps of ``benchmarks/gpu.sh``: the engine's real training step in bfloat16 on
one device, timed, with MFU against the chip's published dense bf16 peak.

* ``dpo``: DPO (sigmoid) on the ~1.24B Llama configuration (``dpo_step.py --config llama-1b``:
  Llama-3.2-1B's shape, random weights), ``--reference precomputed`` (log-probs scored once before
  training: the step is the policy's forward + backward) or ``model`` (the reference forward in
  the step); ``--pairs`` x 2 x ``--length`` tokens of ``builtin:prefs-mini`` bucketed to
  ``--length``.
* ``contrastive``: supervised SimCSE on a BERT-base-shaped encoder (768 wide, 12 layers, random
  weights, all-MiniLM-L6-v2's tokenizer), ``--batch`` triplets of ``--length`` tokens.
* ``table``: the table of every ``*.json`` this script wrote into a directory.

FLOPs are the matmul FLOPs of every position computed (padding included: the chip computes it),
by the formulas of ``dpo_step.py`` and ``train_step.py``; MFU = FLOPs / (median step s x peak).
``--tiny`` runs the same code paths at toy sizes in float32 (a CPU check of the script).

    python benchmarks/gpu_steps.py dpo --reference precomputed --json $OUT/dpo_precomputed.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from jaxalign.benchmarking import check_counts, machine_info, peak_memory

# Published dense (no sparsity) bf16 tensor-core peaks, FLOP/s, by a substring of device_kind.
BF16_PEAKS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "L4": 121e12, "B200": 2250e12}
TINY_LLAMA = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
              "num_key_value_heads": 2, "head_dim": 16, "vocab_size": 49152}
BERT_BASE = {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12}
TINY_BERT = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("part", choices=("dpo", "contrastive", "table"))
    p.add_argument("--reference", choices=("precomputed", "model"), default="precomputed", help="dpo: the reference")
    p.add_argument("--pairs", type=int, default=8, help="dpo: preference pairs per step")
    p.add_argument("--batch", type=int, default=128, help="contrastive: triplets per step")
    p.add_argument("--length", type=int, default=None, help="tokens per sequence (dpo 1024, contrastive 128)")
    p.add_argument("--steps", type=int, default=5, help="timed steps (median), after one compiling step")
    p.add_argument("--workdir", type=Path, default=Path("/tmp/jaxalign-gpu"), help="random checkpoints go here")
    p.add_argument("--tiny", action="store_true", help="toy sizes in float32: a CPU check of the code paths")
    p.add_argument("--dir", type=Path, default=None, help="table: the directory of the JSONs")
    p.add_argument("--json", type=Path, default=None, help="where the result goes")
    args = p.parse_args(argv)
    check_counts(p, args, ["pairs", "batch", "length", "steps"])
    if args.length is None:
        args.length = (32 if args.tiny else 1024) if args.part == "dpo" else (16 if args.tiny else 128)
    if args.part == "table" and args.dir is None:
        p.error("table needs --dir")
    return args


def chip_peak(device_kind: str) -> float | None:
    return next((peak for name, peak in BF16_PEAKS.items() if name.lower() in device_kind.lower()), None)


def random_bert(shape: dict, target: Path) -> Path:
    """all-MiniLM-L6-v2's tensors, tokenizer and pooling, every tensor random at ``shape``'s sizes."""
    import shutil

    import numpy as np
    from safetensors import safe_open
    from safetensors.numpy import save_file

    from jaxalign.models.registry import resolve_model_path

    if (target / "config.json").is_file():
        return target
    source = resolve_model_path("all-MiniLM-L6-v2")
    shutil.copytree(source, target, ignore=lambda d, names: [n for n in names if Path(d) == source
                                                             and n in ("model.safetensors", "config.json")])
    hf = {**json.loads((source / "config.json").read_text()), **shape}
    width = {384: shape["hidden_size"], 1536: shape["intermediate_size"]}
    rng = np.random.default_rng(0)
    tensors = {}
    with safe_open(str(source / "model.safetensors"), "np") as f:
        for key in f.keys():
            if ".layer." in key and int(key.split(".layer.")[1].split(".")[0]) > 0:
                continue
            dims = [width.get(d, d) for d in f.get_slice(key).get_shape()]
            for layer in range(shape["num_hidden_layers"]) if ".layer.0." in key else [None]:
                name = key if layer is None else key.replace(".layer.0.", f".layer.{layer}.")
                tensors[name] = (f.get_tensor(key) if key.endswith("position_ids") else
                                 (np.ones(dims, np.float32) if "LayerNorm.weight" in key else
                                  0.02 * rng.standard_normal(dims, dtype=np.float32)))
    save_file(tensors, str(target / "model.safetensors"))
    (target / "config.json").write_text(json.dumps(hf, indent=2))
    return target


def time_steps(run, steps: int) -> dict:
    """Compiles and runs the engine's step on one batch ``1 + steps`` times."""
    import jax

    with jax.set_mesh(run.mesh):
        state, step = run.init_state(), run.step_fn()
        batch = run.next_batch(0)
        times = []
        for i in range(steps + 1):
            start = time.perf_counter()
            state, metrics = step(state, batch, run.task.frozen)
            jax.block_until_ready((state, metrics))
            times.append(time.perf_counter() - start)
            if i == 0:
                memory = peak_memory(step=(step, (state, batch, run.task.frozen)))
    return {"first_step_s": times[0], "times_s": times[1:], "median_step_s": statistics.median(times[1:]),
            "loss": float(metrics["loss"]), "memory": memory, "batch_shape": list(batch["input_ids"].shape)}


def build(overrides: list[str]):
    import jax

    from jaxalign.config import load_recipe
    from jaxalign.config.run import TrainConfig
    from jaxalign.training.trainer import Run

    return Run.build(load_recipe(TrainConfig, None, overrides), devices=jax.devices()[:1])


def dpo(args) -> dict:
    from dpo_step import CONFIGS, model_flops, write_random_llama

    shape = dict(CONFIGS["llama-1b"], **(TINY_LLAMA if args.tiny else {}))
    model = args.workdir / ("llama-tiny" if args.tiny else "llama-1b")
    if not (model / "config.json").is_file():
        write_random_llama(dict(shape), None, model)
    start = time.perf_counter()
    run = build([f"model.name={model}", f"model.dtype={'float32' if args.tiny else 'bfloat16'}", "model.dropout=false",
                 f"model.max_length={args.length}", "data.kind=preference", "data.path=builtin:prefs-mini",
                 f"data.batch_size={args.pairs}", f"data.buckets={args.length}", f"data.max_examples={4 * args.pairs}",
                 f"data.max_prompt_length={args.length // 2}", "objective.name=dpo", "objective.beta=0.1",
                 f"objective.reference={args.reference}", "optim.lr=1e-6", "optim.clip_norm=1.0", "mesh.data=1",
                 "eval.data=null", f"checkpoint.dir={args.workdir / 'ckpt-dpo'}", "steps=1000"])
    setup = time.perf_counter() - start
    out = time_steps(run, args.steps)
    flops = model_flops(shape, 2 * args.pairs, args.length)
    counted = flops["total"] if args.reference == "model" else flops["policy"]
    return {"part": f"dpo 1.24B Llama, reference {args.reference}", "model_shape": shape, "pairs": args.pairs,
            "length": args.length, "setup_s": setup, "flops_per_step": counted, "flops_formula": flops["formula"],
            "tokens_per_s": 2 * args.pairs * args.length / out["median_step_s"], **out}


def contrastive(args) -> dict:
    from train_step import model_flops

    model = random_bert(TINY_BERT if args.tiny else BERT_BASE, args.workdir / ("bert-tiny" if args.tiny else "bert-base"))
    start = time.perf_counter()
    run = build([f"model.name={model}", f"model.dtype={'float32' if args.tiny else 'bfloat16'}",
                 f"model.max_length={args.length}", "data.kind=nli", "data.path=builtin:nli-mini",
                 f"data.batch_size={args.batch}", f"data.buckets={args.length}", "objective.name=simcse",
                 "mesh.data=1", "eval.data=null", "steps=1000"])
    setup = time.perf_counter() - start
    out = time_steps(run, args.steps)
    rows = 3 * args.batch  # anchor, positive, hard negative
    flops = model_flops(run.task.encoder.config, rows, args.length)
    return {"part": "contrastive BERT-base, supervised SimCSE", "pairs": args.batch, "length": args.length,
            "setup_s": setup, "flops_per_step": flops["total"], "flops_formula": flops["formula"].replace(
                "2 * batch rows", "3 * batch rows (triplets)"), "tokens_per_s": rows * args.length / out["median_step_s"],
            **out}


def table(directory: Path) -> int:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"jaxalign on an accelerator: {directory}")
    for col in ("part", "status", "median step s", "tokens/s", "TFLOP/s", "MFU", "compiled peak GiB", "first step s"):
        t.add_column(col, justify="left" if col in ("part", "status") else "right")
    for path in sorted(directory.glob("*.json")):
        r = json.loads(path.read_text())
        if "median_step_s" not in r:
            t.add_row(path.stem, f"ok: {path.stem}.log", *[""] * 6)
            continue
        tflops = r["flops_per_step"] / r["median_step_s"] / 1e12
        peak = (r["memory"].get("step") or {}).get("peak_bytes")
        t.add_row(r["part"], "ok", f"{r['median_step_s']:.4f}", f"{r['tokens_per_s']:.0f}", f"{tflops:.1f}",
                  f"{100 * r['mfu']:.1f} %" if r.get("mfu") is not None else "n/a",
                  f"{peak / 2**30:.2f}" if peak else "n/a", f"{r['first_step_s']:.1f}")
    Console(width=200).print(t)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.part == "table":
        return table(args.dir)
    sys.path.insert(0, str(REPO / "benchmarks"))
    import jax

    result = dpo(args) if args.part == "dpo" else contrastive(args)
    kind = jax.devices()[0].device_kind
    peak = chip_peak(kind)
    if args.tiny:
        result["part"] = "tiny " + result["part"]
    result.update(benchmark=f"gpu_{args.part}", device_kind=kind, bf16_peak_flops=peak,
                  mfu=result["flops_per_step"] / (result["median_step_s"] * peak) if peak else None,
                  machine=machine_info(), command="python " + " ".join([Path(__file__).name, *(argv or sys.argv[1:])]))
    print(json.dumps({k: result[k] for k in ("part", "median_step_s", "tokens_per_s", "mfu", "device_kind")}))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
