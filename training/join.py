"""Joined predictions: an earlier stage's scores as a column of a later stage's dataset (`join:` in an experiment).

    stages:
      - {name: cloud, model: din, features: {keep: [user_id, item_id, cloud_history]}, rows: {...}}
      - name: device
        model: din
        params: {prior: cloud_prior}
        join:
          cloud_prior: {from: cloud}                       # the cloud model's click probability per example
          refresh_prior: {from: cloud, feed: {cloud_history: device_history}}   # ... scored with another input

The column must be a `joined: true` dense feature of the dataset's spec (the spec stays the only place a feature is
described; the builder leaves it out). `from` names an earlier stage (or a run directory); `output` the task whose
prediction fills it (default: the run's only binary task); `feed` scores the run's model with a sequence of the
data in place of the one it was trained on (the same fields and length): the cloud model refreshed with the
in-session clicks. Every split is scored as `tfrec-zoo predict` scores it (training/predict.py) and the records are
written again with the column added, into `data/joined/<parent>.join-<fingerprint>/` (the fingerprint covers the
parent's manifest, the join and the scoring model's weights: a retrained stage gets a new join), atomically and
once; `rows:` then selects from the joined dataset.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Callable

import numpy as np

from tfrec_zoo.data import DatasetDir, open_dataset
from tfrec_zoo.data.derived import with_columns, write_derived
from tfrec_zoo.features.spec import SequenceFeature

JOIN_KEYS = {"from", "output", "feed"}


def check_join(join: Any, where: str, earlier: list[str] | None, fail) -> None:
    """The shape of a `join:` mapping; `earlier` = the stage names it may take predictions from (None: the
    experiment has no stages, so `from` must be a run directory)."""
    if not isinstance(join, dict) or not join:
        fail(where, f"expected {{column: {{from: STAGE}}}}, got {join!r}")
    for col, cfg in join.items():
        at = f"{where}.{col}"
        if not isinstance(cfg, dict) or "from" not in cfg:
            fail(at, f"expected {{from: STAGE, output: TASK, feed: {{...}}}}, got {cfg!r}")
        unknown = sorted(set(cfg) - JOIN_KEYS)
        if unknown:
            fail(f"{at}.{unknown[0]}", f"unknown key {unknown[0]!r}", f"use {', '.join(sorted(JOIN_KEYS))}")
        src = cfg["from"]
        if not isinstance(src, str) or (earlier is not None and "/" not in src and src not in earlier):
            fail(f"{at}.from", f"{src!r} is not an earlier stage" + (
                f" (earlier: {', '.join(earlier)})" if earlier else " (no stage before it)"))
        if "output" in cfg and not isinstance(cfg["output"], str):
            fail(f"{at}.output", f"expected a task name, got {cfg['output']!r}")
        feed = cfg.get("feed", {})
        if not isinstance(feed, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in feed.items()):
            fail(f"{at}.feed", f"expected {{model's sequence: the data's sequence}}, got {feed!r}")


def resolve_join(join: dict, run_dir: Path | None) -> dict:
    """`from: STAGE` (a name) -> the stage's run directory RUN_DIR/STAGE; a path stays as it is."""
    return {col: {**cfg, "from": str(Path(run_dir) / cfg["from"] if run_dir is not None and "/" not in cfg["from"]
                                     else Path(cfg["from"]))} for col, cfg in join.items()}


def feed_names(model_spec, data_spec, feed: dict, where: str) -> dict[str, str]:
    """{model input: data column} for `feed` ({sequence the model reads: sequence of the data}): field by field
    in order, and the lengths; the two must have the same field kinds and length."""
    names = {}
    for mine, theirs in feed.items():
        a = model_spec[mine] if mine in {f.name for f in model_spec.inputs} else None
        b = data_spec[theirs] if theirs in {f.name for f in data_spec.inputs} else None
        if not isinstance(a, SequenceFeature) or not isinstance(b, SequenceFeature):
            bad = mine if not isinstance(a, SequenceFeature) else theirs
            raise ValueError(f"{where}.feed: {bad!r} is not a sequence input of the "
                             f"{'model' if bad == mine else 'dataset'}")
        if [sf.kind for sf in a.fields] != [sf.kind for sf in b.fields] or a.max_len != b.max_len:
            raise ValueError(f"{where}.feed: {mine!r} and {theirs!r} differ in their fields or max_len; a feed "
                             "replaces one sequence by another of the same layout")
        names.update({x.name: y.name for x, y in zip(a.fields, b.fields)})
        names[a.length_name] = b.length_name
    return names


def _model_identity(run: Path) -> str:
    h = hashlib.sha256()
    for f in sorted((run / "model" / "variables").glob("*")):
        h.update(f.name.encode())
        h.update(f.read_bytes())
    return h.hexdigest()


def check_joinable(spec, join: dict, where: str) -> None:
    """Every `join` column is a `joined: true` column of `spec` (checked before a pipeline trains anything)."""
    joinable = [f.name for f in spec.features if f.is_joined]
    for col in join:
        if col not in joinable:
            raise ValueError(f"{where}.{col}: not a `joined: true` column of {spec.source} (those: "
                             f"{', '.join(joinable) or 'none'}); declare it in the spec as a dense feature with "
                             "`joined: true, normalization: none`")


def joined_dir(parent: DatasetDir, join: dict, out_root: Path) -> Path:
    key = {"parent": hashlib.sha256((parent.path / "manifest.json").read_bytes()).hexdigest(),
           "join": {col: {**cfg, "model": _model_identity(Path(cfg["from"]))} for col, cfg in sorted(join.items())}}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    return Path(out_root) / f"{parent.path.name.split('.join-')[0]}.join-{digest}"


def join_in_order(parent: DatasetDir, join: dict, out_root: str | Path, *, where: str = "join",
                  log: Callable[[str], Any] = print) -> DatasetDir:
    """`parent` with the `join` columns added one after the other, so that a column's model may read the columns
    joined before it (the on-device model reads the cloud's prior: its own predictions join after it). Each
    step is a joined dataset of its own, written once; equal first steps of two stages are one directory."""
    check_joinable(parent.spec, join, where)
    data = parent
    for col, cfg in join.items():
        data = join_predictions(data, {col: cfg}, out_root, where=where, log=log)
    return data


def join_predictions(parent: DatasetDir, join: dict, out_root: str | Path, *, where: str = "join",
                     log: Callable[[str], Any] = print) -> DatasetDir:
    """`parent` with each `join` column filled by its run's predictions (resolved `from`), written on first use
    (every run scores `parent` itself: `join_in_order` when one reads another's column)."""
    from .predict import predictions
    from .runs import load_run

    check_joinable(parent.spec, join, where)
    for col, cfg in join.items():
        if not (Path(cfg["from"]) / "model").exists():
            raise FileNotFoundError(f"{where}.{col}.from: {cfg['from']} holds no trained model (its stage has not "
                                    "finished?)")
    out = joined_dir(parent, join, Path(out_root))
    if (out / "manifest.json").exists():
        return open_dataset(out)
    columns: dict[str, dict[str, np.ndarray]] = {}
    for col, cfg in join.items():
        _, _, model = load_run(cfg["from"], log=lambda *_: None)
        tasks = [lab.task for lab in model.spec.labels if lab.type in ("binary", "regression")]
        binary = [lab.task for lab in model.spec.labels if lab.type == "binary"]
        default = binary[0] if len(binary) == 1 else tasks[0] if len(tasks) == 1 else None
        task = cfg.get("output") or default
        if task not in tasks:
            raise ValueError(f"{where}.{col}.output: name one of the binary or regression tasks of {cfg['from']} "
                             f"({tasks}), got {cfg.get('output')!r}")
        feed = feed_names(model.spec, parent.spec, cfg.get("feed", {}), f"{where}.{col}")
        log(f"joining {cfg['from']}'s {task} predictions into {col}" + (f" (fed {cfg['feed']})" if feed else ""))
        for split in parent.manifest["splits"]:
            frame = predictions(model, parent, split, feed=feed)
            columns.setdefault(split, {})[col] = np.asarray(frame[task], np.float32)
    spec = parent.spec.with_joined(list(join))
    extra = {"joined": {"parent": str(parent.path), "columns": {c: {**cfg} for c, cfg in join.items()}}}
    return write_derived(parent, out, spec, extra,
                         lambda split, root: with_columns(parent, split, columns[split], root))
