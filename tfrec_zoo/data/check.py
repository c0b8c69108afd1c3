"""`tfrec-zoo data check DIR`: scan every record of a dataset against its spec and list every problem."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..features.spec import (
    DenseFeature, FeatureSpec, LabelFeature, MultiHotFeature, SequenceFeature, TextFeature, VectorFeature,
    _Categorical, load_spec,
)
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
    """Check an iterable of serialized tf.Example against `spec`."""
    from tensorflow.core.example import example_pb2

    expect = _expectations(spec)
    max_len = {f.name: f.max_len for f in spec.features if isinstance(f, (SequenceFeature, MultiHotFeature))}
    problems: list[Problem] = []
    for i, raw in enumerate(records):
        if len(problems) >= max_problems:
            break
        try:
            ex = example_pb2.Example.FromString(raw)
        except Exception as e:  # noqa: BLE001 - any decode failure is a problem to report
            problems.append(Problem(file, i, None, f"not a tf.train.Example ({e})"))
            continue
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


def check_dataset(path: str | Path, max_problems: int = 1000) -> tuple[int, list[Problem]]:
    """(records scanned, problems) for a dataset directory; row counts are checked against the manifest."""
    import tensorflow as tf

    path = Path(path)
    mf = path / MANIFEST
    if not mf.exists():
        return 0, [Problem(str(path), None, None, f"no {MANIFEST}: not a tfrec_zoo dataset or an interrupted build")]
    manifest = json.loads(mf.read_text())
    spec = load_spec(path / "spec.yaml")
    problems: list[Problem] = []
    if spec.fingerprint != manifest.get("spec_fingerprint"):
        problems.append(Problem(str(path / "spec.yaml"), None, None, "does not match the manifest's fingerprint"))
    total = 0
    for split, info in manifest["splits"].items():
        for shard in info["shards"]:
            file = path / shard["file"]
            if not file.exists():
                problems.append(Problem(str(file), None, None, "listed in the manifest but missing"))
                continue
            records = []
            try:
                for r in tf.data.TFRecordDataset(str(file), compression_type=manifest.get("compression", "GZIP")):
                    records.append(r.numpy())
            except tf.errors.DataLossError as e:
                problems.append(Problem(str(file), len(records), None, f"corrupt after this record ({e.message})"))
            total += len(records)
            if len(records) != shard["rows"]:
                problems.append(Problem(str(file), None, None, f"{len(records)} records, manifest says {shard['rows']}"))
            problems += check_records(spec, str(file), records, max_problems - len(problems))
            if len(problems) >= max_problems:
                return total, problems
    return total, problems
