"""Batch scoring: a trained run's predictions on a split, with the examples' keys (`tfrec-zoo predict`).

    tfrec-zoo predict RUN_DIR --split test [--data DATASET_DIR] --out preds.parquet

One row per example of the split, in file order: `row` (its position in the split), the spec's key columns that
the data holds (`keys.user`, `keys.item`, `keys.time`, `keys.query`), then one column per model output, named by
the task (`like`; multiclass tasks hold the class probabilities as a list). `--data` scores another dataset
directory written with a spec that has the model's inputs (e.g. next week's data); by default the run's own.
The file is written beside its destination and renamed at the end, so a killed run never leaves half a file.
An experiment's `join:` (training/join.py) adds these predictions to a later stage's data as a column.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from tfrec_zoo.data import DatasetDir, open_dataset

from .runs import load_run


def key_columns(data: DatasetDir) -> list[str]:
    """The spec's key columns that are features of the data (so the TFRecords hold them)."""
    names = {f.name for f in data.spec.inputs}
    return [c for role, c in data.spec.keys.items() if role in ("user", "item", "time", "query") and c in names]


def predictions(model, data: DatasetDir, split: str, batch_size: int = 4096, feed: dict[str, str] | None = None):
    """{column: array} of `split`: row, key columns, one column per model output. `feed` ({model input: data
    column}) scores the model with another column of the data in place of one of its inputs."""
    import pandas as pd

    feed = feed or {}
    inputs = list(model.input_names)
    from tfrec_zoo.inputs import build_inputs

    missing = [feed.get(k, k) for k in inputs if feed.get(k, k) not in build_inputs(data.spec)]
    if missing:
        raise ValueError(f"{data.path}: the model reads {missing}, which the dataset's spec does not have; score a "
                         "dataset written with the run's spec (or one that adds features to it)")
    keys = key_columns(data)
    cols: dict[str, list] = {}
    read = [feed.get(k, k) for k in inputs]
    for batch in data.dataset(split, batch_size, features=list(dict.fromkeys(read + keys))):
        feats = batch[0]
        out = model.predict_on_batch({k: feats[feed.get(k, k)] for k in inputs})
        out = out if isinstance(out, dict) else {"prediction": out}
        for k in keys:
            v = feats[k].numpy()
            # string keys come back as bytes: decode them (astype(str) would write "b'...'")
            cols.setdefault(k, []).append(np.array([x.decode() for x in v], dtype=object) if v.dtype == object else v)
        for task, v in out.items():
            cols.setdefault(task, []).append(np.asarray(v))
    frame = {}
    n = 0
    for k, parts in cols.items():
        arr = np.concatenate(parts) if parts else np.zeros(0)
        n = len(arr)
        frame[k] = list(arr) if arr.ndim > 1 else arr
    frame = {"row": np.arange(n, dtype=np.int64), **frame}
    return pd.DataFrame(frame)


def predict_run(run_dir: str | Path, split: str, out: str | Path, *, data_dir: str | Path | None = None,
                batch_size: int = 4096, feed: dict[str, str] | None = None, log=print) -> Path:
    """Write the run's predictions on `split` (of `data_dir`, default the run's dataset) to `out` (.parquet or
    .csv); `feed` ({model's sequence: the data's sequence}) scores with another history in place of the model's."""
    exp, data, model = load_run(run_dir, log)
    if data_dir is not None:
        data = open_dataset(data_dir)
    if split not in data.manifest["splits"]:
        raise ValueError(f"{data.path}: no split {split!r}; splits: {', '.join(data.manifest['splits'])}")
    from .join import feed_names

    names = feed_names(model.spec, data.spec, feed or {}, "--feed") if feed else None
    frame = predictions(model, data, split, batch_size, feed=names)
    out = Path(out)
    if out.suffix not in (".parquet", ".csv"):
        raise ValueError(f"--out {out}: write .parquet or .csv")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    try:
        frame.to_parquet(tmp, index=False) if out.suffix == ".parquet" else frame.to_csv(tmp, index=False)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    log(f"wrote {out}: {len(frame):,} rows of {data.path} [{split}] scored by {exp.model} "
        f"({', '.join(c for c in frame.columns if c != 'row')})")
    return out
