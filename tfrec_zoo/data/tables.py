"""Reading user files (CSV / TSV / Parquet) into DataFrames shaped the way a spec expects."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from ..features.spec import FeatureSpec, MultiHotFeature, SequenceFeature, VectorFeature


def read_table(path: str | Path) -> pd.DataFrame:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    suffixes = "".join(path.suffixes[-2:]).lower()
    if suffixes.endswith(".parquet") or suffixes.endswith(".pq"):
        return pd.read_parquet(path)
    if ".tsv" in suffixes:
        return pd.read_csv(path, sep="\t")
    if ".csv" in suffixes:
        return pd.read_csv(path)
    raise ValueError(f"{path}: unknown table format; give a .csv, .tsv or .parquet file")


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
            try:
                df[col] = [_parse_list(v, sep) for v in df[col]]
            except json.JSONDecodeError as e:
                raise ValueError(f"{source}: column {col!r}: a cell is not a valid JSON list ({e})") from None
    return df
