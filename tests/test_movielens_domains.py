"""ml-latest-small-domains: ml-latest-small's rows with a genre-group domain, `family` held out as cold-start."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from tfrec_zoo.data import open_dataset
from tfrec_zoo.data.builders import build, get_builder
from tfrec_zoo.data.builders.movielens_domains import DOMAIN_NAMES, domain_of
from tfrec_zoo.features import load_spec
from tfrec_zoo.paths import feature_specs_dir, seeds_data_dir
from training.cli import main

SPEC = feature_specs_dir() / "ml-latest-small-domains.yaml"
USERS = 60


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The 60-user subset written end to end (real title encoder), plus its manifest."""
    out = tmp_path_factory.mktemp("mld") / "mld"
    lines: list[str] = []
    manifest = build("ml-latest-small-domains", out, progress=False, log=lines.append, options={"max_users": USERS})
    return out, manifest, lines


@pytest.fixture(scope="module")
def frames():
    b = get_builder("ml-latest-small-domains")
    return b.fn(load_spec(b.spec_path), None, max_users=USERS).splits


def test_domain_rule_is_the_first_group_in_priority_order():
    # Toy Story lists Adventure (action) before Animation (family): the group order decides, not the genre order
    assert DOMAIN_NAMES[domain_of(["Adventure", "Animation", "Children", "Comedy", "Fantasy"])] == "family"
    assert DOMAIN_NAMES[domain_of(["Comedy", "Crime"])] == "dark"
    assert DOMAIN_NAMES[domain_of(["Romance"])] == "comedy"
    assert DOMAIN_NAMES[domain_of([])] == "drama"          # "(no genres listed)": the catch-all


def test_every_movie_has_exactly_one_domain_in_range(frames):
    full = pd.concat(frames.values(), ignore_index=True)
    assert full["domain"].between(0, len(DOMAIN_NAMES) - 1).all()
    assert (full.groupby("movie_id")["domain"].nunique() == 1).all()
    assert set(full["domain"]) == set(range(len(DOMAIN_NAMES)))  # 60 users rate movies of every group
    # the domain is the rule applied to movies.csv, not to anything the builder derived from the rating
    movies = pd.read_csv(seeds_data_dir() / "ml-latest-small" / "movies.csv").set_index("movieId")["genres"]
    genres = movies.map(lambda g: [] if g == "(no genres listed)" else g.split("|"))
    expect = full["movie_id"].map(lambda m: domain_of(genres[m]))
    assert (full["domain"] == expect).all()


def test_rows_split_and_labels_are_ml_latest_small(frames):
    b = get_builder("ml-latest-small")
    base = b.fn(load_spec(b.spec_path), None, max_users=USERS).splits
    for k in base:
        pd.testing.assert_frame_equal(frames[k].drop(columns="domain"), base[k])
        assert ((frames[k]["rating"] >= 4) == (frames[k]["like"] == 1)).all()


def test_splits_are_disjoint_in_time_per_user(frames):
    first_valid = frames["valid"].groupby("user_id")["timestamp"].min()
    first_test = frames["test"].groupby("user_id")["timestamp"].min()
    last_train = frames["train"].groupby("user_id")["timestamp"].max()
    last_valid = frames["valid"].groupby("user_id")["timestamp"].max()
    assert (last_train <= first_valid.reindex(last_train.index)).all()
    assert (last_valid <= first_test.reindex(last_valid.index)).all()
    # a history never holds a movie the user rated later (at most the 50 latest earlier ones)
    train = frames["train"]
    uid = train["user_id"].value_counts().index[0]
    rows = train[train["user_id"] == uid].sort_values("timestamp", kind="stable")
    assert rows["hist_movie_id"].iloc[-1] == list(rows["movie_id"].iloc[:-1])[-50:]


def test_domain_does_not_give_the_label_away(frames):
    rates = frames["train"].groupby("domain")["like"].mean()
    assert rates.between(0.2, 0.8).all(), rates


def test_manifest_records_cold_start_and_per_domain_counts(built, frames):
    out, manifest, lines = built
    extra = json.loads((out / "manifest.json").read_text())["extra"]
    assert extra["cold_start"]["domain"] == "family" and extra["cold_start"]["id"] == DOMAIN_NAMES.index("family")
    assert extra["domains"]["names"] == list(DOMAIN_NAMES)
    for split, df in frames.items():
        counts = df["domain"].value_counts()
        stats = extra["domain_stats"][split]
        expect = {n: int(counts.get(i, 0)) for i, n in enumerate(DOMAIN_NAMES)}
        assert {n: s["rows"] for n, s in stats.items()} == expect
        assert sum(s["rows"] for s in stats.values()) == manifest["splits"][split]["rows"]
        cold = df[df["domain"] == extra["cold_start"]["id"]]
        assert stats["family"]["positive_rate"] == pytest.approx(cold["like"].mean(), abs=1e-4)
    # the cold-start rows stay in the data and the domain column is readable for selecting them
    feats, _ = next(iter(open_dataset(out).dataset("train", 4096)))
    assert feats["domain"].shape == (4096,) and feats["title"].shape == (4096, 384)
    assert set(np.unique(feats["domain"].numpy())) == set(range(len(DOMAIN_NAMES)))
    assert "ml-latest-small-domains: wrote" in lines[0]


def test_spec_validates(capsys):
    assert main(["spec", "validate", str(SPEC)]) == 0
    assert "ok (9 input features, 2 labels" in capsys.readouterr().out


def test_title_cls_side_table_is_the_cls_output_and_sr_foundation_gates_on_it(built, frames):
    from tfrec_zoo._tf import keras
    from tfrec_zoo.models import build_model
    from tfrec_zoo.text import get_encoder

    out, _, _ = built
    data = open_dataset(out)
    table = data.artifacts.side["movie_id/title_cls"]
    vocab = data.artifacts.vocabs["movie_id"]
    oov = data.spec.table_config("movie_id").vocab.oov_buckets
    titles = pd.concat(frames.values()).drop_duplicates("movie_id").set_index("movie_id")["title"]
    some = vocab[:5]
    want = get_encoder("all-MiniLM-L6-v2/cls").encode([titles[m] for m in some])
    np.testing.assert_allclose(table[oov:oov + 5], want, atol=1e-5)
    pooled = get_encoder("all-MiniLM-L6-v2").encode([titles[m] for m in some])
    assert not np.allclose(want, pooled, atol=1e-2)                 # a token output, not the sentence vector
    model = build_model("sr_foundation", data.spec, data.artifacts,
                        {"gating": "cls", "units": 8, "query_features": ["query"], "expert_units": [8]})
    agf = model.get_layer("agf_item")
    assert agf.gating == "cls" and model.get_layer("agf_user").gating == "mean"   # no user text: aspects' mean
    assert "title_cls" not in model.input_names                      # a side table inside the model
    model.compile(keras.optimizers.Adam(0.01))
    batch = next(iter(data.dataset("train", 64, features=model.input_names)))
    assert np.isfinite(model.train_on_batch(*batch[:2], return_dict=True)["loss"])
