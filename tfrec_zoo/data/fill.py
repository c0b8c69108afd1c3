"""Missing values, filled as the spec says (`fill:` on id / domain / dense features) when a dataset is written.

    - {name: price, kind: dense, fill: median}      # a number, or mean / median of the train split's values
    - {name: brand, kind: id, dtype: string, fill: oov}   # the OOV bucket, or a given id

Without `fill:` a missing value is an error naming the input file, the line and the feature. Statistics come from
the train split only; vocabularies and normalisation statistics are fitted on the values that were there (a fill
never enters a vocabulary). What was filled, and with what, is written to the manifest (`extra.fills`).
Multi-hot lists and sequences need no fill: a missing list is an empty one.
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import pandas as pd

from ..features.spec import DenseFeature, FeatureSpec, FeatureSpecError, _Categorical
from .examples import RecordError, source_origin

# the int64 id a missing value becomes with `fill: oov`: never a vocabulary entry (vocabularies are fitted on the
# unfilled values), so the in-graph lookup sends it to the OOV bucket
OOV_INT = -1


def fill_values(spec: FeatureSpec, train: pd.DataFrame, source: str) -> dict[str, Any]:
    """{feature: the value its missing entries become} for every feature with `fill:` present in the data."""
    out = {}
    for f in spec.row_features:
        fill = getattr(f, "fill", None)
        if fill is None or f.name not in train.columns:
            continue
        if isinstance(f, DenseFeature) and fill in ("mean", "median"):
            values = pd.to_numeric(train[f.name], errors="coerce").to_numpy(np.float64)
            values = values[np.isfinite(values)]
            if not values.size:
                raise FeatureSpecError(source, f"feature {f.name!r}.fill", f"`fill: {fill}` but the train split has "
                                       "no value of it", "give a number instead")
            out[f.name] = float(np.mean(values) if fill == "mean" else np.median(values))
        elif isinstance(f, _Categorical) and fill == "oov":
            out[f.name] = OOV_INT if f.dtype == "int64" else ""
        else:
            out[f.name] = fill
    return out


def fill_missing(splits: Mapping[str, pd.DataFrame], spec: FeatureSpec, source: str
                 ) -> tuple[dict[str, pd.DataFrame], dict[str, Any]]:
    """(splits with missing values filled, {"values": {feature: fill}, "filled": {split: {feature: count}}})."""
    values = fill_values(spec, splits["train"], source)
    if not values:
        return dict(splits), {}
    for name, value in values.items():
        f = spec[name]
        if isinstance(f, _Categorical) and f.fill == "oov" and f.dtype == "int64":
            for split, df in splits.items():
                if (pd.to_numeric(df[name], errors="coerce") == OOV_INT).any():
                    raise FeatureSpecError(source, f"feature {name!r}.fill", f"`fill: oov` stands for id {OOV_INT}, "
                                           f"which is a real id in split {split!r}",
                                           "give an unused id instead, e.g. `fill: -999`")
    out, counts = {}, {}
    for split, df in splits.items():
        df = df.copy()
        for name, value in values.items():
            if name not in df.columns:
                continue
            missing = df[name].isna()
            if missing.any():
                col = df[name].astype(object).where(~missing, value)
                if isinstance(spec[name], DenseFeature) or spec[name].dtype == "int64":
                    col = _numeric(col, df, name, source)
                df[name] = col
                counts.setdefault(split, {})[name] = int(missing.sum())
        out[split] = df
    return out, {"values": values, "filled": counts}


def _numeric(col: pd.Series, df: pd.DataFrame, name: str, source: str) -> pd.Series:
    """The filled column as numbers; a value that is not one is an error naming its line."""
    parsed = pd.to_numeric(col, errors="coerce")
    bad = np.flatnonzero((parsed.isna() & col.notna()).to_numpy())
    if bad.size:
        row = int(bad[0])
        raise RecordError(source, name, row, f"value {str(col.iloc[row])[:60]!r} is not a number "
                          f"({bad.size} such value(s) in the column)",
                          "fix the value: a number, or an empty cell for a missing one", source_origin(df, row))
    return parsed
