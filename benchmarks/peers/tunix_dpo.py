"""Tunix's DPO trainer step as a long-lived worker, driven one step at a time over a pipe.

Runs in its own virtual environment (``.venv-tunix``, made by ``setup_tunix.sh`` beside this file:
Tunix pins its own JAX and Flax), never imports jaxalign, and is started by
``benchmarks/dpo_step.py --peers tunix`` so that its steps alternate with jaxalign's (and TRL's).

What it runs: Tunix's Llama 3 (``tunix.models.llama3``) loaded from the same exported Hugging Face
directory as the other sides (``params.create_model_from_safe_tensors``, float32), a second copy as
the reference, and ``tunix.sft.dpo.dpo_trainer.DPOTrainer`` (sigmoid DPO, ``beta``, no label
smoothing) with ``optax.chain(clip_by_global_norm(1.0), adamw(lr, b1 0.9, b2 0.999, eps 1e-8,
weight_decay 0))`` -- jaxalign's optimiser. One step is one ``trainer.train([batch])`` with the
trainer managed externally (as Tunix's RL loops drive it): ``_prepare_inputs`` (the reference
forward, Tunix's jitted ``compute_logps``), the jitted train step (policy forward + backward,
``optimizer.update``), metric buffering; it ends when the updated parameters are ready.

Tunix 0.1.7's Llama 3 ignores ``ModelConfig.rope_theta`` (``Attention.block`` calls ``apply_rope``
with its default 1e6); SmolLM2 uses 1e5, so this worker rebinds ``model.apply_rope`` to pass the
checkpoint's ``rope_theta``: without it the log-probs differ from every other implementation.

Protocol: one JSON object per line on stdin, one reply per line on the original stdout (everything
Tunix or absl prints goes to stderr):

* ``{"cmd": "init", "model_dir", "batch" (.npz with jaxalign's int32 [pairs, 2, length]
  input_ids/attention_mask/loss_mask), "prompt_length", "lr", "beta"}`` ->
  ``{"ok": true, "versions": {...}, "setup_s"}``;
* ``{"cmd": "step"}`` -> ``{"ok": true, "seconds", "loss", "logps_chosen", "logps_rejected"}``
  (the step's own wall time, measured here; the loss and mean summed log-probs of its batch);
* ``{"cmd": "quit"}`` or end of input: exit.

A failure replies ``{"ok": false, "error": ...}`` and exits.
"""

from __future__ import annotations

import functools
import json
import os
import sys
import time
import traceback
from pathlib import Path


def model_config(hf: dict):
    """Tunix's ``ModelConfig`` for a Hugging Face Llama ``config.json``, float32, no remat."""
    from tunix.models.llama3 import model as model_lib

    heads = hf["num_attention_heads"]
    return model_lib.ModelConfig(
        num_layers=hf["num_hidden_layers"], vocab_size=hf["vocab_size"], embed_dim=hf["hidden_size"],
        hidden_dim=hf["intermediate_size"], num_heads=heads, head_dim=hf.get("head_dim") or hf["hidden_size"] // heads,
        num_kv_heads=hf["num_key_value_heads"], rope_theta=hf["rope_theta"], norm_eps=hf["rms_norm_eps"],
        weight_tying=bool(hf.get("tie_word_embeddings", False)))


def patch_rope(theta: float) -> None:
    """Make Tunix's attention use the checkpoint's RoPE base (see the module docstring)."""
    from tunix.models.llama3 import model as model_lib

    original = getattr(model_lib.apply_rope, "func", model_lib.apply_rope)
    model_lib.apply_rope = functools.partial(original, rope_theta=theta)


class Worker:
    def init(self, model_dir: str, batch: str, prompt_length: int, lr: float, beta: float) -> dict:
        start = time.perf_counter()
        import flax
        import jax
        import numpy as np
        import optax
        import tunix
        from tunix.models.llama3 import params as params_lib
        from tunix.sft.dpo import dpo_trainer

        self.jax = jax
        hf = json.loads(Path(model_dir, "config.json").read_text())
        patch_rope(float(hf["rope_theta"]))
        cfg = model_config(hf)
        load = lambda: params_lib.create_model_from_safe_tensors(model_dir, cfg, mesh=None, dtype=jax.numpy.float32)
        self.policy, reference = load(), load()
        optimizer = optax.chain(optax.clip_by_global_norm(1.0),
                                optax.adamw(lr, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0))
        config = dpo_trainer.DPOTrainingConfig(eval_every_n_steps=10**9, max_steps=None, algorithm="dpo", beta=beta,
                                               label_smoothing=0.0, pbar_description=None)
        self.trainer = dpo_trainer.DPOTrainer(self.policy, reference, optimizer, config)
        self.trainer.is_managed_externally = True  # one train() call per step: no skipping, no close()
        with np.load(batch) as z:
            ids, mask = z["input_ids"], z["attention_mask"]
        p = prompt_length
        if not (np.all(ids[:, 0, :p] == ids[:, 1, :p]) and np.all(mask == 1)):
            raise ValueError("the Tunix side takes unpadded pairs sharing their first prompt_length tokens "
                             "(benchmarks/dpo_step.py --tokens random)")
        # Tunix's layout: prompt (left-padded) then each completion (right-padded); no padding here.
        self.batch = dpo_trainer.TrainingInput(
            prompt_ids=ids[:, 0, :p], prompt_mask=mask[:, 0, :p], chosen_ids=ids[:, 0, p:],
            chosen_mask=mask[:, 0, p:], rejected_ids=ids[:, 1, p:], rejected_mask=mask[:, 1, p:])
        versions = {"tunix": getattr(tunix, "__version__", None), "jax": jax.__version__, "flax": flax.__version__,
                    "optax": optax.__version__, "numpy": np.__version__}
        if versions["tunix"] is None:
            from importlib.metadata import version
            versions["tunix"] = version("google-tunix")
        return {"versions": versions, "setup_s": time.perf_counter() - start}

    def step(self) -> dict:
        from flax import nnx

        start = time.perf_counter()
        self.trainer.train([self.batch])
        self.jax.block_until_ready(nnx.state(self.policy, nnx.Param))
        seconds = time.perf_counter() - start
        buf = self.trainer._prev_buffered_train_metrics or self.trainer._buffered_train_metrics  # this step's
        last = lambda name: float(buf.additional_metrics[name][0][-1])
        return {"seconds": seconds, "loss": float(buf.losses[-1]), "logps_chosen": last("log_probs/chosen"),
                "logps_rejected": last("log_probs/rejected")}


def main() -> int:
    out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # whatever Tunix, absl or XLA print goes to stderr; stdout carries only replies
    sys.stdout = sys.stderr
    worker = Worker()
    for line in sys.stdin:
        msg = json.loads(line)
        cmd = msg.pop("cmd")
        if cmd == "quit":
            break
        try:
            reply = {"ok": True, **getattr(worker, cmd)(**msg)}
        except Exception as e:  # noqa: BLE001 -- any failure is reported to the driver, which stops
            traceback.print_exc()
            out.write(json.dumps({"ok": False, "error": f"{type(e).__name__}: {e}"}) + "\n")
            return 1
        out.write(json.dumps(reply) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
