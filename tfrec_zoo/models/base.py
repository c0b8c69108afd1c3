"""The model protocol: what every zoo model states about itself, so the platform never asks for its name.

A `ZooModel` is a functional tf_keras model over `build_inputs(spec)` with `{task: prediction}` outputs, built on
`tfrs.models.Model`: it states its loss (`compute_loss` = the weighted sum of one Task per label plus named
auxiliary losses) and declares

    evaluation_protocol(spec)  "pointwise" | "sampled" | "retrieval" | "losses" (a label-free model: its own
                               losses per split; training/evaluation.py runs each)
    export_kind                "ranking" (serving_default / rank / predict_raw) or "retrieval" (towers + top-K)
    export_options             {option: default} the model's `for_export` understands (e.g. a lifelong model's GSU)
    for_export(...)            the model as it should be served (a serving-only rewrite), with the parity reference
    broadcasts_context         the rank signature may feed request-level features at [1, ...]
    score_model(task)          a model whose output orders candidates (the task's logit: sigmoids saturate)
    ignored_features           spec inputs the model does not read (said when it is built, and in summary.md)
    loss_names                 every loss it logs: `<task>_loss` per task and `<name>_loss` per auxiliary loss
    on_epoch_start(epoch, corpus)
                               called by the platform before every epoch with `corpus() -> (item ids, item
                               vectors)` (computed only when called): e.g. k-means prototypes re-clustered over
                               the item tower's vectors; returns {name: value} to log ({} when it did nothing)
    fill_unseen_rows()         sets weights no training example reached (a domain first seen at fine-tuning, the
                               OOV row of an unknown domain) from trained ones; the platform calls it after a
                               restore and after training, and logs what it returns

Loss weights come from the spec (`loss_weight` of a label), the model's defaults for its auxiliary losses, then the
experiment (`tasks: {like: {loss_weight: w}}`, `losses: {align: w}`) through `set_loss_weights` before `compile`.
A loss with weight 0 is not computed. A model without labels (an autoencoder's pretraining) has only auxiliary
losses. Every loss is averaged over the epoch and logged (`like_loss`, `align_loss`, `val_like_loss`, ...).

A run reloads a model by building it again from its config and reading the trained weights (training/runs.py), so
the Python API (towers, `for_export`) is there after a restart.
"""
from __future__ import annotations

from typing import Any

import tensorflow_recommenders as tfrs

from .._tf import keras, tf
from ..features.spec import FeatureSpec
from .common import EVAL_NEGATIVES
from .tasks import pointwise_tasks


class ZooModel(tfrs.models.Model):
    """A functional zoo model with tasks, auxiliary losses and the declarations above.

    Subclasses add auxiliary losses by passing `aux_outputs` (named intermediate tensors, computed only while an
    auxiliary loss has a weight) and `aux_loss_weights` (their names and default weights), and overriding
    `auxiliary_losses`.
    """

    export_kind = "ranking"
    # raw_text: also sign serving_text / rank_text, taking text features as raw strings (the encoder in the graph)
    export_options: dict[str, Any] = {"raw_text": False}
    broadcasts_context = False

    def __init__(self, inputs: dict, outputs: dict, *, spec: FeatureSpec, name: str, logits: dict | None = None,
                 aux_outputs: dict | None = None, aux_loss_weights: dict[str, float] | None = None,
                 tasks: dict | None = None, **kwargs):
        super().__init__(inputs=inputs, outputs=outputs, name=name, **kwargs)
        # plain attributes (no Keras tracking): tasks and trackers hold metrics, not weights the model saves
        _set(self, "spec", spec)
        _set(self, "_tasks", pointwise_tasks(spec) if tasks is None else tasks)
        _set(self, "_logits", dict(logits or {}))
        _set(self, "_score_models", {})
        _set(self, "default_loss_weights", dict(aux_loss_weights or {}))
        _set(self, "ignored_features", ignored_features(spec, set(self.input_names)))
        train_model = keras.Model(inputs, {**outputs, **aux_outputs}) if aux_outputs else None
        _set(self, "_train_model", train_model)
        if train_model is not None:
            # layers only the auxiliary losses reach (an autoencoder's decoder) are tracked by the model itself:
            # otherwise they would get no gradient (train_step applies the model's variables), and neither a
            # checkpoint nor a restore by name would hold them
            own = {id(layer) for layer in self._flatten_layers(include_self=False)}
            extra = [layer for layer in train_model.layers
                     if id(layer) not in own and not isinstance(layer, keras.layers.InputLayer)]
            if extra:
                self.auxiliary_layers = extra
        weights = {lab.task: lab.loss_weight for lab in spec.labels if lab.task in self._tasks}
        weights.update(self.default_loss_weights)
        _set(self, "loss_weights", weights)
        _set(self, "_trackers", {n: keras.metrics.Mean(name=n) for n in ["loss", *self.loss_names]})

    # -- declarations ----------------------------------------------------------------------------------------------
    def evaluation_protocol(self, spec: FeatureSpec) -> str:
        """Sampled candidates when the dataset carries them (`eval_negatives`), else pointwise metrics."""
        return "sampled" if EVAL_NEGATIVES in {f.name for f in spec.features} else "pointwise"

    @property
    def task_names(self) -> list[str]:
        return list(self._tasks)

    @property
    def auxiliary_loss_names(self) -> list[str]:
        return list(self.default_loss_weights)

    @property
    def loss_names(self) -> list[str]:
        return [f"{n}_loss" for n in [*self.task_names, *self.auxiliary_loss_names]]

    def metric_names(self) -> list[str]:
        """Every name fit logs for this model with its current loss weights (prefix `val_` for the valid split)."""
        return [m.name for m in self.metrics]

    def set_loss_weights(self, weights: dict[str, float], source: str = "losses") -> None:
        """Override task and auxiliary loss weights by name; an unknown name is an error naming the known ones."""
        known = [*self.task_names, *self.auxiliary_loss_names]
        for name, w in weights.items():
            if name not in known:
                raise ValueError(f"{source}.{name}: {self.name} has no loss {name!r}; its losses: {', '.join(known)}")
            self.loss_weights[name] = float(w)

    def for_export(self, options: dict, rebuild) -> tuple["ZooModel", "ZooModel"]:
        """(the model as trained, the model to serve): a serving-only rewrite returns a different second model, and
        the first is the parity reference. `rebuild(params)` builds the same model with other params."""
        unknown = sorted(set(options) - set(self.export_options))
        if unknown:
            raise ValueError(f"export options {unknown} do not apply to {self.name} "
                             f"(it takes {sorted(self.export_options) or 'none'})")
        return self, self

    def score_model(self, task: str):
        """A model whose output orders candidates for `task`: its logit when the model has one, else the output."""
        if task not in self._score_models:
            logit = self._logits.get(task)
            self._score_models[task] = keras.Model(self.inputs, logit) if logit is not None else None
        return self._score_models[task]

    def on_epoch_start(self, epoch: int, corpus) -> dict[str, Any]:
        """Work the model does between epochs over the whole item corpus (see the module docstring); {} here."""
        return {}

    def fill_unseen_rows(self) -> dict[str, Any]:
        """Set per-row weights that no training example reached to a defined fallback; {what: [rows]} of what was
        set ({} when nothing was: most models have no such rows)."""
        return {}

    # -- losses ------------------------------------------------------------------------------------------------------
    def mean_losses(self, dataset, max_batches: int | None = None) -> dict[str, float]:
        """{loss name: its unweighted mean over `dataset`'s batches} for every loss with a non-zero weight (the
        evaluation of a label-free model)."""
        for t in self._trackers.values():
            t.reset_state()
        for i, batch in enumerate(dataset):
            if max_batches is not None and i >= max_batches:
                break
            self.compute_loss(batch, training=False)
        on = {n for n, w in self.loss_weights.items() if w}
        return {n: float(t.result()) for n, t in self._trackers.items() if n[:-len("_loss")] in on}

    def auxiliary_losses(self, features: dict, outputs: dict, training: bool) -> dict[str, Any]:
        """{name: scalar} for the names in `default_loss_weights` whose weight is not 0; `outputs` holds the
        predictions and the `aux_outputs` tensors."""
        return {}

    def task_losses(self, labels, outputs: dict, sample_weight) -> dict[str, Any]:
        out = {}
        for task_name, task in self._tasks.items():
            if self.loss_weights.get(task_name, 1.0) == 0 or labels is None or task_name not in labels:
                continue
            sw = sample_weight.get(task_name) if isinstance(sample_weight, dict) else sample_weight
            out[task_name] = task(labels[task_name], outputs[task_name], sample_weight=sw)
        return out

    def forward(self, features: dict, training: bool) -> dict:
        """Predictions (+ auxiliary tensors when the model has some and they are needed)."""
        if self._train_model is not None and any(self.loss_weights.get(n, 0) for n in self.auxiliary_loss_names):
            return self._train_model({k: features[k] for k in self._train_model.input_names}, training=training)
        out = self({k: features[k] for k in self.input_names}, training=training)
        return out if isinstance(out, dict) else {self.task_names[0]: out}

    def compute_loss(self, inputs, training: bool = False):
        """The weighted sum of the task losses and the auxiliary losses of a `(features, labels[, weights])` batch;
        updates the per-loss trackers and the tasks' metrics."""
        features, labels, sample_weight = keras.utils.unpack_x_y_sample_weight(inputs)
        outputs = self.forward(features, training)
        losses = self.task_losses(labels, outputs, sample_weight)
        losses.update({k: v for k, v in self.auxiliary_losses(features, outputs, training).items()
                       if self.loss_weights.get(k, 0)})
        for name, value in losses.items():
            self._trackers[f"{name}_loss"].update_state(value)
        if not losses:
            return tf.constant(0.0)
        return tf.add_n([self.loss_weights[n] * tf.cast(v, tf.float32) for n, v in losses.items()])

    @property
    def metrics(self):
        """The loss trackers and the tasks' metrics, less those of losses weighted 0 (nothing updates them: a head
        trained with weight 0 has nothing to report)."""
        on = {n for n, w in self.loss_weights.items() if w}
        trackers = [t for n, t in self._trackers.items() if n == "loss" or n[:-len("_loss")] in on]
        return trackers + [m for name, task in self._tasks.items() if name in on for m in task.metrics]

    def train_step(self, data):
        with tf.GradientTape() as tape:
            loss = self.compute_loss(data, training=True)
            total = loss + (tf.add_n(self.losses) if self.losses else 0.0)
            # the optimizer sums gradients over replicas: scale as Keras' compiled loss does
            scaled = total / tf.distribute.get_strategy().num_replicas_in_sync
        grads = tape.gradient(scaled, self.trainable_variables)
        # a head whose loss is weighted 0 gets no gradient: it is left as it is, not an error
        self.optimizer.apply_gradients([(g, v) for g, v in zip(grads, self.trainable_variables) if g is not None])
        self._trackers["loss"].update_state(total)
        return {m.name: m.result() for m in self.metrics}

    def test_step(self, data):
        loss = self.compute_loss(data, training=False)
        self._trackers["loss"].update_state(loss + (tf.add_n(self.losses) if self.losses else 0.0))
        return {m.name: m.result() for m in self.metrics}


def _set(obj, name: str, value) -> None:
    object.__setattr__(obj, name, value)


def ignored_features(spec: FeatureSpec, used: set[str]) -> list[str]:
    """The spec's input features (sequence fields one by one) none of whose tensors the model reads."""
    from ..features.spec import SequenceFeature

    out = []
    for f in spec.inputs:
        if isinstance(f, SequenceFeature):
            if f.name != EVAL_NEGATIVES:       # the sampled protocol's candidates: never a model input
                out += [f"{f.name}.{sf.name}" for sf in f.fields if sf.name not in used]
        elif f.name not in used:
            out.append(f.name)
    return out
