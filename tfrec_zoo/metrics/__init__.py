"""Evaluation metrics for recommender models, computed on numpy arrays after training (pure numpy, no TF).

The trainer collects labels / predictions from one `tf.data` pass and calls these; all are vectorised (one sort
plus linear passes), validate their inputs (shape mismatch, empty, NaN, labels outside {0, 1}) with a
`ValueError` naming the argument, and return Python floats (or small dicts / dataclasses of them).

* `classification`: `auc`, `gauc` / `gauc_score` (`GAUCResult`), `logloss`.
* `ranking`: `sampled_ranking_metrics` (1 positive + N sampled negatives: hit@k, ndcg@k, mrr; ties count
  against the model) and `retrieval_metrics` (full-corpus top-K: recall@k, hitrate@k, ndcg@k).
* `uplift`: `auuc`, `qini` and their curves `uplift_curve`, `qini_curve`.
"""
from .classification import GAUCResult, auc, gauc, gauc_score, logloss
from .ranking import retrieval_metrics, sampled_ranking_metrics
from .uplift import auuc, qini, qini_curve, uplift_curve

__all__ = [
    "GAUCResult", "auc", "auuc", "gauc", "gauc_score", "logloss", "qini", "qini_curve", "retrieval_metrics",
    "sampled_ranking_metrics", "uplift_curve",
]
