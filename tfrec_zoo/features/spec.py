"""Declarative feature specs: the only place a dataset's features are described.

A spec is a YAML file (see `feature_specs/`) with a `name`, optional `keys` and a list of `features`, each with a
`kind`. `load_spec(path)` parses and validates it; every mistake raises one `FeatureSpecError` naming the file, the
path inside it (`features[3].max_len`) and the fix.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping

import yaml


class FeatureSpecError(ValueError):
    """A feature spec (or data checked against one) is wrong; the message names where and how to fix it."""

    def __init__(self, source: str, path: str, problem: str, fix: str = ""):
        self.source, self.path, self.problem, self.fix = source, path, problem, fix
        msg = f"{source}: {path}: {problem}" if path else f"{source}: {problem}"
        super().__init__(msg + (f". Fix: {fix}" if fix else ""))


KINDS = ("id", "multi_hot", "dense", "vector", "text", "sequence", "domain", "label")
ID_DTYPES = ("int64", "string")
COMBINERS = ("mean", "sum", "sqrtn")
NORMALIZATIONS = ("none", "zscore", "log1p", "minmax")
LABEL_TYPES = ("binary", "multiclass", "regression")
SEQUENCE_FIELD_KINDS = ("id", "dense", "vector")
KEY_ROLES = ("user", "item", "time", "query")

# Keras names layers it creates itself `dense`, `dense_1`, ...; an Input with such a name clashes in a functional model.
_KERAS_AUTO_NAME = re.compile(
    r"^(dense|embedding|concatenate|flatten|input|add|multiply|dot|lambda|dropout|activation|reshape|"
    r"batch_normalization|layer_normalization|average|maximum|minimum|subtract|permute|masking|"
    r"string_lookup|integer_lookup|hashing|discretization|normalization|model|sequential|attention|"
    r"multi_head_attention|softmax|re_lu|tf_op_layer)(_\d+)?$"
)
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class VocabConfig:
    """How a vocabulary is built from the training split: ids seen fewer than `min_count` times go to OOV buckets."""

    min_count: int = 1
    oov_buckets: int = 1
    max_size: int | None = None
    # "catalogue": the vocabulary is every id of the dataset's catalogue for this feature (label-free metadata the
    # builder supplies, e.g. every movie or every query string), so ids unseen in train keep their side data
    # (title vectors); their own embedding rows stay untrained. "train": fitted on the training split only.
    fit_on: str = "train"


@dataclass(frozen=True)
class Feature:
    name: str
    kind: str
    doc: str = ""
    # `side_of: movie_id`: an attribute of that id (a movie's title, genres), not a column of the examples: it is
    # read from the builder's catalogue into a table aligned with the id's vocabulary (Artifacts.side) and looked up
    # in the graph by id, for the target and for every history step that shares the id's table
    side_of: str | None = None

    @property
    def is_input(self) -> bool:
        return self.kind != "label" and not self.side_of


@dataclass(frozen=True)
class _Categorical(Feature):
    dtype: str = "int64"
    embedding_dim: int = 16
    vocab: VocabConfig | None = None
    hash_buckets: int | None = None
    embedding_group: str | None = None
    shares_embedding_with: str | None = None
    # a missing value: None = an error naming the file and line; "oov" = the OOV bucket; else this value
    fill: Any = None


@dataclass(frozen=True)
class IdFeature(_Categorical):
    """One categorical value per example."""


@dataclass(frozen=True)
class DomainFeature(_Categorical):
    """The scenario/domain an example comes from (multi-domain models branch on it)."""


@dataclass(frozen=True)
class MultiHotFeature(_Categorical):
    """A variable-length list of ids (genres, tags), pooled by `combiner`, optionally weighted by `weights`."""

    max_len: int = 16
    combiner: str = "mean"
    weights: str | None = None

    @property
    def length_name(self) -> str:
        return f"{self.name}_len"


@dataclass(frozen=True)
class DenseFeature(Feature):
    """A float, normalised in-graph with statistics from the training split; optionally bucketised too."""

    normalization: str = "zscore"
    buckets: int | None = None
    bucket_embedding_dim: int = 8
    # a missing value: None = an error naming the file and line; a number; or "mean" / "median" of the train split
    fill: Any = None


@dataclass(frozen=True)
class VectorFeature(Feature):
    """A precomputed fixed-size float vector; `produced_by` says what made it."""

    dim: int = 0
    produced_by: str = ""


@dataclass(frozen=True)
class TextFeature(Feature):
    """A raw string that the text encoder turns into a `dim`-float vector when the dataset is written."""

    encoder: str = "all-MiniLM-L6-v2"
    dim: int = 384
    source: str | None = None


@dataclass(frozen=True)
class SequenceField:
    """One field of each step of a sequence (an id, a float or a vector)."""

    name: str
    kind: str = "id"
    dtype: str = "int64"
    source: str | None = None
    embedding_dim: int = 16
    vocab: VocabConfig | None = None
    hash_buckets: int | None = None
    embedding_group: str | None = None
    shares_embedding_with: str | None = None
    dim: int = 0
    normalization: str = "none"
    padding: Any = None

    @property
    def pad_value(self) -> Any:
        if self.padding is not None:
            return self.padding
        if self.kind == "id":
            return "" if self.dtype == "string" else 0
        return 0.0


@dataclass(frozen=True)
class SequenceFeature(Feature):
    """A user's history: `max_len` most recent steps of a tuple of `fields`, padded at the end, with a length."""

    max_len: int = 50
    fields: tuple[SequenceField, ...] = ()
    only_positive: str | None = None

    @property
    def length_name(self) -> str:
        return f"{self.name}_len"


@dataclass(frozen=True)
class LabelFeature(Feature):
    """A training target: `task` name, `type`, an optional `mask` column (the task counts only where it is 1)."""

    task: str = ""
    type: str = "binary"
    num_classes: int | None = None
    mask: str | None = None
    loss_weight: float = 1.0


_KIND_CLASS = {
    "id": IdFeature,
    "domain": DomainFeature,
    "multi_hot": MultiHotFeature,
    "dense": DenseFeature,
    "vector": VectorFeature,
    "text": TextFeature,
    "sequence": SequenceFeature,
    "label": LabelFeature,
}


@dataclass(frozen=True)
class FeatureSpec:
    """A validated spec. `features` keeps the file's order; `source` is the file it came from."""

    name: str
    features: tuple[Feature, ...]
    description: str = ""
    keys: Mapping[str, str] = field(default_factory=dict)
    source: str = "<memory>"

    # -- lookups ---------------------------------------------------------------------------------------------------
    def __getitem__(self, name: str) -> Feature:
        for f in self.features:
            if f.name == name:
                return f
        raise KeyError(f"{self.source}: no feature named {name!r}; features: {[f.name for f in self.features]}")

    def of_kind(self, *kinds: str) -> list[Feature]:
        return [f for f in self.features if f.kind in kinds]

    @property
    def inputs(self) -> list[Feature]:
        """Features the examples carry and models take as inputs (not labels, not `side_of` attributes)."""
        return [f for f in self.features if f.is_input]

    @property
    def row_features(self) -> list[Feature]:
        """Features stored in each example (inputs and labels; not `side_of` attributes)."""
        return [f for f in self.features if not f.side_of]

    def side_features(self, owner: str | None = None) -> list[Feature]:
        """`side_of` features (of `owner` only, when given), in spec order."""
        return [f for f in self.features if f.side_of and (owner is None or f.side_of == owner)]

    def side_owner(self, column: str) -> str | None:
        """The id feature whose side tables a categorical column can use: the owner of its embedding table when
        that feature has side features (hist_movie_id -> movie_id), else None."""
        table = self.table_of(column)
        for f in self.features:
            if f.name == table or (isinstance(f, _Categorical) and self.table_of(f.name) == table
                                   and not f.shares_embedding_with):
                return f.name if self.side_features(f.name) else None
        return None

    @property
    def labels(self) -> list[LabelFeature]:
        return [f for f in self.features if isinstance(f, LabelFeature)]

    def categorical_columns(self) -> Iterator[tuple[str, Any]]:
        """(column name, config) of every categorical thing: id/domain/multi_hot features and id sequence fields."""
        for f in self.features:
            if isinstance(f, _Categorical):
                yield f.name, f
            elif isinstance(f, SequenceFeature):
                for sf in f.fields:
                    if sf.kind == "id":
                        yield sf.name, sf

    def table_of(self, column: str) -> str:
        """The embedding table (and vocabulary) a categorical column uses: its group, or the feature it shares with."""
        configs = dict(self.categorical_columns())
        seen = set()
        cfg = configs[column]
        while True:
            if cfg.shares_embedding_with:
                if cfg.name in seen:  # validated away; guard anyway
                    raise FeatureSpecError(self.source, column, "shares_embedding_with forms a cycle")
                seen.add(cfg.name)
                cfg = configs[cfg.shares_embedding_with]
                continue
            return cfg.embedding_group or cfg.name

    def table_config(self, table: str) -> Any:
        """The config (dtype, vocab, hash, dim) that defines `table`: its first member that is not a sharer."""
        for col, cfg in self.categorical_columns():
            if self.table_of(col) == table and not cfg.shares_embedding_with:
                return cfg
        raise KeyError(table)

    def tables(self) -> dict[str, list[str]]:
        """table name -> the columns that use it, in spec order."""
        out: dict[str, list[str]] = {}
        for col, _ in self.categorical_columns():
            out.setdefault(self.table_of(col), []).append(col)
        return out

    def to_dict(self) -> dict:
        """The spec as YAML-ready data, listing only what differs from the defaults (so it re-parses to itself)."""
        def clean(obj):
            if dataclasses.is_dataclass(obj):
                out = {}
                for fld in dataclasses.fields(obj):
                    value = getattr(obj, fld.name)
                    default = fld.default if fld.default is not dataclasses.MISSING else dataclasses.MISSING
                    always = fld.name in ("name", "kind", "max_len", "fields") or (fld.name == "dim" and value)
                    if not always and value == default:
                        continue
                    out[fld.name] = clean(value)
                return out
            if isinstance(obj, (list, tuple)):
                return [clean(v) for v in obj]
            return obj

        out = {"name": self.name, "features": [clean(f) for f in self.features]}
        if self.description:
            out["description"] = self.description
        if self.keys:
            out["keys"] = dict(self.keys)
        return out

    @property
    def fingerprint(self) -> str:
        """sha256 of the canonical parsed spec: equal for equal specs whatever their YAML layout."""
        canon = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"), default=str)
        return hashlib.sha256(canon.encode()).hexdigest()


# ----------------------------------------------------------------------------------------------------------------------
# Parsing and validation
# ----------------------------------------------------------------------------------------------------------------------
_COMMON_KEYS = {"name", "kind", "doc"}
_CATEGORICAL_KEYS = _COMMON_KEYS | {"dtype", "embedding_dim", "vocab", "hash_buckets", "embedding_group",
                                    "shares_embedding_with"}
_ALLOWED_KEYS = {
    "id": _CATEGORICAL_KEYS | {"side_of", "fill"},
    "domain": _CATEGORICAL_KEYS | {"fill"},
    "multi_hot": _CATEGORICAL_KEYS | {"max_len", "combiner", "weights", "side_of"},
    "dense": _COMMON_KEYS | {"normalization", "buckets", "bucket_embedding_dim", "fill"},
    "vector": _COMMON_KEYS | {"dim", "produced_by", "side_of"},
    "text": _COMMON_KEYS | {"encoder", "dim", "source", "side_of"},
    "sequence": _COMMON_KEYS | {"max_len", "fields", "only_positive"},
    "label": _COMMON_KEYS | {"task", "type", "num_classes", "mask", "loss_weight"},
}
_FIELD_KEYS = {"name", "kind", "dtype", "source", "embedding_dim", "vocab", "hash_buckets", "embedding_group",
               "shares_embedding_with", "dim", "normalization", "padding"}
_VOCAB_KEYS = {"min_count", "oov_buckets", "max_size", "fit_on"}
_TOP_KEYS = {"name", "description", "keys", "features"}


class _Ctx:
    def __init__(self, source: str):
        self.source = source

    def fail(self, path: str, problem: str, fix: str = "") -> None:
        raise FeatureSpecError(self.source, path, problem, fix)

    def check_keys(self, raw: Mapping, allowed: set, path: str, what: str) -> None:
        for key in raw:
            if key not in allowed:
                close = [k for k in sorted(allowed) if k[:3] == str(key)[:3]]
                hint = f"did you mean {close[0]!r}?" if close else f"allowed keys: {', '.join(sorted(allowed))}"
                self.fail(f"{path}.{key}", f"unknown key {key!r} for {what}", f"remove it or fix the spelling ({hint})")

    def get(self, raw: Mapping, key: str, typ, path: str, default=None, required: bool = False):
        if key not in raw or raw[key] is None:
            if required:
                self.fail(f"{path}.{key}", "is required", f"add `{key}:`")
            return default
        value = raw[key]
        types = typ if isinstance(typ, tuple) else (typ,)
        if bool in [type(value)] and bool not in types:
            self.fail(f"{path}.{key}", f"expected {_tname(types)}, got a boolean ({value!r})", f"give a {_tname(types)}")
        if float in types and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, types):
            self.fail(f"{path}.{key}", f"expected {_tname(types)}, got {type(value).__name__} ({value!r})",
                      f"give a {_tname(types)}")
        return value

    def positive(self, value, path: str) -> None:
        if value is not None and value <= 0:
            self.fail(path, f"must be > 0, got {value}", "give a positive number")

    def choice(self, value, choices, path: str) -> None:
        if value not in choices:
            self.fail(path, f"{value!r} is not one of {', '.join(choices)}", f"use one of {', '.join(choices)}")


def _tname(types) -> str:
    names = {int: "integer", float: "number", str: "string", list: "list", dict: "mapping", bool: "boolean"}
    return " or ".join(names.get(t, t.__name__) for t in types)


def _parse_vocab(ctx: _Ctx, raw: Any, path: str) -> VocabConfig:
    if raw is True or raw == {}:
        return VocabConfig()
    if not isinstance(raw, dict):
        ctx.fail(path, f"expected a mapping with {sorted(_VOCAB_KEYS)}, got {raw!r}", "write e.g. `vocab: {min_count: 2}`")
    ctx.check_keys(raw, _VOCAB_KEYS, path, "vocab")
    cfg = VocabConfig(
        min_count=ctx.get(raw, "min_count", int, path, 1),
        oov_buckets=ctx.get(raw, "oov_buckets", int, path, 1),
        max_size=ctx.get(raw, "max_size", int, path),
        fit_on=ctx.get(raw, "fit_on", str, path, "train"),
    )
    ctx.choice(cfg.fit_on, ("train", "catalogue"), f"{path}.fit_on")
    ctx.positive(cfg.min_count, f"{path}.min_count")
    ctx.positive(cfg.oov_buckets, f"{path}.oov_buckets")
    ctx.positive(cfg.max_size, f"{path}.max_size")
    return cfg


def _parse_categorical(ctx: _Ctx, raw: Mapping, path: str) -> dict:
    kw = {
        "dtype": ctx.get(raw, "dtype", str, path, "int64"),
        "embedding_dim": ctx.get(raw, "embedding_dim", int, path, 16),
        "hash_buckets": ctx.get(raw, "hash_buckets", int, path),
        "embedding_group": ctx.get(raw, "embedding_group", str, path),
        "shares_embedding_with": ctx.get(raw, "shares_embedding_with", str, path),
    }
    ctx.choice(kw["dtype"], ID_DTYPES, f"{path}.dtype")
    ctx.positive(kw["embedding_dim"], f"{path}.embedding_dim")
    ctx.positive(kw["hash_buckets"], f"{path}.hash_buckets")
    if "vocab" in raw and kw["hash_buckets"]:
        ctx.fail(f"{path}.vocab", "both `vocab` and `hash_buckets` are set", "keep one: a vocabulary or hashing")
    if kw["shares_embedding_with"] and kw["embedding_group"]:
        ctx.fail(f"{path}.embedding_group", "both `embedding_group` and `shares_embedding_with` are set",
                 "keep one: a sharer uses the table of the feature it shares with")
    if kw["shares_embedding_with"] and ("vocab" in raw or kw["hash_buckets"]):
        ctx.fail(f"{path}.shares_embedding_with", "a feature that shares an embedding also sets its own vocab/hash",
                 "remove `vocab`/`hash_buckets`: the shared table's settings apply")
    if not kw["hash_buckets"] and not kw["shares_embedding_with"]:
        kw["vocab"] = _parse_vocab(ctx, raw.get("vocab", {}), f"{path}.vocab")
    return kw


FILL_STATISTICS = ("mean", "median")


def _parse_fill(ctx: _Ctx, value: Any, kind: str, dtype: str | None, path: str) -> Any:
    """What a missing value becomes when the dataset is written (see tfrec_zoo/data/fill.py)."""
    if kind == "dense":
        if value in FILL_STATISTICS:
            return value
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            ctx.fail(path, f"expected a finite number or one of {', '.join(FILL_STATISTICS)}, got {value!r}",
                     "e.g. `fill: 0.0` or `fill: median` (fitted on the train split)")
        return float(value)
    if value == "oov":
        return value
    if dtype == "int64" and (isinstance(value, bool) or not isinstance(value, int)):
        ctx.fail(path, f"expected `oov` or an int64 id, got {value!r}", "e.g. `fill: oov` (the OOV bucket)")
    if dtype == "string" and not isinstance(value, str):
        ctx.fail(path, f"expected `oov` or a string id, got {value!r}", "e.g. `fill: oov` (the OOV bucket)")
    return value


def _parse_field(ctx: _Ctx, raw: Any, path: str) -> SequenceField:
    if not isinstance(raw, dict):
        ctx.fail(path, f"expected a mapping, got {raw!r}", "write each field as `- {name: ..., kind: id}`")
    ctx.check_keys(raw, _FIELD_KEYS, path, "a sequence field")
    name = ctx.get(raw, "name", str, path, required=True)
    kind = ctx.get(raw, "kind", str, path, "id")
    ctx.choice(kind, SEQUENCE_FIELD_KINDS, f"{path}.kind")
    kw: dict[str, Any] = {"name": name, "kind": kind, "source": ctx.get(raw, "source", str, path)}
    if kind == "id":
        kw.update(_parse_categorical(ctx, raw, path))
    else:
        for key in ("dtype", "vocab", "hash_buckets", "embedding_group", "shares_embedding_with"):
            if key in raw:
                ctx.fail(f"{path}.{key}", f"`{key}` applies to id fields, this field is {kind}", f"remove `{key}`")
    if kind == "vector":
        kw["dim"] = ctx.get(raw, "dim", int, path, required=True)
        ctx.positive(kw["dim"], f"{path}.dim")
    if kind == "dense":
        kw["normalization"] = ctx.get(raw, "normalization", str, path, "none")
        ctx.choice(kw["normalization"], NORMALIZATIONS, f"{path}.normalization")
    if "padding" in raw:
        kw["padding"] = raw["padding"]
    return SequenceField(**kw)


def _parse_feature(ctx: _Ctx, raw: Any, path: str) -> Feature:
    if not isinstance(raw, dict):
        ctx.fail(path, f"expected a mapping, got {type(raw).__name__} ({raw!r})", "write `- {name: ..., kind: ...}`")
    name = ctx.get(raw, "name", str, path, required=True)
    kind = ctx.get(raw, "kind", str, path, required=True)
    if kind not in KINDS:
        ctx.fail(f"{path}.kind", f"unknown kind {kind!r}", f"use one of {', '.join(KINDS)}")
    ctx.check_keys(raw, _ALLOWED_KEYS[kind], path, f"a {kind} feature")
    kw: dict[str, Any] = {"name": name, "kind": kind, "doc": ctx.get(raw, "doc", str, path, "")}
    if "side_of" in raw:
        kw["side_of"] = ctx.get(raw, "side_of", str, path)
    if kind in ("id", "domain", "multi_hot"):
        kw.update(_parse_categorical(ctx, raw, path))
    if "fill" in raw:
        kw["fill"] = _parse_fill(ctx, raw["fill"], kind, kw.get("dtype"), f"{path}.fill")
    if kind == "multi_hot":
        kw["max_len"] = ctx.get(raw, "max_len", int, path, 16)
        ctx.positive(kw["max_len"], f"{path}.max_len")
        kw["combiner"] = ctx.get(raw, "combiner", str, path, "mean")
        ctx.choice(kw["combiner"], COMBINERS, f"{path}.combiner")
        kw["weights"] = ctx.get(raw, "weights", str, path)
    elif kind == "dense":
        kw["normalization"] = ctx.get(raw, "normalization", str, path, "zscore")
        ctx.choice(kw["normalization"], NORMALIZATIONS, f"{path}.normalization")
        kw["buckets"] = ctx.get(raw, "buckets", int, path)
        if kw["buckets"] is not None and kw["buckets"] < 2:
            ctx.fail(f"{path}.buckets", f"must be >= 2, got {kw['buckets']}", "give the number of quantile buckets")
        kw["bucket_embedding_dim"] = ctx.get(raw, "bucket_embedding_dim", int, path, 8)
        ctx.positive(kw["bucket_embedding_dim"], f"{path}.bucket_embedding_dim")
    elif kind == "vector":
        kw["dim"] = ctx.get(raw, "dim", int, path, required=True)
        ctx.positive(kw["dim"], f"{path}.dim")
        kw["produced_by"] = ctx.get(raw, "produced_by", str, path, "")
    elif kind == "text":
        kw["encoder"] = ctx.get(raw, "encoder", str, path, "all-MiniLM-L6-v2")
        kw["dim"] = ctx.get(raw, "dim", int, path, 384)
        ctx.positive(kw["dim"], f"{path}.dim")
        kw["source"] = ctx.get(raw, "source", str, path)
    elif kind == "sequence":
        kw["max_len"] = ctx.get(raw, "max_len", int, path, required=True)
        ctx.positive(kw["max_len"], f"{path}.max_len")
        fields = ctx.get(raw, "fields", list, path, required=True)
        if not fields:
            ctx.fail(f"{path}.fields", "is empty", "list at least one field, e.g. `- {name: hist_item_id, kind: id}`")
        kw["fields"] = tuple(_parse_field(ctx, fr, f"{path}.fields[{j}]") for j, fr in enumerate(fields))
        kw["only_positive"] = ctx.get(raw, "only_positive", str, path)
    elif kind == "label":
        kw["task"] = ctx.get(raw, "task", str, path, name)
        kw["type"] = ctx.get(raw, "type", str, path, "binary")
        ctx.choice(kw["type"], LABEL_TYPES, f"{path}.type")
        kw["num_classes"] = ctx.get(raw, "num_classes", int, path)
        if kw["type"] == "multiclass" and not kw["num_classes"]:
            ctx.fail(f"{path}.num_classes", "a multiclass label needs num_classes", "add `num_classes: N`")
        kw["mask"] = ctx.get(raw, "mask", str, path)
        kw["loss_weight"] = ctx.get(raw, "loss_weight", float, path, 1.0)
        if kw["loss_weight"] < 0:
            ctx.fail(f"{path}.loss_weight", f"must be >= 0, got {kw['loss_weight']}", "give a non-negative weight")
    return _KIND_CLASS[kind](**kw)


def _check_cross_references(ctx: _Ctx, spec: FeatureSpec, paths: dict[str, str]) -> None:
    columns: dict[str, str] = {}
    for f in spec.features:
        names = [f.name] + ([f.length_name] if isinstance(f, (SequenceFeature, MultiHotFeature)) else [])
        names += [sf.name for sf in f.fields] if isinstance(f, SequenceFeature) else []
        for j, n in enumerate(names):
            where = paths[f.name] if j == 0 else paths.get(n, paths[f.name])
            if n in columns:
                ctx.fail(where, f"duplicate name {n!r} (also at {columns[n]})", "give every feature and field a unique name")
            if not _NAME.match(n):
                ctx.fail(where, f"name {n!r} is not an identifier", "use letters, digits and _ , starting with a letter")
            if _KERAS_AUTO_NAME.match(n):
                ctx.fail(where, f"name {n!r} clashes with a name Keras gives its own layers",
                         f"rename it, e.g. {('f_' + n)!r}")
            columns[n] = where
    cats = dict(spec.categorical_columns())
    for col, cfg in cats.items():
        target = cfg.shares_embedding_with
        if target is None:
            continue
        where = paths.get(col, col) + ".shares_embedding_with"
        if target not in cats:
            ctx.fail(where, f"{target!r} is not a categorical feature of this spec",
                     f"name one of {', '.join(sorted(cats))}")
        seen, cur = {col}, target
        while cats[cur].shares_embedding_with:
            if cur in seen:
                ctx.fail(where, f"shares_embedding_with forms a cycle through {cur!r}", "point the chain at a feature that owns its table")
            seen.add(cur)
            cur = cats[cur].shares_embedding_with
        if cats[cur].dtype != cfg.dtype:
            ctx.fail(where, f"dtype {cfg.dtype} differs from {cur!r}'s {cats[cur].dtype}", "share only between ids of one dtype")
    # members of one embedding group agree on dtype / dim / vocab
    for table, members in spec.tables().items():
        owners = [m for m in members if not cats[m].shares_embedding_with]
        first = cats[owners[0]]
        for m in owners[1:]:
            c = cats[m]
            for attr in ("dtype", "embedding_dim", "vocab", "hash_buckets"):
                if getattr(c, attr) != getattr(first, attr):
                    ctx.fail(f"{paths.get(m, m)}.{attr}", f"embedding group {table!r} members disagree on {attr} "
                             f"({getattr(c, attr)!r} vs {owners[0]}'s {getattr(first, attr)!r})",
                             "give every member of a group the same dtype, embedding_dim and vocab/hash settings")
    for f in spec.features:
        if isinstance(f, MultiHotFeature) and f.weights and f.weights in columns:
            ctx.fail(paths[f.name] + ".weights", f"weights column {f.weights!r} is also a feature name",
                     "name the weights column differently; it travels with the multi_hot feature")
        if isinstance(f, LabelFeature) and f.mask:
            if f.mask not in columns:
                ctx.fail(paths[f.name] + ".mask", f"mask column {f.mask!r} is not a feature of this spec",
                         "name a label (e.g. `click`) or remove `mask`")
        if isinstance(f, SequenceFeature) and f.only_positive and f.only_positive not in columns:
            ctx.fail(paths[f.name] + ".only_positive", f"{f.only_positive!r} is not a feature of this spec",
                     "name the label whose positives make up the history")
    _check_side_features(ctx, spec, paths, cats)
    tasks = [lab.task for lab in spec.labels]
    if len(set(tasks)) != len(tasks):
        ctx.fail("features", f"duplicate task names {tasks}", "give each label a distinct `task`")
    for role, col in spec.keys.items():
        # keys name data columns by role (user, item, time); a time column may order histories without being
        # a feature, so only the name's form is checked here and presence is checked against the data.
        if role not in KEY_ROLES:
            ctx.fail(f"keys.{role}", f"unknown role {role!r}", f"use {', '.join(KEY_ROLES)}")
        if not _NAME.match(col):
            ctx.fail(f"keys.{role}", f"{col!r} is not a column name", "use letters, digits and _")


def _check_side_features(ctx: _Ctx, spec: FeatureSpec, paths: dict[str, str], cats: dict) -> None:
    for f in spec.side_features():
        where = paths[f.name] + ".side_of"
        owner = cats.get(f.side_of)
        if not isinstance(owner, IdFeature) or owner.side_of:
            ctx.fail(where, f"{f.side_of!r} is not an id feature of this spec",
                     "name the id feature this attribute belongs to (e.g. `side_of: movie_id`)")
        if owner.shares_embedding_with or owner.hash_buckets:
            ctx.fail(where, f"{f.side_of!r} {'shares another table' if owner.shares_embedding_with else 'is hashed'}",
                     "attach side features to the id that owns a vocabulary (side tables are aligned with it)")
        if isinstance(f, _Categorical) and f.shares_embedding_with:
            ctx.fail(where, "a side feature cannot share another feature's table",
                     "give it its own vocab (its values come from the catalogue)")
        if f.name in spec.keys.values():
            ctx.fail(where, f"{f.name!r} is a key", "keys are example columns; drop `side_of` or the key")
    for col, cfg in cats.items():
        vocab = getattr(cfg, "vocab", None)
        if vocab is not None and vocab.fit_on == "catalogue" and not spec.side_features(col):
            ctx.fail(paths.get(col, col) + ".vocab.fit_on", "`fit_on: catalogue` needs side features of this id",
                     "add features with `side_of: " + col + "` (the catalogue's columns) or use `fit_on: train`")


def parse_spec(raw: Any, source: str = "<memory>") -> FeatureSpec:
    """Validate a parsed YAML/dict spec and return a FeatureSpec."""
    ctx = _Ctx(source)
    if not isinstance(raw, dict):
        ctx.fail("", f"the spec must be a mapping with `name` and `features`, got {type(raw).__name__}",
                 "start the file with `name: ...` and `features:`")
    ctx.check_keys(raw, _TOP_KEYS, "", "a spec")
    name = ctx.get(raw, "name", str, "", required=True)
    raw_features = ctx.get(raw, "features", list, "", required=True)
    keys = ctx.get(raw, "keys", dict, "", {})
    for k, v in keys.items():
        if not isinstance(v, str):
            ctx.fail(f"keys.{k}", f"expected a feature name, got {v!r}", "write e.g. `keys: {user: user_id}`")
    features, paths = [], {}
    for i, fr in enumerate(raw_features):
        path = f"features[{i}]"
        feat = _parse_feature(ctx, fr, path)
        named = [(feat.name, path)]
        if isinstance(feat, SequenceFeature):
            named += [(sf.name, f"{path}.fields[{j}]") for j, sf in enumerate(feat.fields)]
        for n, where in named:
            if n in paths:
                ctx.fail(where, f"duplicate name {n!r} (also at {paths[n]})", "give every feature and field a unique name")
            paths[n] = where
        features.append(feat)
    spec = FeatureSpec(name=name, features=tuple(features), description=ctx.get(raw, "description", str, "", ""),
                       keys=dict(keys), source=source)
    if not spec.labels:
        ctx.fail("features", "the spec has no label", "add a feature with `kind: label` (e.g. `{name: click, kind: label}`)")
    if not spec.inputs:
        ctx.fail("features", "the spec has no input feature", "add at least one id/dense/vector/... feature")
    _check_cross_references(ctx, spec, paths)
    return spec


def load_spec(path: str | Path) -> FeatureSpec:
    """Read and validate a YAML feature spec."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise FeatureSpecError(str(path), "", f"cannot read the spec ({e.strerror})", "check the path") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise FeatureSpecError(str(path), where, f"not valid YAML ({getattr(e, 'problem', e)})",
                               "fix the YAML syntax") from None
    return parse_spec(raw, source=str(path))
