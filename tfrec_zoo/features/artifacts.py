"""Vocabularies and normalisation statistics fitted on the training split, saved beside the data.

Identical inputs give byte-identical artifacts: vocabularies are ordered by count (descending) then value, and
statistics are written as sorted JSON. Models receive an `Artifacts` object; they never read these files.
"""
from __future__ import annotations

import json
import math
import os
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import pandas as pd

from .spec import DenseFeature, FeatureSpec, FeatureSpecError, MultiHotFeature, SequenceFeature, _Categorical

ARTIFACTS_DIR = "artifacts"


@dataclass
class Artifacts:
    """`vocabs[table]` lists the in-vocabulary values (int or str); `stats[column]` holds dense statistics;
    `side["OWNER/FEATURE"]` is a `side_of` feature's table aligned with OWNER's embedding rows (OOV rows first):
    float32 [rows, dim] for text / vector, int32 [rows] row indices into the feature's own table for id, int32
    [rows, max_len] row indices + `side["OWNER/FEATURE_len"]` int32 [rows] for multi_hot. Rows without catalogue
    data are zeros (length 0)."""

    vocabs: dict[str, list[Any]] = field(default_factory=dict)
    stats: dict[str, dict[str, Any]] = field(default_factory=dict)
    side: dict[str, np.ndarray] = field(default_factory=dict)

    def vocab_size(self, spec: FeatureSpec, table: str) -> int:
        """Rows of the embedding table: OOV buckets + vocabulary, or the hash bucket count."""
        cfg = spec.table_config(table)
        if cfg.hash_buckets:
            return cfg.hash_buckets
        return cfg.vocab.oov_buckets + len(self.vocabs[table])

    # -- persistence -----------------------------------------------------------------------------------------------
    def save(self, directory: str | Path) -> None:
        directory = Path(directory)
        (directory / "vocab").mkdir(parents=True, exist_ok=True)
        for table, values in sorted(self.vocabs.items()):
            lines = "".join(f"{_escape(v)}\n" for v in values)
            _atomic_write(directory / "vocab" / f"{table}.txt", lines)
        kinds = {t: ("string" if v and isinstance(v[0], str) else "int64") for t, v in self.vocabs.items()}
        _atomic_write(directory / "stats.json", json.dumps({"stats": self.stats, "vocab_dtypes": kinds},
                                                           sort_keys=True, indent=1) + "\n")
        if self.side:
            (directory / "side").mkdir(exist_ok=True)
            for key, arr in sorted(self.side.items()):
                path = directory / "side" / (key.replace("/", ".") + ".npy")
                fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
                with os.fdopen(fd, "wb") as fh:
                    np.save(fh, arr, allow_pickle=False)
                os.replace(tmp, path)

    @classmethod
    def load(cls, directory: str | Path, spec: FeatureSpec) -> "Artifacts":
        directory = Path(directory)
        try:
            meta = json.loads((directory / "stats.json").read_text())
        except FileNotFoundError:
            raise FileNotFoundError(f"{directory}/stats.json is missing: this is not a dataset written by tfrec_zoo "
                                    "(or it was interrupted); rebuild it with `tfrec-zoo data write|build`") from None
        vocabs = {}
        for table in spec.tables():
            cfg = spec.table_config(table)
            if cfg.hash_buckets:
                continue
            path = directory / "vocab" / f"{table}.txt"
            if not path.exists():
                raise FeatureSpecError(spec.source, table, f"no vocabulary {path} for embedding table {table!r}",
                                       "the dataset was written with another spec: rebuild it with this spec")
            text = path.read_text()
            lines = text.split("\n")[:-1] if text else []
            vocabs[table] = [int(x) for x in lines] if cfg.dtype == "int64" else [_unescape(x) for x in lines]
        side = {}
        for f in spec.side_features():
            for key in [f"{f.side_of}/{f.name}"] + ([f"{f.side_of}/{f.name}_len"] if isinstance(f, MultiHotFeature)
                                                    else []):
                path = directory / "side" / (key.replace("/", ".") + ".npy")
                if not path.exists():
                    raise FeatureSpecError(spec.source, f.name, f"no side table {path} for `side_of: {f.side_of}`",
                                           "the dataset was written with another spec: rebuild it with this spec")
                side[key] = np.load(path, allow_pickle=False)
        return cls(vocabs=vocabs, stats=meta["stats"], side=side)


def _escape(v: Any) -> str:
    return str(v).replace("\\", "\\\\").replace("\n", "\\n")


def _unescape(s: str) -> str:
    out, i = [], 0
    while i < len(s):
        if s[i] == "\\" and i + 1 < len(s):
            out.append("\n" if s[i + 1] == "n" else s[i + 1])
            i += 2
        else:
            out.append(s[i])
            i += 1
    return "".join(out)


def _atomic_write(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)


def _flatten(series: pd.Series) -> Iterable[Any]:
    for v in series:
        if isinstance(v, (list, tuple, np.ndarray)):
            yield from v
        elif v is not None and not (isinstance(v, float) and math.isnan(v)):
            yield v


def _dense_stats(values: np.ndarray, num_buckets: int | None) -> dict[str, Any]:
    values = values[np.isfinite(values)]
    if values.size == 0:
        return {"count": 0, "mean": 0.0, "std": 1.0, "min": 0.0, "max": 1.0, "log1p_mean": 0.0, "log1p_std": 1.0}
    logs = np.log1p(np.maximum(values, 0.0))
    out = {
        "count": int(values.size),
        "mean": float(values.mean()), "std": float(values.std()) or 1.0,
        "min": float(values.min()), "max": float(values.max()),
        "log1p_mean": float(logs.mean()), "log1p_std": float(logs.std()) or 1.0,
    }
    if num_buckets:
        qs = np.quantile(values, np.linspace(0, 1, num_buckets + 1)[1:-1])
        out["boundaries"] = sorted({float(q) for q in qs})
    return out


def _need(spec: FeatureSpec, train: pd.DataFrame, col: str, where: str = "the training data") -> None:
    if col not in train.columns:
        raise FeatureSpecError(spec.source, f"feature {col!r}", f"column {col!r} is missing from {where}",
                               f"add it (the data has: {', '.join(map(str, train.columns[:30]))})")


def _catalogue(spec: FeatureSpec, catalogues: Mapping[str, pd.DataFrame], owner: str) -> pd.DataFrame:
    if owner not in catalogues:
        raise FeatureSpecError(spec.source, owner, f"features have `side_of: {owner}` (or `fit_on: catalogue`) but "
                               f"the builder gave no catalogue for {owner!r}",
                               f"pass catalogues={{{owner!r}: DataFrame with {owner!r} and the side columns}}")
    cat = catalogues[owner]
    _need(spec, cat, owner, f"catalogue {owner!r}")
    return cat.drop_duplicates(subset=[owner], keep="first")


def fit_artifacts(spec: FeatureSpec, train: pd.DataFrame,
                  catalogues: Mapping[str, pd.DataFrame] | None = None) -> Artifacts:
    """Build vocabularies and dense statistics from the training split only.

    `catalogues` ({id feature: DataFrame}) hold label-free metadata per id for `side_of` features (text columns
    already encoded to vectors): side features' vocabularies and side tables come from them, and an id with
    `vocab: {fit_on: catalogue}` takes every catalogue id into its vocabulary (ordered by train count, then value).
    """
    catalogues = catalogues or {}
    vocabs: dict[str, list[Any]] = {}
    for table, columns in spec.tables().items():
        cfg = spec.table_config(table)
        if cfg.hash_buckets:
            continue
        counts: Counter = Counter()
        conv = (lambda v: int(v)) if cfg.dtype == "int64" else (lambda v: str(v))
        for col in columns:
            side_of = getattr(spec[col], "side_of", None) if col in {f.name for f in spec.features} else None
            frame, where = (_catalogue(spec, catalogues, side_of), f"catalogue {side_of!r}") if side_of \
                else (train, "the training data")
            _need(spec, frame, col, where)
            counts.update(conv(v) for v in _flatten(frame[col]))
        if cfg.dtype == "string":
            counts.pop("", None)  # "" is the padding / missing value, never a vocabulary entry
        if cfg.vocab.fit_on == "catalogue":
            for v in _flatten(_catalogue(spec, catalogues, cfg.name)[cfg.name]):
                counts.setdefault(conv(v), 0)
            counts.pop("", None)
            kept = list(counts)
            kept.sort(key=lambda v: (-counts[v], v))
            vocabs[table] = kept[: cfg.vocab.max_size] if cfg.vocab.max_size else kept
            continue
        kept = [v for v, c in counts.items() if c >= cfg.vocab.min_count]
        kept.sort(key=lambda v: (-counts[v], v))
        vocabs[table] = kept[: cfg.vocab.max_size] if cfg.vocab.max_size else kept
    stats: dict[str, dict[str, Any]] = {}
    for f in spec.features:
        if isinstance(f, DenseFeature) and not f.is_joined:    # a joined column is filled later, unnormalised
            _need(spec, train, f.name)
            stats[f.name] = _dense_stats(np.asarray(train[f.name], dtype=np.float64), f.buckets)
        elif isinstance(f, SequenceFeature):
            for sf in f.fields:
                if sf.kind == "dense":
                    _need(spec, train, sf.name)
                    stats[sf.name] = _dense_stats(np.fromiter(_flatten(train[sf.name]), dtype=np.float64), None)
    side = {}
    for owner in dict.fromkeys(f.side_of for f in spec.side_features()):
        side.update(_side_tables(spec, owner, _catalogue(spec, catalogues, owner), vocabs))
    return Artifacts(vocabs=vocabs, stats=stats, side=side)


def _row_index(spec: FeatureSpec, table: str, vocabs: dict) -> dict[Any, int]:
    """raw value -> embedding row (OOV buckets first, as the in-graph lookup layers number them)."""
    oov = spec.table_config(table).vocab.oov_buckets
    return {v: oov + i for i, v in enumerate(vocabs[table])}


def _side_tables(spec: FeatureSpec, owner: str, cat: pd.DataFrame, vocabs: dict) -> dict[str, np.ndarray]:
    owner_rows = _row_index(spec, spec.table_of(owner), vocabs)
    n_rows = spec.table_config(spec.table_of(owner)).vocab.oov_buckets + len(vocabs[spec.table_of(owner)])
    ids = [int(v) if spec[owner].dtype == "int64" else str(v) for v in cat[owner]]
    at = np.array([owner_rows.get(v, -1) for v in ids], np.int64)
    keep = at >= 0                                  # catalogue ids outside the vocabulary have no row
    out: dict[str, np.ndarray] = {}
    for f in spec.side_features(owner):
        _need(spec, cat, f.name, f"catalogue {owner!r}")
        key = f"{owner}/{f.name}"
        values = cat[f.name].to_numpy()[keep]
        if isinstance(f, MultiHotFeature):
            rows = _row_index(spec, spec.table_of(f.name), vocabs)
            conv = (lambda v: int(v)) if f.dtype == "int64" else str
            table = np.zeros((n_rows, f.max_len), np.int32)
            lens = np.zeros(n_rows, np.int32)
            for r, vals in zip(at[keep], values):
                idx = [rows.get(conv(v), 0) for v in _flatten(pd.Series([vals]))][: f.max_len]
                table[r, :len(idx)], lens[r] = idx, len(idx)
            out[key], out[key + "_len"] = table, lens
        elif isinstance(f, _Categorical):
            rows = _row_index(spec, spec.table_of(f.name), vocabs)
            conv = (lambda v: int(v)) if f.dtype == "int64" else str
            table = np.zeros(n_rows, np.int32)
            table[at[keep]] = [rows.get(conv(v), 0) for v in values]
            out[key] = table
        else:  # text (encoded) / vector
            table = np.zeros((n_rows, f.dim), np.float32)
            if len(values):
                mat = np.stack([np.asarray(v, np.float32) for v in values])
                if mat.shape[1] != f.dim:
                    raise FeatureSpecError(spec.source, f.name, f"catalogue {owner!r} has {mat.shape[1]} floats per "
                                           f"row, the spec says dim {f.dim}", "fix the catalogue or the spec's dim")
                table[at[keep]] = mat
            out[key] = table
    return out
