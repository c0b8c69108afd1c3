"""Helpers the context-aware builders (`taobao`, `lbsn`) share: strict raw-file reading, geography, and
popularity- and context-matched negative sampling.

Why matched negatives: on real logs most positives are long-tail items a user touched once, while a uniformly drawn
item is usually a popular one the training split has seen, so "item unseen in training" alone separates the labels
(see ../shared/datasets/README.md, Pitfalls). Drawing each negative from the *interaction rows* of the same context
group (same time window, same place, same split) makes its item follow the positives' popularity and recency.
"""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

EARTH_RADIUS_KM = 6371.0088  # mean Earth radius (IUGG)


def read_rows(path: Path, columns: Sequence[tuple[str, str | frozenset]], sep: str = "\t",
              limit_users: tuple[str, int] | None = None) -> pd.DataFrame:
    """Read a header-less delimited file whose columns are `(name, kind)` with kind "int", "float" or a frozenset of
    allowed strings. Any malformed line raises ValueError naming the file and its 1-based line number.

    `limit_users=(column, n)` keeps only rows whose `column` is among the n smallest values (for quick test builds).
    The index is always the 0-based line number, so `index + 1` names a row's line in later error messages.
    """
    if not path.exists():
        raise FileNotFoundError(f"{path}: missing")
    names = [n for n, _ in columns]
    try:
        # blank lines are kept (as missing values) so that row i is always line i + 1
        raw = pd.read_csv(path, sep=sep, header=None, names=names, dtype=str, keep_default_na=False,
                          skip_blank_lines=False, quoting=csv.QUOTE_NONE, engine="c")
    except pd.errors.ParserError as e:  # a line with too many fields; pandas names the line
        raise ValueError(f"{path}: {e}".strip()) from None
    if raw.empty:
        raise ValueError(f"{path}: no rows")
    out = {}
    for name, kind in columns:
        col = raw[name]
        if isinstance(kind, frozenset):
            bad = ~col.isin(kind)
            values = col.to_numpy(dtype=object)
        else:
            values = pd.to_numeric(col, errors="coerce").to_numpy(dtype=np.float64)
            bad = ~np.isfinite(values)
            if kind == "int":
                bad |= ~bad & (values != np.round(values))
        bad = np.asarray(bad)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            want = f"one of {sorted(kind)}" if isinstance(kind, frozenset) else f"a{'n' if kind == 'int' else ''} {kind}"
            raise ValueError(f"{path}:{i + 1}: column {names.index(name) + 1} ({name}) is {raw.iloc[i][name]!r}, "
                             f"expected {want} (line: {sep.join(raw.iloc[i].astype(str))!r})")
        out[name] = values.astype(np.int64) if kind == "int" else values
    df = pd.DataFrame(out)
    if limit_users is not None:
        col, n = limit_users
        df = df[df[col].isin(np.sort(df[col].unique())[:n])]
    return df


def haversine_km(lat1, lon1, lat2, lon2) -> np.ndarray:
    """Great-circle distance in km between arrays of (lat, lon) in degrees."""
    p1, p2 = np.radians(lat1), np.radians(lat2)
    dphi, dlmb = p2 - p1, np.radians(np.asarray(lon2) - np.asarray(lon1))
    a = np.sin(dphi / 2) ** 2 + np.cos(p1) * np.cos(p2) * np.sin(dlmb / 2) ** 2
    return 2 * EARTH_RADIUS_KM * np.arcsin(np.sqrt(np.clip(a, 0.0, 1.0)))


def grid_index(lat, lon, size_deg: float) -> tuple[np.ndarray, np.ndarray]:
    """Row and column of each point on a `size_deg` degree grid (floor, so cells are half-open)."""
    # round first: 40.75 / 0.01 is 4074.999... in floating point and would land in the wrong cell
    scale = 1.0 / size_deg
    return (np.floor(np.round(np.asarray(lat) * scale, 9)).astype(np.int64),
            np.floor(np.round(np.asarray(lon) * scale, 9)).astype(np.int64))


def grid_key(lat, lon, size_deg: float) -> np.ndarray:
    """One int64 key per grid cell (for grouping)."""
    r, c = grid_index(lat, lon, size_deg)
    return r * 1_000_000 + c


def grid_label(lat, lon, size_deg: float) -> np.ndarray:
    """Readable cell ids such as '4074_-7400' (row_col on the grid), stable across datasets and builds."""
    r, c = grid_index(lat, lon, size_deg)
    return np.char.add(np.char.add(r.astype(str), "_"), c.astype(str)).astype(object)


def sample_matched_rows(users: np.ndarray, items: np.ndarray, levels: Sequence[np.ndarray], seed: int,
                        exclude: Mapping[object, set] | None = None, tries: int = 32
                        ) -> tuple[np.ndarray, np.ndarray]:
    """One negative per row: the index of another row whose item the row's user never interacted with.

    `levels` are group keys per row, most specific first (e.g. [split*hour, split*day, split]); a row draws from the
    rows of its own group at the first level that has an eligible row, so an item is drawn in proportion to how
    often it occurs in the group (popularity-matched). `exclude[user]` are the items the user may not get (default:
    all items of the user's rows). Returns (chosen row per row, level used per row). Raises ValueError when a row
    has no eligible row at any level. Deterministic: one generator, rows visited in order.
    """
    n = len(users)
    if exclude is None:
        exclude = pd.Series(items).groupby(users, sort=False).agg(set).to_dict()
    rng = np.random.default_rng(seed)
    groups = []
    for keys in levels:
        order = np.argsort(keys, kind="stable")
        skeys = keys[order]
        groups.append((order, np.searchsorted(skeys, keys, "left"), np.searchsorted(skeys, keys, "right")))
    chosen = np.empty(n, np.int64)
    level_used = np.empty(n, np.int8)
    for i in range(n):
        banned = exclude[users[i]]
        for lv, (order, lo, hi) in enumerate(groups):
            a, b = lo[i], hi[i]
            if a == b:
                continue
            # rejection sampling draws from the group's rows conditioned on eligibility ...
            draws = order[a + rng.integers(0, b - a, tries)]
            ok = [j for j in draws if items[j] not in banned]
            if ok:
                chosen[i], level_used[i] = ok[0], lv
                break
            # ... and when unlucky (or none is eligible) the exact same distribution, by listing the group
            pool = order[a:b]
            pool = pool[~np.isin(items[pool], list(banned))]
            if pool.size:
                chosen[i], level_used[i] = pool[rng.integers(0, pool.size)], lv
                break
        else:
            raise ValueError(f"user {users[i]}: no item left to sample a negative from (row {i}): every item is "
                             "one the user interacted with; build with more users")
    return chosen, level_used


def uniform_items(users: np.ndarray, items: np.ndarray, seed: int) -> np.ndarray:
    """One item per row drawn uniformly from all distinct items the row's user never interacted with: the naive
    sampler, kept only to measure the pitfall it causes."""
    exclude = pd.Series(items).groupby(users, sort=False).agg(set).to_dict()
    catalog = np.unique(items)
    rng = np.random.default_rng(seed)
    out = np.empty(len(users), dtype=catalog.dtype)
    for i, u in enumerate(users):
        x = catalog[rng.integers(0, catalog.size)]
        while x in exclude[u]:
            x = catalog[rng.integers(0, catalog.size)]
        out[i] = x
    return out


def unseen_rate(items: np.ndarray, known: set) -> float:
    """Share of `items` that are not in `known` (e.g. test items never seen in training)."""
    items = np.asarray(items)
    return float(np.mean([x not in known for x in items.tolist()])) if items.size else float("nan")


def interleave_negatives(pos: pd.DataFrame, neg: pd.DataFrame, ranks: np.ndarray) -> tuple[pd.DataFrame, np.ndarray]:
    """Rows pos[0], neg[0], pos[1], neg[1], ... and their split ranks (each negative in its positive's split)."""
    both = pd.concat([pos, neg], ignore_index=True)
    n = len(pos)
    order = np.empty(2 * n, np.int64)
    order[0::2], order[1::2] = np.arange(n), np.arange(n, 2 * n)
    return both.iloc[order].reset_index(drop=True), np.repeat(np.asarray(ranks), 2)
