"""The device-cloud replay's list metrics, outcomes, uplift targets and counterfactual labels, against values worked
out by hand and a brute-force reference."""
from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest

from training.replay import counterfactual_label, list_metrics, step_outcomes, uplift_targets, user_averaged


def test_list_metrics_by_hand():
    # list 7: clicked items scored 0.9 and 0.2 among 0.8, 0.5, 0.1 -> ranks 1 and 4
    # list 3: one clicked item tied with a negative at the top: the tie goes against it -> rank 2
    step = np.array([7, 7, 7, 7, 7, 3, 3, 3])
    label = np.array([1, 0, 0, 1, 0, 1, 0, 0])
    score = np.array([0.9, 0.8, 0.5, 0.2, 0.1, 0.6, 0.6, 0.1])
    m = list_metrics(step, label, score, k=2).set_index("step_id")
    assert list(m.index) == [3, 7]
    assert m.loc[7, "hit@2"] == 0.5                                      # one of the two clicks in the top 2
    np.testing.assert_allclose(m.loc[7, "ndcg@2"], 1.0 / (1.0 + 1 / np.log2(3)))
    assert m.loc[7, "auc"] == 4 / 6                                       # 0.9 beats 3 negatives, 0.2 beats 1
    assert m.loc[3, "hit@2"] == 1.0
    np.testing.assert_allclose(m.loc[3, "ndcg@2"], 1 / np.log2(3))        # rank 2, not 1
    assert m.loc[3, "auc"] == 0.75                                        # the tie counts one half
    assert list(m["clicks"]) == [1, 2] and list(m["size"]) == [3, 5]


def _auc_brute(label, score):
    pairs = [(p, n) for p, n in itertools.product(score[label == 1], score[label == 0])]
    return np.mean([1.0 if p > n else 0.5 if p == n else 0.0 for p, n in pairs]) if pairs else np.nan


def test_auc_per_list_matches_brute_force_with_ties_and_one_class_lists():
    rng = np.random.default_rng(0)
    step = np.repeat(np.arange(40), 9)
    label = (rng.random(len(step)) < 0.3).astype(float)
    label[step == 5] = 1.0                                               # a list without negatives
    score = rng.integers(0, 4, len(step)) / 4.0                          # many ties
    m = list_metrics(step, label, score, k=3)
    want = [_auc_brute(label[step == s], score[step == s]) for s in range(40)]
    np.testing.assert_allclose(m["auc"], want)
    assert np.isnan(m.loc[m["step_id"] == 5, "auc"]).all()


def test_constant_scores_earn_nothing_above_chance():
    m = list_metrics(np.zeros(6, int), np.array([1, 1, 0, 0, 0, 0]), np.zeros(6), k=2)
    assert m.loc[0, "hit@2"] == 0.0 and m.loc[0, "auc"] == 0.5


def test_outcomes_uplifts_and_counterfactual_labels():
    frame = pd.DataFrame({
        "step_id": [1, 1, 1, 2, 2, 2], "user_id": [9, 9, 9, 9, 9, 9], "click": [1, 0, 0, 1, 0, 0],
        "cloud": [0.1, 0.5, 0.2, 0.9, 0.1, 0.2],        # list 1: the click last; list 2: first
        "device": [0.6, 0.5, 0.2, 0.9, 0.1, 0.2],       # list 1: first
        "refresh": [0.3, 0.5, 0.2, 0.1, 0.9, 0.2]})     # list 1: second; list 2: last
    out = step_outcomes(frame, {"cloud": "cloud", "device": "device", "refresh": "refresh"}, k=2)
    np.testing.assert_allclose(out["O_cloud"], [0.0, 1.0])
    np.testing.assert_allclose(out["O_device"], [1.0, 1.0])
    np.testing.assert_allclose(out["O_refresh"], [1 / np.log2(3), 0.0])
    tau = uplift_targets(out)
    np.testing.assert_allclose(tau["tau_device"], [1.0, 0.0])
    np.testing.assert_allclose(tau["tau_refresh"], [1 / np.log2(3), -1.0])
    assert counterfactual_label(tau["tau_device"], tau["tau_refresh"]).tolist() == [1, 0]
    # ties go to the cheaper mechanism: cloud, then device, then refresh
    labels = counterfactual_label(np.array([0.0, 0.2, -0.1, 0.3]), np.array([0.0, 0.2, 0.4, 0.1]))
    assert labels.tolist() == [0, 1, 2, 1]
    assert user_averaged(pd.DataFrame({"user_id": [1, 1, 2], "x": [0.0, 1.0, 1.0]}), "x") == 0.75
    with pytest.raises(ValueError, match="mechanisms \\['edge'\\]"):
        step_outcomes(frame, {"edge": "cloud"})
    with pytest.raises(ValueError, match="2 scores are NaN"):
        list_metrics(np.zeros(3), np.array([1, 0, 0]), np.array([np.nan, 0.1, np.nan]))


def test_x_learner_targets_and_combination_against_numpy():
    from training.replay import x_learner_targets, x_learner_uplift

    rng = np.random.default_rng(3)
    n = 50
    served = rng.integers(0, 3, n)
    outcome = rng.random(n)
    mu = rng.random((n, 3))
    t = x_learner_targets(outcome, served, mu, treatment=2)
    for i in range(n):
        if served[i] == 2:
            assert t["mask_treated"][i] == 1 and t["d_treated"][i] == outcome[i] - mu[i, 0]
        else:
            assert t["mask_treated"][i] == 0 and t["d_treated"][i] == 0
        if served[i] == 0:
            assert t["mask_control"][i] == 1 and t["d_control"][i] == mu[i, 2] - outcome[i]
        else:
            assert t["mask_control"][i] == 0 and t["d_control"][i] == 0
    # the T-learner's own estimate is recovered when both second stages fit their targets' means exactly
    tau1, tau0 = np.full(n, 0.3), np.full(n, 0.1)
    np.testing.assert_allclose(x_learner_uplift(tau1, tau0, 0.25), 0.25 * 0.1 + 0.75 * 0.3)
    np.testing.assert_allclose(x_learner_uplift(tau1, tau0, np.full(n, 0.5)), 0.2)
    with pytest.raises(ValueError, match="propensity"):
        x_learner_uplift(tau1, tau0, 1.5)
    with pytest.raises(ValueError, match="disagree"):
        x_learner_targets(outcome, served, mu[:, 0], treatment=1)
