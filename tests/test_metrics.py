"""tfrec_zoo.metrics: exact values computed by hand (worked in the comments), brute-force references, validation."""
from __future__ import annotations

import math

import numpy as np
import pytest

from tfrec_zoo.metrics import (
    GAUCResult, auc, auuc, gauc, gauc_score, logloss, qini, qini_curve, retrieval_metrics, sampled_ranking_metrics,
    uplift_curve,
)


def _pairwise_auc(y, s, w=None):
    """Brute force over all (pos, neg) pairs: win 1, tie 1/2, weighted w_pos * w_neg."""
    y, s = np.asarray(y), np.asarray(s, dtype=float)
    w = np.ones(len(y)) if w is None else np.asarray(w, dtype=float)
    pos, neg = y == 1, y == 0
    sp, sn = s[pos][:, None], s[neg][None, :]
    ww = w[pos][:, None] * w[neg][None, :]
    return float((ww * ((sp > sn) + 0.5 * (sp == sn))).sum() / ww.sum())


# ------------------------------------------------------------------------------------------------ auc

def test_auc_hand():
    # positives 0.35, 0.8; negatives 0.1, 0.4. Pairs: 0.35>0.1 win, 0.35<0.4 loss, 0.8>0.1 win, 0.8>0.4 win -> 3/4.
    assert auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)


def test_auc_ties_hand():
    # positives 0.5, 0.9; negatives 0.5, 0.2. 0.5 vs 0.5 tie -> 1/2, 0.5>0.2 -> 1, 0.9 beats both -> 2.
    # (0.5 + 1 + 2) / 4 = 0.875.
    assert auc([0, 1, 0, 1], [0.5, 0.5, 0.2, 0.9]) == pytest.approx(0.875)
    # A constant model: every pair ties -> exactly 0.5, whatever the row order.
    assert auc([1, 0, 0, 1, 0], [3.0] * 5) == 0.5


def test_auc_weighted_hand():
    # weights: neg 0.1 -> 1, neg 0.4 -> 2, pos 0.35 -> 3, pos 0.8 -> 1. Pair weight w_pos * w_neg:
    # (0.35, 0.1) win 3*1 = 3; (0.35, 0.4) loss 3*2 -> 0; (0.8, 0.1) win 1*1 = 1; (0.8, 0.4) win 1*2 = 2.
    # numerator 6, denominator (3 + 1) * (1 + 2) = 12 -> 0.5.
    assert auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8], weights=[1, 2, 3, 1]) == pytest.approx(0.5)
    # An integer weight equals repeating the row.
    assert auc([0, 0, 0, 1, 1, 1, 1], [0.1, 0.4, 0.4, 0.35, 0.35, 0.35, 0.8]) == pytest.approx(0.5)


def test_auc_matches_brute_force_with_ties_and_weights():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 400)
    s = rng.integers(0, 15, 400).astype(float)            # many ties
    w = rng.random(400) * 3
    assert auc(y, s) == pytest.approx(_pairwise_auc(y, s), abs=1e-12)
    assert auc(y, s, w) == pytest.approx(_pairwise_auc(y, s, w), abs=1e-12)
    assert auc(y.astype(bool), s.reshape(-1, 1)) == pytest.approx(_pairwise_auc(y, s), abs=1e-12)   # [n, 1] ok
    assert auc(y, np.where(s > 7, np.inf, -np.inf)) == pytest.approx(_pairwise_auc(y, s > 7), abs=1e-12)


def test_auc_single_class_is_nan():
    assert math.isnan(auc([1, 1, 1], [0.1, 0.2, 0.3]))
    assert math.isnan(auc([0, 1], [0.1, 0.2], weights=[1, 0]))   # the positive has zero weight


def test_auc_against_sklearn():
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 2000)
    s = np.round(rng.normal(size=2000), 1)
    w = rng.random(2000)
    assert auc(y, s) == pytest.approx(metrics.roc_auc_score(y, s), abs=1e-12)
    assert auc(y, s, w) == pytest.approx(metrics.roc_auc_score(y, s, sample_weight=w), abs=1e-12)


@pytest.mark.parametrize("kwargs, match", [
    (dict(labels=[0, 1, 1], scores=[0.1, 0.2]), "scores has length 2 but labels has length 3"),
    (dict(labels=[0, 1], scores=[[0.1, 0.2], [0.3, 0.4]]), "scores must be 1-D"),
    (dict(labels=[], scores=[]), "labels is empty"),
    (dict(labels=[0, 1], scores=[0.1, np.nan]), "scores contains NaN"),
    (dict(labels=[0, 2], scores=[0.1, 0.2]), "labels must contain only 0 and 1"),
    (dict(labels=[0, 0.5], scores=[0.1, 0.2]), "labels must contain only 0 and 1"),
    (dict(labels=[0, np.nan], scores=[0.1, 0.2]), "labels contains NaN"),
    (dict(labels=["a", "b"], scores=[0.1, 0.2]), "labels must be numeric"),
    (dict(labels=[0, 1], scores=[0.1, 0.2], weights=[1.0]), "weights has length 1"),
    (dict(labels=[0, 1], scores=[0.1, 0.2], weights=[1.0, -1.0]), "weights must be non-negative"),
    (dict(labels=[0, 1], scores=[0.1, 0.2], weights=[0, 0]), "weights are all zero"),
])
def test_auc_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        auc(**kwargs)


# ------------------------------------------------------------------------------------------------ gauc

def test_gauc_hand_with_skipped_group():
    # group a: labels [0, 1, 1], scores [0.2, 0.3, 0.1]: 0.3>0.2 win, 0.1<0.2 loss -> AUC 1/2, 3 impressions.
    # group b: labels [1, 0], scores [0.9, 0.4] -> AUC 1, 2 impressions.
    # group c: labels [1, 1] -> one class, skipped.
    # GAUC = (3 * 0.5 + 2 * 1) / (3 + 2) = 3.5 / 5 = 0.7. Rows are interleaved on purpose.
    labels = [0, 1, 1, 1, 0, 1, 1]
    scores = [0.2, 0.3, 0.9, 0.1, 0.4, 0.5, 0.6]
    groups = ["a", "a", "b", "a", "b", "c", "c"]
    r = gauc(labels, scores, groups)
    assert isinstance(r, GAUCResult)
    assert r.value == pytest.approx(0.7) and float(r) == pytest.approx(0.7)
    assert (r.n_groups, r.n_groups_used, r.n_groups_skipped) == (3, 2, 1)
    assert (r.impressions_used, r.impressions_total) == (5.0, 7.0)
    assert gauc_score(labels, scores, [10, 10, 20, 10, 20, 30, 30]) == pytest.approx(0.7)   # int ids


def test_gauc_weighted_hand():
    # Same data, weights 2 on group b's rows: b's impressions become 4, AUC still 1 (pair weights scale evenly).
    # GAUC = (3 * 0.5 + 4 * 1) / 7 = 5.5 / 7.
    r = gauc([0, 1, 1, 1, 0, 1, 1], [0.2, 0.3, 0.9, 0.1, 0.4, 0.5, 0.6], [1, 1, 2, 1, 2, 3, 3],
             weights=[1, 1, 2, 1, 2, 1, 1])
    assert r.value == pytest.approx(5.5 / 7)


def test_gauc_matches_per_group_loop():
    rng = np.random.default_rng(2)
    n = 3000
    groups = rng.integers(0, 300, n)
    labels = (rng.random(n) < 0.3).astype(int)
    scores = rng.integers(0, 6, n) / 5.0                  # ties inside groups and across groups
    weights = rng.random(n)
    for w in (None, weights):
        num = den = 0.0
        used = 0
        for g in np.unique(groups):
            m = groups == g
            if labels[m].min() == labels[m].max():
                continue
            imp = m.sum() if w is None else w[m].sum()
            num += imp * _pairwise_auc(labels[m], scores[m], None if w is None else w[m])
            den += imp
            used += 1
        r = gauc(labels, scores, groups, w)
        assert r.value == pytest.approx(num / den, abs=1e-12)
        assert r.n_groups_used == used and r.n_groups == len(np.unique(groups))


def test_gauc_all_single_class_groups_is_nan():
    r = gauc([1, 1, 0], [0.1, 0.2, 0.3], [1, 1, 2])
    assert math.isnan(r.value) and r.n_groups_used == 0 and r.n_groups_skipped == 2


def test_gauc_validation():
    with pytest.raises(ValueError, match="groups has length 2 but labels has length 3"):
        gauc([0, 1, 1], [0.1, 0.2, 0.3], [1, 2])
    with pytest.raises(ValueError, match="groups contains NaN"):
        gauc([0, 1], [0.1, 0.2], [1.0, np.nan])


# ------------------------------------------------------------------------------------------------ logloss

def test_logloss_hand():
    # -(ln 0.8 + ln(1 - 0.4)) / 2 = (0.2231435513 + 0.5108256238) / 2 = 0.3669845876
    assert logloss([1, 0], [0.8, 0.4]) == pytest.approx(0.3669845876)
    # weighted (1, 3): (0.2231435513 + 3 * 0.5108256238) / 4 = 0.4389051057
    assert logloss([1, 0], [0.8, 0.4], weights=[1, 3]) == pytest.approx(0.4389051057)
    # A confident mistake is clipped: label 0 with p = 1 costs -ln(1e-7) = 16.1180956510; the other row costs 0
    # up to clipping (-ln(1 - 1e-7) ~ 1e-7).
    assert logloss([0, 1], [1.0, 1.0]) == pytest.approx((16.1180956510 + 1e-7) / 2, rel=1e-8)


def test_logloss_validation():
    with pytest.raises(ValueError, match="probs must be probabilities"):
        logloss([0, 1], [0.2, 1.5])
    with pytest.raises(ValueError, match="probs contains NaN"):
        logloss([0, 1], [0.2, np.nan])
    with pytest.raises(ValueError, match="eps must be in"):
        logloss([0, 1], [0.2, 0.5], eps=0.0)
    with pytest.raises(ValueError, match="labels must contain only 0 and 1"):
        logloss([0, 3], [0.2, 0.5])


# ------------------------------------------------------------------------------------------------ sampled ranking

def test_sampled_ranking_rank3_hand():
    # positive 0.5; negatives 0.9 and 0.7 score higher -> rank 3.
    # hit@1 = 0, hit@5 = 1, ndcg@5 = 1 / log2(3 + 1) = 0.5, mrr = 1/3.
    m = sampled_ranking_metrics([0.5], [[0.9, 0.7, 0.1, 0.2]], ks=(1, 5))
    assert m == pytest.approx({"hit@1": 0.0, "ndcg@1": 0.0, "hit@5": 1.0, "ndcg@5": 0.5, "mrr": 1 / 3})


def test_sampled_ranking_two_users_hand():
    # user 0: rank 1 -> ndcg 1, rr 1. user 1: negatives 3, 2 above 1.0 -> rank 3 -> ndcg 0.5, rr 1/3.
    # hit@2 = (1 + 0) / 2, ndcg@5 = (1 + 0.5) / 2, mrr = (1 + 1/3) / 2 = 2/3.
    m = sampled_ranking_metrics(np.array([[2.0], [1.0]]), [[1.0, 0.0, -1.0], [3.0, 2.0, 0.0]], ks=[2, 5])
    assert m == pytest.approx({"hit@2": 0.5, "ndcg@2": 0.5, "hit@5": 1.0, "ndcg@5": 0.75, "mrr": 2 / 3})


def test_sampled_ranking_ties_count_against_the_positive():
    # one negative ties the positive: conservative rank 2 (not 1), so hit@1 = 0, mrr = 1/2.
    m = sampled_ranking_metrics([0.5], [[0.5, 0.1]], ks=(1,))
    assert m == {"hit@1": 0.0, "ndcg@1": 0.0, "mrr": 0.5}
    # a constant model ranks every positive last (rank N + 1 = 101): it must not look good.
    m = sampled_ranking_metrics(np.zeros(50), np.zeros((50, 100)), ks=(1, 10, 100, 101))
    assert m["hit@1"] == m["hit@10"] == m["hit@100"] == 0.0
    assert m["hit@101"] == 1.0 and m["mrr"] == pytest.approx(1 / 101)


def test_sampled_ranking_validation():
    with pytest.raises(ValueError, match="neg_scores has 2 rows but pos_scores has length 1"):
        sampled_ranking_metrics([0.5], [[0.1], [0.2]])
    with pytest.raises(ValueError, match="neg_scores must be 2-D"):
        sampled_ranking_metrics([0.5], [0.1, 0.2])
    with pytest.raises(ValueError, match="neg_scores contains NaN"):
        sampled_ranking_metrics([0.5], [[np.nan]])
    with pytest.raises(ValueError, match="ks must be positive integers"):
        sampled_ranking_metrics([0.5], [[0.1]], ks=(0,))


# ------------------------------------------------------------------------------------------------ retrieval

TOPK = [[5, 3, 9, 1], [2, 4, 6, 8], [1, 2, 3, 4]]
RELEVANT = [{3, 1, 7}, {2}, set()]


def _expected_retrieval():
    d = lambda j: 1 / math.log2(j + 1)  # noqa: E731  (discount of 1-based position j)
    # user 0: relevant {3, 1, 7}, hits at positions 2 (item 3) and 4 (item 1).
    #   @2: 1 hit, recall 1/3, DCG d(2) = 0.6309, IDCG over min(3, 2) = 2 slots d(1) + d(2) = 1.6309 -> 0.3869
    #   @4: 2 hits, recall 2/3, DCG d(2) + d(4) = 1.0616, IDCG over 3 slots d(1)+d(2)+d(3) = 2.1309 -> 0.49819
    # user 1: relevant {2}, hit at position 1: recall 1, ndcg 1 at both cut-offs.
    # user 2: no relevant items -> skipped.
    u0_2 = d(2) / (d(1) + d(2))
    u0_4 = (d(2) + d(4)) / (d(1) + d(2) + d(3))
    return {"recall@2": (1 / 3 + 1) / 2, "hitrate@2": 1.0, "ndcg@2": (u0_2 + 1) / 2,
            "recall@4": (2 / 3 + 1) / 2, "hitrate@4": 1.0, "ndcg@4": (u0_4 + 1) / 2,
            "n_users": 2, "n_users_skipped": 1}


def test_retrieval_hand_list_of_sets():
    exp = _expected_retrieval()
    assert exp["ndcg@2"] == pytest.approx((0.386853 + 1) / 2, abs=1e-6)
    assert exp["ndcg@4"] == pytest.approx((0.498189 + 1) / 2, abs=1e-6)
    assert retrieval_metrics(np.array(TOPK), RELEVANT, ks=(2, 4)) == pytest.approx(exp)


def test_retrieval_csr_and_duplicates_and_padding():
    exp = _expected_retrieval()
    # CSR with a duplicated relevant id (1 twice, ignored) and the same users.
    indptr = np.array([0, 4, 5, 5])
    indices = np.array([3, 1, 7, 1, 2])
    assert retrieval_metrics(TOPK, (indptr, indices), ks=(2, 4)) == pytest.approx(exp)
    # -1 padding never hits: user 1 found only 2 items.
    m = retrieval_metrics([[-1, -1], [2, 9]], [{0}, {2, 9}], ks=(1, 2))
    assert m == pytest.approx({"recall@1": 0.25, "hitrate@1": 0.5, "ndcg@1": 0.5,
                               "recall@2": 0.5, "hitrate@2": 0.5, "ndcg@2": 0.5,
                               "n_users": 2, "n_users_skipped": 0})
    # huge item ids (user * id would overflow int64) are remapped, same answer
    big = 2**61
    m = retrieval_metrics([[big, 5], [7, big + 1]], [{5}, {big + 1}], ks=(2,))
    assert m["recall@2"] == 1.0 and m["ndcg@2"] == pytest.approx((1 / math.log2(3) + 1 / math.log2(3)) / 2)


def test_retrieval_no_relevant_users_is_nan():
    m = retrieval_metrics([[1, 2]], [set()], ks=(1,))
    assert math.isnan(m["recall@1"]) and m["n_users"] == 0 and m["n_users_skipped"] == 1


def test_retrieval_validation():
    with pytest.raises(ValueError, match="ks contains 5 but only 4 items"):
        retrieval_metrics(TOPK, RELEVANT, ks=(5,))
    with pytest.raises(ValueError, match="row 1 repeats an item id"):
        retrieval_metrics([[1, 2], [3, 3]], [{1}, {3}], ks=(1,))
    with pytest.raises(ValueError, match="relevant has 2 entries but topk_ids has 3 rows"):
        retrieval_metrics(TOPK, RELEVANT[:2], ks=(1,))
    with pytest.raises(ValueError, match="indptr has length"):
        retrieval_metrics(TOPK, (np.array([0, 1]), np.array([1])), ks=(1,))
    with pytest.raises(ValueError, match="topk_ids must be integer"):
        retrieval_metrics(np.array(TOPK, dtype=float), RELEVANT, ks=(1,))
    with pytest.raises(ValueError, match="topk_ids must be 2-D"):
        retrieval_metrics([1, 2, 3], RELEVANT, ks=(1,))


# ------------------------------------------------------------------------------------------------ uplift

# 6 people already sorted by predicted uplift (no ties).
TREAT = [1, 1, 0, 1, 0, 0]
OUTCOME = [1, 0, 0, 1, 1, 0]
SCORES = [0.9, 0.8, 0.6, 0.4, 0.3, 0.2]
# Cumulative over the top t:   t:   1  2  3  4  5  6
#                            N^T:   1  2  2  3  3  3
#                            Y^T:   1  1  1  2  2  2
#                            N^C:   0  0  1  1  2  3
#                            Y^C:   0  0  0  0  1  1
# Qini g = Y^T - Y^C N^T / N^C (0 term when N^C = 0): 1, 1, 1, 2, 2 - 1*3/2 = 0.5, 2 - 1*3/3 = 1
# Uplift f = (Y^T/N^T - Y^C/N^C)(N^T + N^C): 1, 1, 1.5, 8/3, (2/3 - 1/2)*5 = 5/6, (2/3 - 1/3)*6 = 2
# Normalised: x = t/6, y = curve/6; trapezoid area = (1/6) * sum of segment means / 6.
#   Qini segment means (from 0): 0.5, 1, 1, 1.5, 1.25, 0.75 -> 6 -> area 1/6; random line to (1, 1/6): area 1/12
#   -> qini = 1/6 - 1/12 = 1/12.
#   Uplift segment means: 0.5, 1, 1.25, 25/12, 1.75, 17/12 -> 8 -> auuc = 8/36 = 2/9.


def test_uplift_hand():
    assert qini(TREAT, OUTCOME, SCORES) == pytest.approx(1 / 12)
    assert auuc(TREAT, OUTCOME, SCORES) == pytest.approx(2 / 9)
    x, y = qini_curve(TREAT, OUTCOME, SCORES)
    np.testing.assert_allclose(x, np.arange(7) / 6)
    np.testing.assert_allclose(y, np.array([0, 1, 1, 1, 2, 0.5, 1]) / 6)
    x, y = uplift_curve(TREAT, OUTCOME, SCORES)
    np.testing.assert_allclose(y, np.array([0, 1, 1, 1.5, 8 / 3, 5 / 6, 2]) / 6)


def test_uplift_second_hand_example():
    # treat [1,0,1,0], outcome [1,0,0,1]: N^T 1,1,2,2  Y^T 1,1,1,1  N^C 0,1,1,2  Y^C 0,0,0,1
    # g = 1, 1, 1, 1 - 1*2/2 = 0 -> y/4 = [0,.25,.25,.25,0]; area .25 * (.125+.25+.25+.125) = 0.1875; random 0.
    # f = 1, 2, (1/2)*3 = 1.5, (1/2 - 1/2)*4 = 0 -> area .25 * (.125+.375+.4375+.1875) = 0.28125.
    assert qini([1, 0, 1, 0], [1, 0, 0, 1], [0.9, 0.7, 0.5, 0.1]) == pytest.approx(0.1875)
    assert auuc([1, 0, 1, 0], [1, 0, 0, 1], [0.9, 0.7, 0.5, 0.1]) == pytest.approx(0.28125)


def test_uplift_bins_hand():
    # bins=3 -> points t = 0, 2, 4, 6: g = 0, 1, 2, 1; area (2/6) * (0.5 + 1.5 + 1.5) / 6 = 7/36; minus 1/12 = 1/9.
    assert qini(TREAT, OUTCOME, SCORES, bins=3) == pytest.approx(1 / 9)
    # bins=6 hits every point: same as exact.
    assert qini(TREAT, OUTCOME, SCORES, bins=6) == pytest.approx(1 / 12)


def test_uplift_ties_independent_of_row_order():
    s = [0.9, 0.5, 0.5, 0.5, 0.3, 0.2]
    perm = [3, 1, 2, 0, 5, 4]
    t, o = np.array(TREAT), np.array(OUTCOME)
    for f in (qini, auuc):
        assert f(t, o, s) == pytest.approx(f(t[perm], o[perm], np.array(s)[perm]))
    x, _ = qini_curve(t, o, s)
    np.testing.assert_allclose(x, np.array([0, 1, 4, 5, 6]) / 6)   # one point per block of ties


def test_uplift_perfect_beats_random_beats_reversed():
    rng = np.random.default_rng(3)
    n = 20000
    tau = rng.uniform(-0.2, 0.4, n)                       # true individual uplift
    treat = rng.integers(0, 2, n)
    outcome = (rng.random(n) < 0.3 + tau * treat).astype(float)
    for f in (qini, auuc):
        perfect, random, reverse = f(treat, outcome, tau), f(treat, outcome, rng.random(n)), f(treat, outcome, -tau)
        assert perfect > random > reverse
    assert abs(qini(treat, outcome, rng.random(n))) < 0.01 < qini(treat, outcome, tau)
    assert qini(treat, outcome, -tau) < 0


def test_uplift_validation():
    with pytest.raises(ValueError, match="treatment must contain both treated"):
        qini([1, 1], [0, 1], [0.1, 0.2])
    with pytest.raises(ValueError, match="treatment must contain only 0 and 1"):
        auuc([1, 2], [0, 1], [0.1, 0.2])
    with pytest.raises(ValueError, match="outcome contains NaN"):
        auuc([1, 0], [np.nan, 1], [0.1, 0.2])
    with pytest.raises(ValueError, match="uplift_scores has length 3"):
        auuc([1, 0], [0, 1], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="bins must be a positive integer"):
        qini([1, 0], [0, 1], [0.1, 0.2], bins=0)
