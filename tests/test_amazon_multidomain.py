"""amazon-search-multidomain: HEM's 4 categories as domains, a search and a rec task each, electronics cold-start.

The builder runs once per module on the first MAX_USERS users of each domain; the facts are checked against the raw
qrels files, and one end-to-end `build` (real text encoder) writes the same frames and reads a batch back.
"""
from __future__ import annotations

import gzip
import json
from collections import defaultdict

import numpy as np
import pandas as pd
import pytest

from conftest import shared_dataset
from tfrec_zoo.data import open_dataset
from tfrec_zoo.data.builders import build, get_builder
from tfrec_zoo.data.builders.amazon_multidomain import (
    COLD_START, DOMAIN_NAMES, DOMAINS, EVAL_NEGATIVES, TEXT_SEP, hold_last_item, sample_ids)
from tfrec_zoo.features import load_spec
from tfrec_zoo.paths import feature_specs_dir
from training.cli import main

NAME = "amazon-search-multidomain"
MAX_USERS = 1000
GROUP = {"train": 2, "valid": 1 + EVAL_NEGATIVES, "test": 1 + EVAL_NEGATIVES}  # a positive + its negatives


@pytest.fixture(scope="module")
def raw():
    return shared_dataset("amazon_product_search_hem")


@pytest.fixture(scope="module")
def built(raw):
    b = get_builder(NAME)
    return b.fn(load_spec(b.spec_path), raw, max_users=MAX_USERS)


@pytest.fixture(scope="module")
def qrels(raw) -> dict[str, dict[str, list[tuple[str, int, str]]]]:
    """{domain: {file stem: [(user, query line, item), ...] in file order}} straight from the gzip files."""
    out: dict[str, dict[str, list]] = {}
    for dom in DOMAINS:
        for stem in ("train", "test") if dom.hem_split else ("test",):
            rows = []
            with gzip.open(raw / dom.folder / f"{stem}.qrels.gz", "rt") as fh:
                for line in fh:
                    p = line.split()
                    u, q = p[0].rsplit("_", 1)
                    rows.append((u, int(q), p[2]))
            out.setdefault(dom.name, {})[stem] = rows
    return out


@pytest.fixture(scope="module")
def queries(raw) -> dict[str, list[str]]:
    out = {}
    for d in DOMAINS:
        with gzip.open(raw / d.folder / "query_text.txt.gz", "rt") as fh:
            out[d.name] = fh.read().splitlines()
    return out


def _positives(df: pd.DataFrame, task: str) -> pd.DataFrame:
    return df[(df[f"is_{task}"] == 1) & (df[task] == 1)]


def test_hold_last_item_and_nested_samples():
    df = pd.DataFrame({"user_id": ["a", "a", "a", "a", "b", "b"], "item_id": ["x", "y", "x", "z", "x", "y"]})
    # a's last triple is z; b has 2 distinct items: held with min 2, not with min 3
    assert hold_last_item(df, 2).tolist() == [False, False, False, True, False, True]
    assert hold_last_item(df, 3).tolist() == [False, False, False, True, False, False]
    ids = np.array([f"u{i}" for i in range(2000)], object)
    small, large = set(sample_ids(ids, 0.2, None, 7)), set(sample_ids(ids, 0.5, None, 7))
    assert small < large and 300 < len(small) < 500            # nested: one draw per id, any share
    assert list(sample_ids(ids, 1.0, 5, 7)) == list(sample_ids(ids[::-1].copy(), 1.0, 5, 7))  # order-free


def test_domains_tasks_and_counts(built):
    s = built.splits
    stats = built.extra["domain_stats"]
    for split, df in s.items():
        assert set(df["domain"]) == set(DOMAIN_NAMES)
        assert ((df["is_search"] + df["is_rec"]) == 1).all()
        for d in DOMAIN_NAMES:
            for task in ("search", "rec"):
                rows = df[(df["domain"] == d) & (df[f"is_{task}"] == 1)]
                assert stats[split][d][task]["rows"] == len(rows)
                if split != "valid" or d != COLD_START:  # electronics has 23 valid users in all, maybe none here
                    assert len(rows) > 0, (split, d, task)
                    assert rows[task].mean() == pytest.approx(1 / GROUP[split])
                    assert stats[split][d][task]["positive_rate"] == pytest.approx(1 / GROUP[split], abs=1e-4)
        assert sum(v["rows"] for t in stats[split].values() for v in t.values()) == len(df)
    # the masked-out label of the other task is 0
    for split, df in s.items():
        assert (df.loc[df["is_rec"] == 1, "search"] == 0).all() and (df.loc[df["is_search"] == 1, "rec"] == 0).all()
    kept = built.extra["sample"]
    assert all(0 < kept["users_kept"][d] <= MAX_USERS for d in DOMAIN_NAMES)
    assert kept["share"]["kindle"] < 1 and kept["by"]["kindle"] == "item"


def test_negatives_share_the_query_and_are_unseen_train_items(built, qrels):
    seen: dict[str, set] = defaultdict(set)
    for files in qrels.values():
        for rows in files.values():
            for u, _, i in rows:
                seen[u].add(i)
    train = built.splits["train"]
    pool = {d: set(train.loc[train["domain"] == d, "item_id"]) for d in DOMAIN_NAMES}
    same = ["user_id", "domain", "query", "query_id", "is_search", "is_rec"]
    for split, df in built.splits.items():
        k = GROUP[split]
        assert len(df) % k == 0
        label = np.where(df["is_search"] == 1, df["search"], df["rec"]).reshape(-1, k)
        assert (label[:, 0] == 1).all() and (label[:, 1:] == 0).all()      # each positive then its negatives
        pos = df.iloc[0::k].reset_index(drop=True)
        for j in range(1, k):
            neg = df.iloc[j::k].reset_index(drop=True)
            assert neg[same].equals(pos[same])
            assert (neg["hist_item_id"].map(tuple) == pos["hist_item_id"].map(tuple)).all()
            assert not any(i in seen[u] for u, i in zip(neg["user_id"], neg["item_id"]))
            assert all(i in pool[d] for d, i in zip(neg["domain"], neg["item_id"]))
        if k > 2:  # valid/test: the negatives of one positive are distinct
            items = df["item_id"].to_numpy().reshape(-1, k)
            assert all(len(set(r)) == k for r in items)


def test_splits_follow_the_files_and_share_no_user_item_pair(built, qrels):
    s = built.splits
    pairs = {split: set(zip(*(_positives(df, "rec")[c] for c in ("user_id", "item_id")))) for split, df in s.items()}
    assert not pairs["train"] & pairs["test"] and not pairs["train"] & pairs["valid"]
    assert not pairs["valid"] & pairs["test"]
    # cell_phones keeps HEM's files: train/valid triples come from train.qrels, test triples from test.qrels
    for split, stem in (("train", "train"), ("valid", "train"), ("test", "test")):
        df = _positives(s[split], "search")
        df = df[df["domain"] == "cell_phones"]
        got = set(zip(df["user_id"], df["query_id"].str.split("/").str[1].astype(int), df["item_id"]))
        assert got and got <= set(qrels["cell_phones"][stem])
    # own split (test.qrels only): a test item is the user's last triple's item, valid the last one before it
    for d in ("kindle", "cds", "electronics"):
        raw = pd.DataFrame(qrels[d]["test"], columns=["user_id", "query_id", "item_id"])
        test = _positives(s["test"], "rec")
        test = test[test["domain"] == d]
        users = list(test["user_id"])[:200]
        trip = pd.concat([_positives(s[x], "rec") for x in s])
        trip = trip[(trip["domain"] == d) & trip["user_id"].isin(users)]
        mine = raw[raw["user_id"].isin(users) & raw["item_id"].isin(set(trip["item_id"]))]
        last = mine.groupby("user_id")["item_id"].last()
        assert (test.set_index("user_id").loc[users, "item_id"] == last.loc[users]).all()
        assert (mine.groupby("user_id")["item_id"].nunique().loc[users] >= 2).all()


def test_item_texts_and_histories_hold_no_test_information(built, queries):
    s = built.splits
    train_pos = _positives(s["train"], "search")
    expect = (train_pos[["item_id", "query"]].drop_duplicates().sort_values(["item_id", "query"])
              .groupby("item_id")["query"].agg(TEXT_SEP.join))
    for split, df in s.items():
        assert (df["item_text"] == df["item_id"].map(expect).fillna("")).all()
        assert (df["item_text"] != "").all()   # every item of every split has a train triple (no emptiness cue)
    # the same texts over every split would differ (queries only valid/test triples pair with the item)
    every = pd.concat([_positives(df, "search") for df in s.values()])
    leaky = (every[["item_id", "query"]].drop_duplicates().sort_values(["item_id", "query"])
             .groupby("item_id")["query"].agg(TEXT_SEP.join))
    assert (s["test"]["item_text"] != s["test"]["item_id"].map(leaky)).any()
    # no history holds its row's item or any later-split item of the user
    later = defaultdict(set)
    for split in ("valid", "test"):
        for u, i in zip(*(_positives(s[split], "rec")[c] for c in ("user_id", "item_id"))):
            later[(u, split)].add(i)
    for split, df in s.items():
        banned = ("valid", "test") if split in ("train", "valid") else ("test",)
        for u, i, h in zip(df["user_id"], df["item_id"], df["hist_item_id"]):
            assert i not in h and len(set(h)) == len(h) and not any(x in later[(u, b)] for b in banned for x in h)
    # a test history is the user's train + valid items of every domain, the row's domain last
    earlier = pd.concat([_positives(s["train"], "rec"), _positives(s["valid"], "rec")])
    domains_of = earlier.groupby(["user_id", "item_id"])["domain"].agg(set).to_dict()
    n_domains = earlier.groupby("user_id")["domain"].nunique()
    test = _positives(s["test"], "rec")
    test = test[test["user_id"].map(n_domains).fillna(0) >= 2]
    assert len(test) > 0
    train_items = set(s["train"]["item_id"])
    for _, row in test.head(50).iterrows():
        hist = list(row["hist_item_id"])
        mine = set(earlier.loc[earlier["user_id"] == row["user_id"], "item_id"]) - {row["item_id"]}
        assert len(hist) == 50 or mine <= set(hist)
        # beyond the rows: valid purchases of items with no train triple (left out of the valid rows, see the builder)
        assert not (set(hist) - mine) & train_items
        assert len(set(hist)) == len(hist)
        own = [row["domain"] in domains_of[(row["user_id"], i)] for i in hist if i in mine]
        assert own == sorted(own)                     # other domains first, the row's domain last
    # search rows carry the query line's string
    search = _positives(s["train"], "search")
    d, line = search["query_id"].iloc[0].split("/")
    assert search["query"].iloc[0] == queries[d][int(line)] and search["domain"].iloc[0] == d


def test_rec_rows_have_an_empty_query(built):
    for df in built.splits.values():
        rec = df[df["is_rec"] == 1]
        assert (rec["query"] == "").all() and (rec["query_id"] == "").all()
        search = df[df["is_search"] == 1]
        assert (search["query"] != "").all() and search["query_id"].str.match(r"^[a-z_]+/\d+$").all()
        # one rec row per distinct purchase, one search row per triple
        pos = _positives(df, "rec")
        assert not pos.duplicated(["domain", "user_id", "item_id"]).any()


def test_shortcut_stats_show_no_giveaway(built):
    stats = built.extra["shortcut_stats"]
    for split in ("train", "valid", "test"):
        for task in ("search", "rec"):
            st = stats[split][task]
            assert st["empty_item_text_pos"] == st["empty_item_text_neg"] == 0
            assert st["empty_history_pos"] == st["empty_history_neg"]       # negatives copy the history
            assert st["target_in_history"] == 0
    left = built.extra["cold_item_positives_left_out"]
    assert set(left) == {"valid", "test"} and left["test"]["search"]["kindle"] > 0


def test_manifest_records_cold_start_and_the_batch_reads(built, raw, tmp_path):
    b = get_builder(NAME)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(b, "fn", lambda *a, **k: built)
        lines: list[str] = []
        manifest = build(NAME, tmp_path / "md", raw_dir=raw, progress=False, log=lines.append)
    extra = json.loads((tmp_path / "md" / "manifest.json").read_text())["extra"]
    assert extra["cold_start"]["domain"] == COLD_START == "electronics"
    assert extra["domains"]["names"] == list(DOMAIN_NAMES)
    for split, df in built.splits.items():
        assert manifest["splits"][split]["rows"] == len(df)
        assert extra["domain_stats"][split]["electronics"]["rec"]["rows"] == int(
            ((df["domain"] == "electronics") & (df["is_rec"] == 1)).sum())
    n = len(built.splits["test"])
    feats, _, weights = next(iter(open_dataset(tmp_path / "md").dataset("test", n)))
    rec = feats["is_rec"].numpy().reshape(-1) == 1
    assert rec.sum() == (built.splits["test"]["is_rec"] == 1).sum() and (~rec).any()
    q = feats["query"].numpy()
    assert q.shape == (n, 384) and (q[rec] == 0).all() and (np.abs(q[~rec]).sum(1) > 0).all()
    assert (np.abs(feats["item_text"].numpy()).sum(1) > 0).all()
    assert np.array_equal(weights["search"].numpy().reshape(-1), (~rec).astype(np.float32))
    assert np.array_equal(weights["rec"].numpy().reshape(-1), rec.astype(np.float32))
    assert set(feats["domain"].numpy().astype(str)) <= set(DOMAIN_NAMES)
    assert f"{NAME}: wrote" in lines[0]


def test_a_missing_category_names_the_file(raw, tmp_path):
    (tmp_path / "Cell_Phones_and_Accessories").symlink_to(raw / "Cell_Phones_and_Accessories")
    b = get_builder(NAME)
    with pytest.raises(FileNotFoundError, match=r"Electronics/query_text\.txt\.gz: missing"):
        b.fn(load_spec(b.spec_path), tmp_path, max_users=20)


def test_spec_validates(capsys):
    assert main(["spec", "validate", str(feature_specs_dir() / f"{NAME}.yaml")]) == 0
    assert "ok (9 input features, 2 labels" in capsys.readouterr().out
