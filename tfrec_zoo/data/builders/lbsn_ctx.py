"""lbsn-yelp-ctx / lbsn-foursquare-ctx / lbsn-gowalla-ctx: the LBSN check-ins under the MACDAE paper's protocol
(the author's `contextual_dataset_yelp.py`): per user a random 80/20 split of the positives, each test positive
ranked among sampled negatives by NDCG@5 / NDCG@10 over its list (and AUC).

Differences from the lbsn-* builders (lbsn.py; same files, contexts, histories and activeness):
* Split: per user, the check-ins are shuffled (seed 0); round(20%) -> test, round(10%) of the rest -> valid (early
  stopping), the rest train (the paper: 80/20, no valid).
* Train and valid rows: every positive + 1 nearby-matched negative (lbsn.py's sampler), as in lbsn-*.
* Test rows: the positives only, each with `eval_negatives` = 50 distinct POIs the user never checked in at, drawn
  without replacement in proportion to their train check-ins from the positive's 0.1-degree cell (about 11 km), then
  its 1-degree cell, then everywhere: matched to the positive's area and popularity, not uniform (uniform negatives
  are far away: distance alone ranks them; `extra.shortcut` measures it). Each negative carries its own `cell` and
  `distance_km` (from the row's previous check-in), which the sampled protocol feeds with it (training/ranking.py).
* Local time: the files' unix times are UTC - 8 h (measured: read as UTC, the least active hour of Gowalla's
  check-ins is 2 h in US-West POIs, 1 h in US-Central and 17 h in Europe; read as UTC + 8 h and then at each POI's
  zone it is 2-3 am in every longitude band, Foursquare likewise. The files were evidently made on a UTC+8 machine:
  Yelp's dates all sit at 16:00 UTC = local midnight at UTC+8, lbsn.py). So `hour` / `weekday` are read at
  file time + 8 h + round(longitude / 15) h, the POI's nominal zone: no time-zone database ships here, so borders,
  half-hour zones and daylight saving are not modelled (off by up to about 1-2 h in places). Yelp stores dates
  only and keeps its date-based `weekday` and no `hour`.
* Histories: the user's earlier check-ins (time order); a train row's only from train, a test row's from any split
  (what a live system knows at request time).
* `poi_users` (the author's e_iu, the users who interacted with the item): a `side_of: poi_id` table, per POI the
  users with the most train check-ins there (at most POI_USERS, ties by user id), from the train split only (the
  author's list also held test positives: a leak). Looked up by the POI id in the graph, so an eval negative gets
  its own; a POI without train check-ins has none.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ...features.spec import FeatureSpec
from ...paths import shared_datasets_dir
from ..interactions import attach_histories, chronological, split_frames
from . import Built, register
from ._activeness import with_activeness
from ._context import grid_key, grid_label, haversine_km, interleave_negatives
from ._sampling import rng_for
from .lbsn import CELL_DEG, NEAR_DEG, REGION_DEG, SUBSETS, add_contexts, negatives_for, read_checkins, read_pois
from .lbsn import train_activeness

SEED = 0
TEST_FRAC, VALID_FRAC = 0.2, 0.1          # of the user's check-ins; valid: of what test leaves
EVAL_NEGATIVES = 50
POI_USERS = 20
FILE_CLOCK_LAG_H = 8                      # the files' unix time = UTC - 8 h (see the module docstring)


def local_clock(timestamp: np.ndarray, lon: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(hour 0-23, weekday 0-6) at UTC + round(lon / 15) hours."""
    offset = np.round(np.asarray(lon, float) / 15.0).astype(np.int64) * 3600
    t = pd.to_datetime(np.asarray(timestamp, np.int64) + offset, unit="s", utc=True)
    return t.hour.to_numpy(np.int64), t.weekday.to_numpy(np.int64)


def random_user_split(users: np.ndarray, seed: int) -> np.ndarray:
    """Split rank per row (0 train, 1 valid, 2 test): per user a seeded shuffle, round(20%) test, round(10%) of the
    rest valid."""
    rng = rng_for(seed, "ctx-split")
    ranks = np.zeros(len(users), np.int8)
    order = np.argsort(users, kind="stable")
    starts = np.flatnonzero(np.r_[True, users[order][1:] != users[order][:-1]])
    for a, b in zip(starts, np.r_[starts[1:], len(order)]):
        rows = order[a:b][rng.permutation(b - a)]
        n_test = int(round(TEST_FRAC * len(rows)))
        n_valid = int(round(VALID_FRAC * (len(rows) - n_test)))
        ranks[rows[:n_test]] = 2
        ranks[rows[n_test:n_test + n_valid]] = 1
    return ranks


def eval_negative_lists(rows: pd.DataFrame, train: pd.DataFrame, visited: dict, k: int, seed: int
                        ) -> tuple[list[np.ndarray], np.ndarray]:
    """Per row of `rows`, k distinct POIs its user never visited, drawn without replacement with probability
    proportional to their check-ins in `train`, from the row's 0.1-degree cell, then 1-degree cell, then all of
    `train`. Returns (the lists, how many came from each level)."""
    rng = rng_for(seed, "ctx-eval-negatives")
    groups = []
    for deg in (NEAR_DEG, REGION_DEG, None):
        keys = (np.zeros(len(train), np.int64) if deg is None
                else grid_key(train["lat"].to_numpy(), train["lon"].to_numpy(), deg))
        table = {}
        frame = pd.DataFrame({"key": keys, "poi": train["poi_id"].to_numpy()})
        for key, part in frame.groupby("key", sort=False)["poi"]:
            items, counts = np.unique(part.to_numpy(), return_counts=True)
            table[key] = (items, counts.astype(float))
        row_keys = (np.zeros(len(rows), np.int64) if deg is None
                    else grid_key(rows["lat"].to_numpy(), rows["lon"].to_numpy(), deg))
        groups.append((table, row_keys))
    out, used = [], np.zeros(3, np.int64)
    users = rows["user_id"].to_numpy()
    for i in range(len(rows)):
        banned = visited[users[i]]
        chosen: list = []
        for lv, (table, row_keys) in enumerate(groups):
            items, counts = table.get(row_keys[i], (None, None))
            if items is None:
                continue
            ok = ~np.isin(items, list(banned | set(chosen)))
            need = min(k - len(chosen), int(ok.sum()))
            if need:
                p = counts[ok] / counts[ok].sum()
                chosen += rng.choice(items[ok], size=need, replace=False, p=p).tolist()
                used[lv] += need
            if len(chosen) == k:
                break
        if len(chosen) < k:
            raise ValueError(f"user {users[i]}: only {len(chosen)} POIs with train check-ins the user never visited, "
                             f"the protocol ranks each test check-in among {k} (test row {i}); build with more "
                             "users (drop --max-users) or fewer negatives")
        out.append(np.asarray(chosen, np.int64))
    return out, used


def poi_users(train: pd.DataFrame, pois: pd.DataFrame) -> pd.DataFrame:
    """The POI catalogue: per POI (every POI of the files) `poi_users`, its top POI_USERS users by train
    check-ins, and its `categories` when the subset has them."""
    counts = train.groupby(["poi_id", "user_id"]).size().reset_index(name="n")
    counts = counts.sort_values(["poi_id", "n", "user_id"], ascending=[True, False, True])
    top = counts.groupby("poi_id", sort=False).head(POI_USERS).groupby("poi_id", sort=False)["user_id"].agg(list)
    out = pd.DataFrame({"poi_id": pois.index.to_numpy(),
                        "poi_users": [top.get(p, []) for p in pois.index.to_numpy()]})
    if "categories" in pois:      # Yelp: the POI's categories are the candidate's, looked up by its id in the graph
        out["categories"] = [list(c) for c in pois["categories"].to_numpy()]
    return out


def _shortcut_auc(pos: np.ndarray, neg: np.ndarray) -> float:
    """AUC of 'nearer is better' (-distance) of each positive against its own negatives (ties count half)."""
    wins = (pos[:, None] < neg).mean() + 0.5 * (pos[:, None] == neg).mean()
    return round(float(wins), 4)


def build_lbsn_ctx(name: str, spec: FeatureSpec, raw_dir: Path | None, *, max_users: int | None = None,
                   seed: int = SEED, negatives: int = EVAL_NEGATIVES) -> Built:
    base = name.removesuffix("-ctx")
    sub = SUBSETS[base]
    raw = raw_dir or shared_datasets_dir() / "lbsn_poi_liu2017" / sub.folder
    pois = read_pois(raw, sub)
    raw_log, n_dup = read_checkins(raw, sub, pois, max_users)
    log = add_contexts(chronological(raw_log, "user_id", "timestamp"), pois, sub.shift_hours)
    local = sub.shift_hours == 0                       # Yelp: dates only, kept as lbsn.py reads them
    if local:
        utc = log["timestamp"].to_numpy() + FILE_CLOCK_LAG_H * 3600
        log["hour"], log["weekday"] = local_clock(utc, log["lon"].to_numpy())
    log["checkin"] = 1.0
    ranks = random_user_split(log["user_id"].to_numpy(), seed)
    log = attach_histories(log, spec, "user_id", ranks, sequences=[spec["history"]])
    log = with_activeness(log, "user_id", train_activeness(log, ranks))
    neg, levels = negatives_for(log, ranks, seed)
    if local:                                          # a negative keeps its positive's time: same clock
        neg["hour"], neg["weekday"] = log["hour"].to_numpy(), log["weekday"].to_numpy()
    visited = log.groupby("user_id", sort=False)["poi_id"].agg(set).to_dict()
    test = log[ranks == 2].reset_index(drop=True)
    lists, eval_levels = eval_negative_lists(test, log[ranks == 0], visited, negatives, seed)
    flat = np.concatenate(lists)
    lat, lon = pois["lat"].reindex(flat).to_numpy(), pois["lon"].reindex(flat).to_numpy()
    prev_lat, prev_lon = (np.repeat(test[c].to_numpy(), negatives) for c in ("prev_lat", "prev_lon"))
    dist = np.where(np.isnan(prev_lat), 0.0, haversine_km(prev_lat, prev_lon, lat, lon)).astype(np.float32)
    cells = grid_label(lat, lon, CELL_DEG)
    test["eval_neg_poi_id"] = [x.tolist() for x in lists]
    test["eval_neg_cell"] = [list(c) for c in np.split(cells, len(lists))]
    test["eval_neg_distance_km"] = [list(d) for d in np.split(dist, len(lists))]
    # the shortcut a uniform sampler leaves: distance alone separates positives from its negatives
    rng = rng_for(seed, "ctx-uniform-check")
    catalog = pois.index.to_numpy()
    uni = catalog[rng.integers(0, len(catalog), (len(test), negatives))]
    u_dist = haversine_km(prev_lat, prev_lon, pois["lat"].reindex(uni.ravel()).to_numpy(),
                          pois["lon"].reindex(uni.ravel()).to_numpy()).reshape(len(test), negatives)
    has_prev = ~np.isnan(test["prev_lat"].to_numpy())
    pos_d = test["distance_km"].to_numpy()[has_prev]
    shortcut = {"definition": "AUC of -distance_km (nearer ranks higher) of each test positive against its own list",
                "matched_negatives": _shortcut_auc(pos_d, dist.reshape(len(test), negatives)[has_prev]),
                "uniform_negatives": _shortcut_auc(pos_d, u_dist[has_prev])}
    print(f"{name}: distance-only AUC on the test lists: matched {shortcut['matched_negatives']:.3f}, "
          f"uniform {shortcut['uniform_negatives']:.3f}")
    trainish = ranks < 2
    rows, row_ranks = interleave_negatives(log[trainish].reset_index(drop=True),
                                           neg[trainish].reset_index(drop=True), ranks[trainish])
    for col, empty in (("eval_neg_poi_id", []), ("eval_neg_cell", []), ("eval_neg_distance_km", [])):
        rows[col] = [empty] * len(rows)
    frames = split_frames(rows, row_ranks)
    frames["test"] = test
    return Built(frames, source=str(raw / sub.checkins), catalogues={"poi_id": poi_users(log[ranks == 0], pois)},
                 extra={
        "subset": sub.folder,
        "split": f"per user, shuffled (seed {seed}): round({TEST_FRAC:.0%}) test, round({VALID_FRAC:.0%}) of the "
                 "rest valid, the rest train",
        "time": (f"hour/weekday at file time + {FILE_CLOCK_LAG_H} h (= UTC) + round(longitude / 15) h (nominal zone; "
                 "no DST, no borders)" if local else
                 f"weekday of the date (UTC + {sub.shift_hours} h); no hour"),
        "negatives": {"train_valid": "1 nearby-matched per positive (lbsn.py)", "levels_used": levels},
        "eval_negatives": {"per_test_positive": negatives, "sampler": "distinct unvisited POIs, popularity-weighted "
                           "by train check-ins, from the 0.1-degree cell, then 1-degree, then all",
                           "levels_used": {"same_0.1deg_cell": int(eval_levels[0]),
                                           "same_1deg_cell": int(eval_levels[1]), "anywhere": int(eval_levels[2])},
                           "seed": seed},
        "shortcut": shortcut,
        "duplicates_dropped": n_dup,
        "max_users": max_users,
    })


def _register(name: str, doc: str) -> None:
    @register(name, doc)
    def _build(spec: FeatureSpec, raw_dir: Path | None, *, max_users: int | None = None, seed: int = SEED) -> Built:
        return build_lbsn_ctx(name, spec, raw_dir, max_users=max_users, seed=seed)
    _build.__name__ = _build.__qualname__ = f"build_{name.replace('-', '_')}"
    globals()[_build.__name__] = _build


_register("lbsn-yelp-ctx", "Yelp_3 check-ins, MACDAE protocol: random 80/20 per user, 50 matched negatives per test "
          "positive")
_register("lbsn-foursquare-ctx", "Foursquare_3 check-ins, MACDAE protocol (local time by longitude)")
_register("lbsn-gowalla-ctx", "Gowalla_3 check-ins, MACDAE protocol (local time by longitude)")
