"""Write a dataset: DataFrames per split -> sharded, compressed TFRecord files + artifacts + manifest.

Layout of a dataset directory:

    DIR/manifest.json            rows per shard, the spec's fingerprint, the source
    DIR/spec.yaml                the spec the data was written with
    DIR/artifacts/vocab/*.txt    vocabularies (training split only)
    DIR/artifacts/stats.json     dense statistics (training split only)
    DIR/<split>/part-00000-of-00004.tfrecord.gz

Everything is written into `.DIR.tmp-HOST-PID-*` and renamed at the end, so an interrupted build never leaves a
directory that looks complete; an existing DIR is replaced only after the new one is whole. The temporary
directories of killed runs are removed by the next write to the same DIR (staging.py).
"""
from __future__ import annotations

import json
import shutil
import sys
import uuid
import zlib
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import numpy as np
import pandas as pd
import yaml

from .. import __version__
from ..features.artifacts import ARTIFACTS_DIR, Artifacts, fit_artifacts
from ..features.spec import FeatureSpec, FeatureSpecError, TextFeature
from . import staging
from .examples import columns_for_examples
from .fill import fill_missing
from .wire import ExampleEncoder

MANIFEST = "manifest.json"
FORMAT = "tfrec_zoo.dataset/1"
SPLIT_ORDER = ("train", "valid", "test")


def encode_text_features(splits: Mapping[str, pd.DataFrame], spec: FeatureSpec,
                         get_encoder: Callable[[str], Any] | None = None) -> dict[str, pd.DataFrame]:
    """Replace each `text` feature's raw strings by its encoder's vectors (unique strings are encoded once)."""
    texts = [f for f in spec.of_kind("text") if not f.side_of]   # side texts are encoded in the catalogue
    if not texts:
        return dict(splits)
    if get_encoder is None:
        from ..text import get_encoder
    out = {k: v.copy() for k, v in splits.items()}
    for f in texts:
        assert isinstance(f, TextFeature)
        col = f.source or f.name
        for split, df in out.items():
            if col not in df.columns:
                raise FeatureSpecError(spec.source, f"feature {f.name!r}", f"text column {col!r} missing in split {split!r}",
                                       "add the column with the raw strings")
        uniq = sorted({str(s) for df in out.values() for s in df[col].fillna("")})
        encoder = get_encoder(f.encoder)
        if encoder.dim != f.dim:
            raise FeatureSpecError(spec.source, f"feature {f.name!r}.dim", f"encoder {f.encoder} gives {encoder.dim} "
                                   f"floats, the spec says {f.dim}", f"set `dim: {encoder.dim}`")
        vecs = np.asarray(encoder.encode(uniq), dtype=np.float32)
        index = {s: i for i, s in enumerate(uniq)}
        for df in out.values():
            df[f.name] = [vecs[index[str(s)]] for s in df[col].fillna("")]
    return out


def encode_catalogues(catalogues: Mapping[str, pd.DataFrame], spec: FeatureSpec,
                      get_encoder: Callable[[str], Any] | None = None) -> dict[str, pd.DataFrame]:
    """Each catalogue with its `side_of` text features' raw strings replaced by encoder vectors."""
    out = {}
    for owner, cat in catalogues.items():
        texts = [f for f in spec.side_features(owner) if isinstance(f, TextFeature)]
        if not texts:
            out[owner] = cat
            continue
        if get_encoder is None:
            from ..text import get_encoder
        cat = cat.copy()
        for f in texts:
            col = f.source or f.name
            if col not in cat.columns:
                raise FeatureSpecError(spec.source, f"feature {f.name!r}", f"text column {col!r} missing in "
                                       f"catalogue {owner!r}", "add the column with the raw strings")
            uniq = sorted({str(x) for x in cat[col].fillna("")})
            encoder = get_encoder(f.encoder)
            vecs = np.asarray(encoder.encode(uniq), dtype=np.float32)
            index = {x: i for i, x in enumerate(uniq)}
            cat[f.name] = [vecs[index[str(x)]] for x in cat[col].fillna("")]
        out[owner] = cat
    return out


def _shard_files(split: str, n_rows: int, rows_per_shard: int, suffix: str) -> list[str]:
    n = max(1, -(-n_rows // rows_per_shard))
    return [f"{split}/part-{i:05d}-of-{n:05d}.tfrecord{suffix}" for i in range(n)]


def write_split(cols: dict, n: int, root: Path, split: str, *, rows_per_shard: int = 200_000,
                compression: str = "GZIP", progress: bool = True) -> list[dict]:
    """Write one split's validated columns (see `columns_for_examples`); return [{file, rows}] per shard."""
    suffix = ".gz" if compression == "GZIP" else ""
    files = _shard_files(split, n, rows_per_shard, suffix)
    (root / split).mkdir(parents=True, exist_ok=True)
    encoder = ExampleEncoder(cols, n)   # column-wise (data/wire.py): same bytes as one tf.train.Example per row
    bar = _progress(n, f"write {split}", progress)
    shards, start = [], 0
    for k, rel in enumerate(files):
        stop = n if k == len(files) - 1 else start + rows_per_shard
        write_records(root / rel, encoder.chunks(start, stop), compression,
                      on_chunk=None if bar is None else bar.update)
        shards.append({"file": rel, "rows": stop - start})
        start = stop
    if bar is not None:
        bar.close()
    return shards


# zlib window bits of TFRecordOptions' two compressions: a gzip stream (header + trailer) or a zlib stream
_WBITS = {"GZIP": 16 + zlib.MAX_WBITS, "ZLIB": zlib.MAX_WBITS}


def write_records(path: Path, chunks: Iterable[tuple[bytes, list[int]]], compression: str,
                  on_chunk: Callable[[int], Any] | None = None) -> int:
    """Write a TFRecord file from chunks of records ((buffer, offsets): record i = buffer[offsets[i]:offsets[i+1]]),
    as `tf.io.TFRecordWriter` with `compression` ("GZIP", "ZLIB" or "") writes it; returns the records written.

    Why not TFRecordWriter(path, GZIP) itself: compressing is most of the cost and it runs in the caller's thread.
    Here TensorFlow's record writer only frames the records (length, masked crc32c, data, masked crc32c) into its
    in-memory filesystem, and zlib (the library TFRecordWriter uses, at the same default level and memory level)
    compresses each chunk in a second thread (it releases the GIL), overlapping the next chunk's encoding.
    """
    import tensorflow as tf

    if compression not in ("GZIP", "ZLIB", ""):
        raise ValueError(f"compression must be GZIP, ZLIB or '' (none), got {compression!r}")
    compressor = (zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, _WBITS[compression], 9)
                  if compression else None)
    scratch = f"ram://tfrec_zoo/{uuid.uuid4().hex}.tfrecord"

    def frame(buf: bytes, offsets: list[int]) -> bytes:
        with tf.io.TFRecordWriter(scratch) as w:
            for i in range(len(offsets) - 1):
                w.write(buf[offsets[i]:offsets[i + 1]])
        with tf.io.gfile.GFile(scratch, "rb") as f:
            framed = f.read()
        tf.io.gfile.remove(scratch)   # a ram:// file is not truncated when it is opened for writing again
        return framed

    def put(out, framed: bytes, rows: int) -> None:
        out.write(compressor.compress(framed) if compressor is not None else framed)
        if on_chunk is not None:
            on_chunk(rows)

    total = 0
    try:
        with open(path, "wb") as out, ThreadPoolExecutor(1, thread_name_prefix="tfrecord-compress") as pool:
            pending: Future | None = None
            for buf, offsets in chunks:
                framed = frame(buf, offsets)
                if pending is not None:   # at most one chunk waits to be compressed: memory stays bounded
                    pending.result()
                pending = pool.submit(put, out, framed, len(offsets) - 1)
                total += len(offsets) - 1
            if pending is not None:
                pending.result()
            if compressor is not None:
                out.write(compressor.flush())
    finally:
        if tf.io.gfile.exists(scratch):
            tf.io.gfile.remove(scratch)
    return total


def _progress(total: int, desc: str, enabled: bool):
    if not enabled or total < 5000:
        return None
    from tqdm import tqdm
    return tqdm(total=total, desc=desc, unit="row", file=sys.stderr, mininterval=1.0)


def write_dataset(splits: Mapping[str, pd.DataFrame], spec: FeatureSpec, out_dir: str | Path, *, source: str,
                  artifacts: Artifacts | None = None, rows_per_shard: int = 200_000, compression: str = "GZIP",
                  get_encoder: Callable[[str], Any] | None = None, extra: Mapping[str, Any] | None = None,
                  progress: bool = True, catalogues: Mapping[str, pd.DataFrame] | None = None) -> dict:
    """Write all splits atomically. Artifacts are fitted on `splits['train']` unless given (and on `catalogues`,
    {id feature: DataFrame of label-free metadata}, for `side_of` features). Returns the manifest."""
    if "train" not in splits:
        raise ValueError(f"write_dataset needs a 'train' split (got {sorted(splits)}): vocabularies come from it")
    if compression not in ("GZIP", "ZLIB", ""):
        raise ValueError(f"compression must be GZIP, ZLIB or '' (none), got {compression!r}")
    out_dir = Path(out_dir)
    splits = encode_text_features(splits, spec, get_encoder)
    # missing values as the spec's `fill:` says (data/fill.py); vocabularies and statistics are fitted on the
    # unfilled train split, so a fill never enters them
    filled, fills = fill_missing(splits, spec, source)
    # validate every split before anything is fitted or written: bad input fails fast with its line (or record)
    truncated: dict[str, dict[str, int]] = {name: {} for name in filled}
    columns = {name: columns_for_examples(df.reset_index(drop=True), spec, f"{source} [{name}]", truncated[name])
               for name, df in filled.items()}
    truncated = {name: counts for name, counts in truncated.items() if counts}
    if artifacts is None:
        artifacts = fit_artifacts(spec, splits["train"], encode_catalogues(catalogues or {}, spec, get_encoder))
    if fills:
        extra = {**(extra or {}), "fills": fills}
    if truncated:  # {split: {feature: rows longer than max_len}}: their last max_len values were kept
        extra = {**(extra or {}), "truncated": truncated}
    tmp = staging.staging_dir(out_dir)
    try:
        manifest: dict[str, Any] = {
            "format": FORMAT, "spec_name": spec.name, "spec_fingerprint": spec.fingerprint, "source": source,
            "written_by": f"tfrec_zoo {__version__}", "compression": compression, "splits": {},
            "extra": dict(extra or {}),
        }
        for split in sorted(splits, key=lambda s: (SPLIT_ORDER.index(s) if s in SPLIT_ORDER else 9, s)):
            shards = write_split(columns[split], len(splits[split]), tmp, split, rows_per_shard=rows_per_shard,
                                 compression=compression, progress=progress)
            manifest["splits"][split] = {"rows": sum(s["rows"] for s in shards), "shards": shards}
        artifacts.save(tmp / ARTIFACTS_DIR)
        (tmp / "spec.yaml").write_text(yaml.safe_dump(spec.to_dict(), sort_keys=False))
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
        staging.publish(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest
