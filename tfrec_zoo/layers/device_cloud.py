"""Layers of device-cloud recommendation (seed paper 4; tfrec_zoo/models/din.py's `prior`)."""
from __future__ import annotations

from .._tf import keras, tf

# the official code's squash before the logit: p' = p (1 - 1e-3) + 1e-4 keeps logit(p') finite at p = 0 or 1
PRIOR_SCALE, PRIOR_SHIFT = 1.0 - 1e-3, 1e-4


@keras.utils.register_keras_serializable("tfrec_zoo")
class PriorLogit(keras.layers.Layer):
    """logit(p') of an earlier model's probability p ([B] or [B, 1] -> [B, 1]), p' = p (1 - 1e-3) + 1e-4: a fixed
    offset a model adds to its own logit, so it learns a residual on that model's score (the on-device model on
    the cloud model's, MCRec's ORec). No weights; p outside [0, 1] is clipped."""

    def call(self, p):
        p = tf.clip_by_value(tf.reshape(tf.cast(p, tf.float32), [-1, 1]), 0.0, 1.0) * PRIOR_SCALE + PRIOR_SHIFT
        return tf.math.log(p) - tf.math.log1p(-p)
