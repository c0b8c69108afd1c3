"""Train the platform's baselines (DIN, DeepFM, MMoE) on real data beside reference rows, and print test metrics.

    python benchmarks/baselines.py                        # ml-latest-small and taobao-head, every row
    python benchmarks/baselines.py --datasets ml-latest-small --models din --set epochs=1
    python benchmarks/baselines.py --models din lr popularity deepctr_din

Rows (`--models`):
* din, deepfm, mmoe: `tfrec-zoo train training/experiments/MODEL-DATASET.yaml` into benchmarks/out/runs/.
* lr: logistic regression on the one-hot user id + item id (scikit-learn, L2; C chosen on the valid AUC).
* popularity: the item's smoothed positive rate in train (`--popularity count`: its positive count), no learning.
* deepctr_din, deepctr_deepfm: DeepCTR 0.9.3's DIN / DeepFM (`make bench-deps`) on the zoo model's features and
  embedding sizes, trained as din-DATASET.yaml / deepfm-DATASET.yaml say (params, optimizer, batch size, epochs,
  early stopping on the valid AUC; `--set` applies to them too).
Every row reads the same dataset directory and splits, and is scored by the zoo's evaluation code (AUC, GAUC
grouped by the spec's keys.user, logloss). benchmarks/baseline_models.py has the details. The table gives the
valid and test split's metrics of the first (main) task; "train s" is the fit alone (lr: every fit of its C
grid), not the decoding. The JSON has every metric.
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

from training.datasets import resolve_dataset  # noqa: E402
from training.experiment import load_experiment  # noqa: E402
from training.trainer import train  # noqa: E402

EXPERIMENTS = Path(__file__).resolve().parents[1] / "training" / "experiments"
ZOO = ("din", "deepfm", "mmoe")
REFERENCE = {"lr": "lr (user+item one-hot)", "popularity": "popularity", "deepctr_din": "deepctr din",
             "deepctr_deepfm": "deepctr deepfm"}
DEFAULT_MODELS = [*ZOO, *REFERENCE]


def _log(*a):
    print(*a, file=sys.stderr, flush=True)


def zoo_row(dataset: str, model: str, overrides: list[str], out: Path) -> dict | None:
    path = EXPERIMENTS / f"{model}-{dataset}.yaml"
    if not path.exists():
        _log(f"skip {model} on {dataset}: no {path.name}")
        return None
    exp = load_experiment(path, overrides)
    run_dir = out / "runs" / f"{exp.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    result = train(exp, run_dir, verbose=0, log=_log)
    task = next(iter(result.metrics["test"]["overall"]))
    return {"dataset": dataset, "model": model, "task": task, "epochs": len(result.history["loss"]),
            "train_s": round(result.seconds, 1), "run_dir": str(run_dir), "overrides": overrides,
            "all": result.metrics}


def reference_row(dataset: str, model: str, overrides: list[str], popularity: str) -> dict | None:
    import baseline_models as bm

    if model.startswith("deepctr_"):
        zoo_model = model.removeprefix("deepctr_")
        path = EXPERIMENTS / f"{zoo_model}-{dataset}.yaml"
        if not path.exists():
            _log(f"skip {model} on {dataset}: no {path.name}")
            return None
        exp = load_experiment(path, overrides)
        res = bm.run_deepctr(zoo_model, exp, resolve_dataset(exp.dataset, _log), log=_log)
    else:
        # the dataset directory the zoo's experiments for this dataset train on
        path = next((EXPERIMENTS / f"{m}-{dataset}.yaml" for m in ZOO if (EXPERIMENTS / f"{m}-{dataset}.yaml").exists()),
                    None)
        data = resolve_dataset(load_experiment(path, overrides).dataset if path else dataset, _log)
        res = bm.run_lr(data, log=_log) if model == "lr" else bm.run_popularity(data, popularity, log=_log)
    return {"dataset": dataset, "model": REFERENCE[model], "task": res["task"], "epochs": res["epochs"],
            "train_s": round(res["train_s"], 1), "overrides": overrides if model.startswith("deepctr_") else [],
            "details": res["details"], "all": res["metrics"]}


def _metric(row: dict, split: str, name: str) -> float:
    m = row["all"].get(split, {}).get("overall", {}).get(row["task"], {})
    v = m.get(name)
    return float("nan") if v is None else float(v)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", nargs="+", default=["ml-latest-small", "taobao-head"])
    ap.add_argument("--models", nargs="+", default=DEFAULT_MODELS, choices=DEFAULT_MODELS, metavar="MODEL",
                    help=f"rows to run, in this order (default: all): {' '.join(DEFAULT_MODELS)}")
    ap.add_argument("--set", action="append", default=[],
                    help="override a key of every experiment (the zoo rows and the DeepCTR rows)")
    ap.add_argument("--popularity", choices=("rate", "count"), default="rate",
                    help="popularity score: the item's smoothed positive rate (default) or positive count in train")
    ap.add_argument("--out", default="benchmarks/out/baselines")
    args = ap.parse_args()
    out = Path(args.out)
    rows = []
    for dataset in args.datasets:
        for model in args.models:
            row = (zoo_row(dataset, model, args.set, out) if model in ZOO
                   else reference_row(dataset, model, args.set, args.popularity))
            if row is None:
                continue
            # the keys the JSON had before (test split, main task), then everything else
            row = {**{k: row[k] for k in ("dataset", "model", "task")},
                   **{k: _metric(row, "test", k) for k in ("auc", "gauc", "logloss")},
                   **{f"valid_{k}": _metric(row, "valid", k) for k in ("auc", "gauc")}, **row}
            rows.append(row)
            _log(f"{dataset:<16} {row['model']:<22} valid auc {_metric(row, 'valid', 'auc'):.4f}  test auc "
                 f"{_metric(row, 'test', 'auc'):.4f}  gauc {_metric(row, 'test', 'gauc'):.4f}  logloss "
                 f"{_metric(row, 'test', 'logloss'):.4f}  ({row['train_s']} s)")
    if args.set:
        print(f"\noverrides: {' '.join('--set ' + s for s in args.set)}")
    print("\n| dataset | model | task | valid AUC | valid GAUC | test AUC | test GAUC | test logloss | epochs "
          "| train s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['dataset']} | {r['model']} | {r['task']} | {_metric(r, 'valid', 'auc'):.4f} | "
              f"{_metric(r, 'valid', 'gauc'):.4f} | {_metric(r, 'test', 'auc'):.4f} | {_metric(r, 'test', 'gauc'):.4f} | "
              f"{_metric(r, 'test', 'logloss'):.4f} | {r['epochs'] if r['epochs'] is not None else '-'} | "
              f"{r['train_s']} |")
    out.mkdir(parents=True, exist_ok=True)
    (out / "baselines.json").write_text(json.dumps(rows, indent=1, default=float) + "\n")
    print(f"\nwrote {out / 'baselines.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
