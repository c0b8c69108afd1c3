"""Lifelong query-item sequences: side features (spec, artifacts, lookups), the lifelong builder's protocol, the
GSU/ESU layers, SEMINAR + baselines, the PSU objectives, sampled evaluation, pretrain -> fine-tune, save/reload."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from tfrec_zoo._tf import keras, tf
from tfrec_zoo.data import open_dataset
from tfrec_zoo.data.builders import build
from tfrec_zoo.data.builders.lifelong import lifelong_rows
from tfrec_zoo.features import FeatureSpecError, fit_artifacts
from tfrec_zoo.features.artifacts import Artifacts
from tfrec_zoo.features.spec import parse_spec
from tfrec_zoo.inputs import FeatureEmbeddings
from tfrec_zoo.layers.lifelong import GSUScores, ModalityTables, MultiHeadTargetAttention, masked_top_k
from tfrec_zoo.models import build_model
from tfrec_zoo.models.seminar_psu import info_nce

ROOT = Path(__file__).resolve().parents[1]

SIDE_SPEC = {
    "name": "toy", "keys": {"user": "u", "item": "item"},
    "features": [
        {"name": "u", "kind": "id"},
        {"name": "item", "kind": "id", "embedding_dim": 4, "vocab": {"fit_on": "catalogue"}},
        {"name": "vec", "kind": "vector", "dim": 2, "side_of": "item"},
        {"name": "attrs", "kind": "multi_hot", "max_len": 3, "embedding_dim": 4, "side_of": "item"},
        {"name": "y", "kind": "label"},
    ]}


def _catalogue():
    return {"item": pd.DataFrame({"item": [10, 20, 30], "vec": [[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]],
                                  "attrs": [[7], [7, 8], []]})}


# -- spec / artifacts -----------------------------------------------------------------------------------------------
def test_side_features_are_not_example_columns():
    spec = parse_spec(SIDE_SPEC)
    assert [f.name for f in spec.inputs] == ["u", "item"]
    assert [f.name for f in spec.side_features("item")] == ["vec", "attrs"]
    assert "vec" not in [f.name for f in spec.row_features]


@pytest.mark.parametrize("change, where", [
    ({"name": "vec", "kind": "vector", "dim": 2, "side_of": "nope"}, "features[2].side_of"),
    ({"name": "vec", "kind": "vector", "dim": 2, "side_of": "u2"}, "features[2].side_of"),
])
def test_side_of_must_name_an_id(change, where):
    raw = yaml.safe_load(yaml.safe_dump(SIDE_SPEC))
    raw["features"][2] = change
    with pytest.raises(FeatureSpecError) as e:
        parse_spec(raw)
    assert where in str(e.value)


def test_fit_on_catalogue_needs_side_features():
    raw = yaml.safe_load(yaml.safe_dump(SIDE_SPEC))
    raw["features"][0]["vocab"] = {"fit_on": "catalogue"}
    with pytest.raises(FeatureSpecError, match="fit_on"):
        parse_spec(raw)


def test_side_tables_align_with_the_vocabulary(tmp_path):
    spec = parse_spec(SIDE_SPEC)
    train = pd.DataFrame({"u": [1, 1, 2], "item": [20, 20, 10], "y": [1.0, 0.0, 1.0]})
    art = fit_artifacts(spec, train, _catalogue())
    # catalogue ids all in the vocabulary, ordered by train count: 20 (2), 10 (1), 30 (0); OOV row 0 first
    assert art.vocabs["item"] == [20, 10, 30]
    np.testing.assert_array_equal(art.side["item/vec"], [[0, 0], [3, 4], [1, 2], [5, 6]])
    assert art.vocabs["attrs"] == [7, 8]                      # from the catalogue: 7 twice, 8 once
    np.testing.assert_array_equal(art.side["item/attrs"], [[0, 0, 0], [1, 2, 0], [1, 0, 0], [0, 0, 0]])
    np.testing.assert_array_equal(art.side["item/attrs_len"], [0, 2, 1, 0])
    art.save(tmp_path)
    back = Artifacts.load(tmp_path, spec)
    for k, v in art.side.items():
        np.testing.assert_array_equal(back.side[k], v)
    # looked up in the graph by raw id: 30 -> its vector, an unknown id -> the OOV row (zeros)
    emb = FeatureEmbeddings(spec, art)
    rows = emb.lookup("item")(tf.constant([30, 99], tf.int64))
    np.testing.assert_array_equal(emb.side("vec", rows).numpy(), [[5, 6], [0, 0]])


def test_missing_catalogue_is_named():
    spec = parse_spec(SIDE_SPEC)
    with pytest.raises(FeatureSpecError, match="catalogue"):
        fit_artifacts(spec, pd.DataFrame({"u": [1], "item": [10], "y": [1.0]}))


# -- the lifelong protocol ------------------------------------------------------------------------------------------
def test_lifelong_rows_protocol():
    rng = np.random.default_rng(0)
    users, items, queries = [], [], []
    for u in range(30):                       # 30 users so the item universe leaves 99 unseen items per user
        seq = rng.choice(np.arange(1, 201), size=8, replace=False)
        users += [u] * 8
        items += list(seq)
        queries += [f"q{u}{t}" if t % 2 else "" for t in range(8)]
    log = pd.DataFrame({"user_id": users, "item": items, "query": queries})
    out = lifelong_rows(log, item="item", hist_item="h_item", hist_query="h_query", eval_neg="neg", max_len=4,
                        train_positions=3, seed=1)
    test, valid, train = out["test"], out["valid"], out["train"]
    assert len(test) == len(valid) == 30 and len(train) == 30 * 3 * 2         # last 3 train positions, + negatives
    for u in range(3):
        seq = log[log.user_id == u]["item"].tolist()
        t_row = test[test.user_id == u].iloc[0]
        assert t_row["item"] == seq[-1] and t_row["h_item"] == seq[3:7]        # the most recent 4 before it
        assert len(set(t_row["neg"])) == 99 and not set(t_row["neg"]) & set(seq)
        assert valid[valid.user_id == u].iloc[0]["item"] == seq[-2]
        tr = train[train.user_id == u]
        pos, neg = tr[tr.click == 1], tr[tr.click == 0]
        assert pos["item"].tolist() == seq[3:6]                               # positions 3, 4, 5 (n_train = 6)
        assert not set(neg["item"]) & set(seq)
        # a negative's query comes from the user's earlier non-empty queries
        for _, r in neg.iterrows():
            assert r["query"] in [q for q in r["h_query"] if q]
        assert (neg["h_item"].tolist() == pos["h_item"].tolist())


# -- layers ---------------------------------------------------------------------------------------------------------
def test_masked_top_k_never_prefers_padding():
    scores = tf.constant([[5.0, 9.0, 1.0, 7.0]])
    mask = tf.constant([[True, False, True, False]])
    idx, valid = masked_top_k(scores, mask, 3)
    assert idx.numpy()[0, :2].tolist() == [0, 2] and valid.numpy().tolist() == [[True, True, False]]


def test_multi_head_attention_exact_paths_agree_and_ignore_padding():
    tf.random.set_seed(0)
    layer = MultiHeadTargetAttention(heads=2, top_k=0)
    t, steps = tf.random.normal([3, 8]), tf.random.normal([3, 5, 8])
    mask = tf.sequence_mask([5, 3, 0], 5)
    full = layer([t, steps, mask])
    topk = MultiHeadTargetAttention(heads=2, top_k=5)
    topk([t, steps, mask])
    topk.set_weights(layer.get_weights())
    np.testing.assert_allclose(topk([t, steps, mask]).numpy(), full.numpy(), atol=1e-5)
    noisy = tf.where(mask[..., None], steps, 100.0)                          # padded steps changed
    np.testing.assert_allclose(layer([t, noisy, mask]).numpy(), full.numpy(), atol=1e-5)
    # an empty history attends to nothing: the output is W_O's bias (zeros at init)
    np.testing.assert_allclose(full.numpy()[2], np.zeros(8), atol=1e-6)
    # per-head selection = top-K of the exact head scores among valid steps
    idx, valid = topk.selected([t, steps, mask])
    s = topk.head_scores(t, steps).numpy()
    for h in range(2):
        assert set(idx.numpy()[1, h][valid.numpy()[1, h]]) <= {0, 1, 2}
        best = np.argsort(-s[0, h])[:5]
        assert idx.numpy()[0, h].tolist() == best.tolist()


def test_gsu_scores_eta_and_qin():
    t = tf.constant([[1.0, -2.0, 0.5]])
    steps = tf.constant([[[1.0, -2.0, 0.5], [-1.0, 2.0, -0.5]]])
    mask = tf.constant([[True, True]])
    eta = GSUScores("eta", bits=16)
    np.testing.assert_array_equal(eta([t, steps, mask]).numpy(), [[16.0, 0.0]])
    qin = GSUScores("qin", first_k=1)
    q_t, q_s = tf.constant([[1.0, 0.0]]), tf.constant([[[0.0, 1.0], [1.0, 0.0], [0.9, 0.0]]])
    i_t, i_s = tf.constant([[0.0, 1.0]]), tf.constant([[[0.0, 3.0], [0.0, 1.0], [0.0, 2.0]]])
    s = qin([q_t, q_s, i_t, i_s, tf.constant([[True, True, True]])]).numpy()
    assert s[0, 1] == 1.0 and s[0, 0] < -1e8 and s[0, 2] < -1e8               # stage 1 kept step 1 only


def test_modality_tables_gate_exact():
    emb = keras.layers.Embedding(3, 2)
    emb(tf.zeros([1], tf.int32))
    emb.set_weights([np.array([[0, 0], [1, 2], [3, 4]], np.float32)])
    side = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0]], np.float32)
    layer = ModalityTables([("id", None), ("dense", "txt")], dim=2, id_embedding=emb, frozen={"txt": side},
                           n_rows=3)
    out = layer([tf.constant([[1, 2]]), tf.constant([2])])
    kernel, bias = layer.proj["txt"]
    text = side @ kernel.numpy() + bias.numpy()
    ids = emb.get_weights()[0]
    np.testing.assert_allclose(out[0].numpy()[0], 0.5 * ids[[1, 2]] + 0.5 * text[[1, 2]], atol=1e-6)  # gate = 1/2
    np.testing.assert_allclose(out[2].numpy()[0], ids[[1, 2]])              # per-modality of the first rows


def test_info_nce_hand_value():
    a = tf.constant([[1.0, 0.0], [0.0, 1.0]])
    loss = float(info_nce(a, a, temperature=1.0))
    assert loss == pytest.approx(-np.log(np.e / (np.e + 1.0)), abs=1e-6)
    # a pair marked "same" is no negative: each row's softmax is over itself only -> 0
    assert float(info_nce(a, a, 1.0, same=tf.ones([2, 2], tf.bool))) == pytest.approx(0.0, abs=1e-6)


# -- models on real data --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ml40(tmp_path_factory):
    root = tmp_path_factory.mktemp("lifelong")
    build("ml-latest-small-lifelong", root / "ml40", progress=False, log=lambda *_: None,
          options={"max_users": 40, "train_positions": 5})
    return open_dataset(root / "ml40")


def test_built_dataset_has_side_tables_and_protocol(ml40):
    assert set(ml40.artifacts.side) == {"movie_id/title", "movie_id/genres", "movie_id/genres_len",
                                        "query/query_text"}
    rows = ml40.artifacts.vocab_size(ml40.spec, "movie_id")
    assert ml40.artifacts.side["movie_id/title"].shape == (rows, 384)
    feats = next(iter(ml40.dataset("test", 8, features=["eval_neg_movie_id", "eval_negatives_len", "movie_id"])))[0]
    assert (feats["eval_negatives_len"].numpy() == 99).all()


@pytest.mark.parametrize("name", ["seminar", "twin", "sim", "eta", "qin", "lifelong_din"])
def test_every_lifelong_model_trains_and_ranks(ml40, name):
    from training.ranking import evaluate_sampled

    tf.keras.utils.set_random_seed(0)
    model = build_model(name, ml40.spec, ml40.artifacts, {"dim": 16, "heads": 2, "top_k": 8})
    assert set(model.input_names) == {"movie_id", "query", "hist_movie_id", "hist_query", "history_len"}
    model.compile(keras.optimizers.Adam(1e-3))
    h = model.fit(ml40.dataset("train", 64, features=list(model.input_names)), epochs=1, verbose=0)
    assert np.isfinite(h.history["loss"][0])
    r = evaluate_sampled(model, ml40, "test", max_rows=16)
    for mode in ("recommendation", "search"):
        assert r[mode]["rows"] == 16 and 0 <= r[mode]["hit@10"] <= r[mode]["hit@50"] <= 1
        assert r[mode]["scores"] == "logit"


def test_recommendation_mode_empties_queries(ml40):
    from training.ranking import evaluate_sampled

    tf.keras.utils.set_random_seed(0)
    blind = build_model("twin", ml40.spec, ml40.artifacts, {"dim": 8, "heads": 1, "top_k": 4, "use_query": False})
    r = evaluate_sampled(blind, ml40, "test", max_rows=8)
    # a model that ignores queries scores both modes identically ...
    assert r["recommendation"]["mrr"] == pytest.approx(r["search"]["mrr"])
    assert r["recommendation"]["auc"] == pytest.approx(r["search"]["auc"])
    # ... one that reads them does not: the modes feed it different queries
    reader = build_model("seminar", ml40.spec, ml40.artifacts, {"dim": 8, "heads": 1, "top_k": 4})
    r = evaluate_sampled(reader, ml40, "test", max_rows=8)
    assert r["recommendation"]["auc"] != pytest.approx(r["search"]["auc"], abs=1e-9)


def test_pretrain_then_finetune_from_one_experiment(ml40, tmp_path):
    from training.experiment import parse_experiment
    from training.trainer import load_run, train

    raw = yaml.safe_load((ROOT / "training/experiments/seminar-ml-latest-small-lifelong.yaml").read_text())
    raw.update(dataset=str(ml40.path), epochs=1, batch_size=128,
               params={"dim": 16, "heads": 2, "top_k": 8, "aux_steps": 64, "freeze_input_projection": True},
               evaluation={"splits": ["test"], "max_rows": 16})
    # the id embedding lives inside the item_modalities layer: freezing it must leave G trainable; the title
    # projection stays as pretrained (freeze_input_projection, a fine-tuning param the PSU does not inherit)
    raw["pretrain"]["freeze"] = ["^emb_movie_id$"]
    exp = parse_experiment(raw, "test")
    run = tmp_path / "run"
    result = train(exp, run, verbose=0, log=lambda *_: None)
    report = json.loads((run / "restore.json").read_text())
    restored = report["restored"]
    assert "emb_movie_id/embeddings:0" in restored and "esu/wq:0" in restored
    assert any(n.startswith("item_modalities/proj_title") for n in restored)
    assert report["frozen"] == ["emb_movie_id"]
    _, _, psu = load_run(run / "pretrain", log=lambda *_: None)
    pre, fine = psu.get_layer("item_modalities"), result.model.get_layer("item_modalities")
    np.testing.assert_array_equal(fine.id_embedding.embeddings.numpy(), pre.id_embedding.embeddings.numpy())
    np.testing.assert_array_equal(fine.proj["title"][0].numpy(), pre.proj["title"][0].numpy())
    assert any(w is pre.proj["title"][0] for w in psu.trainable_weights)
    assert not np.allclose(fine.gproj["title"].numpy(), pre.gproj["title"].numpy())
    hist = (run / "pretrain" / "history.csv").read_text().splitlines()[0]
    assert "align_loss" in hist and "relevance_loss" in hist and "click_loss" in hist
    assert set(result.metrics["test"]["overall"]) == {"click (recommendation)", "click (search)"}
    # the run reloads (rebuilt from its config + weights) with the same predictions
    _, data, model = load_run(run, log=lambda *_: None)
    x = next(iter(data.dataset("test", 8, features=list(model.input_names))))[0]
    np.testing.assert_allclose(model(x)["click"].numpy(), result.model(x)["click"].numpy(), atol=1e-6)


# -- approximate GSU (PQ) and the export ----------------------------------------------------------------------------
def test_pq_gsu_with_exact_codebooks_equals_the_exact_model(ml40):
    """Codebooks holding every item / query vector as its own codeword (C = 1): the ADC scores are the exact head
    scores, so the PQ model must reproduce the exact model."""
    from tfrec_zoo.models.seminar import fused_tables

    params = {"dim": 8, "heads": 2, "top_k": 4}
    tf.keras.utils.set_random_seed(1)
    exact = build_model("seminar", ml40.spec, ml40.artifacts, params)
    items, queries = fused_tables(exact, "item_modalities"), fused_tables(exact, "query_modalities")
    k = max(len(items), len(queries))
    pq = build_model("seminar", ml40.spec, ml40.artifacts, {**params, "pq_subspaces": 1, "pq_codewords": k})
    source = {v.name: v for v in exact.variables}
    for v in pq.variables:
        if v.name in source:
            v.assign(source[v.name])
    books = np.zeros((2, 1, k, 8), np.float32)
    books[0, 0, :len(items)], books[1, 0, :len(queries)] = items, queries
    pq.get_layer("esu").set_pq(books, np.arange(len(items))[:, None], np.arange(len(queries))[:, None])
    x = next(iter(ml40.dataset("test", 16, features=list(exact.input_names))))[0]
    np.testing.assert_allclose(pq(x)["click"].numpy(), exact(x)["click"].numpy(), atol=1e-5)


@pytest.fixture(scope="module")
def seminar_run(ml40, tmp_path_factory):
    from training.experiment import parse_experiment
    from training.trainer import train

    raw = yaml.safe_load((ROOT / "training/experiments/seminar-ml-latest-small-lifelong.yaml").read_text())
    raw.update(dataset=str(ml40.path), epochs=1, batch_size=128, pretrain=None,
               params={"dim": 16, "heads": 2, "top_k": 8}, evaluation={"splits": ["test"], "max_rows": 8})
    run = tmp_path_factory.mktemp("seminar") / "run"
    train(parse_experiment(raw, "test"), run, verbose=0, log=lambda *_: None)
    return run


def test_pq_gsu_recall_against_exact(seminar_run):
    from tfrec_zoo.models.seminar import with_pq_gsu
    from training.trainer import load_run

    exp, data, model = load_run(seminar_run, log=lambda *_: None)
    pq_model, tables = with_pq_gsu(model, data.artifacts, subspaces=8)
    assert tables["item_codes"].shape == (data.artifacts.vocab_size(data.spec, "movie_id"), 8)
    x = next(iter(data.dataset("test", 32, features=list(model.input_names))))[0]
    picks = []
    for m in (model, pq_model):
        esu = m.get_layer("esu")
        picks.append([a.numpy() for a in esu.selected(keras.Model(m.inputs, esu.input)(x))])
    (ie, ve), (ip, vp) = picks
    long = np.flatnonzero(x["history_len"].numpy() > 8)
    assert len(long) > 5
    recall = np.mean([len(set(ie[b, h][ve[b, h]]) & set(ip[b, h][vp[b, h]])) / 8 for b in long for h in range(2)])
    assert recall > 0.7          # measured 0.93-0.99 on the full dataset's trained model (benchmarks/seminar_gsu.py)


def test_export_serves_the_pq_gsu_with_parity(seminar_run, tmp_path):
    from training.exporting import export_run

    version = export_run(seminar_run, "sem", tmp_path / "sm", warmup=4, parity_rows=32,
                         options={"pq_subspaces": 8}, log=lambda *_: None)
    def saved(path):  # the checkpoint keys of an export (object paths end in the weight attributes' names)
        return " ".join(n for n, _ in tf.train.list_variables(str(Path(path) / "variables" / "variables")))

    assert all(w in saved(version) for w in ("pq_codebooks", "pq_item_codes", "pq_query_codes"))
    assert set(tf.saved_model.load(str(version)).signatures) == {"serving_default", "rank", "predict_raw"}
    exact = export_run(seminar_run, "sem_exact", tmp_path / "sm", warmup=0, parity_rows=8,
                       options={"gsu": "exact"}, log=lambda *_: None)
    assert "pq_codebooks" not in saved(exact)


def _rank_and_merged(sigs, context: bytes, candidates: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
    """(`rank` scores of the candidates for the context, serving_default's on context + candidate bytes)."""
    ranked = sigs["rank"](context=tf.constant(context), candidates=tf.constant(candidates))["click"].numpy()
    direct = sigs["serving_default"](examples=tf.constant([context + c for c in candidates]))["click"].numpy()
    return ranked, direct


@pytest.mark.parametrize("gsu", ["exact", "pq"])
def test_rank_feeds_the_history_once_and_matches_the_merged_examples(seminar_run, tmp_path, gsu):
    """The rank signature gives a seminar model its context once ([1, L] history): the ESU broadcasts it against
    the B candidates (shared K/V projections, broadcast PQ codes) and scores equal serving_default's on the
    merged examples; a candidate that brings its own history still gets it."""
    from training.exporting import export_run, validation_records
    from training.trainer import load_run

    _, data, model = load_run(seminar_run, log=lambda *_: None)
    assert model.broadcasts_context
    version = export_run(seminar_run, f"sem_{gsu}", tmp_path / "sm", warmup=0, parity_rows=8,
                         options={"gsu": gsu, "pq_subspaces": 8}, log=lambda *_: None)
    sigs = tf.saved_model.load(str(version)).signatures
    records = [tf.train.Example.FromString(r) for r in validation_records(data, 40)]
    context = max(records, key=lambda e: len(e.features.feature["hist_movie_id"].int64_list.value))
    assert len(context.features.feature["hist_movie_id"].int64_list.value) > 8     # longer than top_k
    item = data.spec.keys["item"]
    candidates = []
    for i, ex in enumerate(records[:7]):
        cand = tf.train.Example()
        cand.features.feature[item].CopyFrom(ex.features.feature[item])
        if i == 3:                                   # this one brings its own history (and length)
            for key in ("hist_movie_id", "hist_query", "history_len"):
                if key in ex.features.feature:
                    cand.features.feature[key].CopyFrom(ex.features.feature[key])
        candidates.append(cand.SerializeToString())
    ctx = context.SerializeToString()
    ranked, direct = _rank_and_merged(sigs, ctx, candidates)
    assert ranked.shape == (7,) and np.ptp(ranked) > 0
    np.testing.assert_allclose(ranked, direct, atol=1e-5)
    # candidates that only name items: the [1, L] path (no candidate has a history key)
    plain = [c for i, c in enumerate(candidates) if i != 3]
    ranked, direct = _rank_and_merged(sigs, ctx, plain)
    np.testing.assert_allclose(ranked, direct, atol=1e-5)
    one = sigs["rank"](context=tf.constant(ctx), candidates=tf.constant(plain[:1]))["click"].numpy()
    np.testing.assert_allclose(one, direct[:1], atol=1e-5)


@pytest.mark.parametrize("name, params", [("twin", {}), ("seminar", {"use_query": False}), ("sim", {}),
                                          ("lifelong_din", {})])
def test_rank_matches_merged_examples_for_every_context_path(ml40, tmp_path, name, params):
    """Shared-context models (twin, a query-less seminar) and per-row ones (sim, lifelong_din), with cached tables:
    `rank` scores equal serving_default's on the merged examples."""
    from tfrec_zoo.models.seminar import with_serving_tables
    from tfrec_zoo.serving.export import export_model
    from training.exporting import validation_records

    params = {"dim": 8, "heads": 2, "top_k": 4, **params}
    model = build_model(name, ml40.spec, ml40.artifacts, params)
    assert model.broadcasts_context == (name in ("twin", "seminar"))
    served = with_serving_tables(model, ml40.artifacts)
    version = export_model(served, ml40.spec, tmp_path, name, keep=1)
    sigs = tf.saved_model.load(str(version)).signatures
    records = [tf.train.Example.FromString(r) for r in validation_records(ml40, 40)]
    context = max(records, key=lambda e: len(e.features.feature["hist_movie_id"].int64_list.value))
    assert len(context.features.feature["hist_movie_id"].int64_list.value) > 4
    candidates = []
    for ex in records[:6]:
        cand = tf.train.Example()
        cand.features.feature["movie_id"].CopyFrom(ex.features.feature["movie_id"])
        candidates.append(cand.SerializeToString())
    ranked, direct = _rank_and_merged(sigs, context.SerializeToString(), candidates)
    assert ranked.shape == (6,) and np.ptp(ranked) > 0
    np.testing.assert_allclose(ranked, direct, atol=1e-6)


def test_served_seminar_answers_the_stock_grpc_client(seminar_run, tmp_path):
    import grpc
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    from tfrec_zoo.serving.server import ModelServer
    from training.exporting import export_run, fresh_process_outputs, validation_records
    from training.trainer import load_run

    version = export_run(seminar_run, "sem", tmp_path / "sm", warmup=4, parity_rows=8,
                         options={"pq_subspaces": 8}, log=lambda *_: None)
    _, data, _ = load_run(seminar_run, log=lambda *_: None)
    records = validation_records(data, 6)
    expected = fresh_process_outputs(version, records)
    with ModelServer(str(tmp_path / "sm"), grpc_port=0, rest_port=None, host="127.0.0.1", poll_seconds=60) as server:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}"))
        req = predict_pb2.PredictRequest()
        req.model_spec.name = "sem"
        req.inputs["examples"].CopyFrom(tf.make_tensor_proto(records, dtype=tf.string, shape=[len(records)]))
        resp = stub.Predict(req, timeout=60)
    np.testing.assert_allclose(tf.make_ndarray(resp.outputs["click"]), expected["click"], atol=1e-5)


@pytest.mark.parametrize("weights, losses, zero", [({"align_weight": 0.0}, {}, "align_loss"),
                                                   ({}, {"relevance": 0.0}, "relevance_loss")])
def test_psu_objectives_switch_off(ml40, weights, losses, zero):
    """An auxiliary loss weighted 0 (by the model's params or the experiment's `losses:`) is not computed."""
    tf.keras.utils.set_random_seed(0)
    psu = build_model("seminar_psu", ml40.spec, ml40.artifacts, {"dim": 8, "heads": 1, "top_k": 4, "aux_steps": 32,
                                                                 **weights})
    psu.set_loss_weights(losses)
    psu.compile(keras.optimizers.Adam(1e-3))
    h = psu.fit(ml40.dataset("train", 64, features=list(psu.input_names)).take(2), epochs=1, verbose=0).history
    assert zero not in h
    other = {"align_loss", "relevance_loss"} - {zero}
    assert all(h[o][0] > 0 for o in other)       # the other contrastive objective is computed (InfoNCE > 0)
    # the total is the weighted sum: next-pair BCE + the other objective at its weight
    w = psu.loss_weights[next(iter(other))[:-len("_loss")]]
    assert h["loss"][0] == pytest.approx(h["click_loss"][0] + w * h[next(iter(other))][0], rel=1e-4)


def test_params_the_dataset_rejects_leave_no_run_directory(ml40, seminar_run, tmp_path):
    from training.experiment import parse_experiment
    from training.trainer import train

    exp = parse_experiment({"name": "x", "dataset": str(ml40.path), "model": "seminar",
                            "params": {"modalities": ["nope"]}}, "bad.yaml")
    with pytest.raises(ValueError, match=r"bad.yaml: params: .*modalities \['nope'\] are not side features"):
        train(exp, tmp_path / "run", verbose=0, log=lambda *_: None)
    assert not (tmp_path / "run").exists()
    # a freeze pattern that names no layer would freeze nothing: an error before training, no directory left
    exp = parse_experiment({"name": "x", "dataset": str(ml40.path), "model": "seminar",
                            "params": {"dim": 16, "heads": 2, "top_k": 8},
                            "restore": {"checkpoint": str(seminar_run), "freeze": ["^emb_nope"]}}, "bad.yaml")
    with pytest.raises(ValueError, match=r"bad.yaml: freeze: '\^emb_nope' matches no layer .*emb_movie_id"):
        train(exp, tmp_path / "run2", verbose=0, log=lambda *_: None)
    assert not (tmp_path / "run2").exists()
    # freezing restored weights when nothing is restored would freeze their initial values
    exp = parse_experiment({"name": "x", "dataset": str(ml40.path), "model": "seminar",
                            "params": {"freeze_modality_projection": True}}, "bad.yaml")
    with pytest.raises(ValueError, match=r"bad.yaml: params: \['freeze_modality_projection'\] .* nothing is restored"):
        train(exp, tmp_path / "run3", verbose=0, log=lambda *_: None)
    assert not (tmp_path / "run3").exists()
