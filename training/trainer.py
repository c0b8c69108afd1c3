"""Train a zoo model from an experiment: fit on the spec's tf.data pipeline, resumable, then evaluate.

A run directory holds:
    config.yaml       the resolved experiment (after --set overrides)
    backup/           BackupAndRestore state: a run killed at any moment resumes there and ends with the same steps
    checkpoints/      weights after each epoch (ckpt-EPOCH)
    logs/             TensorBoard
    model/            the trained tf_keras model (SavedModel)
    restore.json      what a pretrain -> fine-tune restore copied, remapped, skipped and froze
    metrics.json      exact metrics per split and task (per domain too)
    summary.md        the same as a table
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tfrec_zoo._tf import keras, tf
from tfrec_zoo.data import DatasetDir, open_dataset
from tfrec_zoo.models import build_model
from tfrec_zoo.models.common import task_losses, task_metrics
from tfrec_zoo.paths import default_data_dir

from .distribute import fit_inputs, is_chief, is_multi_worker, is_parameter_server
from .evaluation import evaluate_split, format_table
from .experiment import Experiment, load_experiment, parse_experiment
from .restore import RestoreReport, copy_variables, freeze

_OPTIMIZERS = {"adam": keras.optimizers.Adam, "adagrad": keras.optimizers.Adagrad, "sgd": keras.optimizers.SGD,
               "rmsprop": keras.optimizers.RMSprop}


def resolve_dataset(name_or_path: str, log=print) -> DatasetDir:
    """A dataset directory, or a builder name built into data/NAME on first use."""
    path = Path(name_or_path)
    if (path / "manifest.json").exists():
        return open_dataset(path)
    from tfrec_zoo.data.builders import BUILDERS, _load_all, build

    _load_all()
    if name_or_path not in BUILDERS:
        raise FileNotFoundError(f"dataset {name_or_path!r} is neither a dataset directory nor a known dataset "
                                f"({', '.join(sorted(BUILDERS))})")
    out = default_data_dir() / name_or_path
    if not (out / "manifest.json").exists():
        log(f"building dataset {name_or_path} into {out}")
        build(name_or_path, out, log=log)
    return open_dataset(out)


def make_optimizer(cfg: dict):
    kw = {"learning_rate": float(cfg.get("learning_rate", 1e-3))}
    if cfg.get("clipnorm"):
        kw["clipnorm"] = float(cfg["clipnorm"])
    return _OPTIMIZERS[cfg.get("name", "adam")](**kw)


def compile_model(exp: Experiment, data: DatasetDir, model=None):
    """Build (unless given) and compile the experiment's model; call inside the strategy's scope."""
    if model is None:
        model = build_model(exp.model, data.spec, data.artifacts, exp.params, source=f"{exp.source}: params")
    losses, weights = task_losses(data.spec)
    for task, cfg in exp.tasks.items():
        if task not in weights:
            raise ValueError(f"{exp.source}: tasks.{task}: the dataset has no task {task!r} ({', '.join(weights)})")
        weights[task] = float(cfg["loss_weight"])
    model.compile(make_optimizer(exp.optimizer), losses, loss_weights=weights, metrics=task_metrics(data.spec))
    return model


def model_features(model) -> list[str]:
    """The input names a model reads: the pipeline parses only these (plus labels)."""
    return list(model.input_names)


def train_dataset(exp: Experiment, data: DatasetDir, *, repeat: bool = False, features=None):
    ds = data.dataset("train", exp.batch_size, shuffle_buffer=exp.shuffle_buffer, seed=exp.seed, repeat=repeat,
                      features=features)
    return with_domain_weights(ds, exp, data.spec)


def with_domain_weights(ds, exp: Experiment, spec):
    """Multiply every task's sample weights by the example's domain weight (`domain_loss_weights`)."""
    if not exp.domain_loss_weights:
        return ds
    tables = []
    for feat, weights in exp.domain_loss_weights.items():
        f = spec[feat] if feat in [x.name for x in spec.features] else None
        if f is None or f.kind != "domain":
            raise ValueError(f"{exp.source}: domain_loss_weights.{feat}: not a `domain` feature of {spec.source}")
        key_dtype = tf.string if f.dtype == "string" else tf.int64
        keys = [str(k) for k in weights] if f.dtype == "string" else [int(k) for k in weights]
        tables.append((feat, tf.lookup.StaticHashTable(tf.lookup.KeyValueTensorInitializer(
            tf.constant(keys, key_dtype), tf.constant([float(w) for w in weights.values()], tf.float32)), 1.0)))

    def weigh(*batch):
        feats, labels = batch[0], batch[1]
        weights = dict(batch[2]) if len(batch) > 2 else {t: tf.ones_like(v) for t, v in labels.items()}
        scale = tf.ones_like(next(iter(labels.values())))
        for feat, table in tables:
            scale = scale * table.lookup(feats[feat])
        return feats, labels, {t: w * scale for t, w in weights.items()}

    return ds.map(weigh, num_parallel_calls=tf.data.AUTOTUNE)


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
    try:
        report.frozen = freeze(model, cfg.get("freeze", ()), cfg.get("freeze_level"))
    except ValueError as e:                  # a freeze pattern that names no layer: nothing was trained yet
        raise ModelBuildError(f"{exp.source}: {e}") from None
    log(report.summary())
    return report


@dataclass
class RunResult:
    run_dir: Path
    metrics: dict[str, Any]
    history: dict[str, list]
    seconds: float
    model: Any = None


def new_run_dir(exp: Experiment, root: str | Path = "runs") -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path(root) / f"{exp.name}-{stamp}"


def train(exp: Experiment, run_dir: str | Path, *, strategy=None, verbose: int = 2, log=print,
          evaluate: bool = True, callbacks: list | None = None) -> RunResult:
    """Fit `exp` into `run_dir` (resuming from run_dir/backup if a previous attempt was cut short)."""
    run_dir = Path(run_dir)
    frozen = sorted(k for k, v in exp.params.items() if k.startswith("freeze_") and v)
    if frozen and not (exp.restore or exp.pretrain):
        raise ModelBuildError(f"{exp.source}: params: {frozen} keep restored weights fixed while fine-tuning, but "
                              "nothing is restored (no `pretrain:` or `restore:`): they would stay at their initial "
                              "values; set them false")
    # the dataset first: a wrong `dataset:` fails before a run directory is created
    data = resolve_dataset(exp.dataset, log)
    new_dir = not run_dir.exists()
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        return _train(exp, run_dir, data, strategy=strategy, verbose=verbose, log=log, evaluate=evaluate,
                      callbacks=callbacks)
    except ModelBuildError as e:
        # params the model rejects (checked against the dataset's spec when it is built): leave nothing behind
        if new_dir:
            import shutil

            shutil.rmtree(run_dir, ignore_errors=True)
        raise e if str(e).startswith(str(exp.source)) else ModelBuildError(f"{exp.source}: params: {e}") from None


class ModelBuildError(ValueError):
    """The experiment's model cannot be built for its dataset (a wrong hyper-parameter for this spec)."""


def _build(name: str, data: DatasetDir, params: dict, source: str):
    try:
        return build_model(name, data.spec, data.artifacts, params, source=source)
    except ValueError as e:
        raise ModelBuildError(str(e)) from None


def _train(exp: Experiment, run_dir: Path, data: DatasetDir, *, strategy, verbose: int, log, evaluate: bool,
           callbacks: list | None) -> RunResult:
    written = exp.to_dict()          # config.yaml keeps the experiment as given (with `pretrain:`)
    if exp.pretrain:
        exp = _pretrain_stage(exp, run_dir, strategy, verbose, log)
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
        model = _build(exp.model, data, exp.params, f"{exp.source}: params")
        # restore and freeze before compiling, so the optimizer only sees what stays trainable
        report = _restore(exp, model, data, log)
        compile_model(exp, data, model)
    if report is not None and chief:
        (run_dir / "restore.json").write_text(json.dumps(report.to_dict(), indent=1))
    # ParameterServerStrategy: BackupAndRestore skips batch hooks there, so it can only back up per epoch
    backup_freq = "epoch" if is_parameter_server(strategy) else _backup_freq(exp, data)
    # early stopping first: a retrieval stopper writes its score into the epoch logs the CSV / TensorBoard loggers read
    stoppers = []
    if exp.early_stopping and is_retrieval(model) and _retrieval_monitor(exp.early_stopping["monitor"]):
        # full-corpus recall / NDCG on the valid split after each epoch (training/retrieval.py)
        from .retrieval import RetrievalEarlyStopping

        es = exp.early_stopping
        stoppers.append(RetrievalEarlyStopping(data, _retrieval_monitor(es["monitor"]),
                                               patience=int(es.get("patience", 1))))
    elif exp.early_stopping:
        es = exp.early_stopping
        stoppers.append(keras.callbacks.EarlyStopping(monitor=es["monitor"], mode=es.get("mode", "auto"),
                                                      patience=int(es.get("patience", 1)),
                                                      min_delta=float(es.get("min_delta", 0.0)),
                                                      restore_best_weights=True))
    cbs = stoppers + [
        keras.callbacks.BackupAndRestore(str(run_dir / "backup"), save_freq=backup_freq),
        keras.callbacks.ModelCheckpoint(str(run_dir / "checkpoints" / "ckpt-{epoch:03d}"), save_weights_only=True),
        keras.callbacks.TensorBoard(str(run_dir / "logs"), update_freq=100)]
    if chief:  # CSVLogger has no multi-worker handling of its own
        cbs.append(keras.callbacks.CSVLogger(str(run_dir / "history.csv"), append=True))
    cbs += callbacks or []
    has_valid = "valid" in data.manifest["splits"]
    features = model_features(model)
    train_data = train_dataset(exp, data, repeat=exp.steps_per_epoch is not None, features=features)
    valid_data = data.dataset("valid", max(exp.batch_size, 4096), features=features) if has_valid else None
    # multi-worker input (MWMS auto-shard policy; PS DatasetCreators + fixed epoch length); a no-op otherwise
    train_data, valid_data, steps, valid_steps = fit_inputs(strategy, exp, data, train_data, valid_data, log)
    start = time.perf_counter()
    history = model.fit(train_data, epochs=exp.epochs, steps_per_epoch=steps, validation_data=valid_data,
                        validation_steps=valid_steps, callbacks=cbs, verbose=verbose)
    seconds = time.perf_counter() - start
    if chief:
        _atomic_save(model, run_dir / "model")
    else:
        # MWMS: every worker must call save (it can run collectives); non-chief ones save to a temp dir
        import shutil
        import tempfile

        tmp = tempfile.mkdtemp(prefix="tfrec-zoo-worker-model-")
        model.save(tmp, include_optimizer=False)
        shutil.rmtree(tmp, ignore_errors=True)
    metrics = {}
    if evaluate and chief:
        # multi-worker: the chief alone evaluates and writes metrics.json. The fitted model's predict would run
        # collectives (MWMS) or go through the coordinator (PS), so evaluate the saved model locally, exactly as
        # `tfrec-zoo evaluate RUN_DIR` does
        eval_model = keras.models.load_model(run_dir / "model", compile=False) if is_multi_worker(strategy) else model
        metrics = evaluate_run_model(exp, eval_model, data, run_dir)
    return RunResult(run_dir, metrics, history.history, seconds, model)


def _pretrain_stage(exp: Experiment, run_dir: Path, strategy, verbose: int, log) -> Experiment:
    """Train `exp.pretrain` into run_dir/pretrain (skipped when a finished one is there: a resumed run does not
    pretrain again) and return the fine-tuning experiment restoring it."""
    import dataclasses

    from .experiment import pretrain_experiment

    pre_dir = run_dir / "pretrain"
    if not (pre_dir / "model").exists():
        log(f"pretraining {exp.pretrain['model']} into {pre_dir}")
        train(pretrain_experiment(exp), pre_dir, strategy=strategy, verbose=verbose, log=log, evaluate=False)
    keys = ("include", "exclude", "freeze", "freeze_level")
    restore = {"checkpoint": str(pre_dir), **{k: exp.pretrain[k] for k in keys if k in exp.pretrain}}
    return dataclasses.replace(exp, restore=restore, pretrain=None)


def is_retrieval(model) -> bool:
    """Retrieval models (the two-tower) are evaluated over the full corpus and export as towers + top-K."""
    from tfrec_zoo.models.two_tower import TwoTowerModel

    return isinstance(model, TwoTowerModel)


def _retrieval_monitor(monitor: str) -> str | None:
    """"val_recall@50" -> "recall@50" (a full-corpus metric RetrievalEarlyStopping computes); else None."""
    name = monitor[4:] if monitor.startswith("val_") else ""
    return name if name.split("@")[0] in ("recall", "hitrate", "ndcg") and "@" in name else None


def _backup_freq(exp: Experiment, data: DatasetDir):
    steps = exp.steps_per_epoch or -(-data.rows("train") // exp.batch_size)
    # a backup every ~tenth of an epoch bounds what a kill loses without slowing training measurably
    return max(1, min(500, steps // 10)) if steps > 10 else "epoch"


def _atomic_save(model, path: Path) -> None:
    import shutil

    tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save(tmp, include_optimizer=False)
    old = path.with_name(path.name + f".old-{os.getpid()}")
    if path.exists():
        os.replace(path, old)
    os.replace(tmp, path)
    shutil.rmtree(old, ignore_errors=True)


def trained_tasks(exp: Experiment, data: DatasetDir) -> list[str]:
    """Tasks with a non-zero loss weight: a head trained with weight 0 has nothing to report."""
    weights = {lab.task: lab.loss_weight for lab in data.spec.labels}
    weights.update({t: float(c["loss_weight"]) for t, c in exp.tasks.items()})
    return [t for t, w in weights.items() if w > 0]


def evaluate_run_model(exp: Experiment, model, data: DatasetDir, run_dir: Path) -> dict[str, Any]:
    ev = exp.evaluation or {}
    if is_retrieval(model):
        return _evaluate_retrieval_run(exp, model, data, run_dir)
    from .ranking import has_sampled_protocol

    if has_sampled_protocol(data.spec):
        return _evaluate_sampled_run(exp, model, data, run_dir)
    results = {}
    for split in ev.get("splits", ["valid", "test"]):
        if split in data.manifest["splits"]:
            # the model's inputs plus what metrics group by (user for GAUC, domains)
            keys = [c for c in [data.spec.keys.get("user"), *(f.name for f in data.spec.of_kind("domain"))] if c]
            ds = data.dataset(split, 4096, features=model_features(model) + keys)
            results[split] = evaluate_split(model, ds, data.spec, ev.get("max_batches"), trained_tasks(exp, data))
    (run_dir / "metrics.json").write_text(json.dumps(results, indent=1, default=float) + "\n")
    (run_dir / "summary.md").write_text(f"# {exp.name}\n\nmodel `{exp.model}` on `{exp.dataset}`\n\n"
                                        + format_table(results) + "\n")
    return results


def _evaluate_retrieval_run(exp: Experiment, model, data: DatasetDir, run_dir: Path) -> dict[str, Any]:
    """Full-corpus Recall / HitRate / NDCG@K (+ the popularity baseline) per split: training/retrieval.py's protocol.
    `evaluation: {ks: [10, 50, 100], max_users: N}` in the experiment."""
    from .retrieval import evaluate_retrieval

    ev = exp.evaluation or {}
    ks = tuple(int(k) for k in ev.get("ks", (10, 50, 100)))
    results = {}
    for split in ev.get("splits", ["valid", "test"]):
        if split in data.manifest["splits"]:
            r = evaluate_retrieval(model, data, split=split, ks=ks, max_users=ev.get("max_users"))
            results[split] = {"overall": {f"{who} ({view})": r[who][view] for who in ("two_tower", "popularity")
                                          for view in ("filtered", "all")},
                              "protocol": r["protocol"]}
    (run_dir / "metrics.json").write_text(json.dumps(results, indent=1, default=float) + "\n")
    (run_dir / "summary.md").write_text(f"# {exp.name}\n\nmodel `{exp.model}` on `{exp.dataset}` (full-corpus "
                                        "retrieval; filtered = the user's earlier items removed)\n\n"
                                        + format_table(results) + "\n")
    return results


def _evaluate_sampled_run(exp: Experiment, model, data: DatasetDir, run_dir: Path) -> dict[str, Any]:
    """Leave-one-out with sampled negatives (training/ranking.py): HIT/NDCG@k, MRR, AUC, GAUC per split and mode.
    `evaluation: {modes: [recommendation, search], ks: [1, 5, 10, 50], max_rows: N}` in the experiment."""
    from .ranking import MODES, evaluate_sampled

    ev = exp.evaluation or {}
    results = {}
    for split in ev.get("splits", ["valid", "test"]):
        if split in data.manifest["splits"]:
            r = evaluate_sampled(model, data, split, modes=ev.get("modes", MODES), ks=ev.get("ks", (1, 5, 10, 50)),
                                 max_rows=ev.get("max_rows"))
            results[split] = {"overall": {f"{data.spec.labels[0].task} ({mode})": m for mode, m in r.items()}}
    (run_dir / "metrics.json").write_text(json.dumps(results, indent=1, default=float) + "\n")
    (run_dir / "summary.md").write_text(f"# {exp.name}\n\nmodel `{exp.model}` on `{exp.dataset}` (1 positive + "
                                        "sampled negatives per row)\n\n" + format_table(results) + "\n")
    return results


def load_run(run_dir: str | Path, log=print) -> tuple[Experiment, DatasetDir, Any]:
    """(experiment, dataset, trained keras model) of a finished run directory."""
    run_dir = Path(run_dir)
    if not (run_dir / "model").exists():
        raise FileNotFoundError(f"{run_dir}: no trained model (run_dir/model); train first")
    exp = parse_experiment(yaml.safe_load((run_dir / "config.yaml").read_text()), str(run_dir / "config.yaml"))
    data = resolve_dataset(exp.dataset, log)
    if exp.model in _rebuilt_models():
        # a reloaded SavedModel has the call graph but not the model's Python API (a two-tower's towers):
        # rebuild it from the config and read the saved variables into it
        model = build_model(exp.model, data.spec, data.artifacts, exp.params, source=f"{exp.source}: params")
        model.load_weights(str(run_dir / "model" / "variables" / "variables")).expect_partial()
        return exp, data, model
    return exp, data, keras.models.load_model(run_dir / "model", compile=False)


# models whose Python API (beyond call) the platform uses after training: load_run rebuilds them
def _rebuilt_models() -> set[str]:
    from tfrec_zoo.models.seminar import LIFELONG_MODELS

    return {"two_tower", *LIFELONG_MODELS}


def evaluate_run(run_dir: str | Path, log=print) -> dict[str, Any]:
    """Re-evaluate a finished run directory from its saved model (`tfrec-zoo evaluate RUN_DIR`)."""
    exp, data, model = load_run(run_dir, log)
    return evaluate_run_model(exp, model, data, Path(run_dir))
