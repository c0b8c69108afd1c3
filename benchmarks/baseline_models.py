"""Reference rows for benchmarks/baselines.py: logistic regression, item popularity, DeepCTR 0.9.3's DIN and DeepFM.

All of them read the same dataset directory (and splits) as the zoo's experiments, through
`DatasetDir.dataset(split, ...)`, decoded once into numpy, and are scored by the zoo's own metric code
(`training.evaluation.task_metrics`: `tfrec_zoo.metrics.auc` / `gauc` grouped by the spec's `keys.user` / `logloss`).

Ids are encoded exactly as the zoo's in-graph lookups encode them (`IntegerLookup` / `StringLookup` over the
dataset's vocabularies with one OOV bucket): vocabulary position + 1, and 0 for an id not in the vocabulary
(the vocabularies come from the train split, so 0 is "unseen in train"). Sequence / multi-hot padding is 0 too,
which is DeepCTR's `mask_zero` convention.

* `lr`: scikit-learn `LogisticRegression` (L2, lbfgs) on a sparse one-hot of [user id, item id] (each with its
  OOV column). C is chosen on the valid split's AUC from `LR_C_GRID`, then the test split is scored.
* `popularity`: no learning. `rate` (default): the item's positive rate in train, smoothed towards the global
  positive rate with `POP_SMOOTHING` pseudo-rows, (pos_i + m * p) / (n_i + m); an item unseen in train scores p.
  `count`: the item's positive count in train (log1p; 0 for unseen items).
* `deepctr_din` / `deepctr_deepfm`: `deepctr.models.DIN` / `DeepFM` built from the zoo's experiment for the same
  model and dataset (din-DATASET.yaml / deepfm-DATASET.yaml, `--set` overrides included) on the features the zoo
  model uses, with the spec's embedding sizes; trained with the experiment's optimizer, batch size, epochs and
  early stopping (the zoo's `ResumableEarlyStopping`, monitoring the valid split's keras AUC, best weights
  restored) via `model.fit(x=dict of numpy arrays, shuffle=True)`. See `deepctr_inputs` for the feature mapping.
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from tfrec_zoo.features.spec import (
    DenseFeature, MultiHotFeature, SequenceFeature, TextFeature, VectorFeature, _Categorical,
)
from training.evaluation import task_metrics

LR_C_GRID = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0)
POP_SMOOTHING = 10.0
EVAL_SPLITS = ("valid", "test")


def main_task(spec) -> str:
    """The first binary label of the spec (like / click): the task the table reports."""
    for lab in spec.labels:
        if lab.type == "binary":
            return lab.task
    raise ValueError(f"{spec.source}: no binary label")


# -- decoding -----------------------------------------------------------------------------------------------------
class IdEncoder:
    """Raw ids -> the zoo lookup's row index (vocabulary position + 1; 0 = OOV / padding)."""

    def __init__(self, spec, artifacts, table: str):
        cfg = spec.table_config(table)
        if cfg.hash_buckets:
            raise ValueError(f"table {table!r} is hashed; these baselines need a vocabulary")
        vocab = artifacts.vocabs[table]
        self.string = cfg.dtype == "string"
        arr = np.asarray([v.encode() for v in vocab], dtype="S") if self.string else np.asarray(vocab, np.int64)
        self.order = np.argsort(arr, kind="stable")
        self.sorted = arr[self.order]
        self.size = artifacts.vocab_size(spec, table)      # rows of the zoo's table: OOV bucket + vocabulary

    def __call__(self, values: np.ndarray) -> np.ndarray:
        v = np.asarray(values).astype("S") if self.string else np.asarray(values, np.int64)
        if not len(self.sorted):
            return np.zeros(v.shape, np.int32)
        pos = np.clip(np.searchsorted(self.sorted, v), 0, len(self.sorted) - 1)
        found = self.sorted[pos] == v
        return np.where(found, self.order[pos] + 1, 0).astype(np.int32)


@dataclass
class Column:
    """One numpy input: `kind` id | ids (padded [N, L], 0 past the length) | dense | bucket | vector."""

    name: str                  # the output name (a DeepCTR feature name)
    kind: str
    source: str                # the parsed feature it comes from
    length: str | None = None  # ids: the `<name>_len` column
    encoder: Any = None        # IdEncoder (id / ids), (normalization, stats) (dense), boundaries (bucket)


def _normalize(x: np.ndarray, normalization: str, s: dict) -> np.ndarray:
    x = x.astype(np.float64)
    if normalization == "zscore":
        y = (x - s["mean"]) / (s["std"] or 1.0)
    elif normalization == "log1p":
        y = (np.log1p(np.maximum(x, 0.0)) - s["log1p_mean"]) / (s["log1p_std"] or 1.0)
    elif normalization == "minmax":
        y = (x - s["min"]) / ((s["max"] - s["min"]) or 1.0)
    else:
        y = x
    return np.where(np.isfinite(y), y, 0.0).astype(np.float32)     # as DenseTransform: non-finite -> 0


def decode(data, split: str, columns: list[Column], task: str, batch_size: int = 8192) -> dict[str, np.ndarray]:
    """One pass over `split`: {column name: array} plus `label/TASK`, `weight/TASK`, `key/USER` (task_metrics'
    keys). Ids are encoded batch by batch (int32), so a 539-step history never exists as int64 for a whole split."""
    user = data.spec.keys["user"]
    parsed = sorted({c.source for c in columns} | {c.length for c in columns if c.length} | {user})
    out: dict[str, list] = {}
    for batch in data.dataset(split, batch_size, features=parsed):
        feats, labels = batch[0], batch[1]
        y = labels[task].numpy()
        w = batch[2][task].numpy() if len(batch) > 2 else np.ones_like(y)
        out.setdefault(f"label/{task}", []).append(y)
        out.setdefault(f"weight/{task}", []).append(w)
        out.setdefault(f"key/{user}", []).append(feats[user].numpy())
        for c in columns:
            raw = feats[c.source].numpy()
            if c.kind == "id":
                v = c.encoder(raw)
            elif c.kind == "ids":
                enc = c.encoder(raw)
                valid = np.arange(raw.shape[1])[None, :] < feats[c.length].numpy()[:, None]
                v = np.where(valid, enc, 0).astype(np.int32)
            elif c.kind == "dense":
                v = _normalize(raw, *c.encoder)[:, None]
            elif c.kind == "bucket":   # keras Discretization: the number of boundaries <= x
                v = np.searchsorted(np.asarray(c.encoder, np.float64), raw.astype(np.float64), side="right")
                v = v.astype(np.int32)
            else:
                v = raw.astype(np.float32)
            out.setdefault(c.name, []).append(v)
    return {k: np.concatenate(v) for k, v in out.items()}


def scores(spec, split_data: dict, task: str, pred: np.ndarray) -> dict:
    """The zoo's pointwise metrics of `pred` on a decoded split: {'overall': {task: {auc, gauc, logloss, ...}}}."""
    d = {k: v for k, v in split_data.items() if k.startswith(("label/", "weight/", "key/"))}
    d[f"pred/{task}"] = np.asarray(pred, np.float64).reshape(-1)
    return {"overall": task_metrics(spec, d, tasks=[task])}


def _id_columns(spec, artifacts) -> list[Column]:
    user, item = spec.keys["user"], spec.keys["item"]
    return [Column(c, "id", c, encoder=IdEncoder(spec, artifacts, spec.table_of(c))) for c in (user, item)]


# -- logistic regression on user + item one-hot -------------------------------------------------------------------
def run_lr(data, log=print) -> dict:
    from scipy import sparse
    from sklearn.linear_model import LogisticRegression

    spec = data.spec
    task = main_task(spec)
    cols = _id_columns(spec, data.artifacts)
    user, item = cols[0].name, cols[1].name
    n_user = cols[0].encoder.size
    width = n_user + cols[1].encoder.size
    splits = {s: decode(data, s, cols, task) for s in ("train", *EVAL_SPLITS)}

    def onehot(d):
        n = len(d[user])
        rows = np.repeat(np.arange(n), 2)
        idx = np.stack([d[user], n_user + d[item]], axis=1).reshape(-1)
        return sparse.csr_matrix((np.ones(2 * n, np.float32), (rows, idx)), shape=(n, width))

    X = {s: onehot(d) for s, d in splits.items()}
    tr = splits["train"]
    y, w = tr[f"label/{task}"], tr[f"weight/{task}"]
    sel = w > 0
    trials, best = [], None
    start = time.perf_counter()
    for c in LR_C_GRID:
        t = time.perf_counter()
        clf = LogisticRegression(C=c, max_iter=5000, tol=1e-8, solver="lbfgs")
        clf.fit(X["train"][sel], y[sel])
        fit_s = time.perf_counter() - t
        valid = scores(spec, splits["valid"], task, clf.predict_proba(X["valid"])[:, 1])["overall"][task]
        trials.append({"C": c, "valid_auc": valid["auc"], "valid_gauc": valid.get("gauc"), "fit_s": round(fit_s, 2),
                       "iterations": int(clf.n_iter_[0])})
        log(f"  lr C={c:<5} valid auc {valid['auc']:.4f} gauc {valid.get('gauc', float('nan')):.4f} ({fit_s:.1f} s, {int(clf.n_iter_[0])} lbfgs iterations)")
        if best is None or valid["auc"] > best[0]:
            best = (valid["auc"], c, clf)
    seconds = time.perf_counter() - start
    _, c, clf = best
    metrics = {s: scores(spec, splits[s], task, clf.predict_proba(X[s])[:, 1]) for s in EVAL_SPLITS}
    return {"task": task, "metrics": metrics, "train_s": seconds, "epochs": None,
            "details": {"features": [user, item], "one_hot_width": width, "C": c, "C_grid": trials,
                        "train_s_is": "all fits of the C grid (selection on valid AUC included)"}}


# -- popularity ---------------------------------------------------------------------------------------------------
def run_popularity(data, score: str = "rate", log=print) -> dict:
    spec = data.spec
    task = main_task(spec)
    cols = _id_columns(spec, data.artifacts)[1:]
    item = cols[0].name
    splits = {s: decode(data, s, cols, task) for s in ("train", *EVAL_SPLITS)}
    start = time.perf_counter()
    tr = splits["train"]
    y, w = tr[f"label/{task}"].astype(np.float64), tr[f"weight/{task}"].astype(np.float64)
    size = cols[0].encoder.size
    n = np.bincount(tr[item], weights=w, minlength=size)
    pos = np.bincount(tr[item], weights=w * y, minlength=size)
    prior = float(pos.sum() / n.sum())
    if score == "rate":
        table = (pos + POP_SMOOTHING * prior) / (n + POP_SMOOTHING)
        what = f"train positive rate of the item, (pos + {POP_SMOOTHING:g} * {prior:.4f}) / (n + {POP_SMOOTHING:g})"
    else:
        # a count is no probability: logloss is computed on count / max count (AUC / GAUC only depend on the order)
        table = np.log1p(pos) / max(np.log1p(pos).max(), 1e-12)
        what = "train positive count of the item (log1p, scaled to [0, 1])"
    seconds = time.perf_counter() - start
    metrics = {s: scores(spec, splits[s], task, table[splits[s][item]]) for s in EVAL_SPLITS}
    return {"task": task, "metrics": metrics, "train_s": seconds, "epochs": None,
            "details": {"score": what, "prior": prior, "items_in_train": int((n > 0).sum())}}


# -- DeepCTR ------------------------------------------------------------------------------------------------------
def deepctr_inputs(spec, artifacts, model: str, cfg, dc) -> tuple[list, list[Column], list[str], dict]:
    """DeepCTR feature columns (and the numpy columns that feed them) for the features zoo model `model` uses.

    * id / domain features: `SparseFeat` with the spec's embedding size; tables shared as in the spec
      (`embedding_name` = the zoo's table).
    * multi_hot: `VarLenSparseFeat`, the spec's combiner (masked by padding 0).
    * dense: `DenseFeat` of the value normalised with the dataset's train statistics (as the zoo's DenseTransform),
      plus, when the spec buckets it, a `SparseFeat` of the bucket index (the train quantiles, `bucket_embedding_dim`).
    * text / vector: `DenseFeat` of that dimension.
    * sequences: DIN: the history's id fields that share a table with a target column become `hist_<target>`
      (DeepCTR's naming), attended by the targets; other sequences are mean-pooled id fields, as in the zoo.
      DeepFM: every sequence's id fields, mean-pooled (`pool_sequences`).
    DeepFM's FM term in DeepCTR needs one embedding size: fields of `fm_dim` form DeepCTR's default group (the FM);
    fields of another size (e.g. 8-d genres, a 4-d behaviour) get their own group, which feeds the linear part and
    the DNN but not the FM (the zoo projects them into the FM's space instead).
    Returns (feature columns, numpy columns, DIN's history_feature_list, notes).
    """
    SparseFeat, VarLenSparseFeat, DenseFeat = dc["SparseFeat"], dc["VarLenSparseFeat"], dc["DenseFeat"]
    fm_dim = getattr(cfg, "fm_dim", None)
    notes: dict[str, Any] = {"not_in_fm": []}

    def group(dim, name):
        if fm_dim is None or dim == fm_dim:
            return "default_group"
        notes["not_in_fm"].append(name)
        return f"dim{dim}"

    def sparse(name, column, table=None):
        table = table or spec.table_of(column)
        enc = IdEncoder(spec, artifacts, table)
        dim = spec.table_config(table).embedding_dim
        return SparseFeat(name, enc.size, dim, embedding_name=table, group_name=group(dim, name)), enc

    fcs, cols, history_list = [], [], []
    din_history = None
    if model == "din":
        from train_throughput import din_pairs

        din_history, pairs = din_pairs(spec, cfg)
        if any(k != "hist_" + q for q, k in pairs):
            raise ValueError(f"DeepCTR's DIN needs history columns named hist_<target>, got {pairs}")
        history_list = [q for q, _ in pairs]
    for f in spec.inputs:
        if isinstance(f, MultiHotFeature):
            if f.weights:
                raise ValueError(f"{f.name}: weighted multi-hot features are not mapped to DeepCTR")
            fc, enc = sparse(f.name, f.name)
            fcs.append(VarLenSparseFeat(fc, maxlen=f.max_len, combiner=f.combiner))
            cols.append(Column(f.name, "ids", f.name, f.length_name, enc))
        elif isinstance(f, _Categorical):
            fc, enc = sparse(f.name, f.name)
            fcs.append(fc)
            cols.append(Column(f.name, "id", f.name, encoder=enc))
        elif isinstance(f, DenseFeature):
            stats = artifacts.stats[f.name]
            fcs.append(DenseFeat(f.name, 1))
            cols.append(Column(f.name, "dense", f.name, encoder=(f.normalization, stats)))
            if f.buckets and stats.get("boundaries"):
                name = f"{f.name}_bucket"
                fcs.append(SparseFeat(name, len(stats["boundaries"]) + 1, f.bucket_embedding_dim,
                                      group_name=group(f.bucket_embedding_dim, name)))
                cols.append(Column(name, "bucket", f.name, encoder=stats["boundaries"]))
        elif isinstance(f, (VectorFeature, TextFeature)):
            fcs.append(DenseFeat(f.name, f.dim))
            cols.append(Column(f.name, "vector", f.name))
        elif isinstance(f, SequenceFeature):
            if f.name == "eval_negatives" or (model == "deepfm" and not cfg.pool_sequences):
                continue
            for sf in f.fields:
                if sf.kind != "id":
                    continue            # dense / vector history fields: neither zoo model reads them
                if f.name == din_history and sf.name not in {"hist_" + q for q in history_list}:
                    continue            # zoo DIN attends over the paired id fields only
                fc, enc = sparse(sf.name, sf.name)      # (DIN's history is attended; its combiner is unused)
                fcs.append(VarLenSparseFeat(fc, maxlen=f.max_len, combiner="mean"))
                cols.append(Column(sf.name, "ids", sf.name, f.length_name, enc))
    return fcs, cols, history_list, notes


def build_deepctr(model: str, spec, artifacts, exp, cfg, dc):
    fcs, cols, history_list, notes = deepctr_inputs(spec, artifacts, model, cfg, dc)
    if model == "din":
        net = dc["DIN"](fcs, history_list, dnn_hidden_units=tuple(cfg.dnn_units),
                        att_hidden_size=tuple(cfg.attention_units), att_activation=cfg.attention_activation,
                        att_weight_normalization=cfg.attention_normalization == "softmax", l2_reg_embedding=0.0,
                        dnn_dropout=cfg.dropout, seed=exp.seed)
    else:
        if not any(getattr(fc, "group_name", None) == "default_group" for fc in fcs):
            raise ValueError(f"no field has the FM's size fm_dim={cfg.fm_dim}")
        net = dc["DeepFM"](fcs, fcs, dnn_hidden_units=tuple(cfg.dnn_units), l2_reg_linear=0.0,
                           l2_reg_embedding=cfg.l2_embedding, l2_reg_dnn=0.0, dnn_dropout=cfg.dropout, seed=exp.seed)
    return net, cols, notes


def import_deepctr() -> dict:
    from train_throughput import _import_deepctr

    _import_deepctr()            # aliases tensorflow.python.keras.* to tf_keras, then imports deepctr
    import deepctr
    from deepctr.feature_column import DenseFeat, SparseFeat, VarLenSparseFeat
    from deepctr.models import DIN, DeepFM

    return {"deepctr": deepctr, "SparseFeat": SparseFeat, "VarLenSparseFeat": VarLenSparseFeat,
            "DenseFeat": DenseFeat, "DIN": DIN, "DeepFM": DeepFM}


def run_deepctr(model: str, exp, data, log=print) -> dict:
    """DeepCTR's `model` (din | deepfm) trained like zoo experiment `exp` (its params, optimizer, batch size,
    epochs, early stopping, seed) on the same dataset directory."""
    from tfrec_zoo._tf import keras, tf
    from tfrec_zoo.models import model_config
    from training.fit import ResumableEarlyStopping, make_optimizer

    dc = import_deepctr()
    spec = data.spec
    task = main_task(spec)
    cfg = model_config(exp.model, exp.params, f"{exp.source}: params")
    tf.keras.utils.set_random_seed(exp.seed)
    net, cols, notes = build_deepctr(model, spec, data.artifacts, exp, cfg, dc)
    t = time.perf_counter()
    splits = {s: decode(data, s, cols, task) for s in ("train", *EVAL_SPLITS)}
    decode_s = time.perf_counter() - t
    names = [c.name for c in cols]

    def xy(s):
        d = splits[s]
        return {n: d[n] for n in names}, d[f"label/{task}"].astype(np.float32), d[f"weight/{task}"]

    x, y, w = xy("train")
    xv, yv, wv = xy("valid")
    net.compile(make_optimizer(exp.optimizer), keras.losses.BinaryCrossentropy(),
                metrics=[keras.metrics.AUC(name="auc", num_thresholds=2000)])
    cbs = []
    es = exp.early_stopping
    if es:
        monitor = es["monitor"]
        if monitor != f"val_{task}_auc":
            raise ValueError(f"{exp.source}: early_stopping.monitor {monitor!r}: DeepCTR rows only map "
                             f"val_{task}_auc (-> val_auc)")
        cbs.append(ResumableEarlyStopping(None, monitor="val_auc", mode=es.get("mode", "auto"),
                                          patience=int(es.get("patience", 1)),
                                          min_delta=float(es.get("min_delta", 0.0))))
    weighted = bool(np.any(w != 1)) or bool(np.any(wv != 1))
    t = time.perf_counter()
    hist = net.fit(x, y, sample_weight=w if weighted else None, batch_size=exp.batch_size, epochs=exp.epochs,
                   shuffle=True, validation_data=(xv, yv, wv) if weighted else (xv, yv),
                   validation_batch_size=max(exp.batch_size, 4096), callbacks=cbs, verbose=0)
    seconds = time.perf_counter() - t
    metrics = {}
    for s in EVAL_SPLITS:
        xs, _, _ = xy(s)
        metrics[s] = scores(spec, splits[s], task, net.predict(xs, batch_size=4096, verbose=0))
    params = int(sum(np.prod(v.shape) for v in net.trainable_weights))
    log(f"  deepctr {model}: history {hist.history}")
    return {"task": task, "metrics": metrics, "train_s": seconds, "epochs": len(hist.history["loss"]),
            "details": {"deepctr": dc["deepctr"].__version__, "experiment": exp.source, "params": exp.params,
                        "features": names, "decode_s": round(decode_s, 1), "trainable_params": params,
                        "history": hist.history, "best_epoch": getattr(cbs[0], "best_epoch", None) if cbs else None,
                        **notes}}


if __name__ == "__main__":
    sys.exit("run benchmarks/baselines.py")
