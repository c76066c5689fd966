"""Data selection against random at the same size: DPO (``dpo_small``) on the first 96 HH-RLHF
helpful-base test pairs, on a quarter of them chosen by ``jaxalign select`` (Deita, entropy) and
on a random quarter, each for the recipe's 24 steps; held-out implicit-reward accuracy on pairs
2000-2047. The full-data row is ``dpo_small``'s own result (``run_preference_small.py dpo_small``).

    python experiments/run_selection_small.py                 # deita, entropy, random
    python experiments/run_selection_small.py --table-only
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
METHODS = ["deita", "entropy", "random"]
COLUMNS = [("eval/rewards/accuracies", "reward acc"), ("eval/rewards/margins", "margin"),
           ("eval/accuracy/logps", "acc/sum")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("methods", nargs="*", default=METHODS)
    parser.add_argument("--data", default=os.environ.get("JAXALIGN_DATA", str(HERE.parent.parent / "shared" / "data")))
    parser.add_argument("--fraction", type=float, default=0.25)
    parser.add_argument("--table-only", action="store_true")
    args = parser.parse_args()
    out = HERE / "results"
    if not args.table_only:
        for method in args.methods:
            run(method, args, out)
    rows = [json.loads((out / f"select_{m}.json").read_text()) for m in args.methods]
    full = out / "dpo_small.json"
    if full.is_file():
        r = json.loads(full.read_text())
        rows.insert(0, {"method": "all 96 pairs", "rows": 96, "before": r["before"], "after": r["after"],
                        "minutes": r["minutes"]})
    print("\n| data | pairs | " + " | ".join(label for _, label in COLUMNS) + " | minutes |")
    print("|---|---|" + "---|" * (len(COLUMNS) + 1))
    for r in rows:
        cells = [f"{r['before'][k]:.3f} → {r['after'][k]:.3f}" for k, _ in COLUMNS]
        print(f"| {r['method']} | {r['rows']} | " + " | ".join(cells) + f" | {r['minutes']:.1f} |")


def run(method: str, args, out: Path) -> None:
    from jaxalign.config import load_recipe
    from jaxalign.config.run import TrainConfig
    from jaxalign.training.trainer import train

    hh = f"{args.data}/hh-rlhf/helpful-base/test.jsonl.gz"
    selected = Path(f"runs/select/{method}.jsonl")
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "jaxalign.cli", "select", "--data", hh, "--max-examples", "96",
                    "--method", method, "--fraction", str(args.fraction), "--max-length", "512",
                    "--output", str(selected)], check=True)
    selecting = (time.perf_counter() - start) / 60
    cfg = load_recipe(TrainConfig, HERE / "dpo_small.yaml",
                      [f"log.dir=runs/select_{method}", "checkpoint.dir=null", "export=null", f"data.path={selected}",
                       "data.max_examples=null"])
    cfg = dataclasses.replace(cfg, eval=dataclasses.replace(cfg.eval, data=hh))
    start = time.perf_counter()
    summary = train(cfg)
    evals = summary["eval_metrics"]
    result = {"method": f"{method} {args.fraction:.0%}", "rows": len(selected.read_text().splitlines()),
              "before": evals[min(evals)], "after": evals[max(evals)], "select_minutes": selecting,
              "minutes": (time.perf_counter() - start) / 60,
              "command": f"python experiments/run_selection_small.py {method}"}
    out.mkdir(exist_ok=True)
    (out / f"select_{method}.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
