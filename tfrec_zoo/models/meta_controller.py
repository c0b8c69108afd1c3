"""The meta controller of device-cloud recommendation (MCRec, Yao et al., KDD 2022; seed paper 4).

On the device, at a session step, it picks the mechanism that serves the next items: keep the cloud's ranking,
re-rank on the device, or ask the cloud for a refresh (costly: at most a budget epsilon of the steps). It reads
what the on-device model reads at that moment (its histories and counts) and is trained on counterfactual labels
(the mechanism of the largest estimated uplift; training/replay_steps.py `choice_from`).

    e_l = the history's embeddings     q = mean of the valid e_l (a "pseudo candidate", as the official code)
    h = [TargetAttention(q, e); other features]    p = softmax(W MLP(h))   over the mechanisms

Budget-aware label smoothing (paper sec. 4.4): when the batch's predicted refresh rate (the share whose argmax is
the budgeted class) is above `budget`, the label of every example labelled refresh becomes
(1 - smoothing) * onehot(refresh) + smoothing * onehot(c-), c- the model's second most probable class; otherwise
the label is left alone. A larger `smoothing` (lambda) pushes harder. The budgeted class is the last class (the
replay lists the mechanisms as cloud, device, refresh). The train step logs `<task>_refresh_rate`, the share of
examples it would refresh.
"""
from __future__ import annotations

from dataclasses import dataclass

import tensorflow_recommenders as tfrs

from .._tf import keras, tf
from ..inputs import FeatureEmbeddings, build_inputs
from ..layers import MaskedPooling, TargetAttention, ValidSteps
from . import register_model
from .common import concat, embed_fields, functional_model, heads, mlp, pooled_sequences


@dataclass(frozen=True)
class MetaControllerConfig:
    history: str = ""                   # the sequence attended (default: the spec's first)
    attention_units: tuple = (20, 10)
    dnn_units: tuple = (32,)
    dropout: float = 0.0
    budget: float = 1.0                 # epsilon: the largest share of steps sent to the last class (refresh)
    smoothing: float = 0.0              # lambda of the budget-aware label smoothing (0: plain cross-entropy)

    def check(self) -> None:
        if not 0 < self.budget <= 1:
            raise ValueError(f"budget: the share of steps that may be refreshed must lie in (0, 1], got {self.budget}")
        if not 0 <= self.smoothing <= 1:
            raise ValueError(f"smoothing: lambda must lie in [0, 1], got {self.smoothing}")


class BudgetSmoothedCrossEntropy(keras.losses.Loss):
    """Cross-entropy against budget-aware smoothed labels (module docstring), reduced as the zoo's pointwise
    losses are: sum(w * loss) / B."""

    def __init__(self, budget: float, smoothing: float, name: str = "budget_smoothed_cross_entropy"):
        super().__init__(name=name, reduction=keras.losses.Reduction.NONE)
        self.budget, self.smoothing = float(budget), float(smoothing)

    def targets(self, y_true, y_pred):
        """The (smoothed) one-hot targets of a batch: [B, C]."""
        classes = y_pred.shape[-1]
        budgeted = classes - 1
        y = tf.cast(tf.reshape(y_true, [-1]), tf.int32)
        onehot = tf.one_hot(y, classes)
        rate = tf.reduce_mean(tf.cast(tf.argmax(y_pred, -1, output_type=tf.int32) == budgeted, tf.float32))
        # c-: the most probable class other than the budgeted one (see the module docstring)
        others = tf.concat([y_pred[:, :budgeted], tf.fill([tf.shape(y_pred)[0], 1], -1.0)], -1)
        second = tf.one_hot(tf.argmax(others, -1, output_type=tf.int32), classes)
        smoothed = (1.0 - self.smoothing) * onehot + self.smoothing * second
        use = tf.logical_and(tf.equal(y, budgeted), rate > self.budget)
        return tf.stop_gradient(tf.where(use[:, None], smoothed, onehot))

    def __call__(self, y_true, y_pred, sample_weight=None):
        target = self.targets(y_true, y_pred)
        per_row = -tf.reduce_sum(target * tf.math.log(tf.clip_by_value(y_pred, 1e-7, 1.0)), -1)
        if sample_weight is not None:
            per_row = per_row * tf.cast(tf.reshape(sample_weight, tf.shape(per_row)), per_row.dtype)
        return tf.reduce_sum(per_row) / tf.cast(tf.maximum(tf.size(per_row), 1), per_row.dtype)

    def get_config(self):
        return {"budget": self.budget, "smoothing": self.smoothing, "name": self.name}


class RefreshRate(keras.metrics.Mean):
    """The share of examples whose most probable class is the last (the budgeted mechanism)."""

    def update_state(self, y_true, y_pred, sample_weight=None):
        last = y_pred.shape[-1] - 1
        return super().update_state(tf.cast(tf.argmax(y_pred, -1) == last, tf.float32), sample_weight)


def controller_task(label, cfg: MetaControllerConfig) -> tfrs.tasks.Ranking:
    metrics = [keras.metrics.SparseCategoricalAccuracy(name=f"{label.task}_acc"),
               RefreshRate(name=f"{label.task}_refresh_rate")]
    return tfrs.tasks.Ranking(loss=BudgetSmoothedCrossEntropy(cfg.budget, cfg.smoothing), metrics=metrics,
                              name=f"task_{label.task}")


@register_model("meta_controller", MetaControllerConfig)
def meta_controller(spec, artifacts, cfg: MetaControllerConfig):
    """MCRec's controller: attention over the history with its mean as the query, the other features, an MLP,
    a softmax over the mechanisms; trained with budget-aware label smoothing."""
    labels = [lab for lab in spec.labels if lab.type == "multiclass"]
    if len(spec.labels) != 1 or not labels:
        raise ValueError(f"{spec.source}: meta_controller needs one multiclass label (the mechanism to choose), it "
                         f"has {[(lab.task, lab.type) for lab in spec.labels]}; use `replay: {{choice_from: STAGE}}`")
    sequences = [f.name for f in spec.of_kind("sequence")]
    history = cfg.history or (sequences[0] if sequences else "")
    if history not in sequences:
        raise ValueError(f"history: {history!r} is not a sequence of {spec.source} (its sequences: {sequences})")
    inputs = build_inputs(spec)
    emb = FeatureEmbeddings(spec, artifacts)
    mask = emb.mask(history, inputs)
    ids = [sf.name for sf in spec[history].fields if sf.kind == "id"]
    keys = concat([emb.id(k, {k: ValidSteps(name=f"valid_{k}")([inputs[k], mask])}) for k in ids], "mc_keys")
    padded = concat([emb.id(k, inputs) for k in ids], "mc_padded")
    query = MaskedPooling("mean", name="mc_pseudo_candidate")([padded, mask])
    interest = TargetAttention(cfg.attention_units, "sigmoid", "softmax", name="mc_attention")([query, keys, mask])
    others = embed_fields(spec, emb, inputs).all() + pooled_sequences(spec, emb, inputs, exclude=(history,))
    hidden = mlp(concat(others + [query, interest], "mc_concat"), cfg.dnn_units, dropout=cfg.dropout, name="mc")
    outputs, logits = heads(labels, hidden)
    return functional_model(inputs, outputs, "meta_controller", spec, logits=logits,
                            tasks={labels[0].task: controller_task(labels[0], cfg)})

