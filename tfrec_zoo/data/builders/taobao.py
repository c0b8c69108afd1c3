"""taobao-head (../shared/datasets/taobao_userbehavior_head): CTR examples with long behaviour sequences.

* Positives: every behaviour (pv, cart, fav, buy) of a user -> `click` = 1. `buy` = 1 for purchases; it is masked
  by `click`, i.e. a conversion label over real behaviours only, because a sampled negative was never shown to the
  user, so its "not bought" is not an observation.
* Split: per user in time order, the last 20% of the user's behaviours -> test, the 10% before -> valid.
* History: the user's earlier behaviours, oldest first, up to 539 steps (the longest user log, so nothing is cut):
  item id and category id (sharing the target's tables), behaviour type, and hours between that behaviour and the
  target. `attach_histories` keeps a later split's behaviours out of every earlier split's histories.
* Negatives, one per positive, sampler `window-matched` (seed 0): another interaction row (of any user) in the same
  split and the same UTC hour (`ts // 3600`), whose item the user never interacted with; the negative takes that
  row's item and category and the positive's user, time and history. Drawing rows, not distinct items, matches the
  positives' popularity; the same hour matches their recency; the same split keeps the share of items unseen in
  training equal for positives and negatives (a uniform sampler gives ~71% vs ~25%, see the README's Pitfalls).
  Fallbacks when the hour has no eligible row: same split and UTC day, then the whole split (counts in the manifest).
* Known shortcut left in on purpose: a user's own items are never negatives, so "target item already in the
  history" (repeat views, common on Taobao) only ever happens for positives; `extra.pos_item_in_history` says how often.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ...features.spec import FeatureSpec
from ...paths import shared_datasets_dir
from ..interactions import assign_splits, attach_histories, chronological, split_frames
from . import Built, register
from ._context import interleave_negatives, read_rows, sample_matched_rows, uniform_items, unseen_rate

RAW_FILE = "UserBehavior_head.csv"
BEHAVIORS = frozenset({"pv", "cart", "fav", "buy"})
VALID_FRAC, TEST_FRAC = 0.1, 0.2
SEED = 0
SAMPLER = ("window-matched: a row of any user in the same split and UTC hour whose item the user never touched "
           "(popularity-weighted); fallback same split and UTC day, then the whole split")


def read_log(raw: Path, max_users: int | None = None) -> pd.DataFrame:
    """The raw behaviours (user_id, item_id, category_id, behavior, timestamp), first `max_users` users by id."""
    cols = [("user_id", "int"), ("item_id", "int"), ("category_id", "int"), ("behavior", BEHAVIORS),
            ("timestamp", "int")]
    return read_rows(raw / RAW_FILE, cols, sep=",", limit_users=("user_id", max_users) if max_users else None)


def gap_hours(targets: np.ndarray, steps: pd.Series) -> list[list[float]]:
    """Per row: hours between each history step's time and the target's time (>= 0, history is earlier)."""
    return [((t - np.asarray(s, np.float64)) / 3600.0).tolist() for t, s in zip(targets, steps)]


def negatives_for(log: pd.DataFrame, ranks: np.ndarray, seed: int) -> tuple[pd.DataFrame, dict]:
    """One window-matched negative per positive row of `log` (sorted, with histories); and sampler counts."""
    ts = log["timestamp"].to_numpy()
    split = ranks.astype(np.int64) * 10**9  # keys never mix splits
    levels = [split + ts // 3600, split + ts // 86400, split]
    rows, level = sample_matched_rows(log["user_id"].to_numpy(), log["item_id"].to_numpy(), levels, seed)
    neg = log.copy()
    for col in ("item_id", "category_id"):
        neg[col] = log[col].to_numpy()[rows]
    neg["behavior"] = ""  # a sampled negative is no behaviour (the column only feeds later rows' histories)
    neg["click"] = 0.0
    neg["buy"] = 0.0
    counts = np.bincount(level, minlength=3)
    return neg, {"same_hour": int(counts[0]), "same_day": int(counts[1]), "same_split": int(counts[2])}


def pitfall_report(log: pd.DataFrame, ranks: np.ndarray, matched_items: np.ndarray, seed: int) -> dict:
    """Share of test items never seen among training positives: positives vs matched vs uniform negatives."""
    known = set(log.loc[ranks == 0, "item_id"].tolist())
    test = ranks == 2
    uniform = uniform_items(log["user_id"].to_numpy(), log["item_id"].to_numpy(), seed)
    return {"definition": "share of test rows whose item_id never occurs as a training positive",
            "test_positives": round(unseen_rate(log.loc[test, "item_id"].to_numpy(), known), 4),
            "test_negatives_window_matched": round(unseen_rate(matched_items[test], known), 4),
            "test_negatives_uniform": round(unseen_rate(uniform[test], known), 4)}


@register("taobao-head", "Taobao UserBehavior head (814 users): CTR with 539-step behaviour histories, "
          "window-matched negatives")
def build_taobao_head(spec: FeatureSpec, raw_dir: Path | None, *, max_users: int | None = None,
                      seed: int = SEED) -> Built:
    raw = raw_dir or shared_datasets_dir() / "taobao_userbehavior_head"
    log = chronological(read_log(raw, max_users), "user_id", "timestamp")
    log["click"] = 1.0
    log["buy"] = (log["behavior"] == "buy").astype(np.float64)
    ranks = assign_splits(log, "user_id", "time", valid_frac=VALID_FRAC, test_frac=TEST_FRAC)
    log = attach_histories(log, spec, "user_id", ranks)
    log["hist_gap_hours"] = gap_hours(log["timestamp"].to_numpy(np.float64), log["hist_gap_hours"])
    neg, levels = negatives_for(log, ranks, seed)
    pitfall = pitfall_report(log, ranks, neg["item_id"].to_numpy(), seed)
    test = ranks == 2
    repeat = np.mean([i in set(h) for i, h in zip(log.loc[test, "item_id"], log.loc[test, "hist_item_id"])])
    print(f"taobao-head: test items unseen in training: positives {pitfall['test_positives']:.3f}, window-matched "
          f"negatives {pitfall['test_negatives_window_matched']:.3f}, uniform negatives "
          f"{pitfall['test_negatives_uniform']:.3f}")
    rows, row_ranks = interleave_negatives(log, neg, ranks)
    return Built(split_frames(rows, row_ranks), source=str(raw / RAW_FILE), extra={
        "split": f"per-user time: last {TEST_FRAC:.0%} of each user's behaviours test, previous {VALID_FRAC:.0%} valid",
        "time": "unix seconds; sampler windows are UTC hours/days",
        "labels": "click = 1 for every behaviour (pv/cart/fav/buy), 0 for sampled negatives; "
                  "buy = 1 for purchases, masked by click",
        "negatives": {"sampler": SAMPLER, "per_positive": 1, "seed": seed, "levels_used": levels},
        "unseen_in_train": pitfall,
        "pos_item_in_history": round(float(repeat), 4) if test.any() else None,
        "max_users": max_users,
    })
