"""Runs the small (CPU) recipes and measures STS-B test before and after each.

For every recipe: evaluate the initial encoder (the same model the recipe trains, truncated
layers included) on STS-B test, train with ``jaxalign train``'s engine, evaluate the exported
result on STS-B test, and write ``experiments/results/<recipe>.json``; finally print the
table that ``experiments/README.md`` records.

    python experiments/run_small.py                      # every small recipe
    python experiments/run_small.py simcse_unsup_small   # some of them
    python experiments/run_small.py defsent_small --set objective.entry_pooling=amp   # with overrides
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RECIPES = ["simcse_unsup_small", "simcse_sup_small", "whitenedcse_small", "2dmse_small", "dse_small", "cosent_small"]


def stsb_test(model, num_layers, data_dir: Path) -> float:
    from jaxalign.data.sts import load_sts
    from jaxalign.eval.sts import evaluate_sts
    from jaxalign.inference.embed import Embedder
    from jaxalign.models import load_encoder

    encoder = load_encoder(model, num_layers=num_layers)
    (result,) = evaluate_sts(Embedder(encoder, batch_size=64), load_sts(data_dir / "sts-b" / "sts-test.csv"))
    return result.all


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("recipes", nargs="*", default=RECIPES, help=f"recipe names (default: {' '.join(RECIPES)})")
    parser.add_argument("--data", default=os.environ.get("JAXALIGN_DATA", str(HERE.parent.parent / "shared" / "data")),
                        help="folder with sts-b/, snli/, wiki/ (default: $JAXALIGN_DATA or ../shared/data)")
    parser.add_argument("--steps", type=int, default=None, help="override every recipe's step count")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="an override for every recipe (repeatable), e.g. objective.entry_pooling=amp; the "
                             "results file's name gets the values")
    args = parser.parse_args()

    from jaxalign.config import load_recipe
    from jaxalign.config.run import TrainConfig
    from jaxalign.training.trainer import train

    data = Path(args.data)
    out_dir = HERE / "results"
    out_dir.mkdir(exist_ok=True)
    rows = []
    for name in args.recipes:
        overrides = [f"log.dir=runs/{name}", "checkpoint.dir=null", f"export=runs/{name}/hf"]
        if args.steps:
            overrides.append(f"steps={args.steps}")
        overrides += args.set
        tag = name + "".join(f"_{o.rsplit('.', 1)[-1]}" for o in args.set)  # defsent_small_entry_pooling=amp
        cfg = load_recipe(TrainConfig, HERE / f"{name}.yaml", overrides)
        # Recipes name ../shared/data paths; point them at --data.
        local = lambda p: p.replace("../shared/data", str(data)) if p else p
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, path=local(cfg.data.path)),
                                  eval=dataclasses.replace(cfg.eval, data=local(cfg.eval.data)))
        before = stsb_test(cfg.model.name, cfg.model.num_layers, data)
        start = time.perf_counter()
        summary = train(cfg)
        minutes = (time.perf_counter() - start) / 60
        after = stsb_test(cfg.export, None, data)
        row = {"recipe": name, "overrides": args.set, "stsb_test_before": before, "stsb_test_after": after,
               "steps": cfg.steps, "batch_size": cfg.data.batch_size, "minutes": minutes,
               "examples_per_s": summary["examples_per_s"],
               "stsb_dev": summary["eval"], "first_loss": summary["losses"][min(summary["losses"])],
               "last_loss": summary["losses"][max(summary["losses"])], "skipped": summary["skipped"]}
        if "rounds" in summary:
            row["rounds"] = [{"round": r["round"], "stsb_dev": r["eval"]} for r in summary["rounds"]]
        (out_dir / f"{tag}.json").write_text(json.dumps(row, indent=2))
        rows.append(row)
        print(f"{tag}: STS-B test {before:.2f} -> {after:.2f} ({minutes:.1f} min)", flush=True)

    print("\n| recipe | steps x batch | STS-B test before | after | minutes (2-core CPU) | command |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        sets = "".join(f" --set {o}" for o in r["overrides"])
        print(f"| {r['recipe']}{sets} | {r['steps']} x {r['batch_size']} | {r['stsb_test_before']:.2f} | "
              f"{r['stsb_test_after']:.2f} | {r['minutes']:.1f} | "
              f"`python experiments/run_small.py {r['recipe']}{sets}` |")


if __name__ == "__main__":
    main()
