"""Non-learned scores of the device-cloud replay lists (issue 15): what a one-line rule earns on each list, the bar a
learned cloud / on-device model has to clear (training/replay.py's list metrics, test split by default).

    python benchmarks/replay_heuristics.py                        # taobao-head-sessions (built on first use)
    python benchmarks/replay_heuristics.py --dataset DIR --split valid

Scores: the candidate's category is among the session's clicks / the cloud history's / is the last click's; both
(session + 0.5 cloud); the candidate was viewed before (a repeat of the device history); popularity (its clicks in
the train split: the sampler draws negatives by recent popularity, so this should be near chance). Needs the
category columns (taobao-head-sessions).
"""
from __future__ import annotations

import argparse
import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

from training.datasets import resolve_dataset
from training.replay import list_metrics

COLUMNS = ["step_id", "item_id", "category_id", "session_category_id", "session_history_len", "cloud_hist_category_id",
           "cloud_history_len", "device_hist_item_id", "device_history_len"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="taobao-head-sessions")
    ap.add_argument("--split", default="test")
    ap.add_argument("--k", type=int, default=5)
    args = ap.parse_args()
    data = resolve_dataset(args.dataset)
    missing = [c for c in COLUMNS if c not in {n for f in data.spec.inputs for n in _names(f)}]
    if missing:
        raise SystemExit(f"error: {data.path}: no {missing} (these rules need the category columns of "
                         "taobao-head-sessions)")
    cols = {c: [] for c in COLUMNS + ["click"]}
    for feats, labels in data.dataset(args.split, 8192, features=COLUMNS):
        for c in COLUMNS:
            cols[c].append(feats[c].numpy())
        cols["click"].append(labels["click"].numpy())
    d = {c: np.concatenate(v) for c, v in cols.items()}

    def contains(seq: str, length: str, value: np.ndarray, last: bool = False) -> np.ndarray:
        steps = np.arange(d[seq].shape[1])[None, :]
        valid = steps < d[length][:, None]
        if last:
            valid = steps == (d[length][:, None] - 1)
        return ((d[seq] == value[:, None]) & valid).any(axis=1).astype(float)

    in_session = contains("session_category_id", "session_history_len", d["category_id"])
    in_cloud = contains("cloud_hist_category_id", "cloud_history_len", d["category_id"])
    train_clicks: dict = {}
    for feats, labels in data.dataset("train", 8192, features=["item_id"]):
        for item, y in zip(feats["item_id"].numpy().tolist(), labels["click"].numpy().tolist()):
            train_clicks[item] = train_clicks.get(item, 0) + y
    scores = {
        "category among the session's clicks": in_session,
        "category among the cloud history's": in_cloud,
        "category of the last click": contains("session_category_id", "session_history_len", d["category_id"], True),
        "session + 0.5 cloud": in_session + 0.5 * in_cloud,
        "a repeat of the device history": contains("device_hist_item_id", "device_history_len", d["item_id"]),
        "popularity (train clicks)": np.array([train_clicks.get(i, 0.0) for i in d["item_id"].tolist()]),
    }
    print(f"{data.path} {args.split}: {len(np.unique(d['step_id'])):,} lists\n")
    print(f"| score | NDCG@{args.k} | hit@{args.k} | AUC |\n|---|---|---|---|")
    for name, s in scores.items():
        m = list_metrics(d["step_id"], d["click"], s, args.k)
        print(f"| {name} | {m[f'ndcg@{args.k}'].mean():.4f} | {m[f'hit@{args.k}'].mean():.4f} | "
              f"{np.nanmean(m['auc']):.4f} |")
    return 0


def _names(f) -> list[str]:
    from tfrec_zoo.data.reader import _input_names

    return _input_names(f)


if __name__ == "__main__":
    raise SystemExit(main())
