"""lbsn-yelp / lbsn-foursquare / lbsn-gowalla (../shared/datasets/lbsn_poi_liu2017, Liu et al. VLDB'17): O2O
check-in examples with explicit time and location contexts.

Subsets: the ones with raw timestamped check-ins, Yelp_3 (1,000 users / 5,255 POIs / 425 categories),
Foursquare_3 (5,000 / 8,000) and Gowalla_3 (1,000 / 24,209). Only Yelp has POI categories (multi-hot, up to 8).

* Positives: every check-in -> `checkin` = 1; exact duplicates (same user, POI and second) are dropped once.
* Split: per user in time order (ties keep file order), last 20% -> test, the 10% before -> valid.
* Contexts: `hour` (0-23) and `weekday` (0-6, Monday = 0) of the unix timestamp read in UTC, so for Foursquare
  (US) and Gowalla (worldwide) they are not local clock times. The files' unix times are themselves UTC - 8 h
  (lbsn_ctx.py measures it), so these hours run 8 h behind UTC, near US Pacific time; lbsn-*-ctx reads local
  time. Yelp stores dates only, every one at 16:00 UTC,
  i.e. local midnight at UTC+8 where the files were made: the builder adds 8 h so `weekday` is the calendar date's,
  and the Yelp spec has no `hour` (it would be constant).
  `cell`: the POI's 0.01-degree grid cell (about 1.1 km north-south) as 'row_col'. `distance_km`: haversine distance
  from the user's previous check-in (in any earlier split; 0 for the first), normalised in-graph with log1p.
* Activeness, from the user's train check-ins only (never a negative or a valid/test check-in), the same on every
  row of the user: `user_activity` (how many), `user_spread` (distinct `cell`s), `user_recency` (days from the
  user's last train check-in to the latest train check-in of anyone).
* History: the user's earlier POIs (and their cells), most recent 100, never one of a later split (`attach_histories`).
* Negatives, one per positive, sampler `nearby-matched` (seed 0): another check-in row in the same split and the same
  0.1-degree cell (about 11 km) whose POI the user never visited; the negative takes that POI (its id, cell,
  categories) and the positive's user, time and history, and its `distance_km` is recomputed from the user's previous
  check-in. Drawing rows, not distinct POIs, matches the positives' popularity; the same split keeps the share of
  POIs unseen in training close for positives and negatives. Fallbacks: same split and 1-degree cell, then the most
  popular POIs of the split (popularity-weighted over the whole split); counts are in the manifest.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ...features.spec import FeatureSpec
from ...paths import shared_datasets_dir
from ..interactions import assign_splits, attach_histories, chronological, split_frames
from . import Built, register
from ._activeness import activeness_table, with_activeness
from ._context import (
    grid_key, grid_label, haversine_km, interleave_negatives, read_rows, sample_matched_rows, uniform_items, unseen_rate,
)

VALID_FRAC, TEST_FRAC = 0.1, 0.2
SEED = 0
CELL_DEG, NEAR_DEG, REGION_DEG = 0.01, 0.1, 1.0
SAMPLER = ("nearby-matched: a check-in row in the same split and 0.1-degree cell whose POI the user never visited "
           "(popularity-weighted); fallback same split and 1-degree cell, then the whole split (popular POIs)")


@dataclass(frozen=True)
class Subset:
    folder: str                    # under lbsn_poi_liu2017/
    checkins: str
    coords: str
    categories: str | None = None
    shift_hours: int = 0           # added to the unix time before reading hour/weekday (see the module doc)


SUBSETS = {
    "lbsn-yelp": Subset("Yelp/Yelp_3", "Yelp_check_ins.txt", "Yelp_poi_coos.txt", "Yelp_poi_categories.txt", 8),
    "lbsn-foursquare": Subset("Foursquare/Foursquare_3", "Foursquare_checkins.txt", "Foursquare_poi_coos.txt"),
    "lbsn-gowalla": Subset("Gowalla/Gowalla_3", "Gowalla_checkins.txt", "Gowalla_poi_coos.txt"),
}


def read_pois(raw: Path, sub: Subset) -> pd.DataFrame:
    """POI table indexed by poi_id: lat, lon (and `categories`, a list, when the subset has them)."""
    path = raw / sub.coords
    coos = read_rows(path, [("poi_id", "int"), ("lat", "float"), ("lon", "float")])
    dup = coos["poi_id"].duplicated()
    if dup.any():
        line = int(coos.index[dup.to_numpy()][0]) + 1
        raise ValueError(f"{path}:{line}: POI {coos.loc[line - 1, 'poi_id']} has coordinates on an earlier line too")
    out_of_range = (coos["lat"].abs() > 90) | (coos["lon"].abs() > 180)
    if out_of_range.any():
        line = int(coos.index[out_of_range.to_numpy()][0]) + 1
        raise ValueError(f"{path}:{line}: coordinates out of range (lat must be in [-90, 90], lon in [-180, 180])")
    pois = coos.set_index("poi_id")
    if sub.categories:
        cats = read_rows(raw / sub.categories, [("poi_id", "int"), ("category", "int")])
        lists = cats.groupby("poi_id", sort=False)["category"].agg(list)  # file order within a POI
        pois["categories"] = [lists.get(p, []) for p in pois.index]
    return pois


def read_checkins(raw: Path, sub: Subset, pois: pd.DataFrame, max_users: int | None) -> tuple[pd.DataFrame, int]:
    """The check-ins (first `max_users` users by id) without exact duplicates, and how many duplicates were dropped."""
    path = raw / sub.checkins
    log = read_rows(path, [("user_id", "int"), ("poi_id", "int"), ("timestamp", "int")],
                    limit_users=("user_id", max_users) if max_users else None)
    unknown = ~log["poi_id"].isin(pois.index)
    if unknown.any():
        line = int(log.index[unknown.to_numpy()][0]) + 1
        raise ValueError(f"{path}:{line}: POI {log.loc[line - 1, 'poi_id']} has no coordinates in {sub.coords}")
    kept = log.drop_duplicates(["user_id", "poi_id", "timestamp"])
    return kept, len(log) - len(kept)


def add_contexts(log: pd.DataFrame, pois: pd.DataFrame, shift_hours: int) -> pd.DataFrame:
    """hour, weekday, POI coordinates and cell, and the distance from the user's previous check-in."""
    t = pd.to_datetime(log["timestamp"].to_numpy() + shift_hours * 3600, unit="s", utc=True)
    log["hour"] = t.hour.to_numpy(np.int64)
    log["weekday"] = t.weekday.to_numpy(np.int64)
    log["lat"] = pois["lat"].reindex(log["poi_id"]).to_numpy()
    log["lon"] = pois["lon"].reindex(log["poi_id"]).to_numpy()
    if "categories" in pois:
        log["categories"] = pois["categories"].reindex(log["poi_id"]).to_numpy()
    log["cell"] = grid_label(log["lat"], log["lon"], CELL_DEG)
    first = np.r_[True, log["user_id"].to_numpy()[1:] != log["user_id"].to_numpy()[:-1]]
    log["prev_lat"] = np.where(first, np.nan, np.roll(log["lat"].to_numpy(), 1))
    log["prev_lon"] = np.where(first, np.nan, np.roll(log["lon"].to_numpy(), 1))
    log["distance_km"] = distance_from_previous(log)
    return log


def distance_from_previous(log: pd.DataFrame) -> np.ndarray:
    """Haversine km from (prev_lat, prev_lon) to (lat, lon); 0 where there is no previous check-in."""
    d = haversine_km(log["prev_lat"].to_numpy(), log["prev_lon"].to_numpy(), log["lat"].to_numpy(),
                     log["lon"].to_numpy())
    return np.where(np.isnan(log["prev_lat"].to_numpy()), 0.0, d)


def negatives_for(log: pd.DataFrame, ranks: np.ndarray, seed: int) -> tuple[pd.DataFrame, dict]:
    """One nearby-matched negative per positive row of `log` (sorted, with contexts and histories)."""
    split = ranks.astype(np.int64) * 10**13  # grid keys stay below 1e12, so keys never mix splits
    lat, lon = log["lat"].to_numpy(), log["lon"].to_numpy()
    levels = [split + grid_key(lat, lon, NEAR_DEG), split + grid_key(lat, lon, REGION_DEG), split]
    rows, level = sample_matched_rows(log["user_id"].to_numpy(), log["poi_id"].to_numpy(), levels, seed)
    neg = log.copy()
    for col in ("poi_id", "lat", "lon", "cell") + (("categories",) if "categories" in log else ()):
        neg[col] = log[col].to_numpy()[rows]
    neg["distance_km"] = distance_from_previous(neg)  # from the same previous check-in to the negative POI
    neg["checkin"] = 0.0
    counts = np.bincount(level, minlength=3)
    return neg, {"same_0.1deg_cell": int(counts[0]), "same_1deg_cell": int(counts[1]), "split_popular": int(counts[2])}


def train_activeness(log: pd.DataFrame, ranks: np.ndarray) -> pd.DataFrame:
    """Per user, from the train check-ins (positives) only: how many, distinct 0.01-degree cells, days since the last."""
    train = log[ranks == 0]
    return activeness_table(train["user_id"].to_numpy(), categories=train["cell"].to_numpy(),
                            times=train["timestamp"].to_numpy())


def build_lbsn(name: str, spec: FeatureSpec, raw_dir: Path | None, *, max_users: int | None = None,
               seed: int = SEED) -> Built:
    """Build one subset; `raw_dir` is the subset's own folder (e.g. .../Yelp/Yelp_3)."""
    sub = SUBSETS[name]
    raw = raw_dir or shared_datasets_dir() / "lbsn_poi_liu2017" / sub.folder
    pois = read_pois(raw, sub)
    raw_log, n_dup = read_checkins(raw, sub, pois, max_users)
    log = chronological(raw_log, "user_id", "timestamp")
    log = add_contexts(log, pois, sub.shift_hours)
    log["checkin"] = 1.0
    ranks = assign_splits(log, "user_id", "time", valid_frac=VALID_FRAC, test_frac=TEST_FRAC)
    log = attach_histories(log, spec, "user_id", ranks)
    log = with_activeness(log, "user_id", train_activeness(log, ranks))  # before negatives: they copy the user's
    neg, levels = negatives_for(log, ranks, seed)
    known = set(log.loc[ranks == 0, "poi_id"].tolist())
    test = ranks == 2
    uniform = uniform_items(log["user_id"].to_numpy(), log["poi_id"].to_numpy(), seed)
    pitfall = {"definition": "share of test rows whose poi_id never occurs as a training positive",
               "test_positives": round(unseen_rate(log.loc[test, "poi_id"].to_numpy(), known), 4),
               "test_negatives_nearby_matched": round(unseen_rate(neg.loc[test, "poi_id"].to_numpy(), known), 4),
               "test_negatives_uniform": round(unseen_rate(uniform[test], known), 4)}
    print(f"{name}: test POIs unseen in training: positives {pitfall['test_positives']:.3f}, nearby-matched "
          f"negatives {pitfall['test_negatives_nearby_matched']:.3f}, uniform {pitfall['test_negatives_uniform']:.3f}")
    rows, row_ranks = interleave_negatives(log, neg, ranks)
    return Built(split_frames(rows, row_ranks), source=str(raw / sub.checkins), extra={
        "subset": sub.folder,
        "split": f"per-user time: last {TEST_FRAC:.0%} of each user's check-ins test, previous {VALID_FRAC:.0%} valid",
        "time": "hour/weekday from the unix timestamp in UTC" + (f" + {sub.shift_hours} h (dates stored as local "
                                                                 "midnight at UTC+8)" if sub.shift_hours else ""),
        "cell": f"{CELL_DEG}-degree grid cell of the POI, 'row_col' = floor(lat/{CELL_DEG})_floor(lon/{CELL_DEG})",
        "distance_km": "haversine from the user's previous check-in; 0 for the first",
        "activeness": "from the user's train check-ins only: user_activity (how many), user_spread (distinct "
                      f"{CELL_DEG}-degree cells), user_recency (days from the last to the latest train check-in)",
        "duplicates_dropped": n_dup,
        "negatives": {"sampler": SAMPLER, "per_positive": 1, "seed": seed, "levels_used": levels},
        "unseen_in_train": pitfall,
        "max_users": max_users,
    })


def _register(name: str, doc: str) -> None:
    @register(name, doc)
    def _build(spec: FeatureSpec, raw_dir: Path | None, *, max_users: int | None = None, seed: int = SEED) -> Built:
        return build_lbsn(name, spec, raw_dir, max_users=max_users, seed=seed)
    _build.__name__ = _build.__qualname__ = f"build_{name.replace('-', '_')}"
    globals()[_build.__name__] = _build


_register("lbsn-yelp", "Yelp_3 check-ins (1,000 users, 5,255 POIs): O2O CTR with weekday/cell/category/distance")
_register("lbsn-foursquare", "Foursquare_3 check-ins (5,000 users, 8,000 POIs): O2O CTR with hour/weekday/cell/distance")
_register("lbsn-gowalla", "Gowalla_3 check-ins (1,000 users, 24,209 POIs): O2O CTR with hour/weekday/cell/distance")
