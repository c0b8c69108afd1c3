"""Keras inputs and the embedding factory: exact values, shared tables, save/reload with the serving signature."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tfrec_zoo._tf import keras, tf
from tfrec_zoo.features import Artifacts, parse_spec
from tfrec_zoo.inputs import FeatureEmbeddings, build_inputs
from tfrec_zoo.layers import DenseTransform, LengthMask, MaskedPooling

SPEC = parse_spec({
    "name": "toy",
    "features": [
        {"name": "user_id", "kind": "id", "dtype": "string", "hash_buckets": 7, "embedding_dim": 3},
        {"name": "item_id", "kind": "id", "embedding_dim": 4, "vocab": {"oov_buckets": 2}},
        {"name": "tags", "kind": "multi_hot", "dtype": "string", "max_len": 3, "embedding_dim": 2,
         "combiner": "sum", "weights": "tag_w"},
        {"name": "price", "kind": "dense", "normalization": "zscore", "buckets": 3, "bucket_embedding_dim": 2},
        {"name": "img", "kind": "vector", "dim": 5},
        {"name": "hist", "kind": "sequence", "max_len": 4, "fields": [
            {"name": "hist_item", "shares_embedding_with": "item_id"},
            {"name": "hist_gap", "kind": "dense", "normalization": "log1p"}]},
        {"name": "click", "kind": "label"},
    ],
}, "toy.yaml")

ART = Artifacts(
    vocabs={"item_id": [10, 11, 12], "tags": ["a", "b"]},
    stats={"price": {"mean": 2.0, "std": 4.0, "min": 0.0, "max": 8.0, "log1p_mean": 0.0, "log1p_std": 1.0,
                     "boundaries": [1.0, 3.0]},
           "hist_gap": {"mean": 0.0, "std": 1.0, "min": 0.0, "max": 1.0, "log1p_mean": 1.0, "log1p_std": 2.0}},
)


def batch():
    return {
        "user_id": tf.constant(["u1", "u2"]),
        "item_id": tf.constant([11, 99], tf.int64),
        "tags": tf.constant([["a", "b", ""], ["b", "zz", ""]]),
        "tags_len": tf.constant([2, 2], tf.int32),
        "tag_w": tf.constant([[1.0, 2.0, 0.0], [1.0, 1.0, 0.0]]),
        "price": tf.constant([2.0, 10.0]),
        "img": tf.ones([2, 5]),
        "hist_item": tf.constant([[10, 12, 0, 0], [0, 0, 0, 0]], tf.int64),
        "hist_gap": tf.constant([[0.0, np.e - 1, 0, 0], [0, 0, 0, 0]]),
        "hist_len": tf.constant([2, 0], tf.int32),
    }


def test_inputs_match_the_reader_contract():
    inputs = build_inputs(SPEC)
    shapes = {k: (tuple(v.shape), v.dtype.name) for k, v in inputs.items()}
    assert shapes == {
        "user_id": ((None,), "string"), "item_id": ((None,), "int64"),
        "tags": ((None, 3), "string"), "tags_len": ((None,), "int32"), "tag_w": ((None, 3), "float32"),
        "price": ((None,), "float32"), "img": ((None, 5), "float32"),
        "hist_item": ((None, 4), "int64"), "hist_gap": ((None, 4), "float32"), "hist_len": ((None,), "int32"),
    }


def test_lookups_share_tables_and_send_unknown_ids_to_oov():
    inputs = build_inputs(SPEC)
    emb = FeatureEmbeddings(SPEC, ART)
    item = emb.id("item_id", inputs)
    hist, mask = emb.sequence("hist", inputs)
    model = keras.Model(inputs, {"item": item, "hist": hist["hist_item"], "mask": mask,
                                 "idx": emb.index("item_id", inputs), "hidx": emb.index("hist_item", inputs)})
    table = model.get_layer("emb_item_id")
    assert table.input_dim == 2 + 3  # 2 OOV buckets + 3 ids
    out = model(batch())
    # vocabulary ids map after the OOV buckets in vocabulary order; 99 is OOV
    assert out["idx"].numpy()[0] == 2 + 1 and out["idx"].numpy()[1] < 2
    assert out["hidx"].numpy()[0, :2].tolist() == [2, 4]
    w = table.embeddings.numpy()
    np.testing.assert_allclose(out["item"].numpy()[0], w[3])
    np.testing.assert_allclose(out["hist"].numpy()[0, 1], w[4])  # the history uses the very same table
    assert out["mask"].numpy().tolist() == [[True, True, False, False], [False] * 4]
    assert len([l for l in model.layers if isinstance(l, keras.layers.Embedding)]) == 1


def test_pooling_and_dense_values_are_exact():
    inputs = build_inputs(SPEC)
    emb = FeatureEmbeddings(SPEC, ART)
    model = keras.Model(inputs, {"tags": emb.pooled("tags", inputs), "price": emb.dense("price", inputs),
                                 "gap": emb.sequence("hist", inputs)[0]["hist_gap"],
                                 "user": emb.id("user_id", inputs)})
    out = model(batch())
    w = model.get_layer("emb_tags").embeddings.numpy()
    # sum combiner with weights: 1*E[a] + 2*E[b]; a -> row 1, b -> row 2 (one OOV bucket first)
    np.testing.assert_allclose(out["tags"].numpy()[0], w[1] + 2 * w[2], rtol=1e-6)
    np.testing.assert_allclose(out["tags"].numpy()[1], w[2] + w[0], rtol=1e-6)  # 'zz' is OOV -> row 0
    # price: zscore (x - 2) / 4 then a bucket embedding for boundaries [1, 3]
    bw = model.get_layer("emb_bucket_price").embeddings.numpy()
    np.testing.assert_allclose(out["price"].numpy()[:, 0], [0.0, 2.0])
    np.testing.assert_allclose(out["price"].numpy()[0, 1:], bw[1])
    np.testing.assert_allclose(out["price"].numpy()[1, 1:], bw[2])
    # log1p then standardised: (log1p(e - 1) - 1) / 2 = 0 ; (log1p(0) - 1) / 2 = -0.5
    np.testing.assert_allclose(out["gap"].numpy()[0, :2, 0], [-0.5, 0.0], atol=1e-6)
    assert out["user"].shape == (2, 3)


@pytest.mark.parametrize("combiner, expected", [("mean", [1.5, 0.0]), ("sum", [6.0, 0.0]),
                                                ("sqrtn", [6.0 / np.sqrt(5.0), 0.0])])
def test_masked_pooling(combiner, expected):
    values = tf.constant([[[1.0], [2.0], [100.0]], [[5.0], [5.0], [5.0]]])
    mask = tf.constant([[True, True, False], [False, False, False]])
    weights = tf.constant([[2.0, 2.0, 2.0], [1.0, 1.0, 1.0]]) if combiner != "mean" else tf.ones([2, 3])
    args = [values, mask] + ([weights] if combiner != "mean" else [])
    out = MaskedPooling(combiner)(args).numpy()[:, 0]
    sqrtn = (2 * 1 + 2 * 2) / np.sqrt(8.0)
    expected = [sqrtn, 0.0] if combiner == "sqrtn" else expected
    np.testing.assert_allclose(out, expected, rtol=1e-6)


def test_dense_transform_zeroes_non_finite():
    out = DenseTransform("minmax", {"min": 1.0, "max": 3.0})(tf.constant([2.0, np.nan, np.inf])).numpy()
    assert out[:, 0].tolist() == [0.5, 0.0, 0.0]
    with pytest.raises(ValueError, match="normalization must be one of"):
        DenseTransform("l2", {})


def test_layers_serialise_round_trip():
    for layer in (LengthMask(7, name="m"), MaskedPooling("sqrtn", name="p"),
                  DenseTransform("zscore", {"mean": 1.0, "std": 2.0}, name="d")):
        clone = type(layer).from_config(layer.get_config())
        assert clone.get_config() == layer.get_config()


def test_model_saves_reloads_and_keeps_its_serving_signature(tmp_path: Path):
    inputs = build_inputs(SPEC)
    emb = FeatureEmbeddings(SPEC, ART)
    flat = emb.flat(inputs)
    hist, mask = emb.sequence("hist", inputs)
    pooled = MaskedPooling("mean")([hist["hist_item"], mask])
    x = keras.layers.Concatenate()(list(flat.values()) + [pooled])
    model = keras.Model(inputs, {"click": keras.layers.Dense(1, activation="sigmoid", name="click")(x)})
    before = model(batch())["click"].numpy()
    model.save(tmp_path / "m")
    loaded = tf.saved_model.load(str(tmp_path / "m"))
    sig = loaded.signatures["serving_default"]
    assert set(sig.structured_input_signature[1]) == set(inputs)
    assert list(sig.structured_outputs) == ["click"]
    np.testing.assert_allclose(sig(**batch())["click"].numpy(), before, atol=1e-6)
    reloaded = keras.models.load_model(tmp_path / "m")
    np.testing.assert_allclose(reloaded(batch())["click"].numpy(), before, atol=1e-6)
