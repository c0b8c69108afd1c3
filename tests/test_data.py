"""TFRecord writer / reader / checker and the interaction-log helpers, on small hand-made frames."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tfrec_zoo.data import make_dataset, open_dataset, write_dataset
from tfrec_zoo.data.check import check_dataset
from tfrec_zoo.data.interactions import assign_splits, attach_histories, chronological, split_frames
from tfrec_zoo.features import FeatureSpecError, fit_artifacts, parse_spec

SPEC = parse_spec({
    "name": "toy",
    "keys": {"user": "user_id", "item": "item_id", "time": "ts"},
    "features": [
        {"name": "user_id", "kind": "id", "dtype": "string"},
        {"name": "item_id", "kind": "id", "vocab": {"min_count": 2, "oov_buckets": 2}},
        {"name": "tags", "kind": "multi_hot", "dtype": "string", "max_len": 3, "weights": "tag_w"},
        {"name": "price", "kind": "dense", "normalization": "zscore", "buckets": 2},
        {"name": "ts", "kind": "dense"},
        {"name": "img", "kind": "vector", "dim": 2},
        {"name": "hist", "kind": "sequence", "max_len": 2, "fields": [
            {"name": "hist_item", "shares_embedding_with": "item_id"},
            {"name": "hist_vec", "kind": "vector", "dim": 2}]},
        {"name": "click", "kind": "label"},
        {"name": "buy", "kind": "label", "mask": "click"},
    ],
}, "toy.yaml")


def toy_frame() -> pd.DataFrame:
    return pd.DataFrame({
        "user_id": ["u1", "u1", "u2", "u3"],
        "item_id": [10, 10, 11, 12],
        "tags": [["a", "b"], [], ["a", "b", "c", "d"], ["c"]],
        "tag_w": [[1.0, 2.0], [], [1.0, 1.0, 1.0, 0.5], [3.0]],
        "price": [1.0, 2.0, 3.0, 4.0],
        "ts": [1.0, 2.0, 3.0, 4.0],
        "img": [[0.1, 0.2], [0.3, 0.4], [0.5, 0.6], [0.7, 0.8]],
        "hist_item": [[], [10], [10, 11, 12], [5]],
        "hist_vec": [[], [[1.0, 1.0]], [[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]], [[0.0, 9.0]]],
        "click": [1.0, 0.0, 1.0, 1.0],
        "buy": [1.0, 0.0, 0.0, 1.0],
    })


def test_roundtrip_pads_truncates_and_masks(tmp_path: Path):
    df = toy_frame()
    manifest = write_dataset({"train": df, "test": df.iloc[:2]}, SPEC, tmp_path / "ds", source="toy",
                             rows_per_shard=3, progress=False)
    assert manifest["splits"]["train"]["rows"] == 4
    assert [s["rows"] for s in manifest["splits"]["train"]["shards"]] == [3, 1]
    d = open_dataset(tmp_path / "ds")
    feats, labels, weights = next(iter(d.dataset("train", 4)))
    assert feats["user_id"].numpy().tolist() == [b"u1", b"u1", b"u2", b"u3"]
    # multi_hot keeps the most recent max_len=3 values and pads with ""
    assert feats["tags"].numpy().tolist()[2] == [b"b", b"c", b"d"]
    assert feats["tags"].numpy().tolist()[1] == [b"", b"", b""]
    assert feats["tags_len"].numpy().tolist() == [2, 0, 3, 1]
    assert feats["tag_w"].numpy()[0].tolist() == [1.0, 2.0, 0.0]
    # sequences: oldest first, the last max_len=2 steps, padding 0, vector fields reshaped
    assert feats["hist_item"].numpy().tolist() == [[0, 0], [10, 0], [11, 12], [5, 0]]
    assert feats["hist_len"].numpy().tolist() == [0, 1, 2, 1]
    assert feats["hist_vec"].numpy()[2].tolist() == [[3.0, 4.0], [5.0, 6.0]]
    assert feats["hist_vec"].shape == (4, 2, 2)
    np.testing.assert_allclose(feats["img"].numpy()[3], [0.7, 0.8], rtol=1e-6)
    assert labels["click"].numpy().tolist() == [1, 0, 1, 1]
    # `buy` is masked by `click`: its sample weight is the click label
    assert weights["buy"].numpy().tolist() == [1, 0, 1, 1]
    assert weights["click"].numpy().tolist() == [1, 1, 1, 1]


def test_artifacts_come_from_train_only_and_are_deterministic(tmp_path: Path):
    df = toy_frame()
    test = df.assign(item_id=[99, 99, 99, 99])
    for name in ("a", "b"):
        write_dataset({"train": df, "test": test}, SPEC, tmp_path / name, source="toy", progress=False)
    for rel in ("artifacts/vocab/item_id.txt", "artifacts/vocab/user_id.txt", "artifacts/stats.json", "manifest.json"):
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel
    # item vocab: members item_id + hist_item from train, min_count 2, ordered by count desc then value
    assert (tmp_path / "a/artifacts/vocab/item_id.txt").read_text().split() == ["10", "11", "12"]
    stats = json.loads((tmp_path / "a/artifacts/stats.json").read_text())["stats"]
    assert stats["price"]["mean"] == pytest.approx(2.5) and stats["price"]["std"] == pytest.approx(np.std([1, 2, 3, 4]))
    assert stats["price"]["boundaries"] == [2.5]
    art = fit_artifacts(SPEC, df)
    assert art.vocab_size(SPEC, "item_id") == 2 + 3


def test_bad_records_name_feature_and_record(tmp_path: Path):
    df = toy_frame()
    bad = df.copy()
    bad.at[2, "img"] = [1.0, 2.0, 3.0]
    with pytest.raises(FeatureSpecError, match=r"\[train\]: feature 'img', record 2: vector has 3 floats, the spec says dim 2"):
        write_dataset({"train": bad}, SPEC, tmp_path / "x", source="toy", progress=False)
    with pytest.raises(FeatureSpecError, match=r"feature 'price': column 'price' is missing"):
        write_dataset({"train": df.drop(columns=["price"])}, SPEC, tmp_path / "x", source="toy", progress=False)
    bad = df.copy()
    bad["item_id"] = bad["item_id"].astype(object)
    bad.at[1, "item_id"] = "abc"
    with pytest.raises(FeatureSpecError, match=r"feature 'item_id', record 1: expected an int64 id, got 'abc'"):
        write_dataset({"train": bad}, SPEC, tmp_path / "x", source="toy", progress=False)
    bad = df.copy()
    bad.at[3, "hist_vec"] = []
    with pytest.raises(FeatureSpecError, match=r"feature 'hist_vec', record 3: 0 steps while 'hist_item' has 1"):
        write_dataset({"train": bad}, SPEC, tmp_path / "x", source="toy", progress=False)
    assert not (tmp_path / "x").exists()
    assert list(tmp_path.iterdir()) == [], "a failed write leaves no temporary directory behind"


def test_failed_rewrite_keeps_the_previous_dataset(tmp_path: Path):
    df = toy_frame()
    write_dataset({"train": df}, SPEC, tmp_path / "ds", source="toy", progress=False)
    before = (tmp_path / "ds/manifest.json").read_bytes()
    bad = df.copy()
    bad.at[0, "price"] = np.nan
    with pytest.raises(FeatureSpecError, match="record 0: value is missing"):
        write_dataset({"train": df, "test": bad}, SPEC, tmp_path / "ds", source="toy2", progress=False)
    assert (tmp_path / "ds/manifest.json").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]


def test_check_lists_every_problem(tmp_path: Path):
    import tensorflow as tf

    df = toy_frame()
    write_dataset({"train": df}, SPEC, tmp_path / "ds", source="toy", progress=False)
    total, problems = check_dataset(tmp_path / "ds")
    assert (total, problems) == (4, [])
    # rewrite the shard with two broken records: a missing feature and a wrong-length vector
    shard = tmp_path / "ds/train/part-00000-of-00001.tfrecord.gz"
    recs = [r.numpy() for r in tf.data.TFRecordDataset(str(shard), compression_type="GZIP")]
    ex1 = tf.train.Example.FromString(recs[1])
    del ex1.features.feature["price"]
    ex3 = tf.train.Example.FromString(recs[3])
    ex3.features.feature["img"].float_list.value.append(1.0)
    recs[1], recs[3] = ex1.SerializeToString(), ex3.SerializeToString()
    with tf.io.TFRecordWriter(str(shard), "GZIP") as w:
        for r in recs:
            w.write(r)
    total, problems = check_dataset(tmp_path / "ds")
    text = [str(p) for p in problems]
    assert f"{shard}: record 1: feature 'price': missing" in text
    assert f"{shard}: record 3: feature 'img': has 3 values, expected 2" in text
    assert len(problems) == 2


def test_make_dataset_shuffles_deterministically_and_drops_remainder(tmp_path: Path):
    df = pd.concat([toy_frame()] * 5, ignore_index=True).assign(ts=np.arange(20, dtype=float))
    write_dataset({"train": df}, SPEC, tmp_path / "ds", source="toy", progress=False)
    d = open_dataset(tmp_path / "ds")

    def order(seed):
        return [t for f, *_ in make_dataset(d.spec, d.files("train"), 8, shuffle_buffer=20, seed=seed,
                                            drop_remainder=True) for t in f["ts"].numpy().tolist()]
    a, b = order(1), order(1)
    assert a == b and len(a) == 16 and a != sorted(a)


def test_time_and_leave_one_out_splits():
    log = chronological(pd.DataFrame({"u": [1] * 10 + [2] * 2, "t": list(range(10, 0, -1)) + [1, 2]}), "u", "t")
    assert log["t"].tolist()[:3] == [1, 2, 3]
    time = assign_splits(log, "u", "time", valid_frac=0.2, test_frac=0.2)
    assert time.tolist() == [0] * 6 + [1, 1, 2, 2] + [0, 0]
    loo = assign_splits(log, "u", "leave_one_out")
    assert loo.tolist() == [0] * 8 + [1, 2] + [0, 0]
    rnd = assign_splits(log, "u", "random", seed=3)
    assert rnd.tolist() == assign_splits(log, "u", "random", seed=3).tolist()


def test_histories_never_contain_a_later_split():
    spec = parse_spec({"name": "h", "features": [
        {"name": "item", "kind": "id"},
        {"name": "h", "kind": "sequence", "max_len": 3, "only_positive": "y",
         "fields": [{"name": "h_item", "source": "item", "shares_embedding_with": "item"}]},
        {"name": "y", "kind": "label"}]}, "h.yaml")
    log = pd.DataFrame({"user": [1] * 6, "t": range(6), "item": [1, 2, 3, 4, 5, 6], "y": [1, 1, 0, 1, 1, 1]})
    ranks = np.array([0, 2, 0, 1, 0, 2])  # a random-style split: test rows early in time
    out = attach_histories(log, spec, "user", ranks)
    assert out["h_item"].tolist() == [
        [],            # first interaction
        [1],           # test row sees the earlier train row
        [1],           # train row: item 2 is test -> excluded
        [1],           # valid row: item 3 has y=0 (only_positive), item 2 is test
        [1],           # train row: item 4 is valid -> excluded
        [2, 4, 5],     # test row: every earlier positive, the last 3
    ]
    splits = split_frames(out, ranks)
    assert [len(splits[k]) for k in ("train", "valid", "test")] == [3, 1, 2]
