"""ml-latest-small (the embedded default, `seeds/data/ml-latest-small`): one example per rating.

* label `like` = rating >= 4; `rating` kept as a regression label.
* per-user time split: each user's last 10% of ratings -> test, the 10% before -> valid.
* history: the user's earlier ratings (movie id + rating), never one of a later split.
* `title` -> MiniLM vector; `genres` multi-hot; `year` parsed from the title (movies without one get the median).
* `query`: the tags the user had given this movie at or before the rating time ('' otherwise). Tags given
  after the rating are left out: they are written after the user has seen the movie and would leak the label.
* activeness, from the user's train ratings only (every rating counts, liked or not), the same on all the user's
  rows: `user_activity` (how many), `user_spread` (distinct genres), `user_recency` (days from the user's last train
  rating to the latest train rating of anyone).
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from ...features.spec import FeatureSpec
from ...paths import seeds_data_dir
from ..interactions import assign_splits, attach_histories, chronological, split_frames
from . import Built, register
from ._activeness import activeness_table, with_activeness
from ._csv import read_checked_csv

_YEAR = re.compile(r"\((\d{4})\)\s*$")


def read_movielens(raw: Path, max_users: int | None = None) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(ratings, movies, tags); `max_users` keeps the ratings of the first N users by id (a quick subset)."""
    missing = [f for f in ("ratings.csv", "movies.csv", "tags.csv") if not (raw / f).exists()]
    if missing:
        raise FileNotFoundError(f"{raw}: missing {', '.join(missing)}; expected the MovieLens latest-small files")
    ratings = read_checked_csv(raw / "ratings.csv", {"userId": "int", "movieId": "int", "rating": "float",
                                                       "timestamp": "int"})
    movies = pd.read_csv(raw / "movies.csv")
    tags = pd.read_csv(raw / "tags.csv")
    if max_users is not None:
        ratings = ratings[ratings["userId"].isin(sorted(ratings["userId"].unique())[:max_users])]
        ratings = ratings.reset_index(drop=True)
    return ratings, movies, tags


def movie_table(movies: pd.DataFrame) -> pd.DataFrame:
    years = movies["title"].str.extract(_YEAR)[0].astype(float)
    out = pd.DataFrame({
        "movie_id": movies["movieId"].astype(np.int64),
        "title": movies["title"].str.replace(_YEAR, "", regex=True).str.strip(),
        "genres": [[] if g == "(no genres listed)" else g.split("|") for g in movies["genres"]],
        "year": years.fillna(years.median()),
    })
    return out


def tag_queries(ratings: pd.DataFrame, tags: pd.DataFrame) -> pd.Series:
    """Per rating row: the user's tags on that movie given no later than the rating, joined by ', '."""
    m = ratings[["userId", "movieId", "timestamp"]].reset_index().merge(
        tags, on=["userId", "movieId"], suffixes=("", "_tag"))
    m = m[m["timestamp_tag"] <= m["timestamp"]].sort_values(["index", "timestamp_tag"], kind="stable")
    joined = m.groupby("index")["tag"].agg(lambda s: ", ".join(map(str, s)))
    return joined.reindex(range(len(ratings)), fill_value="")


@register("ml-latest-small", "MovieLens latest-small ratings (embedded in seeds/): CTR with histories",
          needs_shared=False)
def build_ml_latest_small(spec: FeatureSpec, raw_dir: Path | None, *, max_users: int | None = None) -> Built:
    """`max_users` keeps the first N users by id (a quick deterministic subset)."""
    raw = raw_dir or seeds_data_dir() / "ml-latest-small"
    ratings, movies, tags = read_movielens(raw, max_users)
    ratings = ratings.assign(query=tag_queries(ratings, tags).to_numpy())
    log = ratings.rename(columns={"userId": "user_id", "movieId": "movie_id"}).merge(
        movie_table(movies), on="movie_id", how="left", validate="many_to_one")
    if log["title"].isna().any():
        bad = log.loc[log["title"].isna(), "movie_id"].iloc[0]
        raise ValueError(f"{raw}/ratings.csv: movie {bad} has no row in movies.csv")
    log["like"] = (log["rating"] >= 4.0).astype(np.float32)
    log["timestamp"] = log["timestamp"].astype(np.float64)
    log = chronological(log, "user_id", "timestamp")
    ranks = assign_splits(log, "user_id", "time", valid_frac=0.1, test_frac=0.1)
    log = attach_histories(log, spec, "user_id", ranks)
    train = log[ranks == 0]
    log = with_activeness(log, "user_id", activeness_table(
        train["user_id"].to_numpy(), categories=train["genres"], times=train["timestamp"].to_numpy()))
    return Built(split_frames(log, ranks), source=str(raw),
                 extra={"split": "per-user time, last 10% test, previous 10% valid", "label": "rating >= 4",
                        "activeness": "from the user's train ratings only (any rating is an interaction): count, "
                                      "distinct genres, days from the last one to the latest train rating overall",
                        "max_users": max_users})
