"""A subset of a written dataset's rows, written once as a dataset directory of its own.

    sel = RowSelection.parse({"keep": {"domain": [0]}, "share": {"train": 0.1}}, where="exp.yaml: rows")
    sub = select_rows(open_dataset("data/ml-latest-small-domains"), sel, out_root)   # a DatasetDir

Multi-domain pretraining leaves the cold-start domain out (`drop`), fine-tuning then trains on a small share of
that domain alone (`keep` + `share`). The subset keeps the parent's spec and artifacts (vocabularies and statistics
fitted on the parent's train split), so a model pretrained on one subset and fine-tuned on another sees the same
ids at the same rows, and restoring needs no remapping.

* keep / drop: `{column: [values]}` of scalar id / domain columns, or of a binary label (`{click: [1]}`: the
  positive rows, what an autoencoder pretrains on); a row is kept when every `keep` column's value is in its list
  and no `drop` column's value is in its list.
* splits: `[train]`: keep / drop apply to these splits only (the others are kept whole: a stage of a pipeline
  trains on its own part of train and still validates on the common valid split).
* share: `{split: fraction}`; a row of that split is kept when a keyed hash of its serialized bytes falls in the
  first `fraction` of the hash range: the same rows for the same seed whatever the shard order, independent rows
  for another seed.
The subset is written into `<out_root>/<parent name>.rows-<fingerprint>/` (the fingerprint covers the selection
and the parent's manifest, so a rebuilt parent gets a new subset), atomically as every dataset is written.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..features.artifacts import ARTIFACTS_DIR
from ..features.spec import FeatureSpec
from . import staging
from .reader import DatasetDir, open_dataset
from .writer import MANIFEST, write_records

HASH_RANGE = 1 << 30


@dataclass(frozen=True)
class RowSelection:
    keep: dict[str, tuple] = field(default_factory=dict)
    drop: dict[str, tuple] = field(default_factory=dict)
    share: dict[str, float] = field(default_factory=dict)
    seed: int = 0
    splits: tuple = ()                 # keep / drop apply to these splits only; () = every split

    @classmethod
    def parse(cls, raw: Any, where: str = "rows") -> "RowSelection":
        """From an experiment's `rows:` mapping; errors name `where` and the key."""
        if not isinstance(raw, dict):
            raise ValueError(f"{where}: expected a mapping with keep / drop / share / seed, got {raw!r}")
        unknown = sorted(set(raw) - {"keep", "drop", "share", "seed", "splits"})
        if unknown:
            raise ValueError(f"{where}.{unknown[0]}: unknown key; use keep, drop, share, seed or splits")
        out: dict[str, Any] = {"keep": {}, "drop": {}, "share": {}}
        for key in ("keep", "drop"):
            table = raw.get(key) or {}
            if not isinstance(table, dict):
                raise ValueError(f"{where}.{key}: expected {{column: [values]}}, got {table!r}")
            for col, values in table.items():
                values = values if isinstance(values, list) else [values]
                if not values or not all(isinstance(v, (int, str)) and not isinstance(v, bool) for v in values):
                    raise ValueError(f"{where}.{key}.{col}: expected a non-empty list of ids (numbers or strings), "
                                     f"got {table[col]!r}")
                out[key][str(col)] = tuple(values)
        share = raw.get("share") or {}
        if not isinstance(share, dict):
            raise ValueError(f"{where}.share: expected {{split: fraction}}, got {share!r}")
        for split, frac in share.items():
            if isinstance(frac, bool) or not isinstance(frac, (int, float)) or not 0 < frac <= 1:
                raise ValueError(f"{where}.share.{split}: expected a fraction in (0, 1], got {frac!r}")
            out["share"][str(split)] = float(frac)
        seed = raw.get("seed", 0)
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"{where}.seed: expected an integer, got {seed!r}")
        if not (out["keep"] or out["drop"] or out["share"]):
            raise ValueError(f"{where}: selects every row; give keep, drop or share (or remove `rows:`)")
        splits = raw.get("splits") or []
        if not isinstance(splits, list) or not all(s in ("train", "valid", "test") for s in splits):
            raise ValueError(f"{where}.splits: expected a list of train / valid / test, got {splits!r}")
        if splits and not (out["keep"] or out["drop"]):
            raise ValueError(f"{where}.splits: says where keep / drop apply, and neither is given")
        return cls(out["keep"], out["drop"], out["share"], seed, tuple(splits))

    def to_dict(self) -> dict:
        out = {"keep": {k: list(v) for k, v in self.keep.items()},
               "drop": {k: list(v) for k, v in self.drop.items()}, "share": dict(self.share), "seed": self.seed}
        if self.splits:                # only when set: the fingerprints of existing subsets stay as they were
            out["splits"] = list(self.splits)
        return out

    def check(self, spec: FeatureSpec, where: str = "rows") -> None:
        """Every column is a scalar id / domain column or a binary label of `spec` and its values have the column's
        type (a label's: 0 or 1)."""
        columns = {f.name: f for f in spec.inputs if f.kind in ("id", "domain")}
        columns.update({lab.name: lab for lab in spec.labels if lab.type == "binary"})
        for key, table in (("keep", self.keep), ("drop", self.drop)):
            for col, values in table.items():
                f = columns.get(col)
                if f is None:
                    raise ValueError(f"{where}.{key}.{col}: not an id, domain or binary label column of {spec.source} "
                                     f"(those: {', '.join(sorted(columns)) or 'none'})")
                if f.kind == "label":
                    if not all(v in (0, 1) and isinstance(v, int) for v in values):
                        raise ValueError(f"{where}.{key}.{col}: {col} is a binary label: use [0] or [1], got "
                                         f"{list(values)!r}")
                elif f.dtype == "int64" and not all(isinstance(v, int) for v in values):
                    raise ValueError(f"{where}.{key}.{col}: {col} holds integers, got {list(values)!r}")
        for split in self.share:
            if split not in ("train", "valid", "test"):
                raise ValueError(f"{where}.share.{split}: not a split (train, valid, test)")


def subset_dir(parent: DatasetDir, selection: RowSelection, out_root: Path) -> Path:
    parent_manifest = (parent.path / MANIFEST).read_bytes()
    key = json.dumps({"rows": selection.to_dict(), "parent": hashlib.sha256(parent_manifest).hexdigest()},
                     sort_keys=True)
    return Path(out_root) / f"{parent.path.name}.rows-{hashlib.sha256(key.encode()).hexdigest()[:12]}"


def select_rows(parent: DatasetDir, selection: RowSelection, out_root: str | Path, *, where: str = "rows",
                log: Callable[[str], Any] = print) -> DatasetDir:
    """The subset of `parent` that `selection` keeps, written on first use (see the module docstring)."""
    selection.check(parent.spec, where)
    out = subset_dir(parent, selection, Path(out_root))
    if (out / MANIFEST).exists():
        return open_dataset(out)
    log(f"writing the rows {json.dumps(selection.to_dict())} of {parent.path} into {out}")
    tmp = staging.staging_dir(out)
    try:
        manifest = json.loads((parent.path / MANIFEST).read_text())
        counts = {}
        for split in list(manifest["splits"]):
            shards, counts[split] = _write_split(parent, selection, split, tmp)
            manifest["splits"][split] = {"rows": sum(s["rows"] for s in shards), "shards": shards}
        if not manifest["splits"].get("train", {}).get("rows"):
            raise ValueError(f"{where}: keeps no train row of {parent.path} ({_describe(counts.get('train', {}))}); "
                             "check the values against the dataset's (`tfrec-zoo data show`)")
        manifest["extra"] = {**manifest.get("extra", {}), "rows": {
            "parent": str(parent.path), "selection": selection.to_dict(), "counts": counts}}
        shutil.copytree(parent.path / ARTIFACTS_DIR, tmp / ARTIFACTS_DIR)
        shutil.copy2(parent.path / "spec.yaml", tmp / "spec.yaml")
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
        staging.publish(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for split, c in counts.items():
        log(f"  {split}: {c['kept']:,} of {c['rows']:,} rows kept")
    return open_dataset(out)


def _describe(c: dict) -> str:
    return f"{c.get('kept', 0)} of {c.get('rows', 0)} rows kept" if c else "the dataset has no train split"


def _write_split(parent: DatasetDir, selection: RowSelection, split: str, root: Path) -> tuple[list[dict], dict]:
    import tensorflow as tf

    compression = parent.manifest.get("compression", "GZIP")
    selects = not selection.splits or split in selection.splits
    columns = sorted({*selection.keep, *selection.drop}) if selects else []
    kinds = {c: _kind(parent.spec[c]) for c in columns}
    desc = {c: tf.io.FixedLenFeature([], {"int64": tf.int64, "label": tf.float32}.get(k, tf.string))
            for c, k in kinds.items()}
    share = selection.share.get(split)
    ds = tf.data.TFRecordDataset([str(f) for f in parent.files(split)], compression_type=compression).batch(8192)
    counts = {"rows": 0, "kept": 0}

    def chunks():                      # one chunk per batch: memory stays at one batch whatever the split's size
        for batch in ds:
            records = batch.numpy()
            mask = np.ones(len(records), bool)
            parsed = tf.io.parse_example(batch, desc) if columns else {}
            for col, values in selection.keep.items() if selects else ():
                mask &= np.isin(_values(parsed[col]), _typed(values, kinds[col]))
            for col, values in selection.drop.items() if selects else ():
                mask &= ~np.isin(_values(parsed[col]), _typed(values, kinds[col]))
            if share is not None:
                h = tf.strings.to_hash_bucket_strong(batch, HASH_RANGE, key=[selection.seed, 20_231_021]).numpy()
                mask &= h < int(share * HASH_RANGE)
            kept = records[mask].tolist()
            counts["rows"] += len(records)
            counts["kept"] += len(kept)
            if kept:
                yield b"".join(kept), np.concatenate([[0], np.cumsum([len(r) for r in kept])]).tolist()

    suffix = ".gz" if compression == "GZIP" else ""
    rel = f"{split}/part-00000-of-00001.tfrecord{suffix}"
    (root / split).mkdir(parents=True, exist_ok=True)
    write_records(root / rel, chunks(), compression)
    return [{"file": rel, "rows": counts["kept"]}], counts


def _values(t) -> np.ndarray:
    v = t.numpy()
    return np.array([x.decode() for x in v], dtype=object) if v.dtype == object else v


def _kind(f) -> str:
    """How a selection column is stored: "label" (float32), "int64" or "string"."""
    return "label" if f.kind == "label" else f.dtype


def _typed(values: tuple, kind: str) -> np.ndarray:
    if kind == "label":
        return np.array([float(v) for v in values], np.float32)
    return np.array([int(v) for v in values]) if kind == "int64" else np.array([str(v) for v in values], object)
