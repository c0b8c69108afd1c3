"""Per-domain branches of a multi-domain model: keep, for each row, the branch of the row's own domain."""
from __future__ import annotations

from .._tf import keras, tf
from .divergence import domain_index
from .multidomain import _select_domain


@keras.utils.register_keras_serializable(package="tfrec_zoo")
class DomainSelect(keras.layers.Layer):
    """Inputs: [b_0, .., b_{D-1}, domain]: D branch outputs [B, u] (one per domain row) and the rows' domain index
    [B] int in [0, D). Output [B, u]: out_b = (b_{domain_b})_b.

    Every branch is computed on the whole batch and the row's own is kept (multidomain.py's STAR does the same with
    its kernels): D is a handful of domains, and a batch that mixes domains needs no gather of weights per row. An
    index outside [0, D) fails with one clear message (a lookup's row never is)."""

    def call(self, inputs):
        *branches, domain = inputs
        domain = domain_index(domain, len(branches), self.name)
        return _select_domain(tf.stack(branches, axis=1), domain)
