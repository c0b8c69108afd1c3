"""Divergence penalties between the domains' representation distributions within one batch (S&R DA-MTL).

The S&R foundation model (Gong et al., CIKM 2023) aligns the domains' representations in one shared space with a
Jensen-Shannon or an MMD regulariser; the paper's estimators were not readable, so both here are [inferred]
(see seeds/papers/sr_foundation.md, "Formulas chosen"). Both return a scalar: the mean over the unordered pairs
of domains that are present in the batch (at least one row each). A batch with fewer than two domains present gives exactly 0,
and no NaN reaches the value or the gradient (absent domains are masked, divisions are `divide_no_nan`).
"""
from __future__ import annotations

import math

from .._tf import keras, tf


def domain_index(domain, num_domains: int, who: str) -> tf.Tensor:
    """`domain` ([B] or [B, 1], any int dtype) as int32 [B], checked to lie in [0, num_domains).

    Out-of-range ids would otherwise vanish silently (`one_hot` gives a zero row, GPU `gather` gives zeros)."""
    domain = tf.reshape(tf.cast(domain, tf.int32), [-1])
    msg = (f"{who}: a domain index is outside [0, {num_domains}); the domain feature must be encoded as "
           f"0..{num_domains - 1} (raise num_domains to reserve slots for new domains)")
    checks = [tf.debugging.assert_non_negative(domain, message=msg),
              tf.debugging.assert_less(domain, num_domains, message=msg)]
    with tf.control_dependencies(checks):
        return tf.identity(domain)


def _membership(domain, num_domains: int, dtype, who: str):
    """one-hot membership [B, D], row counts per domain [D], and the mask of present unordered pairs i < j [D, D]."""
    onehot = tf.one_hot(domain_index(domain, num_domains, who), num_domains, dtype=dtype)
    counts = tf.reduce_sum(onehot, axis=0)
    present = tf.cast(counts > 0, dtype)
    upper = tf.linalg.band_part(tf.ones([num_domains, num_domains], dtype), 0, -1) - tf.eye(num_domains, dtype=dtype)
    return onehot, counts, present[:, None] * present[None, :] * upper


def _mean_over_pairs(per_pair, pairs):
    return tf.math.divide_no_nan(tf.reduce_sum(per_pair * pairs), tf.reduce_sum(pairs))


def mmd_penalty(x, domain, num_domains: int, bandwidth: float = 1.0) -> tf.Tensor:
    """Mean over present domain pairs (i, j) of the biased MMD^2 estimate with a Gaussian kernel:

        k(a, b) = exp(-||a - b||^2 / (2 * bandwidth^2))
        MMD^2(i, j) = mean_{a,a' in X_i} k(a, a') + mean_{b,b' in X_j} k(b, b') - 2 mean_{a in X_i, b in X_j} k(a, b)

    (the V-statistic: diagonal terms included, so it is >= 0). x: [B, d] float; domain: [B] int in [0, num_domains).
    Cost: one [B, B] kernel matrix, then [D, B] x [B, B] x [B, D] sums per domain pair.
    """
    if bandwidth <= 0:
        raise ValueError(f"mmd_penalty: bandwidth must be > 0, got {bandwidth}")
    x = tf.convert_to_tensor(x)
    onehot, counts, pairs = _membership(domain, num_domains, x.dtype, "mmd_penalty")
    sq = tf.reduce_sum(tf.square(x), axis=1)
    # |a|^2 + |b|^2 - 2ab keeps memory at [B, B] (the broadcast difference would be [B, B, d]); rounding can make
    # it slightly negative, hence the clip
    dist = tf.maximum(sq[:, None] + sq[None, :] - 2.0 * tf.matmul(x, x, transpose_b=True), 0.0)
    kernel = tf.exp(-dist / (2.0 * bandwidth ** 2))
    sums = tf.matmul(onehot, tf.matmul(kernel, onehot), transpose_a=True)          # [D, D] kernel sums per pair
    means = tf.math.divide_no_nan(sums, counts[:, None] * counts[None, :])
    within = tf.linalg.diag_part(means)
    mmd2 = within[:, None] + within[None, :] - 2.0 * means
    return _mean_over_pairs(mmd2, pairs)


def js_penalty(x, domain, num_domains: int) -> tf.Tensor:
    """Mean over present domain pairs (i, j) of JS(P_i || P_j), each domain's distribution being the softmax of its
    mean representation in the batch (a distribution over the d dimensions):

        P_i = softmax(mean_{a in X_i} a),   M = (P_i + P_j) / 2
        JS(P_i || P_j) = 0.5 * sum_c P_i[c] log(P_i[c] / M[c]) + 0.5 * sum_c P_j[c] log(P_j[c] / M[c])  in [0, ln 2]

    Why this estimator [inferred]: JS needs the two densities, and a d-dimensional density from the ~B/D rows of a
    domain in one batch is not tractable; per-dimension histograms are not differentiable; and two Gaussians have no
    closed-form JS. The softmax of the batch mean is differentiable, cheap, and bounded by ln 2, so the penalty weight
    does not depend on the representation's scale. It compares first moments only (softmax ignores a common shift
    of all dimensions); `mmd_penalty` also sees higher moments. Logs are taken as log_softmax / logsumexp, so no
    log(0) occurs.
    """
    x = tf.convert_to_tensor(x)
    onehot, counts, pairs = _membership(domain, num_domains, x.dtype, "js_penalty")
    means = tf.math.divide_no_nan(tf.matmul(onehot, x, transpose_a=True), counts[:, None])      # [D, d]
    log_p = tf.nn.log_softmax(means, axis=-1)
    li, lj = log_p[:, None, :], log_p[None, :, :]                                              # [D, 1, d], [1, D, d]
    top = tf.maximum(li, lj)                                                                   # [D, D, d]
    log_m = top + tf.math.log(tf.exp(li - top) + tf.exp(lj - top)) - math.log(2.0)             # log((Pi+Pj)/2)
    js = 0.5 * tf.reduce_sum(tf.exp(li) * (li - log_m) + tf.exp(lj) * (lj - log_m), axis=-1)
    return _mean_over_pairs(js, pairs)


PENALTIES = {"js": js_penalty, "mmd": mmd_penalty}


@keras.utils.register_keras_serializable(package="tfrec_zoo")
class DomainDivergence(keras.layers.Layer):
    """Adds `weight * penalty(x, domain)` to the model's losses (`add_loss`) and returns x unchanged.

    Inputs: (x [B, d], domain [B] int). kind: "js" (`js_penalty`) or "mmd" (`mmd_penalty` with `bandwidth`).
    The penalty is added in training and inference alike (Keras reports it in `model.losses`); it is a regulariser
    of the batch, so evaluate it on mixed-domain batches.
    """

    def __init__(self, num_domains: int, kind: str = "js", weight: float = 1.0, bandwidth: float = 1.0, **kwargs):
        super().__init__(**kwargs)
        if kind not in PENALTIES:
            raise ValueError(f"DomainDivergence: kind must be one of {sorted(PENALTIES)}, got {kind!r}")
        if int(num_domains) < 1:
            raise ValueError(f"DomainDivergence: num_domains must be >= 1, got {num_domains}")
        self.num_domains, self.kind = int(num_domains), kind
        self.weight, self.bandwidth = float(weight), float(bandwidth)

    def call(self, inputs):
        x, domain = inputs
        if self.kind == "mmd":
            penalty = mmd_penalty(x, domain, self.num_domains, self.bandwidth)
        else:
            penalty = js_penalty(x, domain, self.num_domains)
        self.add_loss(self.weight * penalty)
        return x

    def get_config(self):
        return {**super().get_config(), "num_domains": self.num_domains, "kind": self.kind, "weight": self.weight,
                "bandwidth": self.bandwidth}
