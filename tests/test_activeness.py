"""Per-user activeness features (user_activity / user_spread / user_recency, issue 13) on tiny hand-made raw files:
counted from the train split's interactions only, never from valid/test rows or sampled negatives, and the same on
every row of a user in every split."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tfrec_zoo.data import open_dataset
from tfrec_zoo.data.builders import build, get_builder
from tfrec_zoo.data.builders._activeness import activeness_table, with_activeness
from tfrec_zoo.data.builders.amazon_book import build_amazon_book
from tfrec_zoo.data.builders.lbsn import build_lbsn
from tfrec_zoo.data.builders.movielens import build_ml_latest_small
from tfrec_zoo.data.builders.s3rec import build_amazon_beauty
from tfrec_zoo.features.spec import load_spec

DAY = 86_400
FEATURES = ("user_activity", "user_spread", "user_recency")


def _spec(name: str):
    return load_spec(get_builder(name).spec_path)


def _per_user(splits: dict[str, pd.DataFrame], column: str) -> dict[int, float]:
    """{user: value}, asserting that every row of the user (every split, negatives too) carries the same value."""
    rows = pd.concat(list(splits.values()), ignore_index=True)
    values = rows.groupby("user_id")[column].agg(["min", "max"])
    assert (values["min"] == values["max"]).all(), f"{column} differs between rows of one user:\n{values}"
    return values["min"].to_dict()


# -- the helper ------------------------------------------------------------------------------------------------------
def test_table_counts_interactions_distinct_categories_and_days_to_the_end():
    table = activeness_table(np.array([1, 1, 1, 2]), categories=[["a", "b"], ["b"], [], "c"],
                             times=np.array([0, 2 * DAY, DAY, 5 * DAY]))
    assert table.loc[1].tolist() == [3.0, 2.0, 3.0]   # 3 rows; {a, b}; last at day 2, the end is day 5
    assert table.loc[2].tolist() == [1.0, 1.0, 0.0]   # a scalar category counts as one
    frame = with_activeness(pd.DataFrame({"user_id": [2, 3, 1]}), "user_id", table)
    assert frame["user_activity"].tolist() == [1.0, 0.0, 3.0]   # user 3 has no train rows: 0
    assert frame["user_spread"].tolist() == [1.0, 0.0, 2.0]
    assert frame["user_recency"].tolist() == [0.0, 0.0, 3.0]
    assert list(activeness_table(np.array([7, 7])).columns) == ["user_activity"]   # nothing else without the data


# -- amazon-book: no time, no categories -> user_activity only --------------------------------------------------------
def test_amazon_book_counts_train_rows_not_valid_or_test(tmp_path: Path):
    # user 0: 10 train.txt items -> 1 valid (round(5%), at least 1) + 9 train, and 2 test items; user 1: 3, all train
    (tmp_path / "train.txt").write_text("0 10 11 12 13 14 15 16 17 18 19\n1 20 21 22\n")
    (tmp_path / "test.txt").write_text("0 30 31\n1 32\n")
    s = build_amazon_book(_spec("amazon-book"), tmp_path).splits
    assert [len(s[k]) for k in ("train", "valid", "test")] == [12, 1, 3]
    assert _per_user(s, "user_activity") == {0: 9.0, 1: 3.0}
    assert "user_spread" not in s["train"] and "user_recency" not in s["train"]


# -- ml-latest-small: time split, genres ------------------------------------------------------------------------------
def _write_movielens(raw: Path) -> None:
    raw.mkdir()
    genres = {1: "Action|Comedy", 2: "Comedy", 3: "(no genres listed)", 4: "Drama", 5: "Drama", 6: "Drama",
              7: "Drama", 8: "Drama", 9: "Horror", 10: "Sci-Fi"}
    pd.DataFrame({"movieId": list(genres), "title": [f"Movie {m} (1995)" for m in genres],
                  "genres": list(genres.values())}).to_csv(raw / "movies.csv", index=False)
    # user 1: 10 ratings -> days 1-8 train, day 30 valid (Horror), day 31 test (Sci-Fi); low ratings count too.
    # user 2: 5 ratings, all train (10% of 5 rounds down to 0), the last on day 24: the end of the train period.
    rows = [(1, m, 1.0 if m % 2 else 4.5, d * DAY) for m, d in zip(range(1, 9), range(1, 9))]
    rows += [(1, 9, 4.0, 30 * DAY), (1, 10, 5.0, 31 * DAY)]
    rows += [(2, m, 3.0, d * DAY) for m, d in zip((1, 2, 3, 9, 10), range(20, 25))]
    pd.DataFrame(rows, columns=["userId", "movieId", "rating", "timestamp"]).to_csv(raw / "ratings.csv", index=False)
    (raw / "tags.csv").write_text("userId,movieId,tag,timestamp\n")


def test_movielens_features_come_from_train_ratings_only(tmp_path: Path):
    _write_movielens(tmp_path / "ml")
    s = build_ml_latest_small(_spec("ml-latest-small"), tmp_path / "ml").splits
    assert [len(s[k]) for k in ("train", "valid", "test")] == [13, 1, 1]
    assert _per_user(s, "user_activity") == {1: 8.0, 2: 5.0}       # not 10: valid/test ratings are not counted
    assert _per_user(s, "user_spread") == {1: 3.0, 2: 4.0}         # Action, Comedy, Drama; Horror/Sci-Fi are later
    # the train period ends on day 24 (user 2), not day 31 (user 1's test rating): user 1's last train day is 8
    assert _per_user(s, "user_recency") == {1: 16.0, 2: 0.0}


# -- amazon-beauty: leave-one-out, item attributes, sampled negatives --------------------------------------------------
def test_beauty_counts_train_items_not_negatives_nor_held_out_items(tmp_path: Path):
    # user 1: items 1-5 -> train 1, 2, 3 (item 1 at position 0 has no row but is an interaction), valid 4, test 5;
    # user 2: train 2, valid 6, test 7; users 3-7 hold 30 items each, so everyone has 99 unseen items for eval
    lines = ["1 1 2 3 4 5", "2 2 6 7"] + [" ".join([str(u)] + [str(100 + 30 * u + k) for k in range(30)])
                                         for u in range(3, 8)]
    (tmp_path / "Beauty.txt").write_text("\n".join(lines) + "\n")
    attrs = {"1": [10, 11], "2": [11], "3": [], "4": [12], "5": [13], "6": [14], "7": [15], "190": [16, 17]}
    (tmp_path / "Beauty_item2attributes.json").write_text(json.dumps(attrs))
    s = build_amazon_beauty(_spec("amazon-beauty"), tmp_path).splits
    train = s["train"]
    assert ((train["user_id"] == 1) & (train["click"] == 0)).sum() == 2   # 2 positive + 2 negative rows
    activity = _per_user(s, "user_activity")
    assert (activity[1], activity[2], activity[3]) == (3.0, 1.0, 28.0)
    spread = _per_user(s, "user_spread")
    # {10, 11}; {11}; {16, 17} from item 190, user 3's position 0 (no row of its own, still counted); none
    assert (spread[1], spread[2], spread[3], spread[6]) == (2.0, 1.0, 2.0, 0.0)
    assert "user_recency" not in train


# -- lbsn-gowalla: time split, POI cells, nearby negatives ------------------------------------------------------------
def _write_gowalla(raw: Path) -> None:
    raw.mkdir()
    # POIs 0-3 in cell A, 4-6 in cell B, 7-9 in cell C (user 0); 10-16 in cell A, 17-19 in cell D (user 1)
    cell = {"A": (30.0015, -97.0015), "B": (30.0115, -97.0015), "C": (30.0215, -97.0015), "D": (30.0315, -97.0015)}
    where = ["A"] * 4 + ["B"] * 3 + ["C"] * 3 + ["A"] * 7 + ["D"] * 3
    (raw / "Gowalla_poi_coos.txt").write_text("".join(f"{p}\t{cell[c][0]}\t{cell[c][1]}\n" for p, c in enumerate(where)))
    # 10 check-ins each -> 7 train, 1 valid, 2 test; user 0 on days 1-10, user 1 on days 3-12
    rows = [(0, p, (1 + p) * DAY) for p in range(10)] + [(1, 10 + k, (3 + k) * DAY) for k in range(10)]
    (raw / "Gowalla_checkins.txt").write_text("".join(f"{u}\t{p}\t{t}\n" for u, p, t in rows))


def test_gowalla_features_come_from_train_checkins_only(tmp_path: Path):
    _write_gowalla(tmp_path / "raw")
    s = build_lbsn("lbsn-gowalla", _spec("lbsn-gowalla"), tmp_path / "raw").splits
    assert [len(s[k]) for k in ("train", "valid", "test")] == [28, 4, 8]   # each positive + one negative
    assert _per_user(s, "user_activity") == {0: 7.0, 1: 7.0}   # not 14 (negatives) nor 10 (valid/test)
    assert _per_user(s, "user_spread") == {0: 2.0, 1: 1.0}     # cells A, B; cell C and D check-ins are later
    assert _per_user(s, "user_recency") == {0: 2.0, 1: 0.0}    # train ends on day 9 (user 1), user 0's on day 7


def test_gowalla_features_are_written_and_normalised_from_train_rows(tmp_path: Path):
    _write_gowalla(tmp_path / "raw")
    build("lbsn-gowalla", tmp_path / "ds", raw_dir=tmp_path / "raw", progress=False, log=lambda *_: None)
    ds = open_dataset(tmp_path / "ds")
    feats, _ = next(iter(ds.dataset("test", 8)))
    users = feats["user_id"].numpy()
    np.testing.assert_array_equal(feats["user_activity"].numpy(), np.full(8, 7.0))
    np.testing.assert_array_equal(feats["user_spread"].numpy(), np.where(users == 0, 2.0, 1.0))
    np.testing.assert_array_equal(feats["user_recency"].numpy(), np.where(users == 0, 2.0, 0.0))
    stats = json.loads((tmp_path / "ds" / "artifacts" / "stats.json").read_text())["stats"]
    # fitted on the 28 train rows (14 per user): user_recency is 2 on half of them, 0 on the rest
    assert stats["user_recency"]["count"] == 28 and stats["user_recency"]["mean"] == pytest.approx(1.0)
    assert stats["user_recency"]["log1p_mean"] == pytest.approx(math.log1p(2.0) / 2)
    assert stats["user_activity"]["max"] == 7.0 and stats["user_spread"]["mean"] == pytest.approx(1.5)
