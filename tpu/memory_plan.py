#!/usr/bin/env python3
"""Per-chip memory of jaxalign's DPO training step for a decoder on a TPU slice, planned on CPU.

Why: whether a model, batch and sequence length fit a slice's HBM is known before renting it:
XLA's memory analysis of the compiled program gives, per device, the bytes of its arguments
(parameters and optimiser state, the batch), its outputs and its temporaries (activations kept
for the backward pass, gradients). The program is compiled for a CPU "slice" of the same device
count (``--xla_force_host_platform_device_count``), which partitions it exactly as the TPU
slice would; only the fusion decisions, and so the temporaries, differ somewhat between
backends, so treat the figures as an estimate with some tens of percent of margin.

What is compiled is the engine's own step: ``Run.build(cfg).step_fn()`` of
:mod:`jaxalign.training.trainer` for the recipe (default ``experiments/dpo_hh_full.yaml``: DPO
sigmoid loss, reference log-probs precomputed, bf16 compute with fp32 master weights, AdamW
with clipping), with the decoder built abstractly from its shapes (``nnx.eval_shape``; no
weights are read or allocated) and every argument a ``jax.ShapeDtypeStruct``. The default
model has Llama-3-8B's shapes.

Two things the CPU program does not show: what ``model.remat`` saves (XLA's CPU backend
compiles ``jax.checkpoint`` to the same temporary size as no rematerialisation; even a plain
8-layer JAX toy does), so the figures are those of ``model.remat=none``; and TPU-specific
fusions and collective scheduling.

The decoder's layers are a Python loop, so compile time grows with depth; ``--depths`` compiles
a few depths and, when the full depth is not among them, fits ``bytes = a + b * layers`` per
quantity (least squares; the largest relative residual is reported as the check of
linearity) and extrapolates to ``--num-layers``.

    python tpu/memory_plan.py --accelerator v5p-64 --depths 2,4,8 \\
        --json benchmarks/results/memory_plan_llama8b_v5p.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import sys
import time
from pathlib import Path

from launch_common import REPO, LaunchError, parse_accelerator

FIELDS = ("argument", "output", "alias", "temp", "total")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    p.add_argument("--accelerator", default="v5p-64",
                   help="TPU slice the plan is for (its chip count is the simulated device count, its HBM "
                        "the budget). Default: %(default)s")
    p.add_argument("--devices", type=int, default=None,
                   help="simulate this many devices instead of the accelerator's chips (small checks)")
    p.add_argument("--recipe", default="experiments/dpo_hh_full.yaml",
                   help="recipe whose objective, optimiser and chunking the step uses. Default: %(default)s")
    p.add_argument("--pairs", type=int, default=64,
                   help="global batch: preference pairs per step (2 rows each). Default: %(default)s")
    p.add_argument("--length", type=int, default=1024,
                   help="tokens per sequence (prompt + completion, the padded length). Default: %(default)s")
    p.add_argument("--mesh", default="1,-1,1", metavar="DATA,FSDP,TENSOR",
                   help="mesh axis sizes, -1 fills the devices. Default: %(default)s (FSDP over every chip)")
    p.add_argument("--dtype", choices=("bfloat16", "float32"), default="bfloat16",
                   help="compute dtype (master weights stay float32). Default: %(default)s")
    p.add_argument("--depths", default="2,4,8",
                   help="comma-separated layer counts to compile; the figures at --num-layers are measured if it is "
                        "among them, else extrapolated linearly. Default: %(default)s")
    g = p.add_argument_group("decoder shape (default: Llama-3-8B)")
    g.add_argument("--num-layers", type=int, default=32, help="full depth. Default: %(default)s")
    g.add_argument("--hidden-size", type=int, default=4096, help="Default: %(default)s")
    g.add_argument("--intermediate-size", type=int, default=14336, help="Default: %(default)s")
    g.add_argument("--num-heads", type=int, default=32, help="attention heads. Default: %(default)s")
    g.add_argument("--num-kv-heads", type=int, default=8, help="key/value heads. Default: %(default)s")
    g.add_argument("--vocab-size", type=int, default=128256, help="Default: %(default)s")
    g.add_argument("--rope-theta", type=float, default=500000.0, help="Default: %(default)s")
    p.add_argument("--json", type=Path, default=None, help="write the plan here as JSON")
    return p


def parse_args(argv=None) -> argparse.Namespace:
    p = build_parser()
    args = p.parse_args(argv)
    try:
        args.acc = parse_accelerator(args.accelerator)
    except LaunchError as e:
        p.error(str(e))
    try:
        args.depth_list = sorted({int(d) for d in args.depths.split(",")})
    except ValueError:
        p.error(f"--depths {args.depths!r}: expected comma-separated integers, e.g. 2,4,8")
    if args.depth_list[0] < 1 or args.depth_list[-1] > args.num_layers:
        p.error(f"--depths must lie in 1..--num-layers ({args.num_layers})")
    if args.num_layers not in args.depth_list and len(args.depth_list) < 2:
        p.error("--depths: extrapolating to --num-layers needs at least two depths")
    if args.hidden_size % args.num_heads:
        p.error("--hidden-size must be a multiple of --num-heads")
    args.device_count = args.devices or args.acc.chips
    return args


def llama_config(args, layers: int):
    from jaxalign.models.llama.config import LlamaConfig

    return LlamaConfig(vocab_size=args.vocab_size, hidden_size=args.hidden_size,
                       intermediate_size=args.intermediate_size, num_hidden_layers=layers,
                       num_attention_heads=args.num_heads, num_key_value_heads=args.num_kv_heads,
                       head_dim=args.hidden_size // args.num_heads, rope_theta=args.rope_theta, rms_norm_eps=1e-5,
                       max_position_embeddings=max(8192, args.length))


def abstract_decoder(config, dtype, remat: str):
    """A :class:`~jaxalign.models.decoders.Decoder` whose parameters are ShapeDtypeStructs, with
    the logical axes the checkpoint loader would give them (Llama's rule table)."""
    import jax.numpy as jnp
    from flax import nnx

    from jaxalign.models.decoders import Decoder
    from jaxalign.models.llama import weights as llama_weights
    from jaxalign.models.llama.model import LlamaForCausalLM
    from jaxalign.weights.loader import flatten, unflatten

    def make():
        return LlamaForCausalLM(config, dtype=dtype, param_dtype=jnp.float32, remat=remat, rngs=nnx.Rngs(0))

    graphdef, state = nnx.split(nnx.eval_shape(make))
    params = nnx.to_pure_dict(state)
    by_path = {rule.ours: rule.param_axes for rule in llama_weights.RULES}
    axes = unflatten({path: by_path[path] for path in flatten(params)}, params)
    return Decoder(path=Path("<abstract>"), config=config, graphdef=graphdef, state=state, params=params, axes=axes,
                   tokenizer=None, max_length=config.max_position_embeddings, dtype=dtype)


def compile_step(args, layers: int) -> dict:
    """Builds the run for ``layers`` layers abstractly, compiles its step and returns the
    per-device memory analysis (bytes) with the lowering and compile times."""
    from unittest import mock

    import jax
    import jax.numpy as jnp
    import numpy as np

    from jaxalign.config import load_recipe
    from jaxalign.config.run import TrainConfig
    from jaxalign.objectives.preference import PreferenceObjective
    from jaxalign.tasks.preference import PreferenceTask
    from jaxalign.training.step import TrainState
    from jaxalign.training.trainer import Run

    data, fsdp, tensor = args.mesh.split(",")
    cfg = load_recipe(TrainConfig, REPO / args.recipe, [
        f"model.max_length={args.length}", f"model.dtype={args.dtype}",
        f"model.num_layers={layers}", f"data.batch_size={args.pairs}",
        f"mesh.data={data}", f"mesh.fsdp={fsdp}", f"mesh.tensor={tensor}"])
    decoder = abstract_decoder(llama_config(args, layers), jnp.bfloat16 if args.dtype == "bfloat16" else jnp.float32,
                               cfg.model.remat)
    if cfg.objective.reference != "precomputed":
        raise LaunchError(f"{args.recipe}: memory_plan models objective.reference=precomputed only")
    # A precomputed reference only puts [B, 2] log-probs in the batch; the placeholder makes
    # the task ask for them.
    precomputed = np.zeros((0, 2), np.float32)

    def build_task(cfg, mesh):
        return PreferenceTask(cfg, mesh, decoder, PreferenceObjective(cfg.objective, decoder), tokens=None, stream=None,
                              params={"policy": decoder.params}, param_axes={"policy": decoder.axes},
                              frozen={}, frozen_axes={}, ref_logps=precomputed)

    # Run.build is the engine's own construction of shardings and optimiser; only the task
    # (which would load weights and data) is swapped for the abstract one.
    with mock.patch("jaxalign.training.trainer.build_task", build_task):
        run = Run.build(cfg)
    task = run.task
    state = jax.eval_shape(lambda p: TrainState.create(p, run.optimizer, cfg.seed), task.params)
    shapes = {"input_ids": ((args.pairs, 2, args.length), jnp.int32),
              "attention_mask": ((args.pairs, 2, args.length), jnp.int32),
              "loss_mask": ((args.pairs, 2, args.length), jnp.int32),
              "ref_logps": ((args.pairs, 2), jnp.float32)}
    batch = {k: jax.ShapeDtypeStruct(*shapes[k]) for k in task.batch_axes()}
    t0 = time.perf_counter()
    with jax.set_mesh(run.mesh):  # as jaxalign.training.trainer.train runs the step
        lowered = run.step_fn().lower(state, batch, task.frozen)
    t1 = time.perf_counter()
    stats = lowered.compile().memory_analysis()
    t2 = time.perf_counter()
    out = {"layers": layers, "lower_s": round(t1 - t0, 1), "compile_s": round(t2 - t1, 1),
           "argument": stats.argument_size_in_bytes, "output": stats.output_size_in_bytes,
           "alias": stats.alias_size_in_bytes, "temp": stats.temp_size_in_bytes}
    # Donated state buffers are reused for the outputs: counted once.
    out["total"] = out["argument"] + out["output"] - out["alias"] + out["temp"]
    out["params"] = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(task.params))
    return out


def linear_fit(points: list[dict], layers: int) -> dict:
    """Least-squares ``a + b * layers`` of every field; the prediction at ``layers`` and the
    largest relative residual over the measured depths."""
    import numpy as np

    x = np.array([p["layers"] for p in points], float)
    fit = {}
    for field in (*FIELDS, "params"):
        y = np.array([p[field] for p in points], float)
        b, a = np.polyfit(x, y, 1)
        residual = np.max(np.abs(a + b * x - y) / np.maximum(np.abs(y), 1.0))
        fit[field] = {"intercept": a, "per_layer": b, "predicted": a + b * layers, "max_rel_residual": residual}
    return fit


def gib(n: float) -> str:
    return f"{n / 2**30:.2f}"


def main(argv=None) -> int:
    args = parse_args(argv)
    # The simulated slice must exist before jax is imported.
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                               f" --xla_force_host_platform_device_count={args.device_count}").strip()
    os.environ["JAX_PLATFORMS"] = "cpu"
    sys.path.insert(0, str(REPO))
    import jax

    assert jax.device_count() == args.device_count, jax.devices()
    points = []
    for layers in args.depth_list:
        point = compile_step(args, layers)
        points.append(point)
        print(f"{layers:3d} layers: argument {gib(point['argument'])} GiB, output {gib(point['output'])}, "
              f"alias {gib(point['alias'])}, temp {gib(point['temp'])}, total {gib(point['total'])} GiB per device "
              f"(lower {point['lower_s']} s, compile {point['compile_s']} s)", flush=True)
    measured = next((p for p in points if p["layers"] == args.num_layers), None)
    fit = linear_fit(points, args.num_layers) if len(points) > 1 else None
    if measured is not None:
        full = {f: measured[f] for f in (*FIELDS, "params")} | {"source": "measured"}
    else:
        full = {f: fit[f]["predicted"] for f in (*FIELDS, "params")} | {"source": "extrapolated"}
    hbm = args.acc.spec.hbm_gib * 2**30
    plan = {
        "date": datetime.date.today().isoformat(),
        "command": shlex.join(["python", "tpu/memory_plan.py", *(sys.argv[1:] if argv is None else argv)]),
        "jax": jax.__version__,
        "accelerator": args.accelerator, "devices": args.device_count,
        "hbm_per_chip_bytes": hbm,
        "mesh": dict(zip(("data", "fsdp", "tensor"), map(int, args.mesh.split(",")))),
        "recipe": args.recipe,
        "batch": {"pairs": args.pairs, "rows": 2 * args.pairs, "length": args.length},
        "dtype": args.dtype, "master_weights": "float32",
        "model": {"num_layers": args.num_layers, "hidden_size": args.hidden_size,
                  "intermediate_size": args.intermediate_size, "num_heads": args.num_heads,
                  "num_kv_heads": args.num_kv_heads, "vocab_size": args.vocab_size, "rope_theta": args.rope_theta},
        "per_device_bytes_by_depth": points,
        "linear_fit": fit,
        "per_device_bytes_full_depth": full,
        "fraction_of_hbm": full["total"] / hbm,
    }
    print(f"{args.num_layers} layers ({full['source']}), {full['params'] / 1e9:.2f} B parameters: "
          f"argument {gib(full['argument'])} GiB, temp {gib(full['temp'])} GiB, output {gib(full['output'])} GiB, "
          f"total {gib(full['total'])} GiB per chip = {100 * plan['fraction_of_hbm']:.0f}% of "
          f"{args.acc.spec.hbm_gib} GiB HBM")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(plan, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
