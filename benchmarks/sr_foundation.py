"""S&R multi-domain foundation model: every model and ablation, multi-domain and cold start, written into the card.

    python benchmarks/sr_foundation.py                                  # both datasets, seeds 0 and 1
    python benchmarks/sr_foundation.py --datasets ml-latest-small-domains --seeds 0 --only sr_domain_js mmoe

Per dataset (DATASETS below: its cold-start domain, the query features, epochs) and seed, in one process, each run a
`tfrec-zoo train` run directory under --out (a finished run is read back, not trained again: a killed benchmark
resumes where it stopped):
* multi-domain: pretrained on every domain but the cold-start one (`rows: {drop: ...}`), AUC / GAUC per domain and
  task on the test split, and their unweighted mean. Rows: sr_foundation (domain gating, LLM text, JS) and its
  ablations (mean gating, [CLS] gating, no text, random text vectors, MMD, no divergence); the baselines MMoE,
  Shared-Bottom, PLE, STAR, one DNN over all domains, and one DNN per domain (each trained and tested on its own
  domain's rows).
* cold start: the cold-start domain's test split, whole, after (a) a DNN and an sr_foundation trained from scratch
  on its small train share, (b) the pretrained sr_foundation as it is (no fine-tuning; the domain's embedding and
  map set from the trained domains' mean), (c) sr_foundation fine-tuned on the share with freeze_level 0 (nothing
  frozen), 1 (L0: embeddings) and 2 (L0 + L1: embeddings, AGF, domain maps), (d) each baseline pretrained the same
  way and fine-tuned on the share (nothing frozen).
Tables: mean over seeds and the min-max, written into seeds/papers/sr_foundation.md between the
`<!-- sr-foundation-results -->` markers with this command; all metrics in --out/results.json.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from tfrec_zoo.data.builders.movielens_domains import DOMAIN_NAMES  # noqa: E402
from training.datasets import experiment_data  # noqa: E402
from training.evaluation import domain_mean, evaluate_split, trained_tasks  # noqa: E402
from training.experiment import parse_experiment  # noqa: E402
from training.runs import load_run  # noqa: E402
from training.trainer import train  # noqa: E402

MARK = "<!-- sr-foundation-results -->"

# per dataset: the domain feature, the cold-start value, the share of its train rows fine-tuning sees, the model
# params every sr_foundation row shares, epochs and batch sizes
DATASETS = {
    "ml-latest-small-domains": {
        "domain": "domain", "cold": 0, "share": 0.1, "sr_params": {"query_features": ["query"]},
        "names": dict(enumerate(DOMAIN_NAMES)),    # the domain ids' genre groups
        "epochs": 2, "batch_size": 1024, "finetune_epochs": 3, "finetune_batch_size": 256},
    "amazon-search-multidomain": {
        "domain": "domain", "cold": "electronics", "share": 0.1, "sr_params": {"query_features": ["query_id", "query"]},
        "epochs": 1, "batch_size": 1024, "finetune_epochs": 3, "finetune_batch_size": 256},
}
SR = {"units": 128, "num_experts": 4, "expert_units": [128, 64], "tower_units": [64]}
# multi-domain rows: name -> (model, params, losses)
PRETRAINED = {
    "sr_domain_js": ("sr_foundation", {"gating": "domain", "text": "llm", "divergence": "js"}, {"divergence": 0.1}),
    "sr_mean_gate": ("sr_foundation", {"gating": "mean", "text": "llm", "divergence": "js"}, {"divergence": 0.1}),
    "sr_cls_gate": ("sr_foundation", {"gating": "cls", "text": "llm", "divergence": "js"}, {"divergence": 0.1}),
    "sr_no_text": ("sr_foundation", {"gating": "domain", "text": "none", "divergence": "js"}, {"divergence": 0.1}),
    "sr_random_text": ("sr_foundation", {"gating": "domain", "text": "random", "divergence": "js"},
                       {"divergence": 0.1}),
    "sr_mmd": ("sr_foundation", {"gating": "domain", "text": "llm", "divergence": "mmd"}, {"divergence": 0.1}),
    "sr_no_divergence": ("sr_foundation", {"gating": "domain", "text": "llm", "divergence": "none"}, {}),
    "mmoe": ("mmoe", {}, {}),
    "shared_bottom": ("shared_bottom", {}, {}),
    "ple": ("ple", {}, {}),
    "star": ("star", {}, {}),
    "dnn_all_domains": ("dnn", {}, {}),
}
LABELS = {"sr_domain_js": "S&R foundation (domain gating, JS)", "sr_mean_gate": "  ablation: mean gating",
          "sr_cls_gate": "  ablation: [CLS] gating",
          "sr_no_text": "  ablation: no text aspect", "sr_random_text": "  ablation: random text vectors",
          "sr_mmd": "  ablation: MMD instead of JS", "sr_no_divergence": "  ablation: no divergence",
          "mmoe": "MMoE", "shared_bottom": "Shared-Bottom", "ple": "PLE", "star": "STAR",
          "dnn_all_domains": "DNN (one over all domains)", "dnn_per_domain": "DNN (one per domain)"}


def _log(*a):
    print(*a, file=sys.stderr, flush=True)


def experiment(name: str, dataset: str, model: str, params: dict, losses: dict, rows: dict, seed: int, *,
               epochs: int, batch_size: int, restore: dict | None = None):
    return parse_experiment({"name": name, "dataset": dataset, "model": model, "params": params, "losses": losses,
                             "rows": rows, "seed": seed, "epochs": epochs, "batch_size": batch_size,
                             "optimizer": {"name": "adam", "learning_rate": 0.001},
                             "evaluation": {"splits": ["test"]}, **({"restore": restore} if restore else {})},
                            f"benchmarks/sr_foundation.py:{name}")


def run(exp, run_dir: Path) -> dict:
    start = time.perf_counter()
    result = train(exp, run_dir, verbose=0, log=lambda *a: None)
    if not result.finished_before:
        _log(f"  {run_dir.name}: {time.perf_counter() - start:.0f} s")
    return result.metrics["test"]


def by_domain(test: dict, feature: str) -> dict:
    """{domain value: {task: metrics}} plus {"mean": {task: ...}} from one split's metrics."""
    per = test.get("by_domain", {}).get(feature, {})
    return {**per, "mean": test.get("domain_mean", {}).get(feature, {})}


def cold_metrics(model, data, feature: str) -> dict:
    """A model's test metrics on a (cold-start) subset, by the pointwise protocol."""
    keys = [c for c in [data.spec.keys.get("user"), feature] if c]
    ds = data.dataset("test", 4096, features=list(model.input_names) + keys)
    return evaluate_split(model, ds, data.spec, tasks=trained_tasks(model))


def bench_dataset(dataset: str, seed: int, out: Path, only: set[str] | None) -> dict:
    cfg = DATASETS[dataset]
    feat, cold = cfg["domain"], cfg["cold"]
    pre_rows = {"drop": {feat: [cold]}}
    cold_rows = {"keep": {feat: [cold]}, "share": {"train": cfg["share"]}}
    root = out / dataset / f"seed{seed}"
    res: dict = {"multi_domain": {}, "cold_start": {}}
    want = (lambda k: only is None or k in only)
    kw = {"epochs": cfg["epochs"], "batch_size": cfg["batch_size"]}
    fine = {"epochs": cfg["finetune_epochs"], "batch_size": cfg["finetune_batch_size"]}
    for key, (model, params, losses) in PRETRAINED.items():
        if not want(key):
            continue
        p = {**SR, **cfg["sr_params"], **params} if model == "sr_foundation" else params
        _log(f"{dataset} seed {seed}: {key}")
        res["multi_domain"][key] = by_domain(run(experiment(key, dataset, model, p, losses, pre_rows, seed, **kw),
                                                 root / key), feat)
    if want("dnn_per_domain"):
        parent = experiment_data(experiment("x", dataset, "dnn", {}, {}, pre_rows, seed, **kw), _log)
        values = _domain_values(parent, feat)
        per = {}
        for v in values:
            _log(f"{dataset} seed {seed}: dnn on domain {v}")
            test = run(experiment(f"dnn_domain_{v}", dataset, "dnn", {}, {}, {"keep": {feat: [v]}}, seed, **kw),
                       root / f"dnn_domain_{v}")
            per[str(v)] = test["overall"]
        tasks = {t for m in per.values() for t in m}
        per["mean"] = {t: domain_mean({v: {t: m[t]} for v, m in per.items() if t in m})[t] for t in tasks}
        res["multi_domain"]["dnn_per_domain"] = per
    # cold start -----------------------------------------------------------------------------------------------
    sr_params = {**SR, **cfg["sr_params"], **PRETRAINED["sr_domain_js"][1]}
    for model, params, key in (("dnn", {}, "scratch_dnn"), ("sr_foundation", sr_params, "scratch_sr_foundation")):
        if want(key):
            _log(f"{dataset} seed {seed}: {key}")
            res["cold_start"][key] = run(experiment(key, dataset, model, params, {}, cold_rows, seed, **fine),
                                         root / key)["overall"]
    if want("sr_domain_js") and want("no_finetune"):
        whole = experiment_data(experiment("x", dataset, "dnn", {}, {}, {"keep": {feat: [cold]}}, seed, **kw), _log)
        _, _, pretrained = load_run(root / "sr_domain_js", lambda *a: None)
        res["cold_start"]["no_finetune"] = cold_metrics(pretrained, whole, feat)["overall"]
    for level in (0, 1, 2):
        key = f"finetune_freeze{level}"
        if want("sr_domain_js") and want(key):
            _log(f"{dataset} seed {seed}: {key}")
            restore = {"checkpoint": str(root / "sr_domain_js"), **({"freeze_level": level} if level else {})}
            res["cold_start"][key] = run(experiment(key, dataset, "sr_foundation", sr_params,
                                                    PRETRAINED["sr_domain_js"][2], cold_rows, seed, **fine,
                                                    restore=restore), root / key)["overall"]
    for base in ("mmoe", "shared_bottom", "ple", "star", "dnn_all_domains"):
        key = f"finetune_{base}"
        if want(base) and want(key):
            model, params, _ = PRETRAINED[base]
            _log(f"{dataset} seed {seed}: {key}")
            res["cold_start"][key] = run(experiment(key, dataset, model, params, {}, cold_rows, seed, **fine,
                                                    restore={"checkpoint": str(root / base)}), root / key)["overall"]
    return res


def _domain_values(data, feature: str) -> list:
    ds = data.dataset("test", 8192, features=[feature])
    values = np.unique(np.concatenate([b[0][feature].numpy() for b in ds]))
    return [v.decode() if isinstance(v, bytes) else int(v) for v in values]


# -- tables -------------------------------------------------------------------------------------------------------
def _cell(values: list[float]) -> str:
    values = [v for v in values if v is not None and np.isfinite(v)]
    if not values:
        return "-"
    mean = float(np.mean(values))
    return f"{mean:.4f}" + (f" ({min(values):.4f}-{max(values):.4f})" if len(values) > 1 else "")


def tables(results: dict) -> str:
    out = []
    for dataset, seeds in results.items():
        cfg = DATASETS[dataset]
        runs = list(seeds.values())
        rows = {k for r in runs for k in r["multi_domain"]}
        ordered = [k for k in [*PRETRAINED, "dnn_per_domain"] if k in rows]
        domains = sorted({d for r in runs for k in ordered for d in r["multi_domain"].get(k, {}) if d != "mean"})
        tasks = sorted({t for r in runs for k in ordered for t in r["multi_domain"].get(k, {}).get("mean", {})})
        for task in tasks:
            out += [f"**{dataset}, multi-domain, task `{task}`** (test AUC per domain; mean over domains; "
                    f"{len(runs)} seed(s): mean (min-max); cold-start domain {_name(cfg, cfg['cold'])!r} left out)", "",
                    "| model | " + " | ".join(f"AUC {_name(cfg, d)}" for d in domains) + " | mean AUC | mean GAUC |",
                    "|---|" + "---|" * (len(domains) + 2)]
            for k in ordered:
                def get(d, metric):
                    return [r["multi_domain"].get(k, {}).get(d, {}).get(task, {}).get(metric) for r in runs]
                out.append(f"| {LABELS[k]} | " + " | ".join(_cell(get(d, "auc")) for d in domains)
                           + f" | {_cell(get('mean', 'auc'))} | {_cell(get('mean', 'gauc'))} |")
            out.append("")
        cold_keys = sorted({k for r in runs for k in r["cold_start"]}, key=_cold_order)
        for task in tasks:
            cold = _name(cfg, cfg["cold"])
            out += [f"**{dataset}, cold-start domain {cold!r}, task `{task}`** (its whole test split; "
                    f"fine-tuning on {cfg['share']:.0%} of its train rows)", "",
                    "| model | AUC | GAUC |", "|---|---|---|"]
            for k in cold_keys:
                vals = [r["cold_start"].get(k, {}).get(task, {}) for r in runs]
                out.append(f"| {COLD_LABELS.get(k, k)} | {_cell([v.get('auc') for v in vals])} | "
                           f"{_cell([v.get('gauc') for v in vals])} |")
            out.append("")
    return "\n".join(out)


def _name(cfg: dict, value) -> str:
    names = cfg.get("names", {})
    return str(names.get(int(value), value)) if str(value).isdigit() else str(value)


COLD_LABELS = {"scratch_dnn": "(a) DNN trained on the share only", "scratch_sr_foundation":
               "(a) sr_foundation trained on the share only",
               "no_finetune": "(b) pretrained sr_foundation, no fine-tuning",
               "finetune_freeze0": "(c) sr_foundation fine-tuned, nothing frozen",
               "finetune_freeze1": "(c) sr_foundation fine-tuned, L0 frozen (freeze_level 1)",
               "finetune_freeze2": "(c) sr_foundation fine-tuned, L0+L1 frozen (freeze_level 2)",
               "finetune_mmoe": "(d) MMoE pretrained, fine-tuned", "finetune_shared_bottom":
               "(d) Shared-Bottom pretrained, fine-tuned", "finetune_ple": "(d) PLE pretrained, fine-tuned",
               "finetune_star": "(d) STAR pretrained, fine-tuned",
               "finetune_dnn_all_domains": "(d) DNN pretrained on all domains, fine-tuned"}


def _cold_order(k: str) -> int:
    return list(COLD_LABELS).index(k) if k in COLD_LABELS else 99


def write_card(text: str, command: str) -> None:
    from cards import write_block

    write_block("sr_foundation.md", MARK, f"`{command}`", text, heading="## Benchmark (benchmarks/sr_foundation.py)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    ap.add_argument("--only", nargs="+", help="run only these rows (keys of PRETRAINED, dnn_per_domain, "
                                              "scratch_dnn, finetune_freeze2, ...)")
    ap.add_argument("--out", default="benchmarks/out/sr_foundation")
    ap.add_argument("--no-card", action="store_true")
    ap.add_argument("--card-only", action="store_true", help="write the tables of --datasets from results.json into "
                                                             "the card, train nothing")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results_file = out / "results.json"
    results = json.loads(results_file.read_text()) if results_file.exists() else {}
    only = set(args.only) if args.only else None
    for dataset in [] if args.card_only else args.datasets:
        for seed in args.seeds:
            done = results.setdefault(dataset, {}).setdefault(str(seed), {"multi_domain": {}, "cold_start": {}})
            for part, rows in bench_dataset(dataset, seed, out, only).items():   # --only keeps the other rows
                done[part].update(rows)
            tmp = results_file.with_suffix(".tmp")
            tmp.write_text(json.dumps(results, indent=1, default=float) + "\n")
            os.replace(tmp, results_file)
    text = tables({d: results[d] for d in args.datasets if d in results})
    print(text)
    if not args.no_card:
        command = "python benchmarks/sr_foundation.py " + shlex.join(sys.argv[1:])
        write_card(text, command.strip())
        print(f"wrote the tables into seeds/papers/sr_foundation.md; all metrics in {results_file}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
