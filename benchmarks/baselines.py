"""Train the platform's baselines (DIN, DeepFM, MMoE) on real data and print their test metrics.

    python benchmarks/baselines.py                        # ml-latest-small and taobao-head, every model
    python benchmarks/baselines.py --datasets ml-latest-small --models din --set epochs=1

Each run is `tfrec-zoo train training/experiments/MODEL-DATASET.yaml` into benchmarks/out/runs/; the table gives
the test split's AUC, GAUC and logloss of the first (main) task, and the JSON every metric.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from training.experiment import load_experiment  # noqa: E402
from training.trainer import train  # noqa: E402

EXPERIMENTS = Path(__file__).resolve().parents[1] / "training" / "experiments"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", nargs="+", default=["ml-latest-small", "taobao-head"])
    ap.add_argument("--models", nargs="+", default=["din", "deepfm", "mmoe"])
    ap.add_argument("--set", action="append", default=[], help="override every experiment's key")
    ap.add_argument("--out", default="benchmarks/out/baselines")
    args = ap.parse_args()
    out = Path(args.out)
    rows = []
    for dataset in args.datasets:
        for model in args.models:
            path = EXPERIMENTS / f"{model}-{dataset}.yaml"
            if not path.exists():
                print(f"skip {model} on {dataset}: no {path.name}", file=sys.stderr)
                continue
            exp = load_experiment(path, args.set)
            run_dir = out / "runs" / f"{exp.name}-{time.strftime('%Y%m%d-%H%M%S')}"
            result = train(exp, run_dir, verbose=0, log=lambda *a: print(*a, file=sys.stderr))
            task = next(iter(result.metrics["test"]["overall"]))
            m = result.metrics["test"]["overall"][task]
            rows.append({"dataset": dataset, "model": model, "task": task, "auc": m.get("auc"),
                         "gauc": m.get("gauc"), "logloss": m.get("logloss"), "epochs": len(result.history["loss"]),
                         "train_s": round(result.seconds, 1), "run_dir": str(run_dir), "all": result.metrics})
            print(f"{dataset:<16} {model:<7} auc {m.get('auc', float('nan')):.4f}  gauc "
                  f"{m.get('gauc', float('nan')):.4f}  logloss {m.get('logloss', float('nan')):.4f}", file=sys.stderr)
    print("\n| dataset | model | task | test AUC | test GAUC | test logloss | epochs | train s |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['dataset']} | {r['model']} | {r['task']} | {r['auc']:.4f} | {r['gauc']:.4f} | "
              f"{r['logloss']:.4f} | {r['epochs']} | {r['train_s']} |")
    out.mkdir(parents=True, exist_ok=True)
    (out / "baselines.json").write_text(json.dumps(rows, indent=1, default=float) + "\n")
    print(f"\nwrote {out / 'baselines.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
