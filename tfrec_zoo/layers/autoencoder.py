"""MACDAE's pieces (Ding et al., KDD 2019): a mixture of K denoising heads with attention over the heads, the
multi-head DAE / VAE baselines as switches of the same layer, and the three losses (numpy-checked in
tests/test_macdae_layers.py).

Exactly as the author's code (rockingdingo/context_recommendation, scripts/macDAE.py), for an input x of width D:

    h_k = softplus(W_k dropout(x) + b_k)         k = 1..K, W_k: D x (H/K) Xavier-uniform, b_k = 0
    s_k = <x W_att, h_k>                          W_att: D x (H/K) ~ N(0, 0.1), on the clean x
    a   = softmax(s_1..s_K)
    z   = [a_1 h_1 || ... || a_K h_K]             the implicit-context vector, width H
    x^  = z W_2 + b_2                             W_2 zero-initialised

The multi-head DAE is the same heads concatenated without attention (`attention=False`); the multi-head VAE
(`variational=True`) has per head a linear mean and log-variance (both Xavier, no softplus) and z = mu + sigma * eps
while training, mu otherwise.
"""
from __future__ import annotations

import math

from .._tf import keras, tf


def _xavier_heads(heads: int):
    """Xavier-uniform per head of a [K, D, U] kernel (Keras' own fan computation would count K into both fans)."""
    def init(shape, dtype=None):
        _, fan_in, fan_out = shape
        limit = math.sqrt(6.0 / (fan_in + fan_out))
        return tf.random.uniform(shape, -limit, limit, dtype=dtype or tf.float32)
    return init


@keras.utils.register_keras_serializable(package="tfrec_zoo")
class MixtureHeadsEncoder(keras.layers.Layer):
    """x [B, D] -> {"z": [B, H], "heads": [B, K, H/K], "attention": [B, K]} (+ "mean", "log_var" [B, H] when
    variational). `input_dropout` is the denoising noise (1 - the author's keep_prob 0.95); it acts only while
    training. Without attention, "attention" is uniform 1/K (reported, not applied: z is the plain concatenation)."""

    def __init__(self, heads: int = 4, units: int = 256, input_dropout: float = 0.05, attention: bool = True,
                 variational: bool = False, seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        if heads < 1 or units % heads:
            raise ValueError(f"heads must be >= 1 and divide units: heads={heads}, units={units}")
        self.heads, self.units, self.input_dropout = int(heads), int(units), float(input_dropout)
        self.attention, self.variational, self.seed = bool(attention), bool(variational), seed
        self.head_units = self.units // self.heads
        self.dropout = keras.layers.Dropout(self.input_dropout, seed=seed)

    def build(self, input_shape):
        d = int(input_shape[-1])
        shape = (self.heads, d, self.head_units)
        self.kernel = self.add_weight("kernel", shape, initializer=_xavier_heads(self.heads))
        self.bias = self.add_weight("bias", (self.heads, self.head_units), initializer="zeros")
        if self.variational:
            self.log_var_kernel = self.add_weight("log_var_kernel", shape, initializer=_xavier_heads(self.heads))
            self.log_var_bias = self.add_weight("log_var_bias", (self.heads, self.head_units), initializer="zeros")
        if self.attention:
            self.attention_kernel = self.add_weight(
                "attention_kernel", (d, self.head_units),
                initializer=keras.initializers.RandomNormal(stddev=0.1, seed=self.seed))
        super().build(input_shape)

    def call(self, x, training=None):
        noisy = self.dropout(x, training=training)
        pre = tf.einsum("bd,kdu->bku", noisy, self.kernel) + self.bias             # [B, K, U]
        out = {}
        if self.variational:
            log_var = tf.einsum("bd,kdu->bku", noisy, self.log_var_kernel) + self.log_var_bias
            eps = tf.random.normal(tf.shape(pre), seed=self.seed)
            sample = pre + tf.exp(0.5 * log_var) * eps
            heads = keras.backend.in_train_phase(sample, pre, training=training)
            out["mean"] = tf.reshape(pre, [-1, self.units])
            out["log_var"] = tf.reshape(log_var, [-1, self.units])
        else:
            heads = tf.nn.softplus(pre)
        if self.attention:
            query = tf.matmul(x, self.attention_kernel)                            # [B, U], the clean x
            weights = tf.nn.softmax(tf.einsum("bu,bku->bk", query, heads), axis=-1)
            z = heads * weights[:, :, None]
        else:
            weights = tf.fill([tf.shape(x)[0], self.heads], 1.0 / self.heads)
            z = heads
        out.update({"z": tf.reshape(z, [-1, self.units]), "heads": heads, "attention": weights})
        return out

    def get_config(self):
        return {**super().get_config(), "heads": self.heads, "units": self.units, "input_dropout": self.input_dropout,
                "attention": self.attention, "variational": self.variational, "seed": self.seed}


@keras.utils.register_keras_serializable(package="tfrec_zoo")
class PairwiseProducts(keras.layers.Layer):
    """[B, F, d] fields -> [B, d]: `scale` * sum over pairs a < b of e_a * e_b (element-wise), computed as
    0.5 ((sum e)^2 - sum e^2). MACDAE's input uses scale 0.5 / (number of pairs) (the author: 0.5 * 1/10 over 5
    embeddings); NFM's bi-interaction pooling is scale 1."""

    def __init__(self, scale: float | None = None, **kwargs):
        super().__init__(**kwargs)
        self.scale = scale

    def call(self, fields):
        n = fields.shape[1]
        pairs = n * (n - 1) / 2
        scale = self.scale if self.scale is not None else (0.5 / pairs if pairs else 0.0)
        total = tf.reduce_sum(fields, axis=1)
        return scale * 0.5 * (tf.square(total) - tf.reduce_sum(tf.square(fields), axis=1))

    def get_config(self):
        return {**super().get_config(), "scale": self.scale}


def reconstruction_loss(x, x_hat):
    """Mean over the batch of 0.5 * ||x^ - x||^2 (the author sums over the batch of 128; a mean keeps the loss
    weight independent of the batch size)."""
    return tf.reduce_mean(0.5 * tf.reduce_sum(tf.square(x_hat - x), axis=-1))


def head_diversity_loss(heads, epsilon: float, hinge: bool = False):
    """0.5 * mean over the batch and head pairs i < j of (cos(h_i, h_j) - epsilon): the author's constraint, with
    the multiplier lambda as the loss weight. It is linear, so epsilon only shifts its value (the gradient always
    lowers every pair's cosine); `hinge=True` uses max(0, cos - epsilon) so pairs already below epsilon are left alone.
    0 with one head."""
    k = heads.shape[1]
    if k is None or k < 2:
        return tf.constant(0.0)
    unit = tf.math.l2_normalize(heads, axis=-1)
    cos = tf.einsum("bid,bjd->bij", unit, unit)
    upper = tf.constant([[1.0 if j > i else 0.0 for j in range(k)] for i in range(k)])
    gap = cos - epsilon
    if hinge:
        gap = tf.nn.relu(gap)
    return 0.5 * tf.reduce_sum(gap * upper) / (tf.cast(tf.shape(heads)[0], tf.float32) * (k * (k - 1) / 2))


def gaussian_kl(mean, log_var):
    """Mean over the batch of KL(N(mean, exp(log_var)) || N(0, I)), summed over the latent units."""
    return tf.reduce_mean(-0.5 * tf.reduce_sum(1.0 + log_var - tf.square(mean) - tf.exp(log_var), axis=-1))
