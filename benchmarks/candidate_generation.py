"""Multi-interest candidate generation (issue 13, seed paper 3: adaptive interest selection + prototypical contrastive
learning, Li et al. CIKM 2022) against its baselines, with the paper's ablations, written into the card.

    python benchmarks/candidate_generation.py                                  # every dataset, seeds 0 and 1
    python benchmarks/candidate_generation.py --datasets ml-latest-small --seeds 0 --only youtube_dnn aisl_pcl

Per dataset (DATASETS below: history, activeness features, prototypes, epochs, batch size) and seed, in one
process, each row a `tfrec-zoo train` run directory under --out (a finished run is read back, not trained again: a
killed benchmark resumes where it stopped). Every model's query reads only the user's history (and, for adaptive
selection, the activeness features); early stopping on the valid split's full-corpus recall@50; the trainer then
evaluates the test split over the full corpus (seen = the user's train and valid items, "filtered" removes them).
Rows: most popular (the popularity baseline every run reports), YouTube DNN, DSSM, MIND, ComiRec-SA, ComiRec-DR
(K = 4), the paper's model `aisl_pcl` (K_max = 8, adaptive, k-means prototypes, collision masking) and its
ablations (fixed K = 1, 2, 4, 8; no PCL; PCL without the collision treatment; learned prototypes).
Analysis (the aisl_pcl run of seed 0): the selected interest count k per user-activity quartile and Recall@50 per
quartile for aisl_pcl and the fixed-K ablations, as tables and PNGs under seeds/papers/img/.
Tables: mean over seeds and the min-max, written into seeds/papers/adaptive_interests_pcl.md between the
`<!-- candidate-generation-results -->` markers with this command; all metrics in --out/results.json.
"""
from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from functools import partial
from pathlib import Path

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

from training.experiment import parse_experiment
from training.retrieval import _first_rows, evaluate_retrieval, read_columns
from training.runs import load_run
from training.trainer import train

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cards import load_results, mean_range, save_results, write_block  # noqa: E402  (benchmarks/cards.py)

MARK = "<!-- candidate-generation-results -->"
CARD = "adaptive_interests_pcl.md"
IMG = Path(__file__).resolve().parents[1] / "seeds" / "papers" / "img"
KS = (20, 50, 100)
K_MAX = 8

# per dataset: the history sequence, the activeness features (feature_specs/*.yaml), prototypes P (a cluster of
# items: fewer on a small corpus), epochs (early stopping on valid recall@50 usually ends sooner) and batch size
DATASETS = {
    "ml-latest-small": {"history": "history", "activeness": ["user_activity", "user_spread", "user_recency"],
                        "prototypes": 32, "epochs": 10, "batch_size": 1024},
    "lbsn-gowalla": {"history": "history", "activeness": ["user_activity", "user_spread", "user_recency"],
                     "prototypes": 64, "epochs": 4, "batch_size": 2048},
    "amazon-beauty": {"history": "history", "activeness": ["user_activity", "user_spread"],
                      "prototypes": 64, "epochs": 4, "batch_size": 2048},
    "amazon-book": {"history": "history", "activeness": ["user_activity"],
                    "prototypes": 64, "epochs": 4, "batch_size": 4096},
}
COMMON = {"output_dim": 64, "temperature": 0.05, "logq_correction": True}
AISL = {"max_interests": K_MAX, "adaptive": True, "prototype_update": "kmeans", "collision": "mask"}
PCL_LOSS = {"prototype": 0.1}
# rows: name -> (model, params, losses, kind); kind "tower" reads query_features [history], "multi" reads the
# history through `history` (+ `activeness_features` when adaptive), "aisl" is a multi row with the dataset's
# prototypes
ROWS = {
    "youtube_dnn": ("youtube_dnn", {}, {}, "tower"),
    "dssm": ("two_tower", {"item_units": [64]}, {}, "tower"),
    "mind": ("mind", {"max_interests": 4}, {}, "multi"),
    "comirec_sa": ("comirec_sa", {"max_interests": 4}, {}, "multi"),
    "comirec_dr": ("comirec_dr", {"max_interests": 4}, {}, "multi"),
    "aisl_pcl": ("adaptive_interests_pcl", AISL, PCL_LOSS, "aisl"),
    **{f"fixed_k{k}": ("adaptive_interests_pcl", {**AISL, "adaptive": False, "max_interests": k}, PCL_LOSS, "aisl")
       for k in (1, 2, 4, 8)},
    "no_pcl": ("adaptive_interests_pcl", {**AISL, "prototypes": 0}, {}, "multi"),
    "no_collision": ("adaptive_interests_pcl", {**AISL, "collision": "none"}, PCL_LOSS, "aisl"),
    "learned_protos": ("adaptive_interests_pcl", {**AISL, "prototype_update": "learned"}, PCL_LOSS, "aisl"),
}
LABELS = {"most_popular": "most popular", "youtube_dnn": "YouTube DNN", "dssm": "DSSM (two-tower, MLP towers)",
          "mind": "MIND (K = 4)", "comirec_sa": "ComiRec-SA (K = 4)", "comirec_dr": "ComiRec-DR (K = 4)",
          "aisl_pcl": f"**AISL + PCL (paper; adaptive k <= {K_MAX}, k-means prototypes, collision mask)**",
          "fixed_k1": "  ablation: fixed K = 1", "fixed_k2": "  ablation: fixed K = 2",
          "fixed_k4": "  ablation: fixed K = 4", "fixed_k8": "  ablation: fixed K = 8",
          "no_pcl": "  ablation: no PCL (prototypes 0)", "no_collision": "  ablation: PCL without collision treatment",
          "learned_protos": "  ablation: learned prototypes (no k-means)"}
# amazon-book (KGAT split): published Recall@20 / NDCG@20 on this exact split, train items filtered
PUBLISHED = {"amazon-book": [("MF (KGAT paper, Wang et al. KDD 2019)", {"recall@20": 0.1300}),
                             ("KGAT (KGAT paper)", {"recall@20": 0.1489}),
                             ("KGIN (KGIN paper, Wang et al. WWW 2021)", {"recall@20": 0.1687, "ndcg@20": 0.0915})]}
ANALYSIS_ROWS = ("aisl_pcl", "fixed_k1", "fixed_k2", "fixed_k4", "fixed_k8")


def _log(*a):
    print(*a, file=sys.stderr, flush=True)


def row_params(key: str, cfg: dict) -> tuple[str, dict, dict]:
    model, params, losses, kind = ROWS[key]
    p = {**COMMON, **params}
    if kind == "tower":
        p["query_features"] = [cfg["history"]]
    else:
        p["history"] = cfg["history"]
        if p.get("adaptive", False) and model == "adaptive_interests_pcl":
            p["activeness_features"] = list(cfg["activeness"])
        if kind == "aisl":
            p["prototypes"] = cfg["prototypes"]
    return model, p, dict(losses)


def experiment(key: str, dataset: str, seed: int):
    cfg = DATASETS[dataset]
    model, params, losses = row_params(key, cfg)
    return parse_experiment({"name": key, "dataset": dataset, "model": model, "params": params, "losses": losses,
                             "seed": seed, "epochs": cfg["epochs"], "batch_size": cfg["batch_size"],
                             "optimizer": {"name": "adam", "learning_rate": 0.002},
                             "early_stopping": {"monitor": "val_recall@50", "patience": 1},
                             "evaluation": {"splits": ["valid", "test"], "ks": list(KS)}},
                            f"benchmarks/candidate_generation.py:{key}")


def run_row(key: str, dataset: str, seed: int, run_dir: Path) -> dict:
    """{"model": test filtered metrics, "model_all": unfiltered, "popularity": filtered, "epochs", "seconds"}."""
    exp = experiment(key, dataset, seed)
    start = time.perf_counter()
    result = train(exp, run_dir, verbose=0, log=lambda *a: None)
    if not result.finished_before:
        _log(f"  {dataset} seed {seed} {key}: {time.perf_counter() - start:.0f} s")
    test = result.metrics["test"]["overall"]
    history = run_dir / "history.csv"
    return {"model": test[f"{exp.model} (filtered)"], "model_all": test[f"{exp.model} (all)"],
            "popularity": test["popularity (filtered)"],
            "epochs": max(0, len(history.read_text().splitlines()) - 1) if history.exists() else None}


def bench_dataset(dataset: str, seed: int, out: Path, only: set[str] | None, done) -> None:
    """Every row (or `only` those) of one dataset and seed; `done(key, metrics)` after each."""
    root = out / dataset / f"seed{seed}"
    for key in ROWS:
        if only is None or key in only:
            _log(f"{dataset} seed {seed}: {key}")
            done(key, run_row(key, dataset, seed, root / key))


# -- analysis: k and recall per activity bucket (seed 0) ----------------------------------------------------------
def _recall(top: np.ndarray, relevant: np.ndarray) -> float:
    """One user's recall of a top-K list (-1 pads): distinct relevant items hit / distinct relevant items (a
    place checked in twice counts once, as training.retrieval's metrics count it)."""
    relevant = np.unique(relevant)
    return float(np.isin(relevant, top[top >= 0]).sum() / len(relevant))


def _per_user(model, data) -> dict:
    """Per evaluated test user: recall@50 (seen filtered), user_activity, and (multi-interest) the served k."""
    r = evaluate_retrieval(model, data, split="test", ks=(50,), popularity=False, return_lists=True)
    lists = r["lists"]
    top = lists["filtered"][:, :50]
    indptr, rel = lists["relevant"]
    recall = np.array([_recall(top[u], rel[indptr[u]:indptr[u + 1]]) for u in range(len(top))])
    spec = model.spec
    user_key, time_key = spec.keys["user"], spec.keys.get("time")
    cols = read_columns(data, "test", list(model.query_inputs) + [c for c in (user_key, time_key, "user_activity")
                                                                  if c])
    first = _first_rows(cols[user_key], cols[time_key].astype(np.float64) if time_key else None)
    row_of = {u: i for u, i in zip(cols[user_key][first].tolist(), first.tolist())}
    rows = np.array([row_of[u] for u in lists["users"].tolist()])
    out = {"recall@50": recall, "activity": cols["user_activity"][rows].reshape(-1)}
    served = model.query_model.predict({k: cols[k][rows] for k in model.query_inputs}, batch_size=8192, verbose=0)
    if isinstance(served, dict):
        out["k"] = np.asarray(served["mask"]).sum(1).round().astype(int)
    return out


def _buckets(activity: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """Activity quartiles (of the evaluated users; a bucket is (q_i, q_i+1], ties leave some empty and those are
    dropped) -> bucket index per user and labels (the bucket's activity range)."""
    edges = np.quantile(activity, [0.25, 0.5, 0.75])
    _, idx = np.unique(np.searchsorted(edges, activity, side="left"), return_inverse=True)
    idx = idx.reshape(-1)
    labels = [f"{int(activity[idx == b].min())}-{int(activity[idx == b].max())}" for b in range(idx.max() + 1)]
    return idx, labels


def analyse(dataset: str, out: Path) -> dict | None:
    root = out / dataset / "seed0"
    if not (root / "aisl_pcl" / "DONE").exists():
        return None
    per = {}
    for key in ANALYSIS_ROWS:
        if (root / key / "DONE").exists():
            _log(f"{dataset}: analysis of {key}")
            _, data, model = load_run(root / key, lambda *a: None)
            per[key] = _per_user(model, data)
    idx, labels = _buckets(per["aisl_pcl"]["activity"])
    n_b = len(labels)
    k = per["aisl_pcl"]["k"]
    counts = [[int(((idx == b) & (k == j)).sum()) for j in range(1, K_MAX + 1)] for b in range(n_b)]
    recall = {key: [float(p["recall@50"][idx == b].mean()) for b in range(n_b)] + [float(p["recall@50"].mean())]
              for key, p in per.items()}
    return {"buckets": labels, "users": [int((idx == b).sum()) for b in range(n_b)], "k_counts": counts,
            "mean_k": [float(k[idx == b].mean()) for b in range(n_b)] + [float(k.mean())], "recall@50": recall}


def plots(dataset: str, a: dict) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    IMG.mkdir(parents=True, exist_ok=True)
    names = []
    x = np.arange(len(a["buckets"]))
    # (1) stacked share of each k per activity bucket
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    counts = np.array(a["k_counts"], float)
    share = counts / np.maximum(counts.sum(1, keepdims=True), 1)
    bottom = np.zeros(len(x))
    cmap = plt.get_cmap("viridis")
    for j in range(K_MAX):
        if share[:, j].any():
            ax.bar(x, share[:, j], bottom=bottom, color=cmap(j / (K_MAX - 1)), label=f"k={j + 1}")
            bottom += share[:, j]
    ax.set_xticks(x, [f"{b}\n(n={n})" for b, n in zip(a["buckets"], a["users"])])
    ax.set_xlabel("user_activity (train interactions), quartiles")
    ax.set_ylabel("share of users")
    ax.set_title(f"{dataset}: interests selected by AISL (seed 0, test)")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1, 1))
    fig.tight_layout()
    names.append(f"cg_{dataset}_k_by_activity.png")
    fig.savefig(IMG / names[-1])
    plt.close(fig)
    # (2) recall@50 per activity bucket, aisl vs fixed K
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    for key, vals in a["recall@50"].items():
        ax.plot(x, vals[:-1], marker="o", lw=2.5 if key == "aisl_pcl" else 1.2,
                label="AISL + PCL" if key == "aisl_pcl" else f"fixed K={key[-1]}")
    ax.set_xticks(x, a["buckets"])
    ax.set_xlabel("user_activity (train interactions), quartiles")
    ax.set_ylabel("Recall@50 (test, seen filtered)")
    ax.set_title(f"{dataset}: Recall@50 by user activity (seed 0)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    names.append(f"cg_{dataset}_recall_by_activity.png")
    fig.savefig(IMG / names[-1])
    plt.close(fig)
    return names


# -- tables -------------------------------------------------------------------------------------------------------
def _vals(runs: list[dict], key: str, metric: str) -> list[float]:
    if key == "most_popular":      # every run reports the same baseline: take it from one run per seed
        return [next(iter(r.values()))["popularity"][metric] for r in runs if r]
    return [r[key]["model"][metric] for r in runs if key in r]


def _cell(values: list[float]) -> str:
    return mean_range(values)


def _metrics() -> list[str]:
    return [f"{m}@{k}" for m in ("recall", "hitrate", "ndcg") for k in KS]


def main_table(dataset: str, seeds: dict) -> list[str]:
    runs = list(seeds.values())
    keys = ["most_popular"] + [k for k in ROWS if any(k in r for r in runs)]
    head = "| model | " + " | ".join(m.replace("hitrate", "HR").replace("recall", "Recall").replace("ndcg", "NDCG")
                                     for m in _metrics()) + " | epochs |"
    title = (f"**{dataset}** (test split, full corpus, the user's train + valid items filtered; "
             f"{len(runs)} seed(s) {', '.join(seeds)}: mean (min-max))")
    out = [title, "", head, "|---|" + "---|" * (len(KS) * 3 + 1)]
    for key in keys:
        epochs = [r[key].get("epochs") for r in runs if key in r] if key != "most_popular" else []
        ep = "/".join(str(e) for e in epochs if e is not None) or "-"
        out.append(f"| {LABELS[key]} | " + " | ".join(_cell(_vals(runs, key, m)) for m in _metrics()) + f" | {ep} |")
    for name, pub in PUBLISHED.get(dataset, []):
        out.append(f"| {name}: published, not rerun | " + " | ".join(f"{pub[m]:.4f}" if m in pub else ""
                                                                      for m in _metrics()) + " | |")
    out.append("")
    return out


def analysis_text(dataset: str, a: dict, images: list[str]) -> list[str]:
    b = a["buckets"]
    out = [f"*{dataset}, AISL + PCL (seed 0): selected k per user-activity quartile (users per k)*", "",
           "| user_activity | users | " + " | ".join(f"k={j}" for j in range(1, K_MAX + 1)) + " | mean k |",
           "|---|---|" + "---|" * (K_MAX + 1)]
    for i, label in enumerate(b):
        out.append(f"| {label} | {a['users'][i]} | " + " | ".join(str(c) for c in a["k_counts"][i])
                   + f" | {a['mean_k'][i]:.2f} |")
    out += ["", f"*{dataset}: Recall@50 (test, seen filtered, seed 0) per user-activity quartile*", "",
            "| model | " + " | ".join(b) + " | all |", "|---|" + "---|" * (len(b) + 1)]
    for key, vals in a["recall@50"].items():
        out.append(f"| {LABELS[key].strip('* ')} | " + " | ".join(f"{v:.4f}" for v in vals) + " |")
    out += [""] + [f"![{n}](img/{n})" for n in images] + [""]
    return out


def _compare(runs: list[dict], a: str, b: str, metric: str = "recall@50") -> tuple[str, str] | None:
    """("holds" / "does not hold here", "a X vs b Y") for `a` above `b` on the seeds' mean; None when one is
    missing. Overlapping seed ranges are said."""
    va, vb = _vals(runs, a, metric), _vals(runs, b, metric)
    if not va or not vb:
        return None
    verdict = "holds" if np.mean(va) > np.mean(vb) else "does not hold here"
    if len(va) > 1 and len(vb) > 1 and min(va) <= max(vb) and max(va) >= min(vb):
        verdict += " (the seeds' ranges overlap)"
    return verdict, f"{metric} {_cell(va)} vs {_cell(vb)}"


def claims(dataset: str, seeds: dict, a: dict | None) -> list[str]:
    """The paper's claims checked on this dataset's numbers (test, seen filtered, mean over seeds)."""
    runs = list(seeds.values())
    out = []
    fixed = [k for k in ("fixed_k1", "fixed_k2", "fixed_k4", "fixed_k8") if _vals(runs, k, "recall@50")]
    if fixed and _vals(runs, "aisl_pcl", "recall@50"):
        best = max(fixed, key=lambda k: np.mean(_vals(runs, k, "recall@50")))
        verdict, nums = _compare(runs, "aisl_pcl", best)
        line = f"adaptive k above the best fixed K (K = {best[-1]}): {verdict} ({nums})"
        if a is not None:
            low = {k: v[0] for k, v in a["recall@50"].items()}
            others = {k: v for k, v in low.items() if k != "aisl_pcl"}
            if others:
                top = max(others, key=others.get)
                line += (f"; least active quartile ({a['buckets'][0]}, seed 0): "
                         f"{'holds' if low['aisl_pcl'] > others[top] else 'does not hold here'} "
                         f"({low['aisl_pcl']:.4f} vs fixed K = {top[-1]} {others[top]:.4f}); served k: mean "
                         f"{a['mean_k'][-1]:.2f}, per quartile " + ", ".join(f"{m:.2f}" for m in a["mean_k"][:-1]))
            used = [j + 1 for j in range(K_MAX) if any(row[j] for row in a["k_counts"])]
            if len(used) == 1:
                line += (f". CAUTION: AISL serves k = {used[0]} to every user, so no difference here comes from "
                         "choosing k per user")
        out.append(line)
    for other, what in (("no_pcl", "PCL above no PCL"), ("no_collision", "collision masking above none"),
                        ("learned_protos", "k-means prototypes above learned ones"),
                        ("youtube_dnn", "AISL + PCL above YouTube DNN")):
        c = _compare(runs, "aisl_pcl", other)
        if c:
            out.append(f"{what}: {c[0]} ({c[1]})")
    return [f"*{dataset}, the paper's claims, checked* (Recall@50, test, seen filtered; mean (min-max) over seeds):",
            ""] + [f"- {x}" for x in out] + [""] if out else []


def setup_text() -> list[str]:
    per = "; ".join(f"{d}: batch {c['batch_size']}, at most {c['epochs']} epochs, P = {c['prototypes']} prototypes, "
                    f"activeness [{', '.join(c['activeness'])}]" for d, c in DATASETS.items())
    return [(f"Setup: every query reads only the user's history (YouTube DNN / DSSM: `query_features: [history]`; "
            "the multi-interest models: `history: history`, AISL also `activeness_features`); output_dim 64, "
            "temperature 0.05, logQ correction, Adam 0.002, early stopping on valid Recall@50 (patience 1, best "
            f"epoch restored; the epochs column counts the epochs trained). AISL + PCL: K_max = {K_MAX}, adaptive, "
            "k-means prototypes re-clustered every epoch, collision masking, prototype loss weight 0.1; MIND / "
            f"ComiRec K = 4. {per}. Most popular: the popularity baseline of the runs (train + valid counts, same "
            "filter)."), ""]


def tables(results: dict, analysis: dict, images: dict) -> str:
    out = setup_text()
    for dataset in DATASETS:
        if dataset not in results or not any(results[dataset].values()):
            out += [f"**{dataset}**: not yet run.", ""]
            continue
        out += main_table(dataset, results[dataset])
        if dataset in analysis:
            out += analysis_text(dataset, analysis[dataset], images.get(dataset, []))
        out += claims(dataset, results[dataset], analysis.get(dataset))
    return "\n".join(out)


def put_run(stored: dict, dataset: str, seed: int, key: str, metrics: dict) -> None:
    stored["runs"].setdefault(dataset, {}).setdefault(str(seed), {})[key] = metrics


def put_analysis(stored: dict, dataset: str, a: dict) -> None:
    stored["analysis"][dataset] = a


def write_card(text: str, command: str) -> None:
    write_block(CARD, MARK, f"`{command}`", text, heading="## Benchmark (benchmarks/candidate_generation.py)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    ap.add_argument("--only", nargs="+", choices=list(ROWS), help="run only these rows")
    ap.add_argument("--out", default="benchmarks/out/candidate_generation")
    ap.add_argument("--no-card", action="store_true")
    ap.add_argument("--no-analysis", action="store_true", help="skip the per-activity analysis (and its PNGs)")
    ap.add_argument("--card-only", action="store_true", help="write the tables of every dataset in results.json "
                                                             "into the card, train nothing")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results_file = out / "results.json"
    only = set(args.only) if args.only else None

    for dataset in [] if args.card_only else args.datasets:
        for seed in args.seeds:
            def done(key: str, metrics: dict, dataset=dataset, seed=seed) -> None:
                save_results(results_file, partial(put_run, dataset=dataset, seed=seed, key=key, metrics=metrics))

            bench_dataset(dataset, seed, out, only, done)
        if not args.no_analysis and 0 in args.seeds:
            a = analyse(dataset, out)
            if a is not None:
                save_results(results_file, partial(put_analysis, dataset=dataset, a=a))
    stored = load_results(results_file)
    results, analysis = stored["runs"], stored["analysis"]
    images = {d: plots(d, a) for d, a in analysis.items()} if not args.no_analysis else \
        {d: [f"cg_{d}_k_by_activity.png", f"cg_{d}_recall_by_activity.png"] for d in analysis}
    text = tables(results, analysis, images)
    print(text)
    if not args.no_card:
        command = "python benchmarks/candidate_generation.py " + shlex.join(sys.argv[1:])
        write_card(text, command.strip())
        print(f"wrote the tables into seeds/papers/{CARD}; all metrics in {results_file}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
