"""Reading user files (CSV / TSV / Parquet) into DataFrames shaped the way a spec expects.

`read_table` checks what pandas lets through or reports without a file name: empty files, a header without rows,
duplicate or empty column names, rows with more or fewer fields than the header, bytes that are not UTF-8. Each
error names the file, its line and the column. It also records where every row came from (`__line__`: the CSV
line, header = line 1; `__row__`: the Parquet row, from 1) so later errors can name it.

Line numbers cost nothing on the common file (one record per line, no blank lines, no short rows): a count of the
newlines proves that row i sits on line i + 2. Otherwise (blank lines, quoted newlines, a suspect row) one pass of
the `csv` module finds each record's first line and the first ragged row.
"""
from __future__ import annotations

import bz2
import csv
import gzip
import io
import json
import lzma
import warnings
from pathlib import Path
from typing import IO

import numpy as np
import pandas as pd

from ..features.spec import FeatureSpec, FeatureSpecError, MultiHotFeature, SequenceFeature, VectorFeature
from .examples import SOURCE_LINE, SOURCE_ROW, source_origin

_OPENERS = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}


def input_error(path: str | Path, where: str, problem: str, fix: str) -> FeatureSpecError:
    """One error line: `FILE: WHERE: PROBLEM. Fix: FIX` (WHERE: `line N, column 'c'`, or empty)."""
    return FeatureSpecError(str(path), where, problem, fix)


def read_table(path: str | Path) -> pd.DataFrame:
    """The file as a DataFrame plus its source column (`__line__` for CSV / TSV, `__row__` for Parquet)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    if path.is_dir():
        raise input_error(path, "", "is a directory", "give one .csv, .tsv or .parquet file")
    suffixes = "".join(path.suffixes[-2:]).lower()
    if path.stat().st_size == 0:
        raise input_error(path, "", "the file is empty (0 bytes)", "give a header line and one row per example")
    if suffixes.endswith((".parquet", ".pq")):
        df = _read_parquet(path)
    elif ".tsv" in suffixes:
        df = _read_delimited(path, "\t")
    elif ".csv" in suffixes:
        df = _read_delimited(path, ",")
    else:
        raise ValueError(f"{path}: unknown table format; give a .csv, .tsv or .parquet file")
    if len(df) == 0:
        raise input_error(path, "", f"has a header ({_names(df.columns)}) but no data rows",
                          "give at least one row per split you want")
    return df


def _names(columns, limit: int = 8) -> str:
    cols = [str(c) for c in columns if c not in (SOURCE_LINE, SOURCE_ROW)]
    return ", ".join(cols[:limit]) + (", ..." if len(cols) > limit else "")


def _read_parquet(path: Path) -> pd.DataFrame:
    import pyarrow.parquet as pq

    try:
        # the names first: pyarrow refuses duplicate names with a message that names neither file nor line
        _check_names(path, list(pq.read_schema(path).names), lambda i: f"column {i + 1}")
        df = pd.read_parquet(path)
    except (OSError, ValueError) as e:  # pyarrow's ArrowInvalid is a ValueError, ArrowIOError an OSError
        if isinstance(e, FeatureSpecError):
            raise
        first = (str(e).strip().splitlines() or [""])[0]
        raise input_error(path, "", f"not a readable Parquet file ({type(e).__name__}: {first})",
                          "rewrite it (e.g. `df.to_parquet(...)`) or give a CSV") from None
    df[SOURCE_ROW] = np.arange(1, len(df) + 1)
    return df


# -- CSV / TSV ---------------------------------------------------------------------------------------------------
def _open_bytes(path: Path) -> IO[bytes]:
    suffix = path.suffix.lower()
    if suffix in (".zip", ".zst", ".tar"):
        raise input_error(path, "", f"{suffix} archives are not read", "decompress it, or compress it as .gz")
    return _OPENERS.get(suffix, open)(path, "rb")


def _open_text(path: Path, errors: str = "strict") -> IO[str]:
    # utf-8-sig: a byte order mark is not part of the first column's name (pandas drops it too)
    return io.TextIOWrapper(_open_bytes(path), encoding="utf-8-sig", errors=errors, newline="")


def _has_bad_bytes(text: str) -> bool:
    """Whether `text`, decoded with errors="surrogateescape", held bytes that are not UTF-8."""
    return any("\udc80" <= c <= "\udcff" for c in text)


def _read_delimited(path: Path, sep: str) -> pd.DataFrame:
    header = _header(path, sep)
    _check_names(path, header, lambda i: f"line 1, column {i + 1}")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", pd.errors.ParserWarning)
        try:
            # index_col=False: pandas otherwise silently turns the first column into the index when the first row
            # has one field more than the header
            df = pd.read_csv(path, sep=sep, index_col=False)
        except UnicodeDecodeError:
            raise _not_utf8(path, sep, header) from None
        except pd.errors.EmptyDataError:
            raise input_error(path, "", "has no header line", "give a header line naming the columns") from None
        except pd.errors.ParserError:
            df = None  # a row with too many fields: the pass below names its line and column
    suspect = df is None or any(issubclass(w.category, pd.errors.ParserWarning) for w in caught)
    # a row with fewer fields than the header reads as missing values at its end
    suspect = suspect or bool(len(df) and df.iloc[:, -1].isna().any())
    if not suspect and _count_lines(path) == len(df) + 1:
        df[SOURCE_LINE] = np.arange(2, len(df) + 2)
        return df
    lines = _record_lines(path, sep, header)
    if df is None or len(lines) != len(df):
        raise input_error(path, "", f"pandas read {'no table' if df is None else f'{len(df)} rows'} where the csv "
                          f"module reads {len(lines)} records", "check the file's quoting (a stray `\"`?)")
    df[SOURCE_LINE] = lines
    return df


def _header(path: Path, sep: str) -> list[str]:
    try:
        # surrogateescape: bad bytes further on (read ahead with the header) are found, with their column, later
        with _open_text(path, errors="surrogateescape") as f:
            header = next(csv.reader(f, delimiter=sep), [])
    except csv.Error as e:
        raise input_error(path, "line 1", f"the header is not valid {_fmt(sep)} ({e})", "fix the header line") from None
    if any(_has_bad_bytes(name) for name in header):
        raise _not_utf8(path, sep, [])
    return header


def _fmt(sep: str) -> str:
    return "TSV" if sep == "\t" else "CSV"


def _check_names(path: Path, names: list[str], where) -> None:
    seen: dict[str, int] = {}
    for i, name in enumerate(names):
        if not name.strip():
            raise input_error(path, where(i), "the header gives this column no name",
                              "name every column (or remove the trailing separator)")
        if name in (SOURCE_LINE, SOURCE_ROW):
            raise input_error(path, f"column {name!r}", "the name is reserved (it records each row's line)",
                              "rename the column")
        if name in seen:
            raise input_error(path, f"column {name!r}", f"appears twice in the header (columns {seen[name] + 1} and "
                              f"{i + 1})", "give each column its own name")
        seen[name] = i


def _count_lines(path: Path) -> int:
    n, last = 0, b"\n"
    with _open_bytes(path) as f:
        for chunk in iter(lambda: f.read(1 << 24), b""):
            n += chunk.count(b"\n")
            last = chunk[-1:]
    return n + (last != b"\n")


def _record_lines(path: Path, sep: str, header: list[str]) -> np.ndarray:
    """The first line of every non-blank record; a record with more or fewer fields than the header is an error."""
    starts: list[int] = []
    with _open_text(path) as f:
        reader = csv.reader(f, delimiter=sep)
        next(reader)
        prev = reader.line_num
        try:
            for row in reader:
                start, prev = prev + 1, reader.line_num
                if not row or (len(row) == 1 and not row[0].strip()):
                    continue  # a blank line: pandas skips it too
                if len(row) != len(header):
                    raise _ragged(path, start, row, header, sep)
                starts.append(start)
        except csv.Error as e:
            raise input_error(path, f"line {reader.line_num}", f"not valid {_fmt(sep)} ({e})",
                              "check the quoting on this line") from None
    return np.asarray(starts, dtype=np.int64)


def _ragged(path: Path, line: int, row: list[str], header: list[str], sep: str) -> FeatureSpecError:
    n, k = len(row), len(header)
    if n > k:
        return input_error(path, f"line {line}, column {header[-1]!r}", f"the row has {n} fields, the header {k}: "
                           f"{row[k]!r} is an extra field after the last column",
                           f"quote values that contain {sep!r} (\"a{sep}b\") or remove the extra field")
    return input_error(path, f"line {line}, column {header[n]!r}", f"the row has {n} fields, the header {k}: "
                       f"no value for {header[n]!r}" + (" and the columns after it" if n + 1 < k else ""),
                       f"add the missing fields (an empty value is written as nothing between two {sep!r})")


def _not_utf8(path: Path, sep: str, header: list[str]) -> FeatureSpecError:
    """Find the first line with bytes that are not UTF-8, and the field holding them."""
    fix = "save the file as UTF-8 (e.g. `iconv -f latin1 -t utf-8 IN > OUT`)"
    with _open_bytes(path) as f:
        for n, raw in enumerate(f, 1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as e:
                text = raw.decode("utf-8", "surrogateescape").rstrip("\r\n")
                fields = next(csv.reader([text], delimiter=sep), [])
                i = next((j for j, v in enumerate(fields) if _has_bad_bytes(v)), None)
                col = (f", column {header[i]!r}" if i is not None and i < len(header) and n > 1
                       else f", field {i + 1}" if i is not None else "")
                return input_error(path, f"line {n}{col}", f"byte 0x{raw[e.start]:02x} is not UTF-8", fix)
    return input_error(path, "", "is not UTF-8 text", fix)


# -- list cells --------------------------------------------------------------------------------------------------
def _parse_list(value, sep: str):
    if not isinstance(value, str):
        return value
    s = value.strip()
    if s.startswith("["):
        return json.loads(s)
    return [] if s == "" else s.split(sep)


def coerce_list_columns(df: pd.DataFrame, spec: FeatureSpec, source: str) -> pd.DataFrame:
    """CSV cells holding lists: a JSON list (`[1, 2]`, `[[0.1, 0.2], ...]`) or `a|b|c`; vectors also `0.1 0.2`."""
    df = df.copy()
    list_cols: list[tuple[str, str]] = []
    for f in spec.row_features:
        if isinstance(f, MultiHotFeature):
            list_cols.append((f.name, "|"))
            if f.weights:
                list_cols.append((f.weights, "|"))
        elif isinstance(f, VectorFeature):
            list_cols.append((f.name, " "))
        elif isinstance(f, SequenceFeature):
            list_cols += [(sf.name, "|") for sf in f.fields]
    for col, sep in list_cols:
        if col in df.columns and (df[col].dtype == object or pd.api.types.is_string_dtype(df[col])):
            values = df[col].tolist()
            parsed = []
            for i, v in enumerate(values):
                try:
                    parsed.append(_parse_list(v, sep))
                except json.JSONDecodeError as e:
                    where = source_origin(df, i) or f"record {i}"
                    raise input_error(source, f"{where}, column {col!r}", f"the cell {_short(v)} is not a valid "
                                      f"JSON list ({e.msg} at character {e.pos + 1})",
                                      "write a list as JSON (`[1, 2]`, quoted in CSV: \"[1, 2]\") or as a|b|c"
                                      ) from None
            df[col] = parsed
    return df


def _short(v, n: int = 40) -> str:
    s = repr(v)
    return s if len(s) <= n else s[: n - 4] + "...'"
