"""Multi-interest candidate generation models (adaptive_interests_pcl, MIND, ComiRec-SA/-DR, YouTube DNN): the loss
against numpy (max and positive read-outs, logQ, accidental hits, mixed negatives, prototype collisions, ProtoNCE),
the selection mask's gradient and its exact serving value, odd users (no history, unknown ids), bad configs, the
k-means epoch hook, and training + full-corpus evaluation on real data."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tfrec_zoo._tf import tf
from tfrec_zoo.data import open_dataset
from tfrec_zoo.data.builders import build
from tfrec_zoo.features import Artifacts, parse_spec
from tfrec_zoo.layers.multi_interest import kmeans
from tfrec_zoo.models import MODELS, build_model
from training.fit import fit_model
from training.retrieval import corpus_vectors, evaluate_retrieval


@pytest.fixture(autouse=True)
def _seeded():
    """Every build starts from the same weights: the numpy comparisons hold for any, but a failure reproduces."""
    tf.keras.utils.set_random_seed(0)


TOY_RAW = {
    "name": "toy", "keys": {"user": "user_id", "item": "item_id"},
    "features": [
        {"name": "user_id", "kind": "id", "embedding_dim": 8},
        {"name": "item_id", "kind": "id", "embedding_dim": 8},
        {"name": "activity", "kind": "dense", "normalization": "none"},
        {"name": "hist", "kind": "sequence", "max_len": 4, "fields": [
            {"name": "hist_item", "shares_embedding_with": "item_id"}]},
        {"name": "click", "kind": "label"},
    ]}
TOY = parse_spec(TOY_RAW, "toy.yaml")
ART = Artifacts(vocabs={"user_id": list(range(10)), "item_id": list(range(20))}, stats={"activity": {}})
ITEMS = np.array([1, 2, 3, 2, 5, 6, 7, 8])             # item 2 twice: an accidental hit
CLICK = np.array([1, 1, 0, 1, 1, 0, 1, 1], np.float32)


def _batch(hist_len=None):
    rng = np.random.default_rng(0)
    feats = {"user_id": rng.integers(0, 10, 8), "item_id": ITEMS, "hist_item": rng.integers(0, 20, (8, 4)),
             "hist_len": np.array([1, 2, 3, 4, 4, 2, 1, 3] if hist_len is None else hist_len, np.int32),
             "activity": rng.random(8).astype(np.float32)}
    return feats, ({k: tf.constant(v) for k, v in feats.items()}, {"click": tf.constant(CLICK)})


def _log_softmax_diag(logits):
    m = logits.max(1, keepdims=True)
    return np.diag(logits - m - np.log(np.exp(logits - m).sum(1, keepdims=True)))[: logits.shape[0]]


def _numpy_loss(model, feats, *, readout, temperature, logq, protos=None, every_slot=False):
    out = model.query_model.predict({k: feats[k] for k in model.query_inputs}, verbose=0)
    q, m = out["interests"], (out["mask"] > 0.5) | every_slot
    v = model.item_model.predict({"item_id": feats["item_id"]}, verbose=0)
    dots = np.einsum("bkd,nd->bkn", q, v)
    if readout == "max":
        logits = np.where(m[:, :, None], dots, -1e9).max(1)
    else:
        best = np.where(m, np.einsum("bkd,bd->bk", q, v), -1e9).argmax(1)
        logits = q[np.arange(8), best] @ v.T
    logits = logits / temperature
    if logq:   # one training batch seen: p_j = count / 8, expected count in the batch = 8 p_j
        logits = logits - np.log(np.array([(ITEMS == i).sum() for i in ITEMS], np.float64))[None]
    off = ~np.eye(8, dtype=bool)
    logits = np.where((ITEMS[:, None] == ITEMS[None]) & off, -1e9, logits)
    if protos is not None:
        unit = v / np.linalg.norm(v, axis=1, keepdims=True)
        of = (unit @ protos.T - 0.5 * (protos ** 2).sum(1)).argmax(1)
        logits = np.where((of[:, None] == of[None]) & off, -1e9, logits)
    return float(-_log_softmax_diag(logits)[CLICK > 0].mean())


@pytest.mark.parametrize("name,readout", [("comirec_sa", "positive"), ("adaptive_interests_pcl", "max"),
                                          ("comirec_dr", "positive"), ("mind", "positive")])
def test_in_batch_loss_matches_numpy(name, readout):
    params = {"output_dim": 6, "max_interests": 3, "temperature": 0.2}
    if name == "adaptive_interests_pcl":
        params["adaptive"] = False          # a deterministic mask: the test compares one forward pass
    model = build_model(name, TOY, ART, params)
    assert model._cfg.readout == readout
    feats, batch = _batch()
    loss = float(model.compute_loss(batch, training=True))          # counts the batch for logQ first
    assert loss == pytest.approx(_numpy_loss(model, feats, readout=readout, temperature=0.2, logq=True), rel=1e-4)


def test_prototype_collisions_and_proto_nce_match_numpy():
    model = build_model("adaptive_interests_pcl", TOY, ART, {
        "output_dim": 6, "max_interests": 2, "adaptive": False, "temperature": 0.2, "logq_correction": False,
        "prototypes": 3, "prototype_temperature": 0.5})
    feats, batch = _batch()
    model.set_loss_weights({"prototype": 0.0})
    retrieval = float(model.compute_loss(batch, training=False))
    protos = tf.math.l2_normalize(model.prototype_vectors, -1).numpy()
    assert retrieval == pytest.approx(_numpy_loss(model, feats, readout="max", temperature=0.2, logq=False,
                                                  protos=protos), rel=1e-4)
    # the collision treatment really removes terms: without it the loss differs (3 prototypes, 8 items)
    plain = build_model("adaptive_interests_pcl", TOY, ART, {
        "output_dim": 6, "max_interests": 2, "adaptive": False, "temperature": 0.2, "logq_correction": False,
        "prototypes": 3, "collision": "none"})
    plain.set_weights(model.get_weights())
    plain.set_loss_weights({"prototype": 0.0})
    assert float(plain.compute_loss(batch, training=False)) > retrieval
    # ProtoNCE over the batch's unit item vectors, each against its nearest prototype
    model.set_loss_weights({"prototype": 1.0, "retrieval": 0.0})
    got = float(model.compute_loss(batch, training=False))
    v = model.item_model.predict({"item_id": ITEMS}, verbose=0)
    unit = v / np.linalg.norm(v, axis=1, keepdims=True)
    logits = unit @ protos.T / 0.5
    s = (unit @ protos.T).argmax(1)
    logp = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    assert got == pytest.approx(float(-logp[np.arange(8), s].mean()), rel=1e-4)


def test_mixed_negatives_join_the_softmax_with_their_own_logq():
    model = build_model("adaptive_interests_pcl", TOY, ART, {"output_dim": 6, "adaptive": False,
                                                             "mixed_negatives": 5, "temperature": 0.2})
    feats, batch = _batch()
    tf.random.set_seed(3)
    loss = float(model.compute_loss(batch, training=True))
    tf.random.set_seed(3)
    pick = tf.random.uniform([5], 0, 20, dtype=tf.int32).numpy()           # the draw compute_loss made
    out = model.query_model.predict({k: feats[k] for k in model.query_inputs}, verbose=0)
    cands = np.concatenate([ITEMS, pick])
    v = model.item_model.predict({"item_id": cands}, verbose=0)
    logits = np.einsum("bkd,nd->bkn", out["interests"], v).max(1) / 0.2
    expected = np.r_[[(ITEMS == i).sum() for i in ITEMS], np.full(5, 5 / 20)]
    logits = logits - np.log(expected)[None]
    logits = np.where((ITEMS[:, None] == cands[None]) & ~np.eye(8, 13, dtype=bool), -1e9, logits)
    assert loss == pytest.approx(float(-_log_softmax_diag(logits)[CLICK > 0].mean()), rel=1e-4)


def test_selection_mask_trains_end_to_end_and_is_exact_at_serving():
    model = build_model("adaptive_interests_pcl", TOY, ART, {"output_dim": 6, "max_interests": 4,
                                                             "activeness_features": ["activity"]})
    feats, batch = _batch()
    assert set(model.query_inputs) == {"hist_item", "hist_len", "activity"}
    selection = model.get_layer("query_tower").get_layer("interest_selection")
    with tf.GradientTape() as tape:
        loss = model.compute_loss(batch, training=True)
    grads = tape.gradient(loss, selection.trainable_variables)
    assert all(g is not None for g in grads) and any(float(tf.reduce_max(tf.abs(g))) > 0 for g in grads)
    mask = model.query_model.predict({k: feats[k] for k in model.query_inputs}, verbose=0)["mask"]
    assert set(np.unique(mask)) <= {0.0, 1.0} and (np.diff(mask, axis=1) <= 0).all() and (mask[:, 0] == 1).all()
    x = np.c_[np.log1p(feats["hist_len"]), feats["activity"]].astype(np.float32)
    k = selection.count_logits(x).numpy().argmax(1) + 1
    np.testing.assert_array_equal(mask.sum(1), k)
    # the expected-k cost is a loss of its own, off by default
    assert model.loss_weights["interest_count"] == 0.0
    model.set_loss_weights({"interest_count": 1.0, "retrieval": 0.0})
    model.compute_loss(batch, training=True)
    assert 0.25 <= float(model._trackers["interest_count_loss"].result()) <= 1.0


def test_all_interests_loss_scores_every_slot():
    model = build_model("adaptive_interests_pcl", TOY, ART, {"output_dim": 6, "max_interests": 4, "temperature": 0.2,
                                                             "logq_correction": False})
    feats, batch = _batch()
    selection = model.get_layer("query_tower").get_layer("interest_selection")
    w, _ = selection.logits.get_weights()
    selection.logits.set_weights([w * 0, np.array([10.0, 0, 0, 0], np.float32)])     # serving k = 1 for everyone
    assert model.loss_weights["all_interests"] == 0.0
    model.set_loss_weights({"all_interests": 1.0, "retrieval": 0.0})
    got = float(model.compute_loss(batch, training=False))
    every = _numpy_loss(model, feats, readout="max", temperature=0.2, logq=False, every_slot=True)
    selected = _numpy_loss(model, feats, readout="max", temperature=0.2, logq=False)
    assert got == pytest.approx(every, rel=1e-4) and abs(every - selected) > 1e-3


def test_expected_selection_loss_is_the_probability_weighted_prefix_losses():
    model = build_model("adaptive_interests_pcl", TOY, ART, {
        "output_dim": 6, "max_interests": 3, "temperature": 0.2, "logq_correction": False,
        "selection_training": "expected"})
    feats, batch = _batch()
    selection = model.get_layer("query_tower").get_layer("interest_selection")
    w, _ = selection.logits.get_weights()
    bias = np.array([0.3, -0.2, 0.5], np.float32)
    selection.logits.set_weights([w * 0, bias])                  # the same p(k) for every row
    got = float(model.compute_loss(batch, training=True))
    out = model.query_model.predict({k: feats[k] for k in model.query_inputs}, verbose=0)
    v = model.item_model.predict({"item_id": ITEMS}, verbose=0)
    dots = np.einsum("bkd,nd->bkn", out["interests"], v)
    off = ~np.eye(8, dtype=bool)
    per_k = []
    for k in (1, 2, 3):
        logits = dots[:, :k].max(1) / 0.2
        logits = np.where((ITEMS[:, None] == ITEMS[None]) & off, -1e9, logits)
        m = logits.max(1, keepdims=True)
        per_k.append(-np.diag(logits - m - np.log(np.exp(logits - m).sum(1, keepdims=True))))
    p = np.exp(bias) / np.exp(bias).sum()
    want = (np.stack(per_k, 1) @ p)[CLICK > 0].mean()
    assert got == pytest.approx(float(want), rel=1e-4)
    # the selection's logits get the gradient of the expectation (no sampling: the same value twice)
    with tf.GradientTape() as tape:
        loss = model.compute_loss(batch, training=True)
    grad = tape.gradient(loss, selection.logits.bias).numpy()
    l_k = np.stack(per_k, 1)[CLICK > 0].mean(0)
    np.testing.assert_allclose(grad, p * (l_k - p @ l_k), rtol=1e-3, atol=1e-6)   # d E / dz = p (L - E)


def test_no_history_and_unknown_ids_give_finite_defined_results():
    model = build_model("adaptive_interests_pcl", TOY, ART, {"output_dim": 6, "max_interests": 3})
    feats, _ = _batch(hist_len=[0, 0, 1, 4, 4, 2, 1, 3])
    feats["hist_item"][3] = [999, 998, 1, 2]               # ids outside the vocabulary: the OOV row
    out = model.query_model.predict({k: feats[k] for k in model.query_inputs}, verbose=0)
    assert np.isfinite(out["interests"]).all() and np.isfinite(out["mask"]).all()
    np.testing.assert_array_equal(out["interests"][:2], 0.0)     # no history: zero interests, every score 0
    assert np.abs(out["interests"][3]).max() > 0
    scores = model.predict({k: feats[k] for k in model.input_names}, verbose=0)["click"]
    assert np.isfinite(scores).all() and scores[0] == pytest.approx(0.5)


@pytest.mark.parametrize("params,message", [
    ({"max_interests": 0}, "adaptive_interests_pcl.max_interests: must be >= 1, got 0"),
    ({"prototypes": 21}, "adaptive_interests_pcl.prototypes: 21 prototypes for 20 items of 'item_id'"),
    ({"extractor": "lstm"}, "adaptive_interests_pcl.extractor: one of self_attentive, capsule"),
    ({"activeness_features": ["user_id"]}, "'user_id' is a id feature; activeness features are dense"),
    ({"activeness_features": ["hist"]}, "'hist' is not a non-sequence user feature of toy.yaml"),
])
def test_bad_configs_fail_with_one_clear_line(params, message):
    with pytest.raises(ValueError) as err:
        build_model("adaptive_interests_pcl", TOY, ART, params)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_a_hashed_item_table_is_refused_not_skipped():
    # mixed negatives, k-means and retrieval all enumerate the corpus: without a vocabulary there is none
    hashed = parse_spec({**TOY_RAW, "features": [{**f, "hash_buckets": 64} if f["name"] == "item_id" else f
                                                 for f in TOY_RAW["features"]]}, "hashed.yaml")
    art = Artifacts(vocabs={"user_id": list(range(10))}, stats={"activity": {}})
    with pytest.raises(ValueError, match="needs a vocabulary for 'item_id'.*hashed or empty"):
        build_model("adaptive_interests_pcl", hashed, art, {"mixed_negatives": 4})


def test_registry_holds_the_paper_model_and_its_baselines():
    for name in ("adaptive_interests_pcl", "mind", "comirec_sa", "comirec_dr", "youtube_dnn", "two_tower"):
        assert name in MODELS
    model = build_model("youtube_dnn", TOY, ART, {"query_features": ["hist"], "output_dim": 6})
    assert model.query_model.get_layer("query_tower_dense1").units == 128        # the paper's ReLU tower


def test_epoch_start_reclusters_kmeans_prototypes_and_reports_learned_ones():
    rng = np.random.default_rng(1)
    vectors = rng.standard_normal((20, 6)).astype(np.float32)
    km = build_model("adaptive_interests_pcl", TOY, ART, {"output_dim": 6, "prototypes": 3,
                                                          "prototype_update": "kmeans"})
    said = km.on_epoch_start(2, lambda: (np.arange(20), vectors))
    want, assign = kmeans(vectors, 3, seed=2)
    np.testing.assert_allclose(km.prototype_vectors.numpy(), want, rtol=1e-6)
    assert said == {"prototype_cluster_min": int(np.bincount(assign).min()),
                    "prototype_cluster_max": int(np.bincount(assign).max()), "prototypes_in_use": 3}
    learned = build_model("adaptive_interests_pcl", TOY, ART, {"output_dim": 6, "prototypes": 3})
    learned.prototype_vectors.assign(np.stack([vectors[0], vectors[0], -vectors[0]]))   # two identical ones
    said = learned.on_epoch_start(0, lambda: (np.arange(20), vectors))
    assert said["prototypes_in_use"] <= 2 and said["prototype_cluster_min"] == 0
    assert build_model("adaptive_interests_pcl", TOY, ART, {"output_dim": 6}).on_epoch_start(0, None) == {}


def test_kmeans_is_lloyds_fixed_point_and_seeded():
    rng = np.random.default_rng(0)
    centers = rng.standard_normal((4, 5)) * 5
    x = np.concatenate([c + rng.standard_normal((50, 5)) * 0.1 for c in centers])
    c, a = kmeans(x, 4, seed=1, spherical=False)
    assert sorted(np.bincount(a)) == [50, 50, 50, 50]
    for j in range(4):                                     # each centroid is the mean of its members
        np.testing.assert_allclose(c[j], x[a == j].mean(0), rtol=1e-5, atol=1e-5)
    _, a2 = kmeans(x, 4, seed=1, spherical=False)
    np.testing.assert_array_equal(a, a2)
    cs, _ = kmeans(x, 3, seed=0)
    np.testing.assert_allclose(np.linalg.norm(cs, axis=1), 1.0, rtol=1e-5)
    with pytest.raises(ValueError, match="k <= number of vectors"):
        kmeans(x[:2], 3)


# -- real data: ml-latest-small, 60 users ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ml60(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("data") / "ml60"
    build("ml-latest-small", out, progress=False, log=lambda *_: None, options={"max_users": 60})
    return out


def test_trains_on_real_data_with_kmeans_prototypes_and_evaluates(ml60, capsys):
    data = open_dataset(ml60)
    params = {"history": "history", "output_dim": 16, "max_interests": 3, "prototypes": 8,
              "activeness_features": ["user_activity", "user_spread", "user_recency"],
              "prototype_update": "kmeans"}
    model, history = fit_model("adaptive_interests_pcl", data, params, drop_remainder=True, epochs=2,
                               batch_size=128, verbose=0)
    logs = history.history
    assert logs["retrieval_loss"][-1] < logs["retrieval_loss"][0] and "prototype_loss" in logs
    # the epoch hook ran: the prototypes are the k-means centroids of the corpus as it was before epoch 2
    assert "epoch 2 start: prototype_cluster_min" in capsys.readouterr().out
    protos = model.prototype_vectors.numpy()
    np.testing.assert_allclose(np.linalg.norm(protos, axis=1), 1.0, rtol=1e-5)
    ids, vectors = corpus_vectors(model, data)
    assert vectors.shape == (len(ids), 16)
    report = evaluate_retrieval(model, data, split="test", ks=(20, 50))
    for who in ("model", "popularity"):
        assert 0 <= report[who]["filtered"]["recall@20"] <= report[who]["filtered"]["recall@50"] <= 1
    assert report["protocol"]["users"] > 0
    # the protocol says how many interests the users got: the serving masks' counts
    counts = report["protocol"]["interests"]["users_with_k"]
    assert sum(counts.values()) == report["protocol"]["users"] and set(counts) <= {"1", "2", "3"}


@pytest.mark.parametrize("override,words", [
    ("params.max_interests=0", "params: adaptive_interests_pcl.max_interests: must be >= 1, got 0"),
    ("params.prototypes=100000", "params: adaptive_interests_pcl.prototypes: 100000 prototypes for"),
])
def test_cli_bad_config_is_one_error_line(ml60, tmp_path, capsys, override, words):
    from training.cli import main

    exp = tmp_path / "x.yaml"
    exp.write_text((Path(__file__).parents[1] / "training" / "experiments" /
                    "adaptive_interests_pcl-ml-latest-small.yaml").read_text().replace(
        "dataset: ml-latest-small", f"dataset: {ml60}"))
    assert main(["train", str(exp), "--set", override, "--run-dir", str(tmp_path / "run"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {exp}: {words}") and "\n" not in err, err
    assert not (tmp_path / "run" / "model").exists()


def test_experiment_trains_mirrored_exports_and_serves_odd_users(ml60, tmp_path):
    """The paper model from its shipped YAML under a MirroredStrategy: metrics.json reports the interests, the run
    exports its parity-checked models (towers, exact top-K), and the served exact top-K answers users with no history and with an
    unknown item id in their history (REST, the TF Serving JSON API) as the in-memory model does."""
    import base64
    import json
    import urllib.request

    from tfrec_zoo.data.reader import parse_features
    from tfrec_zoo.retrieval import brute_force_topk_model, item_embeddings
    from tfrec_zoo.serving.server import ModelServer
    from training.cli import main
    from training.distribute import make_strategy
    from training.experiment import load_experiment
    from training.exporting import validation_records
    from training.runs import load_run
    from training.trainer import train

    yaml_path = Path(__file__).parents[1] / "training" / "experiments" / "adaptive_interests_pcl-ml-latest-small.yaml"
    exp = load_experiment(yaml_path, [f"dataset={ml60}", "epochs=1", "batch_size=256", "params.output_dim=16",
                                      "params.prototypes=8", "early_stopping=null", "evaluation.splits=[test]"])
    run = tmp_path / "run"
    train(exp, run, strategy=make_strategy("mirrored"), verbose=0)
    metrics = json.loads((run / "metrics.json").read_text())["test"]
    assert 0 <= metrics["overall"]["adaptive_interests_pcl (filtered)"]["recall@50"] <= 1
    assert sum(metrics["protocol"]["interests"]["users_with_k"].values()) == metrics["protocol"]["users"]
    # the ScaNN top-K of a multi-interest tower is checked in tests/test_multi_interest_retrieval.py
    assert main(["export", str(run), "--name", "mi", "--base-dir", str(tmp_path / "sm"), "--k", "20",
                 "--no-scann"]) == 0
    _, data, model = load_run(run, log=lambda *_: None)

    # odd users: no history at all; an item id no vocabulary knows in the history; an ordinary one
    records = []
    for i, rec in enumerate(validation_records(data, 3)):
        ex = tf.train.Example.FromString(rec)
        hist = ex.features.feature["hist_movie_id"].int64_list.value
        if i == 0:
            del hist[:]
            del ex.features.feature["hist_rating"].float_list.value[:]
        elif i == 1:
            hist[0] = 987654321
        records.append(ex.SerializeToString())
    feats = parse_features(data.spec, tf.constant(records), list(model.query_model.input_names))
    assert int(feats["history_len"][0]) == 0
    ids, vectors = item_embeddings(model, data.artifacts)
    expected = brute_force_topk_model(model.query_model, ids, vectors, 20)(feats)
    with ModelServer(str(tmp_path / "sm"), grpc_port=None, rest_port=0, host="127.0.0.1", poll_seconds=60) as srv:
        body = json.dumps({"signature_name": "serving_default", "instances": [
            {"examples": {"b64": base64.b64encode(r).decode()}} for r in records]}).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{srv.rest_port}/v1/models/mi_topk:predict", data=body,
                                     method="POST", headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=60) as r:
            served = json.loads(r.read())["predictions"]
    got_ids = np.array([p["ids"] for p in served])
    got_scores = np.array([p["scores"] for p in served])
    np.testing.assert_array_equal(got_ids, expected["ids"].numpy())
    np.testing.assert_allclose(got_scores, expected["scores"].numpy(), atol=1e-5)
    assert np.isfinite(got_scores).all()
    np.testing.assert_allclose(got_scores[0], 0.0, atol=1e-6)      # no history: zero interests, every cosine 0
