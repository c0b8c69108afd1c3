"""Binary-classification metrics for CTR / CVR heads: `auc`, `gauc` (+ `gauc_score`), `logloss`.

All take numpy arrays (or anything `np.asarray` accepts) of shape `[n]` or `[n, 1]` and are vectorised: the
cost is one sort (`auc`: by score; `gauc`: by (group, score)) plus linear passes, so
10M rows take a few seconds on two cores and there is no Python loop over groups.

AUC with ties
-------------
AUC is the probability that a random positive scores above a random negative, a tie counting one half
(Mann-Whitney U / (P * N)); with sample weights each (positive, negative) pair weighs `w_pos * w_neg`. This equals
the trapezoidal area under the ROC curve drawn through one point per distinct score (a block of tied scores is a
diagonal segment), i.e. sklearn's `roc_auc_score`. Computed per block of tied scores `b`:

    AUC = sum_b  P_b * (N_below_b + N_b / 2)  /  (P * N)

where `P_b`, `N_b` are the positive / negative weight in the block and `N_below_b` the negative weight strictly
below it. It is exact for any number of ties: a model that outputs a constant gets exactly 0.5.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ._checks import as_1d, as_binary, as_scores, as_weights, check_same_length

__all__ = ["GAUCResult", "auc", "gauc", "gauc_score", "logloss"]


def _blocks_auc_terms(y: np.ndarray, w: np.ndarray | None, s: np.ndarray, new_group: np.ndarray | None):
    """Per tie block of rows already sorted by (group, score): (block's group index, P_b, N_b, AUC numerator term).

    `w` None means unit weights (exact integer counts). `new_group[i]` is True where row i starts a new group
    (None: one group). Blocks never span two groups.
    """
    n = len(s)
    new_block = np.empty(n, dtype=bool)
    new_block[0] = True
    np.not_equal(s[1:], s[:-1], out=new_block[1:])
    if new_group is not None:
        new_block |= new_group
    starts = np.flatnonzero(new_block)
    if w is None:
        pos_b = np.add.reduceat(y, starts)
        neg_b = np.diff(np.append(starts, n)) - pos_b
    else:
        pos_b = np.add.reduceat(w * y, starts)
        neg_b = np.add.reduceat(w * (1.0 - y), starts)   # not total - pos_b: round-off must not invent a class
    cum_neg = np.cumsum(neg_b)
    below = cum_neg - neg_b                      # negative weight strictly below the block, counted from row 0
    if new_group is None:
        block_group = np.zeros(len(starts), dtype=np.int64)
    else:
        block_group = np.cumsum(new_group)[starts] - 1
        first_block = np.flatnonzero(new_group[starts])   # index of each group's first block
        below = below - below[first_block][block_group]   # ... now counted from the group's first row
    below = np.maximum(below, 0.0)                # cumsum round-off can leave -1e-12 for float weights
    terms = pos_b * (below + 0.5 * neg_b)
    return block_group, pos_b, neg_b, terms


def auc(labels, scores, weights=None) -> float:
    """ROC AUC of `scores` for binary `labels`, ties handled exactly (a tied pair counts 1/2; see module doc).

    Args:
        labels: `[n]` in {0, 1} (bool or numeric).
        scores: `[n]` real scores (logits or probabilities; only their order matters); no NaN, +-inf allowed.
        weights: optional `[n]` non-negative sample weights; a pair (pos, neg) weighs `w_pos * w_neg`, so an
            integer weight equals repeating the row.

    Returns:
        AUC in [0, 1]. **NaN** when only one class is present (or one class has zero total weight): AUC is
        undefined then, and NaN (rather than 0.5 or an error) lets a caller average per-slice AUCs with nanmean.

    Raises:
        ValueError: naming the argument, for a shape / length mismatch, an empty input, NaN, labels outside
            {0, 1}, or negative / all-zero weights.
    """
    y = as_binary("labels", labels)
    s = as_scores("scores", scores)
    check_same_length(("labels", y), ("scores", s))
    w = None if weights is None else as_weights("weights", weights, len(y))
    order = np.argsort(s)    # ties form one block, so their order is irrelevant
    _, pos_b, neg_b, terms = _blocks_auc_terms(y[order], None if w is None else w[order], s[order], None)
    p, q = pos_b.sum(), neg_b.sum()
    if p <= 0 or q <= 0:
        return float("nan")
    return float(min(terms.sum() / (p * q), 1.0))


@dataclass(frozen=True)
class GAUCResult:
    """What `gauc` returns.

    Attributes:
        value: the GAUC; NaN when no group has both classes.
        n_groups: distinct groups in the input.
        n_groups_used: groups with both classes (positive weight in each), which enter the average.
        n_groups_skipped: groups with a single class, left out (`n_groups - n_groups_used`).
        impressions_used: total impressions (sample weight; row count when unweighted) of the used groups.
        impressions_total: the same over all groups.
    """

    value: float
    n_groups: int
    n_groups_used: int
    n_groups_skipped: int
    impressions_used: float
    impressions_total: float

    def __float__(self) -> float:
        return self.value


def _group_codes(groups: np.ndarray) -> np.ndarray:
    """Sortable integer keys for the group ids (integers as they are, anything else via `np.unique`)."""
    if np.issubdtype(groups.dtype, np.integer) or groups.dtype == np.bool_:
        return groups
    if np.issubdtype(groups.dtype, np.floating) and np.isnan(groups).any():
        raise ValueError(f"groups contains NaN (first at index {int(np.flatnonzero(np.isnan(groups))[0])})")
    try:
        return np.unique(groups, return_inverse=True)[1].reshape(-1)
    except TypeError as e:                       # e.g. an object array mixing str and int
        raise ValueError(f"groups must be mutually comparable ids (ints or strings): {e}") from None


def gauc(labels, scores, groups, weights=None) -> GAUCResult:
    """Group AUC (Zhou et al. 2018, "Deep Interest Network", eq. 8), usually grouped by user.

        GAUC = sum_g impressions_g * AUC_g / sum_g impressions_g

    over the groups `g` that have both classes; single-class groups have no AUC and are skipped (counted in the
    result). `AUC_g` is `auc` restricted to the group (ties exact, same weighting); `impressions_g` is the
    number of rows of the group, or the sum of their weights when `weights` is given.

    Vectorised: one sort by (group, score), then per-tie-block sums reduced per group with `bincount`;
    no Python loop over groups.

    Args:
        labels: `[n]` in {0, 1}.
        scores: `[n]` real scores, no NaN.
        groups: `[n]` group ids (ints, strings, ...) - e.g. user ids; rows need not be contiguous per group.
        weights: optional `[n]` non-negative sample weights.

    Returns:
        `GAUCResult` (`float(result)` is the value); see `gauc_score` for the bare float.
    """
    y = as_binary("labels", labels)
    s = as_scores("scores", scores)
    g = as_1d("groups", groups, numeric=False)
    n = check_same_length(("labels", y), ("scores", s), ("groups", g))
    w = None if weights is None else as_weights("weights", weights, n)
    codes = _group_codes(g)
    by_score = np.argsort(s)                    # == lexsort((s, codes)), ~2x faster: stable sort by group
    order = by_score[np.argsort(codes[by_score], kind="stable")]
    cs = codes[order]
    new_group = np.empty(n, dtype=bool)
    new_group[0] = True
    np.not_equal(cs[1:], cs[:-1], out=new_group[1:])
    ws = None if w is None else w[order]
    block_group, pos_b, neg_b, terms = _blocks_auc_terms(y[order], ws, s[order], new_group)
    n_groups = int(new_group.sum())
    p = np.bincount(block_group, weights=pos_b, minlength=n_groups)
    q = np.bincount(block_group, weights=neg_b, minlength=n_groups)
    num = np.bincount(block_group, weights=terms, minlength=n_groups)
    impressions = p + q
    used = (p > 0) & (q > 0)
    n_used = int(used.sum())
    imp_used = float(impressions[used].sum())
    if n_used == 0:
        value = float("nan")
    else:
        auc_g = np.minimum(num[used] / (p[used] * q[used]), 1.0)
        value = float(np.dot(impressions[used], auc_g) / imp_used)
    return GAUCResult(value=value, n_groups=n_groups, n_groups_used=n_used, n_groups_skipped=n_groups - n_used,
                      impressions_used=imp_used, impressions_total=float(impressions.sum()))


def gauc_score(labels, scores, groups, weights=None) -> float:
    """`gauc(...).value`: the GAUC as a plain float (NaN when no group has both classes)."""
    return gauc(labels, scores, groups, weights).value


def logloss(labels, probs, eps: float = 1e-7, weights=None) -> float:
    """Binary cross-entropy (natural log), weighted mean over rows.

        logloss = -sum_i w_i * (y_i * log(p_i) + (1 - y_i) * log(1 - p_i)) / sum_i w_i,  p_i clipped to [eps, 1-eps]

    Args:
        labels: `[n]` in {0, 1}.
        probs: `[n]` predicted probabilities in [0, 1] (apply the sigmoid first; logits are rejected as out of
            range). Clipping keeps a confident mistake finite: at most `-log(eps)` per row (16.1 at 1e-7).
        eps: clipping margin, in (0, 0.5).
        weights: optional `[n]` non-negative sample weights.
    """
    if not (isinstance(eps, (int, float, np.floating)) and 0 < eps < 0.5):
        raise ValueError(f"eps must be in (0, 0.5), got {eps!r}")
    y = as_binary("labels", labels)
    p = as_scores("probs", probs, allow_inf=False)
    check_same_length(("labels", y), ("probs", p))
    w = as_weights("weights", weights, len(y))
    out = (p < 0) | (p > 1)
    if out.any():
        i = int(np.flatnonzero(out)[0])
        raise ValueError(f"probs must be probabilities in [0, 1], got {p[i]!r} at index {i} (pass sigmoid(logits))")
    p = np.clip(p, eps, 1.0 - eps)
    # log of the probability given to the observed class: one log per row instead of two.
    ll = np.log(np.where(y == 1, p, 1.0 - p))
    return float(-np.dot(w, ll) / w.sum())
