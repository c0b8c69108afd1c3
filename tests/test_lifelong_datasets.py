"""The lifelong datasets built from shared raw files: amazon-cellphones-search-lifelong (HEM, real query strings, HEM's
own test pairs) and taobao-head-lifelong (long behaviour sequences, id + category, no queries). Each is built with a
small `max_users` into a temporary folder; the tests check the protocol against the raw files and that SEMINAR
builds on the dataset and predicts a batch. Skipped without ../shared/datasets."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tfrec_zoo._tf import tf
from tfrec_zoo.data import open_dataset
from tfrec_zoo.data.builders import get_builder
from tfrec_zoo.data.builders.lifelong import lifelong_rows_given_test
from tfrec_zoo.data.writer import write_dataset
from tfrec_zoo.features.spec import load_spec
from tfrec_zoo.models import build_model

HEM = "amazon_product_search_hem/Cell_Phones_and_Accessories"
TAOBAO = "taobao_userbehavior_head"


def _build(name: str, out, raw, **options):
    """(the builder's split frames, the written dataset opened)."""
    builder = get_builder(name)
    spec = load_spec(builder.spec_path)
    built = builder.fn(spec, raw, **options)
    write_dataset(built.splits, spec, out, source=built.source, progress=False, catalogues=built.catalogues)
    return built.splits, open_dataset(out)


def _sequences(log: pd.DataFrame, item: str) -> dict:
    return {u: g[item].tolist() for u, g in log.groupby("user_id", sort=False)}


def _check_train(train: pd.DataFrame, seen: dict, item: str, hist: str):
    pos, neg = train[train.click == 1], train[train.click == 0]
    assert len(pos) == len(neg) and train["click"].tolist()[:2] == [1.0, 0.0]      # each positive, then its negative
    assert pos[hist].tolist() == neg[hist].tolist() and pos["user_id"].tolist() == neg["user_id"].tolist()
    for u, i in zip(neg["user_id"], neg[item]):
        assert i not in seen[u]
    assert all(len(e) == 0 for e in train["eval_neg_item_id"])


def _check_eval_negatives(df: pd.DataFrame, seen: dict):
    for u, negs in zip(df["user_id"], df["eval_neg_item_id"]):
        assert len(negs) == 99 and len(set(negs)) == 99 and not set(negs) & seen[u]


def _predicts(data, params: dict):
    tf.keras.utils.set_random_seed(0)
    model = build_model("seminar", data.spec, data.artifacts, {"dim": 16, "heads": 2, "top_k": 8, **params})
    x = next(iter(data.dataset("test", 4, features=list(model.input_names))))[0]
    p = model(x)["click"].numpy()
    assert p.shape[0] == min(4, data.rows("test")) and np.isfinite(p).all()
    return model


# -- lifelong_rows_given_test on a toy log --------------------------------------------------------------------------
def test_given_test_protocol():
    rng = np.random.default_rng(0)
    users, items, queries = [], [], []
    for u in range(30):
        seq = rng.choice(np.arange(1, 301), size=6, replace=False)
        users += [u] * 6
        items += list(seq)
        queries += [f"q{u}_{t}" for t in range(6)]
    log = pd.DataFrame({"user_id": users, "item": items, "query": queries})
    test = pd.DataFrame({"user_id": [3, 0, 3], "item": [500, 501, 502], "query": ["a", "b", "c"]})
    out = lifelong_rows_given_test(log, test, item="item", hist_item="h_item", hist_query="h_query", eval_neg="neg",
                                   max_len=4, train_positions=2, seed=1, universe=np.arange(1, 600))
    train, valid, te = out["train"], out["valid"], out["test"]
    assert len(valid) == 30 and len(train) == 30 * 2 * 2 and len(te) == 3
    seq3 = log[log.user_id == 3]["item"].tolist()
    v = valid[valid.user_id == 3].iloc[0]
    assert v["item"] == seq3[-1] and v["h_item"] == seq3[1:5]
    assert train[(train.user_id == 3) & (train.click == 1)]["item"].tolist() == seq3[3:5]    # n_train = 5
    # each test pair: history = the user's whole log (valid pair included), never another test pair
    assert te["item"].tolist() == [500, 501, 502] and te["query"].tolist() == ["a", "b", "c"]
    assert te.iloc[0]["h_item"] == seq3[-4:] and te.iloc[2]["h_item"] == seq3[-4:]
    assert te.iloc[0]["h_query"] == [f"q3_{t}" for t in range(2, 6)]
    for _, r in te.iterrows():
        user_items = set(log[log.user_id == r.user_id]["item"]) | set(test[test.user_id == r.user_id]["item"])
        assert len(set(r["neg"])) == 99 and not set(r["neg"]) & user_items
    with pytest.raises(ValueError, match="without a train log"):
        lifelong_rows_given_test(log, pd.DataFrame({"user_id": [99], "item": [1], "query": ["x"]}), item="item",
                                 hist_item="h", hist_query="hq", eval_neg="n", max_len=4, train_positions=2, seed=1)


# -- amazon-cellphones-search-lifelong ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cellphones(shared_root, tmp_path_factory):
    raw = shared_root / HEM
    if not raw.exists():
        pytest.skip(f"{raw} not found")
    splits, data = _build("amazon-cellphones-search-lifelong", tmp_path_factory.mktemp("cell") / "d", raw,
                          max_users=500)
    return raw, splits, data


def test_cellphones_protocol(cellphones):
    from tfrec_zoo.data.builders.amazon_search import read_qrels, read_queries

    raw, splits, _ = cellphones
    queries = read_queries(raw / "query_text.txt.gz")
    train_q, _ = read_qrels(raw / "train.qrels.gz", len(queries))
    test_q, _ = read_qrels(raw / "test.qrels.gz", len(queries))
    keep = sorted(set(train_q.user_id) | set(test_q.user_id))[:500]
    train_q, test_q = train_q[train_q.user_id.isin(keep)], test_q[test_q.user_id.isin(keep)]
    seqs = _sequences(train_q, "item_id")
    qseqs = {u: [queries[q] for q in g] for u, g in train_q.groupby("user_id", sort=False)["query_id"]}
    seen = {u: set(s) | set(test_q[test_q.user_id == u]["item_id"]) for u, s in seqs.items()}
    train, valid, test = splits["train"], splits["valid"], splits["test"]
    n_pos = sum(min(20, len(s) - 2) for s in seqs.values())        # positions 1..n-2 (the last is valid), <= 20
    assert len(valid) == len(seqs) and len(train) == 2 * n_pos and len(test) == len(test_q) > 0
    # valid = the user's last train pair, history = the pairs before it (file order)
    for _, r in valid.iterrows():
        assert r["item_id"] == seqs[r.user_id][-1] and r["query"] == qseqs[r.user_id][-1]
        assert r["hist_item_id"] == seqs[r.user_id][:-1][-50:]
    # test = HEM's test pairs with their real (train-unseen) query strings; history = every train pair of the user
    assert test["query"].tolist() == [queries[q] for q in test_q["query_id"]]
    assert test["item_id"].tolist() == test_q["item_id"].tolist()
    assert not set(test["query"]) & set(queries[q] for q in train_q["query_id"])
    for _, r in test.iterrows():
        assert r["hist_item_id"] == seqs[r.user_id][-50:] and r["hist_query"] == qseqs[r.user_id][-50:]
    _check_eval_negatives(valid, seen)
    _check_eval_negatives(test, seen)
    _check_train(train, seen, "item_id", "hist_item_id")
    # a negative's query is one of the user's earlier queries
    neg = train[train.click == 0]
    assert all(q in h for q, h in zip(neg["query"], neg["hist_query"]))


def test_cellphones_test_queries_have_text_vectors(cellphones):
    _, splits, data = cellphones
    vocab = data.artifacts.vocabs["query"]
    table = data.artifacts.side["query/query_text"]
    assert table.shape == (len(vocab) + 1, 384)
    for q in set(splits["test"]["query"]):
        assert q in vocab                                        # in the vocabulary although never in train
        assert np.abs(table[1 + vocab.index(q)]).sum() > 0       # row 0 = OOV


def test_cellphones_seminar_predicts(cellphones):
    _, _, data = cellphones
    model = _predicts(data, {})
    assert {"query", "hist_query", "item_id", "hist_item_id"} <= set(model.input_names)


# -- taobao-head-lifelong -------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def taobao(shared_root, tmp_path_factory):
    raw = shared_root / TAOBAO
    if not raw.exists():
        pytest.skip(f"{raw} not found")
    splits, data = _build("taobao-head-lifelong", tmp_path_factory.mktemp("taobao") / "d", raw, max_users=40)
    return raw, splits, data


def _raw_taobao(raw) -> pd.DataFrame:
    return pd.read_csv(raw / "UserBehavior_head.csv", header=None,
                       names=["user_id", "item_id", "category_id", "behavior", "timestamp"])


def test_taobao_protocol(taobao):
    raw, splits, _ = taobao
    log = _raw_taobao(raw)
    log = log[log.user_id.isin(sorted(log.user_id.unique())[:40])].sort_values(["user_id", "timestamp"],
                                                                                kind="stable")
    seqs = _sequences(log, "item_id")
    seen = {u: set(s) for u, s in seqs.items()}
    train, valid, test = splits["train"], splits["valid"], splits["test"]
    assert "query" not in test.columns and "hist_query" not in test.columns
    n_pos = sum(min(20, len(s) - 3) for s in seqs.values())          # positions 1..n-3, the last 20
    assert len(test) == len(valid) == 40 and len(train) == 2 * n_pos
    for _, r in test.iterrows():
        s = seqs[r.user_id]
        assert r["item_id"] == s[-1] and r["hist_item_id"] == s[:-1]          # 539 steps: nothing cut
    for _, r in valid.iterrows():
        assert r["item_id"] == seqs[r.user_id][-2] and r["hist_item_id"] == seqs[r.user_id][:-2]
    for u, g in train[train.click == 1].groupby("user_id"):
        s = seqs[u]
        assert g["item_id"].tolist() == s[max(1, len(s) - 2 - 20):len(s) - 2]
    _check_eval_negatives(valid, seen)
    _check_eval_negatives(test, seen)
    _check_train(train, seen, "item_id", "hist_item_id")


def test_taobao_category_side_table_matches_raw(taobao):
    raw, _, data = taobao
    log = _raw_taobao(raw)
    cats = log.groupby("item_id")["category_id"].agg(set).to_dict()
    vocab = data.artifacts.vocabs["item_id"]
    assert len(vocab) == len(cats)                                           # every item of the file
    cat_vocab = data.artifacts.vocabs["category_id"]
    table, lens = data.artifacts.side["item_id/category_id"], data.artifacts.side["item_id/category_id_len"]
    assert lens[0] == 0 and (lens[1:] == 1).all()
    got = np.asarray(cat_vocab)[table[1:, 0] - 1]                             # category rows: OOV row 0 first
    assert all(c in cats[i] for i, c in zip(vocab, got))


def test_taobao_seminar_predicts(taobao):
    _, _, data = taobao
    model = _predicts(data, {"use_query": False})
    assert set(model.input_names) == {"item_id", "hist_item_id", "history_len"}
