"""Datasets derived from a written one (joined predictions, replay lists, their labels): written through a staging
directory and published whole, with the parent's vocabularies and statistics.

    data = write_derived(parent, out, spec, {"joined": {...}}, lambda split, root: with_columns(...))
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..features.artifacts import ARTIFACTS_DIR
from ..features.spec import FeatureSpec
from . import staging
from .reader import DatasetDir, open_dataset
from .writer import MANIFEST, write_records


def write_derived(parent: DatasetDir, out: Path, spec: FeatureSpec, extra: dict[str, Any],
                  write_split: Callable[[str, Path], dict]) -> DatasetDir:
    """`out` as a dataset of `spec` whose split `s` is what `write_split(s, staging_root)` writes (it returns the
    split's manifest entry), the parent's artifacts copied and `extra` merged into the manifest's extra."""
    import yaml

    tmp = staging.staging_dir(out)
    try:
        manifest = json.loads((parent.path / MANIFEST).read_text())
        for split in list(manifest["splits"]):
            manifest["splits"][split] = write_split(split, tmp)
        (tmp / "spec.yaml").write_text(yaml.safe_dump(spec.to_dict(), sort_keys=False))
        manifest["spec_fingerprint"] = spec.fingerprint
        manifest["extra"] = {**manifest.get("extra", {}), **extra}
        shutil.copytree(parent.path / ARTIFACTS_DIR, tmp / ARTIFACTS_DIR)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
        staging.publish(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return open_dataset(out)


def with_columns(data: DatasetDir, split: str, values: dict[str, np.ndarray], root: Path) -> dict:
    """Write the split's records in file order with `values` ({column: one float per record}) added, under
    `root`; returns the split's manifest entry."""
    import tensorflow as tf

    compression = data.manifest.get("compression", "GZIP")
    n = data.rows(split)
    for column, v in values.items():
        if len(v) != n:
            raise ValueError(f"{data.path}: {split} has {n} rows but {len(v)} values for {column}")
    ds = tf.data.TFRecordDataset([str(f) for f in data.files(split)], compression_type=compression).batch(8192)
    pos = 0

    def chunks():
        nonlocal pos
        for batch in ds:
            out = []
            for raw in batch.numpy():
                ex = tf.train.Example.FromString(raw)
                for column, v in values.items():
                    ex.features.feature[column].float_list.value.append(float(v[pos]))
                out.append(ex.SerializeToString())
                pos += 1
            yield b"".join(out), np.concatenate([[0], np.cumsum([len(r) for r in out])]).tolist()

    return write_split_records(root, split, compression, chunks, lambda: pos)


def write_split_records(root: Path, split: str, compression: str, chunks, rows: Callable[[], int]) -> dict:
    """Write `chunks()` as the split's one shard; `rows()` counts them once written."""
    suffix = ".gz" if compression == "GZIP" else ""
    rel = f"{split}/part-00000-of-00001.tfrecord{suffix}"
    (root / split).mkdir(parents=True, exist_ok=True)
    write_records(root / rel, chunks(), compression)
    n = rows()
    return {"rows": n, "shards": [{"file": rel, "rows": n}]}
