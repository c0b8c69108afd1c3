"""Sampled ranking evaluation (the SASRec / S3-Rec / SEMINAR protocol): each valid/test row's positive is ranked
among the row's sampled negatives (`eval_negatives`, 99 in the lifelong datasets).

Every row becomes 1 + N candidate rows that share the row's user, history and query and differ in the item id
(and in the candidate-dependent columns the `eval_negatives` fields name by `source:`, e.g. an O2O POI's cell);
the model scores them (by the logit it declares, `score_model(task)`: float32 sigmoids of strong candidates
saturate to 1.0 and would tie); HIT@k / NDCG@k / MRR count ties against the model (tfrec_zoo.metrics).

Modes (digest §1.7): "recommendation" empties every query (the target's and the history's: no search intent),
"search" keeps the row's query for every candidate (the negatives take the positive's query).
Also reported: AUC over all candidate rows and GAUC grouped by test row.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from tfrec_zoo import metrics as M
from tfrec_zoo.models.common import EVAL_NEGATIVES
from tfrec_zoo._tf import tf

MODES = ("recommendation", "search")


def negatives_field(spec) -> tuple[str, str]:
    """(sequence name, id field) of the spec's `eval_negatives` sequence (its field shares the item's table)."""
    item = spec.keys.get("item")
    names = {f.name for f in spec.features}
    if EVAL_NEGATIVES not in names or not item:
        raise ValueError(f"{spec.source}: sampled evaluation needs `keys: {{item: ...}}` and an `eval_negatives` "
                         "sequence whose id field shares the item's table")
    for sf in spec[EVAL_NEGATIVES].fields:
        if sf.kind == "id" and spec.table_of(sf.name) == spec.table_of(item):
            return EVAL_NEGATIVES, sf.name
    raise ValueError(f"{spec.source}: eval_negatives has no id field sharing {item!r}'s table")


def candidate_columns(spec, model_inputs: Sequence[str]) -> dict[str, str]:
    """{candidate column: eval_negatives field} for the candidate-dependent inputs besides the item id: a field with
    `source: COLUMN` holds each negative's value of COLUMN (an O2O POI's cell, its distance from the user), so a
    negative is scored with its own values, not the positive's. Columns the model does not read are left out."""
    _, id_field = negatives_field(spec)
    out = {}
    for sf in spec[EVAL_NEGATIVES].fields:
        if sf.name != id_field and sf.source and sf.source in model_inputs:
            out[sf.source] = sf.name
    return out


def has_sampled_protocol(spec) -> bool:
    try:
        negatives_field(spec)
        return True
    except ValueError:
        return False


def query_columns(spec, model_inputs: Sequence[str]) -> list[str]:
    """The model's input columns in the query table (the target's query and the history's query field)."""
    query = spec.keys.get("query")
    if not query:
        return []
    table = spec.table_of(query)
    cats = dict(spec.categorical_columns())
    return [c for c in model_inputs if c in cats and spec.table_of(c) == table]


def scoring_model(model, task: str):
    """(model whose output is the task's logit, "logit") when the model declares one (`ZooModel.score_model`),
    else (the model, "prob")."""
    scorer = model.score_model(task) if hasattr(model, "score_model") else None
    return (scorer, "logit") if scorer is not None else (model, "prob")


def evaluate_sampled(model, data, split: str = "test", *, modes: Sequence[str] = MODES,
                     ks: Sequence[int] = (1, 5, 10, 50), task: str | None = None, max_rows: int | None = None,
                     candidate_rows: int = 400_000, eager: bool = False) -> dict[str, Any]:
    """{mode: {"hit@k", "ndcg@k", "mrr", "auc", "gauc", "rows", "negatives", "scores"}} over `split`.
    `eager` calls the model eagerly (layers with Python hooks, e.g. a benchmark's GSU selection)."""
    spec = data.spec
    item = spec.keys["item"]
    seq, neg_field = negatives_field(spec)
    task = task or spec.labels[0].task
    bad = [m for m in modes if m not in MODES]
    if bad:
        raise ValueError(f"sampled evaluation modes must be among {MODES}, got {bad}")
    scorer, kind = scoring_model(model, task)
    inputs = list(model.input_names)
    queries = query_columns(spec, inputs)
    per_candidate = candidate_columns(spec, inputs)
    n_neg = spec[seq].max_len
    longest = max([spec[f.name].max_len for f in spec.of_kind("sequence") if any(
        sf.name in inputs for sf in f.fields)] or [1])
    # rows per call: bound the [rows x (1 + N) x L] step tensors
    batch = max(1, candidate_rows // ((1 + n_neg) * longest))
    out = {}
    for mode in modes:
        pos_all, neg_all = [], []
        seen = 0
        wanted = inputs + [neg_field, spec[seq].length_name, *per_candidate.values()]
        for feats, _ in (b[:2] for b in data.dataset(split, batch, features=wanted)):
            lengths = feats[spec[seq].length_name].numpy()
            if (lengths != n_neg).any():
                raise ValueError(f"{data.path} [{split}]: a row has {int(lengths.min())} eval negatives, the "
                                 f"protocol needs {n_neg} for every row (rebuild the dataset)")
            b = int(lengths.shape[0])
            cands = tf.concat([feats[item][:, None], feats[neg_field]], axis=1)         # [b, 1 + N]
            x = {k: tf.repeat(feats[k], 1 + n_neg, axis=0) for k in inputs if k != item and k not in per_candidate}
            x[item] = tf.reshape(cands, [-1])
            for column, field in per_candidate.items():
                values = tf.concat([feats[column][:, None], tf.cast(feats[field], feats[column].dtype)], axis=1)
                x[column] = tf.reshape(values, [-1])
            if mode == "recommendation":
                for q in queries:
                    x[q] = tf.fill(tf.shape(x[q]), tf.constant("", x[q].dtype)) if x[q].dtype == tf.string \
                        else tf.zeros_like(x[q])
            pred = scorer(x, training=False) if eager else scorer.predict_on_batch(x)
            scores = np.asarray(pred[task] if isinstance(pred, dict) else pred).reshape(b, 1 + n_neg)
            pos_all.append(scores[:, 0])
            neg_all.append(scores[:, 1:])
            seen += b
            if max_rows is not None and seen >= max_rows:
                break
        pos, neg = np.concatenate(pos_all), np.concatenate(neg_all)
        if max_rows is not None:
            pos, neg = pos[:max_rows], neg[:max_rows]
        res = M.sampled_ranking_metrics(pos, neg, ks)
        labels = np.concatenate([np.ones((len(pos), 1)), np.zeros(neg.shape)], 1).ravel()
        flat = np.concatenate([pos[:, None], neg], 1).ravel()
        groups = np.repeat(np.arange(len(pos)), 1 + n_neg)
        res.update(auc=M.auc(labels, flat), gauc=M.gauc(labels, flat, groups).value, rows=int(len(pos)),
                   negatives=int(n_neg), scores=kind)
        out[mode] = res
    return out
