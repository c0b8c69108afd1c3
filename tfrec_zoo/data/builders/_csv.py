"""Reading a raw CSV with its columns checked: every bad value is one error naming the file, the line and the
column (pandas alone would say `could not convert string to float: 'abc'`, or `No columns to parse from file`)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

_WANT = {"int": "a whole number", "binary": "0 or 1", "float": "a number", "text": "a non-empty value"}


def read_checked_csv(path: Path, kinds: dict[str, str], *, names: list[str] | None = None,
                     missing_fix: str = "") -> pd.DataFrame:
    """The CSV at `path` (a header line, or none when `names` are given) with `kinds` {column: "int" | "binary" |
    "float" | "text" | "text?"} checked and typed; "text?" may be empty. Raises FileNotFoundError (with
    `missing_fix`) or one ValueError naming the file, its line and the column."""
    if not path.exists():
        raise FileNotFoundError(f"{path}: missing" + (f". Fix: {missing_fix}" if missing_fix else ""))
    try:
        raw = pd.read_csv(path, dtype=str, keep_default_na=False, header=None if names else "infer", names=names)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not a readable CSV ({str(e).strip().splitlines()[0]})") from None
    missing = [c for c in kinds if c not in raw.columns]
    if missing:
        raise ValueError(f"{path}: columns {missing} are missing (the file has {list(raw.columns)})")
    if raw.empty:
        raise ValueError(f"{path}: no rows")
    first_line = 1 if names else 2
    out = {}
    for col, kind in kinds.items():
        values = raw[col].str.strip()
        if kind in ("int", "binary", "float"):
            num = pd.to_numeric(values, errors="coerce")
            bad = num.isna() | (~np.isfinite(num) if kind == "float" else num != num.round())
            if kind == "binary":
                bad |= ~num.isin([0, 1])
            out[col] = num.where(~bad, 0).astype(np.float64 if kind == "float" else np.int64)
        else:
            bad = (values == "") if kind == "text" else pd.Series(False, index=values.index)
            out[col] = values.where(values != "", None)
        if bad.any():
            i = int(np.flatnonzero(bad.to_numpy())[0])
            raise ValueError(f"{path}:{i + first_line}: column {col!r} is {raw[col].iloc[i]!r}, expected "
                             f"{_WANT[kind]}")
    return pd.DataFrame(out)
