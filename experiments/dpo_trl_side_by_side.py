"""DPO side by side: jaxalign's training engine against TRL's ``DPOTrainer``, step for step.

What: trains the same causal LM with the DPO (sigmoid) loss twice -- once with jaxalign exactly as
``jaxalign train`` runs it (``jaxalign.training.trainer.train(cfg)``), once with TRL's
``DPOTrainer`` (``trainer.train()``) -- and prints both runs' per-step loss, gradient norm and
logged metrics side by side.

Same everything, so that the two runs should agree to float32 rounding:

* model: SmolLM2-135M-Instruct as jaxalign loads it (the packaged Q4_1 GGUF, dequantised to
  float32), truncated to its first ``--num-layers`` layers (default 4, for time; 0 = all 30), exported once with
  ``jaxalign.models.export.export_decoder`` to a Hugging Face directory. *Both* sides load that
  directory (jaxalign with ``model.name=<dir>``, TRL with ``AutoModelForCausalLM.from_pretrained``
  in float32, plus a second copy as ``ref_model``), so their weights are bit-identical.
* data: ``builtin:prefs-mini`` (default) or ``--data FILE`` (e.g. HH-RLHF). For a file, the rows
  are read with jaxalign's reader (HH transcripts split at the last ``"\\n\\nAssistant:"``), rows
  whose prompt alone is ``--max-length`` tokens or more are left out (TRL 1.x has no
  ``max_prompt_length``: it drops such rows, jaxalign refuses them), and the rest are written to
  a JSON-lines file of explicit ``prompt``/``chosen``/``rejected`` strings that jaxalign trains on.
  TRL gets the same strings (its own tokenisation, EOS appended to completions, ``keep_start``
  truncation to ``max_length``).
* batch order: jaxalign draws its batches as usual (shuffled ``BatchStream``, ``seed``); the
  script records which records each batch held and gives TRL exactly those records, in that
  order, with ``train_sampling_strategy="sequential"`` (no shuffling), so TRL's batch ``k`` is
  jaxalign's batch ``k``. The collated token ids, attention masks and completion masks of every
  step are then compared position by position (TRL pads to the longest row, jaxalign to a
  bucket: the real tokens must be identical).
* hyper-parameters: beta, sigmoid loss, no label smoothing, reference model = the initial
  weights computed in the step (no precompute), batch size, ``max_length``, float32 (TRL's
  ``bf16`` default is turned off), dropout off (TRL ``disable_dropout``; jaxalign
  ``model.dropout=false``), AdamW (lr, betas 0.9/0.999, eps 1e-8, weight decay on matrices
  only, which for Llama is the same set as Transformers' "not bias / not norm" rule), a
  constant learning rate with no warmup, global-norm gradient clipping at ``--clip-norm``
  (jaxalign ``optim.clip_norm``; HF ``max_grad_norm``, whose default is also 1.0), one
  optimiser step per batch (no accumulation). TRL's own optimiser default (``adamw_torch_fused``
  with torch >= 2.8) is kept unless ``--trl-optim`` says otherwise.

DPO variants, the same on both sides: ``--use-weighting`` (WPO), ``--ld-alpha`` (LD-DPO),
``--sync-ref-model`` (TR-DPO, with ``--ref-model-sync-steps`` and ``--ref-model-mixup-alpha``).

Checks: the step-1 loss is ln 2 = 0.693147 on both sides (policy == reference; not with WPO); the largest
absolute per-step loss difference is at most ``--tolerance``; every batch is token-identical.
Exit status 1 if any check fails.

    python experiments/dpo_trl_side_by_side.py                   # prefs-mini, first 4 of 30 layers, 10 steps
    python experiments/dpo_trl_side_by_side.py --num-layers 0    # the full model (about a minute per step per side
                                                                 # on 2 shared CPU cores)
    python experiments/dpo_trl_side_by_side.py --num-layers 2 --batch-size 4 --max-length 128 --max-examples 400 \\
        --data ../shared/data/hh-rlhf/helpful-base/test.jsonl.gz --json experiments/results/dpo_trl_side_by_side_hh.json

Prints a table and writes ``experiments/results/dpo_trl_side_by_side.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
from jaxalign.benchmarking import check_counts, machine_info  # noqa: E402
LN2 = math.log(2.0)
METRICS = ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies", "logps/chosen",
           "logps/rejected")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="SmolLM2-135M-Instruct",
                   help="jaxalign decoder name or path, exported once to a Hugging Face directory both sides load "
                        "(default: %(default)s, the packaged GGUF)")
    p.add_argument("--num-layers", type=int, default=4,
                   help="keep only the first N transformer layers; 0 keeps all (SmolLM2-135M has 30). Default: "
                        "%(default)s, so that 10 steps on each side take a few minutes on 2 shared CPU cores; the "
                        "full model takes about a minute per step per side there")
    p.add_argument("--data", default="builtin:prefs-mini",
                   help="preference data: builtin:prefs-mini (default) or a .jsonl/.jsonl.gz file, e.g. "
                        "../shared/data/hh-rlhf/helpful-base/test.jsonl.gz")
    p.add_argument("--max-examples", type=int, default=None,
                   help="read at most this many rows of --data (default: all)")
    p.add_argument("--steps", type=int, default=10, help="optimiser steps on each side (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=8, help="preference pairs per step (default: %(default)s)")
    p.add_argument("--max-length", type=int, default=96,
                   help="max tokens of prompt + completion (TRL max_length, keep_start; jaxalign model.max_length). "
                        "jaxalign pads every batch to this one bucket, so it compiles once (default: %(default)s)")
    p.add_argument("--buckets", default=None,
                   help="jaxalign's length buckets, comma-separated (default: just --max-length, one compile; more "
                        "buckets pad less but compile once per bucket hit)")
    p.add_argument("--lr", type=float, default=1e-5, help="constant learning rate, no warmup (default: %(default)s)")
    p.add_argument("--beta", type=float, default=0.1, help="DPO beta (default: %(default)s)")
    p.add_argument("--weight-decay", type=float, default=0.0,
                   help="AdamW decoupled weight decay, matrices only on both sides (default: %(default)s)")
    p.add_argument("--clip-norm", type=float, default=1.0,
                   help="global gradient-norm clipping on both sides; 0 disables it (default: %(default)s, HF "
                        "Trainer's max_grad_norm default)")
    p.add_argument("--seed", type=int, default=0, help="jaxalign's data-order seed; also TRL's seed (default: 0)")
    p.add_argument("--trl-optim", default=None,
                   help="TRL/Transformers optimiser name (default: Transformers' own default, adamw_torch_fused "
                        "with torch >= 2.8); adamw_torch is the unfused implementation")
    p.add_argument("--threads", type=int, default=None,
                   help="torch intra-op threads (default: torch's own default); XLA uses all cores")
    p.add_argument("--model-dir", type=Path, default=None,
                   help="where to export the model (reused if it already holds config.json); default: a temporary "
                        "directory removed at exit")
    p.add_argument("--use-weighting", action="store_true", help="WPO weighting on both sides (DPOConfig.use_weighting)")
    p.add_argument("--ld-alpha", type=float, default=None, help="LD-DPO's alpha on both sides (DPOConfig.ld_alpha)")
    p.add_argument("--sync-ref-model", action="store_true",
                   help="TR-DPO on both sides: the reference mixed towards the policy every --ref-model-sync-steps")
    p.add_argument("--ref-model-sync-steps", type=int, default=2, help="TR-DPO's period (default: %(default)s)")
    p.add_argument("--ref-model-mixup-alpha", type=float, default=0.6, help="TR-DPO's alpha (default: %(default)s)")
    p.add_argument("--tolerance", type=float, default=1e-4,
                   help="largest allowed absolute per-step loss difference (default: %(default)s)")
    p.add_argument("--json", type=Path, default=HERE / "results" / "dpo_trl_side_by_side.json",
                   help="where to write the results (default: %(default)s)")
    args = p.parse_args(argv)
    if args.num_layers == 0:
        args.num_layers = None
    check_counts(p, args, ("steps", "batch_size", "num_layers", "max_examples", "threads"))
    if args.max_length < 8:
        p.error("--max-length must be >= 8")
    return args


# ----------------------------------------------------------------------------------- the model


def export_model(args, workdir: Path) -> Path:
    """The Hugging Face directory both sides load: jaxalign's float32 weights, written once."""
    from jaxalign.models.decoders import load_decoder
    from jaxalign.models.export import export_decoder

    target = args.model_dir or workdir / "model"
    if (target / "config.json").is_file():
        cfg = json.loads((target / "config.json").read_text())
        want = args.num_layers or cfg["num_hidden_layers"]
        if cfg["num_hidden_layers"] != want:
            sys.exit(f"--model-dir {target} holds {cfg['num_hidden_layers']} layers, not {want}; use another directory")
        return target
    decoder = load_decoder(args.model, num_layers=args.num_layers)
    export_decoder(decoder, decoder.params, target)
    return target


# ------------------------------------------------------------------------------------ the data


def prepare_data(args, model_dir: Path, workdir: Path) -> tuple[str, list, dict]:
    """(jaxalign data.path, the records it reads in order, notes). For a file: drop rows whose
    prompt alone fills max_length and write the rest as explicit prompt/chosen/rejected rows."""
    from transformers import AutoTokenizer

    from jaxalign.data.preference import load_preference

    if args.data.startswith("builtin:"):
        records = load_preference(args.data, "paired", args.max_examples)
        return args.data, records, {"rows_read": len(records), "rows_kept": len(records)}
    records = load_preference(args.data, "paired", args.max_examples)
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    lengths = [len(ids) for ids in tok([r.prompt for r in records])["input_ids"]]
    kept = [r for r, n in zip(records, lengths) if n < args.max_length]
    path = workdir / "data.jsonl"
    with path.open("w") as f:
        for r in kept:
            f.write(json.dumps({"prompt": r.prompt, "chosen": r.chosen, "rejected": r.rejected}) + "\n")
    records = load_preference(str(path), "paired")
    return str(path), records, {"rows_read": len(lengths), "rows_kept": len(kept),
                                "rows_dropped_prompt_too_long": len(lengths) - len(kept)}


# ------------------------------------------------------------------------------- jaxalign side


def jaxalign_overrides(args, model_dir: Path, data_path: str, log_dir: Path) -> list[str]:
    return [
        f"model.name={model_dir}", "model.dtype=float32", "model.dropout=false", f"model.max_length={args.max_length}",
        "data.kind=preference", f"data.path={data_path}", f"data.batch_size={args.batch_size}", "data.shuffle=true",
        f"data.buckets={args.buckets or args.max_length}",
        "objective.name=dpo", f"objective.beta={args.beta}", "objective.loss_type=sigmoid",
        "objective.label_smoothing=0.0", "objective.reference=model",
        f"optim.lr={args.lr}", "optim.schedule=constant", "optim.warmup_steps=0",
        f"optim.weight_decay={args.weight_decay}",
        "optim.b1=0.9", "optim.b2=0.999", "optim.eps=1e-8",
        f"optim.clip_norm={args.clip_norm if args.clip_norm > 0 else 'null'}", "optim.grad_accum=1",
        "mesh.data=1", "eval.data=null", "checkpoint.dir=null", f"log.dir={log_dir}", "log.every=1",
        "log.tensorboard=false", f"seed={args.seed}", f"steps={args.steps}",
        *variant_overrides(args),
    ]


def variant_overrides(args) -> list[str]:
    """The DPO variants under test, as jaxalign options (TRL's DPOConfig takes the same names)."""
    out = []
    if args.use_weighting:
        out.append("objective.use_weighting=true")
    if args.ld_alpha is not None:
        out.append(f"objective.ld_alpha={args.ld_alpha}")
    if args.sync_ref_model:
        out += ["objective.sync_ref_model=true", f"objective.ref_model_sync_steps={args.ref_model_sync_steps}",
                f"objective.ref_model_mixup_alpha={args.ref_model_mixup_alpha}"]
    return out


def variant_kwargs(args) -> dict:
    return dict(use_weighting=args.use_weighting, ld_alpha=args.ld_alpha, sync_ref_model=args.sync_ref_model,
                ref_model_sync_steps=args.ref_model_sync_steps, ref_model_mixup_alpha=args.ref_model_mixup_alpha)


def run_jaxalign(overrides: list[str], log_dir: Path) -> dict:
    """``train(cfg)`` as ``jaxalign train`` runs it, recording each batch's records and arrays."""
    import numpy as np

    from jaxalign.config import load_recipe
    from jaxalign.data.stream import BatchStream
    from jaxalign.config.run import TrainConfig
    from jaxalign.tasks.preference import PreferenceTask
    from jaxalign.training.trainer import train

    cfg = load_recipe(TrainConfig, None, overrides)
    indices, batches = [], []
    orig_next, orig_batch = BatchStream.next, PreferenceTask.next_batch

    def next_(self):
        examples = orig_next(self)
        indices.append([int(ex.index) for ex in examples])
        return examples

    def next_batch(self):
        batch = orig_batch(self)
        batches.append({k: np.asarray(v) for k, v in batch.items()})
        return batch

    BatchStream.next, PreferenceTask.next_batch = next_, next_batch
    start = time.perf_counter()
    try:
        summary = train(cfg, progress=False)
    finally:
        BatchStream.next, PreferenceTask.next_batch = orig_next, orig_batch
    wall = time.perf_counter() - start
    rows = [json.loads(line) for line in (log_dir / "metrics.jsonl").read_text().splitlines()]
    steps = {r["step"]: r for r in rows if "loss" in r}
    return {"steps": steps, "indices": indices, "batches": batches, "wall_s": wall, "skipped": summary["skipped"]}


# ------------------------------------------------------------------------------------ TRL side


def run_trl(args, model_dir: Path, records: list, indices: list[list[int]], workdir: Path) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, PrinterCallback, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    rows = [{"prompt": records[i].prompt, "chosen": records[i].chosen, "rejected": records[i].rejected}
            for batch in indices for i in batch]
    dataset = Dataset.from_list(rows)
    kwargs = {} if args.trl_optim is None else {"optim": args.trl_optim}
    config = DPOConfig(
        output_dir=str(workdir / "trl"), report_to="none", save_strategy="no", logging_steps=1,
        max_steps=args.steps, per_device_train_batch_size=args.batch_size, gradient_accumulation_steps=1,
        learning_rate=args.lr, lr_scheduler_type="constant", warmup_steps=0, weight_decay=args.weight_decay,
        adam_beta1=0.9, adam_beta2=0.999, adam_epsilon=1e-8, max_grad_norm=args.clip_norm,
        bf16=False, fp16=False, gradient_checkpointing=False, use_cpu=True, dataloader_num_workers=0,
        train_sampling_strategy="sequential", seed=args.seed, disable_dropout=True,
        beta=args.beta, loss_type=["sigmoid"], label_smoothing=0.0, max_length=args.max_length,
        truncation_mode="keep_start", precompute_ref_log_probs=False, disable_tqdm=True, **variant_kwargs(args),
        **kwargs,
    )
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    load = lambda: AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    records_out, batches, log_rows = [], [], []

    class Recorder(DPOTrainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            loss = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            value = loss[0] if return_outputs else loss
            rec = {"loss": float(value.detach())}
            rec.update({k: float(self._metrics["train"][k][-1]) for k in METRICS})
            records_out.append(rec)
            batches.append({k: v.detach().cpu().numpy() for k, v in inputs.items()})
            return loss

    class Logs(TrainerCallback):
        def on_log(self, _args, state, control, logs=None, **kw):
            if logs and "grad_norm" in logs:
                log_rows.append({**logs, "step": state.global_step})

    trainer = Recorder(model=load(), ref_model=load(), args=config, train_dataset=dataset, processing_class=tokenizer,
                       callbacks=[Logs()])
    trainer.remove_callback(PrinterCallback)  # the per-step log dicts: the table below has them
    start = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - start
    grad_norm = {int(e["step"]): float(e["grad_norm"]) for e in log_rows}
    lr = {int(e["step"]): float(e["learning_rate"]) for e in log_rows}
    steps = {}
    for s, rec in enumerate(records_out, 1):
        steps[s] = {**rec, "grad_norm": grad_norm.get(s), "lr": lr.get(s)}
    optim = str(getattr(config.optim, "value", config.optim))
    return {"steps": steps, "batches": batches, "wall_s": wall, "optim": optim,
            "rows_after_prepare": len(trainer.train_dataset)}


# ------------------------------------------------------------------------------ comparisons


def compare_batches(jx_batches: list[dict], trl_batches: list[dict]) -> dict:
    """Real tokens of every row must be identical: ids, attention and completion masks."""
    import numpy as np

    problems = []
    for step, (j, t) in enumerate(zip(jx_batches, trl_batches), 1):
        b = j["input_ids"].shape[0]
        for col in range(2):  # TRL: rows [chosen of each pair..., rejected of each pair...]
            for i in range(b):
                row = col * b + i
                n_j = int(j["attention_mask"][i, col].sum())
                n_t = int(t["attention_mask"][row].sum())
                same = (n_j == n_t
                        and np.array_equal(j["input_ids"][i, col, :n_j], t["input_ids"][row, :n_t])
                        and np.array_equal(j["loss_mask"][i, col, :n_j], t["completion_mask"][row, :n_t]))
                if not same:
                    problems.append({"step": step, "pair": i, "column": ("chosen", "rejected")[col],
                                     "jaxalign_tokens": n_j, "trl_tokens": n_t})
    return {"steps_compared": min(len(jx_batches), len(trl_batches)), "mismatched_rows": len(problems),
            "first_mismatches": problems[:5], "identical": not problems and len(jx_batches) == len(trl_batches),
            "jaxalign_padded_length": int(jx_batches[0]["input_ids"].shape[-1]) if jx_batches else None,
            "trl_padded_lengths": [int(t["input_ids"].shape[-1]) for t in trl_batches]}


def render(console, r: dict) -> None:
    from rich.table import Table

    cfg = r["config"]
    table = Table(title=f"DPO, jaxalign vs TRL {r['machine']['trl']} DPOTrainer: {cfg['model']} "
                        f"({r['num_layers']} layers), {cfg['data']}, batch {cfg['batch_size']}, lr {cfg['lr']:g}, "
                        f"beta {cfg['beta']:g}, float32")
    for column in ("step", "jaxalign loss", "TRL loss", "|diff|", "jaxalign grad norm", "TRL grad norm",
                   "margins jaxalign", "margins TRL", "logps/chosen jaxalign", "logps/chosen TRL"):
        table.add_column(column, justify="right", no_wrap=True)
    for row in r["per_step"]:
        j, t = row["jaxalign"], row["trl"]
        table.add_row(str(row["step"]), f"{j['loss']:.6f}", f"{t['loss']:.6f}", f"{row['abs_diff_loss']:.1e}",
                      f"{j['grad_norm']:.4f}", f"{t['grad_norm']:.4f}" if t["grad_norm"] is not None else "-",
                      f"{j['rewards/margins']:+.5f}", f"{t['rewards/margins']:+.5f}",
                      f"{j['logps/chosen']:.4f}", f"{t['logps/chosen']:.4f}")
    console.print(table)
    c = r["checks"]
    console.print(f"step-1 loss: jaxalign {c['step1_loss_jaxalign']:.6f}, TRL {c['step1_loss_trl']:.6f}, "
                  f"ln 2 = {LN2:.6f}")
    console.print(f"max |loss diff| {r['max_abs_diff']['loss']:.2e} (tolerance {cfg['tolerance']:g}); "
                  + ", ".join(f"{k} {v:.1e}" for k, v in r["max_abs_diff"].items() if k != "loss"))
    b = r["batches"]
    console.print(f"batches token-identical: {b['identical']} ({b['steps_compared']} steps; jaxalign pads to "
                  f"{b['jaxalign_padded_length']}, TRL to the longest row: {b['trl_padded_lengths']})")
    console.print(f"wall: jaxalign {r['wall_s']['jaxalign']:.0f} s (compile included), TRL {r['wall_s']['trl']:.0f} s")


def main(argv=None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch
    from rich.console import Console
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()
    transformers_logging.set_verbosity_error()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    console = Console(width=None if sys.stdout.isatty() else 160)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="dpo_side_by_side_") as tmp:
        workdir = Path(tmp)
        model_dir = export_model(args, workdir)
        num_layers = json.loads((model_dir / "config.json").read_text())["num_hidden_layers"]
        data_path, records, data_notes = prepare_data(args, model_dir, workdir)
        console.print(f"model: {model_dir} ({num_layers} layers); data: {args.data} {data_notes}")
        overrides = jaxalign_overrides(args, model_dir, data_path, workdir / "log")
        console.print("jaxalign: train(cfg) ...")
        jx = run_jaxalign(overrides, workdir / "log")
        console.print(f"jaxalign done in {jx['wall_s']:.0f} s; TRL: DPOTrainer.train() ...")
        tr = run_trl(args, model_dir, records, jx["indices"], workdir)
        console.print(f"TRL done in {tr['wall_s']:.0f} s")

    per_step, diffs = [], {k: 0.0 for k in ("loss", "grad_norm", *METRICS)}
    for s in range(1, args.steps + 1):
        j, t = jx["steps"][s], tr["steps"][s]
        row = {"step": s, "jaxalign": {k: j.get(k) for k in ("loss", "grad_norm", "lr", *METRICS)},
               "trl": {k: t.get(k) for k in ("loss", "grad_norm", "lr", *METRICS)},
               "abs_diff_loss": abs(j["loss"] - t["loss"])}
        for k in diffs:
            if k == "rewards/accuracies" and s == 1:
                continue  # step 1: every reward is 0 up to rounding, so "chosen > rejected" compares noise
            if j.get(k) is not None and t.get(k) is not None:
                diffs[k] = max(diffs[k], abs(j[k] - t[k]))
        per_step.append(row)
    batches = compare_batches(jx["batches"], tr["batches"])
    step1 = {"step1_loss_jaxalign": jx["steps"][1]["loss"], "step1_loss_trl": tr["steps"][1]["loss"]}
    checks = {**step1,
              # WPO scales every pair's loss by its weight, so its first step is not ln 2
              "step1_is_ln2": args.use_weighting or all(abs(v - LN2) < 1e-5 for v in step1.values()),
              "losses_within_tolerance": diffs["loss"] <= args.tolerance,
              "batches_identical": batches["identical"],
              "jaxalign_skipped_steps": jx["skipped"]}
    checks["ok"] = checks["step1_is_ln2"] and checks["losses_within_tolerance"] and checks["batches_identical"]
    results = {
        "experiment": "dpo_trl_side_by_side",
        "command": "python " + " ".join([str(Path(sys.argv[0]))] + (argv if argv is not None else sys.argv[1:])),
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "num_layers": num_layers,
        "data": data_notes,
        "jaxalign_overrides": [o for o in overrides if not o.startswith(("model.name=", "data.path=", "log.dir="))],
        "trl": {"optim": tr["optim"], "rows_after_prepare": tr["rows_after_prepare"],
                "settings": "DPOConfig(loss_type=['sigmoid'], beta, max_length, truncation_mode='keep_start', "
                            "bf16=False, gradient_checkpointing=False, disable_dropout=True, lr_scheduler_type="
                            "'constant', warmup_steps=0, max_grad_norm=clip_norm, train_sampling_strategy="
                            "'sequential', per_device_train_batch_size=batch_size); ref_model = a second copy"},
        "batch_indices": jx["indices"],
        "per_step": per_step,
        "max_abs_diff": diffs,
        # relative: WPO's weighted losses can be tiny, where an absolute difference says little
        "max_rel_diff_loss": max(r["abs_diff_loss"] / max(abs(r["trl"]["loss"]), 1e-30) for r in per_step),
        "max_abs_diff_note": "over all steps; rewards/accuracies from step 2 on (at step 1 policy == reference, every "
                             "reward is 0 up to float32 rounding and the accuracy counts the sign of that noise)",
        "batches": batches,
        "checks": checks,
        "wall_s": {"jaxalign": jx["wall_s"], "trl": tr["wall_s"], "total": time.perf_counter() - t0},
        "machine": machine_info("torch", "transformers", "trl", "accelerate"),
    }
    render(console, results)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2) + "\n")
    console.print(f"results written to {args.json}")
    if not checks["ok"]:
        console.print("[bold red]check failed[/]: " + ", ".join(k for k in ("step1_is_ln2", "losses_within_tolerance",
                                                                             "batches_identical") if not checks[k]))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
