"""Feature plumbing every zoo model shares: field embeddings, MLPs, task heads and the losses tasks own.

A model is a function `(spec, artifacts, config) -> ZooModel` (tfrec_zoo/models/base.py) whose inputs are
`build_inputs(spec)` and whose outputs are a dict `{task: prediction}`, one per label of the spec (probabilities for
binary, class probabilities for multiclass, values for regression); the model owns its losses (tasks.py).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from .._tf import keras, tf
from ..features.spec import FeatureSpec, LabelFeature, SequenceFeature
from ..inputs import FeatureEmbeddings, at_level


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


def functional_model(inputs: dict, outputs: dict, name: str, spec: FeatureSpec, *, cls=None, **kwargs):
    """A ZooModel (or `cls`) over only the inputs its outputs use: the serving signature lists what a request must
    send, and the input pipeline parses nothing else (e.g. DIN ignores a history's rating field; the model lists
    what it ignores in `ignored_features`). `kwargs` go to the model (logits, aux_outputs, ...)."""
    from .base import ZooModel

    return (cls or ZooModel)(used_inputs(inputs, outputs), outputs, spec=spec, name=name, **kwargs)


def used_inputs(inputs: dict, outputs) -> dict:
    """The inputs some output depends on (walked back from the outputs: a branch that leads nowhere, e.g. a
    history's dense field embedded and then dropped, does not count)."""
    reached, stack, seen = set(), list(tf.nest.flatten(outputs)), set()
    while stack:
        t = stack.pop()
        layer, node_index, _ = t._keras_history
        if (id(layer), node_index) in seen:
            continue
        seen.add((id(layer), node_index))
        if isinstance(layer, keras.layers.InputLayer):
            reached.add(layer.name)
            continue
        # only the call that produced this tensor: a shared layer's other calls may sit on dead branches
        stack.extend(tf.nest.flatten(layer._inbound_nodes[node_index].keras_inputs))
    return {k: v for k, v in inputs.items() if k in reached}


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


def head(label: LabelFeature, x, extra_logit=None) -> tuple[Any, Any]:
    """(the output of one task, its logit) from a hidden vector (plus an optional extra logit, e.g. DeepFM's FM
    term). The logit is what candidate ranking scores by (float32 sigmoids of strong candidates tie at 1.0)."""
    units = label.num_classes if label.type == "multiclass" else 1
    logit = keras.layers.Dense(units, name=f"{label.task}_logit")(x)
    if extra_logit is not None:
        logit = keras.layers.Add(name=f"{label.task}_logit_sum")([logit, extra_logit])
    if label.type == "binary":
        return _squeeze(keras.layers.Activation("sigmoid", name=f"{label.task}_prob")(logit), label.task), logit
    if label.type == "multiclass":
        return keras.layers.Activation("softmax", name=label.task)(logit), logit
    return _squeeze(logit, label.task), logit


def heads(labels, hidden, extra_logit=None) -> tuple[dict, dict]:
    """({task: output}, {task: logit}) of every label; `hidden` is one tensor or {task: tensor}; `extra_logit`
    ([B, 1]) is added to every task's logit."""
    outputs, logits = {}, {}
    for lab in labels:
        outputs[lab.task], logits[lab.task] = head(lab, hidden[lab.task] if isinstance(hidden, dict) else hidden,
                                                   extra_logit)
    return outputs, logits


def _squeeze(x, name: str):
    # [B, 1] -> [B] so predictions line up with labels as make_dataset yields them
    return keras.layers.Reshape((), name=name)(x)


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


def pooled_sequence(spec: FeatureSpec, emb: FeatureEmbeddings, inputs: dict, name: str) -> dict[str, Any]:
    """{id field: its mean-pooled [B, D]} of one sequence (layers `mean_<field>`)."""
    from ..layers import MaskedPooling

    fields, mask = emb.sequence(name, inputs)
    return {sf.name: at_level(MaskedPooling("mean", name=f"mean_{sf.name}"), 1)([fields[sf.name], mask])
            for sf in spec[name].fields if sf.kind == "id"}


def pooled_sequences(spec: FeatureSpec, emb: FeatureEmbeddings, inputs: dict, exclude: Sequence[str] = ()) -> list:
    """Mean-pooled [B, D] of every id field of every sequence (how non-attention models see histories)."""
    out = []
    for seq in spec.of_kind("sequence"):
        # `eval_negatives` holds the sampled candidates of the ranking protocol (training/ranking.py): empty in
        # train, so never a model input
        if seq.name in exclude or seq.name == EVAL_NEGATIVES:
            continue
        out += pooled_sequence(spec, emb, inputs, seq.name).values()
    return out


def domain_feature(spec: FeatureSpec, model: str, name: str | None = None, why: str = ""):
    """The spec's `domain` feature (`name`, or the only one); a clear error naming the spec file when there is none
    (or several and no `name`). `why` says what needs it (e.g. "params.gating=domain")."""
    found = spec.of_kind("domain")
    need = f"{model}{' (' + why + ')' if why else ''}"
    if name:
        match = [f for f in found if f.name == name]
        if not match:
            raise ValueError(f"{spec.source}: {need} needs the domain feature {name!r}, which this spec does not "
                             f"have (its domain features: {[f.name for f in found] or 'none'}); declare it with "
                             "`kind: domain` or name another one")
        return match[0]
    if not found:
        raise ValueError(f"{spec.source}: {need} needs a feature of `kind: domain` (the scenario each example comes "
                         "from); add one to the spec or use a single-domain model")
    if len(found) > 1:
        raise ValueError(f"{spec.source}: {need}: the spec has several domain features "
                         f"({[f.name for f in found]}); name one with the model's `domain` param")
    return found[0]


def domain_rows(spec: FeatureSpec, emb: FeatureEmbeddings, inputs: dict, feature) -> tuple[Any, int]:
    """(int [B] row index of each example's domain, number of rows). Row 0.. are the OOV buckets (a domain value the
    vocabulary has never seen), then the vocabulary in order: per-domain weights are indexed by these rows, so an
    unknown domain in a request lands on an OOV row instead of failing."""
    index = emb.index(feature.name, inputs)
    return index, emb.artifacts.vocab_size(spec, spec.table_of(feature.name))
