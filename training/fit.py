"""The one fit loop: compile a zoo model for an experiment, check what early stopping watches, fit.

Used by the trainer (`tfrec-zoo train`), by tuning trials and by `fit_model` (a model fitted in memory, e.g. in
tests and benchmarks). Whatever the model, the loss is the model's own (`ZooModel.compute_loss`: tasks plus
auxiliary losses, weighted by the experiment's `tasks:` and `losses:`), and every name it logs is known before the
first step, so a misspelt `early_stopping.monitor` or tuning objective fails at once, not after training.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from tfrec_zoo._tf import keras, tf
from tfrec_zoo.data import DatasetDir
from tfrec_zoo.models import build_model

from .datasets import train_dataset
from .experiment import Experiment, ExperimentError, parse_experiment
from .strategies import fit_inputs

_OPTIMIZERS = {"adam": keras.optimizers.Adam, "adagrad": keras.optimizers.Adagrad, "sgd": keras.optimizers.SGD,
               "rmsprop": keras.optimizers.RMSprop}


class ModelBuildError(ValueError):
    """The experiment's model cannot be built for its dataset (a wrong hyper-parameter for this spec)."""


def make_optimizer(cfg: dict):
    kw = {"learning_rate": float(cfg.get("learning_rate", 1e-3))}
    if cfg.get("clipnorm"):
        kw["clipnorm"] = float(cfg["clipnorm"])
    return _OPTIMIZERS[cfg.get("name", "adam")](**kw)


def model_spec(exp: Experiment, spec):
    """The spec the experiment's model is built on: the dataset's, less the inputs `features:` leaves out."""
    if not exp.features:
        return spec
    return spec.select(**exp.features, where=f"{exp.source}: features")


def build(exp: Experiment, data: DatasetDir):
    try:
        spec = model_spec(exp, data.spec)
    except ValueError as e:                 # `features:` names what the spec lacks: nothing was built yet
        raise ModelBuildError(str(e)) from None
    try:
        return build_model(exp.model, spec, data.artifacts, exp.params, source=f"{exp.source}: params")
    except ValueError as e:
        # a model's own check names its config field; the experiment file is where the user fixes it
        msg = str(e)
        raise ModelBuildError(msg if str(exp.source) in msg else f"{exp.source}: params: {msg}") from None


def compile_model(exp: Experiment, data: DatasetDir, model=None):
    """Build (unless given) and compile the experiment's model with its loss weights; call inside the strategy's
    scope. `tasks:` and `losses:` naming no loss of the model are errors."""
    if model is None:
        model = build(exp, data)
    weights = {t: float(c["loss_weight"]) for t, c in exp.tasks.items()}
    try:
        model.set_loss_weights(weights, source=f"{exp.source}: tasks")
        model.set_loss_weights(exp.losses or {}, source=f"{exp.source}: losses")
    except ValueError as e:
        raise ModelBuildError(str(e)) from None
    model.compile(make_optimizer(exp.optimizer))
    return model


def check_monitor(exp: Experiment, model, key: str, name: str, extra: tuple[str, ...] = ()) -> None:
    """`name` (e.g. val_like_auc) must be something fit logs for this model (or one of `extra`)."""
    logged = model.metric_names()
    known = [*logged, *(f"val_{n}" for n in logged), *extra]
    if name not in known:
        raise ExperimentError(exp.source, key, f"{name!r} is not logged by {exp.model} on this dataset",
                              f"use one of {', '.join(known)}")


class ResumableEarlyStopping(keras.callbacks.EarlyStopping):
    """EarlyStopping whose state (best value, epochs waited, best epoch and the best epoch's weights) survives a
    killed run: written to `state_dir` after every epoch and read back when a resumed fit begins, so a resumed run
    stops where the uninterrupted one stops and ends with the same weights."""

    def __init__(self, state_dir: Path | None, **kwargs):
        super().__init__(restore_best_weights=True, **kwargs)
        self.state_dir = state_dir

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        state = self.state_dir / "state.json" if self.state_dir else None
        if state is not None and state.exists():
            s = json.loads(state.read_text())
            self.wait, self.best_epoch = int(s["wait"]), int(s["best_epoch"])
            if s["best"] is not None:
                self.best = float(s["best"])
            weights = self.state_dir / "best_weights.npz"
            if weights.exists():
                with np.load(weights) as z:
                    self.best_weights = [z[f"w{i}"] for i in range(len(z.files))]

    def on_epoch_end(self, epoch, logs=None):
        improved_before = self.best_epoch
        super().on_epoch_end(epoch, logs)
        if self.state_dir is None:
            return
        self.state_dir.mkdir(parents=True, exist_ok=True)
        if self.best_weights is not None and (self.best_epoch != improved_before or epoch == 0):
            tmp = self.state_dir / "best_weights.tmp.npz"
            np.savez(tmp, **{f"w{i}": w for i, w in enumerate(self.best_weights)})
            os.replace(tmp, self.state_dir / "best_weights.npz")
        best = None if self.best is None or not math.isfinite(float(self.best)) else float(self.best)
        tmp = self.state_dir / "state.tmp"
        tmp.write_text(json.dumps({"wait": int(self.wait), "best_epoch": int(self.best_epoch), "best": best,
                                   "stopped_epoch": int(self.stopped_epoch), "epoch": int(epoch)}))
        os.replace(tmp, self.state_dir / "state.json")


def early_stopping_callbacks(exp: Experiment, model, data: DatasetDir, run_dir: Path | None = None) -> list:
    """The experiment's early-stopping callback (checked against what the model logs), or []."""
    es = exp.early_stopping
    if not es:
        return []
    monitor = es["monitor"]
    extra = ()
    if model.evaluation_protocol(data.spec) == "retrieval":
        from .retrieval import RetrievalEarlyStopping, retrieval_monitor

        metric = retrieval_monitor(monitor)
        if metric:
            return [RetrievalEarlyStopping(data, metric, patience=int(es.get("patience", 1)))]
        extra = ("val_recall@K", "val_ndcg@K", "val_hitrate@K")
    check_monitor(exp, model, "early_stopping.monitor", monitor, extra)
    return [ResumableEarlyStopping(run_dir / "early_stopping" if run_dir else None, monitor=monitor, mode=es.get("mode", "auto"), patience=int(es.get("patience", 1)),
                                   min_delta=float(es.get("min_delta", 0.0)))]


class EpochStartHook(keras.callbacks.Callback):
    """Calls the model's `on_epoch_start(epoch, corpus)` before every epoch (the protocol's hook, e.g. k-means
    prototypes); `corpus()` computes the item tower's vectors over the dataset's corpus only when the model asks."""

    def __init__(self, data: DatasetDir, log=print):
        super().__init__()
        self.data, self.log = data, log

    def on_epoch_begin(self, epoch, logs=None):
        from .retrieval import corpus_vectors

        said = self.model.on_epoch_start(epoch, lambda: corpus_vectors(self.model, self.data))
        if said:
            self.log(f"epoch {epoch + 1} start: " + ", ".join(f"{k} {v}" for k, v in said.items()))


def wants_epoch_start(model) -> bool:
    from tfrec_zoo.models.base import ZooModel

    return type(model).on_epoch_start is not ZooModel.on_epoch_start


def fit(model, exp: Experiment, data: DatasetDir, *, callbacks: list = (), strategy=None, verbose: int = 2,
        log=print, initial_epoch: int = 0, drop_remainder: bool = False):
    """model.fit on the experiment's train split (valid split for validation), under `strategy`."""
    strategy = strategy or tf.distribute.get_strategy()
    features = list(model.input_names)
    has_valid = "valid" in data.manifest["splits"]
    train_data = train_dataset(exp, data, repeat=exp.steps_per_epoch is not None, features=features,
                               drop_remainder=drop_remainder)
    valid_data = data.dataset("valid", max(exp.batch_size, 4096), features=features) if has_valid else None
    # multi-worker input (MWMS auto-shard policy; PS DatasetCreators + fixed epoch length); a no-op otherwise
    train_data, valid_data, steps, valid_steps = fit_inputs(strategy, exp, data, train_data, valid_data, log)
    if wants_epoch_start(model):
        callbacks = [EpochStartHook(data, log), *callbacks]
    return model.fit(train_data, epochs=exp.epochs, steps_per_epoch=steps, validation_data=valid_data,
                     validation_steps=valid_steps, callbacks=list(callbacks), verbose=verbose,
                     initial_epoch=initial_epoch)


def fit_model(model_name: str, data: DatasetDir, params: dict | None = None, *, epochs: int = 3,
              batch_size: int = 1024, learning_rate: float = 1e-3, shuffle_buffer: int = 200_000, seed: int = 0,
              steps_per_epoch: int | None = None, early_stopping: str | None = None, patience: int = 1,
              verbose: int = 2, drop_remainder: bool = False, **experiment: Any):
    """Build and fit zoo model `model_name` on a `DatasetDir` in memory (no run directory); returns
    (model, keras History with `best_epoch` when early stopping ran). `early_stopping` is a monitor
    (e.g. "val_like_auc", or "recall@50" / "val_recall@50" for retrieval models)."""
    raw = {"name": f"{model_name}-in-memory", "dataset": str(data.path), "model": model_name, "params": params or {},
           "epochs": epochs, "batch_size": batch_size, "optimizer": {"name": "adam", "learning_rate": learning_rate},
           "shuffle_buffer": shuffle_buffer, "seed": seed, "steps_per_epoch": steps_per_epoch, **experiment}
    if early_stopping:
        monitor = early_stopping if early_stopping.startswith("val_") else f"val_{early_stopping}"
        raw["early_stopping"] = {"monitor": monitor, "patience": patience}
    exp = parse_experiment(raw, f"<{model_name} in memory>")
    tf.keras.utils.set_random_seed(seed)
    model = compile_model(exp, data)
    if early_stopping and "valid" not in data.manifest["splits"]:
        raise ValueError(f"{data.path}: early_stopping needs a valid split")
    cbs = early_stopping_callbacks(exp, model, data)
    history = fit(model, exp, data, callbacks=cbs, verbose=verbose, drop_remainder=drop_remainder)
    if cbs:
        history.best_epoch = cbs[0].best_epoch
    return model, history
