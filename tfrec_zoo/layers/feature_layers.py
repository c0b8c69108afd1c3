"""Layers that turn parsed feature tensors into model-ready tensors: masks, pooling, dense normalisation."""
from __future__ import annotations

from typing import Sequence

from .._tf import keras, tf

_NORMALIZATIONS = ("none", "zscore", "log1p", "minmax")


@keras.utils.register_keras_serializable(package="tfrec_zoo")
class LengthMask(keras.layers.Layer):
    """lengths [B] -> boolean mask [B, max_len] (True for the first `length` steps)."""

    def __init__(self, max_len: int, **kwargs):
        super().__init__(**kwargs)
        self.max_len = int(max_len)

    def call(self, lengths):
        return tf.sequence_mask(tf.cast(lengths, tf.int32), self.max_len)

    def get_config(self):
        return {**super().get_config(), "max_len": self.max_len}


@keras.utils.register_keras_serializable(package="tfrec_zoo")
class ValidSteps(keras.layers.Layer):
    """([B, L] values, [B, L] mask) -> [N] values of the valid steps, row-major (what TargetAttention takes)."""

    def call(self, inputs):
        values, mask = inputs
        return tf.boolean_mask(values, tf.cast(mask, tf.bool))


@keras.utils.register_keras_serializable(package="tfrec_zoo")
class MaskedPooling(keras.layers.Layer):
    """Pool [B, L, D] over the valid steps: `mean`, `sum` or `sqrtn` (sum / sqrt(sum of squared weights)).

    Inputs: (values, mask[, weights]); mask [B, L] bool, weights [B, L] float. A row with no valid step pools to 0.
    """

    def __init__(self, combiner: str = "mean", **kwargs):
        super().__init__(**kwargs)
        if combiner not in ("mean", "sum", "sqrtn"):
            raise ValueError(f"MaskedPooling: combiner must be mean, sum or sqrtn, got {combiner!r}")
        self.combiner = combiner

    def call(self, inputs):
        values, mask = inputs[0], inputs[1]
        w = tf.cast(mask, values.dtype)
        if len(inputs) > 2:
            w = w * tf.cast(inputs[2], values.dtype)
        total = tf.reduce_sum(values * w[..., None], axis=1)
        if self.combiner == "sum":
            return total
        if self.combiner == "mean":
            denom = tf.reduce_sum(w, axis=1, keepdims=True)
        else:
            denom = tf.sqrt(tf.reduce_sum(w * w, axis=1, keepdims=True))
        return tf.math.divide_no_nan(total, denom)

    def get_config(self):
        return {**super().get_config(), "combiner": self.combiner}


@keras.utils.register_keras_serializable(package="tfrec_zoo")
class DenseTransform(keras.layers.Layer):
    """A raw float [B] or [B, L] -> normalised float with a trailing axis of 1, using training-split statistics.

    `zscore`: (x - mean) / std; `log1p`: (log1p(max(x, 0)) - log1p_mean) / log1p_std; `minmax`: (x - min) /
    (max - min); `none`: x. Non-finite inputs become 0 after normalisation, so one bad value cannot poison a batch.
    """

    def __init__(self, normalization: str, stats: dict, **kwargs):
        super().__init__(**kwargs)
        if normalization not in _NORMALIZATIONS:
            raise ValueError(f"DenseTransform: normalization must be one of {_NORMALIZATIONS}, got {normalization!r}")
        self.normalization = normalization
        self.stats = {k: (list(v) if isinstance(v, Sequence) and not isinstance(v, str) else v)
                      for k, v in stats.items()}

    def call(self, x):
        x = tf.cast(x, tf.float32)
        s = self.stats
        if self.normalization == "zscore":
            y = (x - s["mean"]) / (s["std"] or 1.0)
        elif self.normalization == "log1p":
            y = (tf.math.log1p(tf.maximum(x, 0.0)) - s["log1p_mean"]) / (s["log1p_std"] or 1.0)
        elif self.normalization == "minmax":
            y = (x - s["min"]) / ((s["max"] - s["min"]) or 1.0)
        else:
            y = x
        y = tf.where(tf.math.is_finite(y), y, tf.zeros_like(y))
        return y[..., None]

    def get_config(self):
        return {**super().get_config(), "normalization": self.normalization, "stats": self.stats}


@keras.utils.register_keras_serializable(package="tfrec_zoo")
class FrozenTable(keras.layers.Layer):
    """A constant per-row table (side data aligned with an id's embedding rows): row indices [...] -> values
    [..., width] (or [...] when width is None). The values live in a non-trainable weight, so they are saved with
    the model and restored from its checkpoint (the config holds only the shape)."""

    def __init__(self, rows: int, width: int | None = None, value_dtype: str = "float32", values=None, **kwargs):
        super().__init__(**kwargs)
        self.rows, self.width, self.value_dtype = int(rows), (int(width) if width else None), value_dtype
        self._values = values

    def build(self, input_shape):
        shape = [self.rows] + ([self.width] if self.width else [])
        init = keras.initializers.Constant(self._values) if self._values is not None else "zeros"
        self.table = self.add_weight("table", shape=shape, dtype=self.value_dtype, initializer=init, trainable=False)
        self._values = None
        super().build(input_shape)

    def call(self, rows):
        return tf.gather(self.table, tf.cast(rows, tf.int32))

    def get_config(self):
        return {**super().get_config(), "rows": self.rows, "width": self.width, "value_dtype": self.value_dtype}


@keras.utils.register_keras_serializable(package="tfrec_zoo")
class PoolSteps(keras.layers.Layer):
    """(values [..., A, D], lengths [...]) -> [..., D]: the mean of the first `length` of the A slots (0 when none);
    pools a multi-hot side attribute (an item's genres) for a target [B] or every history step [B, L]."""

    def call(self, inputs):
        values, lengths = inputs
        mask = tf.cast(tf.sequence_mask(tf.cast(lengths, tf.int32), tf.shape(values)[-2]), values.dtype)
        total = tf.reduce_sum(values * mask[..., None], axis=-2)
        return tf.math.divide_no_nan(total, tf.reduce_sum(mask, axis=-1, keepdims=True))
