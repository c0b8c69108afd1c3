"""Input validation shared by the metrics: every check raises `ValueError` naming the offending argument.

Arrays are converted with `np.asarray`; a column vector `[n, 1]` (what `model.predict` returns for a single
logit head) is accepted where a 1-D `[n]` array is expected and flattened, any other shape is an error. Nothing
broadcasts silently: `[n]` against `[n, 1]` is the classic bug that turns a metric into garbage.
"""
from __future__ import annotations

from collections.abc import Iterable

import numpy as np

__all__ = [
    "as_1d", "as_binary", "as_scores", "as_weights", "as_ks", "check_same_length",
]


def as_1d(name: str, x, *, numeric: bool = True) -> np.ndarray:
    """`x` as a non-empty 1-D array (`[n, 1]` is flattened); numeric unless `numeric=False`."""
    arr = np.asarray(x)
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr.reshape(-1)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D (shape [n] or [n, 1]), got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{name} is empty")
    if numeric and not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_):
        raise ValueError(f"{name} must be numeric, got dtype {arr.dtype}")
    return arr


def _check_finite(name: str, arr: np.ndarray, *, allow_inf: bool) -> None:
    if not np.issubdtype(arr.dtype, np.floating):
        return
    if np.isnan(arr).any():
        raise ValueError(f"{name} contains NaN (first at index {int(np.flatnonzero(np.isnan(arr))[0])})")
    if not allow_inf and np.isinf(arr).any():
        raise ValueError(f"{name} contains +-inf (first at index {int(np.flatnonzero(np.isinf(arr))[0])})")


def as_scores(name: str, x, *, allow_inf: bool = True, ndim: int = 1) -> np.ndarray:
    """Float64 scores with no NaN (`inf` allowed unless `allow_inf=False`); `ndim=2` wants a non-empty `[n, m]`."""
    if ndim == 1:
        arr = as_1d(name, x)
    else:
        arr = np.asarray(x)
        if arr.ndim != 2:
            raise ValueError(f"{name} must be 2-D (shape [n, m]), got shape {arr.shape}")
        if arr.size == 0:
            raise ValueError(f"{name} is empty (shape {arr.shape})")
        if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_):
            raise ValueError(f"{name} must be numeric, got dtype {arr.dtype}")
    _check_finite(name, arr, allow_inf=allow_inf)
    return arr.astype(np.float64, copy=False)


def as_binary(name: str, x) -> np.ndarray:
    """0/1 (or bool) labels as a float64 array of 0.0 and 1.0; anything else (2, 0.5, -1, NaN) is an error."""
    arr = as_1d(name, x)
    if arr.dtype == np.bool_:
        return arr.astype(np.float64)
    _check_finite(name, arr, allow_inf=False)
    bad = (arr != 0) & (arr != 1)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"{name} must contain only 0 and 1, got {arr[i]!r} at index {i}")
    return arr.astype(np.float64, copy=False)


def as_weights(name: str, x, n: int) -> np.ndarray:
    """Sample weights: `[n]`, finite, non-negative, not all zero; `None` means all ones."""
    if x is None:
        return np.ones(n, dtype=np.float64)
    arr = as_scores(name, x, allow_inf=False)
    check_same_length(("weights", arr), n=n, ref_name="labels")
    if (arr < 0).any():
        i = int(np.flatnonzero(arr < 0)[0])
        raise ValueError(f"{name} must be non-negative, got {arr[i]!r} at index {i}")
    if not arr.any():
        raise ValueError(f"{name} are all zero")
    return arr


def check_same_length(*named: tuple[str, np.ndarray], n: int | None = None, ref_name: str | None = None) -> int:
    """All arrays have the same first dimension (or `n`, the length of `ref_name`); returns it."""
    if n is None:
        ref_name, first = named[0]
        n = len(first)
        named = named[1:]
    for name, arr in named:
        if len(arr) != n:
            raise ValueError(f"{name} has length {len(arr)} but {ref_name} has length {n}")
    return n


def as_ks(name: str, ks: Iterable[int] | int, *, max_k: int | None = None) -> tuple[int, ...]:
    """Cut-offs: positive ints, de-duplicated, in the order given; each `<= max_k` when that is set."""
    if isinstance(ks, (int, np.integer)):
        ks = (ks,)
    out: list[int] = []
    for k in list(ks):
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"{name} must be positive integers, got {k!r}")
        if max_k is not None and k > max_k:
            raise ValueError(f"{name} contains {int(k)} but only {max_k} items are ranked per row")
        if int(k) not in out:
            out.append(int(k))
    if not out:
        raise ValueError(f"{name} is empty")
    return tuple(out)
