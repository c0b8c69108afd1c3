"""SEMINAR vs its baselines and ablations on the lifelong query-item datasets (sampled-99 protocol).

    python benchmarks/seminar.py --datasets ml-latest-small-lifelong amazon-beauty-lifelong [--epochs 2]

Every variant is a `tfrec-zoo train` run of training/experiments/seminar-<dataset>.yaml with the model / params /
pretraining changed, so all share data, optimizer, batch size, epochs, D, heads and K:

  lifelong_din, sim, eta, qin, twin     the baselines (id-only items + queries, no pretraining)
  seminar                               multi-modal items, PSU pretraining (1 epoch) -> fine-tuning
  seminar -pretrain                     no PSU
  seminar -align / -relevance / -next   PSU with that objective's weight 0
  seminar id-only                       PSU + fine-tuning with item ids only (no attribute / text modalities)

Test split, 1 positive + 99 sampled negatives, both modes (recommendation: queries emptied; search: negatives
take the positive's query). Prints a table, writes benchmarks/out/seminar.json and the table into
seeds/papers/seminar.md (between the `<!-- seminar-results -->` markers).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from training.experiment import load_experiment  # noqa: E402
from training.trainer import train  # noqa: E402

VARIANTS = {
    "lifelong_din": {"model": "lifelong_din", "pretrain": None},
    "sim": {"model": "sim", "pretrain": None},
    "eta": {"model": "eta", "pretrain": None},
    "qin": {"model": "qin", "pretrain": None},
    "twin": {"model": "twin", "pretrain": None},
    "seminar": {},
    "seminar -pretrain": {"pretrain": None},
    "seminar -align": {"pretrain_params": {"align_weight": 0.0}},
    "seminar -relevance": {"pretrain_params": {"relevance_weight": 0.0}},
    "seminar -next": {"pretrain_params": {"next_weight": 0.0}},
    "seminar id-only": {"params": {"modalities": ["id"]}},
}
COLUMNS = ("hit@1", "hit@10", "ndcg@10", "hit@50", "mrr", "auc")
MARK = "<!-- seminar-results -->"


def variant_experiment(dataset: str, variant: str, epochs: int | None, seed: int | None = None):
    exp = load_experiment(ROOT / "training" / "experiments" / f"seminar-{dataset}.yaml")
    change = VARIANTS[variant]
    exp.name = f"{exp.name}-{variant.replace(' ', '_').replace('-', 'no-', 1) if ' -' in variant else variant}"
    if "model" in change:
        exp.model = change["model"]
        # baselines keep the shared sizes (D, heads, K) and take their own defaults for the rest
        exp.params = {k: v for k, v in exp.params.items()
                      if k in ("dim", "heads", "top_k", "query_dropout", "use_query")}
    exp.params = {**exp.params, **change.get("params", {})}
    if "pretrain" in change:
        exp.pretrain = change["pretrain"]
        # nothing is restored: a frozen G would stay at its identity init
        exp.params = {k: v for k, v in exp.params.items() if not k.startswith("freeze_")}
    elif exp.pretrain:
        exp.pretrain = {**exp.pretrain, "params": {**exp.pretrain.get("params", {}),
                                                   **change.get("pretrain_params", {})}}
    if epochs:
        exp.epochs = epochs
    if seed is not None:
        exp.seed = seed
    return exp


def seed_runs(entry: dict | None, exp=None) -> dict[str, dict]:
    """The per-seed test metrics of one variant (entries written before seeds were recorded hold one run, the
    experiment's seed 0); none when `exp` is given and the entry ran another model / params / pretraining."""
    if not entry:
        return {}
    if exp is not None and (entry.get("model"), entry.get("params"), entry.get("pretrain")) != \
            (exp.model, exp.params, exp.pretrain):
        return {}
    return dict(entry.get("seeds") or {str(entry.get("seed", 0)): entry["metrics"]})


def mean_metrics(runs: dict[str, dict]) -> dict:
    """Mode by mode, the mean of every numeric metric over the seeds' runs."""
    first = next(iter(runs.values()))
    return {mode: {k: (float(np.mean([r[mode][k] for r in runs.values()])) if isinstance(v, (float, np.floating)) else v)
                   for k, v in m.items()} for mode, m in first.items()}


def table(results: dict) -> str:
    lines = []
    for dataset, rows in results.items():
        lines += [f"**{dataset}** (test, 1 + 99 sampled negatives)", "",
                  "| model | mode | " + " | ".join(c.upper() for c in COLUMNS)
                  + " | seeds | NDCG@10 min-max | train s |",
                  "|---|---|" + "---|" * (len(COLUMNS) + 3)]
        for variant, r in rows.items():
            runs = seed_runs(r)
            for mode in [m for m in ("recommendation", "search") if m in r["metrics"]]:
                m = r["metrics"][mode]
                ndcg = [run[mode]["ndcg@10"] for run in runs.values()]
                spread = f"{min(ndcg):.4f}-{max(ndcg):.4f}" if len(ndcg) > 1 else "-"
                lines.append(f"| {variant} | {mode} | " + " | ".join(f"{m[c]:.4f}" for c in COLUMNS)
                             + f" | {len(runs)} | {spread} | {r['seconds']:.0f} |")
        lines.append("")
    return "\n".join(lines)


def write_card(text: str, command: str, mark: str = MARK, quoted: bool = False) -> None:
    """Replace the block between the two `mark` lines of seeds/papers/seminar.md (append it when absent), headed by
    `command` (in backticks unless `quoted`: already formatted)."""
    from cards import write_block

    write_block("seminar.md", mark, command if quoted else f"`{command}`", text)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", nargs="+", default=["ml-latest-small-lifelong", "amazon-beauty-lifelong"])
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--epochs", type=int, help="fine-tuning epochs (default: the experiment's)")
    ap.add_argument("--seed", type=int, help="training seed (default: the experiment's, 0); a run adds to the "
                    "variant's earlier seeds and the table shows their mean")
    ap.add_argument("--runs", default=str(ROOT / "benchmarks" / "out" / "seminar_runs"))
    ap.add_argument("--json", default=str(ROOT / "benchmarks" / "out" / "seminar.json"))
    ap.add_argument("--no-card", action="store_true", help="do not write the table into seeds/papers/seminar.md")
    ap.add_argument("--card-only", action="store_true", help="rewrite the table and card from the JSON, train nothing")
    args = ap.parse_args()

    out = Path(args.json)
    results = json.loads(out.read_text()) if out.exists() else {}
    for dataset in [] if args.card_only else args.datasets:
        for variant in args.variants:
            exp = variant_experiment(dataset, variant, args.epochs, args.seed)
            if exp.model == "qin" and not exp.params.get("use_query", True):
                print(f"{dataset} qin: skipped (QIN's first stage needs queries; the dataset has none)", flush=True)
                continue
            run_dir = Path(args.runs) / dataset / (variant.replace(" ", "_") + (f"_seed{exp.seed}" if exp.seed else ""))
            if run_dir.exists():
                import shutil
                shutil.rmtree(run_dir)
            start = time.perf_counter()
            res = train(exp, run_dir, verbose=0, log=lambda *a: print(*a, file=sys.stderr))
            seconds = time.perf_counter() - start
            metrics = {k.split("(")[1].rstrip(")"): v for k, v in res.metrics["test"]["overall"].items()}
            runs = {**seed_runs(results.get(dataset, {}).get(variant), exp), str(exp.seed): metrics}
            results.setdefault(dataset, {})[variant] = {"metrics": mean_metrics(runs), "seeds": runs,
                                                        "seconds": seconds, "model": exp.model,
                                                        "params": exp.params, "pretrain": exp.pretrain}
            print(f"{dataset} {variant} seed {exp.seed}: " + ", ".join(f"{mode} ndcg@10 {m['ndcg@10']:.4f}"
                                                       for mode, m in metrics.items()) + f" ({seconds:.0f} s)",
                  flush=True)
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(results, indent=1, default=float) + "\n")
    text = table(results)
    print(text)
    if not args.no_card:
        seeds = sorted({int(k) for rows in results.values() for r in rows.values() for k in seed_runs(r)})
        line = "`python benchmarks/seminar.py --datasets " + " ".join(results) + "`"
        if len(seeds) > 1:
            line += f" (seed 0), then with `--seed N` (and `--variants`) for seeds {', '.join(map(str, seeds[1:]))}"
        write_card(text, line, quoted=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
