"""Run directories: where a run lives, whether it finished, and how a trained run comes back.

A finished run has `model/` (the trained weights in a SavedModel), its metrics and a `DONE` marker written last. `load_run` builds the model again from the run's config and reads the trained weights into it, so
every model comes back with its Python API (towers, `for_export`), whatever its kind.
"""
from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any

import yaml

from tfrec_zoo.data import DatasetDir

from .datasets import experiment_data
from .experiment import Experiment, parse_experiment

DONE = "DONE"


def new_run_dir(exp: Experiment, root: str | Path = "runs") -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path(root) / f"{exp.name}-{stamp}"


def is_finished(run_dir: Path) -> bool:
    return (run_dir / DONE).exists()


def mark_finished(run_dir: Path) -> None:
    (run_dir / DONE).write_text(time.strftime("%Y-%m-%d %H:%M:%S") + "\n")


def atomic_save(model, path: Path) -> None:
    tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save(tmp, include_optimizer=False)
    old = path.with_name(path.name + f".old-{os.getpid()}")
    if path.exists():
        os.replace(path, old)
    os.replace(tmp, path)
    shutil.rmtree(old, ignore_errors=True)


def load_weights(model, saved_model_dir: Path) -> None:
    """Read the weights of a saved model (a run's run_dir/model) into `model`; every variable of the model must
    be there."""
    run_dir = Path(saved_model_dir)
    status = model.load_weights(str(run_dir / "variables" / "variables"))
    status.expect_partial()        # the SavedModel also holds what the model no longer tracks (optimizer, metrics)
    try:
        status.assert_existing_objects_matched()
    except AssertionError as e:
        raise ValueError(f"{run_dir} does not hold every weight of the model its config builds "
                         f"(trained with other code or params?): {str(e).splitlines()[0][:300]}") from None


def load_run(run_dir: str | Path, log=print) -> tuple[Experiment, DatasetDir, Any]:
    """(experiment, dataset, trained model) of a finished run directory."""
    from .fit import build

    run_dir = Path(run_dir)
    if not (run_dir / "model").exists():
        raise FileNotFoundError(f"{run_dir}: no trained model (run_dir/model); train first")
    exp = parse_experiment(yaml.safe_load((run_dir / "config.yaml").read_text()), str(run_dir / "config.yaml"))
    data = experiment_data(exp, log, run_dir)
    model = build(exp, data)
    load_weights(model, run_dir / "model")
    return exp, data, model
