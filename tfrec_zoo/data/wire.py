"""Column-wise tf.train.Example encoder: numpy writes the protobuf wire format for a chunk of rows at once.

Building one `tf.train.Example` proto per row costs ~20 us of Python per row; this module produces the same bytes
from whole columns. The wire format it writes (protobuf, every length-delimited field as tag, varint length, body):

    Example  { 1: Features { 1: repeated map entry { 1: key (UTF-8), 2: Feature } } }
    Feature  { oneof: 1 bytes_list | 2 float_list | 3 int64_list }
    BytesList{ 1: repeated bytes }   FloatList{ 1: packed float32 }   Int64List{ 1: packed varint }

Map entries are written in the order `SerializeToString(deterministic=True)` writes them (`map_order`), so a record
is byte-identical to the per-row proto (`proto_rows`, kept as the reference the tests and benchmarks/pipeline.py
compare against); readers do not depend on that order. Values convert as protobuf converts them: floats round to
float32 as a C cast does (overflow -> inf, NaN stays NaN), negative int64 become 10-byte varints, strings are UTF-8
encoded, and an empty list is still written as an (empty) list of its kind.

A column is (kind, values) as `examples.columns_for_examples` gives it: kind "int64" / "float" / "bytes"; values one
entry per row, each a scalar, a list (ragged, possibly empty) or a numpy row, or the whole column as a numpy array
([n] scalars or [n, dim] fixed-length lists).
"""
from __future__ import annotations

from dataclasses import dataclass
from itertools import chain
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np

# Feature's oneof fields 1, 2, 3, each length-delimited (wire type 2)
_KIND_TAG = {"bytes": 0x0A, "float": 0x12, "int64": 0x1A}
_FIELD1 = np.frombuffer(b"\x0a", np.uint8)   # field 1, length-delimited: Example.features, Features.feature, ...
DEFAULT_CHUNK_ROWS = 8192                    # rows encoded per numpy pass: ~4 MB of records, bounded index arrays

Columns = Mapping[str, tuple[str, Any]]
# one piece of every row's bytes: (bytes, per-row lengths) or (constant bytes, their length as an int)
Piece = tuple[np.ndarray, "np.ndarray | int"]


@dataclass(frozen=True)
class _Column:
    """One feature's values of a chunk of rows, flattened."""

    key: bytes
    kind: str
    row_offsets: np.ndarray            # [rows+1]: row i holds values (bytes: strings) row_offsets[i]:row_offsets[i+1]
    values: np.ndarray                 # int64 / little-endian float32 / bytes: every string's UTF-8, concatenated
    str_offsets: np.ndarray | None     # bytes only, [m+1]: where each string starts in `values`


def map_order(key: str) -> bytes:
    """Sort key of the map entries in protobuf's (upb's) deterministic serialization: byte order, except that a key
    comes after the longer keys it is a prefix of ("ab" before "a"). 0xFF never occurs in UTF-8, so appending it
    gives exactly that order."""
    return key.encode() + b"\xff"


def varint(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Base-128 varints of int64 values, negatives as their 64-bit two's complement (10 bytes), as protobuf's int64
    does -> (all varints' bytes, each varint's length)."""
    u = np.ascontiguousarray(values, dtype=np.int64).reshape(-1).view(np.uint64)
    top = int(u.max(initial=0))
    width = max(1, (top.bit_length() + 6) // 7)
    t = np.uint32 if top < (1 << 32) else np.uint64   # half the memory traffic for the usual small values
    w = u.astype(t, copy=False)
    groups = np.empty((u.size, width), np.uint8)      # byte k of each varint: 7 bits + "more follows" bit
    keep = np.empty((u.size, width), bool)            # whether the varint has a byte k
    keep[:, 0] = True
    lengths = np.ones(u.size, np.int64)
    for k in range(width):
        low = (w >> t(7 * k)).astype(np.uint8) & np.uint8(0x7F)
        if k + 1 < width:
            more = w >= t(1 << (7 * (k + 1)))
            keep[:, k + 1] = more
            lengths += more
            low |= more.view(np.uint8) << np.uint8(7)
        groups[:, k] = low
    return groups[keep], lengths


def _segment_sums(lengths: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Sum of `lengths` over consecutive groups of `counts` items (groups may be empty)."""
    ends = np.cumsum(lengths)
    bounds = np.concatenate([[0], np.cumsum(counts)])
    total = np.concatenate([[0], ends])
    return total[bounds[1:]] - total[bounds[:-1]]


def _assemble(pieces: Sequence[Piece], rows: int) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate the pieces row by row: row i = piece 0's bytes of row i + piece 1's ... -> (buffer, [rows+1]
    offsets). Each piece is scattered into place with one fancy-index assignment."""
    sizes = np.zeros(rows, np.int64)
    for data, lens in pieces:
        sizes += lens
    offsets = np.zeros(rows + 1, np.int64)
    np.cumsum(sizes, out=offsets[1:])
    out = np.empty(int(offsets[-1]), np.uint8)
    pos = offsets[:-1].copy()   # where each row's next piece goes
    for data, lens in pieces:
        if isinstance(lens, int):      # the same bytes in every row
            if lens == 1:
                out[pos] = data[0]
            elif lens:
                out[pos[:, None] + np.arange(lens)] = data
        elif data.size and lens[0] * rows == data.size and (lens == lens[0]).all():   # fixed width
            out[pos[:, None] + np.arange(lens[0])] = data.reshape(rows, -1)
        elif data.size:
            starts = np.cumsum(lens) - lens
            out[np.repeat(pos - starts, lens) + np.arange(data.size)] = data
        pos += lens
    return out, offsets


def _varint_piece(values: np.ndarray, where: np.ndarray | None = None) -> tuple[Piece, np.ndarray]:
    """A piece holding each row's value as a varint (only in rows where `where`, if given) + its per-row lengths."""
    if where is None:
        data, lens = varint(values)
        return (data, lens), lens
    data, sub = varint(values[where])
    lens = np.zeros(values.shape, np.int64)
    lens[where] = sub
    return (data, lens), lens


def _const(raw: bytes) -> Piece:
    return np.frombuffer(raw, np.uint8), len(raw)


def _flatten(name: str, kind: str, values: Any, first: int) -> _Column:
    """(kind, the values of rows first, first+1, ...) -> one _Column: counts per row and the values in one typed
    array. Done per chunk: the Python part of the work then overlaps the previous chunk's compression."""
    n = len(values)
    if isinstance(values, np.ndarray) and values.dtype != object and values.ndim in (1, 2):
        counts = np.full(n, 1 if values.ndim == 1 else values.shape[1], np.int64)
        flat: Any = values.reshape(-1)
    elif n and isinstance(values[0], (list, tuple, np.ndarray)):
        try:
            counts = np.fromiter((len(v) for v in values), np.int64, n)
        except TypeError:
            i = next(i for i, v in enumerate(values) if not isinstance(v, (list, tuple, np.ndarray)))
            raise ValueError(f"feature {name!r}: row {first + i} holds a scalar, row {first} a list") from None
        flat = (np.concatenate(values) if all(isinstance(v, np.ndarray) for v in values)
                else list(chain.from_iterable(values)))
    else:
        counts, flat = np.ones(n, np.int64), values
    row_offsets = np.zeros(n + 1, np.int64)
    np.cumsum(counts, out=row_offsets[1:])
    try:
        return _typed(name, kind, flat, row_offsets)
    except (TypeError, ValueError, OverflowError, AttributeError, UnicodeEncodeError) as e:
        raise ValueError(f"feature {name!r}: cannot store the values as {kind} ({type(e).__name__}: {e})") from None


def _typed(name: str, kind: str, flat: Any, row_offsets: np.ndarray) -> _Column:
    key = name.encode()
    if kind == "bytes":
        encoded = [s.encode() for s in flat]   # str only, UTF-8, as the per-row proto path
        str_offsets = np.zeros(len(encoded) + 1, np.int64)
        np.cumsum(np.fromiter(map(len, encoded), np.int64, len(encoded)), out=str_offsets[1:])
        return _Column(key, kind, row_offsets, np.frombuffer(b"".join(encoded), np.uint8), str_offsets)
    arr = np.asarray(flat).reshape(-1)
    # numbers only: numpy would parse strings and truncate floats into int64 where protobuf refuses them
    if arr.size and arr.dtype.kind not in ("iub" if kind == "int64" else "iubf"):
        raise TypeError(f"got {arr.dtype} values such as {arr[0]!r}")
    if kind == "int64":
        if arr.dtype.kind == "u" and arr.size and arr.max() > np.iinfo(np.int64).max:
            raise OverflowError(f"{arr.max()} is above the int64 range")
        return _Column(key, kind, row_offsets, arr.astype(np.int64), None)
    # through float64 first: a Python int rounds to a double, then to float32, as protobuf converts it
    with np.errstate(over="ignore", invalid="ignore"):   # overflow -> inf, as protobuf's float conversion
        as32 = arr if arr.dtype == np.float32 else arr.astype(np.float64).astype(np.float32)
    return _Column(key, kind, row_offsets, as32.astype("<f4", copy=False), None)


def _list_pieces(col: _Column) -> tuple[list[Piece], np.ndarray]:
    """Each row of one column as the body of its Int64List / FloatList / BytesList -> (pieces, per-row lengths)."""
    counts = np.diff(col.row_offsets)
    if col.kind == "bytes":   # each string: tag, varint length, bytes
        slen = np.diff(col.str_offsets)
        vpiece, _ = _varint_piece(slen)
        strings, each = _assemble([_const(b"\x0a"), vpiece, (col.values, slen)], slen.size)
        per_row = _segment_sums(np.diff(each), counts)
        return [(strings, per_row)], per_row
    if col.kind == "int64":
        payload, vlen = varint(col.values)
        plen = _segment_sums(vlen, counts)
    else:
        payload, plen = col.values.view(np.uint8), counts * 4
    # packed repeated field: tag and byte length, left out entirely when the list is empty
    nonempty = counts > 0
    header, hlen = _varint_piece(plen, nonempty)
    tag = (np.full(int(nonempty.sum()), 0x0A, np.uint8), nonempty.astype(np.int64))
    return [tag, header, (payload, plen)], nonempty + hlen + plen


def _entry_pieces(col: _Column) -> tuple[list[Piece], np.ndarray]:
    """Each row of one column as a Features map entry {1: key, 2: Feature}, with its field-1 tag and length."""
    body, list_len = _list_pieces(col)
    list_varint, ll = _varint_piece(list_len)
    feature_len = 1 + ll + list_len
    feature_varint, fl = _varint_piece(feature_len)
    key_field = b"\x0a" + bytes(varint(np.array([len(col.key)]))[0]) + col.key + b"\x12"
    entry_len = len(key_field) + fl + feature_len
    entry_varint, el = _varint_piece(entry_len)
    pieces = [(_FIELD1, 1), entry_varint, _const(key_field), feature_varint, _const(bytes([_KIND_TAG[col.kind]])),
              list_varint, *body]
    return pieces, 1 + el + entry_len


class ExampleEncoder:
    """Serialized tf.train.Example records of a split's columns, encoded a chunk of rows at a time."""

    def __init__(self, cols: Columns, n: int):
        for name, (kind, values) in cols.items():
            if kind not in _KIND_TAG:
                raise ValueError(f"feature {name!r}: unknown value kind {kind!r} (expected one of {sorted(_KIND_TAG)})")
            if len(values) != n:
                raise ValueError(f"feature {name!r}: {len(values)} values for {n} rows")
        self.n = n
        self.columns = [(name, kind, values)
                        for name, (kind, values) in sorted(cols.items(), key=lambda kv: map_order(kv[0]))]

    def encode(self, a: int, b: int) -> tuple[np.ndarray, np.ndarray]:
        """Rows a:b -> (buffer, [b-a+1] offsets): record i is buffer[offsets[i]:offsets[i+1]]."""
        if not 0 <= a <= b <= self.n:
            raise IndexError(f"rows {a}:{b} out of 0:{self.n}")
        rows = b - a
        if not self.columns:   # an Example without features serializes to nothing
            return np.empty(0, np.uint8), np.zeros(rows + 1, np.int64)
        pieces: list[Piece] = []
        total = np.zeros(rows, np.int64)
        for name, kind, values in self.columns:
            entry, size = _entry_pieces(_flatten(name, kind, values[a:b], a))
            pieces += entry
            total += size
        head, _ = _varint_piece(total)
        return _assemble([(_FIELD1, 1), head, *pieces], rows)

    def chunks(self, a: int, b: int, chunk_rows: int = DEFAULT_CHUNK_ROWS) -> Iterator[tuple[bytes, list[int]]]:
        """Rows a:b in chunks -> (records' bytes, offsets as a list) per chunk (what a record writer slices)."""
        for start in range(a, b, chunk_rows):
            buf, offsets = self.encode(start, min(b, start + chunk_rows))
            yield buf.tobytes(), offsets.tolist()

    def records(self, a: int = 0, b: int | None = None, chunk_rows: int = DEFAULT_CHUNK_ROWS) -> Iterator[bytes]:
        """Each record of rows a:b (default: all) as bytes."""
        for buf, offsets in self.chunks(a, self.n if b is None else b, chunk_rows):
            for i in range(len(offsets) - 1):
                yield buf[offsets[i]:offsets[i + 1]]


def row_serializer(cols: Columns, n: int, chunk_rows: int = DEFAULT_CHUNK_ROWS) -> Callable[[int], bytes]:
    """row -> serialized tf.train.Example; rows are encoded a chunk at a time and the last chunk is kept, so
    reading rows in order costs one column-wise pass per chunk."""
    encoder = ExampleEncoder(cols, n)
    cached: dict[str, Any] = {"start": -1}

    def one(i: int) -> bytes:
        if not 0 <= i < n:
            raise IndexError(f"row {i} out of 0:{n}")
        start = i - i % chunk_rows
        if cached["start"] != start:
            buf, offsets = encoder.encode(start, min(n, start + chunk_rows))
            cached.update(start=start, buf=buf.tobytes(), offsets=offsets.tolist())
        k = i - start
        return cached["buf"][cached["offsets"][k]:cached["offsets"][k + 1]]

    return one


def proto_rows(cols: Columns, n: int) -> Callable[[int], bytes]:
    """The reference: row -> tf.train.Example built field by field and serialized deterministically (what the
    writer did before this module). Tests and benchmarks/pipeline.py compare the encoder to it."""
    from tensorflow.core.example import example_pb2

    items = list(cols.items())
    list_field = {"int64": "int64_list", "bytes": "bytes_list", "float": "float_list"}

    def one(i: int) -> bytes:
        ex = example_pb2.Example()
        fmap = ex.features.feature
        for name, (kind, values) in items:
            v = values[i]
            if isinstance(v, np.ndarray):
                v = v.tolist()
            vals = v if isinstance(v, list) else [v]
            target = getattr(fmap[name], list_field[kind])
            target.value.extend([s.encode() for s in vals] if kind == "bytes" else vals)
            if not vals:   # an empty list must still say which list it is
                target.SetInParent()
        return ex.SerializeToString(deterministic=True)

    return one
