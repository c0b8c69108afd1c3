"""Zoo models and their layers: exact layer math, every model trains, saves, reloads and serves the same."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tfrec_zoo._tf import keras, tf
from tfrec_zoo.features import Artifacts, parse_spec
from tfrec_zoo.layers import FMInteraction, TargetAttention
from tfrec_zoo.models import MODELS, _load_all, build_model, model_config
from tfrec_zoo.models.base import ZooModel
from tfrec_zoo.models.seminar import LIFELONG_MODELS

SPEC_RAW = {
    "name": "toy",
    "keys": {"user": "user_id", "item": "item_id"},
    "features": [
        {"name": "user_id", "kind": "id", "embedding_dim": 8},
        {"name": "item_id", "kind": "id", "embedding_dim": 8},
        {"name": "cate_id", "kind": "id", "embedding_dim": 4},
        {"name": "tags", "kind": "multi_hot", "dtype": "string", "max_len": 3, "embedding_dim": 8},
        {"name": "price", "kind": "dense"},
        {"name": "title", "kind": "vector", "dim": 6},
        {"name": "hist", "kind": "sequence", "max_len": 5, "fields": [
            {"name": "hist_item", "shares_embedding_with": "item_id"},
            {"name": "hist_cate", "shares_embedding_with": "cate_id"}]},
        {"name": "click", "kind": "label"},
        {"name": "rating", "kind": "label", "type": "regression", "loss_weight": 0.5},
    ],
}
SPEC = parse_spec(SPEC_RAW, "toy.yaml")
ART = Artifacts(vocabs={"user_id": list(range(20)), "item_id": list(range(50)), "cate_id": list(range(5)),
                        "tags": ["a", "b", "c"]},
                stats={"price": {"mean": 1.0, "std": 2.0, "min": 0.0, "max": 5.0, "log1p_mean": 0.0, "log1p_std": 1.0}})


# multi-domain models need a domain feature: the same toy spec with one (value 3 in toy batches is unknown: OOV)
MULTI_DOMAIN = {"sr_foundation", "shared_bottom", "ple", "star"}
SPEC_MD = parse_spec({**SPEC_RAW, "features": [*SPEC_RAW["features"], {"name": "domain", "kind": "domain",
                                                                        "embedding_dim": 4}]}, "toy-md.yaml")
ART_MD = Artifacts(vocabs={**ART.vocabs, "domain": [0, 1, 2]}, stats=ART.stats)


def toy_batch(n: int = 64, seed: int = 0):
    rng = np.random.default_rng(seed)
    lens = rng.integers(0, 6, n)
    feats = {
        "user_id": rng.integers(0, 25, n), "item_id": rng.integers(0, 55, n), "cate_id": rng.integers(0, 5, n),
        "tags": rng.choice(np.array(["a", "b", "c", ""]), (n, 3)), "tags_len": rng.integers(0, 4, n).astype(np.int32),
        "price": rng.random(n).astype(np.float32) * 5, "title": rng.standard_normal((n, 6)).astype(np.float32),
        "hist_item": rng.integers(0, 50, (n, 5)), "hist_cate": rng.integers(0, 5, (n, 5)),
        "hist_len": lens.astype(np.int32),
    }
    labels = {"click": (feats["item_id"] % 2).astype(np.float32), "rating": rng.random(n).astype(np.float32)}
    return feats, labels


def test_fm_interaction_matches_pairwise_sum():
    v = np.arange(12, dtype=np.float32).reshape(1, 3, 4) / 10
    pairwise = sum(np.dot(v[0, i], v[0, j]) for i in range(3) for j in range(i + 1, 3))
    np.testing.assert_allclose(FMInteraction()(tf.constant(v)).numpy()[0, 0], pairwise, rtol=1e-5)


def test_target_attention_ignores_padding_and_empty_history():
    layer = TargetAttention((4,), normalization="none")
    q = tf.ones([2, 3])
    keys = tf.random.normal([2, 4, 3], seed=1)
    mask = tf.constant([[True, True, False, False], [False] * 4])
    out = layer([q, keys, mask]).numpy()
    changed = tf.concat([keys[:, :2], 100 + keys[:, 2:]], axis=1)   # only padded steps change
    np.testing.assert_allclose(layer([q, changed, mask]).numpy(), out, rtol=1e-5)
    np.testing.assert_allclose(out[1], 0.0)
    soft = TargetAttention((4,), normalization="softmax")
    one = soft([q, keys, tf.constant([[True, False, False, False]] * 2)]).numpy()
    np.testing.assert_allclose(one, keys.numpy()[:, 0], rtol=1e-5)  # a single valid step gets weight 1


def test_model_config_rejects_unknown_and_mistyped_keys():
    with pytest.raises(ValueError, match=r"exp.yaml.params.dnn_unit: unknown hyper-parameter of din"):
        model_config("din", {"dnn_unit": [1]}, "exp.yaml.params")
    with pytest.raises(ValueError, match="expected a number"):
        model_config("deepfm", {"fm_dim": "16"})
    with pytest.raises(ValueError, match="unknown model 'dn'; known: .*din"):
        model_config("dn")
    assert model_config("din", {"dnn_units": [8, 4]}).dnn_units == (8, 4)
    # `--set params.dnn_units=abc` reached int('a') deep in the build: now one error naming the key
    with pytest.raises(ValueError, match=r"params.dnn_units: expected a list"):
        model_config("din", {"dnn_units": "abc"}, "params")
    with pytest.raises(ValueError, match=r"params.dnn_units: expected a list of int"):
        model_config("din", {"dnn_units": ["a", 2]}, "params")
    with pytest.raises(ValueError, match=r"params.attention_activation: expected a string"):
        model_config("din", {"attention_activation": 3}, "params")


_load_all()


# lifelong: tests/test_lifelong.py; those needing a domain feature: tests/test_multidomain_models.py; the meta
# controller (one multiclass label over mechanisms): tests/test_device_cloud.py
@pytest.mark.parametrize("name", sorted(set(MODELS) - set(LIFELONG_MODELS) - {"shared_bottom", "ple", "star",
                                                                           "meta_controller"}))
def test_model_trains_saves_reloads_and_serves(name: str, tmp_path: Path):
    spec, art = (SPEC_MD, ART_MD) if name in MULTI_DOMAIN else (SPEC, ART)
    model = build_model(name, spec, art, {})
    assert isinstance(model, ZooModel)
    # MACDAE's family (an autoencoder's zero-initialised decoder, a deep tower over unnormalised softplus heads)
    # overshoots under Adam 0.01 on 64 rows: the author's learning rate 0.001, more epochs
    encoder = any(layer.name == "macdae_encoder" for layer in model.layers)
    lr, epochs = (0.001, 30) if encoder else (0.01, 15)
    model.compile(keras.optimizers.Adam(lr))
    feats, labels = toy_batch()
    if name in MULTI_DOMAIN:
        feats["domain"] = np.random.default_rng(1).integers(0, 4, len(labels["click"]))
    first = model.evaluate(feats, labels, verbose=0, return_dict=True)
    history = model.fit(feats, labels, epochs=epochs, batch_size=64, verbose=0).history
    after = model.evaluate(feats, labels, verbose=0, return_dict=True)
    assert after["loss"] < first["loss"]                   # it learns
    if model.evaluation_protocol(spec) == "losses":        # label-free pretraining (an autoencoder): no task outputs
        return _check_label_free(model, feats, tmp_path / name, spec, art, history)
    if model.evaluation_protocol(spec) != "retrieval":     # retrieval models state one softmax loss, no task heads
        # one loss per task, weighted by the spec (rating: 0.5), metrics named by task whatever the task count
        assert {"loss", "click_loss", "rating_loss", "click_auc", "rating_rmse"} <= set(history)
        aux = sum(model.loss_weights[a] * after[f"{a}_loss"]
                  for a in model.auxiliary_loss_names if model.loss_weights[a])
        assert after["loss"] == pytest.approx(after["click_loss"] + 0.5 * after["rating_loss"] + aux, rel=1e-4)
    preds = model.predict(feats, verbose=0)
    assert set(preds) == {"click", "rating"} and preds["click"].shape == (64,)
    assert ((preds["click"] >= 0) & (preds["click"] <= 1)).all()
    model.save(tmp_path / name)
    served = tf.saved_model.load(str(tmp_path / name)).signatures["serving_default"]
    ignored = {f.split(".")[-1] for f in model.ignored_features}
    assert set(served.structured_input_signature[1]) == set(feats) - ignored - {f"{n}_len" for n in ignored}
    assert set(served.structured_outputs) == {"click", "rating"}
    out = served(**{k: tf.constant(v) for k, v in feats.items() if k in served.structured_input_signature[1]})
    np.testing.assert_allclose(out["click"].numpy(), preds["click"], atol=1e-5)
    # a run reloads by building the model again and reading the weights (training/runs.py)
    from training.runs import load_weights

    again = build_model(name, spec, art, {})
    load_weights(again, tmp_path / name)
    np.testing.assert_allclose(again.predict(feats, verbose=0)["rating"], preds["rating"], atol=1e-5)


def _check_label_free(model, feats, path: Path, spec, art, history) -> None:
    from training.runs import load_weights

    assert model.task_names == [] and "click_loss" not in history
    assert set(history) == {"loss", *model.metric_names()}
    assert {f"{n}_loss" for n, w in model.loss_weights.items() if w} <= set(history)     # each loss is logged
    preds = model.predict(feats, verbose=0)
    assert "implicit_context" in preds and np.isfinite(preds["implicit_context"]).all()
    model.save(path)
    served = tf.saved_model.load(str(path)).signatures["serving_default"]
    out = served(**{k: tf.constant(v) for k, v in feats.items() if k in served.structured_input_signature[1]})
    np.testing.assert_allclose(out["implicit_context"].numpy(), preds["implicit_context"], atol=1e-5)
    again = build_model(model.zoo_name, spec, art, {})
    load_weights(again, path)
    np.testing.assert_allclose(again.predict(feats, verbose=0)["implicit_context"], preds["implicit_context"],
                               atol=1e-5)


def test_single_task_metric_names_do_not_depend_on_the_task_count():
    spec = parse_spec({"name": "one", "keys": {"item": "item_id"}, "features": [
        {"name": "item_id", "kind": "id"}, {"name": "like", "kind": "label"}]}, "one.yaml")
    model = build_model("deepfm", spec, Artifacts(vocabs={"item_id": list(range(10))}), {})
    model.compile(keras.optimizers.Adam(0.01))
    x, y = {"item_id": np.arange(10)}, {"like": (np.arange(10) % 2).astype(np.float32)}
    logs = model.fit(x, y, validation_data=(x, y), epochs=1, verbose=0).history
    assert {"like_loss", "like_auc", "val_like_auc", "val_like_loss"} <= set(logs)   # not `auc` / `val_auc`


def test_models_list_the_spec_features_they_ignore():
    # DIN attends over the history's item and category ids; the spec's dense history field is not an input
    spec = parse_spec({**SPEC_RAW, "features": [
        *[f for f in SPEC_RAW["features"] if f["name"] != "hist"],
        {"name": "hist", "kind": "sequence", "max_len": 5, "fields": [
            {"name": "hist_item", "shares_embedding_with": "item_id"},
            {"name": "hist_cate", "shares_embedding_with": "cate_id"},
            {"name": "hist_rating", "kind": "dense"}]}]}, "toy2.yaml")
    art = Artifacts(vocabs=ART.vocabs, stats={**ART.stats, "hist_rating": ART.stats["price"]})
    assert build_model("din", spec, art, {}).ignored_features == ["hist.hist_rating"]
    assert build_model("deepfm", spec, art, {}).ignored_features == ["hist.hist_rating"]
    assert build_model("din", SPEC, ART, {}).ignored_features == []


def test_a_loss_weighted_zero_is_not_computed_and_logs_nothing():
    model = build_model("din", SPEC, ART, {})
    model.set_loss_weights({"rating": 0.0})
    model.compile(keras.optimizers.Adam(0.01))
    feats, labels = toy_batch()
    logs = model.evaluate(feats, labels, verbose=0, return_dict=True)
    assert "rating_loss" not in logs and "rating_rmse" not in logs
    assert logs["loss"] == pytest.approx(logs["click_loss"], rel=1e-5)
    with pytest.raises(ValueError, match="has no loss 'ratng'; its losses: click, rating"):
        model.set_loss_weights({"ratng": 1.0}, source="exp.yaml: tasks")


def test_din_attends_with_every_paired_field():
    model = build_model("din", SPEC, ART, {})
    assert isinstance(model.get_layer("din_attention"), TargetAttention)
    # query = item + category embeddings (8 + 4), keys the history's two fields through the same tables
    assert model.get_layer("din_query").output.shape[-1] == 12
    assert len([layer for layer in model.layers if layer.name == "emb_item_id"]) == 1


def test_masked_task_loss_ignores_rows_with_weight_zero():
    spec = parse_spec({"name": "m", "keys": {"item": "item_id"}, "features": [
        {"name": "item_id", "kind": "id"}, {"name": "click", "kind": "label"},
        {"name": "buy", "kind": "label", "mask": "click"}]}, "m.yaml")
    art = Artifacts(vocabs={"item_id": list(range(10))})
    model = build_model("mmoe", spec, art, {"num_experts": 2, "expert_units": [4], "tower_units": [4]})
    model.compile("adam")
    x = {"item_id": np.arange(8)}
    click = np.array([1, 1, 0, 0, 1, 0, 1, 0], np.float32)
    buy = np.array([1, 0, 0, 0, 1, 0, 0, 0], np.float32)
    sw = {"click": np.ones(8, np.float32), "buy": click}
    base = model.evaluate(x, {"click": click, "buy": buy}, sample_weight=sw, verbose=0, return_dict=True)
    flipped = np.where(click == 0, 1 - buy, buy)           # change buy labels only where the mask is 0
    same = model.evaluate(x, {"click": click, "buy": flipped}, sample_weight=sw, verbose=0, return_dict=True)
    assert same["buy_loss"] == pytest.approx(base["buy_loss"], rel=1e-6)
    p = model.predict(x, verbose=0)["buy"]
    per_row = -(buy * np.log(p) + (1 - buy) * np.log(1 - p))
    assert base["buy_loss"] == pytest.approx(float((per_row * click).sum() / 8), rel=1e-4)


@pytest.mark.parametrize("normalization", ["none", "softmax"])
def test_target_attention_valid_steps_path_equals_the_padded_formula(normalization):
    layer = TargetAttention((6, 3), normalization=normalization)
    q = tf.random.normal([3, 4], seed=3)
    keys = tf.random.normal([3, 5, 4], seed=4)
    mask = tf.constant([[True, True, True, False, False], [True] * 5, [False] * 5])
    padded = layer([q, keys, mask]).numpy()
    valid = layer([q, tf.boolean_mask(keys, mask), mask]).numpy()
    np.testing.assert_allclose(valid, padded, rtol=1e-5, atol=1e-6)
    # the textbook formula: MLP([q, k, q - k, q * k]) per step, masked, weighted sum
    qb = tf.broadcast_to(q[:, None], keys.shape)
    h = tf.concat([qb, keys, qb - keys, qb * keys], -1)
    for dense in layer.hidden:
        h = dense(h)
    s = layer.score(h)[..., 0].numpy()
    m = mask.numpy()
    if normalization == "softmax":
        smax = np.where(m, s, -1e30).max(axis=1, keepdims=True)
        e = np.where(m, np.exp(np.where(m, s - smax, 0.0)), 0.0)
        w = e / np.maximum(e.sum(axis=1, keepdims=True), 1e-30)
    else:
        w = s * m
    np.testing.assert_allclose(padded, np.einsum("bl,bld->bd", w, keys.numpy()), rtol=1e-4, atol=1e-5)


def test_freeze_levels_come_from_the_layers_not_their_names():
    from training.restore import freeze

    model = build_model("deepfm", SPEC, ART, {})
    level0 = set(freeze(model, level=1))
    assert {"emb_item_id", "emb_user_id", "lookup_item_id", "emb_tags"} <= level0
    assert not any(n.startswith(("norm_", "fm_proj", "dnn_", "mean_")) for n in level0)
    model = build_model("deepfm", SPEC, ART, {})
    level1 = set(freeze(model, level=2))
    assert level0 < level1 and {"norm_price", "pool_tags", "mask_tags", "mean_hist_item"} <= level1
    assert any(n.startswith("fm_proj") for n in level1)          # DeepFM's projections into its factor space
    assert not any(n.startswith(("dnn_", "linear", "click_", "fm")) and not n.startswith("fm_proj") for n in level1)
    assert all(not model.get_layer(n).trainable for n in level1 if n in {x.name for x in model.layers})
    # a level is what the layer says, not what its name looks like
    from tfrec_zoo.inputs import at_level

    x = keras.Input((3,))
    named_like_a_table = keras.layers.Dense(2, name="emb_lookalike")
    marked = at_level(keras.layers.Dense(2, name="plain_name"), 0)
    toy = keras.Model(x, marked(named_like_a_table(x)))
    assert freeze(toy, level=1) == ["plain_name"] and named_like_a_table.trainable
