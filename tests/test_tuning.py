"""Hyper-parameter search (training/tuning.py) on a ml-latest-small subset: space validation, random search, hyperband,
loading the best trial's model, and Keras Tuner's chief + 2 workers on loopback."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from keras_tuner.src.tuners import bayesian as kt_bayesian

from tfrec_zoo.data import open_dataset
from tfrec_zoo.data.builders import build
from training.experiment import ExperimentError, load_experiment, parse_experiment
from training.tuning import load_trial_model, parse_tune, tune

ROOT = Path(__file__).resolve().parents[1]
EXP = ROOT / "training" / "experiments" / "din-ml-latest-small.yaml"
TINY = ["epochs=1", "early_stopping=null", "batch_size=256", "steps_per_epoch=4"]
SPACE = {"optimizer.learning_rate": {"type": "float", "min": 0.0003, "max": 0.003, "sampling": "log"},
         "params.dnn_units": {"type": "choice", "values": [[16, 8], [32, 16]]},
         "batch_size": {"type": "int", "min": 128, "max": 512, "step": 128}}


@pytest.fixture(scope="module")
def ml_small(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("data") / "ml60"
    build("ml-latest-small", out, progress=False, log=lambda *_: None, options={"max_users": 60})
    return out


def tuned(data: Path, tune_block: dict | None = None, *extra: str):
    raw = yaml.safe_load(EXP.read_text())
    raw["tune"] = tune_block or {"algorithm": "random", "objective": "val_like_auc", "space": SPACE}
    return parse_experiment(raw, "exp.yaml", [f"dataset={data}", *TINY, *extra])


def _exp(space=None, **tune_keys):
    raw = {"name": "x", "dataset": "d", "model": "din", "epochs": 1,
           "tune": {"objective": "val_like_auc", "space": space if space is not None else SPACE, **tune_keys}}
    return parse_experiment(raw, "exp.yaml")


@pytest.mark.parametrize("space, tune_keys, words", [
    ({"optimizer.learning_rate": {"type": "float", "min": 0.01, "max": 0.001}}, {},
     "exp.yaml: tune.space.optimizer.learning_rate.min: must be < max"),
    ({"optimizer.learning_rate": {"type": "float", "min": -1.0, "max": 0.1}}, {},
     "exp.yaml: tune.space.optimizer.learning_rate.min: -1.0 gives an invalid experiment (optimizer.learning_rate"),
    ({"optimizer.learning_rate": {"type": "float", "min": 0.0, "max": 0.1, "sampling": "log"}}, {},
     "tune.space.optimizer.learning_rate.sampling: expected linear, or log with min > 0"),
    ({"optimizer.lr": {"type": "float", "min": 0.1, "max": 0.2}}, {}, "exp.yaml: tune.space.optimizer.lr: is not a key"),
    ({"params.units": {"type": "int", "min": 1, "max": 4}}, {}, "tune.space.params.units: unknown hyper-parameter of din"),
    ({"model": {"type": "choice", "values": ["din", "deepfm"]}}, {}, "tune.space.model: 'model' cannot be tuned"),
    ({"batch_size": {"type": "int", "min": 1.5, "max": 4}}, {}, "tune.space.batch_size.min: expected an integer"),
    ({"batch_size": {"type": "uniform", "min": 1, "max": 4}}, {}, "tune.space.batch_size: expected {type: int"),
    ({"batch_size": {"type": "int", "min": 1, "max": 4, "values": [1]}}, {}, "tune.space.batch_size.values: unknown key"),
    ({"epochs": {"type": "choice", "values": []}}, {}, "tune.space.epochs.values: expected a list of distinct values"),
    ({"epochs": {"type": "choice", "values": [1, 0]}}, {}, r"tune.space.epochs.values\[1\]: 0 gives an invalid"),
    ({}, {}, "exp.yaml: tune.space: expected a mapping"),
    (None, {"algorithm": "grid"}, "exp.yaml: tune.algorithm: 'grid' is not one of"),
    (None, {"objective": "val_like_ndcg"}, "exp.yaml: tune.direction: expected max or min"),
    (None, {"max_trials": 0}, "exp.yaml: tune.max_trials: expected a positive integer"),
    (None, {"algorithm": "hyperband", "factor": 1}, "tune.factor: hyperband's factor must be >= 2"),
])
def test_space_errors_name_file_and_key(space, tune_keys, words):
    with pytest.raises(ExperimentError, match=words.replace("(", r"\(").replace("{", r"\{")):
        parse_tune(_exp(space, **tune_keys))


@pytest.mark.parametrize("path", sorted((ROOT / "training" / "experiments").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_tune_blocks_validate(path):
    exp = load_experiment(path)
    if exp.tune:
        assert parse_tune(exp).hp.space


def test_space_becomes_keras_tuner_hyperparameters():
    cfg = parse_tune(_exp())
    assert [type(h).__name__ for h in cfg.hp.space] == ["Float", "Choice", "Int"]
    assert cfg.direction == "max" and cfg.max_trials == 10 and cfg.encoded == {"params.dnn_units"}
    assert cfg.decode({"params.dnn_units": "[16, 8]", "batch_size": 256, "tuner/epochs": 2}) == {
        "params.dnn_units": [16, 8], "batch_size": 256}
    with pytest.raises(ExperimentError, match="x: tune: is required"):
        parse_tune(parse_experiment({"name": "x", "dataset": "d", "model": "din"}, "x"))


def test_random_search_writes_trials_and_a_loadable_best_experiment(ml_small, tmp_path):
    out = tmp_path / "search"
    result = tune(tuned(ml_small), out, max_trials=2, log=lambda *_: None)
    report = json.loads((out / "trials.json").read_text())
    assert [t["status"] for t in report["trials"]] == ["COMPLETED"] * 2 and report["best"] == result.best["trial_id"]
    assert "| val_like_auc |" in (out / "trials.md").read_text()
    best = load_experiment(out / "best.yaml")
    lr, units, batch = best.optimizer["learning_rate"], best.params["dnn_units"], best.batch_size
    assert 0.0003 <= lr <= 0.003 and units in ([16, 8], [32, 16]) and batch in (128, 256, 384, 512)
    assert result.best["values"] == {"optimizer.learning_rate": lr, "params.dnn_units": units, "batch_size": batch}
    scores = [t["val_like_auc"] for t in report["trials"]]
    assert result.best["val_like_auc"] == max(scores) and all(0.0 < s <= 1.0 for s in scores)
    # the best trial's model is rebuilt and its best epoch's weights loaded: it reproduces the trial's score
    model = load_trial_model(out)
    valid = open_dataset(ml_small).dataset("valid", 4096)
    assert model.evaluate(valid, return_dict=True, verbose=0)["like_auc"] == pytest.approx(max(scores), abs=1e-4)
    trial = result.tuner.oracle.get_best_trials(1)[0]
    assert result.tuner.load_model(trial).count_params() == model.count_params()
    # the same directory resumes (nothing left to run); another experiment there is refused
    again = tune(tuned(ml_small), out, max_trials=2, log=lambda *_: None)
    assert len(again.trials) == 2 and again.best["trial_id"] == result.best["trial_id"]
    with pytest.raises(ValueError, match="another experiment"):
        tune(tuned(ml_small, None, "seed=1"), out, max_trials=2, log=lambda *_: None)


def test_hyperband_runs_with_epochs_from_the_schedule(ml_small, tmp_path):
    block = {"algorithm": "hyperband", "objective": "val_like_auc", "max_epochs": 2, "factor": 2,
             "space": {"optimizer.learning_rate": SPACE["optimizer.learning_rate"]}}
    result = tune(tuned(ml_small, block), tmp_path / "hb", max_trials=4, log=lambda *_: None)
    assert len(result.trials) == 4 and all(t["status"] == "COMPLETED" for t in result.trials)
    assert {t["epochs"] for t in result.trials} <= {1, 2} and 2 in {t["epochs"] for t in result.trials}
    # successive halving: a later round continues a round-0 trial's weights from its epoch
    assert any(t["parent"] is not None and (tmp_path / "hb" / f"trial_{t['parent']}").is_dir() for t in result.trials)
    assert load_experiment(tmp_path / "hb" / "best.yaml").epochs == result.best["epochs"]


def test_bayesian_runs_or_says_what_it_needs(ml_small, tmp_path):
    block = {"algorithm": "bayesian", "objective": "val_like_auc", "space": SPACE}
    if kt_bayesian.scipy is None or kt_bayesian.sklearn is None:  # keras-tuner[bayesian] is not installed
        with pytest.raises(ExperimentError, match="exp.yaml: tune.algorithm: bayesian needs scipy and scikit-learn"):
            tune(tuned(ml_small, block), tmp_path / "bo", max_trials=2, log=lambda *_: None)
        return
    # one trial: the search runs end to end (its proposals past the random start are keras-tuner's business)
    result = tune(tuned(ml_small, block), tmp_path / "bo", max_trials=1, log=lambda *_: None)
    assert [t["status"] for t in result.trials] == ["COMPLETED"]


def test_an_objective_fit_does_not_report_stops_the_search_before_any_trial(ml_small, tmp_path):
    block = {"objective": "val_like_ndcg", "direction": "max", "space": SPACE}
    with pytest.raises(ValueError, match=r"exp.yaml: tune.objective: 'val_like_ndcg' is not logged by din .*"
                                         r"use one of .*val_like_auc"):
        tune(tuned(ml_small, block), tmp_path / "bad", max_trials=2, log=lambda *_: None)
    assert not list((tmp_path / "bad").glob("trial_*"))          # refused before the first trial trained
    # the single-task name `val_auc` (what Keras called it when a spec had one label) is refused the same way
    block = {"objective": "val_auc", "direction": "max", "space": SPACE}
    with pytest.raises(ValueError, match=r"tune.objective: 'val_auc' is not logged"):
        tune(tuned(ml_small, block), tmp_path / "bad2", max_trials=2, log=lambda *_: None)


def test_best_yaml_is_the_experiment_with_only_the_searched_keys_changed(ml_small, tmp_path):
    """A quick search (--set epochs=1 ...) must not leak its overrides into best.yaml."""
    raw = yaml.safe_load(EXP.read_text())
    raw["tune"] = {"algorithm": "random", "objective": "val_like_auc",
                   "space": {"optimizer.learning_rate": SPACE["optimizer.learning_rate"]}}
    base = parse_experiment(raw, "exp.yaml", [f"dataset={ml_small}"])
    overrides = ["epochs=1", "steps_per_epoch=4", "early_stopping=null"]
    exp = parse_experiment(raw, "exp.yaml", [f"dataset={ml_small}", *overrides])
    result = tune(exp, tmp_path / "s", max_trials=1, log=lambda *_: None, base=base, overrides=overrides)
    text = (tmp_path / "s" / "best.yaml").read_text()
    assert "# the search ran with --set epochs=1 steps_per_epoch=4 early_stopping=null" in text
    best = load_experiment(tmp_path / "s" / "best.yaml")
    assert best.epochs == base.epochs == 2 and best.steps_per_epoch is None and best.early_stopping
    assert best.optimizer["learning_rate"] == result.best["values"]["optimizer.learning_rate"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# 40 s of the 25-minute default run; distribution itself is covered by tests/test_distributed.py and tuning by the
# single-process searches here: `make test-slow` runs it
@pytest.mark.slow
def test_distributed_chief_and_two_workers_on_loopback(ml_small, tmp_path):
    exp_file, out = tmp_path / "exp.yaml", tmp_path / "dist"
    exp_file.write_text(yaml.safe_dump(tuned(ml_small).to_dict(), sort_keys=False))
    base = {**os.environ, "KERASTUNER_ORACLE_IP": "127.0.0.1", "KERASTUNER_ORACLE_PORT": str(_free_port()),
            "TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "2", "TF_NUM_INTRAOP_THREADS": "1",
            "TF_NUM_INTEROP_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "training.tuning", str(exp_file), "--out", str(out), "--max-trials", "4",
           "--verbose", "0"]
    procs = {}
    try:
        for tid in ("chief", "tuner0", "tuner1"):
            procs[tid] = subprocess.Popen(cmd, cwd=ROOT, env={**base, "KERASTUNER_TUNER_ID": tid},
                                          stdout=open(tmp_path / f"{tid}.log", "w"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 240  # generous: a loaded 2-core box runs trials 5x slower
        for tid, proc in procs.items():
            rc = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
            assert rc == 0, f"{tid} exited {rc}:\n" + (tmp_path / f"{tid}.log").read_text()[-3000:]
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()  # by PID: only the processes this test started
                proc.wait()
    report = json.loads((out / "trials.json").read_text())
    assert [t["status"] for t in report["trials"]] == ["COMPLETED"] * 4
    assert {t["tuner_id"] for t in report["trials"]} == {"tuner0", "tuner1"}, report
    assert load_experiment(out / "best.yaml").optimizer["learning_rate"] == report["trials"][int(report["best"])][
        "values"]["optimizer.learning_rate"]
