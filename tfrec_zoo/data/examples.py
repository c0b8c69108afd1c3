"""Turning DataFrame columns into tf.train.Example records, with the checks that make bad input fail loudly.

Column conventions (one row = one example): id/domain/dense/label -> a scalar; multi_hot -> a list (its `weights`
column a list of floats of the same length); vector -> `dim` floats; sequence -> one list column per field, all of
one length per row (a vector field holds a list of `dim`-float vectors). Text features are encoded to vectors before
they get here (see `writer.encode_text_features`).
"""
from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np
import pandas as pd

from ..features.spec import (
    DenseFeature, FeatureSpec, FeatureSpecError, LabelFeature, MultiHotFeature, SequenceFeature, TextFeature,
    VectorFeature, _Categorical,
)

# `tensorflow` is imported lazily: building examples only needs the protobuf classes.
_pb = None


def _example_pb():
    global _pb
    if _pb is None:
        from tensorflow.core.example import example_pb2, feature_pb2
        _pb = (example_pb2, feature_pb2)
    return _pb


# columns a reader adds to say where each row came from: the file's line (CSV / TSV, header = line 1) or row
# (Parquet, from 1); errors name it instead of the row's position inside a sorted split
SOURCE_LINE, SOURCE_ROW = "__line__", "__row__"


class RecordError(FeatureSpecError):
    """Bad data in one record (row `row` of the frame being converted) of one feature."""

    def __init__(self, source: str, feature: str, row: Any, problem: str, fix: str, origin: str | None = None):
        self.feature, self.row, self.record_problem, self.record_fix = feature, row, problem, fix
        where = f"feature {feature!r}" + (f", {origin}" if origin else f", record {row}" if row is not None else "")
        super().__init__(source, where, problem, fix)


def _data_error(source: str, feature: str, row: Any, problem: str, fix: str) -> FeatureSpecError:
    return RecordError(source, feature, row, problem, fix)


def _origin(df: pd.DataFrame, row: int) -> str | None:
    """Where row `row` of `df` came from in the input file, when the reader recorded it."""
    for col, word in ((SOURCE_LINE, "line"), (SOURCE_ROW, "row")):
        if col in df.columns and 0 <= row < len(df):
            return f"{word} {int(df[col].iloc[row])}"
    return None


def _is_missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def _as_list(v: Any) -> list:
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, (list, tuple)):
        return list(v)
    if _is_missing(v):
        return []
    raise TypeError(type(v).__name__)


def _convert_scalar(col: pd.Series, dtype: str, name: str, source: str) -> list:
    for i, v in enumerate(col):
        if _is_missing(v):
            raise _data_error(source, name, i, "value is missing",
                              f"give the feature a `fill:` in the spec (e.g. `fill: oov` for ids, `fill: median` "
                              "for floats), or fill or drop the record")
    if dtype == "int64":
        try:
            arr = col.to_numpy()
            if arr.dtype.kind in "iub":
                return arr.astype(np.int64).tolist()
            out = []
            for i, v in enumerate(arr):
                if isinstance(v, (float, np.floating)) and not float(v).is_integer():
                    raise ValueError(i)
                out.append(int(v))
            return out
        except (ValueError, TypeError) as e:
            i = e.args[0] if e.args and isinstance(e.args[0], int) else next(
                (j for j, v in enumerate(col) if not _int_like(v)), None)
            raise _data_error(source, name, i, f"expected an int64 id, got {col.iloc[i]!r}" if i is not None else
                              "expected int64 ids", "declare `dtype: string` for non-numeric ids, or fix the value") from None
    if dtype == "string":
        return [str(v) for v in col]
    try:
        return col.to_numpy(dtype=np.float64).tolist()
    except (ValueError, TypeError):
        i = next(j for j, v in enumerate(col) if not _float_like(v))
        raise _data_error(source, name, i, f"expected a number, got {col.iloc[i]!r}", "fix or drop the record") from None


def _int_like(v: Any) -> bool:
    try:
        return float(v).is_integer()
    except (TypeError, ValueError):
        return False


def _float_like(v: Any) -> bool:
    try:
        float(v)
        return True
    except (TypeError, ValueError):
        return False


def _convert_list(col: pd.Series, dtype: str, name: str, source: str, width: int = 1) -> list[list]:
    """Each row -> a flat python list; `width` > 1 flattens vectors (each step must have `width` floats)."""
    out = []
    for i, v in enumerate(col):
        try:
            items = _as_list(v)
        except TypeError as e:
            raise _data_error(source, name, i, f"expected a list, got {e}", "give a list per record") from None
        if width > 1:
            flat = []
            for step in items:
                step = _as_list(step) if not isinstance(step, (int, float)) else [step]
                if len(step) != width:
                    raise _data_error(source, name, i, f"a step has {len(step)} floats, the spec says dim {width}",
                                      "make every vector the declared `dim` or fix `dim` in the spec")
                flat.extend(step)
            items = flat
        try:
            if dtype == "int64":
                items = [int(x) if _int_like(x) else _raise(x) for x in items]
            elif dtype == "string":
                items = [str(x) for x in items]
            else:
                items = [float(x) for x in items]
        except (ValueError, TypeError):
            raise _data_error(source, name, i, f"expected {dtype} values, got {items[:5]!r}",
                              "fix the values or the spec's dtype") from None
        out.append(items)
    return out


def _raise(x):
    raise ValueError(x)


def _vector_column(col: pd.Series, dim: int, name: str, source: str) -> np.ndarray:
    """[n, dim] float32 (kept as one array: per-row Python floats cost ~30x the memory on text vectors)."""
    out = np.empty((len(col), dim), dtype=np.float32)
    for i, v in enumerate(col):
        try:
            row = np.asarray(v if not _is_missing(v) else [], dtype=np.float32).reshape(-1)
        except (TypeError, ValueError):
            raise _data_error(source, name, i, f"expected {dim} floats, got {type(v).__name__}",
                              "give one list/array of floats per record") from None
        if row.shape[0] != dim:
            raise _data_error(source, name, i, f"vector has {row.shape[0]} floats, the spec says dim {dim}",
                              f"make every vector {dim} long or set `dim: {row.shape[0]}` in the spec")
        out[i] = row
    return out


def columns_for_examples(df: pd.DataFrame, spec: FeatureSpec, source: str) -> dict[str, tuple[str, list]]:
    """Validate `df` against `spec`; return {column: (proto kind, per-row values)} ready to serialise. A bad
    value's error names the input file's line (or Parquet row) when the reader recorded it (`__line__`)."""
    try:
        return _columns_for_examples(df, spec, source)
    except RecordError as e:
        origin = _origin(df, e.row) if isinstance(e.row, int) else None
        if origin is None:
            raise
        raise RecordError(e.source, e.feature, e.row, e.record_problem, e.record_fix, origin) from None


def _columns_for_examples(df: pd.DataFrame, spec: FeatureSpec, source: str) -> dict[str, tuple[str, list]]:
    def need(col: str, feature: str):
        if col not in df.columns:
            raise _data_error(source, feature, None, f"column {col!r} is missing from the data",
                              f"add it (the data has: {', '.join(map(str, df.columns[:30]))})")
        return df[col]

    kinds = {"int64": "int64", "string": "bytes"}
    cols: dict[str, tuple[str, list]] = {}
    for f in spec.row_features:
        if isinstance(f, MultiHotFeature):
            cols[f.name] = (kinds[f.dtype], _convert_list(need(f.name, f.name), f.dtype, f.name, source))
            if f.weights:
                w = _convert_list(need(f.weights, f.name), "float", f.weights, source)
                for i, (a, b) in enumerate(zip(cols[f.name][1], w)):
                    if len(a) != len(b):
                        raise _data_error(source, f.weights, i, f"{len(b)} weights for {len(a)} ids",
                                          "give one weight per id")
                cols[f.weights] = ("float", w)
        elif isinstance(f, _Categorical):
            cols[f.name] = (kinds[f.dtype], _convert_scalar(need(f.name, f.name), f.dtype, f.name, source))
        elif isinstance(f, (DenseFeature, LabelFeature)):
            cols[f.name] = ("float", _convert_scalar(need(f.name, f.name), "float", f.name, source))
        elif isinstance(f, (VectorFeature, TextFeature)):
            cols[f.name] = ("float", _vector_column(need(f.name, f.name), f.dim, f.name, source))
        elif isinstance(f, SequenceFeature):
            lengths = None
            for sf in f.fields:
                dtype = sf.dtype if sf.kind == "id" else "float"
                width = sf.dim if sf.kind == "vector" else 1
                values = _convert_list(need(sf.name, sf.name), dtype, sf.name, source, width)
                lens = [len(v) // width for v in values]
                if lengths is None:
                    lengths, first = lens, sf.name
                else:
                    for i, (a, b) in enumerate(zip(lengths, lens)):
                        if a != b:
                            raise _data_error(source, sf.name, i, f"{b} steps while {first!r} has {a}",
                                              "give every field of a sequence the same number of steps")
                # keep the most recent max_len steps (sequences are stored oldest first)
                keep = f.max_len * width
                values = [v[-keep:] if len(v) > keep else v for v in values]
                cols[sf.name] = (kinds.get(dtype, "float"), values)
    return cols


def serialize_rows(cols: dict[str, tuple[str, list]], n: int) -> Callable[[int], bytes]:
    """Return row -> serialized tf.train.Example: encoded column-wise a chunk of rows at a time (data/wire.py),
    byte-identical to building each row's proto and serializing it deterministically (`wire.proto_rows`)."""
    from .wire import row_serializer
    return row_serializer(cols, n)
