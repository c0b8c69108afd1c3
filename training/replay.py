"""The device-cloud replay (seed paper 4): per session step, each mechanism ranks the step's list, and what it
earns there is the outcome O(t) the uplift models and the meta controller learn from.

Mechanisms, numbered as in the paper: 0 = `cloud` (the ranking the cloud made at the session's start, its scores
`cloud_prior`), 1 = `device` (the on-device model re-ranks the cached list with the in-session clicks), 2 =
`refresh` (the cloud model called again with the in-session clicks, `refresh_prior`). A list is one `step_id` of a
session replay dataset (tfrec_zoo/data/builders/sessions.py): its next logged items (label 1) and sampled negatives.

Per list and mechanism (`list_metrics`):
* hit@K: the share of the list's clicked items the mechanism ranks in its top K (HitRate over the L next items);
* ndcg@K: DCG of the top K over the ideal DCG (all clicked items first);
* auc: the share of (clicked, not clicked) pairs ranked right, a tie counting one half (user-averaged AUC is the
  mean over a user's lists, then over users).
Ties in score are broken against the clicked items (a mechanism that scores everything alike earns nothing).

The uplift targets, with the cloud ranking as the control: tau_device = O(1) - O(0), tau_refresh = O(2) - O(0); the
counterfactual label of a step is the mechanism with the largest (estimated) uplift, ties going to the cheaper
one (cloud before device before refresh: [inferred], the paper says argmax).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

MECHANISMS = ("cloud", "device", "refresh")


def list_metrics(step: np.ndarray, label: np.ndarray, score: np.ndarray, k: int = 5) -> pd.DataFrame:
    """One row per list (`step` value, in ascending order): hit@k, ndcg@k, auc, size, clicks."""
    step, label, score = np.asarray(step), np.asarray(label, np.float64), np.asarray(score, np.float64)
    if not (len(step) == len(label) == len(score)):
        raise ValueError(f"step, label and score differ in length: {len(step)}, {len(label)}, {len(score)}")
    if np.isnan(score).any():
        raise ValueError(f"{int(np.isnan(score).sum())} scores are NaN (rows {np.flatnonzero(np.isnan(score))[:5]})")
    # by list, then score descending, then clicked items last among equal scores
    order = np.lexsort((label, -score, step))
    step, label, score = step[order], label[order], score[order]
    lists, start, size = np.unique(step, return_index=True, return_counts=True)
    pos = np.arange(len(step)) - np.repeat(start, size)                 # 0-based rank within the list
    clicks = np.add.reduceat(label, start)
    top = (pos < k) & (label > 0)
    hit = np.add.reduceat(top.astype(float), start) / np.maximum(clicks, 1)
    dcg = np.add.reduceat(np.where(top, 1.0 / np.log2(pos + 2.0), 0.0), start)
    ideal_hits = np.minimum(clicks, k).astype(int)
    discounts = np.r_[0.0, np.cumsum(1.0 / np.log2(np.arange(k) + 2.0))]
    ndcg = dcg / np.where(ideal_hits > 0, discounts[ideal_hits], 1.0)
    auc = _grouped_auc(np.repeat(np.arange(len(lists)), size), label, score, len(lists))
    return pd.DataFrame({"step_id": lists, f"hit@{k}": hit, f"ndcg@{k}": ndcg, "auc": auc, "size": size,
                         "clicks": clicks.astype(int)})


def _grouped_auc(group: np.ndarray, label: np.ndarray, score: np.ndarray, n: int) -> np.ndarray:
    """AUC per group (rows sorted by group), ties counting one half; NaN for a group without both classes."""
    order = np.lexsort((score, group))
    g, y, s = group[order], label[order], score[order]
    # average rank of each score within its group (1-based), ties sharing their mean rank
    start = np.r_[0, np.flatnonzero(np.diff(g)) + 1]
    rank = np.arange(len(g)) - np.repeat(start, np.diff(np.r_[start, len(g)])) + 1.0
    key = np.r_[True, (np.diff(g) != 0) | (np.diff(s) != 0)]
    tie_id = np.cumsum(key) - 1
    mean_rank = np.bincount(tie_id, rank) / np.bincount(tie_id)
    r = mean_rank[tie_id]
    n_pos = np.bincount(g, y > 0, minlength=n)
    n_neg = np.bincount(g, y <= 0, minlength=n)
    pos_rank_sum = np.bincount(g, np.where(y > 0, r, 0.0), minlength=n)
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = (pos_rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)
    return np.where((n_pos > 0) & (n_neg > 0), auc, np.nan)


def step_outcomes(frame: pd.DataFrame, scores: dict[str, str], k: int = 5, outcome: str = "ndcg") -> pd.DataFrame:
    """One row per list of `frame` (columns step_id, user_id, click and a score column per mechanism, `scores` =
    {mechanism: column}): user_id, and `<metric>_<mechanism>` for hit@k, ndcg@k and auc, plus `O_<mechanism>` =
    the chosen `outcome` metric (ndcg, hit or auc)."""
    unknown = sorted(set(scores) - set(MECHANISMS))
    if unknown:
        raise ValueError(f"mechanisms {unknown}: use {', '.join(MECHANISMS)}")
    name = {"ndcg": f"ndcg@{k}", "hit": f"hit@{k}", "auc": "auc"}.get(outcome)
    if name is None:
        raise ValueError(f"outcome {outcome!r}: use ndcg, hit or auc")
    users = frame.groupby("step_id", sort=True)["user_id"].first()
    out = pd.DataFrame({"step_id": users.index.to_numpy(), "user_id": users.to_numpy()})
    for mech, col in scores.items():
        m = list_metrics(frame["step_id"].to_numpy(), frame["click"].to_numpy(), frame[col].to_numpy(), k)
        for metric in (f"hit@{k}", f"ndcg@{k}", "auc"):
            out[f"{metric}_{mech}"] = m[metric].to_numpy()
        out[f"O_{mech}"] = m[name].to_numpy()
    return out


def uplift_targets(outcomes: pd.DataFrame) -> pd.DataFrame:
    """tau_device = O_device - O_cloud, tau_refresh = O_refresh - O_cloud (the cloud ranking is the control)."""
    return pd.DataFrame({"tau_device": outcomes["O_device"] - outcomes["O_cloud"],
                         "tau_refresh": outcomes["O_refresh"] - outcomes["O_cloud"]}, index=outcomes.index)


def counterfactual_label(tau_device: np.ndarray, tau_refresh: np.ndarray) -> np.ndarray:
    """0 cloud / 1 device / 2 refresh: the largest of (0, tau_device, tau_refresh), ties to the lower number."""
    stacked = np.stack([np.zeros_like(np.asarray(tau_device, float)), np.asarray(tau_device, float),
                        np.asarray(tau_refresh, float)], axis=1)
    return np.argmax(stacked, axis=1)          # argmax returns the first of equal maxima


def user_averaged(outcomes: pd.DataFrame, column: str) -> float:
    """The mean over users of the mean over each user's lists (NaN lists left out)."""
    per_user = outcomes.groupby("user_id")[column].mean()
    return float(per_user.mean())


def x_learner_targets(outcome: np.ndarray, served: np.ndarray, mu_hat: np.ndarray, treatment: int,
                      control: int = 0) -> dict[str, np.ndarray]:
    """The X-learner's second-stage targets (Kunzel et al., PNAS 2019) for arm `treatment` against `control`.

    `outcome` [N] is each example's observed outcome (under the arm that served it), `served` [N] that arm's index,
    `mu_hat` [N, arms] the first stage's (T-learner's) predicted outcome per arm. Imputed effects:
        treated rows (served == treatment):  D1 = outcome - mu_hat[:, control]
        control rows (served == control):    D0 = mu_hat[:, treatment] - outcome
    Returns {"d_treated", "mask_treated", "d_control", "mask_control"}: each D is 0 off its mask (a masked label).
    A model fitted on D1 over the treated rows gives tau_1(x), on D0 over the control rows tau_0(x);
    `x_learner_uplift` combines them."""
    outcome, served, mu_hat = np.asarray(outcome, float), np.asarray(served), np.asarray(mu_hat, float)
    if mu_hat.ndim != 2 or len(mu_hat) != len(outcome) or len(served) != len(outcome):
        raise ValueError(f"outcome [N], served [N] and mu_hat [N, arms] disagree: {outcome.shape}, {served.shape}, "
                         f"{mu_hat.shape}")
    treated, ctrl = served == treatment, served == control
    return {"d_treated": np.where(treated, outcome - mu_hat[:, control], 0.0), "mask_treated": treated.astype(float),
            "d_control": np.where(ctrl, mu_hat[:, treatment] - outcome, 0.0), "mask_control": ctrl.astype(float)}


def x_learner_uplift(tau_treated: np.ndarray, tau_control: np.ndarray, propensity) -> np.ndarray:
    """tau(x) = g(x) tau_0(x) + (1 - g(x)) tau_1(x), g = the propensity of the treatment among treatment and
    control: the estimate fitted on the larger group gets the larger weight (Kunzel et al., eq. 9)."""
    g = np.asarray(propensity, float)
    if np.any((g < 0) | (g > 1)):
        raise ValueError("propensity must lie in [0, 1]")
    return g * np.asarray(tau_control, float) + (1 - g) * np.asarray(tau_treated, float)
