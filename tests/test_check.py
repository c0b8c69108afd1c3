"""`data check`: the batched checker (one parse_example per batch + numpy) lists what the per-record proto checks
list, with the same wording, record numbers and order."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

from tfrec_zoo.data import check, write_dataset
from tfrec_zoo.data.check import Problem, check_dataset, check_records
from tfrec_zoo.features import parse_spec

SPEC = parse_spec({
    "name": "chk",
    "keys": {"user": "user_id", "item": "item_id"},
    "features": [
        {"name": "user_id", "kind": "id", "dtype": "string"},
        {"name": "item_id", "kind": "id"},
        {"name": "tags", "kind": "multi_hot", "dtype": "string", "max_len": 3, "weights": "tag_w"},
        {"name": "price", "kind": "dense"},
        {"name": "img", "kind": "vector", "dim": 2},
        {"name": "hist", "kind": "sequence", "max_len": 3, "fields": [   # a vector first: it can set no length
            {"name": "hist_vec", "kind": "vector", "dim": 2},
            {"name": "hist_item", "shares_embedding_with": "item_id"}]},
        {"name": "click", "kind": "label"},
    ],
}, "chk.yaml")


def frame(n: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    tags = [[str(t) for t in rng.integers(0, 5, rng.integers(0, 4))] for _ in range(n)]
    hist = [rng.integers(1, 9, rng.integers(0, 4)).tolist() for _ in range(n)]
    return pd.DataFrame({
        "user_id": [f"u{i % 7}" for i in range(n)], "item_id": rng.integers(1, 9, n),
        "tags": tags, "tag_w": [[1.0] * len(t) for t in tags], "price": rng.random(n),
        "img": [rng.random(2) for _ in range(n)], "hist_item": hist,
        "hist_vec": [[[float(h), 0.5] for h in row] for row in hist], "click": rng.integers(0, 2, n).astype(float),
    })


def records_of(file: Path, compression: str) -> list[bytes]:
    return [r.numpy() for r in tf.data.TFRecordDataset(str(file), compression)]


def rewrite(file: Path, compression: str, change) -> None:
    recs = records_of(file, compression)
    with tf.io.TFRecordWriter(str(file), compression) as w:
        for i, r in enumerate(recs):
            w.write(change(i, r))


def reference(path: Path, max_problems: int = 1000) -> tuple[int, list[Problem]]:
    """check_dataset as it was: every record decoded as a proto by `check_records`."""
    import json

    manifest = json.loads((path / "manifest.json").read_text())
    comp = manifest["compression"]
    total, problems = 0, []
    for info in manifest["splits"].values():
        for shard in info["shards"]:
            file = path / shard["file"]
            recs = records_of(file, comp)
            total += len(recs)
            if len(recs) != shard["rows"]:
                problems.append(Problem(str(file), None, None, f"{len(recs)} records, manifest says {shard['rows']}"))
            problems += check_records(SPEC, str(file), recs, max_problems - len(problems))
            if len(problems) >= max_problems:
                return total, problems
    return total, problems


def edit(raw: bytes, fn) -> bytes:
    ex = tf.train.Example.FromString(raw)
    fn(ex.features.feature)
    return ex.SerializeToString()


def put(fmap, key, kind, values):
    fmap[key].Clear()
    getattr(fmap[key], kind).value.extend(values)
    getattr(fmap[key], kind).SetInParent()


# one broken record per case; every message the per-record checks have
BREAKS = [
    lambda f: f.pop("price"),                                   # missing scalar
    lambda f: f.pop("tags"),                                    # missing list
    lambda f: put(f, "item_id", "float_list", [1.0]),           # wrong kind
    lambda f: put(f, "hist_item", "float_list", []),            # wrong kind, empty
    lambda f: f["price"].Clear(),                               # a feature with no kind
    lambda f: put(f, "img", "float_list", [1.0, 2.0, 3.0]),      # wrong vector length
    lambda f: put(f, "price", "float_list", [1.0, 2.0]),        # a scalar with two values
    lambda f: put(f, "price", "float_list", []),                # a scalar with none
    lambda f: put(f, "hist_vec", "float_list", [1.0, 2.0, 3.0]),  # not whole steps
    lambda f: (put(f, "hist_item", "int64_list", [1, 2, 3, 4]),   # steps mismatch + over max_len
               put(f, "hist_vec", "float_list", [0.0] * 8)),
    lambda f: (put(f, "hist_item", "int64_list", [1]), put(f, "hist_vec", "float_list", [0.0] * 4)),
    lambda f: (put(f, "tags", "bytes_list", [b"a"]), put(f, "tag_w", "float_list", [1.0, 2.0])),
    lambda f: (put(f, "tags", "bytes_list", []), put(f, "tag_w", "float_list", [1.0])),
    lambda f: (put(f, "hist_item", "int64_list", []), put(f, "hist_vec", "float_list", [])),  # fine: empty history
]


@pytest.mark.parametrize("compression", ["GZIP", ""])
def test_batched_check_lists_what_the_per_record_check_lists(tmp_path: Path, monkeypatch, compression):
    monkeypatch.setattr(check, "BATCH", 4)   # many batches: clean ones, ones with empty lists, rejected ones
    ds = tmp_path / "ds"
    write_dataset({"train": frame(70), "test": frame(9, 1)}, SPEC, ds, source="t", rows_per_shard=40,
                  compression=compression, progress=False)
    assert check_dataset(ds) == reference(ds) == (79, [])
    rng = np.random.default_rng(3)
    shard = ds / f"train/part-00000-of-00002.tfrecord{'.gz' if compression else ''}"
    broken = {int(i): k for k, i in enumerate(rng.choice(40, len(BREAKS) + 2, replace=False))}

    def change(i, raw):
        k = broken.get(i)
        if k is None:
            return raw
        if k == len(BREAKS):
            return b"\xff\x01garbage"      # not a tf.train.Example
        if k == len(BREAKS) + 1:
            return b""                     # an Example without any feature
        return edit(raw, BREAKS[k])
    rewrite(shard, compression, change)
    total, problems = check_dataset(ds)
    assert (total, problems) == reference(ds)
    text = "\n".join(map(str, problems))
    for expected in ["feature 'price': missing", "feature 'tags': missing",
                     "feature 'item_id': stored as float_list, the spec needs int64_list",
                     "feature 'hist_item': stored as float_list, the spec needs int64_list",
                     "feature 'price': stored as None, the spec needs float_list",
                     "feature 'img': has 3 values, expected 2", "feature 'price': has 2 values, expected 1",
                     "feature 'price': has 0 values, expected 1",
                     "feature 'hist_vec': 3 floats is not a whole number of 2-d steps",
                     "feature 'hist_item': 4 steps, more than max_len 3",
                     "feature 'hist_item': 1 steps while 'hist_vec' has 2",
                     "feature 'tag_w': 2 values while 'tags' has 1", "feature 'tag_w': 1 values while 'tags' has 0",
                     "not a tf.train.Example"]:
        assert expected in text, expected
    assert f"{shard}: record {min(broken)}: " in text
    # the cap stops at a record boundary, as before
    for cap in (1, 3, 7):
        assert check_dataset(ds, max_problems=cap) == reference(ds, cap)


def test_vectorised_checks_match_on_clean_batches(tmp_path: Path, monkeypatch):
    """Problems found in batches without empty lists (the numpy path, not the per-record fallback)."""
    monkeypatch.setattr(check, "BATCH", 8)
    ds = tmp_path / "ds"
    df = frame(24)
    df["tags"], df["tag_w"] = [["a"]] * 24, [[1.0]] * 24
    df["hist_item"], df["hist_vec"] = [[1, 2]] * 24, [[[1.0, 1.0], [2.0, 2.0]]] * 24
    write_dataset({"train": df}, SPEC, ds, source="t", progress=False)
    shard = ds / "train/part-00000-of-00001.tfrecord.gz"
    changes = {3: BREAKS[5], 4: BREAKS[6], 9: BREAKS[8], 10: BREAKS[9], 17: BREAKS[11],
               18: lambda f: put(f, "hist_vec", "float_list", [0.0] * 6)}
    rewrite(shard, "GZIP", lambda i, r: edit(r, changes[i]) if i in changes else r)
    calls = []
    one = check._check_one
    monkeypatch.setattr(check, "_check_one", lambda *a: calls.append(a[3]) or one(*a))
    total, problems = check_dataset(ds)
    assert calls == [], "every record was decided in its batch"
    assert (total, problems) == reference(ds)
    assert [(p.record, p.feature) for p in problems] == [
        (3, "img"), (4, "price"), (9, "hist_vec"), (10, "hist_vec"), (10, "hist_item"), (17, "tag_w"),
        (18, "hist_item")]
    assert [str(p) for p in problems[3:5]] == [f"{shard}: record 10: feature 'hist_vec': 4 steps, more than max_len 3",
                                               f"{shard}: record 10: feature 'hist_item': 4 steps, more than max_len 3"]
    assert str(problems[6]) == f"{shard}: record 18: feature 'hist_item': 2 steps while 'hist_vec' has 3"
    # record 9's hist_vec (3 floats) is no whole number of steps, so its 2 hist_item steps are compared to nothing
    assert str(problems[2]) == f"{shard}: record 9: feature 'hist_vec': 3 floats is not a whole number of 2-d steps"


def test_corrupt_shard_names_the_last_good_record(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(check, "BATCH", 4)
    ds = tmp_path / "ds"
    write_dataset({"train": frame(11)}, SPEC, ds, source="t", compression="", progress=False)
    shard = ds / "train/part-00000-of-00001.tfrecord"
    raw = shard.read_bytes()
    sizes = [len(r) + 16 for r in records_of(shard, "")]
    at = sum(sizes[:6]) + 20                           # a data byte of record 6: its crc no longer matches
    shard.write_bytes(raw[:at] + bytes([raw[at] ^ 0xFF]) + raw[at + 1:])
    with pytest.raises(tf.errors.DataLossError):
        records_of(shard, "")
    total, problems = check_dataset(ds)
    assert total == 6
    assert str(problems[0]).startswith(f"{shard}: record 6: corrupt after this record (")
    assert str(problems[1]) == f"{shard}: 6 records, manifest says 11"
    assert len(problems) == 2
    shard.write_bytes(raw[:sum(sizes[:6]) + 5])       # cut inside record 6: TF reads the whole ones and stops
    assert [str(p) for p in check_dataset(ds)[1]] == [f"{shard}: 6 records, manifest says 11"]


def test_records_tf_refuses_but_protobuf_reads_are_reported(tmp_path: Path, monkeypatch):
    """The batch's parse fails yet every record decodes as a proto: the record tf.io.parse_example refuses is
    named instead of passing silently (the reader would fail on it)."""
    checker = check._BatchChecker(SPEC)
    good = [edit(r, lambda f: None) for r in records_of(_written(tmp_path), "GZIP")]
    monkeypatch.setattr(check, "_check_one", lambda *a: [])   # stands for a proto decoder that accepts anything
    bad = b"\x0a\x0c\x0a\x0a\x0a\x05price\x12\x01\xff"          # 'price' -> a Feature that does not decode
    found = checker.check("f", tf.constant([good[0], bad, good[1]]), 10)
    assert [(i, str(p)) for i, _, p in found][0][0] == 11
    assert str(found[0][2]).startswith("f: record 11: tf.io.parse_example rejects it (")
    assert len(found) == 1


def _written(tmp_path: Path) -> Path:
    write_dataset({"train": frame(5)}, SPEC, tmp_path / "w", source="t", progress=False)
    return tmp_path / "w/train/part-00000-of-00001.tfrecord.gz"
