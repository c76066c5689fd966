"""DPO training-step throughput: jaxalign's compiled step against TRL's ``DPOTrainer`` and Tunix's ``DPOTrainer``.

What: median time of one DPO optimiser step (sigmoid loss, beta 0.1, reference model in the step),
tokens per second and MFU, for up to three implementations (``--peers``), on the same fixed batch of
``--pairs`` preference pairs, each sequence (prompt + completion) exactly ``--length`` tokens:

* ``jaxalign``: the engine's real step, ``jaxalign.training.trainer.Run.step_fn()`` (jit with explicit
  shardings, donated state): one policy forward + backward over the ``2 x pairs`` chosen and
  rejected rows, the reference forward (no gradient) over the same rows, per-token log-probs
  through the LM head (on the completion's positions only: with ``--tokens random`` the config
  sets ``data.max_completion_length``, the completion width, which is what Tunix's
  ``logits_to_keep`` is; whole logits when they fit ``objective.logits_memory_mb``, else
  chunked and rematerialised: ``--logits-memory-mb``), the DPO loss, the non-finite guard,
  ``optax.clip_by_global_norm(1.0)`` and AdamW (constant lr, weight decay 0);
* ``trl``: TRL's ``DPOTrainer`` with the same settings (``bf16=False``, float32 weights,
  ``gradient_checkpointing=False`` like jaxalign, dropout off, ``max_grad_norm=1.0``, Transformers'
  default optimiser ``adamw_torch_fused``, constant lr), driven one step at a time through the
  calls ``Trainer``'s inner loop makes: ``trainer.training_step(model, inputs)`` (TRL's
  ``compute_loss``: policy forward with TRL's fused LM head, reference forward under ``no_grad``,
  loss, logged metrics; then ``backward``), ``trainer._clip_grad_norm(model)``,
  ``optimizer.step()``, ``lr_scheduler.step()``, ``model.zero_grad()``. The batch is TRL's own
  collated layout (``input_ids``/``attention_mask``/``completion_mask`` ``[2 x pairs, length]``,
  chosen rows first) holding the same tokens as jaxalign's ``[pairs, 2, length]``;
* ``tunix``: Tunix's ``DPOTrainer`` (PyPI ``google-tunix``, a JAX library) with the same settings
  (``optax.chain(clip_by_global_norm(1.0), adamw(...))`` as jaxalign's, its Llama 3 in float32, no
  remat), in its own virtual environment (``bash benchmarks/peers/setup_tunix.sh`` makes
  ``.venv-tunix``; Tunix pins its own JAX): a long-lived worker process,
  ``benchmarks/peers/tunix_dpo.py``, started once and driven one step at a time over a pipe, so
  that its steps alternate with the other sides' exactly as theirs do. Tunix's step is its own
  train loop (``trainer.train([batch])``): the reference forward in ``_prepare_inputs``, then the
  jitted policy forward + backward and optimiser update; its batch is the same tokens in Tunix's
  ``TrainingInput`` layout (prompt, chosen, rejected), so ``--tokens random`` only. The worker
  passes SmolLM2's ``rope_theta`` (1e5) to Tunix's RoPE, which 0.1.7 ignores (always 1e6): see
  its docstring.

Models (``--config``):

* ``smollm2-135m`` (default): SmolLM2-135M-Instruct as jaxalign loads it (the packaged GGUF,
  dequantised to float32), exported once with ``export_decoder`` to a Hugging Face directory that
  both sides load: bit-identical weights.
* ``llama-1b``: a Llama-3.2-1B-shaped model (hidden 2048, 16 layers, 32 heads, 8 KV heads, head 64,
  intermediate 8192, vocab 128256, tied embeddings; 1.24 B parameters) with random weights
  (normal, std 0.02; norms 1) written once to a Hugging Face directory both sides load; meant for
  GPU runs (about 20 GB per side in float32 with AdamW). ``--num-layers`` shrinks either model
  (for a CPU smoke test).

Tokens (``--tokens``): ``random`` (default): uniform random ids, a ``--prompt-length`` prompt shared
by chosen and rejected and two different random completions, no padding; ``hh``: the first
``--pairs`` pairs of HH-RLHF helpful-base test, tokenised by jaxalign (TRL 1.x semantics, prompt
truncated to ``--prompt-length`` keeping its end) and right-padded to ``--length``; both sides
compute on the padding, which is masked.

FLOPs per step (matmul only), with ``R = 2 x pairs`` rows of ``T = --length`` tokens, ``L`` layers,
hidden ``H``, KV width ``K = kv_heads x head_dim``, intermediate ``I``, vocab ``V``:

* ``N_mm = L (2 H^2 + 2 H K + 3 H I) + H V``: the weights that multiply every token (Q, K, V, O,
  gate, up, down, and the LM head; the embedding lookup excluded);
* policy forward + backward ``6 N_mm R T``, plus attention ``12 L R T^2 H`` (QK^T and PV, full
  T x T, not halved for the causal mask);
* reference forward ``2 N_mm R T``, plus attention ``4 L R T^2 H``;
* not counted: element-wise work, the embedding gradient's scatter, the optimiser.

The count is the same nominal work for every side (the LM head on all ``R x T`` positions), so
MFU compares like with like even where an implementation skips work it does not need (jaxalign's
LM head on the completion's positions only, Tunix's ``logits_to_keep``).

MFU = FLOPs (policy + reference) / (median step time x peak); the JSON also gives MFU without the
reference forward. Tokens/s counts the policy's ``R x T`` token positions per step (the reference
forward runs over the same positions and is not counted again). Peak: the measured float32 matmul
throughput of this machine, the median of ``--peak-repeats`` interleaved ``--peak-size``-square
matmuls in JAX (jitted ``a @ b``) and in PyTorch (``torch.mm``); both are reported and MFU uses the
larger.

Timing: each side runs one first call (jaxalign and Tunix compile) and ``--warmup`` untimed steps, then
``--steps`` timed steps interleaved (jaxalign, trl, tunix, tunix, trl, jaxalign, ...: the order reverses each
round) so that load from other jobs hits all alike; the median is reported. Tunix's step is timed
here around the pipe round trip (its worker's own time is in the JSON too; they differ by
milliseconds). jaxalign steps end
at ``jax.block_until_ready`` of the new state and metrics, TRL steps after ``zero_grad`` (TRL's
``compute_loss`` already syncs on its logged metrics; on CUDA the step also ends with
``torch.cuda.synchronize()``).

Parity, before anything is timed: every side's first-step loss must be ln 2 (policy ==
reference) to ``LN2_ATOL`` and each peer's mean chosen log-prob must agree with jaxalign's to
``PARITY_RTOL``; otherwise the script reports no ratio and exits 1. As every step sees the same
batch, all loss sequences are also recorded (they should track each other).

Memory: on CPU, SmolLM2-135M (all 30 layers) at 4 pairs x 256 tokens peaks at about 10.7 GB resident for
the jaxalign side alone and 7.9 GB for the TRL side alone, so running both in one process needs about
19 GB free; ``--side`` runs one of them, ``--num-layers`` shrinks both.

On GPU (``jax`` and ``torch`` both see one; ``XLA_PYTHON_CLIENT_PREALLOCATE=false`` is set unless given, so
that XLA does not take 75% of the device before PyTorch starts): ``--matmul-precision highest`` (default) makes both
run true float32 matmuls (``jax_default_matmul_precision=highest``, torch TF32 off); ``high``
lets both use TF32 (torch ``set_float32_matmul_precision('high')``, JAX ``tensorfloat32``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
from jaxalign.benchmarking import peak_memory  # noqa: E402
from jaxalign.benchmarking import (  # noqa: E402
    PhaseTimer, check_counts, check_threads, interleave, machine_info, machine_summary, matmul_peak, pin_cores)
DATA = Path(os.environ.get("JAXALIGN_DATA", REPO.parent / "shared" / "data"))
HH = DATA / "hh-rlhf" / "helpful-base" / "test.jsonl.gz"
LN2 = math.log(2.0)
PARITY_RTOL = 1e-4  # relative difference of the first step's mean chosen log-prob (float32, highest precision)
# First-step loss vs ln 2: policy and reference are the same weights, but jaxalign's policy forward (under autodiff)
# and reference forward are compiled separately, so their summed log-probs -- of order 1e3 nats for random tokens --
# differ by float32 rounding, and beta * (that difference) moves the loss off ln 2 by up to ~1e-4.
LN2_ATOL = 1e-3
PEERS = ("trl", "tunix")
TUNIX_PYTHON = REPO / ".venv-tunix" / "bin" / "python"
LR = 1e-6
BETA = 0.1
TOTAL_STEPS = 10_000

CONFIGS = {
    "smollm2-135m": None,  # the packaged checkpoint's own config
    "llama-1b": {  # Llama-3.2-1B's shape, random weights
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 2048,
        "intermediate_size": 8192, "num_hidden_layers": 16, "num_attention_heads": 32, "num_key_value_heads": 8,
        "head_dim": 64, "vocab_size": 128256, "max_position_embeddings": 8192, "rms_norm_eps": 1e-5,
        "rope_theta": 500000.0, "tie_word_embeddings": True, "hidden_act": "silu", "attention_bias": False,
        "mlp_bias": False, "torch_dtype": "float32", "bos_token_id": 1, "eos_token_id": 2,
    },
}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="See the module docstring for the FLOP formula and how each side's step is driven.",
    )
    p.add_argument("--config", choices=sorted(CONFIGS), default="smollm2-135m",
                   help="model: smollm2-135m (the packaged checkpoint) or llama-1b (Llama-3.2-1B shape, random "
                        "weights; for GPU runs). Default: %(default)s")
    p.add_argument("--num-layers", type=int, default=None,
                   help="keep only the first N layers (smoke tests). Default: all")
    p.add_argument("--pairs", type=int, default=4, help="preference pairs per step. Default: %(default)s")
    p.add_argument("--length", type=int, default=256,
                   help="tokens per sequence (prompt + completion, padded length). Default: %(default)s")
    p.add_argument("--prompt-length", type=int, default=None,
                   help="prompt tokens shared by chosen and rejected (random tokens), or the prompt truncation "
                        "(hh). Default: half of --length")
    p.add_argument("--tokens", choices=("random", "hh"), default="random",
                   help=f"random ids (no padding) or HH-RLHF pairs ({HH}). Default: %(default)s")
    p.add_argument("--steps", type=int, default=3,
                   help="timed steps per implementation (interleaved); the median is reported. Default: %(default)s")
    p.add_argument("--warmup", type=int, default=0,
                   help="untimed steps per implementation after the first (compiling) call. Default: %(default)s")
    p.add_argument("--peers", default="trl",
                   help=f"comma-separated peers timed against jaxalign, from {', '.join(PEERS)}. Default: %(default)s")
    p.add_argument("--side", choices=("both",) + ("jaxalign",) + PEERS, default="both",
                   help="both: jaxalign and --peers (default); or one implementation alone (e.g. when memory "
                        "holds only one)")
    p.add_argument("--logits-memory-mb", type=float, default=None,
                   help="jaxalign's objective.logits_memory_mb: whole logits when they fit, else chunked and "
                        "rematerialised (0: always chunked). Default: the config's")
    p.add_argument("--tunix-python", type=Path, default=TUNIX_PYTHON,
                   help="the Python of Tunix's virtual environment (bash benchmarks/peers/setup_tunix.sh makes it). "
                        "Default: %(default)s")
    p.add_argument("--threads", type=int, default=None,
                   help="cores to use: pins the process to the first N cores (which sizes XLA's thread pool) and sets "
                        "torch.set_num_threads(N). Default: all cores")
    p.add_argument("--matmul-precision", choices=("highest", "high"), default="highest",
                   help="GPU float32 matmuls: highest = true float32 on both sides, high = TF32 on both. No effect on "
                        "CPU. Default: %(default)s")
    p.add_argument("--peak-size", type=int, default=2048,
                   help="side of the square float32 matmul timed for the peak. Default: %(default)s")
    p.add_argument("--peak-repeats", type=int, default=5,
                   help="timed matmuls per library for the peak (interleaved, median). Default: %(default)s")
    p.add_argument("--model-dir", type=Path, default=None,
                   help="where to write the Hugging Face checkpoint both sides load (reused if it holds config.json "
                        "with the same layer count). Default: a temporary directory")
    p.add_argument("--json", type=Path, default=REPO / "benchmarks" / "results" / "dpo_step.json",
                   help="where to write the results as JSON. Default: %(default)s")
    args = p.parse_args(argv)
    check_counts(p, args, ("num_layers", "pairs", "steps", "threads", "peak_size", "peak_repeats", "prompt_length"))
    if args.length < 8:
        p.error("--length must be >= 8")
    if args.prompt_length is None:
        args.prompt_length = args.length // 2
    if args.prompt_length >= args.length:
        p.error("--prompt-length must be < --length")
    if args.warmup < 0:
        p.error("--warmup must be >= 0")
    check_threads(p, args.threads)
    if args.tokens == "hh" and not HH.is_file():
        p.error(f"--tokens hh: {HH} is missing (set JAXALIGN_DATA)")
    peers = tuple(x for x in args.peers.split(",") if x)
    unknown = sorted(set(peers) - set(PEERS))
    if unknown:
        p.error(f"--peers: unknown {', '.join(unknown)}; choose from {', '.join(PEERS)}")
    args.sides = ("jaxalign",) + peers if args.side == "both" else (args.side,)
    if "tunix" in args.sides:
        if args.tokens != "random":
            p.error("--peers tunix: Tunix takes unpadded prompt/chosen/rejected rows; use --tokens random")
        if not args.tunix_python.is_file():
            p.error(f"--tunix-python {args.tunix_python} is missing: run bash benchmarks/peers/setup_tunix.sh")
    return args


# ------------------------------------------------------------------------------------ the model


def prepare_model(args, workdir: Path) -> Path:
    """A Hugging Face directory (config, float32 safetensors, tokenizer) that both sides load."""
    target = args.model_dir or workdir / "model"
    if (target / "config.json").is_file():
        have = json.loads((target / "config.json").read_text())["num_hidden_layers"]
        base = CONFIGS[args.config]
        want = args.num_layers or (base["num_hidden_layers"] if base else 30)
        if have != want:
            sys.exit(f"--model-dir {target} holds {have} layers, not {want}; use another directory")
        return target
    if args.config == "smollm2-135m":
        from jaxalign.models.decoders import load_decoder
        from jaxalign.models.export import export_decoder

        decoder = load_decoder("SmolLM2-135M-Instruct", num_layers=args.num_layers)
        export_decoder(decoder, decoder.params, target)
        return target
    return write_random_llama(dict(CONFIGS[args.config]), args.num_layers, target)


def write_random_llama(cfg: dict, num_layers: int | None, target: Path) -> Path:
    """Random float32 weights (normal, std 0.02; RMSNorm scales 1) under Llama's checkpoint names,
    with SmolLM2's tokenizer (49,152 tokens, fewer than the model's vocabulary: only ids below it occur)."""
    import numpy as np
    from safetensors.numpy import save_file

    from jaxalign.models.decoders import load_decoder_tokenizer, resolve_decoder_path
    from jaxalign.weights.gguf_io import GGUFCheckpoint

    if num_layers is not None:
        cfg["num_hidden_layers"] = num_layers
    h, inter, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    kv = cfg["num_key_value_heads"] * cfg["head_dim"]
    q = cfg["num_attention_heads"] * cfg["head_dim"]
    rng = np.random.default_rng(0)
    normal = lambda *shape: (rng.standard_normal(shape, dtype=np.float32) * 0.02)
    tensors = {"model.embed_tokens.weight": normal(v, h), "model.norm.weight": np.ones(h, np.float32)}
    for i in range(cfg["num_hidden_layers"]):
        pre = f"model.layers.{i}."
        tensors.update({
            pre + "self_attn.q_proj.weight": normal(q, h), pre + "self_attn.k_proj.weight": normal(kv, h),
            pre + "self_attn.v_proj.weight": normal(kv, h), pre + "self_attn.o_proj.weight": normal(h, q),
            pre + "mlp.gate_proj.weight": normal(inter, h), pre + "mlp.up_proj.weight": normal(inter, h),
            pre + "mlp.down_proj.weight": normal(h, inter),
            pre + "input_layernorm.weight": np.ones(h, np.float32),
            pre + "post_attention_layernorm.weight": np.ones(h, np.float32),
        })
    target.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(target / "model.safetensors"), metadata={"format": "pt"})
    del tensors
    (target / "config.json").write_text(json.dumps(cfg, indent=2))
    gguf = resolve_decoder_path("SmolLM2-135M-Instruct")
    load_decoder_tokenizer(gguf, v, GGUFCheckpoint(gguf)).save_pretrained(str(target))
    return target


def model_flops(cfg: dict, rows: int, length: int) -> dict:
    """Matmul FLOPs per step (see the module docstring)."""
    L, H, I, V = cfg["num_hidden_layers"], cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    head = cfg.get("head_dim") or H // cfg["num_attention_heads"]
    Q, K = cfg["num_attention_heads"] * head, cfg["num_key_value_heads"] * head
    n_mm = L * (2 * H * Q + 2 * H * K + 3 * H * I) + H * V
    tokens = rows * length
    attn_fwd = 4 * L * rows * length * length * Q
    policy = 6 * n_mm * tokens + 3 * attn_fwd
    reference = 2 * n_mm * tokens + attn_fwd
    return {
        "formula": "policy 6*N_mm*R*T + 12*L*R*T^2*H_q, reference 2*N_mm*R*T + 4*L*R*T^2*H_q; "
                   "N_mm = L*(2*H*H_q + 2*H*K + 3*H*I) + H*V (Q, K, V, O, gate, up, down, LM head), "
                   "H_q = heads*head_dim, K = kv_heads*head_dim, R = 2*pairs rows, T = length",
        "N_mm": n_mm, "R": rows, "T": length, "L": L, "H": H, "H_q": Q, "K": K, "I": I, "V": V,
        "policy": policy, "reference": reference, "total": policy + reference,
    }


# ------------------------------------------------------------------------------------ the batch


def make_batch(args, tokenizer, vocab: int) -> tuple[dict, str]:
    """jaxalign's ``{"input_ids", "attention_mask", "loss_mask"}`` int32 ``[pairs, 2, length]``."""
    import numpy as np

    B, T, P = args.pairs, args.length, args.prompt_length
    if args.tokens == "random":
        rng = np.random.default_rng(0)
        high = min(vocab, len(tokenizer))
        ids = np.empty((B, 2, T), np.int32)
        ids[:, :, :P] = rng.integers(0, high, (B, 1, P))
        ids[:, :, P:] = rng.integers(0, high, (B, 2, T - P))
        mask = np.ones((B, 2, T), np.int32)
        loss = np.zeros((B, 2, T), np.int32)
        loss[:, :, P:] = 1
        return {"input_ids": ids, "attention_mask": mask, "loss_mask": loss}, \
            f"random ids below {high}, prompt {P} + completion {T - P} tokens, no padding"
    from jaxalign.data.preference import load_preference
    from jaxalign.data.preference.collate import collate_preference
    from jaxalign.data.preference.tokens import tokenize_preference

    records = load_preference(str(HH), "paired", max_examples=4 * B)
    tokens = tokenize_preference(tokenizer, records, max_length=T, max_prompt_length=P)
    examples = tokens.examples[:B]
    if len(examples) < B:
        sys.exit(f"{HH}: only {len(examples)} usable pairs in the first {4 * B} rows")
    batch = collate_preference(examples, buckets=(T,), max_length=T, pad_id=tokens.pad_id)
    return batch, f"{HH}: first {B} pairs, prompt truncated to {P} tokens (keep end), padded to {T}"


# ------------------------------------------------------------------------------------ the sides


class JaxSide:
    """jaxalign's real training step (``Run.step_fn``) on a fixed batch."""

    def __init__(self, model_dir: Path, args):
        import jax

        from jaxalign.config import load_recipe
        from jaxalign.config.run import TrainConfig
        from jaxalign.ops.logprobs import logits_chunk
        from jaxalign.training.trainer import Run

        self.overrides = [
            f"model.name={model_dir}", "model.dtype=float32", "model.dropout=false", f"model.max_length={args.length}",
            "data.kind=preference", "data.path=builtin:prefs-mini", f"data.batch_size={args.pairs}",
            f"data.buckets={args.length}", f"data.max_prompt_length={args.length // 2}",
            "objective.name=dpo", f"objective.beta={BETA}", "objective.loss_type=sigmoid", "objective.reference=model",
            f"optim.lr={LR}", "optim.schedule=constant", "optim.weight_decay=0.0", "optim.clip_norm=1.0",
            "mesh.data=1", "eval.data=null", f"steps={TOTAL_STEPS}",
        ] + ([f"objective.logits_memory_mb={args.logits_memory_mb}"] if args.logits_memory_mb is not None else []) \
          + ([f"data.max_completion_length={args.length - args.prompt_length}"] if args.tokens == "random" else [])
        self.jax = jax
        self.cfg = load_recipe(TrainConfig, None, self.overrides)
        obj, vocab = self.cfg.objective, json.loads((model_dir / "config.json").read_text())["vocab_size"]
        width = args.length - 1 if self.cfg.data.max_completion_length is None else self.cfg.data.max_completion_length
        chunk = logits_chunk(2 * args.pairs, width, vocab, chunk=obj.logps_chunk, memory_mb=obj.logits_memory_mb)
        self.logits_mode = (f"whole [{2 * args.pairs}, {width}, {vocab}] logits (fit "
                            f"objective.logits_memory_mb={obj.logits_memory_mb:g})" if chunk >= width else
                            f"chunks of {chunk} positions, rematerialised (whole logits over "
                            f"objective.logits_memory_mb={obj.logits_memory_mb:g})")
        self.run = Run.build(self.cfg, devices=jax.devices()[:1])
        self.tokenizer = self.run.task.decoder.tokenizer
        self.losses: list[float] = []

    def set_batch(self, local: dict) -> None:
        from jaxalign.data.stream import to_global

        self.batch = to_global(local, self.run.batch_shardings)

    def start(self) -> None:
        self.step_fn = self.run.step_fn()
        self.state = self.run.init_state()

    def step(self) -> None:
        self.state, metrics = self.step_fn(self.state, self.batch, self.run.task.frozen)  # donated: rebind
        self.jax.block_until_ready((self.state, metrics))
        self.metrics = metrics
        self.losses.append(float(metrics["loss"]))

    def first_metrics(self) -> dict:
        return {k: float(v) for k, v in self.jax.device_get(self.metrics).items()}


class TrlSide:
    """TRL's DPOTrainer, stepped through the calls of ``Trainer``'s inner loop on a fixed batch."""

    def __init__(self, model_dir: Path, args, workdir: Path):
        import torch
        from datasets import Dataset
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from trl import DPOConfig, DPOTrainer

        self.torch = torch
        self.cuda = torch.cuda.is_available()
        config = DPOConfig(
            output_dir=str(workdir / "trl"), report_to="none", save_strategy="no", logging_steps=TOTAL_STEPS,
            per_device_train_batch_size=args.pairs, learning_rate=LR, lr_scheduler_type="constant", warmup_steps=0,
            weight_decay=0.0, max_grad_norm=1.0, bf16=False, fp16=False, gradient_checkpointing=False,
            use_cpu=not self.cuda, disable_dropout=True, beta=BETA, loss_type=["sigmoid"], max_length=args.length,
            max_steps=TOTAL_STEPS, disable_tqdm=True,
        )
        tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
        load = lambda: AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
        # DPOTrainer requires a train_dataset; the timed steps use the fixed batch below instead.
        dummy = Dataset.from_list([{"prompt": "Hi", "chosen": " Hello.", "rejected": " Go away."}] * args.pairs)
        self.trainer = DPOTrainer(model=load(), ref_model=load(), args=config, train_dataset=dummy,
                                  processing_class=tokenizer)
        self.trainer.create_optimizer_and_scheduler(num_training_steps=TOTAL_STEPS)
        self.trainer.current_gradient_accumulation_steps = 1  # what Trainer's inner loop sets for each step
        self.model = self.trainer.model
        self.optim = str(getattr(config.optim, "value", config.optim))
        self.losses: list[float] = []

    def set_batch(self, local: dict) -> None:
        import numpy as np

        torch = self.torch
        to_rows = lambda x: np.concatenate([x[:, 0], x[:, 1]], axis=0).astype(np.int64)  # chosen rows, then rejected
        device = self.trainer.args.device
        self.inputs = {"input_ids": torch.from_numpy(to_rows(local["input_ids"])).to(device),
                       "attention_mask": torch.from_numpy(to_rows(local["attention_mask"])).to(device),
                       "completion_mask": torch.from_numpy(to_rows(local["loss_mask"])).to(device)}

    def start(self) -> None:
        pass

    def step(self) -> None:
        t = self.trainer
        loss = t.training_step(self.model, dict(self.inputs))  # compute_loss + backward
        if t.args.max_grad_norm > 0:
            t._clip_grad_norm(self.model)
        t.optimizer.step()
        t.lr_scheduler.step()
        self.model.zero_grad()
        if self.cuda:
            self.torch.cuda.synchronize()
        self.losses.append(float(loss))

    def first_metrics(self) -> dict:
        return {k: float(v[0]) for k, v in self.trainer._metrics["train"].items()}


class TunixSide:
    """Tunix's DPOTrainer in its own virtual environment: ``benchmarks/peers/tunix_dpo.py`` as a
    long-lived worker, one step per request over a pipe."""

    def __init__(self, model_dir: Path, args, workdir: Path):
        import subprocess

        self.model_dir, self.args, self.workdir = model_dir, args, workdir
        self.proc = subprocess.Popen([str(args.tunix_python), str(REPO / "benchmarks" / "peers" / "tunix_dpo.py")],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
        self.losses: list[float] = []
        self.worker_times: list[float] = []

    def ask(self, **msg) -> dict:
        self.proc.stdin.write(json.dumps(msg) + "\n")
        line = self.proc.stdout.readline()
        reply = json.loads(line) if line else {"ok": False, "error": f"worker exited ({self.proc.wait()})"}
        if not reply.pop("ok"):
            sys.exit(f"Tunix worker: {reply['error']} (its traceback is on stderr above)")
        return reply

    def set_batch(self, local: dict) -> None:
        import numpy as np

        path = self.workdir / "tunix_batch.npz"
        np.savez(path, **local)
        info = self.ask(cmd="init", model_dir=str(self.model_dir), batch=str(path),
                        prompt_length=self.args.prompt_length, lr=LR, beta=BETA)
        self.versions, self.setup_s = info["versions"], info["setup_s"]

    def start(self) -> None:
        pass

    def step(self) -> None:
        self.last = self.ask(cmd="step")
        self.losses.append(self.last["loss"])
        self.worker_times.append(self.last["seconds"])

    def first_metrics(self) -> dict:
        return {"loss": self.last["loss"], "logps/chosen": self.last["logps_chosen"],
                "logps/rejected": self.last["logps_rejected"]}

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
            self.proc.stdin.close()
            self.proc.wait(timeout=60)


SIDES = {"trl": TrlSide, "tunix": TunixSide}


# ------------------------------------------------------------------------------------ timing


def render(console, r: dict) -> None:
    from rich.table import Table

    f = r["flops_per_step"]
    where = r["machine"]["torch_device"] if r["machine"]["torch_device"] != "cpu" else \
        f"CPU ({r['machine']['cores_used']} cores)"
    table = Table(title=f"DPO training step, {r['model']} ({f['L']} layers), float32, {where}: "
                        f"{r['pairs']} pairs x 2 x {r['length']} tokens")
    for column in ("implementation", "median step s", "min-max s", "first call s", "tokens/s", "MFU",
                   "MFU w/o ref", "jaxalign / this", "loss (step 1, last)"):
        table.add_column(column, justify="left" if column == "implementation" else "right", no_wrap=True)
    for name, m in r["implementations"].items():
        ratio = r["ratios_jaxalign_over"].get(name) if name != "jaxalign" else 1.0
        table.add_row(name, f"{m['median_step_s']:.3f}", f"{min(m['times_s']):.3f}-{max(m['times_s']):.3f}",
                      f"{m['first_call_s']:.1f}", f"{m['tokens_per_s']:.0f}", f"{100 * m['mfu']:.1f}%",
                      f"{100 * m['mfu_policy_only']:.1f}%", "" if ratio is None else f"{ratio:.2f}x",
                      f"{m['losses'][0]:.6f}, {m['losses'][-1]:.6f}")
    console.print(table)
    pk = r["matmul_peak"]
    console.print(f"matmul peak ({pk['size']}^3 float32, median): JAX {pk['jax_gflops']:.1f} GFLOP/s, "
                  f"PyTorch {pk['torch_gflops']:.1f} GFLOP/s; MFU uses {pk['peak_gflops']:.1f}. FLOPs per step "
                  f"{f['total'] / 1e9:.1f} G = policy fwd+bwd {f['policy'] / 1e9:.1f} G + reference fwd "
                  f"{f['reference'] / 1e9:.1f} G (N_mm {f['N_mm'] / 1e6:.1f} M); tokens/s counts the policy's "
                  f"{f['R'] * f['T']} positions per step")
    for name, p in (r.get("parity") or {}).items():
        console.print(f"parity with {name}, step 1: loss jaxalign {p['loss_jaxalign']:.6f}, {name} "
                      f"{p['loss_peer']:.6f} (ln 2 {LN2:.6f}); logps/chosen jaxalign {p['logps_chosen_jaxalign']:.4f}, "
                      f"{name} {p['logps_chosen_peer']:.4f} (relative difference {p['relative_difference']:.1e}, "
                      f"limit {p['rtol']:.0e}): {'ok' if p['ok'] else 'FAILED'}")
    if r.get("jaxalign_logits"):
        console.print(f"jaxalign LM head: {r['jaxalign_logits']}")
    console.print(f"batch: {r['tokens']}; {machine_summary(r['machine'])}")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    pin_cores(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # On a GPU both libraries share one device: stop XLA from grabbing 75% of its memory up front.
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    t_start = time.perf_counter()

    import jax
    import torch
    from rich.console import Console
    from transformers.utils import logging as transformers_logging

    console = Console(width=None if sys.stdout.isatty() else 150)
    transformers_logging.disable_progress_bar()
    transformers_logging.set_verbosity_error()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if jax.default_backend() != "cpu" or torch.cuda.is_available():  # CPU float32 matmuls have no TF32 mode
        if args.matmul_precision == "highest":
            jax.config.update("jax_default_matmul_precision", "highest")
            torch.backends.cuda.matmul.allow_tf32 = False
            torch.set_float32_matmul_precision("highest")
        else:
            jax.config.update("jax_default_matmul_precision", "tensorfloat32")
            torch.set_float32_matmul_precision("high")
    torch.manual_seed(0)
    phase = PhaseTimer()

    with tempfile.TemporaryDirectory(prefix="dpo_step_") as tmp:
        workdir = Path(tmp)
        console.print(f"model: {args.config}" + (f", {args.num_layers} layers" if args.num_layers else "") + " ...")
        model_dir = prepare_model(args, workdir)
        hf_config = json.loads((model_dir / "config.json").read_text())
        phase("model")
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
        local, token_source = make_batch(args, tokenizer, hf_config["vocab_size"])
        console.print(f"batch: {token_source}")
        sides: dict[str, object] = {}
        for name in args.sides:
            sides[name] = JaxSide(model_dir, args) if name == "jaxalign" else SIDES[name](model_dir, args, workdir)
        for side in sides.values():
            side.set_batch(local)
        phase("setup")
        load_before = os.getloadavg()

        console.print(f"matmul peak: {args.peak_size}^3 float32 x {args.peak_repeats} ...")
        peak = matmul_peak(args.peak_size, args.peak_repeats)
        phase("peak")

        console.print("first step on each side (jaxalign compiles) ...")
        first, first_metrics = {}, {}
        for name, side in sides.items():
            side.start()
            start = time.perf_counter()
            side.step()
            first[name] = time.perf_counter() - start
            first_metrics[name] = side.first_metrics()
        phase("first_calls")
        parity = {}
        for name in sides.keys() - {"jaxalign"} if "jaxalign" in sides else ():
            lj, lt = first_metrics["jaxalign"]["loss"], sides[name].losses[0]
            cj, ct = first_metrics["jaxalign"]["logps/chosen"], first_metrics[name]["logps/chosen"]
            p = {"loss_jaxalign": lj, "loss_peer": lt, "logps_chosen_jaxalign": cj, "logps_chosen_peer": ct,
                 "relative_difference": abs(cj - ct) / abs(ct), "rtol": PARITY_RTOL, "ln2_atol": LN2_ATOL}
            p["ok"] = abs(lj - LN2) <= LN2_ATOL and abs(lt - LN2) <= LN2_ATOL and p["relative_difference"] <= PARITY_RTOL
            parity[name] = p
        for _ in range(args.warmup):
            for side in sides.values():
                side.step()
        phase("warmup")
        console.print(f"{args.steps} timed steps each, interleaved ...")
        times = interleave({name: side.step for name, side in sides.items()}, args.steps)
        phase("timed_steps")
        if "tunix" in sides:
            sides["tunix"].close()
    load_after = os.getloadavg()

    flops = model_flops(hf_config, 2 * args.pairs, args.length)
    peak_flops = peak["peak_gflops"] * 1e9
    tokens = 2 * args.pairs * args.length
    impls = {}
    for name, side in sides.items():
        med = statistics.median(times[name])
        impls[name] = {"times_s": times[name], "median_step_s": med, "first_call_s": first[name],
                       "tokens_per_s": tokens / med, "pairs_per_s": args.pairs / med,
                       "achieved_gflops": flops["total"] / med / 1e9, "mfu": flops["total"] / (med * peak_flops),
                       "mfu_policy_only": flops["policy"] / (med * peak_flops), "losses": side.losses,
                       "first_step_metrics": first_metrics[name]}
    if "trl" in impls:
        impls["trl"]["optimizer"] = sides["trl"].optim
    if "tunix" in impls:
        impls["tunix"].update(optimizer="optax.chain(clip_by_global_norm(1.0), adamw)",
                              worker_times_s=sides["tunix"].worker_times, versions=sides["tunix"].versions,
                              setup_s=sides["tunix"].setup_s, rope_theta_patched=hf_config["rope_theta"])
    machine = machine_info("torch", "transformers", "trl")
    parity_ok = all(p["ok"] for p in parity.values())
    ratios = {name: impls["jaxalign"]["tokens_per_s"] / m["tokens_per_s"]
              for name, m in impls.items() if name != "jaxalign" and "jaxalign" in impls and parity_ok}
    machine["load_average_1_5_15min"] = {"before": load_before, "after": load_after}
    results = {
        "benchmark": "dpo_step",
        "model": args.config,
        "command": "python " + " ".join([str(Path(sys.argv[0]))] + (list(argv) if argv is not None else sys.argv[1:])),
        "hf_config": hf_config,
        "objective": f"DPO sigmoid, beta {BETA}, reference model in the step; AdamW lr {LR} constant, clip 1.0",
        "dtype": "float32",
        "matmul_precision": args.matmul_precision,
        "machine": machine,
        "pairs": args.pairs,
        "length": args.length,
        "prompt_length": args.prompt_length,
        "tokens": token_source,
        "real_tokens": int(local["attention_mask"].sum()),
        "tokens_per_step": tokens,
        "tokens_counted": "policy positions 2 * pairs * length per step; the reference forward over the same "
                          "positions is in the FLOPs (MFU) but not counted again in tokens/s",
        "steps": args.steps,
        "warmup": args.warmup,
        "jaxalign_config_overrides": ([o for o in sides["jaxalign"].overrides if not o.startswith("model.name=")]
                                      if "jaxalign" in sides else None),
        "jaxalign_logits": sides["jaxalign"].logits_mode if "jaxalign" in sides else None,
        "flops_per_step": flops,
        "matmul_peak": peak,
        "implementations": impls,
        "ratios_jaxalign_over": ratios,  # empty unless every parity check passed
        "ratio_jaxalign_over_trl": ratios.get("trl"),
        "ratio_jaxalign_over_tunix": ratios.get("tunix"),
        "parity": parity,
        "phase_s": phase.seconds,
        "max_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6,  # the whole process, both sides
        "wall_s": time.perf_counter() - t_start,
    }
    results["memory"] = peak_memory(**{f"{n}_step": (s.step_fn, (s.state, s.batch, s.run.task.frozen)) for n, s in sides.items() if n == "jaxalign"})
    render(console, results)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2) + "\n")
    console.print(f"peak resident memory of this process: {results['max_rss_gb']:.1f} GB")
    console.print(f"results written to {args.json} ({results['wall_s']:.0f} s in all: "
                  + ", ".join(f"{k} {v:.0f}" for k, v in phase.seconds.items()) + ")")
    if not parity_ok:
        console.print("[bold red]parity check failed[/]: the steps do not compute the same thing; no ratio reported")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
