"""Target attention (DIN): a candidate item attends over a user's behaviour sequence."""
from __future__ import annotations

from typing import Sequence

from .._tf import keras, tf


@keras.utils.register_keras_serializable(package="tfrec_zoo")
class TargetAttention(keras.layers.Layer):
    """DIN's local activation unit: weight_l = MLP([q, k_l, q - k_l, q * k_l]) -> scalar, masked, then
    sum_l weight_l * k_l.

    Inputs: (query [B, D], keys, mask [B, L] bool) where keys are padded [B, L, D] or only the valid steps
    [N, D] in row-major order (`tf.boolean_mask(padded, mask)`, see `ValidSteps`): embedding only the valid steps
    saves the lookups and gradients of the padding. `normalization="none"` keeps DIN's raw weights
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

    def build(self, input_shape):
        # the hidden layers run on [N, width] (valid steps only); building them under the layer's name scope keeps
        # the variable names a padded implementation would have (restore-by-name relies on them)
        d = int(input_shape[1][-1])
        for layer, width in zip(self.hidden + [self.score], [4 * d] + self.units):
            with tf.name_scope(layer.name):
                layer.build(tf.TensorShape([None, width]))
        super().build(input_shape)

    def call(self, inputs):
        query, keys, mask = inputs
        mask = tf.cast(mask, tf.bool)
        if keys.shape.rank == 3:
            keys = tf.boolean_mask(keys, mask)                              # [N, D]: only the valid steps
        batch = tf.shape(query)[0]
        row = tf.where(mask)[:, 0]                                          # the example of each valid step
        # [q, k, q-k, q*k] @ W  ==  q @ (Wq + Wd)  +  [k, q*k] @ [Wk - Wd; Wp]: the query part once per example,
        # half the width per step. Padded steps never reach the MLP (histories here are ~90% padding).
        first = self.hidden[0]
        wq, wk, wd, wp = tf.split(first.kernel, 4)
        per_example = tf.matmul(query, wq + wd) + first.bias                # [B, U]
        q = tf.gather(query, row)
        h = tf.matmul(tf.concat([keys, q * keys], -1), tf.concat([wk - wd, wp], 0)) + tf.gather(per_example, row)
        h = first.activation(h)
        for layer in self.hidden[1:]:
            h = layer(h)
        scores = self.score(h)[:, 0]                                        # [N]
        if self.normalization == "softmax":
            scores = tf.exp(scores - tf.gather(tf.math.unsorted_segment_max(scores, row, batch), row))
            scores = scores / tf.gather(tf.math.unsorted_segment_sum(scores, row, batch), row)
        return tf.math.unsorted_segment_sum(scores[:, None] * keys, row, batch)

    def get_config(self):
        return {**super().get_config(), "units": self.units, "activation": self.activation,
                "normalization": self.normalization}
