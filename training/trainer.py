"""Train a zoo model from an experiment: fit on the spec's tf.data pipeline, resumable, then evaluate.

The flow (each step its own module): the dataset is resolved (datasets.py), the strategy set (strategies.py;
several processes: distribute.py), the model built, restored and compiled (fit.py, restore.py), fitted by the one
fit loop (fit.py), saved and evaluated by the protocol the model declares (evaluation.py). A run directory holds:
    config.yaml       the resolved experiment (after --set overrides)
    backup/           BackupAndRestore state: a run killed at any moment resumes there and ends with the same steps
    early_stopping/   the early-stopping state, so a resumed run stops where the uninterrupted one stops
    checkpoints/      weights after each epoch (ckpt-EPOCH)
    logs/             TensorBoard
    history.csv       one row per epoch: every loss (per task, per auxiliary loss) and metric
    model/            the trained tf_keras model (SavedModel)
    restore.json      what a pretrain -> fine-tune restore copied, remapped, skipped and froze
    metrics.json      exact metrics per split and task (per domain too)
    summary.md        the same as a table, with the spec features the model ignores
    DONE              the run finished: starting it again reports it instead of training again
"""
from __future__ import annotations

import json
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tfrec_zoo._tf import keras, tf
from tfrec_zoo.data import DatasetDir

from .datasets import experiment_data, resolve_dataset, train_dataset, with_domain_weights  # noqa: F401  (their old home)
from .evaluation import evaluate_run_model
from .experiment import Experiment
from .fit import ModelBuildError, build, compile_model, early_stopping_callbacks, fit, make_optimizer  # noqa: F401
from .restore import RestoreReport, copy_variables, freeze
from .runs import atomic_save, is_finished, load_run, mark_finished, new_run_dir  # noqa: F401
from .strategies import is_chief, is_multi_worker, is_parameter_server


@dataclass
class RunResult:
    run_dir: Path
    metrics: dict[str, Any]
    history: dict[str, list]
    seconds: float
    model: Any = None
    finished_before: bool = False       # the run directory held a finished run: nothing was trained


def train(exp: Experiment, run_dir: str | Path, *, strategy=None, verbose: int = 2, log=print,
          evaluate: bool = True, callbacks: list | None = None) -> RunResult:
    """Fit `exp` into `run_dir` (resuming from run_dir/backup if a previous attempt was cut short; a finished run
    is reported, not trained again)."""
    run_dir = Path(run_dir)
    frozen = sorted(k for k, v in exp.params.items() if k.startswith("freeze_") and v)
    if frozen and not (exp.restore or exp.pretrain):
        raise ModelBuildError(f"{exp.source}: params: {frozen} keep restored weights fixed while fine-tuning, but "
                              "nothing is restored (no `pretrain:` or `restore:`): they would stay at their initial "
                              "values; set them false")
    # the dataset first: a wrong `dataset:` fails before a run directory is created (a `join:` of a stage's
    # predictions waits for the stages)
    data = None if exp.join and (exp.stages or exp.pretrain) else experiment_data(exp, log, run_dir)
    config = run_dir / "config.yaml"
    if is_finished(run_dir):
        if yaml.safe_load(config.read_text()) != exp.to_dict():
            raise ValueError(f"{run_dir} holds a run of another config (finished); use a new run directory")
        log(f"{run_dir}: finished already ({run_dir / 'metrics.json'}); nothing to train. Use a new --run-dir "
            "to train again, or `tfrec-zoo evaluate` to re-evaluate it")
        metrics_file = run_dir / "metrics.json"
        metrics = json.loads(metrics_file.read_text()) if metrics_file.exists() else {}
        return RunResult(run_dir, metrics, {}, 0.0, None, finished_before=True)
    new_dir = not run_dir.exists()
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        return _train(exp, run_dir, data, strategy=strategy, verbose=verbose, log=log, evaluate=evaluate,
                      callbacks=callbacks)
    except ModelBuildError as e:
        # params the model rejects (checked against the dataset's spec when it is built): leave nothing behind
        if new_dir:
            shutil.rmtree(run_dir, ignore_errors=True)
        raise e if str(e).startswith(str(exp.source)) else ModelBuildError(f"{exp.source}: params: {e}") from None
    except Exception as e:
        from .experiment import ExperimentError

        if isinstance(e, ExperimentError) and new_dir:      # e.g. a monitor the model does not log
            shutil.rmtree(run_dir, ignore_errors=True)
        raise


def _restore(exp: Experiment, model, data: DatasetDir, log) -> RestoreReport | None:
    cfg = exp.restore
    if not cfg:
        return None
    src_dir = Path(cfg["checkpoint"])
    if not (src_dir / "config.yaml").exists():
        raise FileNotFoundError(f"{exp.source}: restore.checkpoint: {src_dir} is not a run directory (no config.yaml)")
    _, src_data, source_model = load_run(src_dir, log)
    report = copy_variables(source_model, model, source=(src_data.spec, src_data.artifacts),
                            target=(data.spec, data.artifacts), include=cfg.get("include", ()),
                            exclude=cfg.get("exclude", ()))
    # before freezing: a row the pretraining never reached (a new domain) starts from the trained ones
    report.filled = model.fill_unseen_rows()
    try:
        report.frozen = freeze(model, cfg.get("freeze", ()), cfg.get("freeze_level"))
    except ValueError as e:                  # a freeze pattern that names no layer: nothing was trained yet
        raise ModelBuildError(f"{exp.source}: {e}") from None
    log(report.summary())
    return report


def _train(exp: Experiment, run_dir: Path, data: DatasetDir | None, *, strategy, verbose: int, log,
           evaluate: bool, callbacks: list | None) -> RunResult:
    written = exp.to_dict()          # config.yaml keeps the experiment as given (with `stages:` / `pretrain:`)
    if exp.pretrain or exp.stages:
        exp = _run_stages(exp, run_dir, strategy, verbose, log)
    if data is None:
        data = experiment_data(exp, log, run_dir)
    if evaluate and any((exp.evaluation or {}).get(k) for k in ("group_by", "uplift", "policy")):
        from .evaluation import check_group_by, check_policy, check_uplift

        check_group_by(exp, data.spec)
        check_uplift(exp, data.spec)
        check_policy(exp, data.spec)
    elif exp.restore and "from" in exp.restore:
        raise ModelBuildError(f"{exp.source}: restore.from: {exp.restore['from']!r} names no stage")
    strategy = strategy or tf.distribute.get_strategy()
    # distributed (training/distribute.py): only the chief writes run_dir's own files; other MWMS workers would
    # race on them. Their checkpoints / backups / logs go to temp dirs tf_keras' callbacks make and delete.
    chief = is_chief(strategy)
    config = run_dir / "config.yaml"
    if chief:
        if config.exists() and yaml.safe_load(config.read_text()) != written:
            raise ValueError(f"{run_dir} holds a run of another config; use a new run directory to start over")
        config.write_text(yaml.safe_dump(written, sort_keys=False))
    tf.keras.utils.set_random_seed(exp.seed)
    with strategy.scope():
        model = build(exp, data)
        if model.ignored_features:
            log(f"{exp.model} ignores {len(model.ignored_features)} feature(s) of the spec: "
                f"{', '.join(model.ignored_features)}")
        # restore and freeze before compiling, so the optimizer only sees what stays trainable
        report = _restore(exp, model, data, log)
        compile_model(exp, data, model)
    if report is not None and chief:
        (run_dir / "restore.json").write_text(json.dumps(report.to_dict(), indent=1))
    # ParameterServerStrategy: BackupAndRestore skips batch hooks there, so it can only back up per epoch
    backup_freq = "epoch" if is_parameter_server(strategy) else _backup_freq(exp, data)
    # early stopping first: a retrieval stopper writes its score into the epoch logs the CSV / TensorBoard loggers
    # read; its state file lives in run_dir (the chief's), so a resumed run stops where the uninterrupted one does
    stoppers = early_stopping_callbacks(exp, model, data, run_dir if chief else None)
    cbs = stoppers + [
        keras.callbacks.BackupAndRestore(str(run_dir / "backup"), save_freq=backup_freq),
        keras.callbacks.ModelCheckpoint(str(run_dir / "checkpoints" / "ckpt-{epoch:03d}"), save_weights_only=True),
        keras.callbacks.TensorBoard(str(run_dir / "logs"), update_freq=100)]
    if chief:  # CSVLogger has no multi-worker handling of its own
        cbs.append(keras.callbacks.CSVLogger(str(run_dir / "history.csv"), append=True))
    cbs += callbacks or []
    start = time.perf_counter()
    history = fit(model, exp, data, callbacks=cbs, strategy=strategy, verbose=verbose, log=log)
    seconds = time.perf_counter() - start
    # rows training never reached (the OOV row an unknown domain lands on) get the model's fallback before saving
    filled = model.fill_unseen_rows()
    if filled:
        log("; ".join(f"{what}: {', '.join(map(str, rows))}" for what, rows in filled.items()))
    if chief:
        atomic_save(model, run_dir / "model")
    else:
        # MWMS: every worker must call save (it can run collectives); non-chief ones save to a temp dir
        tmp = tempfile.mkdtemp(prefix="tfrec-zoo-worker-model-")
        model.save(tmp, include_optimizer=False)
        shutil.rmtree(tmp, ignore_errors=True)
    metrics = {}
    if evaluate and chief:
        # multi-worker: the chief alone evaluates and writes metrics.json. The fitted model's predict would run
        # collectives (MWMS) or go through the coordinator (PS), so evaluate the saved model locally, exactly as
        # `tfrec-zoo evaluate RUN_DIR` does
        eval_model = load_run(run_dir, log)[2] if is_multi_worker(strategy) else model
        metrics = evaluate_run_model(exp, eval_model, data, run_dir)
    if chief:
        mark_finished(run_dir)
    return RunResult(run_dir, metrics, history.history, seconds, model)


def _run_stages(exp: Experiment, run_dir: Path, strategy, verbose: int, log) -> Experiment:
    """Train every stage into RUN_DIR/NAME in order (a finished stage is not trained again, a killed one resumes)
    and return the final experiment, its `restore.from` turned into that stage's directory."""
    import dataclasses

    from .experiment import as_stages, stage_experiment

    stages, restore = as_stages(exp)
    # a join names columns of its dataset's spec: checked before the first stage trains, not after
    from .join import check_joinable

    for where, dataset, join in [*((f"{exp.source}: stages.{st['name']}.join", st.get("dataset", exp.dataset),
                                    st.get("join")) for st in stages), (f"{exp.source}: join", exp.dataset, exp.join)]:
        if join:
            check_joinable(resolve_dataset(dataset, log).spec, join, where)
    for stage in stages:
        stage_dir = run_dir / stage["name"]
        if not is_finished(stage_dir):
            log(f"stage {stage['name']}: {stage['model']} into {stage_dir}")
        train(stage_experiment(exp, stage, run_dir), stage_dir, strategy=strategy, verbose=verbose, log=log,
              evaluate=bool(stage.get("evaluate") or stage.get("evaluation")))
    if restore and "from" in restore:
        restore = {"checkpoint": str(run_dir / restore["from"]), **{k: v for k, v in restore.items() if k != "from"}}
    return dataclasses.replace(exp, restore=restore, pretrain=None, stages=None)


def _backup_freq(exp: Experiment, data: DatasetDir):
    steps = exp.steps_per_epoch or -(-data.rows("train") // exp.batch_size)
    # a backup every ~tenth of an epoch bounds what a kill loses without slowing training measurably
    return max(1, min(500, steps // 10)) if steps > 10 else "epoch"


def evaluate_run(run_dir: str | Path, log=print) -> dict[str, Any]:
    """Re-evaluate a finished run directory from its saved model (`tfrec-zoo evaluate RUN_DIR`)."""
    exp, data, model = load_run(run_dir, log)
    return evaluate_run_model(exp, model, data, Path(run_dir))
