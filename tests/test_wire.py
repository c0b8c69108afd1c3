"""The column-wise tf.train.Example encoder (data/wire.py) against the per-row protos it replaces, and the writer
that frames and compresses its output."""
from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

from tfrec_zoo.data import open_dataset, write_dataset
from tfrec_zoo.data.examples import columns_for_examples, serialize_rows
from tfrec_zoo.data.reader import parse_batch
from tfrec_zoo.data.wire import ExampleEncoder, proto_rows, row_serializer, varint
from tfrec_zoo.data.writer import write_records
from tfrec_zoo.features import parse_spec

I64 = np.iinfo(np.int64)
F32_MAX = float(np.finfo(np.float32).max)
DTYPES = {"int64": tf.int64, "float": tf.float32, "bytes": tf.string}

SPEC = parse_spec({
    "name": "wire",
    "keys": {"user": "user_id", "item": "item_id"},
    "features": [
        {"name": "user_id", "kind": "id", "dtype": "string"},
        {"name": "item_id", "kind": "id"},
        {"name": "tags", "kind": "multi_hot", "dtype": "string", "max_len": 3, "weights": "tag_w"},
        {"name": "price", "kind": "dense"},
        {"name": "img", "kind": "vector", "dim": 2},
        {"name": "hist", "kind": "sequence", "max_len": 2, "fields": [
            {"name": "hist_item", "shares_embedding_with": "item_id"},
            {"name": "hist_vec", "kind": "vector", "dim": 2}]},
        {"name": "click", "kind": "label"},
    ],
}, "wire.yaml")


def toy_frame() -> pd.DataFrame:
    return pd.DataFrame({
        "user_id": ["u1", "u1", "ü2", ""],
        "item_id": [10, 10, -11, 12],
        "tags": [["a", "b"], [], ["a", "b", "c", "d"], [""]],
        "tag_w": [[1.0, 2.0], [], [1.0, 1.0, 1.0, 0.5], [3.0]],
        "price": [1.0, 3e38, 3.0, -4.5],   # data write refuses inf (test_bad_data); the encoder takes it (every_case)
        "img": [[0.1, 0.2], [0.3, 0.4], [0.5, 0.6], [0.7, 0.8]],
        "hist_item": [[], [10], [10, 11, 12], [5]],
        "hist_vec": [[], [[1.0, 1.0]], [[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]], [[0.0, 9.0]]],
        "click": [1.0, 0.0, 1.0, 1.0],
    })


def every_case() -> tuple[dict, int]:
    """One column per case the writer meets, 5 rows."""
    cols = {
        "id": ("int64", [0, -1, I64.min, I64.max, 300]),
        "id_np": ("int64", np.array([127, 128, 16383, 16384, -300], np.int64)),
        "price": ("float", [0.1, float("nan"), float("inf"), -float("inf"), -0.0]),
        "big": ("float", [1e40, -1e40, F32_MAX, 1e-46, 2.0 ** 60 + 1]),   # overflow -> inf, underflow -> 0
        "name": ("bytes", ["", "a", "日本語", "emoji \U0001F600", "x" * 300]),   # 300 bytes: 2-byte length
        "hist": ("int64", [[], [1, -2, I64.min], [5], [], list(range(130))]),
        "weights": ("float", [[], [0.5, float("nan")], [], [1e40], [1.0] * 40]),
        "tags": ("bytes", [[], ["", "é"], ["a", "b", "c"], [""], []]),
        "vec": ("float", np.arange(15, dtype=np.float32).reshape(5, 3) - 7.5),
        "vec_rows": ("float", [np.array([1.0, 2.0], np.float32)] * 5),
        "steps": ("float", [[], [0.25, 0.5, 0.75, 1.0], [], [], [3.0, 4.0]]),
    }
    return cols, 5


def parsed(records: list[bytes], cols: dict) -> dict[str, list[list]]:
    """tf.io.parse_example of the records, each column as per-row lists (floats as their bit patterns: NaN == NaN)."""
    desc = {k: tf.io.RaggedFeature(DTYPES[kind]) for k, (kind, _) in cols.items()}
    out = tf.io.parse_example(tf.constant(records, tf.string), desc)
    rows = {}
    for k, rt in out.items():
        lists = [np.asarray(r) for r in rt.to_list()] if cols[k][0] != "float" else \
            [np.asarray(r, np.float32).view(np.uint32) for r in rt.to_list()]
        rows[k] = [r.tolist() for r in lists]
    return rows


def read_varint(buf: bytes, i: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        value |= (buf[i] & 0x7F) << shift
        shift += 7
        i += 1
        if buf[i - 1] < 0x80:
            return value, i


def entries(record: bytes) -> dict[bytes, bytes]:
    """The raw bytes of each map entry of a serialized Example, by key (order left out)."""
    if not record:
        return {}
    assert record[0] == 0x0A
    size, i = read_varint(record, 1)
    assert i + size == len(record)
    out = {}
    while i < len(record):
        assert record[i] == 0x0A
        size, j = read_varint(record, i + 1)
        entry = record[j:j + size]
        key_len, k = read_varint(entry, 1)
        out[entry[k:k + key_len]] = entry
        i = j + size
    return out


def assert_same_as_per_row(cols: dict, n: int, chunk_rows: int = 4) -> list[bytes]:
    """Parsed values and each feature's wire bytes as the per-row protos (the map order is checked elsewhere)."""
    want = [proto_rows(cols, n)(i) for i in range(n)]
    got = list(ExampleEncoder(cols, n).records(chunk_rows=chunk_rows))
    assert len(got) == n
    if n:
        assert parsed(got, cols) == parsed(want, cols)
    assert [entries(r) for r in got] == [entries(r) for r in want]
    return got


def test_every_column_kind_parses_to_the_per_row_values():
    cols, n = every_case()
    records = assert_same_as_per_row(cols, n, chunk_rows=2)
    ex = [tf.train.Example.FromString(r).features.feature for r in records]
    # exact values, as protobuf converts them
    assert ex[2]["id"].int64_list.value == [I64.min] and ex[1]["hist"].int64_list.value == [1, -2, I64.min]
    assert ex[3]["id_np"].int64_list.value == [16384] and ex[4]["id_np"].int64_list.value == [-300]
    assert np.isnan(ex[1]["price"].float_list.value[0]) and ex[2]["price"].float_list.value == [np.inf]
    assert np.signbit(ex[4]["price"].float_list.value[0])
    assert list(ex[0]["big"].float_list.value[:1]) == [np.inf] and ex[1]["big"].float_list.value == [-np.inf]
    assert ex[2]["big"].float_list.value == [F32_MAX] and ex[3]["big"].float_list.value == [0.0]
    assert [e["name"].bytes_list.value[0] for e in ex] == [s.encode() for s in cols["name"][1]]
    assert ex[1]["tags"].bytes_list.value == [b"", "é".encode()]
    assert ex[3]["vec"].float_list.value == [1.5, 2.5, 3.5]
    # an empty list is stored as an empty list of its kind, not as a feature without a kind
    assert ex[0]["hist"].WhichOneof("kind") == "int64_list" and not ex[0]["hist"].int64_list.value
    assert ex[0]["tags"].WhichOneof("kind") == "bytes_list" and ex[0]["weights"].WhichOneof("kind") == "float_list"


@pytest.mark.parametrize("value, wire", [
    (0, "00"), (1, "01"), (127, "7f"), (128, "8001"), (300, "ac02"), (16384, "808001"),
    (-1, "ffffffffffffffffff01"), (int(I64.min), "80808080808080808001"), (int(I64.max), "ffffffffffffffff7f"),
])
def test_varint_is_protobufs_int64(value, wire):
    got, lengths = varint(np.array([value, 5]))
    assert got.tobytes().hex() == wire + "05" and lengths.tolist() == [len(wire) // 2, 1]
    # Int64List{value: [v]} is tag 0a, length, the varint
    assert tf.train.Int64List(value=[value]).SerializeToString().hex()[4:] == wire


def random_column(rng: np.random.Generator, n: int):
    kind = rng.choice(["int64", "float", "bytes"])
    shape = rng.choice(["scalar", "list", "vector"] if kind == "float" else ["scalar", "list"])

    def value():
        if kind == "int64":
            return int(rng.choice([rng.integers(-5, 5), rng.integers(I64.min, I64.max, dtype=np.int64),
                                   rng.integers(0, 1 << 20)]))
        if kind == "float":
            return float(rng.choice([rng.standard_normal() * 10.0 ** rng.integers(-40, 40), np.nan, np.inf, -0.0]))
        return "".join(rng.choice(list("ab é日\x00\U0001F600"), rng.integers(0, 200 if rng.random() < .1 else 4)))

    if shape == "vector":
        return "float", rng.standard_normal((n, int(rng.integers(1, 70)))).astype(np.float32)
    if shape == "scalar":
        return kind, [value() for _ in range(n)]
    return kind, [[value() for _ in range(int(rng.integers(0, 300 if rng.random() < .05 else 6)))] for _ in range(n)]


@pytest.mark.parametrize("seed", range(25))
def test_random_frames_match_the_per_row_path(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(0, 40))
    names = ["a", "B", "a_b", "é", "z9", "feature_with_a_long_name", "x"]
    cols = {str(k): random_column(rng, n) for k in rng.choice(names, int(rng.integers(1, len(names))), replace=False)}
    assert_same_as_per_row(cols, n, chunk_rows=int(rng.integers(1, 9)))
    # rows asked for out of order, across chunk boundaries
    one, ref = row_serializer(cols, n, chunk_rows=3), proto_rows(cols, n)
    for i in rng.permutation(n)[:10]:
        assert one(int(i)) == ref(int(i))


def test_records_are_byte_identical_to_deterministic_serialization():
    """Map entries in protobuf's deterministic order: byte order, a prefix after the longer keys ("ab" before "a")."""
    cols, n = every_case()
    cols = {**cols, "i": ("int64", [1] * n), "": ("bytes", ["k"] * n), "vec_rows_2": ("float", [[1.0]] * n)}
    assert list(ExampleEncoder(cols, n).records(chunk_rows=2)) == [proto_rows(cols, n)(i) for i in range(n)]
    rng = np.random.default_rng(7)
    cols = {k: random_column(rng, 9) for k in ["a", "ab", "b", "é", "e", "a_", "zz", "z"]}
    assert list(ExampleEncoder(cols, 9).records(chunk_rows=4)) == [proto_rows(cols, 9)(i) for i in range(9)]


def test_an_example_without_features_is_empty_bytes():
    assert list(ExampleEncoder({}, 2).records()) == [b"", b""] == [proto_rows({}, 2)(i) for i in range(2)]


def test_values_protobuf_refuses_are_refused_naming_the_feature():
    def encode(cols, n):
        return list(ExampleEncoder(cols, n).records(chunk_rows=2))

    with pytest.raises(ValueError, match=r"feature 'id': cannot store the values as int64 \(TypeError: got float64"):
        encode({"id": ("int64", [1, 1.5])}, 2)
    with pytest.raises(ValueError, match="feature 'f': cannot store the values as float"):
        encode({"f": ("float", ["1.5"])}, 1)
    with pytest.raises(ValueError, match="feature 'b': cannot store the values as bytes .*AttributeError"):
        encode({"b": ("bytes", [b"raw"])}, 1)    # str only, as the per-row path
    with pytest.raises(ValueError, match="feature 'h': row 3 holds a scalar, row 2 a list"):
        encode({"h": ("int64", [[1], [2], [3], 4])}, 4)
    with pytest.raises(ValueError, match="feature 'id': cannot store the values as int64 .*above the int64 range"):
        encode({"id": ("int64", [2 ** 63])}, 1)
    with pytest.raises(ValueError, match="feature 'id': 1 values for 2 rows"):
        ExampleEncoder({"id": ("int64", [1])}, 2)
    with pytest.raises(ValueError, match="feature 'id': unknown value kind 'int32'"):
        ExampleEncoder({"id": ("int32", [1])}, 1)


def test_serialize_rows_and_the_reader_see_the_per_row_examples():
    df = toy_frame()
    cols = columns_for_examples(df, SPEC, "toy")
    one, ref = serialize_rows(cols, len(df)), proto_rows(cols, len(df))
    assert [one(i) for i in range(len(df))] == [ref(i) for i in range(len(df))]
    got = parse_batch(SPEC, tf.constant([one(i) for i in range(len(df))]))
    want = parse_batch(SPEC, tf.constant([ref(i) for i in range(len(df))]))
    for g, w in zip(got, want):
        assert g.keys() == w.keys()
        for k in g:
            np.testing.assert_array_equal(g[k].numpy(), w[k].numpy())
    assert got[0]["hist_item"].numpy().tolist() == [[0, 0], [10, 0], [11, 12], [5, 0]]


@pytest.mark.parametrize("compression", ["GZIP", "ZLIB", ""])
def test_write_records_is_what_tfrecordwriter_writes(tmp_path: Path, compression):
    cols, n = every_case()
    records = [proto_rows(cols, n)(i) for i in range(n)] * 3
    cols3 = {k: (kind, np.concatenate([v] * 3) if isinstance(v, np.ndarray) else list(v) * 3)
             for k, (kind, v) in cols.items()}
    seen = []
    assert write_records(tmp_path / "x", ExampleEncoder(cols3, 3 * n).chunks(0, 3 * n, chunk_rows=4), compression,
                         on_chunk=seen.append) == 15
    assert seen == [4, 4, 4, 3]
    assert [r.numpy() for r in tf.data.TFRecordDataset(str(tmp_path / "x"), compression)] == records
    with tf.io.TFRecordWriter(str(tmp_path / "ref"), compression) as w:
        for r in records:
            w.write(r)
    raw, ref = (tmp_path / "x").read_bytes(), (tmp_path / "ref").read_bytes()
    unpack = {"GZIP": gzip.decompress, "ZLIB": zlib.decompress, "": bytes}[compression]
    assert unpack(raw) == unpack(ref), "the same TFRecord framing (lengths and masked crc32c) as TFRecordWriter"


def test_write_records_writes_an_empty_file_tf_reads(tmp_path: Path):
    assert write_records(tmp_path / "e.gz", iter([]), "GZIP") == 0
    assert list(tf.data.TFRecordDataset(str(tmp_path / "e.gz"), "GZIP")) == []


def test_written_dataset_holds_the_per_row_records(tmp_path: Path):
    df = pd.concat([toy_frame()] * 3, ignore_index=True)
    write_dataset({"train": df}, SPEC, tmp_path / "ds", source="toy", rows_per_shard=5, progress=False)
    d = open_dataset(tmp_path / "ds")
    got = [r.numpy() for f in d.files("train") for r in tf.data.TFRecordDataset(str(f), "GZIP")]
    cols = columns_for_examples(df, SPEC, "toy")
    assert got == [proto_rows(cols, len(df))(i) for i in range(len(df))]
    assert [s["rows"] for s in d.manifest["splits"]["train"]["shards"]] == [5, 5, 2]
