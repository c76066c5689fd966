"""Runs the small (CPU) preference recipes and records held-out metrics before and after each.

Each recipe evaluates at step 0 and at its last step on held-out HH-RLHF pairs (``eval`` in
the recipe): implicit-reward accuracy and margin against the initial model, and the
reference-free accuracies (summed and per-token log-probs), which are the meaningful
"before" figures since every implicit reward is 0 at step 0. Writes
``experiments/results/<recipe>.json`` and prints the table ``experiments/README.md`` records.

    python experiments/run_preference_small.py                 # every small preference recipe
    python experiments/run_preference_small.py dpo_small kto_small
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
# dpo_small exports the aligned teacher that dckd_small and adpa_small distil.
RECIPES = ["dpo_small", "ipo_small", "simpo_small", "orpo_small", "kto_small", "asft_small", "d2o_small", "poft_small",
           "dckd_small", "adpa_small"]
COLUMNS = [("eval/accuracy/length_normalised", "acc/token"), ("eval/accuracy/logps", "acc/sum"),
           ("eval/rewards/accuracies", "reward acc"), ("eval/rewards/margins", "margin")]


def self_samples(cfg, source: str) -> None:
    """D2O's samples, ADPA's student responses: the recipe's own model continues the first 96
    HH-RLHF prompts (the command in ``d2o_small.yaml``'s and ``adpa_small.yaml``'s headers)."""
    from jaxalign.inference.self_samples import write_self_samples
    from jaxalign.models.decoders import load_decoder

    write_self_samples(load_decoder(cfg.model.name), source, cfg.data.path, num_samples=cfg.data.num_samples or 1,
                       max_new_tokens=48, max_examples=96, max_prompt_length=cfg.data.max_prompt_length,
                       chat_template=cfg.data.chat_template)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("recipes", nargs="*", default=RECIPES, help=f"recipe names (default: {' '.join(RECIPES)})")
    parser.add_argument("--data", default=os.environ.get("JAXALIGN_DATA", str(HERE.parent.parent / "shared" / "data")),
                        help="folder with hh-rlhf/ (default: $JAXALIGN_DATA or ../shared/data)")
    parser.add_argument("--steps", type=int, default=None, help="override every recipe's step count")
    parser.add_argument("--table-only", action="store_true", help="print the table from existing result files")
    args = parser.parse_args()
    out_dir = HERE / "results"
    if len(args.recipes) > 1 and not args.table_only:
        # One process per recipe: each loads its own models, and a process's exit returns all of it.
        for name in args.recipes:
            extra = ["--steps", str(args.steps)] if args.steps else []
            subprocess.run([sys.executable, __file__, name, "--data", args.data, *extra], check=True)
        args.table_only = True
    if args.table_only:
        print_table([json.loads((out_dir / f"{name}.json").read_text()) for name in args.recipes])
        return
    run(args.recipes[0], args, out_dir)


def run(name: str, args, out_dir: Path) -> None:
    """Trains one recipe (evaluating at its first and last step) and writes its result file."""
    from jaxalign.config import load_recipe, to_dict
    from jaxalign.config.run import TrainConfig
    from jaxalign.training.trainer import train

    overrides = [f"log.dir=runs/{name}", "checkpoint.dir=null"]
    if args.steps:
        overrides += [f"steps={args.steps}", f"eval.every={args.steps}"]
    cfg = load_recipe(TrainConfig, HERE / f"{name}.yaml", overrides)
    local = lambda p: p.replace("../shared/data", args.data) if p else p
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, path=local(cfg.data.path)),
                              eval=dataclasses.replace(cfg.eval, data=local(cfg.eval.data)))
    start = time.perf_counter()
    if cfg.data.kind in ("negatives", "sft") and not Path(cfg.data.path).exists():
        self_samples(cfg, local("../shared/data/hh-rlhf/helpful-base/test.jsonl.gz"))
    summary = train(cfg)
    minutes = (time.perf_counter() - start) / 60
    evals = summary["eval_metrics"]
    before, after = evals[min(evals)], evals[max(evals)]
    result = {"recipe": name, "config": to_dict(cfg), "before": before, "after": after,
              "losses": summary["losses"], "minutes": minutes,
              "command": f"python experiments/run_preference_small.py {name}"}
    out_dir.mkdir(exist_ok=True)
    (out_dir / f"{name}.json").write_text(json.dumps(result, indent=2))
    print_table([result])


def print_table(rows: list[dict]) -> None:
    print("\n| recipe | " + " | ".join(label for _, label in COLUMNS) + " | minutes |")
    print("|---|" + "---|" * (len(COLUMNS) + 1))
    for r in rows:
        cells = [f"{r['before'][k]:.3f} → {r['after'][k]:.3f}" for k, _ in COLUMNS]
        print(f"| {r['recipe']} | " + " | ".join(cells) + f" | {r['minutes']:.1f} |")


if __name__ == "__main__":
    main()
