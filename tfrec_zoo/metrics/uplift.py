"""Uplift-model evaluation: the uplift and Qini curves, AUUC and the Qini coefficient.

Definitions (Gutierrez & Gerardy 2017, "Causal Inference and Uplift Modelling: A Review of the Literature",
PMLR 67, sec. 4.2; the Qini curve is Radcliffe 2007, "Using control groups to target on predicted lift:
Building and assessing uplift models", Direct Marketing Analytics Journal 1, 14-21). Sort the population by
predicted uplift, highest first; for the top `t` individuals let `N^T_t`, `N^C_t` be the numbers of treated and
control individuals and `Y^T_t`, `Y^C_t` the sums of their outcomes. Then

    uplift curve  f(t) = (Y^T_t / N^T_t - Y^C_t / N^C_t) * (N^T_t + N^C_t)
    Qini curve    g(t) = Y^T_t - Y^C_t * N^T_t / N^C_t

both the estimated incremental outcome obtained by targeting the top t (f rescales the difference of response
rates to all t people; g rescales the control group to the treated group's size). A ratio whose denominator is
0 (no control, or no treated, in the top t yet) is taken as 0, as scikit-uplift does.

Normalisation used here (so values do not grow with n and compare across test sets of different sizes): the
x axis is the fraction targeted `t / n` in [0, 1] and the y axis is the curve divided by `n`, i.e. incremental
outcome per member of the whole population. Then

    auuc  = area under the uplift curve (trapezoid), in outcome units. A random ranking scores about ATE / 2.
    qini  = area between the Qini curve and the random-targeting line from (0, 0) to (1, g(n) / n), i.e.
            area(Qini curve) - g(n) / (2 n). Positive: better than random; 0: random; negative: worse.

(Radcliffe's Qini coefficient further divides by the same area for an optimal ranking; that is not done here.)

Ties: individuals with equal predicted uplift form one block whose internal order is arbitrary, so the curves
get one point per distinct score (a straight segment across a block, as ROC curves do), which makes the result
independent of the input order. With `bins=B`, the curve is instead evaluated at t = n * i / B (i = 0..B; the
classic decile table for B = 10), the cumulative counts being interpolated linearly inside a block of ties.
"""
from __future__ import annotations

import numpy as np

from ._checks import as_binary, as_scores, check_same_length

__all__ = ["auuc", "qini", "qini_curve", "uplift_curve"]


def _cumulative(treatment, outcome, uplift_scores, bins: int | None):
    """(t, N^T_t, N^C_t, Y^T_t, Y^C_t, n) at the curve's points, t = 0 included."""
    tr = as_binary("treatment", treatment)
    y = as_scores("outcome", outcome, allow_inf=False)
    s = as_scores("uplift_scores", uplift_scores)
    n = check_same_length(("treatment", tr), ("outcome", y), ("uplift_scores", s))
    n_t = int(tr.sum())
    if n_t == 0 or n_t == n:
        raise ValueError(f"treatment must contain both treated (1) and control (0) individuals, got {n_t} treated "
                         f"of {n}")
    if bins is not None and (isinstance(bins, bool) or not isinstance(bins, (int, np.integer)) or bins < 1):
        raise ValueError(f"bins must be a positive integer or None, got {bins!r}")
    order = np.argsort(-s, kind="stable")
    s, tr, y = s[order], tr[order], y[order]
    ends = np.append(np.flatnonzero(s[1:] != s[:-1]) + 1, n)        # one point after each block of tied scores
    cum = np.cumsum(np.stack([tr, 1.0 - tr, tr * y, (1.0 - tr) * y]), axis=1)[:, ends - 1]
    t = np.concatenate([[0.0], ends.astype(np.float64)])
    cum = np.concatenate([np.zeros((4, 1)), cum], axis=1)
    if bins is not None:
        grid = n * np.arange(bins + 1, dtype=np.float64) / bins
        cum = np.stack([np.interp(grid, t, c) for c in cum])
        t = grid
    nt, nc, yt, yc = cum
    return t, nt, nc, yt, yc, n


def _ratio(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a / b, 0 where b == 0."""
    return np.divide(a, b, out=np.zeros_like(a), where=b > 0)


def uplift_curve(treatment, outcome, uplift_scores, bins: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The normalised uplift curve: x = fraction targeted, y = f(t) / n (module doc); both start at 0.

    Args: as `auuc`.

    Returns:
        `(x, y)` float64 arrays of equal length.
    """
    t, nt, nc, yt, yc, n = _cumulative(treatment, outcome, uplift_scores, bins)
    f = (_ratio(yt, nt) - _ratio(yc, nc)) * (nt + nc)
    return t / n, f / n


def qini_curve(treatment, outcome, uplift_scores, bins: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The normalised Qini curve: x = fraction targeted, y = g(t) / n (module doc); both start at 0.

    Args: as `auuc`.

    Returns:
        `(x, y)` float64 arrays of equal length.
    """
    t, nt, nc, yt, yc, n = _cumulative(treatment, outcome, uplift_scores, bins)
    g = yt - yc * _ratio(nt, nc)
    return t / n, g / n


def _area(x: np.ndarray, y: np.ndarray) -> float:
    return float(np.sum(np.diff(x) * (y[1:] + y[:-1])) / 2.0)


def auuc(treatment, outcome, uplift_scores, bins: int | None = None) -> float:
    """Area under the (normalised) uplift curve, Gutierrez & Gerardy 2017 (module doc).

    Args:
        treatment: `[n]` in {0, 1} (1 = treated); both groups must be present.
        outcome: `[n]` finite outcomes (binary conversions or continuous, e.g. revenue).
        uplift_scores: `[n]` predicted uplift; only the order matters, higher = target first. No NaN.
        bins: None for one point per distinct score (exact); or B to evaluate the curve at B equal-size
            quantiles of the ranking (coarser; matches decile-based reports for B = 10).

    Returns:
        Area in outcome units per individual, x in [0, 1]; a random ranking gets about ATE / 2, so compare
        models on the same data (or use `qini`, which subtracts the random baseline).
    """
    return _area(*uplift_curve(treatment, outcome, uplift_scores, bins))


def qini(treatment, outcome, uplift_scores, bins: int | None = None) -> float:
    """Qini coefficient: area between the (normalised) Qini curve and the random-targeting line (module doc).

    `area(Qini curve) - g(n) / (2 n)`, Radcliffe 2007 / Gutierrez & Gerardy 2017, without Radcliffe's division
    by the optimal model's area. > 0 is better than random targeting, 0 random, < 0 worse (e.g. a reversed
    ranking). Arguments as `auuc`.
    """
    x, y = qini_curve(treatment, outcome, uplift_scores, bins)
    return _area(x, y) - float(y[-1]) / 2.0
