"""Multi-interest candidate generation: interest extractors, adaptive interest selection, prototype losses.

Seed paper 3 (Li et al., CIKM 2022, arXiv 2211.12893) has no public code and its method section was not readable:
everything specific to it below (AISL, PCL, the scores) is [inferred] from docs/papers.md section 3.4 and
seeds/papers/adaptive_interests_pcl.md. The two extractors follow their own papers and the ComiRec reference code
(THUDM/ComiRec, src/model.py), which also implements MIND.

* `SelfAttentiveInterests`: ComiRec-SA (Cen et al., KDD 2020).
* `CapsuleInterests`: MIND's behaviour-to-interest dynamic routing (Li et al., CIKM 2019).
* `AdaptiveInterestSelection`: k in 1..K_max from activeness features, as a cumulative mask over interest slots.
* `multi_interest_scores`, `prototype_contrastive_loss`, `nearest_prototype`, `collision_mask`, `mask_collisions`.

History masks are [B, L] bool (True = a real step); a padded step never changes an output, and a user with no
valid step gets zero interest vectors (finite values and gradients). Interest masks are [B, K] float 0/1 (possibly
carrying a straight-through gradient) or bool.
"""
from __future__ import annotations

from typing import Sequence

from .._tf import keras, tf

NEG = -1e9      # finite "minus infinity": exp() underflows to exactly 0, and no inf - inf = NaN can appear


def _at_least_one(who: str, **values: int) -> None:
    for name, value in values.items():
        if int(value) < 1:
            raise ValueError(f"{who}: {name} must be >= 1, got {value}")


def _squash(z):
    """|z|^2 / (1 + |z|^2) * z / sqrt(|z|^2 + 1e-9): length in [0, 1); squash(0) = 0 with a finite gradient."""
    sq = tf.reduce_sum(tf.square(z), axis=-1, keepdims=True)
    return sq / (1.0 + sq) / tf.sqrt(sq + 1e-9) * z


@keras.utils.register_keras_serializable(package="tfrec_zoo")
class SelfAttentiveInterests(keras.layers.Layer):
    """ComiRec-SA: K interest vectors as K attention read-outs of the behaviour sequence.

        A = softmax_L(W2 tanh(W1 H^T + b1))     [B, K, L]; padded steps get logit -1e9, then A * mask
        V = A H                                  [B, K, d]

    Inputs: (H [B, L, d], mask [B, L] bool[, keys [B, L, d]]): the optional keys replace H inside the attention
    logits only (the reference code attends over H + learned position embeddings, which the model makes, and reads
    out H). W1 [d_a, d], b1 [d_a], W2 [K, d_a]; d_a = hidden_units, default 4 d (the reference code's
    `hidden_size * 4`). b1 is in the reference code though not in the paper's formula; a bias b2 would be constant
    along L and cancel in the softmax, so there is none. A row without a valid step has all logits -1e9: its
    softmax is uniform and finite, and `* mask` makes V = 0 (and its gradient 0).
    """

    def __init__(self, num_interests: int, hidden_units: int | None = None, **kwargs):
        super().__init__(**kwargs)
        _at_least_one("SelfAttentiveInterests", num_interests=num_interests)
        self.num_interests, self.hidden_units = int(num_interests), None if hidden_units is None else int(hidden_units)

    def build(self, input_shape):
        d = int(input_shape[0][-1])
        units = self.hidden_units or 4 * d
        self.w1 = self.add_weight("w1", [d, units], initializer="glorot_uniform")
        self.b1 = self.add_weight("b1", [units], initializer="zeros")
        self.w2 = self.add_weight("w2", [units, self.num_interests], initializer="glorot_uniform")
        super().build(input_shape)

    def call(self, inputs):
        h, mask = inputs[0], inputs[1]
        keys = inputs[2] if len(inputs) > 2 else h          # e.g. H + position embeddings: they steer, H is read
        valid = tf.cast(mask, tf.bool)[:, None, :]                                          # [B, 1, L]
        logits = tf.einsum("bla,ak->bkl", tf.tanh(tf.einsum("bld,da->bla", keys, self.w1) + self.b1), self.w2)
        attention = tf.nn.softmax(tf.where(valid, logits, NEG), axis=-1) * tf.cast(valid, h.dtype)
        return tf.matmul(attention, h)

    def get_config(self):
        return {**super().get_config(), "num_interests": self.num_interests, "hidden_units": self.hidden_units}


@keras.utils.register_keras_serializable(package="tfrec_zoo")
class CapsuleInterests(keras.layers.Layer):
    """MIND's behaviour-to-interest dynamic routing: K interest capsules [B, K, units] from H [B, L, d] + mask [B, L].

        u^_i = S e_i                                  one bilinear map S [d, units] shared by all interests (MIND)
        b_ij = TruncatedNormal(0, 1)                   [L, K], stateless from `seed` (see below)
        for r = 1 .. iterations:
            w_ij = softmax_j(b_ij) * mask_i            softmax over the K interests; a padded step weighs 0
            u_j  = squash(sum_i w_ij u^_i)             squash(z) = |z|^2 / (1 + |z|^2) * z / |z|
            b_ij = b_ij + u_j . u^_i                   (not after the last round)

    Why random initial logits and not zeros: with one shared map, zero logits give every interest the same weights
    1/K, hence the same capsule and the same update: the K capsules would stay identical. MIND draws b ~ N(0, s^2)
    and the ComiRec code a truncated N(0, 1) at every call (zeros only with its per-interest maps, ComiRec-DR).
    Here the draw is stateless from `seed`, the same for every user [inferred]: the K columns differ, which breaks
    the symmetry, and training and serving see the same logits, so an exported model is deterministic. As in the
    ComiRec code, the rounds before the last see stop_gradient(u^): gradients flow through the last round only.
    An empty history gives w = 0 and u = squash(0) = 0 (the 1e-9 inside the root keeps its gradient finite).
    MIND's relu projection after routing and its label-aware attention belong to the model.

    maps="per_interest" is ComiRec-DR's variant: one map S_j per interest (u^_{j|i} = S_j e_i, the logits update
    with u_j . u^_{j|i}) and zero initial logits (the maps already differ). [simplified] The ComiRec code has a map
    per position and interest (`bilinear_type=2`); one per interest keeps the layer independent of L.
    """

    def __init__(self, num_interests: int, iterations: int = 3, units: int | None = None, seed: int = 0,
                 maps: str = "shared", **kwargs):
        super().__init__(**kwargs)
        _at_least_one("CapsuleInterests", num_interests=num_interests, iterations=iterations)
        if maps not in ("shared", "per_interest"):
            raise ValueError(f"CapsuleInterests: maps must be 'shared' (MIND) or 'per_interest' (ComiRec-DR), "
                             f"got {maps!r}")
        self.num_interests, self.iterations = int(num_interests), int(iterations)
        self.units, self.seed, self.maps = None if units is None else int(units), int(seed), maps

    def build(self, input_shape):
        d = int(input_shape[0][-1])
        self.units = self.units or d
        shape = [d, self.units] if self.maps == "shared" else [self.num_interests, d, self.units]
        self.bilinear = self.add_weight("bilinear", shape, initializer="glorot_uniform")
        super().build(input_shape)

    def initial_logits(self, length) -> tf.Tensor:
        """b_ij before routing: [length, K], the same at every call."""
        shape = tf.stack([length, self.num_interests])
        if self.maps == "per_interest":
            return tf.zeros(shape)
        return tf.random.stateless_truncated_normal(shape, seed=[self.seed, 0])

    def call(self, inputs):
        h, mask = inputs
        if self.maps == "shared":
            u_hat = tf.einsum("bld,du->blu", h, self.bilinear)[:, :, None, :]                # [B, L, 1, units]
        else:
            u_hat = tf.einsum("bld,kdu->blku", h, self.bilinear)                             # [B, L, K, units]
        u_fixed = tf.stop_gradient(u_hat)
        valid = tf.cast(mask, u_hat.dtype)[:, :, None]                                       # [B, L, 1]
        logits = tf.cast(self.initial_logits(tf.shape(h)[1]), u_hat.dtype)[None]            # [1, L, K]
        for r in range(self.iterations):
            weights = tf.nn.softmax(logits, axis=-1) * valid                                 # [B, L, K]
            last = r == self.iterations - 1
            capsules = _squash(tf.reduce_sum(weights[..., None] * (u_hat if last else u_fixed), axis=1))
            if not last:
                logits = logits + tf.reduce_sum(u_fixed * capsules[:, None], axis=-1)
        return capsules

    def get_config(self):
        return {**super().get_config(), "num_interests": self.num_interests, "iterations": self.iterations,
                "units": self.units, "seed": self.seed, "maps": self.maps}


@keras.utils.register_keras_serializable(package="tfrec_zoo")
class AdaptiveInterestSelection(keras.layers.Layer):
    """[inferred] AISL: how many interests a user gets, from activeness features, as a mask over interest slots.

        z = MLP(x)                  x [B, a]: activeness features (log #behaviours, #categories, recency, ...,
                                    normalised by the caller); z_i [B, K_max] is the logit of k = i + 1
        serving / training=False:   k = argmax_i z_i + 1;   m_j = 1[j < k]                       (j = 0 .. K_max-1)
        training=True:              y = softmax((z + g) / tau),  g_i = -log(-log U_i),  U_i ~ Uniform(0, 1)
                                    h = one_hot(argmax_i y_i)   (a draw from Categorical(softmax(z)): Gumbel-max)
                                    p = h + (y - stop_gradient(y))                 (straight-through estimator)
                                    m_j = sum_{i >= j} p_i      (slot j is active iff k > j)

    Output m [B, K_max] float: in both modes exactly 0/1 (y - stop_gradient(y) is exactly 0 forward) and
    non-increasing in j, with m_0 = 1; in training dm_j/dz flows through the soft y. Slot order is the only
    ordering [inferred]: slot j serves only the users with k > j, so the first slots learn the interests everyone
    has and the last ones the extra interests of active users; the extractor's slots need no re-sorting (ComiRec-SA's
    attention rows all sum to 1, so "attention mass" could not order them). tau is fixed per layer (config).
    hidden_units: the relu MLP before the logits layer (empty: logits linear in x).
    """

    def __init__(self, max_interests: int, hidden_units: Sequence[int] = (32,), temperature: float = 1.0, **kwargs):
        super().__init__(**kwargs)
        _at_least_one("AdaptiveInterestSelection", max_interests=max_interests)
        if not float(temperature) > 0:
            raise ValueError(f"AdaptiveInterestSelection: temperature must be > 0, got {temperature}")
        self.max_interests, self.temperature = int(max_interests), float(temperature)
        self.hidden_units = [int(u) for u in hidden_units]
        self.hidden = [keras.layers.Dense(u, activation="relu", name=f"dense{i}")
                       for i, u in enumerate(self.hidden_units)]
        self.logits = keras.layers.Dense(self.max_interests, name="logits")

    def count_logits(self, activeness) -> tf.Tensor:
        """z [B, K_max]: logits of k = 1 .. K_max."""
        h = tf.convert_to_tensor(activeness)
        for layer in self.hidden:
            h = layer(h)
        return self.logits(h)

    def call(self, activeness, training=None):
        z = self.count_logits(activeness)
        if not training:
            k = tf.argmax(z, axis=-1, output_type=tf.int32) + 1
            return tf.sequence_mask(k, self.max_interests, dtype=z.dtype)
        u = tf.random.uniform(tf.shape(z), minval=1e-20, maxval=1.0, dtype=z.dtype)
        y = tf.nn.softmax((z - tf.math.log(-tf.math.log(u))) / self.temperature, axis=-1)
        p = tf.one_hot(tf.argmax(y, axis=-1), self.max_interests, dtype=z.dtype) + (y - tf.stop_gradient(y))
        return tf.cumsum(p, axis=-1, reverse=True)

    def get_config(self):
        return {**super().get_config(), "max_interests": self.max_interests, "hidden_units": self.hidden_units,
                "temperature": self.temperature}


def multi_interest_scores(interests, mask, items) -> tf.Tensor:
    """s_bn = max over the active k (m_bk > 0.5) of m_bk * (v_bk . e_n): [B, N]; -1e9 where row b has none.

    interests [B, K, d], mask [B, K] float 0/1 or bool, items [N, d]. An item is scored by the user's best-matching
    active interest, which is how serving ranks (per-interest nearest neighbours merged by score). ComiRec and MIND
    train differently: the positive's best interest scores every sampled negative (hard read-out); the max per item
    is [inferred] here so that training and serving rank alike. Inactive interests are excluded by value, so they
    never win, however high their dot product. The factor m_bk is exactly 1 forward; it hands a straight-through
    mask (AdaptiveInterestSelection) the gradient v_bk . e_n of the winning interest. No active interest (impossible
    with that layer, k >= 1): every score is -1e9, finite, with zero gradient.
    """
    dots = tf.einsum("bkd,nd->bkn", interests, items)
    m = tf.cast(mask, dots.dtype)[:, :, None]
    return tf.reduce_max(tf.where(m > 0.5, m * dots, NEG), axis=1)


def _check_ids(ids, count: int, who: str) -> tf.Tensor:
    ids = tf.reshape(tf.cast(ids, tf.int32), [-1])
    msg = f"{who}: a prototype id is outside [0, {count}); assignments must index the {count} prototypes"
    with tf.control_dependencies([tf.debugging.assert_non_negative(ids, message=msg),
                                  tf.debugging.assert_less(ids, count, message=msg)]):
        return tf.identity(ids)


def nearest_prototype(embeddings, prototypes) -> tf.Tensor:
    """argmin_p |e_b - c_p|^2 = argmax_p (e_b . c_p - |c_p|^2 / 2): int32 [B], the k-means assignment step.

    With L2-normalised prototypes this is argmax_p e_b . c_p. No gradient (an index)."""
    half_sq = 0.5 * tf.reduce_sum(tf.square(prototypes), axis=-1)
    return tf.argmax(tf.matmul(embeddings, prototypes, transpose_b=True) - half_sq, axis=-1, output_type=tf.int32)


def prototype_contrastive_loss(item_emb, prototypes, assignments, temperature: float,
                               normalize: bool = False) -> tf.Tensor:
    """ProtoNCE (Li et al., ICLR 2021, one clustering, one shared temperature phi), mean over the B rows:

        L = mean_b -log( exp(e_b . c_{s(b)} / phi) / sum_{p=1..P} exp(e_b . c_p / phi) )

    item_emb [B, d], prototypes [P, d], assignments s [B] int in [0, P) (e.g. `nearest_prototype`, or k-means run
    outside the graph). It pulls each item towards its prototype and pushes it from the others (the intra- and
    inter-cluster distances of paper 3's PCL). normalize=True L2-normalises e and c first (cosine logits); with
    learnable prototypes this keeps the loss from falling by growing norms. PCL's per-cluster concentration phi_p
    is [inferred] away (one temperature). An out-of-range id fails with one InvalidArgumentError naming it.
    """
    if not float(temperature) > 0:
        raise ValueError(f"prototype_contrastive_loss: temperature must be > 0, got {temperature}")
    if normalize:
        item_emb, prototypes = tf.math.l2_normalize(item_emb, axis=-1), tf.math.l2_normalize(prototypes, axis=-1)
    ids = _check_ids(assignments, tf.shape(prototypes)[0], "prototype_contrastive_loss")
    logits = tf.matmul(item_emb, prototypes, transpose_b=True) / temperature
    return tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=ids, logits=logits))


def collision_mask(pos_proto, neg_proto, exclude_diagonal: bool = False) -> tf.Tensor:
    """bool [B, N]: True where sampled negative n has the prototype of row b's positive (class collision).

    exclude_diagonal=True (in-batch negatives, N = B: the negatives are the batch's own positives) never marks
    (b, b), which is row b's positive itself. Ids are compared as int32 (pos_proto [B], neg_proto [N])."""
    pos = tf.reshape(tf.cast(pos_proto, tf.int32), [-1, 1])
    neg = tf.reshape(tf.cast(neg_proto, tf.int32), [1, -1])
    same = tf.equal(pos, neg)
    if exclude_diagonal:
        same = same & ~tf.cast(tf.eye(tf.shape(pos)[0], tf.shape(neg)[1]), tf.bool)
    return same


def mask_collisions(logits, collision) -> tf.Tensor:
    """[B, N] logits with the colliding entries set to -1e9 [inferred: removed, the digest's "down-weight" at weight
    0]: exp() makes them exactly 0 in a softmax, so they are no longer negatives and get no gradient. A row whose
    every negative collides keeps only its positive's term: its cross-entropy is 0, finite."""
    return tf.where(tf.cast(collision, tf.bool), tf.constant(NEG, logits.dtype), logits)


def kmeans(vectors, k: int, *, iterations: int = 10, seed: int = 0, spherical: bool = True):
    """(centroids [k, d] float32, assignments [N] int32): Lloyd's k-means with k-means++ seeding, in numpy.

    spherical=True clusters by cosine (unit-norm centroids; the vectors are normalised first), what a model whose
    item vectors are unit-norm needs. A cluster left empty takes the vector farthest from its centroid, so there
    are always k distinct centroids. N < k is an error (the caller checks it at build time with the corpus size).
    """
    import numpy as np

    x = np.asarray(vectors, np.float64)
    n = len(x)
    if k < 1 or n < k:
        raise ValueError(f"kmeans: need 1 <= k <= number of vectors, got k={k} for {n} vectors")
    if spherical:
        x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    rng = np.random.default_rng(seed)
    sq = (x * x).sum(1)

    def dist2(c):                       # [N, k] squared distances, without materialising [N, k, d]
        return np.maximum(sq[:, None] - 2 * x @ c.T + (c * c).sum(1)[None], 0.0)

    centroids = [x[rng.integers(n)]]
    closest = dist2(np.asarray(centroids))[:, 0]
    for _ in range(1, k):
        p = closest / closest.sum() if closest.sum() > 0 else None
        centroids.append(x[rng.choice(n, p=p)])
        closest = np.minimum(closest, dist2(centroids[-1][None])[:, 0])
    c = np.asarray(centroids)
    for _ in range(iterations):
        d = dist2(c)
        assign = d.argmin(1)
        counts = np.bincount(assign, minlength=k)
        sums = np.zeros_like(c)
        np.add.at(sums, assign, x)
        c = np.where(counts[:, None] > 0, sums / np.maximum(counts, 1)[:, None], c)
        for j in np.flatnonzero(counts == 0):
            far = int(d[np.arange(n), assign].argmax())
            c[j], assign[far] = x[far], j
            d[far] = 0.0
        if spherical:
            c = c / np.maximum(np.linalg.norm(c, axis=1, keepdims=True), 1e-12)
    assign = dist2(c).argmin(1)
    return c.astype(np.float32), assign.astype(np.int32)
