"""Hyper-parameter search over an experiment's `tune:` block with Keras Tuner (tf_keras models).

    tune: {algorithm: random,      # random | bayesian (needs scipy + scikit-learn) | hyperband (max_epochs, factor)
           max_trials: 8, objective: val_like_auc, direction: max, epochs: 1, executions_per_trial: 1,
           space: {optimizer.learning_rate: {type: float, min: 0.0003, max: 0.003, sampling: log},
                   params.dnn_units: {type: choice, values: [[200, 80], [128, 64]]}}}   # params.X: model hparams

OUT is Keras Tuner's project dir: trial_ID/ (best-epoch weights, run.json), oracle.json, experiment.yaml (the tuned
experiment; the same command resumes), trials.md + trials.json, and best.yaml (the best values applied: train it).
Distributed (Keras Tuner's chief/worker mode over gRPC): a chief serves the oracle and writes the reports once all
workers are done; workers run trials. All run the same command on the same OUT (shared storage across machines):
    KERASTUNER_TUNER_ID=chief   KERASTUNER_ORACLE_IP=10.0.0.1 KERASTUNER_ORACLE_PORT=8000 python -m training.tuning ...
    KERASTUNER_TUNER_ID=tuner0  (tuner1, ...; same IP and port)                           python -m training.tuning ...
Start them together: workers wait for the chief, but one that comes after the chief has finished waits (up to 1 h).
"""
from __future__ import annotations

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")  # keras_tuner imports Keras 3; tf.keras must stay tf_keras

import argparse, dataclasses, json, math, sys, time  # noqa: E401,E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import keras_tuner as kt  # noqa: E402
import yaml  # noqa: E402
from keras_tuner.src.distribute import utils as dist_utils  # noqa: E402
from keras_tuner.src.tuners import bayesian as kt_bayesian  # noqa: E402  (None when missing)

from tfrec_zoo._tf import keras  # noqa: E402

from .datasets import experiment_data  # noqa: E402
from .experiment import _SUBKEYS, Experiment, ExperimentError, _set, load_experiment, parse_experiment  # noqa: E402
from .fit import check_monitor, compile_model, fit  # noqa: E402

ALGORITHMS = ("random", "bayesian", "hyperband")
_FIXED = ("name", "dataset", "model", "tune", "restore", "strategy")  # one search = one dataset and model
_NUM_KEYS = {"type", "min", "max", "step", "sampling"}
_DIM_KEYS = {"int": _NUM_KEYS, "float": _NUM_KEYS, "choice": {"type", "values"}}


@dataclass
class TuneConfig:
    """The validated `tune:` block; `hp` is the Keras Tuner search space."""
    algorithm: str
    objective: str
    direction: str
    max_trials: int | None
    epochs: int
    executions_per_trial: int
    max_epochs: int
    factor: int
    hp: kt.HyperParameters
    encoded: set[str] = field(default_factory=set)  # choice keys whose values travel as JSON strings

    def decode(self, values: dict) -> dict[str, Any]:
        """A trial's raw hp values -> experiment values (space keys only; `tuner/*` bookkeeping dropped)."""
        return {k: json.loads(v) if k in self.encoded else v for k, v in values.items() if not k.startswith("tuner/")}


def apply_values(exp: Experiment, values: dict[str, Any], **fixed: Any) -> Experiment:
    """A validated copy of `exp` with dotted `values` (then plain `fixed` fields) applied."""
    raw = exp.to_dict()
    for key, value in values.items():
        _set(raw, key, value)
    return parse_experiment({**raw, **fixed}, exp.source)


def _check_key(exp: Experiment, key: str, fail) -> None:
    parts, where = key.split("."), f"tune.space.{key}"
    if parts[0] in _FIXED:
        fail(where, f"{parts[0]!r} cannot be tuned (one search runs one dataset and model)")
    if parts[0] == "params":
        from tfrec_zoo.models import model_config

        known = [f.name for f in dataclasses.fields(model_config(exp.model, exp.params))]
        if len(parts) != 2 or parts[1] not in known:
            fail(where, f"unknown hyper-parameter of {exp.model}", f"use one of params.{', params.'.join(known)}")
        return
    node: Any = exp.to_dict()
    for part in parts:
        node = node.get(part, KeyError) if isinstance(node, dict) else KeyError
    if node is KeyError and not (len(parts) == 2 and parts[1] in _SUBKEYS.get(parts[0], ())):
        fail(where, "is not a key of the experiment", "use a dotted key such as optimizer.learning_rate or params.X")


def _add_dim(cfg: TuneConfig, key: str, dim: Any, fail) -> list[tuple[str, Any]]:
    """Declare one dimension in cfg.hp; returns (path, value) probes to validate against the experiment."""
    where, kind = f"tune.space.{key}", dim.get("type") if isinstance(dim, dict) else None
    if kind not in _DIM_KEYS:
        fail(where, f"expected {{type: int|float|choice, ...}}, got {dim!r}")
    for sub in set(dim) - _DIM_KEYS[kind]:
        fail(f"{where}.{sub}", f"unknown key for type {kind}", f"use {', '.join(sorted(_DIM_KEYS[kind]))}")
    if kind == "choice":
        values = dim.get("values")
        if not isinstance(values, list) or not values or len({json.dumps(v) for v in values}) != len(values):
            fail(f"{where}.values", f"expected a list of distinct values, got {values!r}")
        # Keras Tuner's Choice holds one scalar type; lists (dnn_units) and mixed types travel as JSON strings
        if len({type(v) for v in values}) > 1 or not isinstance(values[0], (bool, int, float, str)):
            cfg.encoded.add(key)
        cfg.hp.Choice(key, [json.dumps(v) for v in values] if key in cfg.encoded else values)
        return [(f"{where}.values[{i}]", v) for i, v in enumerate(values)]
    lo, hi, step, sampling = dim.get("min"), dim.get("max"), dim.get("step"), dim.get("sampling", "linear")
    for name, v in (("min", lo), ("max", hi), ("step", step)):
        if (v is not None or name != "step") and (isinstance(v, bool) or not isinstance(
                v, int if kind == "int" else (int, float))):
            fail(f"{where}.{name}", f"expected {'an integer' if kind == 'int' else 'a number'}, got {v!r}")
    if not lo < hi:
        fail(f"{where}.min", f"must be < max ({hi}), got {lo}", "a fixed value belongs in the experiment, not tune")
    if step is not None and step <= 0:
        fail(f"{where}.step", f"must be > 0, got {step}")
    if sampling not in ("linear", "log") or (sampling == "log" and lo <= 0):
        fail(f"{where}.sampling", f"expected linear, or log with min > 0; got {sampling!r} with min {lo}")
    (cfg.hp.Int if kind == "int" else cfg.hp.Float)(key, lo, hi, step=step, sampling=sampling)
    return [(f"{where}.min", lo), (f"{where}.max", hi)]


def parse_tune(exp: Experiment) -> TuneConfig:
    """Validate `exp.tune` into a TuneConfig; errors name the file and the key (`exp.yaml: tune.space.X.min: ...`)."""
    def fail(path: str, problem: str, fix: str = "") -> None:
        raise ExperimentError(exp.source, path, problem, fix)

    t = exp.tune or {}
    algorithm, objective, space = t.get("algorithm", "random"), t.get("objective"), t.get("space")
    if not t:
        fail("tune", "is required to tune", "add tune: {objective: val_like_auc, space: {...}}")
    if algorithm not in ALGORITHMS:
        fail("tune.algorithm", f"{algorithm!r} is not one of {', '.join(ALGORITHMS)}")
    if algorithm == "bayesian" and (kt_bayesian.scipy is None or kt_bayesian.sklearn is None):
        fail("tune.algorithm", "bayesian needs scipy and scikit-learn", "pip install keras-tuner[bayesian]")
    if not isinstance(objective, str):
        fail("tune.objective", f"expected a metric name such as val_like_auc, got {objective!r}")
    direction = t.get("direction", "min" if "loss" in objective else "max" if objective.endswith(("auc", "accuracy"))
                      else None)
    if direction not in ("max", "min"):
        fail("tune.direction", f"expected max or min, got {direction!r}", f"say whether {objective} is maximised")
    ints = {"max_trials": None if algorithm == "hyperband" else 10, "epochs": exp.epochs, "executions_per_trial": 1,
            "max_epochs": t.get("epochs", exp.epochs), "factor": 3}
    ints = {key: t.get(key, default) for key, default in ints.items()}
    for key, value in ints.items():
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            fail(f"tune.{key}", f"expected a positive integer, got {value!r}")
    if ints["factor"] < 2:
        fail("tune.factor", f"hyperband's factor must be >= 2, got {ints['factor']}")
    if not isinstance(space, dict) or not space:
        fail("tune.space", f"expected a mapping of dotted keys to dimensions, got {space!r}")
    cfg = TuneConfig(algorithm, objective, direction, hp=kt.HyperParameters(), **ints)
    for key, dim in space.items():
        if algorithm == "hyperband" and key == "epochs":
            fail("tune.space.epochs", "hyperband chooses the epochs", "bound them with tune.max_epochs")
        _check_key(exp, str(key), fail)
        for where, value in _add_dim(cfg, str(key), dim, fail):
            try:  # every bound and choice must make a valid experiment, so that no trial fails on a typo
                apply_values(exp, {key: value})
            except ExperimentError as e:
                fail(where, f"{value!r} gives an invalid experiment ({e.path}: {e.problem})")
    return cfg


def _weights(trial_dir: str | Path) -> str:
    return str(Path(trial_dir) / "weights" / "best")


def _restore_model(exp: Experiment, data, trial_dir: str | Path):
    if not Path(_weights(trial_dir) + ".index").exists():
        raise FileNotFoundError(f"{trial_dir}: no weights (the trial failed or never finished an epoch)")
    model = compile_model(exp, data)
    model.load_weights(_weights(trial_dir)).expect_partial()  # optimizer slots are not needed to predict
    return model


class ExperimentTuner(kt.engine.base_tuner.BaseTuner):
    """Runs trials of an experiment with tf_keras (Keras Tuner's own `Tuner` type-checks for Keras 3 models)."""

    def __init__(self, exp: Experiment, cfg: TuneConfig, out_dir: Path, *, verbose: int = 0, log=print):
        common = dict(objective=kt.Objective(cfg.objective, cfg.direction), hyperparameters=cfg.hp,
                      seed=exp.seed + 1)  # Keras Tuner reads seed 0 as "random"
        if cfg.algorithm == "hyperband":
            oracle = kt.oracles.HyperbandOracle(max_epochs=cfg.max_epochs, factor=cfg.factor, **common)
            oracle.max_trials = cfg.max_trials  # Hyperband sizes itself; max_trials only caps it
        else:
            oracle = (kt.oracles.BayesianOptimizationOracle if cfg.algorithm == "bayesian"
                      else kt.oracles.RandomSearchOracle)(max_trials=cfg.max_trials, **common)
        self.exp, self.cfg, self.fit_verbose, self.log, self._data, self.ran = exp, cfg, verbose, log, None, []
        self.base, self.overrides = None, []
        super().__init__(oracle, directory=str(out_dir.parent), project_name=out_dir.name)

    @property
    def data(self):
        if self._data is None:  # lazily: the distributed chief never trains, so it never opens the dataset
            self._data = experiment_data(self.exp, self.log)
        return self._data

    def trial_experiment(self, values: dict) -> Experiment:
        decoded = self.cfg.decode(values)
        return apply_values(self.exp, decoded, epochs=values.get("tuner/epochs", decoded.get("epochs",
                                                                                            self.cfg.epochs)))

    def run_trial(self, trial, *args, **kwargs) -> list[dict[str, float]]:
        values, obj, data = trial.hyperparameters.values, self.cfg.objective, self.data
        exp = self.trial_experiment(values)
        if "valid" not in data.manifest["splits"]:
            raise kt.errors.FatalValueError(f"{exp.dataset}: tuning validates on the valid split; it has none")
        trial_dir, start, results = self.get_trial_dir(trial.trial_id), time.perf_counter(), []
        # one checkpoint callback for every execution: it keeps the best epoch of any of them
        saver = keras.callbacks.ModelCheckpoint(_weights(trial_dir), monitor=obj, mode=self.cfg.direction,
                                                save_best_only=True, save_weights_only=True)
        for execution in range(self.cfg.executions_per_trial):
            keras.backend.clear_session()  # else trials pile up graphs and layer names
            keras.utils.set_random_seed(exp.seed + execution)
            model = compile_model(exp, data)
            if "tuner/trial_id" in values:  # hyperband: continue the parent trial's best weights
                model.load_weights(_weights(self.get_trial_dir(values["tuner/trial_id"]))).expect_partial()
            cbs, es = [saver], exp.early_stopping
            if es:
                cbs.append(keras.callbacks.EarlyStopping(monitor=es["monitor"], mode=es.get("mode", "auto"),
                                                         patience=int(es.get("patience", 1)),
                                                         min_delta=float(es.get("min_delta", 0.0))))
            history = fit(model, exp, data, callbacks=cbs, verbose=self.fit_verbose,
                          initial_epoch=values.get("tuner/initial_epoch", 0)).history
            if obj not in history:
                raise kt.errors.FatalValueError(f"{exp.source}: tune.objective: {obj!r} is not a metric of fit; "
                                                f"known: {', '.join(sorted(history))}")
            best = (max if self.cfg.direction == "max" else min)(range(len(history[obj])), key=history[obj].__getitem__)
            results.append({k: float(v[best]) for k, v in history.items()})
        run = {"tuner_id": self.tuner_id, "seconds": round(time.perf_counter() - start, 2), "epochs": exp.epochs}
        (Path(trial_dir) / "run.json").write_text(json.dumps(run) + "\n")
        self.ran.append(trial.trial_id)
        return results  # Keras Tuner averages the executions

    def load_model(self, trial):
        """The trial's model, rebuilt from its values, with its best epoch's weights; compiled."""
        exp = self.trial_experiment(trial.hyperparameters.values)
        return _restore_model(exp, self.data, self.get_trial_dir(trial.trial_id))


@dataclass
class TuneResult:
    out_dir: Path
    role: str                           # single | chief | worker (a worker has no report: the chief writes it)
    trials: list[dict] = field(default_factory=list)
    best: dict | None = None            # the best completed trial's row; None when none completed
    best_experiment: Experiment | None = None
    tuner: ExperimentTuner | None = None


def _report(tuner: ExperimentTuner, out_dir: Path, role: str, log) -> TuneResult:
    cfg, rows, keys = tuner.cfg, [], list(tuner.cfg.decode(tuner.cfg.hp.values))
    for tid, trial in sorted(tuner.oracle.trials.items(), key=lambda kv: int(kv[0])):
        run_file, values = Path(tuner.get_trial_dir(tid)) / "run.json", trial.hyperparameters.values
        run = json.loads(run_file.read_text()) if run_file.exists() else {}
        score = float(trial.score) if trial.score is not None and not math.isnan(trial.score) else None
        rows.append({"trial_id": tid, "status": trial.status, "values": cfg.decode(values), cfg.objective: score,
                     "epochs": tuner.trial_experiment(values).epochs, "tuner_id": run.get("tuner_id"),
                     "seconds": run.get("seconds"), "parent": values.get("tuner/trial_id"),  # hyperband continued it
                     "error": next(iter((trial.message or "").strip().splitlines()[-1:]), None)})
    done = [r for r in rows if r["status"] == "COMPLETED" and r[cfg.objective] is not None]
    best = (max if cfg.direction == "max" else min)(done, key=lambda r: r[cfg.objective]) if done else None
    (out_dir / "trials.json").write_text(json.dumps({"objective": cfg.objective, "direction": cfg.direction,
                                                     "best": best and best["trial_id"], "trials": rows}, indent=1))
    lines = [f"| trial | status | {' | '.join(keys)} | {cfg.objective} | epochs | tuner | seconds |",
             "|---" * (len(keys) + 6) + "|"]
    for r in rows:
        cells = [r["trial_id"] + " *" * (r is best), r["status"], *(json.dumps(r["values"].get(k)) for k in keys),
                 "" if r[cfg.objective] is None else f"{r[cfg.objective]:.5f}", r["epochs"], r["tuner_id"], r["seconds"]]
        lines.append("| " + " | ".join("" if c is None else str(c) for c in cells) + " |")
    (out_dir / "trials.md").write_text(f"# tuning {tuner.exp.name}: {cfg.algorithm}, {cfg.direction} {cfg.objective} "
                                       "(* = best)\n\n" + "\n".join(lines) + "\n")
    log("\n".join(lines))
    best_exp = None
    if best:
        # the experiment's own values (not the search's --set overrides, e.g. a short `epochs: 1` search) with
        # only the searched keys changed; hyperband chooses the epochs, so they come from the trial then
        searched_epochs = cfg.algorithm == "hyperband" or "epochs" in best["values"]
        best_exp = apply_values(tuner.base or tuner.exp, best["values"],
                                **({"epochs": best["epochs"]} if searched_epochs else {}))
        head = f"# best trial {best['trial_id']} of {out_dir}: {cfg.objective} = {best[cfg.objective]:.5f}\n"
        if tuner.overrides:
            head += (f"# the search ran with --set {' '.join(tuner.overrides)}; not kept here: this is the "
                     "experiment's own file with only the searched keys changed\n")
        (out_dir / "best.yaml").write_text(head + yaml.safe_dump(best_exp.to_dict(), sort_keys=False))
        log(f"best: trial {best['trial_id']} -> {out_dir / 'best.yaml'}")
    return TuneResult(out_dir, role, rows, best, best_exp, tuner)


def _check_names(tuner: ExperimentTuner) -> None:
    """The objective and the early-stopping monitor must be names fit logs for this model: checked on the model
    built once, before any trial trains (a misspelt one would otherwise fail every trial after training)."""
    exp = tuner.exp
    keras.backend.clear_session()
    model = compile_model(exp, tuner.data)
    check_monitor(exp, model, "tune.objective", tuner.cfg.objective)
    if exp.early_stopping:
        check_monitor(exp, model, "early_stopping.monitor", exp.early_stopping["monitor"])
    keras.backend.clear_session()


def tune(exp: Experiment, out_dir: str | Path, max_trials: int | None = None, *, verbose: int = 0,
         log=print, base: Experiment | None = None, overrides: list[str] = ()) -> TuneResult:
    """Search `exp.tune`'s space in `out_dir` (resuming a search there); chief/worker from KERASTUNER_* env vars.
    `base` (the experiment before the `overrides` that gave `exp`) is what best.yaml is written from."""
    cfg, out_dir = parse_tune(exp), Path(out_dir)
    cfg.max_trials = max_trials or cfg.max_trials
    out_dir.mkdir(parents=True, exist_ok=True)
    pinned, tmp = out_dir / "experiment.yaml", out_dir / f".experiment.yaml.{os.getpid()}"
    if pinned.exists() and yaml.safe_load(pinned.read_text()) != exp.to_dict():
        raise ValueError(f"{out_dir} holds a search of another experiment; use a new --out to start over")
    tmp.write_text(yaml.safe_dump(exp.to_dict(), sort_keys=False))
    os.replace(tmp, pinned)  # atomically: the chief and the workers may all write it at once
    tuner = ExperimentTuner(exp, cfg, out_dir, verbose=verbose, log=log)
    tuner.base, tuner.overrides = base, list(overrides)
    if not dist_utils.is_chief_oracle():
        _check_names(tuner)
    if dist_utils.is_chief_oracle():
        log(f"[tune] chief: oracle on {os.environ['KERASTUNER_ORACLE_IP']}:{os.environ['KERASTUNER_ORACLE_PORT']}")
    tuner.search(verbose=verbose)  # the chief serves the oracle until every worker has been told to stop
    if tuner._is_worker():
        return TuneResult(out_dir, "worker", [{"trial_id": t} for t in tuner.ran], tuner=tuner)
    return _report(tuner, out_dir, "chief" if dist_utils.is_chief_oracle() else "single", log)


def load_trial_model(out_dir: str | Path, trial_id: str | None = None):
    """A finished search's trial model (default: the best), rebuilt and loaded from OUT/trial_ID/weights."""
    out_dir = Path(out_dir)
    report = json.loads((out_dir / "trials.json").read_text())
    rows = [r for r in report["trials"] if r["trial_id"] == (trial_id or report["best"])]
    if not rows:
        raise KeyError(f"{out_dir}: no trial {trial_id or report['best']!r} in trials.json")
    exp = apply_values(load_experiment(out_dir / "experiment.yaml"), rows[0]["values"])
    return _restore_model(exp, experiment_data(exp, lambda *_: None), out_dir / f"trial_{rows[0]['trial_id']}")


def main(argv: list[str] | None = None) -> int:
    """`python -m training.tuning EXP --out OUT [--set k=v] [--max-trials N]`: distributed runs and tests use it."""
    p = argparse.ArgumentParser(prog="python -m training.tuning", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("experiment")
    p.add_argument("--out", required=True, help="the search directory (an existing one resumes)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--max-trials", type=int)
    p.add_argument("--verbose", type=int, default=2, help="fit() verbosity per trial")
    args = p.parse_args(argv)
    result = tune(load_experiment(args.experiment, args.set), args.out, args.max_trials, verbose=args.verbose)
    return 0 if result.role == "worker" or result.best else 1


if __name__ == "__main__":
    sys.exit(main())
