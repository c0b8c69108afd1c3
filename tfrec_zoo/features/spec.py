"""Declarative feature specs: the only place a dataset's features are described.

A spec is a YAML file (see `feature_specs/`) with a `name`, optional `keys` and a list of `features`, each with a
`kind`. `load_spec(path)` parses and validates it; every mistake raises one `FeatureSpecError` naming the file, the
path inside it (`features[3].max_len`) and the fix.
"""
from __future__ import annotations

import contextlib
import dataclasses
import difflib
import gc
import hashlib
import json
import math
import re
import reprlib
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Iterator, Mapping

import yaml

from . import safe_yaml


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

#: the largest spec file `load_spec` reads (a real spec is a few KB; this keeps a stray data file out of memory)
MAX_SPEC_BYTES = 8 * 1024 * 1024
#: upper bounds of sizes: far above any real dataset, low enough that a typo (1e12) fails here, not in a model build
MAX_EMBEDDING_DIM = 4096
MAX_HASH_BUCKETS = 100_000_000
MAX_VOCAB_SIZE = 100_000_000
MAX_OOV_BUCKETS = 1_000_000
MAX_MIN_COUNT = 1_000_000_000
MAX_MULTI_HOT_LEN = 10_000
MAX_SEQUENCE_LEN = 100_000
MAX_VECTOR_DIM = 65_536
MAX_DENSE_BUCKETS = 10_000
MAX_NUM_CLASSES = 1_000_000
INT64_MIN, INT64_MAX = -(2 ** 63), 2 ** 63 - 1


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
        return self.kind != "label" and not self.side_of and not self.is_joined and getattr(self, "input", True)

    @property
    def is_joined(self) -> bool:
        """A column the builder does not write: a pipeline stage joins an earlier stage's predictions into it
        (`joined: true`, training/join.py); until then it is neither a row feature nor an input."""
        return bool(getattr(self, "joined", False))


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
    # not written by the builder: an experiment's `join:` fills it with an earlier stage's predictions
    joined: bool = False
    # `input: false`: a column the examples carry for the platform (a label's mask that must not inform the model,
    # e.g. which mechanism served a replayed step), never a model input
    input: bool = True


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
    # Indexes are built once per spec on first use (cached_property writes the instance __dict__, which a frozen
    # dataclass allows): every lookup is O(1), so validating or building a model is linear in the number of features.
    @cached_property
    def _by_name(self) -> dict[str, Feature]:
        return {f.name: f for f in self.features}

    def __getitem__(self, name: str) -> Feature:
        try:
            return self._by_name[name]
        except KeyError:
            raise KeyError(f"{self.source}: no feature named {name!r}; "
                           f"features: {[f.name for f in self.features]}") from None

    def of_kind(self, *kinds: str) -> list[Feature]:
        return [f for f in self.features if f.kind in kinds]

    @property
    def inputs(self) -> list[Feature]:
        """Features the examples carry and models take as inputs (not labels, not `side_of` attributes)."""
        return [f for f in self.features if f.is_input]

    @property
    def row_features(self) -> list[Feature]:
        """Features stored in each example (inputs and labels; not `side_of` attributes, not unjoined columns)."""
        return [f for f in self.features if not f.side_of and not f.is_joined]

    def with_joined(self, names: list[str]) -> "FeatureSpec":
        """The spec of a dataset into which `names` (`joined: true` columns) have been joined: ordinary dense
        inputs now."""
        raw = self.to_dict()
        for d in raw["features"]:
            if d["name"] in names:
                d.pop("joined", None)
        return parse_spec(raw, source=self.source)

    @cached_property
    def _side_by_owner(self) -> dict[str | None, list[Feature]]:
        out: dict[str | None, list[Feature]] = {None: []}
        for f in self.features:
            if f.side_of:
                out[None].append(f)
                out.setdefault(f.side_of, []).append(f)
        return out

    def side_features(self, owner: str | None = None) -> list[Feature]:
        """`side_of` features (of `owner` only, when given), in spec order."""
        return list(self._side_by_owner.get(owner, ()))

    @cached_property
    def _first_of_table(self) -> dict[str, str]:
        """table -> the first feature (spec order) named like the table or owning a share of it (not a sharer)."""
        out: dict[str, str] = {}
        for f in self.features:
            out.setdefault(f.name, f.name)
            if isinstance(f, _Categorical) and not f.shares_embedding_with:
                out.setdefault(self.table_of(f.name), f.name)
        return out

    def side_owner(self, column: str) -> str | None:
        """The id feature whose side tables a categorical column can use: the owner of its embedding table when
        that feature has side features (hist_movie_id -> movie_id), else None."""
        owner = self._first_of_table.get(self.table_of(column))
        return owner if owner is not None and self.side_features(owner) else None

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

    @cached_property
    def _table_by_column(self) -> dict[str, str]:
        configs = dict(self.categorical_columns())
        try:
            roots = share_roots(configs)
        except SharingError as e:  # validated away in parse_spec; a spec built by hand may still have it
            raise FeatureSpecError(self.source, e.column, e.problem, e.fix) from None
        return {col: configs[root].embedding_group or root for col, root in roots.items()}

    def table_of(self, column: str) -> str:
        """The embedding table (and vocabulary) a categorical column uses: its group, or the feature it shares with."""
        return self._table_by_column[column]

    @cached_property
    def _table_configs(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for col, cfg in self.categorical_columns():
            if not cfg.shares_embedding_with:
                out.setdefault(self.table_of(col), cfg)
        return out

    def table_config(self, table: str) -> Any:
        """The config (dtype, vocab, hash, dim) that defines `table`: its first member that is not a sharer."""
        return self._table_configs[table]

    def tables(self) -> dict[str, list[str]]:
        """table name -> the columns that use it, in spec order."""
        out: dict[str, list[str]] = {}
        for col, table in self._table_by_column.items():
            out.setdefault(table, []).append(col)
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

    def select(self, keep: Any = None, drop: Any = None, where: str = "features") -> "FeatureSpec":
        """This spec with only some inputs: `keep` (the inputs to keep) or `drop` (the inputs to leave out), top-level
        feature names. Labels always stay; a `side_of` attribute stays with its id. A model built on the result
        never sees the rest (a cloud model that must not read the in-session clicks the data also holds). Errors
        name `where`: an unknown name, or a kept feature that needs a left-out one (a history sharing its table)."""
        if (keep is None) == (drop is None):
            raise FeatureSpecError(where, "", "give either `keep` or `drop`")
        names = list(keep if keep is not None else drop)
        inputs = [f.name for f in self.inputs]
        for n in names:
            if not isinstance(n, str) or n not in inputs:
                hint = difflib.get_close_matches(str(n), inputs, 1)
                raise FeatureSpecError(where, "", f"{n!r} is not an input feature of {self.source}",
                                       f"use {hint[0]!r}" if hint else f"use some of {_some(inputs)}")
        chosen = set(names) if keep is not None else set(inputs) - set(names)
        if not chosen:
            raise FeatureSpecError(where, "", "no input feature is left", "keep at least one")
        kept = [f for f in self.features
                if not f.is_input and not f.side_of or f.name in chosen or f.side_of in chosen]
        raw = self.to_dict()
        raw["features"] = [d for d, f in zip(raw["features"], self.features) if f in kept]
        try:
            return parse_spec(raw, source=f"{self.source} ({where})")
        except FeatureSpecError as e:
            raise FeatureSpecError(where, "", f"the selected features of {self.source} do not stand alone: "
                                   f"{e.path}: {e.problem}", "keep the feature it names too") from None

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
    "dense": _COMMON_KEYS | {"normalization", "buckets", "bucket_embedding_dim", "fill", "joined", "input"},
    "vector": _COMMON_KEYS | {"dim", "produced_by", "side_of"},
    "text": _COMMON_KEYS | {"encoder", "dim", "source", "side_of"},
    "sequence": _COMMON_KEYS | {"max_len", "fields", "only_positive"},
    "label": _COMMON_KEYS | {"task", "type", "num_classes", "mask", "loss_weight"},
}
_FIELD_KEYS = {
    "id": {"name", "kind", "source", "padding", "dtype", "embedding_dim", "vocab", "hash_buckets", "embedding_group",
           "shares_embedding_with"},
    "dense": {"name", "kind", "source", "padding", "normalization"},
    "vector": {"name", "kind", "source", "padding", "dim"},
}
_VOCAB_KEYS = {"min_count", "oov_buckets", "max_size", "fit_on"}
_TOP_KEYS = {"name", "description", "keys", "features"}


def _at(path: str, key: Any) -> str:
    return f"{path}.{key}" if path else str(key)


def _show(value: Any) -> str:
    """A value for an error message: its type and a repr cut to a few dozen characters (values may be huge)."""
    return f"{_tname((type(value),))} ({reprlib.repr(value)})"


def _some(names: list[str], n: int = 12) -> str:
    return ", ".join(names[:n]) + (f", ... ({len(names)} in all)" if len(names) > n else "")


def _a(word: str) -> str:
    return "an" if word[:1] in "aeiou" else "a"


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class _Ctx:
    def __init__(self, source: str):
        self.source = source

    def fail(self, path: str, problem: str, fix: str = "") -> None:
        raise FeatureSpecError(self.source, path, problem, fix)

    def check_keys(self, raw: Mapping, allowed: set, path: str, what: str,
                   by_kind: Mapping[str, set] | None = None, noun: str = "") -> None:
        """Every key of `raw` is in `allowed`; a key that another kind takes (`by_kind`) is named as such."""
        for key in raw:
            if key in allowed:
                continue
            kinds = [k for k, keys in (by_kind or {}).items() if key in keys]
            if kinds:
                listed = ", ".join(kinds[:-1]) + " or " + kinds[-1] if len(kinds) > 1 else kinds[0]
                self.fail(_at(path, key), f"`{key}` applies to {listed} {noun}, this is {what}",
                          f"remove `{key}`")
            close = difflib.get_close_matches(str(key), sorted(allowed), n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            self.fail(_at(path, key), f"unknown key {reprlib.repr(key)} for {what}",
                      f"remove it or fix the spelling ({hint}valid keys: {', '.join(sorted(allowed))})")

    def get(self, raw: Mapping, key: str, typ, path: str, default=None, required: bool = False):
        if key not in raw or raw[key] is None:
            if required:
                self.fail(_at(path, key), "is required", f"add `{key}:`")
            return default
        value = raw[key]
        types = typ if isinstance(typ, tuple) else (typ,)
        if isinstance(value, bool) and bool not in types:
            self.fail(_at(path, key), f"expected {_tname(types)}, got a boolean ({value!r})",
                      f"give {_a(_tname(types))} {_tname(types)}")
        if float in types and _is_int(value):
            value = float(value)
        if not isinstance(value, types):
            self.fail(_at(path, key), f"expected {_tname(types)}, got {_show(value)}",
                      f"give {_a(_tname(types))} {_tname(types)}")
        if isinstance(value, float) and not math.isfinite(value):
            self.fail(_at(path, key), f"expected a finite number, got {value}", "give a finite number")
        return value

    def count(self, raw: Mapping, key: str, path: str, default: int | None, most: int, least: int = 1,
              required: bool = False) -> int | None:
        """An integer setting in [least, most]: sizes beyond `most` are typos (1e12), not configurations."""
        value = self.get(raw, key, int, path, default, required)
        if value is not None:
            self.in_range(value, _at(path, key), least, most)
        return value

    def in_range(self, value: int, path: str, least: int, most: int) -> None:
        if value < least:
            self.fail(path, f"must be > 0, got {value}" if least == 1 else f"must be >= {least}, got {value}",
                      "give a positive number" if least == 1 else f"give a number from {least} to {most:,}")
        if value > most:
            self.fail(path, f"must be at most {most:,}, got {value:,}",
                      f"give a number from {least} to {most:,} (the largest this zoo accepts here)")

    def choice(self, value, choices, path: str) -> None:
        if value not in choices:
            self.fail(path, f"{value!r} is not one of {', '.join(choices)}", f"use one of {', '.join(choices)}")


def _tname(types) -> str:
    names = {int: "integer", float: "number", str: "string", list: "list", dict: "mapping", bool: "boolean",
             type(None): "null"}
    return " or ".join(names.get(t, t.__name__) for t in types)


def _parse_vocab(ctx: _Ctx, raw: Any, path: str) -> VocabConfig:
    if raw is True or raw == {}:
        return VocabConfig()
    if not isinstance(raw, dict):
        ctx.fail(path, f"expected a mapping with {sorted(_VOCAB_KEYS)}, got {_show(raw)}",
                 "write e.g. `vocab: {min_count: 2}`")
    ctx.check_keys(raw, _VOCAB_KEYS, path, "vocab")
    cfg = VocabConfig(
        min_count=ctx.count(raw, "min_count", path, 1, MAX_MIN_COUNT),
        oov_buckets=ctx.count(raw, "oov_buckets", path, 1, MAX_OOV_BUCKETS),
        max_size=ctx.count(raw, "max_size", path, None, MAX_VOCAB_SIZE),
        fit_on=ctx.get(raw, "fit_on", str, path, "train"),
    )
    ctx.choice(cfg.fit_on, ("train", "catalogue"), f"{path}.fit_on")
    return cfg


def _parse_categorical(ctx: _Ctx, raw: Mapping, path: str) -> dict:
    kw = {
        "dtype": ctx.get(raw, "dtype", str, path, "int64"),
        "embedding_dim": ctx.count(raw, "embedding_dim", path, 16, MAX_EMBEDDING_DIM),
        "hash_buckets": ctx.count(raw, "hash_buckets", path, None, MAX_HASH_BUCKETS),
        "embedding_group": ctx.get(raw, "embedding_group", str, path),
        "shares_embedding_with": ctx.get(raw, "shares_embedding_with", str, path),
    }
    ctx.choice(kw["dtype"], ID_DTYPES, f"{path}.dtype")
    if kw["embedding_group"] is not None and not _NAME.match(kw["embedding_group"]):
        ctx.fail(f"{path}.embedding_group", f"{reprlib.repr(kw['embedding_group'])} is not an identifier",
                 "name the shared table with letters, digits and _ , starting with a letter")
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
        if not (_is_int(value) or isinstance(value, float)) or not math.isfinite(value):
            ctx.fail(path, f"expected a finite number or one of {', '.join(FILL_STATISTICS)}, got {reprlib.repr(value)}",
                     "e.g. `fill: 0.0` or `fill: median` (fitted on the train split)")
        return float(value)
    if value == "oov":
        return value
    if dtype == "int64" and not (_is_int(value) and INT64_MIN <= value <= INT64_MAX):
        ctx.fail(path, f"expected `oov` or an int64 id, got {reprlib.repr(value)}", "e.g. `fill: oov` (the OOV bucket)")
    if dtype == "string" and not isinstance(value, str):
        ctx.fail(path, f"expected `oov` or a string id, got {reprlib.repr(value)}", "e.g. `fill: oov` (the OOV bucket)")
    return value


def _parse_padding(ctx: _Ctx, value: Any, kind: str, dtype: str, path: str) -> Any:
    """The value a sequence field's padded steps hold: of the field's own type (an id, or a float)."""
    if kind == "id" and dtype == "string":
        if not isinstance(value, str):
            ctx.fail(path, f"expected a string (the field's dtype is string), got {_show(value)}",
                     'give a string id, e.g. `padding: ""`')
        return value
    if kind == "id":
        if not (_is_int(value) and INT64_MIN <= value <= INT64_MAX):
            ctx.fail(path, f"expected an int64 id, got {_show(value)}", "give an integer id, e.g. `padding: -1`")
        return value
    if not (_is_int(value) or isinstance(value, float)) or not math.isfinite(value):
        ctx.fail(path, f"expected a finite number, got {_show(value)}", "give a number, e.g. `padding: 0.0`")
    return value  # as written (0 or 0.0): it is part of the spec's fingerprint, which datasets record


def _parse_field(ctx: _Ctx, raw: Any, path: str) -> SequenceField:
    if not isinstance(raw, dict):
        ctx.fail(path, f"expected a mapping, got {_show(raw)}", "write each field as `- {name: ..., kind: id}`")
    name = ctx.get(raw, "name", str, path, required=True)
    kind = ctx.get(raw, "kind", str, path, "id")
    ctx.choice(kind, SEQUENCE_FIELD_KINDS, f"{path}.kind")
    ctx.check_keys(raw, _FIELD_KEYS[kind], path, f"{_a(kind)} {kind} field", _FIELD_KEYS, "fields")
    kw: dict[str, Any] = {"name": name, "kind": kind, "source": ctx.get(raw, "source", str, path)}
    if kind == "id":
        kw.update(_parse_categorical(ctx, raw, path))
    if kind == "vector":
        kw["dim"] = ctx.count(raw, "dim", path, None, MAX_VECTOR_DIM, required=True)
    if kind == "dense":
        kw["normalization"] = ctx.get(raw, "normalization", str, path, "none")
        ctx.choice(kw["normalization"], NORMALIZATIONS, f"{path}.normalization")
    if raw.get("padding") is not None:
        kw["padding"] = _parse_padding(ctx, raw["padding"], kind, kw.get("dtype", "int64"), f"{path}.padding")
    return SequenceField(**kw)


def _text_encoders() -> Mapping[str, int]:
    """The known text encoders (name -> dim), from the TensorFlow-free list beside their factories."""
    from .text_encoders import ENCODER_DIMS

    return ENCODER_DIMS


def _parse_text(ctx: _Ctx, raw: Mapping, path: str) -> dict:
    encoders = _text_encoders()
    name = ctx.get(raw, "encoder", str, path, TextFeature.encoder)
    if name not in encoders:
        ctx.fail(f"{path}.encoder", f"unknown text encoder {reprlib.repr(name)}",
                 f"use one of {', '.join(sorted(encoders))} (tfrec_zoo.text.ENCODERS)")
    native = encoders[name]
    dim = ctx.count(raw, "dim", path, native if _is_int(native) else TextFeature.dim, MAX_VECTOR_DIM)
    if _is_int(native) and dim != native:
        ctx.fail(f"{path}.dim", f"encoder {name} gives {native} floats, `dim` says {dim}",
                 f"set `dim: {native}` or remove `dim`")
    return {"encoder": name, "dim": dim, "source": ctx.get(raw, "source", str, path)}


def _parse_feature(ctx: _Ctx, raw: Any, path: str) -> Feature:
    if not isinstance(raw, dict):
        ctx.fail(path, f"expected a mapping, got {_show(raw)}", "write `- {name: ..., kind: ...}`")
    name = ctx.get(raw, "name", str, path, required=True)
    kind = ctx.get(raw, "kind", str, path, required=True)
    if kind not in KINDS:
        ctx.fail(f"{path}.kind", f"unknown kind {reprlib.repr(kind)}", f"use one of {', '.join(KINDS)}")
    ctx.check_keys(raw, _ALLOWED_KEYS[kind], path, f"{_a(kind)} {kind} feature", _ALLOWED_KEYS, "features")
    kw: dict[str, Any] = {"name": name, "kind": kind, "doc": ctx.get(raw, "doc", str, path, "")}
    if "side_of" in raw:
        kw["side_of"] = ctx.get(raw, "side_of", str, path)
    if kind in ("id", "domain", "multi_hot"):
        kw.update(_parse_categorical(ctx, raw, path))
    if "fill" in raw:
        kw["fill"] = _parse_fill(ctx, raw["fill"], kind, kw.get("dtype"), f"{path}.fill")
    if kind == "multi_hot":
        kw["max_len"] = ctx.count(raw, "max_len", path, 16, MAX_MULTI_HOT_LEN)
        kw["combiner"] = ctx.get(raw, "combiner", str, path, "mean")
        ctx.choice(kw["combiner"], COMBINERS, f"{path}.combiner")
        kw["weights"] = ctx.get(raw, "weights", str, path)
    elif kind == "dense":
        kw["normalization"] = ctx.get(raw, "normalization", str, path, "zscore")
        ctx.choice(kw["normalization"], NORMALIZATIONS, f"{path}.normalization")
        kw["buckets"] = ctx.get(raw, "buckets", int, path)
        if kw["buckets"] is not None:
            ctx.in_range(kw["buckets"], f"{path}.buckets", 2, MAX_DENSE_BUCKETS)
        kw["bucket_embedding_dim"] = ctx.count(raw, "bucket_embedding_dim", path, 8, MAX_EMBEDDING_DIM)
        kw["joined"] = ctx.get(raw, "joined", bool, path, False)
        kw["input"] = ctx.get(raw, "input", bool, path, True)
        if kw["joined"] and (kw["normalization"] != "none" or kw["buckets"] or "fill" in raw):
            ctx.fail(f"{path}.joined", "a joined column has no train statistics (it is filled after the dataset is "
                     "written)", "set `normalization: none` and no `buckets` / `fill`")
    elif kind == "vector":
        kw["dim"] = ctx.count(raw, "dim", path, None, MAX_VECTOR_DIM, required=True)
        kw["produced_by"] = ctx.get(raw, "produced_by", str, path, "")
    elif kind == "text":
        kw.update(_parse_text(ctx, raw, path))
    elif kind == "sequence":
        kw["max_len"] = ctx.count(raw, "max_len", path, None, MAX_SEQUENCE_LEN, required=True)
        fields = ctx.get(raw, "fields", list, path, required=True)
        if not fields:
            ctx.fail(f"{path}.fields", "is empty", "list at least one field, e.g. `- {name: hist_item_id, kind: id}`")
        kw["fields"] = tuple(_parse_field(ctx, fr, f"{path}.fields[{j}]") for j, fr in enumerate(fields))
        kw["only_positive"] = ctx.get(raw, "only_positive", str, path)
    elif kind == "label":
        kw.update(_parse_label(ctx, raw, path, name))
    return _KIND_CLASS[kind](**kw)


def _parse_label(ctx: _Ctx, raw: Mapping, path: str, name: str) -> dict:
    kw: dict[str, Any] = {"task": ctx.get(raw, "task", str, path, name),
                          "type": ctx.get(raw, "type", str, path, "binary")}
    ctx.choice(kw["type"], LABEL_TYPES, f"{path}.type")
    kw["num_classes"] = ctx.count(raw, "num_classes", path, None, MAX_NUM_CLASSES, least=2)
    if kw["type"] == "multiclass" and not kw["num_classes"]:
        ctx.fail(f"{path}.num_classes", "a multiclass label needs num_classes", "add `num_classes: N`")
    kw["mask"] = ctx.get(raw, "mask", str, path)
    kw["loss_weight"] = ctx.get(raw, "loss_weight", float, path, 1.0)
    if kw["loss_weight"] < 0:
        ctx.fail(f"{path}.loss_weight", f"must be >= 0, got {kw['loss_weight']}", "give a non-negative weight")
    return kw


class SharingError(ValueError):
    """`shares_embedding_with` names no categorical column, or its chain loops; `column` is where it was found."""

    def __init__(self, column: str, problem: str, fix: str):
        super().__init__(f"{column}: {problem}")
        self.column, self.problem, self.fix = column, problem, fix


def share_roots(configs: Mapping[str, Any]) -> dict[str, str]:
    """column -> the column that owns its embedding table, following `shares_embedding_with` (in `configs`' order).
    Linear: each chain is walked once and every column on it remembers the answer."""
    roots: dict[str, str] = {}
    for col in configs:
        chain: list[str] = []
        on_chain: set[str] = set()
        cur = col
        while cur not in roots:
            target = configs[cur].shares_embedding_with
            if not target:
                roots[cur] = cur
                break
            if target not in configs:
                raise SharingError(cur, f"{reprlib.repr(target)} is not a categorical feature of this spec",
                                   f"name one of {_some(list(configs))}")
            if cur in on_chain:
                raise SharingError(col, f"shares_embedding_with forms a cycle through {cur!r}",
                                   "point the chain at a feature that owns its table")
            chain.append(cur)
            on_chain.add(cur)
            cur = target
        for c in chain:
            roots[c] = roots[cur]
    return {col: roots[col] for col in configs}


def _check_names(ctx: _Ctx, spec: FeatureSpec, paths: dict[str, str]) -> dict[str, str]:
    """Every column the examples will have (features, fields, length columns) is unique and usable as a name."""
    columns: dict[str, str] = {}
    for f in spec.features:
        names = [f.name] + ([f.length_name] if isinstance(f, (SequenceFeature, MultiHotFeature)) else [])
        names += [sf.name for sf in f.fields] if isinstance(f, SequenceFeature) else []
        for j, n in enumerate(names):
            where = paths[f.name] if j == 0 else paths.get(n, paths[f.name])
            if n in columns:
                ctx.fail(where, f"duplicate name {n!r} (also at {columns[n]})", "give every feature and field a unique name")
            if not _NAME.match(n):
                ctx.fail(where, f"name {reprlib.repr(n)} is not an identifier",
                         "use letters, digits and _ , starting with a letter")
            if _KERAS_AUTO_NAME.match(n):
                ctx.fail(where, f"name {n!r} clashes with a name Keras gives its own layers",
                         f"rename it, e.g. {('f_' + n)!r}")
            columns[n] = where
    return columns


def _check_tables(ctx: _Ctx, spec: FeatureSpec, paths: dict[str, str], cats: dict[str, Any]) -> None:
    try:
        roots = share_roots(cats)
    except SharingError as e:
        ctx.fail(paths.get(e.column, e.column) + ".shares_embedding_with", e.problem, e.fix)
    for col, cfg in cats.items():
        root = cats[roots[col]]
        if root.dtype != cfg.dtype:
            ctx.fail(paths.get(col, col) + ".shares_embedding_with",
                     f"dtype {cfg.dtype} differs from {root.name!r}'s {root.dtype}", "share only between ids of one dtype")
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


def _check_cross_references(ctx: _Ctx, spec: FeatureSpec, paths: dict[str, str]) -> None:
    columns = _check_names(ctx, spec, paths)
    cats = dict(spec.categorical_columns())
    _check_tables(ctx, spec, paths, cats)
    for f in spec.features:
        if isinstance(f, MultiHotFeature) and f.weights and f.weights in columns:
            ctx.fail(paths[f.name] + ".weights", f"weights column {f.weights!r} is also a feature name",
                     "name the weights column differently; it travels with the multi_hot feature")
        if isinstance(f, LabelFeature) and f.mask:
            if f.mask not in columns:
                ctx.fail(paths[f.name] + ".mask", f"mask column {reprlib.repr(f.mask)} is not a feature of this spec",
                         "name a label (e.g. `click`) or remove `mask`")
        if isinstance(f, SequenceFeature) and f.only_positive and f.only_positive not in columns:
            ctx.fail(paths[f.name] + ".only_positive", f"{reprlib.repr(f.only_positive)} is not a feature of this spec",
                     "name the label whose positives make up the history")
    _check_sources(ctx, spec, paths)
    _check_side_features(ctx, spec, paths, cats)
    tasks = [lab.task for lab in spec.labels]
    if len(set(tasks)) != len(tasks):
        ctx.fail("features", f"duplicate task names {_some(tasks)}", "give each label a distinct `task`")
    for role, col in spec.keys.items():
        # keys name data columns by role (user, item, time); a time column may order histories without being
        # a feature, so only the name's form is checked here and presence is checked against the data.
        if role not in KEY_ROLES:
            ctx.fail(f"keys.{role}", f"unknown role {reprlib.repr(role)}", f"use {', '.join(KEY_ROLES)}")
        if not _NAME.match(col):
            ctx.fail(f"keys.{role}", f"{reprlib.repr(col)} is not a column name", "use letters, digits and _")


# A sequence field's `source` is the interaction-log column its steps are read from when histories are built
# (tfrec_zoo/data/interactions.py attach_histories): a row feature of the spec or any other column of the log
# (`behavior`, `timestamp`). Columns the writer makes (sequences, fields, lengths) are never in a log, side
# attributes live in the catalogue, and a column whose shape or dtype the field cannot hold fails on every row.
def _field_can_read(sf: SequenceField, f: Feature) -> bool:
    """Can `sf`'s steps be taken from the log column of spec feature `f`?"""
    dtype = getattr(f, "dtype", None)
    if sf.kind == "vector":
        return isinstance(f, VectorFeature) and f.dim == sf.dim
    if sf.kind == "dense":
        return f.kind in ("dense", "label") or (f.kind in ("id", "domain") and dtype == "int64")
    if sf.dtype == "int64":
        return f.kind in ("dense", "label") or (f.kind in ("id", "domain") and dtype == "int64")
    return f.kind == "text" or (f.kind in ("id", "domain") and dtype == "string")


def _describe(f: Feature) -> str:
    if isinstance(f, VectorFeature):
        return f"vector feature (dim {f.dim})"
    return f"{f.dtype} {f.kind} feature" if isinstance(f, _Categorical) else f"{f.kind} feature"


def _check_sources(ctx: _Ctx, spec: FeatureSpec, paths: dict[str, str]) -> None:
    made: dict[str, str] = {}     # columns the writer makes -> what they are
    for f in spec.features:
        if isinstance(f, (SequenceFeature, MultiHotFeature)):
            made[f.length_name] = f"the length column of {f.name!r}"
        if isinstance(f, SequenceFeature):
            made[f.name] = "a sequence feature"
            made.update((sf.name, f"a field of sequence {f.name!r}") for sf in f.fields)
        if isinstance(f, MultiHotFeature) and f.weights:
            made[f.weights] = f"the weights of multi_hot {f.name!r} (a list per row)"
    for seq in spec.of_kind("sequence"):
        for sf in seq.fields:
            if sf.source is None or sf.source == sf.name:
                continue
            src = spec._by_name.get(sf.source)
            if not _NAME.match(sf.source):
                problem = "is not a column name"
            elif sf.source in made:
                problem = f"is {made[sf.source]}, made when the dataset is written, not a column of the log"
            elif src is not None and src.side_of:
                problem = f"is an attribute of {src.side_of!r} (side_of), read from the catalogue, not from the log"
            elif src is not None and not _field_can_read(sf, src):
                problem = (f"is a {_describe(src)}, which {_a(_field_kind(sf))} {_field_kind(sf)} field cannot take "
                           "its steps from")
            else:
                continue  # a compatible feature, or a raw log column that `data write` checks against the data
            fits = [g.name for g in spec.row_features if not isinstance(g, SequenceFeature) and _field_can_read(sf, g)]
            ctx.fail(paths[sf.name] + ".source", f"{reprlib.repr(sf.source)} {problem}",
                     f"name the interaction-log column this {_field_kind(sf)} field reads: "
                     + (f"one of the spec's {_some(fits)}, or " if fits else "")
                     + "a raw column of the input data (`data write` checks it)")


def _field_kind(sf: SequenceField) -> str:
    if sf.kind == "id":
        return f"{sf.dtype} id"
    return f"vector (dim {sf.dim})" if sf.kind == "vector" else sf.kind


def check_history_sources(spec: FeatureSpec, columns: Any, data: str) -> None:
    """Before histories are built from an interaction log with columns `columns` (file `data`): every sequence
    field's source column is there, else one error naming the data, the column, the spec field and the data's columns."""
    have = {str(c) for c in columns}
    for i, f in enumerate(spec.features):
        if not isinstance(f, SequenceFeature):
            continue
        for j, sf in enumerate(f.fields):
            col = sf.source or sf.name
            if col not in have:
                shown = [str(c) for c in columns if not str(c).startswith("__")]  # not the reader's own __line__
                key = ".source" if sf.source else " (no `source:`, so its own name)"
                raise FeatureSpecError(data, "", f"no column {col!r}, which the spec's field {f.name}.{sf.name} reads "
                                       f"(features[{i}].fields[{j}]{key} in {spec.source}); the data has: "
                                       f"{_some(shown, 30)}", "add the column to the data or fix `source:` in the spec")


def _check_side_features(ctx: _Ctx, spec: FeatureSpec, paths: dict[str, str], cats: dict) -> None:
    for f in spec.side_features():
        where = paths[f.name] + ".side_of"
        owner = cats.get(f.side_of)
        if not isinstance(owner, IdFeature) or owner.side_of:
            ctx.fail(where, f"{reprlib.repr(f.side_of)} is not an id feature of this spec",
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
        ctx.fail("", f"the spec must be a mapping with `name` and `features`, got {_show(raw)}",
                 "start the file with `name: ...` and `features:`")
    ctx.check_keys(raw, _TOP_KEYS, "", "a spec")
    name = ctx.get(raw, "name", str, "", required=True)
    raw_features = ctx.get(raw, "features", list, "", required=True)
    keys = ctx.get(raw, "keys", dict, "", {})
    for k, v in keys.items():
        if not isinstance(v, str):
            ctx.fail(f"keys.{k}", f"expected a feature name, got {_show(v)}", "write e.g. `keys: {user: user_id}`")
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
    """Read and validate a YAML (or JSON) feature spec: at most MAX_SPEC_BYTES of UTF-8, loaded by `safe_yaml`
    (bounded depth and aliases, no duplicate keys)."""
    path = Path(path)
    source = str(path)
    text = _read_text(path)
    try:
        with _gc_paused():
            raw = safe_yaml.load(text)
    except yaml.YAMLError as e:
        raise _yaml_error(source, e) from None
    with _gc_paused():
        return parse_spec(raw, source=source)


def _read_text(path: Path) -> str:
    try:
        with path.open("rb") as fh:
            data = fh.read(MAX_SPEC_BYTES + 1)   # not more: the path may be a huge file or a device
    except OSError as e:
        raise FeatureSpecError(str(path), "", f"cannot read the spec ({e.strerror or e})", "check the path") from None
    if len(data) > MAX_SPEC_BYTES:
        raise FeatureSpecError(str(path), "", f"the file is larger than {MAX_SPEC_BYTES:,} bytes "
                               f"({MAX_SPEC_BYTES / 2 ** 20:.3g} MiB), the most a spec may have",
                               "point at the spec itself (a real spec is a few KB)")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise FeatureSpecError(str(path), f"line {line}, byte offset {e.start}",
                               f"not UTF-8 (byte 0x{data[e.start]:02x})", "save the file as UTF-8") from None
    bad = _NON_PRINTABLE.search(text)   # found here, the error can name the line and column
    if bad:
        at = bad.start()
        line, column = text.count("\n", 0, at) + 1, at - text.rfind("\n", 0, at)
        raise FeatureSpecError(str(path), f"line {line}, column {column}",
                               f"character #x{ord(bad.group()):04x} is not allowed in YAML (a control character)",
                               "remove it (write it as an escape like \"\\t\" inside a double-quoted string)")
    return text


# what YAML 1.1 allows in a stream (PyYAML's Reader.NON_PRINTABLE): tab, newlines and printable characters
_NON_PRINTABLE = re.compile("[^\x09\x0A\x0D\x20-\x7E\x85\xA0-\uD7FF\uE000-\uFFFD\U00010000-\U0010FFFF]")


def _yaml_error(source: str, e: yaml.YAMLError) -> FeatureSpecError:
    """One line naming where the YAML is wrong (line and column) and what to do."""
    mark = getattr(e, "problem_mark", None)
    if mark is not None:
        where = f"line {mark.line + 1}, column {mark.column + 1}"
    elif isinstance(e, yaml.reader.ReaderError):  # control characters are caught before; an offset is all it has
        where = f"offset {e.position}"
    else:
        where = ""
    problem = " ".join(str(getattr(e, "problem", None) or getattr(e, "reason", None) or e).split())
    if isinstance(e, safe_yaml.LimitError):  # well-formed YAML this loader refuses: the problem says why
        return FeatureSpecError(source, where, problem, e.fix)
    return FeatureSpecError(source, where, f"not valid YAML ({problem})", "fix the YAML syntax there")


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause the cycle collector while building a spec's many small containers: with it on, full collections
    repeat as the heap grows and loading a 70k-feature file takes ~3x longer. Nothing here makes cycles."""
    was_on = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_on:
            gc.enable()
