"""Read tfrec_zoo TFRecords into tf.data: batch first, then one `parse_example` per batch.

Measured on 2 cores (see benchmarks/pipeline.py): one reader + batch + vectorised parse + prefetch beats
interleave / parallel reads, which oversubscribe two cores. Each batch is a tuple
`(features, labels)` or `(features, labels, sample_weights)` when a label has a `mask`:

* id / domain / dense / label -> [B]; vector / text -> [B, dim]
* multi_hot -> [B, max_len] (padded) + `<name>_len` [B] (+ its weights [B, max_len])
* sequence -> each field [B, max_len] (vector fields [B, max_len, dim]), oldest step first, padded at the end,
  + `<name>_len` [B]; the mask is `tf.sequence_mask(len, max_len)`.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Collection, Sequence

import numpy as np

from ..features.artifacts import ARTIFACTS_DIR, Artifacts
from ..features.spec import (
    DenseFeature, FeatureSpec, LabelFeature, MultiHotFeature, SequenceFeature, TextFeature, VectorFeature,
    _Categorical, load_spec,
)
from .writer import MANIFEST


def _tf():
    from .._tf import tf
    return tf


def _id_dtype(tf, dtype: str):
    return tf.int64 if dtype == "int64" else tf.string


def _columns_to_parse(spec: FeatureSpec, features: Collection[str] | None,
                      labels: bool = True) -> dict[str, list[str]] | None:
    """feature/sequence name -> the stored columns to parse for the `features` asked for (None: everything).

    Labels, and columns that label masks name, are parsed unless `labels=False` (serving: requests carry none).
    A length (`<name>_len`) needs one stored list.
    """
    if features is None and labels:
        return None
    if features is None:
        features = [n for f in spec.inputs for n in _input_names(f)]
    wanted = set(features) | ({lab.mask for lab in spec.labels if lab.mask} if labels else set())
    out: dict[str, list[str]] = {}
    for f in spec.row_features:
        if isinstance(f, MultiHotFeature):
            if wanted & {f.name, f.length_name, f.weights}:
                out[f.name] = [f.name] + ([f.weights] if f.weights and f.weights in wanted else [])
        elif isinstance(f, SequenceFeature):
            cols = [sf.name for sf in f.fields if sf.name in wanted]
            if f.length_name in wanted and not cols:
                cols = [f.fields[0].name]
            if cols:
                out[f.name] = cols
        elif (isinstance(f, LabelFeature) and labels) or (not isinstance(f, LabelFeature) and f.name in wanted):
            out[f.name] = [f.name]
    return out


def _input_names(f) -> list[str]:
    if isinstance(f, SequenceFeature):
        return [sf.name for sf in f.fields] + [f.length_name]
    if isinstance(f, MultiHotFeature):
        return [f.name, f.length_name] + ([f.weights] if f.weights else [])
    return [f.name]


def parse_spec_features(spec: FeatureSpec, features: Collection[str] | None = None, labels: bool = True,
                        raw_text: Collection[str] = ()) -> dict:
    """The `tf.io.parse_example` description of a spec's records (only what `features` needs, when given).
    Text features named in `raw_text` are read as the raw string (one per example; "" = no text) instead of
    their encoded vector: a serving graph encodes them itself."""
    tf = _tf()
    select = _columns_to_parse(spec, features, labels)
    desc = {}
    for f in spec.row_features:
        if select is not None and f.name not in select:
            continue
        if isinstance(f, MultiHotFeature):
            desc[f.name] = tf.io.RaggedFeature(_id_dtype(tf, f.dtype))
            if f.weights and (select is None or f.weights in select[f.name]):
                desc[f.weights] = tf.io.RaggedFeature(tf.float32)
        elif isinstance(f, _Categorical):
            desc[f.name] = tf.io.FixedLenFeature([], _id_dtype(tf, f.dtype))
        elif isinstance(f, (DenseFeature, LabelFeature)):
            desc[f.name] = tf.io.FixedLenFeature([], tf.float32)
        elif isinstance(f, TextFeature) and f.name in raw_text:
            desc[f.name] = tf.io.FixedLenFeature([], tf.string)
        elif isinstance(f, (VectorFeature, TextFeature)):
            desc[f.name] = tf.io.FixedLenFeature([f.dim], tf.float32)
        elif isinstance(f, SequenceFeature):
            for sf in f.fields:
                if select is None or sf.name in select[f.name]:
                    dtype = _id_dtype(tf, sf.dtype) if sf.kind == "id" else tf.float32
                    desc[sf.name] = tf.io.RaggedFeature(dtype)
    return desc


def _pad(tf, rt, max_len: int, pad_value, width: int = 1):
    """Ragged [B, (n*width)] -> dense [B, max_len(, width)] keeping the last max_len steps, and lengths [B]."""
    if width > 1:
        rt = tf.RaggedTensor.from_row_lengths(tf.reshape(rt.values, [-1, width]), rt.row_lengths() // width)
    rt = rt[:, -max_len:]  # keep the most recent steps (measured 2x faster than an explicit gather)
    shape = [None, max_len] + ([width] if width > 1 else [])
    return rt.to_tensor(default_value=pad_value, shape=shape), tf.cast(rt.row_lengths(), tf.int32)


def parse_features(spec: FeatureSpec, serialized, features: Collection[str] | None = None,
                   raw_text: Collection[str] = ()) -> dict:
    """Serving-side parsing: a batch of serialized tf.Example -> the input features only (no label needed)."""
    return parse_batch(spec, serialized, features=features, labels=False, raw_text=raw_text)


def parse_batch(spec: FeatureSpec, serialized, with_weights: bool | None = None,
                features: Collection[str] | None = None, labels: bool = True, raw_text: Collection[str] = ()):
    """Parse a batch of serialized tf.Example into (features, labels[, weights]) as described above.

    `features` restricts the parsed inputs to those names (e.g. a model's inputs): unused columns cost nothing.
    With `labels=False` only the features dict is returned (what a serving signature parses).
    """
    tf = _tf()
    desc = parse_spec_features(spec, features, labels, raw_text)
    return _from_raw(spec, tf.io.parse_example(serialized, desc), desc, with_weights, features, labels)


def parse_ranking_request(spec: FeatureSpec, context, candidates, features: Collection[str] | None = None,
                          broadcast: bool = True, raw_text: Collection[str] = ()) -> dict:
    """The `rank` signature's parsing: one context tf.Example (scalar string) + B candidate tf.Examples -> the
    features of the B merged examples, equal to `parse_features` of each candidate's bytes appended to the
    context's (a key the candidate has values for replaces the context's). The context (the long history) is
    parsed and padded once, [1, ...], and broadcast at the end instead of parsed B times. A required feature
    neither side has fails as parsing does, naming it. `broadcast=False` leaves a feature no candidate has at
    [1, ...] (for models that score B rows against one context: `broadcasts_context`).
    """
    tf = _tf()
    desc = parse_spec_features(spec, features, labels=False, raw_text=raw_text)
    as_ragged = {k: tf.io.RaggedFeature(d.dtype) for k, d in desc.items()}
    sides = []
    for serialized in (tf.reshape(context, [1]), candidates):
        raw = tf.io.parse_example(serialized, as_ragged)
        lengths = {k: tf.cast(raw[k].row_lengths(), tf.int64) for k in desc}
        for key, d in desc.items():
            if isinstance(d, tf.io.FixedLenFeature):     # absent here (zeros) when the other side has it
                raw[key] = tf.reshape(raw[key].to_tensor(shape=[None, _width(d)]), [-1] + [int(x) for x in d.shape])
        sides.append((_from_raw(spec, raw, desc, None, features, False), lengths))
    (ctx, ctx_len), (cand, cand_len) = sides
    out, checks = {}, []
    for name, key in _raw_keys(spec, desc).items():
        if name not in cand:
            continue
        own = cand_len[key] > 0                            # the candidate's values win, as in a merged example
        if name == key and isinstance(desc[key], tf.io.FixedLenFeature):
            width = _width(desc[key])
            checks.append(tf.debugging.assert_equal(
                tf.where(own, cand_len[key], ctx_len[key]), tf.constant(width, tf.int64),
                message=f"rank: feature {key!r} needs {width} value(s) per candidate (in the candidate or the "
                        "context example)"))
        picked = (lambda own=own, name=name: tf.where(tf.reshape(own, [-1] + [1] * (cand[name].shape.rank - 1)),
                                                      cand[name], ctx[name]))  # [1, ...] context broadcast to B
        out[name] = picked() if broadcast else tf.cond(tf.reduce_any(own), picked, lambda name=name: ctx[name])
    with tf.control_dependencies(checks):
        return {name: tf.identity(v) for name, v in out.items()}


def _width(fixed) -> int:
    """The number of values a FixedLenFeature holds (1 for a scalar)."""
    return int(np.prod([int(x) for x in fixed.shape])) if fixed.shape else 1


def _raw_keys(spec: FeatureSpec, desc: dict) -> dict[str, str]:
    """Each parsed feature's name -> the tf.Example key it comes from (a length: its list's; a sequence's length:
    its last parsed field's, as `_from_raw` takes it)."""
    keys = {}
    for f in spec.row_features:
        if isinstance(f, MultiHotFeature):
            keys[f.name] = keys[f.length_name] = f.name
            if f.weights:
                keys[f.weights] = f.weights
        elif isinstance(f, SequenceFeature):
            parsed = [sf.name for sf in f.fields if sf.name in desc]
            keys.update({name: name for name in parsed})
            if parsed:
                keys[f.length_name] = parsed[-1]
        else:
            keys[f.name] = f.name
    return {name: key for name, key in keys.items() if key in desc}


def _from_raw(spec: FeatureSpec, raw: dict, desc: dict, with_weights, features, labels: bool):
    """`parse_example`'s output (ragged sequences / multi-hots, dense scalars and vectors) -> parse_batch's."""
    tf = _tf()
    feats, label_values, weights = {}, {}, {}
    for f in spec.row_features:
        if isinstance(f, MultiHotFeature):
            if f.name not in desc:
                continue
            pad = "" if f.dtype == "string" else 0
            feats[f.name], feats[f.length_name] = _pad(tf, raw[f.name], f.max_len, pad)
            if f.weights and f.weights in desc:
                feats[f.weights], _ = _pad(tf, raw[f.weights], f.max_len, 0.0)
        elif isinstance(f, SequenceFeature):
            length = None
            for sf in f.fields:
                if sf.name not in desc:
                    continue
                width = sf.dim if sf.kind == "vector" else 1
                pad = sf.pad_value if sf.kind == "id" else float(sf.pad_value)
                feats[sf.name], length = _pad(tf, raw[sf.name], f.max_len, pad, width)
            if length is not None:
                feats[f.length_name] = length
        elif isinstance(f, LabelFeature):
            if labels:
                label_values[f.task] = raw[f.name]
        elif f.name in desc:
            feats[f.name] = raw[f.name]
    if features is not None:  # parsed for a mask or a length only: not asked for
        feats = {k: v for k, v in feats.items() if k in features}
    if not labels:
        return feats
    mask_columns = {lab.mask: raw[lab.mask] for lab in spec.labels if lab.mask and lab.mask in raw
                    and lab.mask not in {x.name for x in spec.labels}}
    masked = [lab for lab in spec.labels if lab.mask]
    if with_weights is None:
        with_weights = bool(masked)
    if not with_weights:
        return feats, label_values
    by_name = {lab.name: lab for lab in spec.labels}
    for lab in spec.labels:
        if lab.mask:
            src = by_name[lab.mask].task if lab.mask in by_name else lab.mask
            weights[lab.task] = label_values[src] if lab.mask in by_name else tf.cast(mask_columns[lab.mask], tf.float32)
        else:
            weights[lab.task] = tf.ones_like(label_values[lab.task])
    return feats, label_values, weights


def make_dataset(spec: FeatureSpec, files: Sequence[str | Path], batch_size: int, *, shuffle_buffer: int = 0,
                 seed: int | None = None, repeat: bool = False, drop_remainder: bool = False,
                 compression: str | None = None, prefetch: int | None = None, cache: bool = False,
                 num_rows: int | None = None, features: Collection[str] | None = None):
    """A tf.data pipeline over `files` yielding parsed batches (see the module docstring).

    `num_rows` (the manifest's count) declares the number of batches, so Keras knows an epoch's length: progress
    bars and step-based BackupAndRestore need it.
    """
    tf = _tf()
    files = [str(f) for f in files]
    if not files:
        raise ValueError("make_dataset: no files given")
    for f in files:
        if not tf.io.gfile.exists(f):
            raise FileNotFoundError(f"make_dataset: {f} does not exist")
    if compression is None:
        compression = "GZIP" if files[0].endswith(".gz") else ""
    ds = tf.data.TFRecordDataset(files, compression_type=compression, buffer_size=8 << 20)
    if cache:
        ds = ds.cache()
    if shuffle_buffer:
        ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()
    ds = ds.batch(batch_size, drop_remainder=drop_remainder)
    if num_rows is not None and not repeat:
        batches = num_rows // batch_size if drop_remainder else -(-num_rows // batch_size)
        ds = ds.apply(tf.data.experimental.assert_cardinality(batches))
    # parse_batch's Python branches depend on the spec only, so there is nothing for AutoGraph to convert
    parse = tf.autograph.experimental.do_not_convert(lambda s: parse_batch(spec, s, features=features))
    ds = ds.map(parse, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.prefetch(prefetch if prefetch is not None else tf.data.AUTOTUNE)


@dataclass
class DatasetDir:
    """A written dataset directory: its spec, artifacts, manifest and per-split files."""

    path: Path
    spec: FeatureSpec
    artifacts: Artifacts
    manifest: dict

    def files(self, split: str) -> list[Path]:
        if split not in self.manifest["splits"]:
            raise KeyError(f"{self.path}: no split {split!r}; splits: {sorted(self.manifest['splits'])}")
        return [self.path / s["file"] for s in self.manifest["splits"][split]["shards"]]

    def rows(self, split: str) -> int:
        return int(self.manifest["splits"][split]["rows"])

    def dataset(self, split: str, batch_size: int, **kw):
        return make_dataset(self.spec, self.files(split), batch_size,
                            compression=self.manifest.get("compression", "GZIP"), num_rows=self.rows(split), **kw)


def _rebuild_hint(path: Path) -> str:
    return (f"rebuild it: `tfrec-zoo data build NAME --out {path}` or `tfrec-zoo data write --spec S --input F "
            f"--out {path}`")


def read_manifest(path: str | Path) -> dict:
    """DIR/manifest.json, checked to be one (a damaged or cut-short file is an error naming it)."""
    mf = Path(path) / MANIFEST
    try:
        manifest = json.loads(mf.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{mf}: not valid JSON ({e}): the file is damaged or was cut short. Fix: "
                         f"{_rebuild_hint(Path(path))}") from None
    if not (isinstance(manifest, dict) and isinstance(manifest.get("splits"), dict)
            and "spec_fingerprint" in manifest):
        raise ValueError(f"{mf}: not a tfrec_zoo manifest (no `splits` / `spec_fingerprint`). Fix: "
                         f"{_rebuild_hint(Path(path))}")
    return manifest


def open_dataset(path: str | Path) -> DatasetDir:
    """Open a directory written by `write_dataset`; fails with a clear message if it is not one."""
    path = Path(path)
    mf = path / MANIFEST
    if not mf.exists():
        raise FileNotFoundError(f"{path}: no {MANIFEST}; not a tfrec_zoo dataset (or its build was interrupted). "
                                "Build it with `tfrec-zoo data build NAME` or `tfrec-zoo data write`.")
    manifest = read_manifest(path)
    spec = load_spec(path / "spec.yaml")
    if spec.fingerprint != manifest["spec_fingerprint"]:
        raise ValueError(f"{path}/spec.yaml does not match the manifest's spec fingerprint: the directory was edited "
                         "by hand; rebuild the dataset")
    return DatasetDir(path, spec, Artifacts.load(path / ARTIFACTS_DIR, spec), manifest)


# -- finding a damaged shard ---------------------------------------------------------------------------------------
# A tf.data pipeline over many shards reports a damaged one as `corrupted record at 45447`, naming no file. Reading
# stays as it is (nothing is spent on the happy path); after such an error the shards are scanned one by one.

def read_failure(error: BaseException) -> bool:
    """Whether `error`, raised while iterating a dataset, says a shard is damaged or shorter than the manifest."""
    tf = _tf()
    return isinstance(error, tf.errors.DataLossError) or (
        isinstance(error, tf.errors.FailedPreconditionError) and "expected to contain" in str(error))


def damaged_shards(path: str | Path, batch: int = 4096) -> list[str]:
    """One line per shard of the dataset at `path` that cannot be read whole: the file, the first bad record and
    its byte offset (in the decompressed stream for compressed shards), or a record count the manifest disagrees
    with. Reads every shard: for the error path only."""
    path = Path(path)
    manifest = read_manifest(path)
    compression = manifest.get("compression", "GZIP")
    out = []
    for info in manifest["splits"].values():
        for shard in info["shards"]:
            file = path / shard["file"]
            if not file.exists():
                out.append(f"{file}: missing (the manifest lists it)")
                continue
            n, problem = _scan_shard(file, compression, batch)
            if problem:
                out.append(f"{file}: {problem}")
            elif n != shard["rows"]:
                out.append(f"{file}: {n} records where the manifest says {shard['rows']} (the file was cut short "
                           "or replaced)")
    return out


def _scan_shard(file: Path, compression: str, batch: int) -> tuple[int, str | None]:
    """(records read, None) or (records before the bad one, what is wrong and where)."""
    tf = _tf()
    lengths = tf.data.TFRecordDataset(str(file), compression_type=compression).map(tf.strings.length)
    n = offset = 0
    try:
        for b in lengths.batch(batch):
            n, offset = n + int(b.shape[0]), offset + int(tf.reduce_sum(b)) + 16 * int(b.shape[0])
        return n, None
    except tf.errors.OpError:
        pass
    try:  # the bad record is in the batch after the n good ones: find it one record at a time
        for length in lengths.skip(n):
            n, offset = n + 1, offset + int(length) + 16     # 8 length + 4 CRC + data + 4 CRC
        return n, None
    except tf.errors.OpError as e:
        stream = " of the decompressed stream" if compression else ""
        return n, f"cannot read record {n}, which starts at byte {offset}{stream} ({_tf_reason(e)})"


def _tf_reason(error) -> str:
    """A tf.errors message without its op decoration (`{{function_node ...}}`, `[Op:IteratorGetNext]`)."""
    text = re.sub(r"\{\{[^}]*\}\}\s*", "", error.message or "")
    return text.split(" [Op:")[0].strip().rstrip("'") or type(error).__name__
