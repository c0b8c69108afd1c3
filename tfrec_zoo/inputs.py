"""Keras side of a feature spec: `build_inputs(spec)` and the `FeatureEmbeddings` factory every model uses.

Inputs carry raw values (ids as in the data, floats before normalisation), exactly what `make_dataset` yields and
what a serving request sends. Lookups (vocabulary or hashing), normalisation and pooling happen in the graph, built
from the `Artifacts` the caller passes in, so an exported model needs nothing else.

    inputs = build_inputs(spec)
    emb = FeatureEmbeddings(spec, artifacts)
    user = emb.id("user_id", inputs)                  # [B, D]
    genres = emb.pooled("genres", inputs)             # [B, D]
    hist, mask = emb.sequence("history", inputs)      # {field: [B, L, D or 1 or dim]}, [B, L] bool
    flat = emb.flat(inputs)                           # [B, D] tensors of every non-sequence input feature
"""
from __future__ import annotations

import contextlib
import contextvars
from typing import Any

from ._tf import keras, tf
from .features.artifacts import Artifacts
from .features.spec import (
    DenseFeature, FeatureSpec, MultiHotFeature, SequenceFeature, SequenceField, TextFeature, VectorFeature,
    _Categorical,
)
from .layers import DenseTransform, FrozenTable, LengthMask, MaskedPooling, PoolSteps


_ROW_INDICES = contextvars.ContextVar("row_indices", default=False)


@contextlib.contextmanager
def row_index_inputs():
    """Models built inside take every categorical input as row indices of its embedding table (int64) instead of
    raw ids: the vocabulary lookup moves out of the graph, to the caller. The on-device variant a TFLite export
    converts (TFLite's built-in ops have no hash tables); the weights are the same, in the same order."""
    token = _ROW_INDICES.set(True)
    try:
        yield
    finally:
        _ROW_INDICES.reset(token)


def _dtype(dtype: str):
    return tf.int64 if dtype == "int64" or _ROW_INDICES.get() else tf.string


def build_inputs(spec: FeatureSpec) -> dict[str, Any]:
    """One `keras.Input` per tensor `make_dataset` yields for the spec's input features (labels excluded)."""
    inputs: dict[str, Any] = {}

    def add(name, shape, dtype):
        inputs[name] = keras.Input(shape=shape, dtype=dtype, name=name)

    for f in spec.inputs:
        if isinstance(f, MultiHotFeature):
            add(f.name, (f.max_len,), _dtype(f.dtype))
            add(f.length_name, (), tf.int32)
            if f.weights:
                add(f.weights, (f.max_len,), tf.float32)
        elif isinstance(f, _Categorical):
            add(f.name, (), _dtype(f.dtype))
        elif isinstance(f, DenseFeature):
            add(f.name, (), tf.float32)
        elif isinstance(f, (VectorFeature, TextFeature)):
            add(f.name, (f.dim,), tf.float32)
        elif isinstance(f, SequenceFeature):
            for sf in f.fields:
                if sf.kind == "id":
                    add(sf.name, (f.max_len,), _dtype(sf.dtype))
                elif sf.kind == "vector":
                    add(sf.name, (f.max_len, sf.dim), tf.float32)
                else:
                    add(sf.name, (f.max_len,), tf.float32)
            add(f.length_name, (), tf.int32)
    return inputs


@keras.utils.register_keras_serializable("tfrec_zoo")
class RowIndex(keras.layers.Layer):
    """A row index given by the caller, clipped into the table ([0, rows)): the lookup of a row-index model."""

    def __init__(self, rows: int, **kwargs):
        super().__init__(**kwargs)
        self.rows = int(rows)

    def call(self, x):
        return tf.clip_by_value(tf.cast(x, tf.int64), 0, self.rows - 1)

    def get_config(self):
        return {**super().get_config(), "rows": self.rows}


def at_level(layer, level: int):
    """Mark `layer` with its freeze level (what `restore: {freeze_level: N}` freezes below N): 0 = lookups and
    embedding tables, 1 = the feature transforms right above them (normalisation, bucketing, pooling, masks,
    projections into a model's field space). Layers without a level are never frozen by level."""
    layer.freeze_level = level
    return layer


class FeatureEmbeddings:
    """Creates each lookup, embedding table and transform once and wires features through them.

    Tables are shared as the spec says (`embedding_group`, `shares_embedding_with`): `emb.id("hist_movie_id", ...)`
    and `emb.id("movie_id", ...)` go through one lookup and one `Embedding` named `emb_movie_id`. Every layer made
    here says its freeze level (`at_level`).
    """

    def __init__(self, spec: FeatureSpec, artifacts: Artifacts, *, embeddings_regularizer=None):
        self.spec, self.artifacts = spec, artifacts
        self._configs = dict(spec.categorical_columns())
        self._lookups: dict[str, Any] = {}
        self._tables: dict[str, Any] = {}
        self._layers: dict[str, Any] = {}
        self._regularizer = embeddings_regularizer

    # -- shared pieces ---------------------------------------------------------------------------------------------
    def lookup(self, table: str):
        """raw id -> row index of `table` (vocabulary with OOV buckets first, or hashing)."""
        if table not in self._lookups:
            cfg = self.spec.table_config(table)
            name = f"lookup_{table}"
            if _ROW_INDICES.get():
                if cfg.hash_buckets:
                    raise ValueError(f"{self.spec.source}: table {table!r} is hashed ({cfg.hash_buckets} buckets); a "
                                     "row-index (on-device) model needs vocabularies the caller can look ids up in")
                layer = RowIndex(self.artifacts.vocab_size(self.spec, table), name=name)
            elif cfg.hash_buckets:
                layer = keras.layers.Hashing(cfg.hash_buckets, name=name)
            else:
                vocab = self.artifacts.vocabs[table]
                cls = keras.layers.IntegerLookup if cfg.dtype == "int64" else keras.layers.StringLookup
                kw = {"vocabulary": vocab or None, "num_oov_indices": cfg.vocab.oov_buckets, "mask_token": None,
                      "name": name}
                if cfg.dtype == "int64":
                    kw["vocabulary_dtype"] = "int64"
                layer = cls(**kw)
            self._lookups[table] = at_level(layer, 0)
        return self._lookups[table]

    def table(self, table: str, dim: int | None = None):
        """The `Embedding` of `table` (rows = vocabulary size incl. OOV, or hash buckets)."""
        if table not in self._tables:
            cfg = self.spec.table_config(table)
            self._tables[table] = at_level(keras.layers.Embedding(
                self.artifacts.vocab_size(self.spec, table), dim or cfg.embedding_dim, name=f"emb_{table}",
                embeddings_initializer=keras.initializers.RandomNormal(stddev=0.02),
                embeddings_regularizer=self._regularizer), 0)
        return self._tables[table]

    def _layer(self, key: str, make, level: int = 1):
        if key not in self._layers:
            self._layers[key] = at_level(make(), level)
        return self._layers[key]

    # -- per feature -----------------------------------------------------------------------------------------------
    def index(self, column: str, inputs: dict) -> Any:
        """Row indices of a categorical column's raw values (any shape)."""
        return self.lookup(self.spec.table_of(column))(inputs[column])

    def id(self, column: str, inputs: dict) -> Any:
        """Embedding of a categorical column: [B, D] for ids, [B, L, D] for sequence fields / multi-hot."""
        table = self.spec.table_of(column)
        return self.table(table)(self.lookup(table)(inputs[column]))

    def mask(self, name: str, inputs: dict) -> Any:
        """[B, L] bool mask of a multi_hot or sequence feature, from its `<name>_len` input."""
        f = self.spec[name]
        assert isinstance(f, (MultiHotFeature, SequenceFeature))
        layer = self._layer(f"mask_{name}", lambda: LengthMask(f.max_len, name=f"mask_{name}"))
        return layer(inputs[f.length_name])

    def pooled(self, name: str, inputs: dict) -> Any:
        """[B, D]: a multi_hot feature's embeddings pooled with its combiner (and weights)."""
        f = self.spec[name]
        assert isinstance(f, MultiHotFeature)
        pool = self._layer(f"pool_{name}", lambda: MaskedPooling(f.combiner, name=f"pool_{name}"))
        args = [self.id(name, inputs), self.mask(name, inputs)]
        if f.weights:
            args.append(inputs[f.weights])
        return pool(args)

    def dense(self, name: str, inputs: dict) -> Any:
        """[B, 1] normalised float, concatenated with its bucket embedding when the spec asks for buckets."""
        f = self.spec[name]
        assert isinstance(f, DenseFeature)
        stats = self.artifacts.stats.get(name, {})          # none for a joined column (normalization: none)
        out = self._layer(f"norm_{name}", lambda: DenseTransform(f.normalization, stats, name=f"norm_{name}"))(
            inputs[name])
        if f.buckets and stats.get("boundaries"):
            bounds = stats["boundaries"]
            disc = self._layer(f"bucket_{name}", lambda: keras.layers.Discretization(
                bin_boundaries=bounds, name=f"bucket_{name}"))
            emb = self._layer(f"emb_bucket_{name}", lambda: keras.layers.Embedding(
                len(bounds) + 1, f.bucket_embedding_dim, name=f"emb_bucket_{name}"), level=0)
            out = keras.layers.Concatenate(name=f"dense_{name}_with_buckets")([out, emb(disc(inputs[name]))])
        return out

    def _field(self, f: SequenceFeature, sf: SequenceField, inputs: dict) -> Any:
        if sf.kind == "id":
            return self.id(sf.name, inputs)
        if sf.kind == "vector":
            return inputs[sf.name]
        stats = self.artifacts.stats.get(sf.name, {})
        return self._layer(f"norm_{sf.name}", lambda: DenseTransform(sf.normalization, stats,
                                                                     name=f"norm_{sf.name}"))(inputs[sf.name])

    def sequence(self, name: str, inputs: dict) -> tuple[dict[str, Any], Any]:
        """({field: [B, L, d]}, mask [B, L]) of a sequence feature."""
        f = self.spec[name]
        assert isinstance(f, SequenceFeature)
        return {sf.name: self._field(f, sf, inputs) for sf in f.fields}, self.mask(name, inputs)

    def feature(self, name: str, inputs: dict) -> Any:
        """[B, d] of any non-sequence input feature."""
        f = self.spec[name]
        if isinstance(f, MultiHotFeature):
            return self.pooled(name, inputs)
        if isinstance(f, _Categorical):
            return self.id(name, inputs)
        if isinstance(f, DenseFeature):
            return self.dense(name, inputs)
        if isinstance(f, (VectorFeature, TextFeature)):
            return inputs[name]
        raise TypeError(f"feature {name!r} is a {f.kind}; use .sequence() for sequences")

    # -- side tables (`side_of` features: an id's title vector, genres, ...) ---------------------------------------
    def side(self, feature: str, rows: Any) -> Any:
        """A `side_of` feature for owner-table rows `rows` (any shape [...]: the output of `.index()` of the owner or
        of a history field sharing its table) -> [..., d]: text / vector values, an id's embedding, or a multi-hot's
        embeddings mean-pooled. Rows the catalogue had no data for give zeros (multi-hot: 0)."""
        f = self.spec[feature]
        key = f"{f.side_of}/{f.name}"
        table = self.artifacts.side[key]
        frozen = self._layer(f"side_{f.side_of}_{f.name}", lambda: FrozenTable(
            table.shape[0], table.shape[1] if table.ndim == 2 else None, str(table.dtype), table,
            name=f"side_{f.side_of}_{f.name}"))
        if isinstance(f, (VectorFeature, TextFeature)):
            return frozen(rows)
        emb = self.table(self.spec.table_of(f.name))
        if isinstance(f, MultiHotFeature):
            lens = self.artifacts.side[key + "_len"]
            lengths = self._layer(f"side_{f.side_of}_{f.name}_len", lambda: FrozenTable(
                lens.shape[0], None, str(lens.dtype), lens, name=f"side_{f.side_of}_{f.name}_len"))
            pool = self._layer(f"side_pool_{f.name}", lambda: PoolSteps(name=f"side_pool_{f.name}"))
            return pool([emb(frozen(rows)), lengths(rows)])
        return emb(frozen(rows))

    def flat(self, inputs: dict, exclude: tuple[str, ...] = ()) -> dict[str, Any]:
        """{name: [B, d]} for every non-sequence input feature not in `exclude`."""
        return {f.name: self.feature(f.name, inputs) for f in self.spec.inputs
                if f.kind != "sequence" and f.name not in exclude}
