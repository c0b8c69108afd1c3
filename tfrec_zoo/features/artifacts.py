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
from typing import Any, Iterable

import numpy as np
import pandas as pd

from .spec import DenseFeature, FeatureSpec, FeatureSpecError, SequenceFeature

ARTIFACTS_DIR = "artifacts"


@dataclass
class Artifacts:
    """`vocabs[table]` lists the in-vocabulary values (int or str); `stats[column]` holds dense statistics."""

    vocabs: dict[str, list[Any]] = field(default_factory=dict)
    stats: dict[str, dict[str, Any]] = field(default_factory=dict)

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
        return cls(vocabs=vocabs, stats=meta["stats"])


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


def _need(spec: FeatureSpec, train: pd.DataFrame, col: str) -> None:
    if col not in train.columns:
        raise FeatureSpecError(spec.source, f"feature {col!r}", f"column {col!r} is missing from the training data",
                               f"add it (the data has: {', '.join(map(str, train.columns[:30]))})")


def fit_artifacts(spec: FeatureSpec, train: pd.DataFrame) -> Artifacts:
    """Build vocabularies and dense statistics from the training split only."""
    vocabs: dict[str, list[Any]] = {}
    for table, columns in spec.tables().items():
        cfg = spec.table_config(table)
        if cfg.hash_buckets:
            continue
        counts: Counter = Counter()
        for col in columns:
            _need(spec, train, col)
            vals = _flatten(train[col])
            counts.update(int(v) if cfg.dtype == "int64" else str(v) for v in vals)
        if cfg.dtype == "string":
            counts.pop("", None)  # "" is the padding / missing value, never a vocabulary entry
        kept = [v for v, c in counts.items() if c >= cfg.vocab.min_count]
        kept.sort(key=lambda v: (-counts[v], v))
        vocabs[table] = kept[: cfg.vocab.max_size] if cfg.vocab.max_size else kept
    stats: dict[str, dict[str, Any]] = {}
    for f in spec.features:
        if isinstance(f, DenseFeature):
            _need(spec, train, f.name)
            stats[f.name] = _dense_stats(np.asarray(train[f.name], dtype=np.float64), f.buckets)
        elif isinstance(f, SequenceFeature):
            for sf in f.fields:
                if sf.kind == "dense":
                    _need(spec, train, sf.name)
                    stats[sf.name] = _dense_stats(np.fromiter(_flatten(train[sf.name]), dtype=np.float64), None)
    return Artifacts(vocabs=vocabs, stats=stats)
