"""Two-tower retrieval: the in-batch loss is what it says, the model trains on real data, full-corpus metrics through
the brute-force index equal a direct numpy computation, ScaNN agrees with brute force, both top-K exports save and
reload to the same ids, and the popularity baseline is reported beside the model."""
from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from tfrec_zoo._tf import keras, tf
from tfrec_zoo.data import open_dataset
from tfrec_zoo.data.builders import build
from tfrec_zoo.features import Artifacts, parse_spec
from tfrec_zoo.models import build_model
from tfrec_zoo.models.two_tower import TwoTowerConfig, TwoTowerModel
from tfrec_zoo.retrieval import item_embeddings
from tfrec_zoo.retrieval import (
    BruteForceIndex, ScannIndex, brute_force_topk_model, load_topk_model, save_topk_model, scann_topk_model,
)
from training.fit import fit_model
from training.retrieval import collect_item_features, evaluate_retrieval, filter_seen

from conftest import shared_dataset

KS = (10, 50, 100)


# -- the loss ------------------------------------------------------------------------------------------------------
TOY = parse_spec({
    "name": "toy", "keys": {"user": "user_id", "item": "item_id"},
    "features": [
        {"name": "user_id", "kind": "id", "embedding_dim": 8},
        {"name": "item_id", "kind": "id", "embedding_dim": 8},
        {"name": "hist", "kind": "sequence", "max_len": 4, "fields": [
            {"name": "hist_item", "shares_embedding_with": "item_id"}]},
        {"name": "click", "kind": "label"},
    ]}, "toy.yaml")
TOY_ART = Artifacts(vocabs={"user_id": list(range(10)), "item_id": list(range(20))})


def _toy_batch():
    rng = np.random.default_rng(0)
    items = np.array([1, 2, 3, 2, 5, 6, 7, 8])               # item 2 twice: an accidental hit
    feats = {"user_id": rng.integers(0, 10, 8), "item_id": items, "hist_item": rng.integers(0, 20, (8, 4)),
             "hist_len": rng.integers(0, 5, 8).astype(np.int32)}
    click = np.array([1, 1, 0, 1, 1, 0, 1, 1], np.float32)
    return feats, {"click": click}


@pytest.mark.parametrize("logq", [False, True])
def test_in_batch_softmax_loss_matches_numpy(logq):
    model = TwoTowerModel(TOY, TOY_ART, TwoTowerConfig(output_dim=6, query_units=(8,), temperature=0.2,
                                                       logq_correction=logq))
    feats, labels = _toy_batch()
    batch = ({k: tf.constant(v) for k, v in feats.items()}, {"click": tf.constant(labels["click"])})
    loss = float(model.compute_loss(batch, training=True))
    q = model.query_model.predict({k: feats[k] for k in model.query_inputs}, verbose=0)
    v = model.item_model.predict({"item_id": feats["item_id"]}, verbose=0)
    np.testing.assert_allclose(np.linalg.norm(q, axis=1), 1.0, rtol=1e-5)      # normalize=True
    logits = q @ v.T / 0.2
    items = feats["item_id"]
    if logq:  # one batch seen: p_j = count of item j in the batch / 8
        p = np.array([(items == i).sum() / 8 for i in items])
        logits = logits - np.log(p)[None, :]
    same = (items[:, None] == items[None, :]) & ~np.eye(8, dtype=bool)
    logits = np.where(same, -1e9, logits)
    logp = logits - np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1, keepdims=True)) \
        - logits.max(1, keepdims=True)
    pos = labels["click"] > 0
    assert loss == pytest.approx(float(-np.diag(logp)[pos].mean()), rel=1e-4)
    # rows with label 0 are not positives: their query features do not change the loss
    other = dict(batch[0], user_id=tf.where(tf.constant(pos), batch[0]["user_id"], 9 - batch[0]["user_id"]))
    model2_loss = float(model.compute_loss((other, batch[1]), training=False))
    assert model2_loss == pytest.approx(float(model.compute_loss(batch, training=False)), rel=1e-6)


def test_filter_seen_keeps_rank_order_and_pads():
    top = np.array([[5, 3, 9, 1], [2, 4, 6, 8]])
    seen = np.sort(np.array([0 * 10 + 3, 0 * 10 + 1, 1 * 10 + 2, 1 * 10 + 4, 1 * 10 + 6]))
    out = filter_seen(top, np.arange(2), seen, 10, 3)
    np.testing.assert_array_equal(out, [[5, 9, -1], [8, -1, -1]])


def test_registered_and_config_checked():
    model = build_model("two_tower", TOY, TOY_ART, {"output_dim": 4, "query_units": [8]})
    assert isinstance(model, TwoTowerModel) and model.item_inputs == ["item_id"]
    assert set(model.query_inputs) == {"user_id", "hist_item", "hist_len"}
    with pytest.raises(ValueError, match="not input features"):
        build_model("two_tower", TOY, TOY_ART, {"item_features": ["nope"]})


# -- real data: amazon-book, first 500 users -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def book(tmp_path_factory):
    raw = shared_dataset("amazon-book_kgat")
    out = tmp_path_factory.mktemp("data") / "book500"
    build("amazon-book", out, raw_dir=raw, progress=False, log=lambda *_: None, options={"max_users": 500})
    data = open_dataset(out)
    model, history = fit_model("two_tower", data, {"output_dim": 32, "query_units": [64]}, drop_remainder=True,
                               epochs=6, batch_size=256, verbose=0)
    report = evaluate_retrieval(model, data, split="test", ks=KS, return_lists=True)
    return data, model, history, report


def _rows(data, split):
    """(user, item, label) of every row of a split, read independently of evaluate_retrieval."""
    out = []
    for feats, labels in data.dataset(split, 4096, features=["user_id", "item_id"]):
        out += list(zip(feats["user_id"].numpy().tolist(), feats["item_id"].numpy().tolist(),
                        labels["click"].numpy().tolist()))
    return out


def _metrics(lists, relevant, ks):
    """Recall / hit rate / NDCG@k with Python loops (per user: a ranked list of item ids and a set)."""
    out = {}
    for k in ks:
        rec, hit, ndcg = [], [], []
        for top, rel in zip(lists, relevant):
            hits = [j for j, i in enumerate(top[:k]) if i in rel]
            rec.append(len(hits) / len(rel))
            hit.append(float(bool(hits)))
            dcg = sum(1 / math.log2(j + 2) for j in hits)
            ndcg.append(dcg / sum(1 / math.log2(j + 2) for j in range(min(len(rel), k))))
        out[f"recall@{k}"], out[f"hitrate@{k}"], out[f"ndcg@{k}"] = map(np.mean, (rec, hit, ndcg))
    return out


def test_two_tower_trains_on_amazon_book(book):
    _, _, history, report = book
    loss = history.history["loss"]
    assert loss[-1] < 0.8 * loss[0], loss
    assert report["protocol"]["users"] == 500 and report["protocol"]["seen_splits"] == ["train", "valid"]
    assert report["model"]["all"]["recall@100"] > 0


def test_metrics_through_brute_force_index_match_numpy(book):
    data, model, _, report = book
    lists = report["lists"]
    users = lists["users"].tolist()
    # queries: each user's first test row; relevant: the user's test items; seen: train + valid items
    first, relevant, seen = {}, defaultdict(set), defaultdict(set)
    test_feats = {k: [] for k in model.query_inputs}
    for feats, _ in data.dataset("test", 4096, features=model.query_inputs + ["item_id"]):
        for r in range(len(feats["user_id"])):
            u = int(feats["user_id"][r])
            if u not in first:
                first[u] = len(first)
                for k in model.query_inputs:
                    test_feats[k].append(feats[k][r].numpy())
    for u, i, y in _rows(data, "test"):
        if y > 0:
            relevant[u].add(i)
    for split in ("train", "valid"):
        for u, i, _ in _rows(data, split):
            seen[u].add(i)
    q = model.query_model.predict({k: np.stack(v) for k, v in test_feats.items()}, verbose=0)
    q = q[[first[u] for u in users]]
    ids = np.asarray(data.artifacts.vocabs["item_id"])
    v = model.item_model.predict({"item_id": ids}, verbose=0)
    scores = q @ v.T
    rel = [relevant[u] for u in users]
    top_all = [ids[np.argsort(-s, kind="stable")[:100]].tolist() for s in scores]
    masked = [np.where(np.isin(ids, list(seen[u])), -np.inf, s) for u, s in zip(users, scores)]
    top_filt = [ids[np.argsort(-s, kind="stable")[:100]].tolist() for s in masked]
    for name, mine in (("all", top_all), ("filtered", top_filt)):
        expect = _metrics(mine, rel, KS)
        got = report["model"][name]
        for key, value in expect.items():
            assert got[key] == pytest.approx(value, abs=1e-9), (name, key)
    # popularity: positive rows per item in the earlier splits (train + valid), ties by vocabulary order
    counts = defaultdict(int)
    for split in ("train", "valid"):
        for _, i, y in _rows(data, split):
            counts[i] += y > 0
    ranked = sorted(range(len(ids)), key=lambda j: (-counts[int(ids[j])], j))
    pop = [int(ids[j]) for j in ranked]
    pop_filt = [[i for i in pop if i not in seen[u]][:100] for u in users]
    for name, mine in (("all", [pop[:100]] * len(users)), ("filtered", pop_filt)):
        expect = _metrics(mine, rel, KS)
        for key, value in expect.items():
            assert report["popularity"][name][key] == pytest.approx(value, abs=1e-9), ("popularity", name, key)


def test_scann_recall_against_brute_force(book):
    _, _, _, report = book
    lists = report["lists"]
    q, v = lists["query_vectors"], lists["item_vectors"]
    exact, _ = BruteForceIndex(v).search(q, 100)
    # scann_params' defaults, and a tree searching 30 of its 53 leaves (the defaults search them all at this size)
    for kw in ({}, {"num_leaves": 53, "num_leaves_to_search": 30}):
        approx, _ = ScannIndex(v, 100, **kw).search(q, 100)
        recall = np.mean([len(set(a) & set(e)) / 100 for a, e in zip(approx, exact)])
        assert recall >= 0.9, (kw, recall)
    # the brute-force index is what the evaluation used (same top-100 as the unfiltered lists)
    np.testing.assert_array_equal(exact, lists["all"])


def test_topk_models_save_reload_and_serve_the_same_ids(book, tmp_path: Path):
    data, model, _, report = book
    ids, vectors = item_embeddings(model, data.artifacts)
    feats = next(iter(data.dataset("test", 64, features=model.query_inputs)))[0]
    feats = {k: feats[k] for k in model.query_inputs}
    exact, _ = BruteForceIndex(vectors).search(model.query_model.predict(feats, verbose=0), 20)
    for kind, make in (("brute_force", brute_force_topk_model), ("scann", scann_topk_model)):
        topk = make(model.query_model, ids, vectors, 20)
        out = topk(feats)
        assert out["ids"].shape == (64, 20) and out["scores"].shape == (64, 20)
        if kind == "brute_force":
            np.testing.assert_array_equal(out["ids"].numpy(), ids[exact])
        save_topk_model(topk, tmp_path / kind)
        served = load_topk_model(tmp_path / kind).signatures["serving_default"]
        assert set(served.structured_input_signature[1]) == set(model.query_inputs)
        again = served(**feats)
        np.testing.assert_array_equal(again["ids"].numpy(), out["ids"].numpy())
        np.testing.assert_allclose(again["scores"].numpy(), out["scores"].numpy(), rtol=1e-5, atol=1e-6)


# -- real data, always present: ml-latest-small, 60 users, item features in the item tower --------------------------
def test_ml_latest_small_with_item_features_and_popularity(tmp_path: Path):
    out = tmp_path / "ml60"
    build("ml-latest-small", out, progress=False, log=lambda *_: None, options={"max_users": 60})
    data = open_dataset(out)
    params = {"query_features": ["user_id", "history"], "item_features": ["genres", "year"], "output_dim": 16,
              "query_units": [32], "item_units": [32], "logq_correction": True}
    model, history = fit_model("two_tower", data, params, drop_remainder=True, epochs=4, batch_size=128,
                               verbose=0)
    assert history.history["loss"][-1] < history.history["loss"][0]
    assert set(model.item_inputs) == {"movie_id", "genres", "genres_len", "year"}
    ids, feats = collect_item_features(data, model)
    report = evaluate_retrieval(model, data, item_ids=ids, item_features=feats, ks=KS)
    # the corpus is the vocabulary; item features exist for every train item, so evaluate over those
    assert report["protocol"]["users"] <= 60 and report["protocol"]["relevant"].endswith("like > 0")
    for who in ("model", "popularity"):
        for name in ("all", "filtered"):
            m = report[who][name]
            assert 0 <= m["recall@100"] <= 1 and m["n_users"] == report["protocol"]["users"]
    got_ids, vec = item_embeddings(model, item_ids=ids, item_features=feats)
    assert vec.shape == (len(ids), 16)


def test_multi_interest_queries_rank_items_by_their_best_interest():
    """Evaluation and the exact top-K export take [B, K, d] query vectors + a mask (K = 1: one vector)."""
    from tfrec_zoo.retrieval import BruteForceIndex, ScannIndex, as_interests, brute_force_topk_model, search_interests

    rng = np.random.default_rng(0)
    items = rng.standard_normal((300, 8)).astype(np.float32)
    q = rng.standard_normal((5, 3, 8)).astype(np.float32)
    mask = np.array([[1, 1, 1], [1, 0, 0], [1, 1, 0], [0, 1, 1], [1, 1, 1]], bool)
    scores = np.einsum("bkd,nd->bkn", q, items)
    best = np.where(mask[:, :, None], scores, -np.inf).max(axis=1)
    want = np.argsort(-best, axis=1, kind="stable")[:, :10]
    for index in (BruteForceIndex(items), ScannIndex(items, 10, num_leaves=1, reorder=300)):
        ids, got_scores = search_interests(index, q, mask, 10)
        np.testing.assert_array_equal(ids, want)
        np.testing.assert_allclose(got_scores, np.take_along_axis(best, want, 1), rtol=1e-4)
    # K = 1 is the index's own answer; a [n, d] output is K = 1
    vec, m = as_interests(q[:, 0])
    assert vec.shape == (5, 1, 8) and m.all()
    np.testing.assert_array_equal(search_interests(BruteForceIndex(items), vec, m, 7)[0],
                                  BruteForceIndex(items).search(q[:, 0], 7)[0])
    # the exact top-K export of a multi-interest tower: max over the valid interests, in the graph
    inp = keras.Input((3,), name="user")
    interests = keras.layers.Reshape((3, 8))(keras.layers.Dense(24, use_bias=False, name="proj")(inp))
    tower = keras.Model(inp, {"interests": interests, "mask": keras.layers.Lambda(lambda x: x > 0)(inp)})
    x = rng.standard_normal((4, 3)).astype(np.float32)
    topk = brute_force_topk_model(tower, np.arange(300) + 1000, items, k=5)
    out = topk({"user": x})
    t = tower.predict(x, verbose=0)
    best = np.where(t["mask"][:, :, None], np.einsum("bkd,nd->bkn", t["interests"], items), -np.inf).max(axis=1)
    want = np.argsort(-best, axis=1, kind="stable")[:, :5]
    # a row with no valid interest has no item to return: padding ids (-1), see tfrec_zoo.retrieval.PAD_INT_ID
    assert not np.isfinite(best[1:3]).any()
    np.testing.assert_array_equal(out["ids"].numpy(), np.where(np.isfinite(np.take_along_axis(best, want, 1)),
                                                               want + 1000, -1))
