"""Feature-interaction and multi-task layers: FM's pairwise term, MMoE's gated experts."""
from __future__ import annotations

from typing import Sequence

from .._tf import keras, tf


@keras.utils.register_keras_serializable(package="tfrec_zoo")
class FMInteraction(keras.layers.Layer):
    """Second-order FM term over field embeddings [B, F, k]: 0.5 * sum_k((sum_f v)^2 - sum_f v^2) -> [B, 1]."""

    def call(self, fields):
        square_of_sum = tf.square(tf.reduce_sum(fields, axis=1))
        sum_of_square = tf.reduce_sum(tf.square(fields), axis=1)
        return 0.5 * tf.reduce_sum(square_of_sum - sum_of_square, axis=1, keepdims=True)


@keras.utils.register_keras_serializable(package="tfrec_zoo")
class MixtureOfExperts(keras.layers.Layer):
    """MMoE (Ma et al., KDD 2018): shared experts, one softmax gate per task -> a list of [B, d] task inputs."""

    def __init__(self, num_experts: int = 4, expert_units: Sequence[int] = (128, 64), num_tasks: int = 1,
                 dropout: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.num_experts, self.expert_units = int(num_experts), list(expert_units)
        self.num_tasks, self.dropout = int(num_tasks), float(dropout)
        self.experts = [[keras.layers.Dense(u, activation="relu", name=f"expert{e}_dense{i}")
                         for i, u in enumerate(self.expert_units)] for e in range(self.num_experts)]
        self.gates = [keras.layers.Dense(self.num_experts, activation="softmax", name=f"gate{t}")
                      for t in range(self.num_tasks)]
        self.drop = keras.layers.Dropout(self.dropout)

    def call(self, x, training=None):
        outs = []
        for layers in self.experts:
            h = x
            for layer in layers:
                h = layer(h)
            outs.append(self.drop(h, training=training))
        experts = tf.stack(outs, axis=1)                      # [B, E, d]
        return [tf.einsum("be,bed->bd", gate(x), experts) for gate in self.gates]

    def get_config(self):
        return {**super().get_config(), "num_experts": self.num_experts, "expert_units": self.expert_units,
                "num_tasks": self.num_tasks, "dropout": self.dropout}
