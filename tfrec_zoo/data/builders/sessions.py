"""Session replay datasets (device-cloud recommendation, seed paper 4): sessions cut from real timestamps, and at
each session step the list the three mechanisms rank.

    tfrec-zoo data build ml-latest-small-sessions        # embedded; 30-minute gap
    tfrec-zoo data build taobao-head-sessions            # ../shared/datasets/taobao_userbehavior_head (page views)

No public dataset logs exposures, so this is the offline protocol (the replay), kept the same for every system:
* Sessions: a user's interactions in time order, cut where two are more than `gap` seconds apart (default 30 min).
  ml-latest-small rates in bursts: 83% of a user's consecutive ratings are <= 60 s apart, 93.8% <= 15 min, 94.1%
  <= 30 min, 94.6% <= 3 h (measured on the embedded file): the share is flat from 15 min to 3 h, so the gap hardly
  matters there; 30 min is also Taobao's customary session gap.
* Steps: in a session of n interactions, a step at position s (s = FIRST_STEP, then every L positions, while
  s + L <= n; at most MAX_STEPS per session). At step s the cloud ranked the list at the session's start, with
  `cloud_history` (the user's last 50 interactions before the session); the device knows `device_history` (the last
  50 before position s: the cloud's plus the s in-session clicks), `session_history` (the in-session clicks alone,
  last 20) and `session_clicks` = s.
* The list: the next L logged interactions (positions s .. s+L-1, label 1) and N negatives (label 0) drawn from
  the last NEG_WINDOW interactions of anyone before the step (popularity and recency matched: what a recommender
  could have exposed then; not uniform noise, and never an item that only appears later), less the items the user
  ever interacts with. (A first sampler drew by popularity over the whole train period, counted partly after the
  step: a DIN trained on part 0 then ranked parts 1 and 2 worse than chance, AUC 0.40-0.42 on taobao, against
  0.61 on valid and test.) One example per (step, candidate), `step_id` groups a
  list (the replay protocol ranks within it).
* Splits by time over all steps: a step whose time is at q = (rank + 0.5) / (all steps) goes to train part 0
  (q < 0.4: the cloud model's set), part 1 (< 0.6: the on-device model's), part 2 (< 0.8: the uplift models' and
  the controller's), valid (< 0.9) or test: every model trains on the past and is scored on its future. (Per user
  in step order, the first rule, put a user's valid lists beside other users' train lists at the same clock time,
  and the causal sampler then drew the valid negatives from those users' train positives: the cloud DIN ranked
  taobao's valid lists below chance, AUC 0.49; with parts by global time 0.53.) `part` (0-2 in train; 3 valid, 4
  test) lets each stage of the pipeline
  train on its own set (`rows: {keep: {part: [1]}, splits: [train]}`), so a later model is trained on predictions
  its predecessor makes out of sample, as the paper's five training sets are.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ...features.spec import FeatureSpec
from ...paths import seeds_data_dir, shared_datasets_dir
from . import Built, register
from ._csv import read_checked_csv
from ._sampling import rng_for
from .movielens import movie_table, read_movielens

GAP_S = 1800
FIRST_STEP = 2            # the device has seen 2 in-session clicks at the first step
LIST_POSITIVES = 5        # L: the next logged interactions in a list
LIST_NEGATIVES = 20       # N
MAX_STEPS = 8             # per session: long rating bursts would otherwise dominate
HISTORY = 50
SESSION_HISTORY = 20      # the in-session clicks alone, most recent 20
PART_EDGES = (0.4, 0.6, 0.8, 0.9)     # train parts 0 / 1 / 2, valid, test
SEED = 0
NEG_WINDOW = 2000         # negatives come from the last 2,000 interactions (anyone's) before the step
TAOBAO_DAYS = (1511539200, 1512316799)     # 2017-11-25 00:00 .. 12-03 23:59:59 at UTC+8, unix s


def cut_sessions(users: np.ndarray, times: np.ndarray, gap: float) -> np.ndarray:
    """Session number per row (rows sorted by user, then time): a new session at a new user or a gap > `gap`."""
    if gap <= 0:
        raise ValueError(f"session gap: expected seconds > 0, got {gap}")
    new = np.ones(len(users), bool)
    new[1:] = (users[1:] != users[:-1]) | (np.diff(times) > gap)
    return np.cumsum(new) - 1


def step_parts(step_times: np.ndarray) -> np.ndarray:
    """Part per step: 0-2 train, 3 valid, 4 test, by the step's place q = (rank + 0.5) / count in time among all
    steps (ties in time by step order)."""
    rank = np.empty(len(step_times), np.int64)
    rank[np.argsort(step_times, kind="stable")] = np.arange(len(step_times))
    q = (rank + 0.5) / len(step_times)
    return np.searchsorted(np.array(PART_EDGES), q, side="right")


def replay_rows(log: pd.DataFrame, *, gap: float = GAP_S, positives: int = LIST_POSITIVES,
                negatives: int = LIST_NEGATIVES, seed: int = SEED, window: int = NEG_WINDOW
                ) -> tuple[pd.DataFrame, dict]:
    """One row per (step, candidate) from `log` (user_id, item_id, timestamp, optionally category_id), see the
    module docstring; and facts for the manifest. With a category, every candidate and history step carries its
    item's (`category_id`, `cloud_hist_category_id`, ...): DIN attends with it."""
    log = log.sort_values(["user_id", "timestamp"], kind="stable").reset_index(drop=True)
    users, items = log["user_id"].to_numpy(), log["item_id"].to_numpy()
    category = (log.drop_duplicates("item_id").set_index("item_id")["category_id"]
                if "category_id" in log else None)
    session = cut_sessions(users, log["timestamp"].to_numpy(np.float64), gap)
    s_start = np.r_[0, np.flatnonzero(np.diff(session)) + 1]
    s_len = np.diff(np.r_[s_start, len(log)])
    # user bounds: a history never crosses into another user's rows
    u_start = np.r_[0, np.flatnonzero(users[1:] != users[:-1]) + 1]
    first_row = np.repeat(u_start, np.diff(np.r_[u_start, len(log)]))

    steps = []                                   # (session, absolute row of the step)
    for sess, (a, n) in enumerate(zip(s_start, s_len)):
        for s in range(FIRST_STEP, n - positives + 1, positives)[:MAX_STEPS]:
            steps.append((sess, a + s))
    if not steps:
        raise ValueError(f"no session has {FIRST_STEP + positives} interactions or more (gap {gap:g} s): nothing to "
                         "replay; use more users or a longer gap")
    steps = np.array(steps, np.int64)
    sess_of, at = steps[:, 0], steps[:, 1]
    part = step_parts(log["timestamp"].to_numpy(np.float64)[at])
    seen = pd.Series(items).groupby(users).agg(lambda s: set(s.tolist())).to_dict()
    draws = _RecentDraws(log["timestamp"].to_numpy(np.float64), items, rng_for(seed, "replay-negatives"), window)

    def history(end: np.ndarray, row: int) -> list:
        lo = max(first_row[row], end - HISTORY)
        return items[lo:end].tolist()

    out: dict[str, list] = {k: [] for k in ("user_id", "item_id", "step_id", "part", "session_clicks", "click",
                                            "cloud_hist_item_id", "device_hist_item_id", "session_item_id",
                                            "timestamp")}
    for step_id, (sess, row) in enumerate(zip(sess_of, at)):
        u = users[row]
        pos = items[row:row + positives].tolist()
        neg = draws.take(float(log["timestamp"].iat[row]), negatives, exclude=seen[u])
        if len(neg) < negatives:
            raise ValueError(f"user {u}, step {step_id}: only {len(neg)} of {negatives} negatives among the last "
                             f"{window} interactions before it that are not the user's own items: too few other "
                             "users' interactions to draw from; build with more users (drop --max-users)")
        cand = pos + neg
        k = len(cand)
        cloud, device = history(s_start[sess], row), history(row, row)
        out["user_id"] += [u] * k
        out["item_id"] += cand
        out["step_id"] += [step_id] * k
        out["part"] += [int(part[step_id])] * k
        out["session_clicks"] += [float(row - s_start[sess])] * k
        out["click"] += [1.0] * len(pos) + [0.0] * len(neg)
        out["cloud_hist_item_id"] += [cloud] * k
        out["device_hist_item_id"] += [device] * k
        out["session_item_id"] += [items[max(s_start[sess], row - SESSION_HISTORY):row].tolist()] * k
        out["timestamp"] += [float(log["timestamp"].iat[row])] * k
    rows = pd.DataFrame(out)
    if category is not None:
        cat = category.to_dict()
        rows["category_id"] = [cat[i] for i in rows["item_id"].tolist()]
        for src, dst in (("cloud_hist_item_id", "cloud_hist_category_id"),
                         ("device_hist_item_id", "device_hist_category_id"),
                         ("session_item_id", "session_category_id")):
            rows[dst] = [[cat[i] for i in h] for h in rows[src]]
    facts = {"gap_s": gap, "sessions": int(len(s_start)), "steps": int(len(steps)),
             "list": {"positives": positives, "negatives": negatives, "sampler": f"the last {window} interactions "
                      "of anyone before the step (by frequency there), less the user's own items"},
             "steps_per_part": {str(p): int((part == p).sum()) for p in range(5)},
             "first_step": FIRST_STEP, "max_steps_per_session": MAX_STEPS, "seed": seed}
    return rows, facts


class _RecentDraws:
    """Negatives for a step at time t: items drawn uniformly from the last WINDOW interactions of anyone before t
    (so in proportion to how often they were just interacted with: what a recommender could expose then), skipping
    excluded and repeated items. Causal: nothing after t, and no item before its first interaction."""

    def __init__(self, times: np.ndarray, items: np.ndarray, rng: np.random.Generator, window: int = NEG_WINDOW):
        order = np.argsort(times, kind="stable")
        self.times, self.items, self.rng, self.window = times[order], items[order].tolist(), rng, window

    def take(self, t: float, k: int, exclude: set, tries: int = 50) -> list:
        """Up to k distinct items not in `exclude` (fewer only when `tries` * k draws cannot find them)."""
        end = max(int(np.searchsorted(self.times, t, side="left")), min(self.window, len(self.items)))
        lo = max(0, end - self.window)
        out: list = []
        for i in self.rng.integers(lo, end, tries * k).tolist():
            item = self.items[i]
            if item not in exclude and item not in out:
                out.append(item)
                if len(out) == k:
                    break
        return out


def replay_splits(rows: pd.DataFrame) -> dict[str, pd.DataFrame]:
    part = rows["part"].to_numpy()
    return {"train": rows[part <= 2].reset_index(drop=True), "valid": rows[part == 3].reset_index(drop=True),
            "test": rows[part == 4].reset_index(drop=True)}


@register("ml-latest-small-sessions", "MovieLens latest-small rating sessions (30-min gap) as a device-cloud replay: "
          "per step the next 5 rated movies + 20 negatives from the ratings just before", needs_shared=False)
def build_ml_sessions(spec: FeatureSpec, raw_dir: Path | None, *, max_users: int | None = None,
                      gap: float = GAP_S) -> Built:
    raw = raw_dir or seeds_data_dir() / "ml-latest-small"
    ratings, movies, _ = read_movielens(raw, max_users)
    log = ratings.rename(columns={"userId": "user_id", "movieId": "item_id"})[["user_id", "item_id", "timestamp"]]
    rows, facts = replay_rows(log, gap=gap)
    genres = movie_table(movies).set_index("movie_id")["genres"]
    rows["genres"] = genres.reindex(rows["item_id"]).to_numpy()        # the candidate's, a column DIN reads
    if rows["genres"].isna().any():
        bad = rows.loc[rows["genres"].isna(), "item_id"].iloc[0]
        raise ValueError(f"{raw}/ratings.csv: movie {bad} has no row in movies.csv")
    return Built(replay_splits(rows), source=str(raw / "ratings.csv"),
                 extra={**facts, "interaction": "a rating (any value)", "max_users": max_users})


@register("taobao-head-sessions", "Taobao UserBehavior head page views in 30-min sessions as a device-cloud replay")
def build_taobao_sessions(spec: FeatureSpec, raw_dir: Path | None, *, max_users: int | None = None,
                          gap: float = GAP_S) -> Built:
    raw = raw_dir or shared_datasets_dir() / "taobao_userbehavior_head"
    path = raw / "UserBehavior_head.csv"
    frame = read_checked_csv(path, {"user_id": "int", "item_id": "int", "category_id": "int", "behavior": "text",
                                    "timestamp": "int"},
                             names=["user_id", "item_id", "category_id", "behavior", "timestamp"],
                             missing_fix="expected the Taobao UserBehavior head (see its LOADER.md)")
    if max_users is not None:
        frame = frame[frame["user_id"].isin(sorted(frame["user_id"].unique())[:max_users])]
    # page views are the clicks; the 9 days (2017-11-25 .. 12-03, UTC+8) hold a few outlier times: dropped
    views = frame[(frame["behavior"] == "pv") & frame["timestamp"].between(*TAOBAO_DAYS)]
    rows, facts = replay_rows(views[["user_id", "item_id", "category_id", "timestamp"]], gap=gap)
    return Built(replay_splits(rows), source=str(path),
                 extra={**facts, "interaction": "a page view (pv)", "outside_the_9_days_dropped":
                        int((frame["behavior"] == "pv").sum() - len(views)), "max_users": max_users})
