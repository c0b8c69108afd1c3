"""From an interaction log (user, item, time, label, ...) to examples with leakage-free history sequences.

Splits (per user, in time order):
* `time`: each user's last `test_frac` interactions -> test, the `valid_frac` before them -> valid, the rest train.
* `leave_one_out`: last -> test, second to last -> valid (users with fewer than 3 interactions: all train).
* `random`: each interaction independently, seeded.

History rule: interaction i may appear in the history of example j only if i comes before j in the user's
time order (ties keep the log's order) and i's split is not later than j's (train < valid < test). So a test
interaction never appears in a training or validation history, whatever the split method.
"""
from __future__ import annotations

from collections import deque
from typing import Sequence

import numpy as np
import pandas as pd

from ..features.spec import FeatureSpec, SequenceFeature

SPLITS = ("train", "valid", "test")
SPLIT_METHODS = ("time", "leave_one_out", "random")


def numeric_time(log: pd.DataFrame, time: str, source: str) -> pd.DataFrame:
    """The log with its time column as numbers (timestamps, or ISO dates as nanoseconds since the epoch): a text
    column would sort "10" before "9", and a missing time would sort anywhere. Either is an error naming the line."""
    from .examples import RecordError, source_origin

    col = log[time]
    if pd.api.types.is_datetime64_any_dtype(col):
        parsed = col.astype("int64").astype("float64").where(col.notna())
    elif pd.api.types.is_numeric_dtype(col) and not pd.api.types.is_bool_dtype(col):
        parsed = col
    else:
        parsed = pd.to_numeric(col, errors="coerce")
        if parsed.isna().any() and col.notna().any():
            as_dates = pd.to_datetime(col, errors="coerce", format="ISO8601")
            if (as_dates.notna() | col.isna()).all():
                parsed = as_dates.astype("int64").astype("float64").where(as_dates.notna())
    bad = np.flatnonzero(parsed.isna().to_numpy() | ~np.isfinite(parsed.to_numpy(np.float64, na_value=np.nan)))
    if bad.size:
        row = int(bad[0])
        value = col.iloc[row]
        problem = "the time is missing" if pd.isna(value) else f"time {str(value)[:40]!r} is not a number or an ISO date"
        raise RecordError(source, time, row, f"{problem} ({bad.size} such row(s))",
                          "give every row a numeric timestamp (or an ISO 8601 date): rows are ordered by it",
                          source_origin(log, row))
    if parsed is col:
        return log
    log = log.copy()
    log[time] = parsed
    return log


def chronological(log: pd.DataFrame, user: str, time: str) -> pd.DataFrame:
    """The log sorted by user then time; ties keep the original order (stable sort)."""
    return log.sort_values([user, time], kind="stable").reset_index(drop=True)


def assign_splits(log: pd.DataFrame, user: str, method: str = "time", *, valid_frac: float = 0.1,
                  test_frac: float = 0.1, seed: int = 0) -> np.ndarray:
    """Split rank per row (0 train, 1 valid, 2 test) of a log already sorted by `chronological`."""
    if method not in SPLIT_METHODS:
        raise ValueError(f"unknown split {method!r}; use one of {', '.join(SPLIT_METHODS)}")
    n = len(log)
    if method == "random":
        r = np.random.default_rng(seed).random(n)
        return np.where(r < test_frac, 2, np.where(r < test_frac + valid_frac, 1, 0)).astype(np.int8)
    users = log[user].to_numpy()
    starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]])
    sizes = np.diff(np.r_[starts, n])
    pos = np.arange(n) - np.repeat(starts, sizes)       # position within the user's history
    size = np.repeat(sizes, sizes)
    from_end = size - pos                                  # 1 = the user's last interaction
    if method == "leave_one_out":
        enough = size >= 3
        return np.where(enough & (from_end == 1), 2, np.where(enough & (from_end == 2), 1, 0)).astype(np.int8)
    n_test = np.floor(size * test_frac).astype(int)
    n_valid = np.floor(size * valid_frac).astype(int)
    return np.where(from_end <= n_test, 2, np.where(from_end <= n_test + n_valid, 1, 0)).astype(np.int8)


def attach_histories(log: pd.DataFrame, spec: FeatureSpec, user: str, split_rank: np.ndarray,
                     sequences: Sequence[SequenceFeature] | None = None) -> pd.DataFrame:
    """Add one list column per sequence field holding the example's history (oldest first, last max_len steps).

    `log` must be sorted by `chronological`. Each field takes its values from its `source` column (default: its
    own name). With `only_positive: LABEL` a sequence keeps only earlier interactions whose LABEL is 1.
    """
    sequences = list(sequences if sequences is not None else spec.of_kind("sequence"))
    out = log.copy()
    users = log[user].to_numpy()
    ranks = np.asarray(split_rank)
    for seq in sequences:
        sources = [(sf.name, log[sf.source or sf.name].to_numpy()) for sf in seq.fields]
        keep = (log[seq.only_positive].to_numpy() >= 0.5) if seq.only_positive else np.ones(len(log), bool)
        columns = {name: [None] * len(log) for name, _ in sources}
        # one bounded deque of eligible positions per split rank: `eligible[r]` holds rows of rank <= r
        eligible: list[deque] = []
        prev_user = object()
        for i in range(len(log)):
            if users[i] != prev_user:
                eligible = [deque(maxlen=seq.max_len) for _ in SPLITS]
                prev_user = users[i]
            hist = list(eligible[ranks[i]])
            for name, values in sources:
                columns[name][i] = values[hist].tolist() if hist else []
            if keep[i]:
                for r in range(ranks[i], len(SPLITS)):
                    eligible[r].append(i)
        for name, values in columns.items():
            out[name] = values
    return out


def split_frames(log: pd.DataFrame, split_rank: np.ndarray) -> dict[str, pd.DataFrame]:
    """{'train': ..., 'valid': ..., 'test': ...} (empty splits dropped)."""
    out = {}
    for r, name in enumerate(SPLITS):
        part = log[np.asarray(split_rank) == r].reset_index(drop=True)
        if len(part) or name == "train":
            out[name] = part
    return out


def describe_splits(splits: dict[str, pd.DataFrame], user: str | None, item: str | None) -> pd.DataFrame:
    """rows / users / items per split, the table every builder prints."""
    rows = []
    for name, df in splits.items():
        rows.append({"split": name, "rows": len(df),
                     "users": int(df[user].nunique()) if user and user in df else None,
                     "items": int(df[item].nunique()) if item and item in df else None})
    return pd.DataFrame(rows).set_index("split")
