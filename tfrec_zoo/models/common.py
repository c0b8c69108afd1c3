"""Feature plumbing every zoo model shares: field embeddings, MLPs, task heads and the losses tasks own.

A model is a function `(spec, artifacts, config) -> keras.Model` whose inputs are `build_inputs(spec)` and whose
outputs are a dict `{task: prediction}`, one per label of the spec (probabilities for binary, class probabilities
for multiclass, values for regression). `task_losses` / `task_metrics` turn the spec's labels into what `compile`
takes, so a trainer never needs to know a model's internals.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from .._tf import keras
from ..features.spec import FeatureSpec, LabelFeature, SequenceFeature
from ..inputs import FeatureEmbeddings


@dataclass(frozen=True)
class Fields:
    """Per-feature [B, d] tensors of the spec's non-sequence inputs, split by how models use them."""

    categorical: dict[str, Any]   # id / domain / pooled multi-hot embeddings
    dense: dict[str, Any]         # normalised floats (+ bucket embeddings)
    vectors: dict[str, Any]       # precomputed / text vectors

    def all(self) -> list[Any]:
        return [*self.categorical.values(), *self.dense.values(), *self.vectors.values()]


def embed_fields(spec: FeatureSpec, emb: FeatureEmbeddings, inputs: dict, exclude: Sequence[str] = ()) -> Fields:
    cat, dense, vec = {}, {}, {}
    for f in spec.inputs:
        if f.name in exclude or isinstance(f, SequenceFeature):
            continue
        t = emb.feature(f.name, inputs)
        {"dense": dense, "vector": vec, "text": vec}.get(f.kind, cat)[f.name] = t
    return Fields(cat, dense, vec)


def functional_model(inputs: dict, outputs: dict, name: str):
    """A functional model over only the inputs its outputs use: the serving signature lists what a request must
    send, and the input pipeline parses nothing else (e.g. DIN ignores a history's behaviour-type field)."""
    probe = keras.Model(inputs, outputs, name=name)
    used = {layer.name for layer in probe.layers
            if isinstance(layer, keras.layers.InputLayer) and layer._outbound_nodes}
    if used == set(inputs):
        return probe
    return keras.Model({k: v for k, v in inputs.items() if k in used}, outputs, name=name)


def mlp(x, units: Sequence[int], *, dropout: float = 0.0, activation: str = "relu", name: str = "mlp",
        batch_norm: bool = False):
    for i, u in enumerate(units):
        x = keras.layers.Dense(u, name=f"{name}_dense{i}")(x)
        if batch_norm:
            x = keras.layers.BatchNormalization(name=f"{name}_bn{i}")(x)
        x = keras.layers.Activation(activation, name=f"{name}_act{i}")(x)
        if dropout:
            x = keras.layers.Dropout(dropout, name=f"{name}_drop{i}")(x)
    return x


def concat(tensors: list, name: str):
    return tensors[0] if len(tensors) == 1 else keras.layers.Concatenate(name=name)(tensors)


def head(label: LabelFeature, x, extra_logit=None):
    """The output of one task from a hidden vector (plus an optional extra logit, e.g. DeepFM's FM term)."""
    units = label.num_classes if label.type == "multiclass" else 1
    logit = keras.layers.Dense(units, name=f"{label.task}_logit")(x)
    if extra_logit is not None:
        logit = keras.layers.Add(name=f"{label.task}_logit_sum")([logit, extra_logit])
    if label.type == "binary":
        return _squeeze(keras.layers.Activation("sigmoid", name=f"{label.task}_prob")(logit), label.task)
    if label.type == "multiclass":
        return keras.layers.Activation("softmax", name=label.task)(logit)
    return _squeeze(logit, label.task)


def _squeeze(x, name: str):
    # [B, 1] -> [B] so predictions line up with labels as make_dataset yields them
    return keras.layers.Reshape((), name=name)(x)


# Binary and regression heads output [B] (labels arrive as [B]). Keras losses average over the last axis, which
# for [B] tensors would collapse the batch into one number and break per-example sample weights (label masks);
# these give one loss per example.
@keras.utils.register_keras_serializable(package="tfrec_zoo")
def binary_crossentropy_per_example(y_true, y_pred):
    return keras.losses.binary_crossentropy(y_true[..., None], y_pred[..., None])


@keras.utils.register_keras_serializable(package="tfrec_zoo")
def squared_error_per_example(y_true, y_pred):
    return keras.losses.mean_squared_error(y_true[..., None], y_pred[..., None])


def task_losses(spec: FeatureSpec) -> tuple[dict, dict]:
    """({task: loss}, {task: loss weight}) from the spec's labels."""
    losses, weights = {}, {}
    for lab in spec.labels:
        losses[lab.task] = {"binary": binary_crossentropy_per_example,
                            "multiclass": keras.losses.sparse_categorical_crossentropy,
                            "regression": squared_error_per_example}[lab.type]
        weights[lab.task] = lab.loss_weight
    return losses, weights


def task_metrics(spec: FeatureSpec) -> dict:
    """Per-task streaming metrics shown during training (the exact evaluation runs after training)."""
    out = {}
    for lab in spec.labels:
        if lab.type == "binary":
            out[lab.task] = [keras.metrics.AUC(name="auc", num_thresholds=2000)]
        elif lab.type == "multiclass":
            out[lab.task] = [keras.metrics.SparseCategoricalAccuracy(name="acc")]
        else:
            out[lab.task] = [keras.metrics.RootMeanSquaredError(name="rmse")]
    return out


def target_and_history(spec: FeatureSpec, target: str | None, history: str | None) -> tuple[str, str, str]:
    """(target column, sequence name, the sequence's id field that shares the target's table).

    Defaults: the spec's `keys.item` and the first sequence with a field in the same embedding table.
    """
    target = target or spec.keys.get("item")
    if not target:
        raise ValueError(f"{spec.source}: the model needs a target item: set `keys: {{item: ...}}` in the spec "
                         "or `target:` in the model config")
    table = spec.table_of(target)
    for seq in spec.of_kind("sequence"):
        if history and seq.name != history:
            continue
        for sf in seq.fields:
            if sf.kind == "id" and spec.table_of(sf.name) == table:
                return target, seq.name, sf.name
    raise ValueError(f"{spec.source}: no sequence field shares {target!r}'s embedding table"
                     + (f" in sequence {history!r}" if history else "")
                     + "; add `shares_embedding_with: " + target + "` to the history's item field")


EVAL_NEGATIVES = "eval_negatives"


def pooled_sequences(spec: FeatureSpec, emb: FeatureEmbeddings, inputs: dict, exclude: Sequence[str] = ()) -> list:
    """Mean-pooled [B, D] of every id field of every sequence (how non-attention models see histories)."""
    from ..layers import MaskedPooling

    out = []
    for seq in spec.of_kind("sequence"):
        # `eval_negatives` holds the sampled candidates of the ranking protocol (training/ranking.py): empty in
        # train, so never a model input
        if seq.name in exclude or seq.name == EVAL_NEGATIVES:
            continue
        fields, mask = emb.sequence(seq.name, inputs)
        for sf in seq.fields:
            if sf.kind == "id":
                out.append(MaskedPooling("mean", name=f"mean_{sf.name}")([fields[sf.name], mask]))
    return out
