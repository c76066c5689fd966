"""Unsupervised SimCSE side by side: jaxalign's training engine against a PyTorch reference.

What: trains the same encoder twice with the unsupervised SimCSE objective -- once with
jaxalign exactly as ``jaxalign train experiments/simcse_unsup_small.yaml`` does, once with a
from-scratch PyTorch / ``transformers`` implementation of the same objective -- from the same
initial weights (all-MiniLM-L6-v2, truncated to the recipe's ``model.num_layers``), on the same
Wikipedia sentences in the same batch order (both sides draw batches from jaxalign's
``BatchStream`` with the recipe's seed), with the same hyper-parameters and number of steps.
Both final models are scored on STS-B test by the same evaluator
(``jaxalign.eval.sts.evaluate_sts``); the initial model is scored once as the baseline.

Why: the engine's SimCSE (two dropout views per sentence in one forward, mean pooling,
InfoNCE at temperature 0.05 over in-batch candidates, AdamW with a linear decay to zero,
global-norm clipping) should be the same objective as the reference. Dropout masks cannot be
shared between frameworks, so per-step losses track each other without matching exactly;
the claim checked here is about final quality: the two STS-B test Spearmans must be within
``--tolerance`` (1 point) of each other. ``--no-dropout`` is a debugging mode that turns
dropout off on both sides, where the two should agree step for step up to float32 rounding
(the objective is then degenerate; use only a few steps).

    python experiments/simcse_side_by_side.py --steps 5          # smoke test
    python experiments/simcse_side_by_side.py                    # 100 steps, ~15-30 min on 2 CPU cores

Prints a rich table and writes ``experiments/results/simcse_side_by_side.json`` (both runs'
per-step losses included). Exit status 1 when the Spearmans differ by more than the tolerance.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DEFAULT_DATA = Path(os.environ.get("JAXALIGN_DATA", str(REPO.parent / "shared" / "data")))


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipe", default=str(HERE / "simcse_unsup_small.yaml"),
                   help="jaxalign recipe to train (default: experiments/simcse_unsup_small.yaml); the PyTorch side "
                        "reads its model, data and optimiser settings from the same resolved config")
    p.add_argument("--wiki", default=str(DEFAULT_DATA / "wiki" / "wiki1m_for_simcse.head.txt"),
                   help="training sentences, one per line (default: $JAXALIGN_DATA/wiki/wiki1m_for_simcse.head.txt, "
                        "JAXALIGN_DATA defaulting to <repo>/../shared/data)")
    p.add_argument("--sts", default=str(DEFAULT_DATA / "sts-b" / "sts-test.csv"),
                   help="STS data both final models are scored on (default: $JAXALIGN_DATA/sts-b/sts-test.csv)")
    p.add_argument("--steps", type=int, default=100, help="training steps on each side (default: 100)")
    p.add_argument("--batch-size", type=int, default=64, help="sentences per batch; each gives two views (default: 64)")
    p.add_argument("--lr", type=float, default=3e-5, help="peak learning rate, decayed linearly to 0 (default: 3e-5)")
    p.add_argument("--temperature", type=float, default=0.05, help="InfoNCE temperature (default: 0.05)")
    p.add_argument("--max-length", type=int, default=32, help="training truncation length in tokens (default: 32)")
    p.add_argument("--seed", type=int, default=0,
                   help="data order seed (BatchStream), jaxalign's dropout key and torch.manual_seed (default: 0)")
    p.add_argument("--no-dropout", action="store_true",
                   help="debug: dropout off on both sides (model.dropout=false / torch eval mode); the losses should "
                        "then agree to float32 rounding. The objective is degenerate without dropout: few steps only")
    p.add_argument("--out-dir", default=str(REPO / "runs" / "simcse_side_by_side"),
                   help="scratch folder; jaxalign exports its trained encoder to <out-dir>/jaxalign_hf "
                        "(default: runs/simcse_side_by_side)")
    p.add_argument("--json", default=str(HERE / "results" / "simcse_side_by_side.json"),
                   help="where to write the results, per-step losses included "
                        "(default: experiments/results/simcse_side_by_side.json)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                   help="torch intra-op threads (default: all CPU cores)")
    p.add_argument("--eval-batch-size", type=int, default=64, help="batch size of both STS embedders (default: 64)")
    p.add_argument("--tolerance", type=float, default=1.0,
                   help="largest acceptable |Spearman x100 difference| of the two final models (default: 1.0)")
    p.add_argument("--print-every", type=int, default=None,
                   help="rows of the per-step loss table: every n-th step plus the first and last "
                        "(default: 1 up to 30 steps, else 10); the JSON always has every step")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    return p.parse_args(argv)


# --------------------------------------------------------------------------------------- config


def load_config(args):
    """The jaxalign TrainConfig, resolved exactly as ``jaxalign train <recipe> <overrides>`` would."""
    from jaxalign.config import load_recipe
    from jaxalign.config.run import TrainConfig

    overrides = [
        f"steps={args.steps}", "log.every=1", "log.dir=null", "checkpoint.dir=null", "eval.data=null",
        f"export={Path(args.out_dir) / 'jaxalign_hf'}", f"data.path={args.wiki}", f"data.batch_size={args.batch_size}",
        f"optim.lr={args.lr}", f"objective.temperature={args.temperature}", f"model.max_length={args.max_length}",
        f"seed={args.seed}", f"model.dropout={'false' if args.no_dropout else 'true'}",
    ]
    cfg = load_recipe(TrainConfig, args.recipe, overrides)
    check_reference_covers(cfg)
    return cfg, overrides


def check_reference_covers(cfg) -> None:
    """The PyTorch reference implements plain unsupervised SimCSE; refuse configs it does not."""
    o, m, opt = cfg.objective, cfg.model, cfg.optim
    wanted = {
        "objective.name": (o.name, "simcse"), "data.kind": (cfg.data.kind, "sentences"),
        "objective.head": (o.head, "none"), "objective.symmetric": (o.symmetric, False),
        "objective.cache_chunk": (o.cache_chunk, None), "model.dtype": (m.dtype, "float32"),
        "model.pooling": (m.pooling, None), "optim.schedule": (opt.schedule, "linear"),
        "optim.warmup_steps": (opt.warmup_steps, 0), "optim.grad_accum": (opt.grad_accum, 1),
        "data.shuffle": (cfg.data.shuffle, True), "data.max_examples": (cfg.data.max_examples, None),
    }
    bad = [f"{k}={v!r} (reference needs {w!r})" for k, (v, w) in wanted.items() if v != w]
    if bad:
        raise SystemExit("the PyTorch reference does not implement: " + "; ".join(bad))


def checkpoint_pooling(path: Path) -> tuple[str, int]:
    """(pooling mode, max_seq_length) of a sentence-transformers checkpoint directory."""
    pool_cfg = json.loads((path / "1_Pooling" / "config.json").read_text())
    mode = "mean" if pool_cfg.get("pooling_mode_mean_tokens") else "other"
    st = path / "sentence_bert_config.json"
    max_len = json.loads(st.read_text()).get("max_seq_length") if st.is_file() else None
    return mode, max_len


# ------------------------------------------------------------------------------------ jaxalign


def run_jaxalign(cfg, progress: bool) -> dict:
    from jaxalign.training.trainer import train

    start = time.perf_counter()
    summary = train(cfg, progress=progress)
    wall = time.perf_counter() - start
    losses = [summary["losses"][s] for s in range(1, cfg.steps + 1)]
    return {"losses": losses, "wall_s": wall, "export": summary["export"], "skipped": summary["skipped"],
            "examples_per_s": summary["examples_per_s"]}


def jaxalign_stsb(model, tasks, batch_size: int, num_layers=None) -> float:
    from jaxalign.eval.sts import evaluate_sts
    from jaxalign.inference.embed import Embedder
    from jaxalign.models.registry import load_encoder

    (result,) = evaluate_sts(Embedder(load_encoder(model, num_layers=num_layers), batch_size=batch_size), tasks)
    return result.all


# ------------------------------------------------------------------------------ PyTorch reference


def mean_pool(hidden, mask):
    """sentence-transformers' mean pooling: average of the real tokens' last hidden states."""
    import torch

    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / torch.clamp(m.sum(1), min=1e-9)


def load_torch_model(path: Path, num_layers: int | None):
    import transformers
    from transformers import AutoModel, AutoTokenizer

    transformers.logging.set_verbosity_error()  # "some weights were not used" for the dropped layers
    kwargs = {"num_hidden_layers": num_layers} if num_layers else {}
    # Eager attention: the textbook BERT attention (softmax, dropout on the probabilities), as in SimCSE.
    model = AutoModel.from_pretrained(str(path), attn_implementation="eager", add_pooling_layer=False, **kwargs)
    return model.float(), AutoTokenizer.from_pretrained(str(path))


def run_torch(cfg, model_path: Path, threads: int, progress: bool) -> dict:
    """Unsupervised SimCSE in plain PyTorch, following the structure of princeton-nlp/SimCSE's
    ``cl_forward``: each sentence twice in one forward (two dropout views), pooled, cosine
    similarity of view 1 against all view 2 / temperature, cross-entropy with labels arange."""
    import torch
    import torch.nn.functional as F
    from tqdm.auto import tqdm

    from jaxalign.data.corpora import read_corpus
    from jaxalign.data.stream import BatchStream

    torch.set_num_threads(threads)
    torch.manual_seed(cfg.seed)
    start = time.perf_counter()
    model, tokenizer = load_torch_model(model_path, cfg.model.num_layers)
    if cfg.model.dropout:
        model.train()
    else:
        model.eval()
    examples = read_corpus(cfg.data.kind, cfg.data.path, cfg.data.max_examples)
    stream = BatchStream(examples, cfg.data.batch_size, seed=cfg.seed, shuffle=cfg.data.shuffle)
    o = cfg.optim
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=o.lr, betas=(o.b1, o.b2), eps=o.eps, weight_decay=o.weight_decay)
    steps = cfg.steps
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: max(0.0, (steps - s) / steps))
    cos = torch.nn.CosineSimilarity(dim=-1)  # SimCSE's Similarity module
    losses, grad_norms = [], []
    bar = tqdm(total=steps, desc="torch", unit="step", disable=not progress, dynamic_ncols=True)
    for _ in range(steps):
        sentences = [ex[0] for ex in stream.next()]
        enc = tokenizer(sentences, truncation=True, max_length=cfg.model.max_length, padding="longest",
                        return_tensors="pt")
        batch = len(sentences)
        views = {k: v.repeat_interleave(2, dim=0) for k, v in enc.items()}  # rows: s0, s0, s1, s1, ...
        hidden = model(**views).last_hidden_state
        z = mean_pool(hidden, views["attention_mask"]).view(batch, 2, -1)
        z1, z2 = z[:, 0], z[:, 1]
        logits = cos(z1.unsqueeze(1), z2.unsqueeze(0)) / cfg.objective.temperature
        loss = F.cross_entropy(logits, torch.arange(batch))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if o.clip_norm is not None:
            norm = torch.nn.utils.clip_grad_norm_(params, o.clip_norm)
        else:
            norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params if p.grad is not None]))
        optimizer.step()
        scheduler.step()
        losses.append(float(loss.detach()))
        grad_norms.append(float(norm))
        bar.set_postfix(loss=f"{losses[-1]:.4f}")
        bar.update(1)
    bar.close()
    return {"model": model, "tokenizer": tokenizer, "losses": losses, "grad_norms": grad_norms,
            "wall_s": time.perf_counter() - start}


def torch_embed_fn(model, tokenizer, max_length: int, batch_size: int):
    """Sentences -> [n, D] mean-pooled embeddings with dropout off (eval mode)."""
    import torch

    model.eval()

    def embed(sentences):
        out = []
        with torch.inference_mode():
            for i in range(0, len(sentences), batch_size):
                enc = tokenizer(list(sentences[i : i + batch_size]), truncation=True, max_length=max_length,
                                padding=True, return_tensors="pt")
                out.append(mean_pool(model(**enc).last_hidden_state, enc["attention_mask"]).float().numpy())
        return np.concatenate(out)

    return embed


# ------------------------------------------------------------------------------------ reporting


def render(res: dict, print_every: int) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    s = res["stsb_test"]
    t = Table(title=f"Unsupervised SimCSE side by side: STS-B test Spearman x100 ({res['config']['steps']} steps x "
                    f"{res['config']['batch_size']}, {res['config']['num_layers']}-layer all-MiniLM-L6-v2)")
    for col in ("", "STS-B test", "train wall time", "first loss", "last loss"):
        t.add_column(col, justify="left" if not col else "right")
    jl, tl = res["losses"]["jaxalign"], res["losses"]["torch"]
    t.add_row("before (jaxalign embedder)", f"{s['before']:.2f}", "", "", "")
    t.add_row("before (torch embedder)", f"{s['before_torch']:.2f}", "", "", "")
    t.add_row("jaxalign after", f"{s['jaxalign']:.2f}", f"{res['wall_s']['jaxalign']:.0f} s", f"{jl[0]:.4f}", f"{jl[-1]:.4f}")
    t.add_row("torch after", f"{s['torch']:.2f}", f"{res['wall_s']['torch']:.0f} s", f"{tl[0]:.4f}", f"{tl[-1]:.4f}")
    ok = res["within_tolerance"]
    t.add_row("|difference|", f"[{'green' if ok else 'red'}]{s['abs_difference']:.2f}[/]", "", "", "", style="bold")
    ls = res["loss_stats"]
    t.add_row("mean |loss difference| over steps", f"{ls['mean_abs_difference']:.4f}", "",
              f"(mean loss {ls['mean_jaxalign']:.4f} vs {ls['mean_torch']:.4f})", "")
    console.print(t)

    lt = Table(title="per-step training loss")
    for col in ("step", "jaxalign", "torch", "difference"):
        lt.add_column(col, justify="right")
    n = len(jl)
    for i in range(n):
        step = i + 1
        if step == 1 or step == n or step % print_every == 0:
            lt.add_row(str(step), f"{jl[i]:.4f}", f"{tl[i]:.4f}", f"{jl[i] - tl[i]:+.4f}")
    console.print(lt)


def main(argv=None) -> int:
    args = parse_args(argv)
    cfg, overrides = load_config(args)
    progress = not args.no_progress

    from jaxalign.data.sts import load_sts
    from jaxalign.eval.sts import evaluate_sts
    from jaxalign.models.registry import resolve_model_path

    model_path = resolve_model_path(cfg.model.name)
    mode, eval_max_length = checkpoint_pooling(model_path)
    if mode != "mean":
        raise SystemExit(f"{model_path}: the reference implements mean pooling; the checkpoint pools with {mode}")
    tasks = load_sts(args.sts)
    Path(args.out_dir).mkdir(parents=True, exist_ok=True)

    print(f"model: {model_path} (first {cfg.model.num_layers} layers)\ndata: {cfg.data.path}\nsts: {args.sts}", flush=True)
    before = jaxalign_stsb(cfg.model.name, tasks, args.eval_batch_size, cfg.model.num_layers)
    print(f"STS-B test before: {before:.2f}", flush=True)

    jax_run = run_jaxalign(cfg, progress)
    jax_after = jaxalign_stsb(jax_run["export"], tasks, args.eval_batch_size)
    print(f"jaxalign: {jax_run['wall_s']:.0f} s, STS-B test after: {jax_after:.2f}", flush=True)

    # The jaxalign Embedder truncates at the checkpoint's max_seq_length; the torch embedder does the same.
    eval_max_length = eval_max_length or 512
    import torch  # noqa: F401  (after the JAX run: keeps its thread pool out of the way until needed)

    model0, tok0 = load_torch_model(model_path, cfg.model.num_layers)
    (before_torch,) = evaluate_sts(torch_embed_fn(model0, tok0, eval_max_length, args.eval_batch_size), tasks)
    del model0
    torch_run = run_torch(cfg, model_path, args.threads, progress)
    (torch_after,) = evaluate_sts(
        torch_embed_fn(torch_run["model"], torch_run["tokenizer"], eval_max_length, args.eval_batch_size), tasks)
    print(f"torch: {torch_run['wall_s']:.0f} s, STS-B test after: {torch_after.all:.2f}", flush=True)

    jl, tl = np.asarray(jax_run["losses"]), np.asarray(torch_run["losses"])
    diff = abs(jax_after - torch_after.all)
    res = {
        "what": "unsupervised SimCSE, jaxalign engine vs PyTorch reference; same weights, data order, hyper-parameters",
        "command": "python experiments/simcse_side_by_side.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "recipe": str(Path(args.recipe).resolve().relative_to(REPO)) if Path(args.recipe).resolve().is_relative_to(REPO)
        else args.recipe,
        "overrides": overrides,
        "config": {"steps": cfg.steps, "batch_size": cfg.data.batch_size, "lr": cfg.optim.lr,
                   "temperature": cfg.objective.temperature, "max_length": cfg.model.max_length,
                   "num_layers": cfg.model.num_layers, "seed": cfg.seed, "dropout": cfg.model.dropout,
                   "clip_norm": cfg.optim.clip_norm, "weight_decay": cfg.optim.weight_decay,
                   "betas": [cfg.optim.b1, cfg.optim.b2], "eps": cfg.optim.eps, "schedule": cfg.optim.schedule,
                   "model": str(model_path), "data": cfg.data.path, "sts": args.sts,
                   "eval_max_length": eval_max_length, "torch_threads": args.threads},
        "stsb_test": {"before": before, "before_torch": before_torch.all, "jaxalign": jax_after,
                      "torch": torch_after.all, "abs_difference": diff},
        "tolerance": args.tolerance,
        "within_tolerance": bool(diff <= args.tolerance),
        "wall_s": {"jaxalign": jax_run["wall_s"], "torch": torch_run["wall_s"]},
        "jaxalign_examples_per_s": jax_run["examples_per_s"],
        "jaxalign_skipped_steps": jax_run["skipped"],
        "loss_stats": {
            "mean_abs_difference": float(np.mean(np.abs(jl - tl))),
            "max_abs_difference": float(np.max(np.abs(jl - tl))),
            "mean_jaxalign": float(jl.mean()), "mean_torch": float(tl.mean()),
            "correlation": float(np.corrcoef(jl, tl)[0, 1]) if len(jl) > 2 else math.nan,
        },
        "losses": {"steps": list(range(1, cfg.steps + 1)), "jaxalign": jl.tolist(), "torch": tl.tolist()},
        "torch_grad_norms": torch_run["grad_norms"],
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(res, indent=2) + "\n")
    render(res, args.print_every or (1 if cfg.steps <= 30 else 10))
    print(f"wrote {args.json}")
    return 0 if res["within_tolerance"] else 1


if __name__ == "__main__":
    sys.exit(main())
