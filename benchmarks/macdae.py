"""MACDAE (issue 14, seed paper 5: Ding et al. KDD 2019) against its baselines and ablations under the paper's
protocol (each test check-in ranked among 50 matched negatives: NDCG@5, NDCG@10, AUC; frappe: pointwise AUC, logloss,
GAUC), written into the card.

    python benchmarks/macdae.py                                          # every dataset, seeds 0 and 1
    python benchmarks/macdae.py --datasets lbsn-gowalla-ctx --seeds 0 --only wide_deep wd_macdae

Per dataset and seed each row is a `tfrec-zoo train` run directory under --out (a finished run is read back, not
trained again: a killed benchmark resumes where it stopped). Every model: Adam 0.001, batch 512, at most 4 epochs,
early stopping on the valid split's AUC (patience 1). The encoder rows pretrain their autoencoder first (3 epochs,
the positive train rows only, `rows: {keep: {checkin: [1]}}`) and restore it by name (`pretrain:` in one YAML).
Rows: Wide&Deep, DeepFM, NFM, Wide&Deep + multi-head DAE / VAE / MACDAE (K = 4) and MACDAE's ablations (K = 1, 2,
8; constraint off; attention off; encoder frozen after pretraining). Analysis (the MACDAE run of seed 0): the
mean head attention per local hour and weekday of the test check-ins, as a table, eta^2 per head (the share of the
attention's variance the hour explains) and a PNG under seeds/papers/img/. Tables: mean over seeds and the
min-max, written into seeds/papers/macdae.md between the `<!-- macdae-results -->` markers with this command.
"""
from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

from training.experiment import parse_experiment
from training.runs import load_run
from training.trainer import train

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cards import load_results, mean_range, save_results, write_block  # noqa: E402  (benchmarks/cards.py)

MARK = "<!-- macdae-results -->"
CARD = "macdae.md"
IMG = Path(__file__).resolve().parents[1] / "seeds" / "papers" / "img"
# per dataset: its label and protocol. lbsn-*-ctx: the paper's (each test check-in among 50 matched negatives);
# frappe: pointwise (its files hold 2 sampled negatives per positive, no 51-item lists)
DATASETS = {"lbsn-gowalla-ctx": {"task": "checkin", "protocol": "sampled"},
            "lbsn-foursquare-ctx": {"task": "checkin", "protocol": "sampled"},
            "lbsn-yelp-ctx": {"task": "checkin", "protocol": "sampled"},
            "frappe": {"task": "click", "protocol": "pointwise"}}
METRICS = {"sampled": ("ndcg@5", "ndcg@10", "auc"), "pointwise": ("auc", "logloss", "gauc")}
HEADERS = {"ndcg@5": "NDCG@5", "ndcg@10": "NDCG@10", "auc": "AUC", "logloss": "logloss", "gauc": "GAUC"}
ENCODER = {"heads": 4, "units": 256, "epsilon": 0.75, "dnn_units": [256]}
PRETRAIN = {"epochs": 3, "batch_size": 512,
            "optimizer": {"name": "adam", "learning_rate": 0.001}, "include": ["^emb_", "^macdae_"]}
# rows: name -> (model, params, pretraining model or None, pretrain extras)
ROWS = {
    "wide_deep": ("wide_deep", {"dnn_units": [256]}, None, {}),
    "deepfm": ("deepfm", {"dnn_units": [256, 128]}, None, {}),
    "nfm": ("nfm", {"dnn_units": [256]}, None, {}),
    "wd_dae": ("wide_deep_dae", ENCODER, "multihead_dae", {}),
    "wd_vae": ("wide_deep_vae", ENCODER, "multihead_vae", {}),
    "wd_macdae": ("wide_deep_macdae", ENCODER, "macdae", {}),
    **{f"k{k}": ("wide_deep_macdae", {**ENCODER, "heads": k}, "macdae", {}) for k in (1, 2, 8)},
    "no_constraint": ("wide_deep_macdae", ENCODER, "macdae", {"losses": {"constraint": 0.0}}),
    "no_attention": ("wide_deep_macdae", {**ENCODER, "attention": False}, "macdae", {}),
    "frozen": ("wide_deep_macdae", ENCODER, "macdae", {"freeze": ["^macdae_encoder$"]}),
}
LABELS = {"wide_deep": "Wide&Deep (base)", "deepfm": "DeepFM", "nfm": "NFM",
          "wd_dae": "Wide&Deep + multi-head DAE", "wd_vae": "Wide&Deep + multi-head VAE",
          "wd_macdae": "**Wide&Deep + MACDAE (K = 4)**", "k1": "  ablation: K = 1", "k2": "  ablation: K = 2",
          "k8": "  ablation: K = 8", "no_constraint": "  ablation: constraint off",
          "no_attention": "  ablation: attention off", "frozen": "  ablation: encoder frozen after pretraining"}
# the author's README, Yelp (their split and negatives; not this data): Wide&Deep -> Wide&Deep + MACDAE
ANCHOR = {"ndcg@5": (0.3827, 0.4382), "ndcg@10": (0.4348, 0.4854)}


def _log(*a):
    print(*a, flush=True)


def experiment(key: str, dataset: str, seed: int):
    model, params, pre_model, extra = ROWS[key]
    task, protocol = DATASETS[dataset]["task"], DATASETS[dataset]["protocol"]
    raw = {"name": key, "dataset": dataset, "model": model, "params": params, "seed": seed, "epochs": 4,
           "batch_size": 512, "optimizer": {"name": "adam", "learning_rate": 0.001},
           "early_stopping": {"monitor": f"val_{task}_auc", "mode": "max", "patience": 1},
           "evaluation": {"splits": ["test"], "ks": [5, 10], "modes": ["recommendation"]} if protocol == "sampled"
           else {"splits": ["test"]}}
    if pre_model:
        raw["pretrain"] = {"model": pre_model, "rows": {"keep": {task: [1]}}, **PRETRAIN, **extra}
    return parse_experiment(raw, f"benchmarks/macdae.py:{key}")


def run_row(key: str, dataset: str, seed: int, run_dir: Path) -> dict:
    exp = experiment(key, dataset, seed)
    start = time.perf_counter()
    result = train(exp, run_dir, verbose=0, log=lambda *a: None)
    if not result.finished_before:
        _log(f"  {dataset} seed {seed} {key}: {time.perf_counter() - start:.0f} s")
    task, protocol = DATASETS[dataset]["task"], DATASETS[dataset]["protocol"]
    overall = result.metrics["test"]["overall"]
    test = overall[f"{task} (recommendation)"] if protocol == "sampled" else overall[task]
    history = run_dir / "history.csv"
    return {**{m: float(test[m]) for m in METRICS[protocol]},
            "epochs": max(0, len(history.read_text().splitlines()) - 1) if history.exists() else None}


# -- analysis: what the heads attend to, by explicit context --------------------------------------------------
def head_attention(run_dir: Path) -> dict:
    """Mean attention per head by local hour and weekday over the test check-ins, and eta^2 per head."""
    from tfrec_zoo._tf import keras

    _, data, model = load_run(run_dir, log=lambda *a: None)
    encoder = model.get_layer("macdae_encoder")
    attention = keras.Model(model.inputs, encoder(model.get_layer("macdae_x").output, training=False)["attention"])
    names = list(model.input_names)
    contexts = [c for c in ("hour", "weekday") if c in {f.name for f in data.spec.features}]
    att, ctx = [], {c: [] for c in contexts}
    for feats, _ in data.dataset("test", 4096, features=sorted({*names, *contexts})):
        att.append(np.asarray(attention.predict_on_batch({k: feats[k] for k in names})))
        for c in contexts:
            ctx[c].append(feats[c].numpy())
    a = np.concatenate(att)
    out = {"rows": int(len(a)), "mean": a.mean(0).round(4).tolist()}
    total = a.var(0)
    for c in contexts:
        v = np.concatenate(ctx[c])
        levels = sorted(set(v.tolist()))
        means = np.array([a[v == x].mean(0) for x in levels])
        counts = np.array([(v == x).sum() for x in levels])
        between = (counts[:, None] * (means - a.mean(0)) ** 2).sum(0) / len(a)
        out[c] = {"levels": levels, "counts": counts.tolist(), "means": means.round(4).tolist(),
                  "eta2": (between / np.maximum(total, 1e-12)).round(4).tolist()}
    return out


def plot(dataset: str, a: dict) -> str | None:
    if "hour" not in a:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    means = np.array(a["hour"]["means"])
    fig, ax = plt.subplots(figsize=(5.5, 2.8), dpi=100)
    for k in range(means.shape[1]):
        ax.plot(a["hour"]["levels"], means[:, k], marker="o", ms=3, label=f"head {k + 1}")
    ax.set_xlabel("local hour of the check-in")
    ax.set_ylabel("mean attention")
    ax.set_title(f"MACDAE head attention by hour, {dataset} (test)", fontsize=9)
    ax.legend(fontsize=7, ncol=4)
    fig.tight_layout()
    name = f"macdae_{dataset}_heads_by_hour.png"
    IMG.mkdir(parents=True, exist_ok=True)
    fig.savefig(IMG / name)
    plt.close(fig)
    return name


# -- tables ------------------------------------------------------------------------------------------------------
def _cell(values: list[float]) -> str:
    return mean_range(values)


def main_table(dataset: str, seeds: dict) -> list[str]:
    runs = [seeds[s] for s in sorted(seeds)]
    metrics = METRICS[DATASETS[dataset]["protocol"]]
    what = ("test check-ins, each ranked among its 50 matched negatives" if DATASETS[dataset]["protocol"] == "sampled"
            else "test rows, pointwise")
    lines = [f"**{dataset}** ({what}; seeds {', '.join(sorted(seeds))}: mean (min-max))", "",
             "| model | " + " | ".join(HEADERS[m] for m in metrics) + " | epochs |", "|---|" + "---|" * len(metrics)
             + "---|"]
    for key in ROWS:
        vals = {m: [r[key][m] for r in runs if key in r] for m in metrics}
        if not vals["auc"]:
            continue
        epochs = "/".join(str(r[key].get("epochs")) for r in runs if key in r)
        lines.append(f"| {LABELS[key]} | " + " | ".join(_cell(vals[m]) for m in metrics) + f" | {epochs} |")
    base, mac = _means(runs, "wide_deep", metrics), _means(runs, "wd_macdae", metrics)
    if base and mac and "ndcg@5" in metrics:
        rel = {m: 100 * (mac[m] / base[m] - 1) for m in ("ndcg@5", "ndcg@10")}
        anchor = {m: 100 * (b / a - 1) for m, (a, b) in ANCHOR.items()}
        lines += ["", f"Wide&Deep -> Wide&Deep + MACDAE: NDCG@5 {rel['ndcg@5']:+.1f}%, NDCG@10 {rel['ndcg@10']:+.1f}% "
                      f"(the author's Yelp README: {anchor['ndcg@5']:+.1f}% / {anchor['ndcg@10']:+.1f}%)."]
    return lines + [""]


def _means(runs: list[dict], key: str, metrics) -> dict | None:
    got = [r[key] for r in runs if key in r]
    return {m: float(np.mean([g[m] for g in got])) for m in metrics} if got else None


def analysis_text(dataset: str, a: dict, image: str | None) -> list[str]:
    k = len(a["mean"])
    rows = "test check-ins" if DATASETS[dataset]["protocol"] == "sampled" else "test rows"
    lines = [f"Head attention of the Wide&Deep + MACDAE run (seed 0), {a['rows']:,} {rows}: mean "
             + ", ".join(f"head {i + 1} {m:.3f}" for i, m in enumerate(a["mean"])) + "."]
    for c in ("hour", "weekday"):
        if c in a:
            eta = a[c]["eta2"]
            lines.append(f"Share of each head's attention variance explained by the {c} (eta^2): "
                         + ", ".join(f"{e:.3f}" for e in eta) + (
                             "; the heads hardly separate by " + c if max(eta) < 0.02 else "") + ".")
    if "hour" in a:
        levels, means = a["hour"]["levels"], np.array(a["hour"]["means"])
        lines += ["", "| local hour | rows | " + " | ".join(f"head {i + 1}" for i in range(k)) + " |",
                  "|---|---|" + "---|" * k]
        for h, n, m in zip(levels, a["hour"]["counts"], means):
            lines.append(f"| {h} | {n} | " + " | ".join(f"{x:.3f}" for x in m) + " |")
    if image:
        lines += ["", f"![head attention by hour](img/{image})"]
    return lines + [""]


def tables(results: dict, analysis: dict, images: dict) -> str:
    out = ["Setup: Adam 0.001, batch 512, at most 4 epochs with early stopping on the valid split's AUC; encoders "
           "pretrained 3 epochs on the positive train rows (reconstruction + constraint 0.005, epsilon 0.75; the VAE: "
           "reconstruction + KL), restored by name and fine-tuned; z width 256, deep tower [256].", ""]
    for dataset in DATASETS:
        if dataset not in results or not any(results[dataset].values()):
            out += [f"**{dataset}**: not yet run.", ""]
            continue
        out += main_table(dataset, results[dataset])
        if dataset in analysis:
            out += analysis_text(dataset, analysis[dataset], images.get(dataset))
    return "\n".join(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    ap.add_argument("--only", nargs="+", choices=list(ROWS), help="run only these rows")
    ap.add_argument("--out", default="benchmarks/out/macdae")
    ap.add_argument("--no-card", action="store_true")
    ap.add_argument("--card-only", action="store_true", help="write results.json's tables into the card, train nothing")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results_file = out / "results.json"
    for dataset in [] if args.card_only else args.datasets:
        for seed in args.seeds:
            for key in ROWS:
                if args.only and key not in args.only:
                    continue
                _log(f"{dataset} seed {seed}: {key}")
                metrics = run_row(key, dataset, seed, out / dataset / f"seed{seed}" / key)
                save_results(results_file, lambda s, d=dataset, sd=seed, k=key, m=metrics:
                             s["runs"].setdefault(d, {}).setdefault(str(sd), {}).__setitem__(k, m))
        main_run = out / dataset / "seed0" / "wd_macdae"
        if 0 in args.seeds and (main_run / "DONE").exists():
            a = head_attention(main_run)
            save_results(results_file, lambda s, d=dataset, a=a: s["analysis"].__setitem__(d, a))
    stored = load_results(results_file)
    images = {d: plot(d, a) for d, a in stored["analysis"].items()}
    text = tables(stored["runs"], stored["analysis"], images)
    print(text)
    if not args.no_card:
        command = ("python benchmarks/macdae.py " + shlex.join(sys.argv[1:])).strip()
        write_block(CARD, MARK, f"`{command}`", text, heading="## Benchmark (benchmarks/macdae.py)")
        print(f"wrote the tables into seeds/papers/{CARD}; all metrics in {results_file}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
