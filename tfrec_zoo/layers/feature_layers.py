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
