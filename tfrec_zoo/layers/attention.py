"""Target attention (DIN): a candidate item attends over a user's behaviour sequence."""
from __future__ import annotations

from typing import Sequence

from .._tf import keras, tf


@keras.utils.register_keras_serializable(package="tfrec_zoo")
class TargetAttention(keras.layers.Layer):
    """DIN's local activation unit: weight_l = MLP([q, k_l, q - k_l, q * k_l]) -> scalar, masked, then
    sum_l weight_l * k_l.

    Inputs: (query [B, D], keys [B, L, D], mask [B, L] bool). `normalization="none"` keeps DIN's raw weights
    (the paper's choice: the sum's magnitude carries how strongly the history matches); `"softmax"` normalises
    them over the valid steps. Padded steps never contribute; an empty history gives 0.
    """

    def __init__(self, units: Sequence[int] = (80, 40), activation: str = "sigmoid",
                 normalization: str = "none", **kwargs):
        super().__init__(**kwargs)
        if normalization not in ("none", "softmax"):
            raise ValueError(f"TargetAttention: normalization must be 'none' or 'softmax', got {normalization!r}")
        self.units, self.activation, self.normalization = list(units), activation, normalization
        self.hidden = [keras.layers.Dense(u, activation=activation, name=f"att_dense{i}") for i, u in enumerate(units)]
        self.score = keras.layers.Dense(1, name="att_score")

    def call(self, inputs):
        query, keys, mask = inputs
        q = tf.broadcast_to(query[:, None, :], tf.shape(keys))
        x = tf.concat([q, keys, q - keys, q * keys], axis=-1)
        for layer in self.hidden:
            x = layer(x)
        scores = tf.squeeze(self.score(x), -1)                       # [B, L]
        mask = tf.cast(mask, tf.bool)
        if self.normalization == "softmax":
            scores = tf.where(mask, scores, tf.fill(tf.shape(scores), tf.constant(-1e9, scores.dtype)))
            weights = tf.nn.softmax(scores, axis=-1) * tf.cast(mask, scores.dtype)
        else:
            weights = scores * tf.cast(mask, scores.dtype)
        return tf.einsum("bl,bld->bd", weights, keys)

    def get_config(self):
        return {**super().get_config(), "units": self.units, "activation": self.activation,
                "normalization": self.normalization}
