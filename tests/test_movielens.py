"""The embedded default dataset: ml-latest-small from seeds/, built end to end with the real text encoder."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tfrec_zoo.data import open_dataset
from tfrec_zoo.data.builders import build, get_builder
from tfrec_zoo.data.check import check_dataset
from tfrec_zoo.features import load_spec
from tfrec_zoo.paths import seeds_data_dir

RAW = seeds_data_dir() / "ml-latest-small"


@pytest.fixture(scope="module")
def frames():
    b = get_builder("ml-latest-small")
    return b.fn(load_spec(b.spec_path), None).splits


def test_seed_copy_is_complete_with_its_license():
    assert (RAW / "README.txt").read_text().count("GroupLens") > 0
    assert len(pd.read_csv(RAW / "ratings.csv")) == 100_004


def test_split_sizes_and_labels(frames):
    sizes = {k: len(v) for k, v in frames.items()}
    assert sum(sizes.values()) == 100_004
    ratings = pd.read_csv(RAW / "ratings.csv")
    per_user = ratings.groupby("userId").size()
    assert sizes["test"] == int(np.floor(per_user * 0.1).sum())
    assert sizes["valid"] == int(np.floor(per_user * 0.1).sum())
    for df in frames.values():
        assert ((df["rating"] >= 4) == (df["like"] == 1)).all()


def test_histories_are_earlier_ratings_and_never_later_splits(frames):
    full = pd.concat([df.assign(split=k) for k, df in frames.items()], ignore_index=True)
    full = full.sort_values(["user_id", "timestamp"], kind="stable")
    test_pairs = set(zip(frames["test"]["user_id"], frames["test"]["movie_id"], frames["test"]["timestamp"]))
    # pick one heavy user and replay the rule by hand
    uid = full["user_id"].value_counts().index[0]
    rows = full[full["user_id"] == uid]
    order = {"train": 0, "valid": 1, "test": 2}
    seen: list[tuple[int, float, int]] = []
    for _, r in rows.iterrows():
        expect = [m for m, _, s in seen if s <= order[r["split"]]][-50:]
        assert r["hist_movie_id"] == expect
        seen.append((r["movie_id"], r["timestamp"], order[r["split"]]))
    # no training history holds a test-split movie of that user later in time
    for _, r in frames["train"].iterrows():
        assert len(r["hist_movie_id"]) <= 50
    first_test_ts = frames["test"].groupby("user_id")["timestamp"].min()
    last_train_ts = frames["train"].groupby("user_id")["timestamp"].max()
    assert (last_train_ts <= first_test_ts.reindex(last_train_ts.index)).all()
    assert test_pairs


def test_queries_only_use_tags_given_before_the_rating(frames):
    tags = pd.read_csv(RAW / "tags.csv")
    with_query = pd.concat(frames.values())
    with_query = with_query[with_query["query"] != ""]
    assert 0 < len(with_query) < 1296
    merged = with_query.merge(tags, left_on=["user_id", "movie_id"], right_on=["userId", "movieId"])
    assert (merged.groupby(["user_id", "movie_id", "timestamp_x"])["timestamp_y"].min()
            <= merged.groupby(["user_id", "movie_id", "timestamp_x"])["timestamp_x"].first()).all()


def test_builder_is_deterministic(frames):
    b = get_builder("ml-latest-small")
    again = b.fn(load_spec(b.spec_path), None).splits
    for k in frames:
        pd.testing.assert_frame_equal(frames[k], again[k])


def test_build_end_to_end_with_the_real_text_encoder(tmp_path: Path):
    out = tmp_path / "ml"
    lines: list[str] = []
    manifest = build("ml-latest-small", out, progress=False, log=lines.append)
    assert "train  80560    671   7761" in lines[0]
    assert manifest["splits"]["test"]["rows"] == 9722
    d = open_dataset(out)
    feats, labels = next(iter(d.dataset("valid", 256)))
    assert feats["title"].shape == (256, 384) and feats["hist_movie_id"].shape == (256, 50)
    norms = np.linalg.norm(feats["title"].numpy(), axis=1)
    np.testing.assert_allclose(norms, 1.0, atol=1e-4)
    qnorm = np.linalg.norm(feats["query"].numpy(), axis=1)
    assert set(np.round(qnorm, 3)) <= {0.0, 1.0}
    assert set(labels) == {"like", "rating"}
    total, problems = check_dataset(out)
    assert total == 100_004 and problems == []
