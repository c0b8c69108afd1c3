"""Tasks: one per label of a spec, each owning its loss and its streaming metrics (the TFRS contract).

    tasks = pointwise_tasks(spec)                     # {task: tfrs.tasks.Ranking} from the spec's labels
    loss = tasks["like"](labels["like"], preds["like"], sample_weight=w)

Pointwise tasks are `tfrs.tasks.Ranking` with a per-example loss reduced as Keras' `compile` reduces it (the weighted
sum over the batch's rows divided by the number of rows), so a label mask (sample weight 0) drops a row from the
loss without changing the denominator. Metrics are named `<task>_<metric>` whatever the number of tasks, so an
experiment's `early_stopping.monitor: val_like_auc` means the same on a one-task and a three-task spec.

`retrieval_task(...)` is `tfrs.tasks.Retrieval` (in-batch softmax with its sampling-probability correction and
accidental-hit removal layers) with the loss the zoo's two-tower reports: the mean over positive rows.
"""
from __future__ import annotations

import tensorflow_recommenders as tfrs

from .._tf import keras, tf
from ..features.spec import FeatureSpec, LabelFeature


class PerExampleLoss(keras.losses.Loss):
    """A per-example loss `fn(y_true, y_pred) -> [B]`, reduced to sum(w * loss) / B.

    Keras losses average over the last axis, which for the [B] predictions of binary and regression heads would
    collapse the batch before weighting, so the per-example value is computed on [B, 1] views. The reduction is
    done here (not by `Loss.__call__`), which also keeps it legal inside a tf.distribute replica context.
    """

    def __init__(self, kind: str, name: str | None = None):
        super().__init__(name=name or f"{kind}_per_example", reduction=keras.losses.Reduction.NONE)
        self.kind = kind

    def per_example(self, y_true, y_pred):
        if self.kind == "binary":
            return keras.losses.binary_crossentropy(tf.cast(y_true, y_pred.dtype)[..., None], y_pred[..., None])
        if self.kind == "regression":
            return keras.losses.mean_squared_error(tf.cast(y_true, y_pred.dtype)[..., None], y_pred[..., None])
        return keras.losses.sparse_categorical_crossentropy(y_true, y_pred)

    def call(self, y_true, y_pred):
        return self.per_example(y_true, y_pred)

    def __call__(self, y_true, y_pred, sample_weight=None):
        per_row = self.per_example(y_true, y_pred)
        if sample_weight is not None:
            per_row = per_row * tf.cast(tf.reshape(sample_weight, tf.shape(per_row)), per_row.dtype)
        return tf.reduce_sum(per_row) / tf.cast(tf.maximum(tf.size(per_row), 1), per_row.dtype)

    def get_config(self):
        return {"kind": self.kind, "name": self.name}


def metric_names(label: LabelFeature) -> list[str]:
    """The streaming metrics a task logs during fit (exact metrics are computed after training)."""
    return {"binary": ["auc"], "multiclass": ["acc"], "regression": ["rmse"]}[label.type]


def _metrics(label: LabelFeature) -> list:
    prefix = f"{label.task}_"
    if label.type == "binary":
        return [keras.metrics.AUC(name=prefix + "auc", num_thresholds=2000)]
    if label.type == "multiclass":
        return [keras.metrics.SparseCategoricalAccuracy(name=prefix + "acc")]
    return [keras.metrics.RootMeanSquaredError(name=prefix + "rmse")]


def pointwise_task(label: LabelFeature) -> tfrs.tasks.Ranking:
    """The task of one label: its loss (by label type) and its metrics."""
    return tfrs.tasks.Ranking(loss=PerExampleLoss(label.type), metrics=_metrics(label), name=f"task_{label.task}")


def pointwise_tasks(spec: FeatureSpec) -> dict[str, tfrs.tasks.Ranking]:
    return {lab.task: pointwise_task(lab) for lab in spec.labels}


class PositiveRowsSoftmax(keras.losses.Loss):
    """In-batch softmax cross-entropy averaged over the rows that count as positives (sample weight > 0)."""

    def __init__(self, name: str = "positive_rows_softmax"):
        super().__init__(name=name, reduction=keras.losses.Reduction.NONE)

    def call(self, y_true, y_pred):
        return tf.nn.softmax_cross_entropy_with_logits(labels=y_true, logits=y_pred)

    def __call__(self, y_true, y_pred, sample_weight=None):
        per_row = self.call(y_true, y_pred)
        w = tf.ones_like(per_row) if sample_weight is None else tf.cast(tf.reshape(sample_weight, [-1]), per_row.dtype)
        return tf.math.divide_no_nan(tf.reduce_sum(per_row * w), tf.reduce_sum(w))


def retrieval_task(temperature: float, remove_accidental_hits: bool) -> tfrs.tasks.Retrieval:
    return tfrs.tasks.Retrieval(loss=PositiveRowsSoftmax(), temperature=temperature,
                                remove_accidental_hits=remove_accidental_hits, name="task_retrieval")


def positive_row_weights(labels, sample_weight, task: str):
    """[B] float: 1 for rows whose `task` label is > 0, times their sample weight (0 elsewhere): the rows that count
    as positives of an in-batch softmax (the other rows' items still serve as negatives)."""
    y = labels[task] if isinstance(labels, dict) else labels
    w = tf.cast(tf.reshape(y, [-1]) > 0, tf.float32)
    if sample_weight is not None:
        sw = sample_weight[task] if isinstance(sample_weight, dict) else sample_weight
        w = w * tf.cast(tf.reshape(sw, [-1]), tf.float32)
    return w
