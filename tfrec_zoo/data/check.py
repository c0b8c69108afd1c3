"""`tfrec-zoo data check DIR`: scan every record of a dataset against its spec and list every problem."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..features.spec import (
    DenseFeature, FeatureSpec, LabelFeature, MultiHotFeature, SequenceFeature, TextFeature, VectorFeature,
    _Categorical, load_spec,
)
from .reader import read_manifest
from .writer import MANIFEST


@dataclass(frozen=True)
class Problem:
    file: str
    record: int | None
    feature: str | None
    message: str

    def __str__(self) -> str:
        where = self.file + (f": record {self.record}" if self.record is not None else "")
        return f"{where}: " + (f"feature {self.feature!r}: " if self.feature else "") + self.message


def _expectations(spec: FeatureSpec) -> list[tuple[str, str, str, int | None, str | None]]:
    """(column, proto list kind, shape rule, width, group) per stored column."""
    kind = {"int64": "int64_list", "string": "bytes_list"}
    out = []
    for f in spec.row_features:
        if isinstance(f, MultiHotFeature):
            out.append((f.name, kind[f.dtype], "list", None, f.name))
            if f.weights:
                out.append((f.weights, "float_list", "list", None, f.name))
        elif isinstance(f, _Categorical):
            out.append((f.name, kind[f.dtype], "scalar", 1, None))
        elif isinstance(f, (DenseFeature, LabelFeature)):
            out.append((f.name, "float_list", "scalar", 1, None))
        elif isinstance(f, (VectorFeature, TextFeature)):
            out.append((f.name, "float_list", "fixed", f.dim, None))
        elif isinstance(f, SequenceFeature):
            for sf in f.fields:
                k = kind[sf.dtype] if sf.kind == "id" else "float_list"
                out.append((sf.name, k, "steps", sf.dim if sf.kind == "vector" else 1, f.name))
    return out


def check_records(spec: FeatureSpec, file: str, records, max_problems: int = 1000) -> list[Problem]:
    """Check an iterable of serialized tf.Example against `spec`, one proto at a time (the reference the batched
    `check_dataset` path agrees with, and what it falls back to for the records it cannot decide in a batch)."""
    expect, max_len = _expectations(spec), _max_lengths(spec)
    problems: list[Problem] = []
    for i, raw in enumerate(records):
        if len(problems) >= max_problems:
            break
        problems += _check_one(expect, max_len, file, i, raw)
    return problems


def _max_lengths(spec: FeatureSpec) -> dict[str, int]:
    return {f.name: f.max_len for f in spec.features if isinstance(f, (SequenceFeature, MultiHotFeature))}


def _check_one(expect: list, max_len: dict[str, int], file: str, i: int, raw: bytes) -> list[Problem]:
    """The problems of record `i`, decoded as a tf.train.Example proto."""
    from tensorflow.core.example import example_pb2

    try:
        ex = example_pb2.Example.FromString(raw)
    except Exception as e:  # noqa: BLE001 - any decode failure is a problem to report
        return [Problem(file, i, None, f"not a tf.train.Example ({e})")]
    problems: list[Problem] = []
    fmap = ex.features.feature
    steps: dict[str, tuple[str, int]] = {}
    for col, list_kind, rule, width, group in expect:
        if col not in fmap:
            problems.append(Problem(file, i, col, "missing"))
            continue
        which = fmap[col].WhichOneof("kind")
        if which != list_kind:
            problems.append(Problem(file, i, col, f"stored as {which}, the spec needs {list_kind}"))
            continue
        n = len(getattr(fmap[col], list_kind).value)
        if rule in ("scalar", "fixed") and n != width:
            problems.append(Problem(file, i, col, f"has {n} values, expected {width}"))
        elif rule == "steps":
            if n % width:
                problems.append(Problem(file, i, col, f"{n} floats is not a whole number of {width}-d steps"))
                continue
            length = n // width
            if group in steps and steps[group][1] != length:
                problems.append(Problem(file, i, col, f"{length} steps while {steps[group][0]!r} has "
                                                      f"{steps[group][1]}"))
            steps.setdefault(group, (col, length))
            if length > max_len[group]:
                problems.append(Problem(file, i, col, f"{length} steps, more than max_len {max_len[group]}"))
        elif rule == "list" and group in steps and steps[group][1] != n:
            problems.append(Problem(file, i, col, f"{n} values while {steps[group][0]!r} has {steps[group][1]}"))
        elif rule == "list":
            steps.setdefault(group, (col, n))
    return problems


# records parsed per tf.io.parse_example call: big enough that per-call costs vanish, small enough to stay in cache
BATCH = 2048


class _BatchChecker:
    """The checks of `_check_one` on a batch of records at once: one `tf.io.parse_example` gives every stored
    column's value count per record, and numpy compares the counts. A record the batch cannot decide goes to
    `_check_one`: one with an empty column (a missing feature also parses as empty) or every record of a batch
    that parse_example rejects (an undecodable record or a list of the wrong kind), so the problems and their
    wording are the per-record path's."""

    def __init__(self, spec: FeatureSpec):
        import tensorflow as tf

        self.expect, self.max_len = _expectations(spec), _max_lengths(spec)
        dtypes = {"int64_list": tf.int64, "float_list": tf.float32, "bytes_list": tf.string}
        desc = {col: tf.io.RaggedFeature(dtypes[kind]) for col, kind, *_ in self.expect}

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
        def counts(serialized):
            return {k: v.row_lengths() for k, v in tf.io.parse_example(serialized, desc).items()}
        self._counts = counts

    def check(self, file: str, batch, first: int) -> list[tuple[int, int, Problem]]:
        """(record, order within the record, problem) for a batch of serialized records of `file` numbered from
        `first`."""
        import tensorflow as tf

        try:
            counts = {k: v.numpy() for k, v in self._counts(batch).items()}
        except (tf.errors.InvalidArgumentError, UnicodeDecodeError):  # TF's message can quote undecodable bytes
            return self._one_by_one(file, batch.numpy(), first, rejected=True)
        size = int(batch.shape[0])
        exact = np.zeros(size, bool)
        for col, *_ in self.expect:
            exact |= counts[col] == 0
        found = self._vectorised(file, counts, ~exact, first)
        rows = np.flatnonzero(exact)
        if rows.size:
            found += self._one_by_one(file, tf.gather(batch, rows).numpy(), first, rows=rows)
        return found

    def _one_by_one(self, file: str, records, first: int, rows=None,
                    rejected: bool = False) -> list[tuple[int, int, Problem]]:
        found = []
        for k, raw in enumerate(records):
            i = first + (int(rows[k]) if rows is not None else k)
            found += [(i, j, p) for j, p in enumerate(_check_one(self.expect, self.max_len, file, i, raw))]
        if rejected and not found:  # parse_example refused the batch, yet every proto decodes: name the record
            found = self._rejected_by_tf(file, records, first)
        return found

    def _rejected_by_tf(self, file: str, records, first: int) -> list[tuple[int, int, Problem]]:
        import tensorflow as tf

        found = []
        for k, raw in enumerate(records):
            try:
                self._counts(tf.constant([raw]))
            except (tf.errors.InvalidArgumentError, UnicodeDecodeError) as e:
                message = getattr(e, "message", str(e)).splitlines()[0]
                found.append((first + k, 0, Problem(file, first + k, None,
                                                    f"tf.io.parse_example rejects it ({message})")))
        return found

    def _vectorised(self, file: str, counts: dict[str, np.ndarray], rows: np.ndarray, first: int) -> list:
        """Problems of the records where `rows` (every column non-empty): per-record logic on count arrays."""
        found: list[tuple[int, int, Problem]] = []
        ref_len: dict[str, np.ndarray] = {}    # per group: the first column's length, -1 before it is set
        ref_col: dict[str, np.ndarray] = {}    # per group: index (into self.expect) of that column

        def report(mask, order: int, col: str, message) -> None:
            for i in np.flatnonzero(mask & rows):
                found.append((first + int(i), order, Problem(file, first + int(i), col, message(int(i)))))

        for e, (col, _, rule, width, group) in enumerate(self.expect):
            n = counts[col]
            if rule in ("scalar", "fixed"):
                report(n != width, 2 * e, col, lambda i: f"has {n[i]} values, expected {width}")
                continue
            if group not in ref_len:
                ref_len[group], ref_col[group] = np.full(n.shape, -1), np.full(n.shape, -1)
            known, rl, rc = ref_len[group] >= 0, ref_len[group], ref_col[group]
            name = lambda i: self.expect[rc[i]][0]  # noqa: E731
            if rule == "steps":
                whole = n % width == 0
                report(~whole, 2 * e, col, lambda i: f"{n[i]} floats is not a whole number of {width}-d steps")
                length = n // width
                report(whole & known & (rl != length), 2 * e, col,
                       lambda i: f"{length[i]} steps while {name(i)!r} has {rl[i]}")
                setting = whole & ~known
                limit = self.max_len[group]
                report(whole & (length > limit), 2 * e + 1, col,
                       lambda i: f"{length[i]} steps, more than max_len {limit}")
            else:
                report(known & (rl != n), 2 * e, col, lambda i: f"{n[i]} values while {name(i)!r} has {rl[i]}")
                length, setting = n, ~known
            rl[setting], rc[setting] = length[setting], e
        return found


def _capped(found: list[tuple[int, int, Problem]], limit: int) -> list[Problem]:
    """The problems in record order, stopping (as `check_records` does) before the first record that starts once
    `limit` problems are listed."""
    out: list[Problem] = []
    record = None
    for i, _, p in sorted(found, key=lambda t: (t[0], t[1])):
        if i != record and len(out) >= limit:
            break
        record = i
        out.append(p)
    return out


def _scan_shard(checker: _BatchChecker, file: Path, compression: str, max_problems: int):
    """(records read, the problems of the records, corruption problem or None) of one shard file, read in batches."""
    import tensorflow as tf

    found: list[tuple[int, int, Problem]] = []
    read, corrupt = 0, None
    batches = iter(tf.data.TFRecordDataset(str(file), compression_type=compression, buffer_size=8 << 20)
                   .batch(BATCH).prefetch(2))
    while True:
        try:
            batch = next(batches)
        except StopIteration:
            break
        except tf.errors.DataLossError as e:
            # the records before the corruption in that batch: read them one at a time, as far as they go
            tail = []
            try:
                for r in tf.data.TFRecordDataset(str(file), compression_type=compression).skip(read):
                    tail.append(r.numpy())
            except tf.errors.DataLossError:
                pass
            if tail:
                found += checker.check(str(file), tf.constant(tail, tf.string), read)
            read += len(tail)
            corrupt = Problem(str(file), read, None, f"corrupt after this record ({e.message})")
            break
        if len(found) < max_problems:   # enough to list: the rest is only counted
            found += checker.check(str(file), batch, read)
        read += int(batch.shape[0])
    return read, found, corrupt


def check_dataset(path: str | Path, max_problems: int = 1000) -> tuple[int, list[Problem]]:
    """(records scanned, problems) for a dataset directory; row counts are checked against the manifest."""
    path = Path(path)
    mf = path / MANIFEST
    if not mf.exists():
        return 0, [Problem(str(path), None, None, f"no {MANIFEST}: not a tfrec_zoo dataset or an interrupted build")]
    try:
        manifest = read_manifest(path)
    except ValueError as e:  # damaged or cut short: the message names the file and how to rebuild
        return 0, [Problem(str(mf), None, None, str(e).split(": ", 1)[1])]
    spec = load_spec(path / "spec.yaml")
    problems: list[Problem] = []
    if spec.fingerprint != manifest.get("spec_fingerprint"):
        problems.append(Problem(str(path / "spec.yaml"), None, None, "does not match the manifest's fingerprint"))
    total = 0
    checker = _BatchChecker(spec)
    for split, info in manifest["splits"].items():
        for shard in info["shards"]:
            file = path / shard["file"]
            if not file.exists():
                problems.append(Problem(str(file), None, None, "listed in the manifest but missing"))
                continue
            read, found, corrupt = _scan_shard(checker, file, manifest.get("compression", "GZIP"), max_problems)
            if corrupt is not None:
                problems.append(corrupt)
            total += read
            if read != shard["rows"]:
                problems.append(Problem(str(file), None, None, f"{read} records, manifest says {shard['rows']}"))
            problems += _capped(found, max_problems - len(problems))
            if len(problems) >= max_problems:
                return total, problems
    return total, problems
