"""Top-K exports of a multi-interest query tower ({"interests": [B, K, d], "mask": [B, K]}): the ScaNN export merges
per-interest searches in the graph into the exact max-over-active-interests top-k (ScaNN at brute-force settings),
masked interests never contribute, an item found by two interests appears once, rows without items are padded
alike by both exports, and `export_retrieval_run` checks the dict-valued query tower in a fresh process.

The tower is synthetic: per user, a designed table of K interest vectors and a 0/1 mask (embedding lookups)."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from tfrec_zoo._tf import keras, tf
from tfrec_zoo.features import Artifacts, parse_spec
from tfrec_zoo.retrieval import (
    PAD_INT_ID, PAD_SCORE, BruteForceIndex, ScannIndex, brute_force_topk_model, merge_topk, scann_topk_model,
    search_interests,
)
from training.exporting import export_retrieval_run, fresh_process_outputs

N, D, K, TOP = 400, 8, 3, 10
ITEM_IDS = np.arange(N, dtype=np.int64) + 1000          # raw ids != positions: the exports map positions to ids
RNG = np.random.default_rng(0)
ITEMS = RNG.standard_normal((N, D)).astype(np.float32)
INTERESTS = RNG.standard_normal((6, K, D)).astype(np.float32)
MASK = np.array([[1, 0, 0],        # 0: one interest; the masked ones point at BAIT
                 [1, 1, 0],        # 1: two; the third points at BAIT
                 [1, 1, 1],        # 2: all three
                 [1, 1, 0],        # 3: two near-identical interests: the same items twice
                 [0, 0, 0],        # 4: no active interest: nothing to retrieve
                 [1, 1, 1]], np.float32)
BAIT = int(np.argmax(ITEMS @ ITEMS[7]))               # the item the masked interests point at, hard
INTERESTS[0, 1:] = 100 * ITEMS[7]
INTERESTS[1, 2] = 100 * ITEMS[7]
INTERESTS[3, 1] = INTERESTS[3, 0] + 0.01 * RNG.standard_normal(D).astype(np.float32)
USERS = np.arange(6, dtype=np.int64)

SPEC = parse_spec({
    "name": "mi", "keys": {"user": "user_id", "item": "item_id"},
    "features": [{"name": "user_id", "kind": "id", "embedding_dim": 4},
                 {"name": "item_id", "kind": "id", "embedding_dim": 4},
                 {"name": "click", "kind": "label"}]}, "mi.yaml")
ARTIFACTS = Artifacts(vocabs={"user_id": USERS.tolist(), "item_id": ITEM_IDS.tolist()})


def _tower():
    """user_id -> {"interests": the user's row of INTERESTS, "mask": its row of MASK}."""
    user = keras.Input((), dtype="int64", name="user_id")
    interests = keras.layers.Embedding(len(USERS), K * D, embeddings_initializer=keras.initializers.Constant(
        INTERESTS.reshape(len(USERS), -1)), name="interest_table")(user)
    mask = keras.layers.Embedding(len(USERS), K, embeddings_initializer=keras.initializers.Constant(MASK),
                                  name="mask_table")(user)
    return keras.Model(user, {"interests": keras.layers.Reshape((K, D))(interests), "mask": mask})


def _item_tower():
    item = keras.Input((), dtype="int64", name="item_id")
    pos = keras.layers.Lambda(lambda x: x - 1000)(item)
    return keras.Model(item, keras.layers.Embedding(N, D, embeddings_initializer=keras.initializers.Constant(ITEMS),
                                                    name="item_table")(pos))


def _exact(interests=INTERESTS, mask=MASK, k=TOP) -> tuple[np.ndarray, np.ndarray]:
    """numpy: each user's top-k item ids by max over active interests; padded like the exports."""
    per = np.einsum("bkd,nd->bkn", interests.astype(np.float64), ITEMS.astype(np.float64))
    best = np.where(mask[:, :, None] > 0, per, -np.inf).max(axis=1)
    pos = np.argsort(-best, axis=1, kind="stable")[:, :k]
    scores = np.take_along_axis(best, pos, 1)
    return np.where(np.isfinite(scores), ITEM_IDS[pos], PAD_INT_ID), np.where(np.isfinite(scores), scores, PAD_SCORE)


@pytest.fixture(scope="module")
def served():
    tower = _tower()
    # ScaNN at brute-force settings: no tree, every item re-ordered exactly
    scann = scann_topk_model(tower, ITEM_IDS, ITEMS, TOP, num_leaves=0, reorder=N)
    exact = brute_force_topk_model(tower, ITEM_IDS, ITEMS, TOP)
    feats = {"user_id": USERS}
    return {kind: {k: v.numpy() for k, v in m(feats).items()} for kind, m in (("scann", scann), ("exact", exact))}


def test_scann_export_is_the_exact_max_over_active_interests(served):
    want_ids, want_scores = _exact()
    for kind in ("scann", "exact"):
        got = served[kind]
        assert got["ids"].shape == (6, TOP) and got["ids"].dtype == np.int64
        np.testing.assert_array_equal(got["ids"], want_ids, err_msg=kind)
        np.testing.assert_allclose(got["scores"], want_scores, atol=1e-5, rtol=0, err_msg=kind)


def test_a_masked_interest_never_wins(served):
    all_on = _exact(mask=np.ones_like(MASK))[0]
    assert (all_on[[0, 1], 0] == ITEM_IDS[BAIT]).all()      # unmasked, the bait would be their best item
    assert ITEM_IDS[BAIT] not in _exact()[0][[0, 1]]         # ... and their active interests do not find it
    for kind in ("scann", "exact"):
        assert ITEM_IDS[BAIT] not in served[kind]["ids"][[0, 1]], kind


def test_an_item_two_interests_find_is_listed_once_with_its_best_score(served):
    per = INTERESTS[3, :2] @ ITEMS.T                                     # [2, N]
    both = np.intersect1d(np.argsort(-per[0])[:TOP], np.argsort(-per[1])[:TOP])
    assert len(both) >= TOP // 2                                         # the two searches overlap
    row = served["scann"]["ids"][3]
    assert len(set(row.tolist())) == TOP and set(ITEM_IDS[both]) <= set(row.tolist())
    np.testing.assert_allclose(served["scann"]["scores"][3], per.max(axis=0)[row - 1000], atol=1e-5)


def test_rows_without_items_are_padded_alike_by_both_exports(served):
    for kind in ("scann", "exact"):
        assert (served[kind]["ids"][4] == PAD_INT_ID).all() and (served[kind]["scores"][4] == PAD_SCORE).all()
        assert np.isfinite(served[kind]["scores"]).all()                 # JSON has no -inf


def test_a_scann_search_that_finds_fewer_than_k_items_pads_the_row():
    # 100 leaves of ~4 items, one searched: ScaNN answers interests with fewer than k items (NaN-padded, narrower
    # than k); the export's slots are then real items, each scored by one of the user's active interests, or padding
    index = ScannIndex(ITEMS, TOP, num_leaves=100, num_leaves_to_search=1, reorder=TOP, training_sample_size=N)
    out = {k: v.numpy() for k, v in scann_topk_model(_tower(), ITEM_IDS, ITEMS, TOP, index=index)(
        {"user_id": USERS}).items()}
    assert out["ids"].shape == (6, TOP) and np.isfinite(out["scores"]).all()
    pad = out["ids"] == PAD_INT_ID
    assert pad[0].any() and pad[4].all()                     # user 0 has one interest, user 4 none
    assert (out["scores"][pad] == PAD_SCORE).all()
    per = np.where(MASK[:, :, None] > 0, np.einsum("bkd,nd->bkn", INTERESTS, ITEMS), np.nan)      # [B, K, N]
    rows, cols = np.nonzero(~pad)
    dots = per[rows, :, out["ids"][rows, cols] - 1000]                                           # [found, K]
    # an approximate search may miss an item's best interest, never report a score no active interest gives
    assert np.all(np.nanmin(np.abs(dots - out["scores"][rows, cols, None]), axis=1) <= 1e-5)
    for r in range(6):                                       # distinct, best first
        assert len(set(out["ids"][r][~pad[r]].tolist())) == (~pad[r]).sum()
        assert np.all(np.diff(out["scores"][r]) <= 0)


def test_merge_topk_dedups_pads_and_breaks_ties_by_position():
    idx = tf.constant([[5, 3, 5, -1], [2, 2, -1, -1]], tf.int32)
    scores = tf.constant([[1.0, 2.0, 3.0, -np.inf], [0.5, 0.75, -np.inf, -np.inf]])
    got_idx, got_scores = merge_topk(idx, scores, 3)
    np.testing.assert_array_equal(got_idx.numpy(), [[5, 3, -1], [2, -1, -1]])
    np.testing.assert_array_equal(got_scores.numpy(), [[3.0, 2.0, -np.inf], [0.75, -np.inf, -np.inf]])
    # fewer candidates than k (a narrow ScaNN answer) still gives k columns; equal scores: lower position first
    got_idx, _ = merge_topk(tf.constant([[9, 4]]), tf.constant([[1.0, 1.0]]), 3)
    np.testing.assert_array_equal(got_idx.numpy(), [[4, 9, -1]])


def test_a_single_vector_tower_is_searched_as_before():
    user = keras.Input((), dtype="int64", name="user_id")
    tower = keras.Model(user, keras.layers.Embedding(len(USERS), D, embeddings_initializer=keras.initializers.Constant(
        INTERESTS[:, 0]))(user))
    index = ScannIndex(ITEMS, TOP, num_leaves=20, num_leaves_to_search=3, reorder=30)   # approximate on purpose
    out = scann_topk_model(tower, ITEM_IDS, ITEMS, TOP, index=index)({"user_id": USERS})
    pos, scores = index.search(INTERESTS[:, 0], TOP)
    np.testing.assert_array_equal(out["ids"].numpy(), ITEM_IDS[pos])
    np.testing.assert_allclose(out["scores"].numpy(), scores, atol=1e-6)


def test_a_built_index_is_exported_with_other_search_settings():
    user = keras.Input((), dtype="int64", name="user_id")
    tower = keras.Model(user, keras.layers.Embedding(len(USERS), D, embeddings_initializer=keras.initializers.Constant(
        INTERESTS[:, 0]))(user))
    index = ScannIndex(ITEMS, TOP, num_leaves=20, num_leaves_to_search=1, reorder=TOP)
    wide = scann_topk_model(tower, ITEM_IDS, ITEMS, TOP, index=index, num_leaves_to_search=20, reorder=N)
    assert (wide.params["num_leaves_to_search"], wide.params["reorder"]) == (20, N)
    one_vector = np.ones_like(MASK[:, :1])
    np.testing.assert_array_equal(wide({"user_id": USERS})["ids"].numpy(),
                                  _exact(INTERESTS[:, :1], one_vector)[0])          # every leaf, exact re-order
    with pytest.raises(TypeError, match="num_leaves build an index"):
        scann_topk_model(tower, ITEM_IDS, ITEMS, TOP, index=index, num_leaves=5)
    with pytest.raises(ValueError, match="num_leaves_to_search=21: the index's tree has 20 leaves"):
        scann_topk_model(tower, ITEM_IDS, ITEMS, TOP, index=index, num_leaves_to_search=21)


def test_offline_search_queries_only_the_active_interests():
    class Counting(BruteForceIndex):
        searched = 0

        def search(self, queries, k):
            Counting.searched += len(queries)
            return super().search(queries, k)

    pos, scores = search_interests(Counting(ITEMS), INTERESTS, MASK > 0, TOP)
    assert Counting.searched == int(MASK.sum())
    want_ids, want_scores = _exact()
    np.testing.assert_array_equal(np.where(pos >= 0, ITEM_IDS[pos], PAD_INT_ID), want_ids)
    np.testing.assert_allclose(scores[[0, 1, 2, 3, 5]], want_scores[[0, 1, 2, 3, 5]], atol=1e-4)
    assert np.isneginf(scores[4]).all()                 # evaluation pads with -inf (never served as JSON)


def _record(user: int) -> bytes:
    return tf.train.Example(features=tf.train.Features(feature={
        "user_id": tf.train.Feature(int64_list=tf.train.Int64List(value=[user])),
        "item_id": tf.train.Feature(int64_list=tf.train.Int64List(value=[1000 + user])),
    })).SerializeToString()


def _in_this_process(version_dir, records, imports=()):
    fn = tf.saved_model.load(str(version_dir)).signatures["serving_default"]
    return {k: v.numpy() for k, v in fn(examples=tf.constant(records)).items()}


@pytest.mark.parametrize("parity", ["in-process", pytest.param("fresh processes", marks=pytest.mark.slow)])
def test_export_retrieval_run_checks_a_multi_interest_tower(parity, tmp_path, monkeypatch):
    """The four exports' parity checks pass for a dict-valued query tower, and a fresh process serves the exact
    answer from NAME_topk_scann. Each fresh process imports TensorFlow (~8 s here): by default the exporter's four
    parity checks load in this process (the same comparisons, without the isolation; `make test-slow` runs them
    in fresh processes) and one fresh process loads the ScaNN top-K."""
    import training.exporting as exporting

    if parity == "in-process":
        monkeypatch.setattr(exporting, "fresh_process_outputs", _in_this_process)
    model = SimpleNamespace(query_model=_tower(), item_model=_item_tower(), item_key="item_id",
                            item_inputs=["item_id"], spec=SPEC)
    data = SimpleNamespace(spec=SPEC, artifacts=ARTIFACTS)
    records = [_record(int(u)) for u in USERS]
    logs = []
    paths = export_retrieval_run(model, data, "mi", tmp_path, records, warmup=2, k=TOP, log=logs.append)
    assert sorted(paths) == ["item", "query", "topk", "topk_scann"]
    assert "mi_query 0.0e+00" in logs[-1] and "mi_topk_scann" in logs[-1]
    query = _in_this_process(paths["query"], records)
    assert sorted(query) == ["interests", "mask"]
    np.testing.assert_allclose(query["interests"], INTERESTS, atol=1e-6)
    np.testing.assert_array_equal(query["mask"], MASK)
    want_ids, want_scores = _exact()
    # the default scann_params search every leaf of this small corpus and re-order 300 of 400: exact here
    # (recall on 1M items: benchmarks/serving_retrieval.py)
    topk = fresh_process_outputs(paths["topk_scann"], records, imports=("scann",))
    np.testing.assert_array_equal(topk["ids"], want_ids)
    np.testing.assert_allclose(topk["scores"], want_scores, atol=1e-5, rtol=0)
    _served_by_the_model_server(tmp_path, records, want_ids)


def _served_by_the_model_server(base, records, want_ids):
    """`tfrec-zoo serve`'s server answers the dict-valued tower over REST (rows of [K, d] and [K]) and the top-K
    over gRPC and REST in strict JSON (the padded row included). The ScaNN model loads here because this process
    imported scann; a `tfrec-zoo serve` process does not (as stock TF Serving, it lacks the ops)."""
    import base64
    import json
    import urllib.request

    import grpc
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    from tfrec_zoo.serving.server import ModelServer

    def strict(name):
        raise ValueError(f"not JSON: {name}")

    b64 = [{"b64": base64.b64encode(r).decode()} for r in records]
    with ModelServer(str(base), grpc_port=0, rest_port=0, host="127.0.0.1", poll_seconds=60) as server:
        def rest(model):
            req = urllib.request.Request(f"http://127.0.0.1:{server.rest_port}/v1/models/{model}:predict",
                                         data=json.dumps({"instances": b64}).encode(), method="POST")
            with urllib.request.urlopen(req, timeout=30) as r:
                return json.loads(r.read(), parse_constant=strict)["predictions"]

        rows = rest("mi_query")
        np.testing.assert_allclose([r["interests"] for r in rows], INTERESTS, atol=1e-6)
        assert [r["mask"] for r in rows] == MASK.tolist()
        assert [r["ids"] for r in rest("mi_topk")] == want_ids.tolist()
        stub = prediction_service_pb2_grpc.PredictionServiceStub(grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}"))
        req = predict_pb2.PredictRequest()
        req.model_spec.name = "mi_topk_scann"
        req.inputs["examples"].CopyFrom(tf.make_tensor_proto(records, dtype=tf.string, shape=[len(records)]))
        np.testing.assert_array_equal(tf.make_ndarray(stub.Predict(req, timeout=30).outputs["ids"]), want_ids)
