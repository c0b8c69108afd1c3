"""The taobao-head and lbsn-* builders on the real shared data (first N users for speed; skipped when absent)."""
from __future__ import annotations

import math
import shutil
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import shared_dataset
from tfrec_zoo.data import open_dataset
from tfrec_zoo.data.builders import build, get_builder
from tfrec_zoo.data.builders._context import haversine_km
from tfrec_zoo.data.builders.lbsn import SUBSETS
from tfrec_zoo.features.spec import load_spec

LBSN = ["lbsn-yelp", "lbsn-foursquare", "lbsn-gowalla"]
TAOBAO_USERS, LBSN_USERS = 60, 40


def run(name: str, raw: Path | None = None, **kw):
    builder = get_builder(name)
    return builder.fn(load_spec(builder.spec_path), raw, **kw)


@pytest.fixture(scope="module")
def taobao():
    shared_dataset("taobao_userbehavior_head")
    return run("taobao-head", max_users=TAOBAO_USERS)


@pytest.fixture(scope="module", params=LBSN)
def lbsn(request):
    shared_dataset("lbsn_poi_liu2017")
    return request.param, run(request.param, max_users=LBSN_USERS)


def all_rows(splits: dict[str, pd.DataFrame]) -> pd.DataFrame:
    return pd.concat([df.assign(split=name) for name, df in splits.items()], ignore_index=True)


def check_histories(splits: dict[str, pd.DataFrame], user: str, item: str, hist: str, label: str, max_len: int):
    """Each row's history = the user's earlier positives of its own or an earlier split, in time order (the splits'
    frames keep the chronological order), cut to max_len; a negative carries its positive's history."""
    seen: dict = {}  # user -> positives so far over train, then valid, then test
    for name in ("train", "valid", "test"):
        df = splits[name]
        for u, it, h, y in zip(df[user], df[item], df[hist], df[label]):
            before = seen.setdefault(u, [])
            if y == 1:
                assert list(h) == before[-max_len:], (name, u)
                before.append(it)
            else:  # the negative right after its positive
                assert list(h) == before[:-1][-max_len:], (name, u)


def check_negatives(splits: dict[str, pd.DataFrame], user: str, item: str, label: str, same: list[str]):
    rows = all_rows(splits)
    pos, neg = rows.iloc[0::2].reset_index(drop=True), rows.iloc[1::2].reset_index(drop=True)
    assert (pos[label] == 1).all() and (neg[label] == 0).all()  # one negative right after each positive
    for col in same + ["split"]:
        assert pos[col].map(str).equals(neg[col].map(str)), col
    own = pos.groupby(user)[item].agg(set)
    assert not any(i in own[u] for u, i in zip(neg[user], neg[item])), "a negative is one of the user's own items"


# -- specs ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["taobao-head"] + LBSN)
def test_specs_validate_and_share_tables(name):
    spec = load_spec(get_builder(name).spec_path)
    item = spec.keys["item"]
    assert spec.table_of(f"hist_{item}") == item
    seq = spec.of_kind("sequence")[0]
    assert seq.max_len == (539 if name == "taobao-head" else 100)
    assert ("hour" in [f.name for f in spec.features]) == (name not in ("lbsn-yelp", "taobao-head"))


# -- taobao ----------------------------------------------------------------------------------------------------------
def test_taobao_histories_are_leakage_free(taobao):
    check_histories(taobao.splits, "user_id", "item_id", "hist_item_id", "click", 539)
    for df in taobao.splits.values():  # gaps are hours back from the target, never negative
        assert all(min(g, default=0.0) >= 0.0 for g in df["hist_gap_hours"])


def test_taobao_negatives_and_labels(taobao):
    check_negatives(taobao.splits, "user_id", "item_id", "click", ["user_id", "timestamp", "hist_item_id"])
    rows = all_rows(taobao.splits)
    assert ((rows["buy"] == 1) == ((rows["behavior"] == "buy") & (rows["click"] == 1))).all()
    assert taobao.extra["negatives"]["seed"] == 0 and "hour" in taobao.extra["negatives"]["sampler"]
    # per-user time split: each user's last 20% are test
    sizes = rows[rows["click"] == 1].groupby(["user_id", "split"]).size().unstack(fill_value=0)
    total = sizes.sum(axis=1)
    assert (sizes["test"] == np.floor(total * 0.2)).all()


def test_taobao_matched_sampler_fixes_the_unseen_item_pitfall():
    shared_dataset("taobao_userbehavior_head")
    rates = run("taobao-head").extra["unseen_in_train"]  # the full log (no writing: a few seconds)
    print("taobao-head unseen-in-train:", rates)
    assert rates["test_positives"] > 0.6
    assert abs(rates["test_negatives_window_matched"] - rates["test_positives"]) < 0.05
    assert rates["test_negatives_uniform"] < rates["test_positives"] - 0.3


def test_taobao_is_deterministic(taobao):
    again = run("taobao-head", max_users=TAOBAO_USERS)
    for name, df in taobao.splits.items():
        pd.testing.assert_frame_equal(df, again.splits[name])
    assert again.extra == taobao.extra


def test_taobao_bad_line_names_file_and_line(tmp_path):
    src = shared_dataset("taobao_userbehavior_head") / "UserBehavior_head.csv"
    lines = src.read_text().splitlines()[:5]
    lines[2] = lines[2].replace(",pv,", ",click,")
    (tmp_path / "UserBehavior_head.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"UserBehavior_head\.csv:3: column 4 \(behavior\) is 'click'"):
        run("taobao-head", tmp_path)


# -- lbsn ------------------------------------------------------------------------------------------------------------
def test_lbsn_histories_and_negatives(lbsn):
    name, built = lbsn
    check_histories(built.splits, "user_id", "poi_id", "hist_poi_id", "checkin", 100)
    check_negatives(built.splits, "user_id", "poi_id", "checkin", ["user_id", "timestamp", "weekday", "hist_poi_id"])
    assert built.extra["negatives"]["seed"] == 0 and built.extra["split"].startswith("per-user time")


def test_lbsn_contexts(lbsn):
    name, built = lbsn
    rows = all_rows(built.splits)
    assert rows["hour"].between(0, 23).all() and rows["weekday"].between(0, 6).all()
    shift = SUBSETS[name].shift_hours
    ts = int(rows["timestamp"].iloc[len(rows) // 2])
    when = datetime.fromtimestamp(ts + shift * 3600, tz=timezone.utc)
    assert (rows["hour"].iloc[len(rows) // 2], rows["weekday"].iloc[len(rows) // 2]) == (when.hour, when.weekday())
    if name == "lbsn-foursquare":
        assert rows["hour"].nunique() > 12  # real clock times, not dates
    lat, lon = rows["lat"].iloc[0], rows["lon"].iloc[0]
    assert rows["cell"].iloc[0] == f"{math.floor(round(lat * 100, 9))}_{math.floor(round(lon * 100, 9))}"
    # the first check-in of every user (and its negative) is 0 km from "the previous one"
    firsts = rows.groupby("user_id").head(2)
    assert (firsts["distance_km"] == 0).all() and (rows["distance_km"] >= 0).all()
    # one later positive and its negative against a haversine done by hand from the previous positive
    pos = rows[rows["checkin"] == 1].reset_index(drop=True)
    k = next(i for i in range(1, len(pos)) if pos["user_id"][i] == pos["user_id"][i - 1]
             and pos["poi_id"][i] != pos["poi_id"][i - 1])
    i = int(rows.index[(rows["checkin"] == 1)][k])

    def by_hand(a_lat, a_lon, b_lat, b_lon):
        p1, p2 = math.radians(a_lat), math.radians(b_lat)
        h = math.sin((p2 - p1) / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(math.radians(b_lon - a_lon) / 2) ** 2
        return 2 * 6371.0088 * math.asin(math.sqrt(h))

    prev = pos.iloc[k - 1]
    for j in (i, i + 1):
        expect = by_hand(prev["lat"], prev["lon"], rows["lat"][j], rows["lon"][j])
        assert rows["distance_km"][j] == pytest.approx(expect, rel=1e-9)
    assert haversine_km(0.0, 0.0, 0.0, 1.0) == pytest.approx(111.195, abs=1e-3)


def test_lbsn_is_deterministic():
    shared_dataset("lbsn_poi_liu2017")
    a, b = run("lbsn-yelp", max_users=LBSN_USERS), run("lbsn-yelp", max_users=LBSN_USERS)
    for name in a.splits:
        pd.testing.assert_frame_equal(a.splits[name], b.splits[name])


def test_lbsn_bad_files_name_file_and_line(tmp_path):
    src = shared_dataset("lbsn_poi_liu2017") / SUBSETS["lbsn-gowalla"].folder
    for f in src.iterdir():
        shutil.copy(f, tmp_path / f.name)
    coos = tmp_path / "Gowalla_poi_coos.txt"
    lines = coos.read_text().splitlines()
    coos.write_text("\n".join(lines[:1] + ["17\tnorth\t-97.7"] + lines[2:]) + "\n")
    with pytest.raises(ValueError, match=r"Gowalla_poi_coos\.txt:2: column 2 \(lat\) is 'north'"):
        run("lbsn-gowalla", tmp_path)
    coos.write_text("\n".join(lines) + "\n")
    checkins = tmp_path / "Gowalla_checkins.txt"
    lines = checkins.read_text().splitlines()
    checkins.write_text("\n".join(lines[:3] + ["0\t99999999\t1287503727.0"] + lines[3:]) + "\n")
    with pytest.raises(ValueError, match=r"Gowalla_checkins\.txt:4: POI 99999999 has no coordinates"):
        run("lbsn-gowalla", tmp_path)


# -- end to end: build() -> TFRecords -> tf.data ---------------------------------------------------------------------
def _head_users(src: Path, dst: Path, n_users: int, sep: str) -> None:
    """Copy `src` keeping only the lines of its first `n_users` user ids (the first column)."""
    lines = src.read_text().splitlines()
    users = sorted({int(x.split(sep, 1)[0]) for x in lines})[:n_users]
    keep = set(map(str, users))
    dst.write_text("\n".join(x for x in lines if x.split(sep, 1)[0] in keep) + "\n")


def test_end_to_end_taobao(tmp_path):
    src = shared_dataset("taobao_userbehavior_head") / "UserBehavior_head.csv"
    raw = tmp_path / "raw"
    raw.mkdir()
    _head_users(src, raw / src.name, 30, ",")
    manifest = build("taobao-head", tmp_path / "ds", raw_dir=raw, progress=False, log=lambda *_: None)
    assert manifest["extra"]["negatives"]["per_positive"] == 1
    feats, labels, weights = next(iter(open_dataset(tmp_path / "ds").dataset("test", 8)))
    assert feats["hist_item_id"].shape == (8, 539) and feats["hist_gap_hours"].shape == (8, 539)
    assert feats["hist_behavior"].dtype.name == "string" and feats["history_len"].shape == (8,)
    assert feats["item_id"].shape == (8,) and labels["click"].numpy().tolist() == [1, 0] * 4
    assert weights["buy"].numpy().tolist() == labels["click"].numpy().tolist()  # buy counts only on real behaviours


@pytest.mark.parametrize("name", ["lbsn-yelp", "lbsn-foursquare"])
def test_end_to_end_lbsn(tmp_path, name):
    sub = SUBSETS[name]
    src = shared_dataset("lbsn_poi_liu2017") / sub.folder
    raw = tmp_path / "raw"
    raw.mkdir()
    for f in src.iterdir():
        if f.name != sub.checkins:
            shutil.copy(f, raw / f.name)
    _head_users(src / sub.checkins, raw / sub.checkins, 20, "\t")
    build(name, tmp_path / "ds", raw_dir=raw, progress=False, log=lambda *_: None)
    batch = next(iter(open_dataset(tmp_path / "ds").dataset("test", 8)))
    assert len(batch) == 2  # no masked label -> (features, labels)
    feats, labels = batch
    assert feats["hist_poi_id"].shape == (8, 100) and feats["hist_cell"].dtype.name == "string"
    assert feats["cell"].shape == (8,) and feats["distance_km"].shape == (8,) and feats["weekday"].shape == (8,)
    assert labels["checkin"].numpy().tolist() == [1, 0] * 4
    if name == "lbsn-yelp":
        assert feats["categories"].shape == (8, 8) and "hour" not in feats
    else:
        assert feats["hour"].shape == (8,)
