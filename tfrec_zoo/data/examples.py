"""Turning DataFrame columns into tf.train.Example records, with the checks that make bad input fail loudly.

Column conventions (one row = one example): id/domain/dense/label -> a scalar; multi_hot -> a list (its `weights`
column a list of floats of the same length); vector -> `dim` floats; sequence -> one list column per field, all of
one length per row (a vector field holds a list of `dim`-float vectors). Text features are encoded to vectors before
they get here (see `writer.encode_text_features`).
"""
from __future__ import annotations

import itertools
import math
from typing import Any, Callable

import numpy as np
import pandas as pd

from ..features.spec import (
    DenseFeature, FeatureSpec, FeatureSpecError, LabelFeature, MultiHotFeature, SequenceFeature, TextFeature,
    VectorFeature, _Categorical,
)

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


def source_origin(df: pd.DataFrame, row: int) -> str | None:
    """Where row `row` of `df` came from in the input file (`line 7`, `row 3`), when the reader recorded it."""
    for col, word in ((SOURCE_LINE, "line"), (SOURCE_ROW, "row")):
        if col in df.columns and 0 <= row < len(df):
            return f"{word} {int(df[col].iloc[row])}"
    return None


def _is_missing(v: Any) -> bool:
    return v is None or v is pd.NA or v is pd.NaT or (isinstance(v, (float, np.floating)) and math.isnan(v))


def _as_list(v: Any) -> list:
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, (list, tuple)):
        return list(v)
    if _is_missing(v):
        return []
    raise TypeError(type(v).__name__)


_I64_MIN, _I64_MAX = -(1 << 63), (1 << 63) - 1
_EXACT_FLOAT = float(1 << 53)   # beyond this a float64 no longer holds every integer: an id would lose digits
_F32_MAX = float(np.finfo(np.float32).max)
_ID_FIX = "write ids as whole numbers (no exponent, no decimals), or declare `dtype: string` if they are not numbers"


def _show(v: Any, n: int = 60) -> str:
    s = repr(v.item() if isinstance(v, np.generic) else v)
    return s if len(s) <= n else s[: n - 3] + "..."


def _to_int64(v: Any) -> int:
    """An int64 id from an int, an integral float or a decimal string; ValueError(why not) otherwise."""
    if isinstance(v, (bool, np.bool_)):       # `[true]` in a JSON list is a mistake, not the id 1
        raise ValueError("a bool, not a number")
    if isinstance(v, (int, np.integer)):
        i = int(v)
    elif isinstance(v, (float, np.floating)):
        f = float(v)
        if not f.is_integer():
            raise ValueError("not a whole number")
        i = int(f)
        if _I64_MIN <= i <= _I64_MAX and abs(f) > _EXACT_FLOAT:
            raise ValueError("a float beyond 2^53 has lost digits (the column was read as floats)")
    elif isinstance(v, str):
        try:
            i = int(v.strip())
        except ValueError:
            try:
                f = float(v)
            except ValueError:
                raise ValueError("not a number") from None
            return _to_int64(f)
    else:
        raise ValueError(f"a {type(v).__name__}, not a number")
    if not _I64_MIN <= i <= _I64_MAX:
        raise ValueError("outside the int64 range, about -9.2e18 .. 9.2e18")
    return i


def _id_text(v: Any) -> str:
    """A string id from a string or a number; anything else (a dict, a list, null, a bool) is a mistake."""
    if isinstance(v, str):
        return str(v)
    if isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_)):
        return str(v.item() if isinstance(v, np.generic) else v)
    raise ValueError(f"a {type(v).__name__}, not a string or a number")


def _non_finite(v: float) -> str:
    return f"value is {v}" if not math.isfinite(v) else f"value {v:g} does not fit a float32"


def _as_array(values: Any) -> np.ndarray | None:
    """`values` as a 1-d numpy array when numpy can make one (None: nested or mixed values, checked one by one)."""
    if isinstance(values, np.ndarray):
        return values if values.ndim == 1 else None
    try:
        arr = np.asarray(values)
    except (ValueError, TypeError, OverflowError):
        return None
    return arr if arr.ndim == 1 else None


def _int64_values(values: Any) -> list[int]:
    """Whole numbers as int64; ValueError(index, why) at the first value that is not one."""
    arr = _as_array(values)
    if arr is not None:
        kind = arr.dtype.kind
        if kind in "ib" or (kind == "u" and (arr.size == 0 or arr.max() <= _I64_MAX)):
            return arr.astype(np.int64).tolist()
        if kind == "U":     # ids split from `1|2|3` cells: numpy parses plain integers; anything else is checked below
            try:
                return arr.astype(np.int64).tolist()
            except (ValueError, OverflowError):
                pass
        if kind == "f":
            with np.errstate(invalid="ignore"):
                ok = np.isfinite(arr) & (np.floor(arr) == arr) & (np.abs(arr) <= _EXACT_FLOAT)
            if ok.all():
                return arr.astype(np.int64).tolist()
    out = []
    for i, v in enumerate(values):
        try:
            out.append(_to_int64(v))
        except ValueError as e:
            raise ValueError(i, str(e)) from None
    return out


def _float_values(values: Any) -> list[float]:
    """Finite numbers a float32 holds; ValueError(index, why) at the first other value."""
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        arr = None
    if arr is None or arr.ndim != 1:
        i = next((j for j, v in enumerate(values) if not _float_like(v)), 0)
        raise ValueError(i, f"{_show(values[i])} is not a number")
    bad = np.flatnonzero(~(np.abs(arr) <= _F32_MAX))      # nan, +-inf, and what a float32 cannot hold
    if bad.size:
        raise ValueError(int(bad[0]), _non_finite(float(arr[bad[0]])))
    return arr.tolist()


def _convert_scalar(col: pd.Series, dtype: str, name: str, source: str) -> list:
    missing = np.flatnonzero(col.isna().to_numpy())
    if missing.size:
        raise _data_error(source, name, int(missing[0]), "value is missing",
                          "give the feature a `fill:` in the spec (e.g. `fill: oov` for ids, `fill: median` for "
                          "floats), or fill or drop the record")
    if dtype == "string":
        values = col.tolist()
        for i, v in enumerate(values):
            if not isinstance(v, str):
                try:
                    values[i] = _id_text(v)
                except ValueError as e:
                    raise _data_error(source, name, i, f"expected a string id, got {_show(v)} ({e})",
                                      "give one string or number per record") from None
        return values
    try:
        return _int64_values(col.to_numpy()) if dtype == "int64" else _float_values(col.to_numpy())
    except ValueError as e:
        i, why = e.args
        if dtype == "int64":
            raise _data_error(source, name, i, f"expected an int64 id, got {_show(col.iloc[i])} ({why})",
                              _ID_FIX) from None
        raise _data_error(source, name, i, why if why.startswith("value") else f"expected a number, got "
                          f"{_show(col.iloc[i])}", "give a finite number, or fix or drop the record") from None


def _float_like(v: Any) -> bool:
    try:
        float(v)
        return True
    except (TypeError, ValueError):
        return False


def _convert_list(col: pd.Series, dtype: str, name: str, source: str, width: int = 1) -> list[list]:
    """Each row -> a flat python list; `width` > 1 flattens vectors (each step must have `width` floats).
    Numbers are converted and checked for the whole column at once (one numpy array), then split into rows."""
    rows = []
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
        rows.append(items)
    fix = {"int64": _ID_FIX, "string": "give a flat list of ids (strings or numbers) per record"}.get(
        dtype, "give a flat list of finite numbers per record")
    convert = {"int64": _int64_row, "string": _string_row}.get(dtype, _float_row)
    for i, items in enumerate(rows):
        try:
            rows[i] = convert(items)
        except (ValueError, TypeError) as e:
            raise _data_error(source, name, i, f"expected a list of {dtype} values, got {_show(items)} ({e})",
                              fix) from None
    if dtype not in ("int64", "string"):
        # finiteness for the whole column at once: one array, not a Python test per value
        lengths = np.fromiter(map(len, rows), np.int64, len(rows))
        flat = np.fromiter(itertools.chain.from_iterable(rows), np.float64, int(lengths.sum()))
        bad = np.flatnonzero(~(np.abs(flat) <= _F32_MAX))      # nan, +-inf, and what a float32 cannot hold
        if bad.size:
            i = int(np.searchsorted(np.cumsum(lengths), bad[0], side="right"))   # the row holding it
            raise _data_error(source, name, i, f"expected a list of {dtype} values, got {_show(rows[i])} "
                              f"({_non_finite(float(flat[bad[0]]))})", fix)
    return rows


def _string_row(items: list) -> list[str]:
    return [x if type(x) is str else _id_text(x) for x in items]


def _int64_row(items: list) -> list[int]:
    """Python ints pass as they are (range-checked by min / max); strings and floats are parsed one by one."""
    types = set(map(type, items))
    if types == {str}:
        try:
            items = [int(x) for x in items]
            types = {int}
        except ValueError:
            pass
    if not types <= {int}:
        items = [_to_int64(x) for x in items]
    elif items and (min(items) < _I64_MIN or max(items) > _I64_MAX):
        raise ValueError("outside the int64 range, about -9.2e18 .. 9.2e18")
    return items


def _float_row(items: list) -> list[float]:
    if set(map(type, items)) <= {float}:
        return items
    try:
        return [float(x) for x in items]
    except (TypeError, ValueError):
        bad = next(x for x in items if not _float_like(x))
        raise ValueError(f"{_show(bad)} is not a number") from None


def _vector_column(col: pd.Series, dim: int, name: str, source: str) -> np.ndarray:
    """[n, dim] float32 (kept as one array: per-row Python floats cost ~30x the memory on text vectors)."""
    out = np.empty((len(col), dim), dtype=np.float32)
    for i, v in enumerate(col):
        try:
            with np.errstate(over="ignore"):      # a value beyond float32 becomes inf: reported below
                row = np.asarray(v if not _is_missing(v) else [], dtype=np.float32).reshape(-1)
        except (TypeError, ValueError):
            raise _data_error(source, name, i, f"expected {dim} floats, got {_show(v)}",
                              "give one list/array of floats per record") from None
        if row.shape[0] != dim:
            raise _data_error(source, name, i, f"vector has {row.shape[0]} floats, the spec says dim {dim}",
                              f"make every vector {dim} long or set `dim: {row.shape[0]}` in the spec")
        out[i] = row
    bad = np.flatnonzero(~np.isfinite(out).all(axis=1))
    if bad.size:
        i = int(bad[0])
        j = int(np.flatnonzero(~np.isfinite(out[i]))[0])
        raise _data_error(source, name, i, f"the vector's value {j} is not a finite float32 "
                          f"({_show(col.iloc[i])})", "give finite numbers, or fix or drop the record")
    return out


def _check_label(values: list[float], f: LabelFeature, source: str) -> None:
    """Binary labels are 0 or 1, multiclass labels a class index; regression labels any finite number."""
    arr = np.asarray(values, dtype=np.float64)
    if f.type == "binary":
        bad, want = (arr != 0) & (arr != 1), "a binary label must be 0 or 1"
        fix = ("fix the value, or declare the label `type: regression` (any number) or `type: multiclass` with "
               "`num_classes: N`")
    elif f.type == "multiclass":
        bad = (arr < 0) | (arr >= (f.num_classes or 0)) | (np.floor(arr) != arr)
        want = f"a multiclass label must be a class index 0..{(f.num_classes or 0) - 1}"
        fix = "fix the value, or raise the label's `num_classes`"
    else:
        return
    idx = np.flatnonzero(bad)
    if idx.size:
        i = int(idx[0])
        raise _data_error(source, f.name, i, f"{want}, got {arr[i]:g}", fix)


def columns_for_examples(df: pd.DataFrame, spec: FeatureSpec, source: str,
                         truncated: dict[str, int] | None = None) -> dict[str, tuple[str, list]]:
    """Validate `df` against `spec`; return {column: (proto kind, per-row values)} ready to serialise. A bad
    value's error names the input file's line (or Parquet row) when the reader recorded it (`__line__`).

    Multi-hot lists and sequences longer than `max_len` keep their last `max_len` values (what the reader keeps
    anyway); `truncated`, when given, receives {feature: rows cut}."""
    try:
        return _columns_for_examples(df, spec, source, truncated if truncated is not None else {})
    except RecordError as e:
        origin = source_origin(df, e.row) if isinstance(e.row, int) else None
        if origin is None:
            raise
        raise RecordError(e.source, e.feature, e.row, e.record_problem, e.record_fix, origin) from None


def _keep_last(values: list[list], keep: int) -> tuple[list[list], int]:
    """Each list cut to its last `keep` items; and how many were cut."""
    cut = sum(len(v) > keep for v in values)
    return ([v[-keep:] if len(v) > keep else v for v in values] if cut else values), cut


def _columns_for_examples(df: pd.DataFrame, spec: FeatureSpec, source: str,
                          truncated: dict[str, int]) -> dict[str, tuple[str, list]]:
    def need(col: str, feature: str):
        if col not in df.columns:
            shown = [c for c in map(str, df.columns) if c not in (SOURCE_LINE, SOURCE_ROW)]
            raise _data_error(source, feature, None, f"column {col!r} is missing from the data",
                              f"add it (the data has: {', '.join(shown[:30])})")
        return df[col]

    kinds = {"int64": "int64", "string": "bytes"}
    cols: dict[str, tuple[str, list]] = {}
    for f in spec.row_features:
        if isinstance(f, MultiHotFeature):
            ids = _convert_list(need(f.name, f.name), f.dtype, f.name, source)
            if f.weights:
                w = _convert_list(need(f.weights, f.name), "float", f.weights, source)
                for i, (a, b) in enumerate(zip(ids, w)):
                    if len(a) != len(b):
                        raise _data_error(source, f.weights, i, f"{len(b)} weights for {len(a)} ids",
                                          "give one weight per id")
                cols[f.weights] = ("float", _keep_last(w, f.max_len)[0])
            ids, cut = _keep_last(ids, f.max_len)
            cols[f.name] = (kinds[f.dtype], ids)
            if cut:
                truncated[f.name] = truncated.get(f.name, 0) + cut
        elif isinstance(f, _Categorical):
            cols[f.name] = (kinds[f.dtype], _convert_scalar(need(f.name, f.name), f.dtype, f.name, source))
        elif isinstance(f, (DenseFeature, LabelFeature)):
            cols[f.name] = ("float", _convert_scalar(need(f.name, f.name), "float", f.name, source))
            if isinstance(f, LabelFeature):
                _check_label(cols[f.name][1], f, source)
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
                values, _ = _keep_last(values, f.max_len * width)
                cols[sf.name] = (kinds.get(dtype, "float"), values)
            cut = sum(n > f.max_len for n in lengths or ())
            if cut:
                truncated[f.name] = truncated.get(f.name, 0) + cut
    return cols


def serialize_rows(cols: dict[str, tuple[str, list]], n: int) -> Callable[[int], bytes]:
    """Return row -> serialized tf.train.Example: encoded column-wise a chunk of rows at a time (data/wire.py),
    byte-identical to building each row's proto and serializing it deterministically (`wire.proto_rows`)."""
    from .wire import row_serializer
    return row_serializer(cols, n)
