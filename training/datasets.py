"""Dataset resolution and the training input: a dataset directory or a builder name, batches with domain weights."""
from __future__ import annotations

from pathlib import Path

from tfrec_zoo._tf import tf
from tfrec_zoo.data import DatasetDir, open_dataset
from tfrec_zoo.data.reader import damaged_shards, read_failure
from tfrec_zoo.paths import default_data_dir

from .experiment import Experiment, ExperimentError


def experiment_data(exp: Experiment, log=print, run_dir: Path | None = None) -> DatasetDir:
    """The experiment's dataset, with the predictions its `join:` adds (data/joined/, training/join.py; stage
    names resolve under `run_dir`), then the subset its `rows:` selects (data/subsets/), then one example per list
    when it has `replay:` (data/replay/, training/replay_steps.py); each written on first use."""
    data = resolve_dataset(exp.dataset, log)
    if exp.join:
        from .join import join_in_order, resolve_join

        join = resolve_join(exp.join, run_dir)
        try:
            data = join_in_order(data, join, default_data_dir() / "joined", where=f"{exp.source}: join", log=log)
        except FileNotFoundError as e:
            raise ExperimentError(exp.source, "join", str(e).split(": ", 1)[-1]) from None
    if exp.rows:
        from tfrec_zoo.data.subset import RowSelection, select_rows

        try:
            data = select_rows(data, RowSelection.parse(exp.rows), default_data_dir() / "subsets", log=log)
        except ValueError as e:                 # "rows.keep.domain: problem": the key, then what is wrong
            path, _, problem = str(e).partition(": ")
            raise ExperimentError(exp.source, path, problem) from None
    if exp.replay:
        from .experiment import resolve_replay
        from .replay_steps import replay_steps

        try:
            data = replay_steps(data, resolve_replay(exp.replay, run_dir), default_data_dir() / "replay", log=log)
        except (ValueError, FileNotFoundError) as e:     # "replay.keep: problem"
            path, _, problem = str(e).partition(": ")
            raise ExperimentError(exp.source, path, problem) from None
    return data


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


def dataset_dir(name_or_path: str) -> Path:
    """Where `resolve_dataset` finds a dataset: the directory itself, or data/NAME for a builder's name."""
    path = Path(name_or_path)
    return path if (path / "manifest.json").exists() else default_data_dir() / name_or_path


def explain_read_failure(name_or_path: str, error: BaseException) -> str | None:
    """One line naming the damaged shard when `error` (raised while training or evaluating on the dataset) says
    a shard could not be read; None for any other error. tf.data's own message names no file: the shards are
    scanned, which costs nothing unless reading has failed."""
    if not read_failure(error):
        return None
    path = dataset_dir(name_or_path)
    fix = (f"run `tfrec-zoo data check {path}` to list every problem, then rebuild the dataset "
           f"(`tfrec-zoo data build NAME --out {path}` or `tfrec-zoo data write ... --out {path}`)")
    bad = damaged_shards(path)
    if not bad:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        return f"{path}: reading the dataset failed ({first}) but every shard reads whole now. Fix: {fix}"
    more = f" (and {len(bad) - 1} more damaged shard(s))" if len(bad) > 1 else ""
    return f"{bad[0]}{more}: the shard is damaged. Fix: {fix}"


def train_dataset(exp: Experiment, data: DatasetDir, *, repeat: bool = False, features=None,
                  drop_remainder: bool = False):
    ds = data.dataset("train", exp.batch_size, shuffle_buffer=exp.shuffle_buffer, seed=exp.seed, repeat=repeat,
                      features=features, drop_remainder=drop_remainder)
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
