"""lbsn-*-ctx (the MACDAE paper's protocol) on the real shared check-ins (first users; skipped when absent)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from conftest import shared_dataset
from tfrec_zoo.data.builders import get_builder
from tfrec_zoo.data.builders._context import haversine_km
from tfrec_zoo.data.builders.lbsn_ctx import local_clock, random_user_split
from tfrec_zoo.features.spec import load_spec

USERS = 40


@pytest.fixture(scope="module", params=["lbsn-gowalla-ctx", "lbsn-yelp-ctx"])
def ctx(request):
    shared_dataset("lbsn_poi_liu2017")
    builder = get_builder(request.param)
    spec = load_spec(builder.spec_path)
    return request.param, spec, builder.fn(spec, None, max_users=USERS)


def test_local_clock_is_utc_plus_the_longitudes_zone():
    ts = np.array([0, 0, 0, 3600 * 20])           # 1970-01-01 00:00 UTC (a Thursday), and 20:00 UTC
    hour, weekday = local_clock(ts, np.array([0.0, -74.0, 139.7, 139.7]))   # London, New York (-5 h), Tokyo (+9 h)
    assert hour.tolist() == [0, 19, 9, 5] and weekday.tolist() == [3, 2, 3, 4]


def test_local_hours_put_the_quietest_hour_at_night(ctx):
    """The files' clock is UTC - 8 h: read at file time + 8 h + the POI's zone, the fewest check-ins fall at 1-5 am
    local (read as UTC + zone, Gowalla's quietest hour would be the US evening)."""
    name, _, built = ctx
    if name == "lbsn-yelp-ctx":
        pytest.skip("Yelp stores dates only: no hour")
    rows = pd.concat([built.splits[s] for s in ("train", "valid", "test")]).query("checkin == 1")
    quietest = int(np.bincount(rows["hour"], minlength=24).argmin())
    assert 1 <= quietest <= 5, np.bincount(rows["hour"], minlength=24)
    naive, _ = local_clock(rows["timestamp"].to_numpy(), rows["lon"].to_numpy())
    assert not 1 <= int(np.bincount(naive, minlength=24).argmin()) <= 5


def test_random_user_split_holds_out_a_fifth_of_every_user():
    users = np.repeat(np.arange(5), [10, 20, 5, 1, 50])
    ranks = random_user_split(users, 0)
    for u, n in zip(range(5), [10, 20, 5, 1, 50]):
        r = ranks[users == u]
        assert (r == 2).sum() == round(0.2 * n) and (r == 1).sum() == round(0.1 * (n - round(0.2 * n)))
    assert not np.array_equal(ranks, random_user_split(users, 1))


def test_test_rows_carry_fifty_matched_unvisited_negatives_with_their_own_contexts(ctx):
    name, spec, built = ctx
    test, train = built.splits["test"], built.splits["train"]
    assert (test["checkin"] == 1).all() and len(test) > 0
    visited = pd.concat([test, built.splits["train"], built.splits["valid"]]).query("checkin == 1") \
        .groupby("user_id")["poi_id"].agg(set)
    for _, row in test.head(200).iterrows():
        negs = row["eval_neg_poi_id"]
        assert len(negs) == 50 == len(set(negs)) == len(row["eval_neg_cell"]) == len(row["eval_neg_distance_km"])
        assert not set(negs) & visited[row["user_id"]]
    # each negative's cell and distance are its own (from the row's previous check-in), not the positive's
    coords = train.drop_duplicates("poi_id").set_index("poi_id")[["lat", "lon"]]
    row = test[~np.isnan(test["prev_lat"])].iloc[0]
    known = [p for p in row["eval_neg_poi_id"] if p in coords.index][:5]
    for p in known:
        j = row["eval_neg_poi_id"].index(p)
        want = haversine_km(row["prev_lat"], row["prev_lon"], coords.loc[p, "lat"], coords.loc[p, "lon"])
        assert row["eval_neg_distance_km"][j] == pytest.approx(float(want), rel=1e-4)
    # matched to the area: most negatives share the positive's 0.1-degree cell (the sampler's first level)
    levels = built.extra["eval_negatives"]["levels_used"]
    assert levels["same_0.1deg_cell"] > 0.5 * sum(levels.values())
    # train / valid: every check-in + 1 nearby negative, no eval lists
    for split in ("train", "valid"):
        df = built.splits[split]
        assert df["checkin"].tolist()[:6] == [1.0, 0.0] * 3 and all(len(x) == 0 for x in df["eval_neg_poi_id"])
    assert ("hour" in [f.name for f in spec.features]) == (name != "lbsn-yelp-ctx")
    shortcut = built.extra["shortcut"]
    assert shortcut["matched_negatives"] < shortcut["uniform_negatives"]


def test_poi_users_come_from_train_check_ins_only(ctx):
    """MACDAE's e_iu as a side table of the POI: its top users by train check-ins (the author's list also held the
    test positives)."""
    _, _, built = ctx
    cat = built.catalogues["poi_id"].set_index("poi_id")["poi_users"]
    train = built.splits["train"].query("checkin == 1")
    counts = train.groupby(["poi_id", "user_id"]).size()
    for poi, users in cat[cat.map(len) > 0].head(300).items():
        assert len(users) <= 20 and set(users) <= set(counts.loc[poi].index)
        n = counts.loc[poi].sort_values(ascending=False)
        assert counts.loc[poi].loc[users[0]] == n.iloc[0]                      # the most frequent first
    test_only = set(built.splits["test"]["poi_id"]) - set(train["poi_id"])
    assert test_only and all(len(cat[p]) == 0 for p in test_only)


def test_train_histories_hold_earlier_train_check_ins_only(ctx):
    """With a shuffled split a test check-in can be older than a train one: it must still never enter a train row's
    history (the held-out positive would leak into training)."""
    _, spec, built = ctx
    max_len = spec["history"].max_len
    before: dict = {}
    train = built.splits["train"]
    assert train["timestamp"].groupby(train["user_id"]).is_monotonic_increasing.all()
    for u, poi, hist, y in zip(train["user_id"], train["poi_id"], train["hist_poi_id"], train["checkin"]):
        seen = before.setdefault(u, [])
        if y == 1:
            assert list(hist) == seen[-max_len:]
            seen.append(poi)
    test_pois = set(zip(built.splits["test"]["user_id"], built.splits["test"]["poi_id"]))
    only_test = [(u, p) for u, p in test_pois if p not in set(before.get(u, []))]
    assert only_test                                  # some held-out POIs the train rows never saw ...
    for u, hist in zip(train["user_id"], train["hist_poi_id"]):
        assert not {p for uu, p in only_test if uu == u} & set(hist)     # ... and no train history has them


def test_too_few_users_for_fifty_negatives_is_one_clear_error():
    shared_dataset("lbsn_poi_liu2017")
    builder = get_builder("lbsn-yelp-ctx")
    with pytest.raises(ValueError, match=r"user 0: only \d+ POIs .* among 50 .*\(drop --max-users\)"):
        builder.fn(load_spec(builder.spec_path), None, max_users=2)
