"""Builders on the real files: amazon-beauty / yelp (S3-Rec), amazon-cellphones-search (HEM), amazon-book (KGAT).

Split sizes and leakage are checked on the builders' DataFrames (full data where it is cheap, the first N users
otherwise); a small end-to-end `build` per dataset writes TFRecords and reads a test batch back.
"""
from __future__ import annotations

import functools
import gzip
from collections import defaultdict

import numpy as np
import pandas as pd
import pytest

from conftest import shared_dataset
from tfrec_zoo.data import open_dataset
from tfrec_zoo.data.builders import build, get_builder
from tfrec_zoo.data.builders.amazon_book import build_amazon_book
from tfrec_zoo.data.builders.amazon_search import build_amazon_cellphones_search
from tfrec_zoo.data.builders.s3rec import build_amazon_beauty, build_yelp
from tfrec_zoo.features.spec import load_spec


def _spec(name: str):
    return load_spec(get_builder(name).spec_path)


def _canon(df: pd.DataFrame) -> pd.DataFrame:
    """List/array cells -> tuples, so DataFrames holding sequences compare with `.equals`."""
    return df.apply(lambda col: col.map(lambda v: tuple(np.asarray(v).tolist()) if isinstance(v, (list, np.ndarray))
                                        else v))


def _same(a, b) -> bool:
    return a.splits.keys() == b.splits.keys() and all(_canon(a.splits[s]).equals(_canon(b.splits[s])) for s in a.splits)


def _read_lines(path) -> dict[int, list[int]]:
    return {int(p[0]): [int(x) for x in p[1:]] for p in (line.split() for line in open(path)) if p}


def _e2e(name, fn, raw, tmp_path, monkeypatch, **kw):
    """`build(name)` with the builder limited to a few users; return the first test batch."""
    monkeypatch.setattr(get_builder(name), "fn", functools.partial(fn, **kw))
    manifest = build(name, tmp_path / name, raw_dir=raw, progress=False, log=lambda *_: None)
    ds = open_dataset(tmp_path / name)
    assert ds.rows("test") == manifest["splits"]["test"]["rows"] > 0
    assert "negative_sampler" in manifest["extra"] and "seed" in manifest["extra"]
    return next(iter(ds.dataset("test", 8)))


# ---------------------------------------------------------------------------------------------------------------------
# S3-Rec: amazon-beauty, yelp
# ---------------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def s3rec_raw():
    return shared_dataset("s3rec_amazon_yelp_lastfm")


@pytest.fixture(scope="module")
def beauty(s3rec_raw):
    return build_amazon_beauty(_spec("amazon-beauty"), s3rec_raw)


def test_beauty_split_sizes(beauty, s3rec_raw):
    seqs = _read_lines(s3rec_raw / "Beauty.txt")
    s = beauty.splits
    assert len(seqs) == 22_363 and all(len(v) >= 3 for v in seqs.values())
    assert len(s["valid"]) == len(s["test"]) == 22_363 == s["test"]["user_id"].nunique()
    n_train_pos = sum(len(v) - 3 for v in seqs.values())  # train part minus its first item, which has no history
    assert len(s["train"]) == 2 * n_train_pos and s["train"]["click"].sum() == n_train_pos
    assert beauty.extra["seed"] is not None and "leave-one-out" in beauty.extra["split"]


def test_beauty_histories_and_targets(beauty, s3rec_raw):
    seqs = _read_lines(s3rec_raw / "Beauty.txt")
    for split, back in (("valid", 2), ("test", 1)):
        df = beauty.splits[split]
        for u, item, hist in zip(df["user_id"], df["item_id"], df["hist_item_id"]):
            assert item == seqs[u][-back] and list(hist) == seqs[u][:-back][-50:]
    # Beauty never repeats an item within a user, so "no test/valid item in a train history" holds item-wise too
    held = {u: set(v[-2:]) for u, v in seqs.items()}
    train = beauty.splits["train"]
    assert not any(held[u] & set(h) for u, h in zip(train["user_id"], train["hist_item_id"]))
    test_item = {u: v[-1] for u, v in seqs.items()}
    valid = beauty.splits["valid"]
    assert not any(test_item[u] in h for u, h in zip(valid["user_id"], valid["hist_item_id"]))


def test_beauty_negatives(beauty, s3rec_raw):
    seqs = {u: set(v) for u, v in _read_lines(s3rec_raw / "Beauty.txt").items()}
    train = beauty.splits["train"]
    pos, neg = train.iloc[0::2].reset_index(drop=True), train.iloc[1::2].reset_index(drop=True)
    assert (pos["click"] == 1).all() and (neg["click"] == 0).all()
    assert (pos["user_id"] == neg["user_id"]).all()
    assert _canon(pos[["hist_item_id"]]).equals(_canon(neg[["hist_item_id"]]))
    assert not any(i in seqs[u] for u, i in zip(neg["user_id"], neg["item_id"]))
    assert train["eval_neg_item_id"].map(len).eq(0).all()
    for split in ("valid", "test"):
        df = beauty.splits[split]
        for u, negs in zip(df["user_id"], df["eval_neg_item_id"]):
            assert len(set(negs.tolist())) == 99 and not seqs[u] & set(negs.tolist())
    assert train["item_attrs"].map(len).between(1, 6).all()


def test_yelp_histories_are_prefixes_and_build_is_deterministic(s3rec_raw):
    spec = _spec("yelp")
    a = build_yelp(spec, s3rec_raw, max_users=400)
    assert _same(a, build_yelp(spec, s3rec_raw, max_users=400))
    seqs = _read_lines(s3rec_raw / "Yelp.txt")
    assert sorted(a.splits["test"]["user_id"]) == sorted(seqs)[:400]
    pos = a.splits["train"][a.splits["train"]["click"] == 1]
    for u, rows in pos.groupby("user_id", sort=False):
        seq = seqs[u]  # revisits repeat items: check positions, not item ids
        assert [list(h) for h in rows["hist_item_id"]] == [seq[:t][-50:] for t in range(1, len(seq) - 2)]
        assert rows["item_id"].tolist() == seq[1:-2]
    for u, negs in zip(a.splits["test"]["user_id"], a.splits["test"]["eval_neg_item_id"]):
        assert len(set(negs.tolist())) == 99 and not set(seqs[u]) & set(negs.tolist())


def test_s3rec_bad_line_names_file_and_line(tmp_path, s3rec_raw):
    (tmp_path / "Beauty.txt").write_text("1 1 2 3\n2 4 x 5\n")
    (tmp_path / "Beauty_item2attributes.json").write_text((s3rec_raw / "Beauty_item2attributes.json").read_text())
    with pytest.raises(ValueError, match=r"Beauty\.txt:2: 'x'"):
        build_amazon_beauty(_spec("amazon-beauty"), tmp_path)


def test_beauty_end_to_end(tmp_path, monkeypatch, s3rec_raw):
    a = build_amazon_beauty(_spec("amazon-beauty"), s3rec_raw, max_users=200)
    assert _same(a, build_amazon_beauty(_spec("amazon-beauty"), s3rec_raw, max_users=200))
    feats, labels = _e2e("amazon-beauty", build_amazon_beauty, s3rec_raw, tmp_path, monkeypatch, max_users=200)
    assert feats["item_id"].shape == feats["user_id"].shape == labels["click"].shape == (8,)
    assert feats["item_attrs"].shape == (8, 8) and feats["hist_item_id"].shape == (8, 50)
    assert feats["eval_neg_item_id"].shape == (8, 99) and (feats["eval_negatives_len"].numpy() == 99).all()
    assert (labels["click"].numpy() == 1).all()


# ---------------------------------------------------------------------------------------------------------------------
# HEM product search: amazon-cellphones-search
# ---------------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def search_raw():
    return shared_dataset("amazon_product_search_hem") / "Cell_Phones_and_Accessories"


@pytest.fixture(scope="module")
def search(search_raw):
    return build_amazon_cellphones_search(_spec("amazon-cellphones-search"), search_raw)


def _qrels(path) -> list[tuple[str, int, str]]:
    out = []
    for line in gzip.open(path, "rt"):
        p = line.split()
        u, q = p[0].rsplit("_", 1)
        out.append((u, int(q), p[2]))
    return out


def test_search_splits_and_leakage(search, search_raw):
    train_q, test_q = _qrels(search_raw / "train.qrels.gz"), _qrels(search_raw / "test.qrels.gz")
    s = search.splits
    pos = s["train"][s["train"]["click"] == 1]
    assert len(s["train"]) == 2 * len(pos) and len(pos) + len(s["valid"]) == len(train_q) == 174_087
    assert len(s["test"]) == len(test_q) == 667
    items = defaultdict(set)
    for u, _, i in train_q:
        items[u].add(i)
    assert s["valid"]["user_id"].nunique() == sum(len(v) >= 3 for v in items.values()) == 27_879
    # the held-out (user, item) pairs are in no training row of that user, positive or history
    held = set(zip(s["valid"]["user_id"], s["valid"]["item_id"]))
    assert not held & set(zip(pos["user_id"], pos["item_id"]))
    test_items = defaultdict(set)
    for u, _, i in test_q:
        test_items[u].add(i)
        items[u].add(i)
    for split, df in s.items():
        for u, i, h in zip(df["user_id"], df["item_id"], df["hist_item_id"]):
            assert not test_items[u] & set(h) and i not in h and len(h) <= 50
    train_hist = defaultdict(set)
    for u, h in zip(s["train"]["user_id"], s["train"]["hist_item_id"]):
        train_hist[u].update(h)
    assert not any(i in train_hist[u] for u, i in held)
    neg = s["train"][s["train"]["click"] == 0]
    assert not any(i in items[u] for u, i in zip(neg["user_id"], neg["item_id"]))
    for split in ("valid", "test"):
        for u, negs in zip(s[split]["user_id"], s[split]["eval_neg_item_id"]):
            assert len(set(negs)) == 99 and not items[u] & set(negs)
    queries = [q.strip() for q in gzip.open(search_raw / "query_text.txt.gz", "rt")]
    assert all(queries[q] == t for q, t in zip(s["test"]["query_id"], s["test"]["query"]))


def test_search_bad_qrels_line(tmp_path, search_raw):
    (tmp_path / "query_text.txt.gz").write_bytes((search_raw / "query_text.txt.gz").read_bytes())
    (tmp_path / "test.qrels.gz").write_bytes((search_raw / "test.qrels.gz").read_bytes())
    with gzip.open(tmp_path / "train.qrels.gz", "wt") as fh:
        fh.write("A1_3 0 B01 1\nA1_999 0 B02 1\n")
    with pytest.raises(ValueError, match=r"train\.qrels\.gz:2: query line 999"):
        build_amazon_cellphones_search(_spec("amazon-cellphones-search"), tmp_path)


def test_search_end_to_end_real_encoder(tmp_path, monkeypatch, search_raw):
    spec = _spec("amazon-cellphones-search")
    a = build_amazon_cellphones_search(spec, search_raw, max_users=300)
    assert _same(a, build_amazon_cellphones_search(spec, search_raw, max_users=300))
    feats, labels = _e2e("amazon-cellphones-search", build_amazon_cellphones_search, search_raw, tmp_path,
                         monkeypatch, max_users=300)
    assert feats["query"].shape == (8, 384) and feats["user_id"].dtype.name == "string"
    norms = np.linalg.norm(feats["query"].numpy(), axis=1)
    assert np.allclose(norms, 1.0, atol=1e-3)  # MiniLM vectors are unit length
    assert feats["hist_item_id"].shape == (8, 50) and feats["eval_neg_item_id"].shape == (8, 99)
    assert labels["click"].shape == (8,)


# ---------------------------------------------------------------------------------------------------------------------
# KGAT Amazon-Book: amazon-book
# ---------------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def book_raw():
    return shared_dataset("amazon-book_kgat")


def test_book_full_sizes(book_raw):
    b = build_amazon_book(_spec("amazon-book"), book_raw)
    s = b.splits
    assert len(s["train"]) + len(s["valid"]) == 652_514 and len(s["test"]) == 193_920
    assert s["valid"]["user_id"].nunique() == 39_163  # users with >= 5 train items
    assert (s["train"]["click"] == 1).all() and "none" in b.extra["negative_sampler"]


def test_book_subset_leakage_and_determinism(book_raw):
    spec = _spec("amazon-book")
    b = build_amazon_book(spec, book_raw, max_users=1500)
    assert _same(b, build_amazon_book(spec, book_raw, max_users=1500))
    train_txt, test_txt = _read_lines(book_raw / "train.txt"), _read_lines(book_raw / "test.txt")
    users = sorted(train_txt)[:1500]
    s = b.splits
    n_valid = s["valid"].groupby("user_id").size()
    for u in users:
        n = len(train_txt[u])
        assert n_valid.get(u, 0) == (max(1, round(0.05 * n)) if n >= 5 else 0)
    assert len(s["test"]) == sum(len(test_txt[u]) for u in users)
    valid_items = defaultdict(set)
    for u, i in zip(s["valid"]["user_id"], s["valid"]["item_id"]):
        valid_items[u].add(i)
    train_items = defaultdict(set)
    for u, i in zip(s["train"]["user_id"], s["train"]["item_id"]):
        train_items[u].add(i)
    for split, df in s.items():
        for u, i, h in zip(df["user_id"], df["item_id"], df["hist_item_id"]):
            h = set(np.asarray(h).tolist())
            assert not h & set(test_txt[u]) and len(h) <= 50
            if split == "train":
                assert i not in h and not h & valid_items[u] and len(h) == min(len(train_items[u]) - 1, 50)
            if split == "valid":
                assert h <= train_items[u]


def test_book_end_to_end(tmp_path, monkeypatch, book_raw):
    feats, labels = _e2e("amazon-book", build_amazon_book, book_raw, tmp_path, monkeypatch, max_users=100)
    assert feats["hist_item_id"].shape == (8, 50) and feats["item_id"].shape == (8,)
    lens = feats["history_len"].numpy()
    hist = feats["hist_item_id"].numpy()
    assert all((hist[r, lens[r]:] == -1).all() for r in range(8))  # padding is -1, never item 0
