"""GSU search primitives for lifelong sequences (SEMINAR, arXiv 2407.10714; ETA; SIM).

The exact GSU score of history item l for a target is  score_l = <q, sum_m w_m k_{l,m}>  with q the target's fused
query (sum_i w_i q_i) and k_{l,m} item l's modality-m vector. SEMINAR approximates it with multi-modal product
quantization: per modality m a codebook [C sub-spaces, K <= 256 codewords, d = D / C] (k-means), uint8 codes per item
[M, C], and at request time a lookup table of inner products between the query's sub-vectors and every codeword
(asymmetric distance computation, ADC):  score_l ~= sum_m w_m sum_c <q_c, codebook[m, c, code[l, m, c]]>.

numpy: `train_pq_codebooks`, `pq_encode`, `pq_decode`, `simhash_planes` (offline: codebooks, code tables).
TF (stock ops only, exports to TF Serving): `pq_scores` / `PQScores`, `simhash_codes` / `pack_bits` /
`hamming_matches` / `SimHash`, `exact_scores`, `topk_indices`.
"""
from __future__ import annotations

import contextlib
from typing import Optional

import numpy as np

from .._tf import keras, tf

_CHUNK_FLOATS = 1 << 22  # score block (C x rows x K floats) of the numpy k-means / encoder
_SEED_POINTS = 16  # k-means++ seeds from at most this many points per codeword (a random subsample)


# -- numpy: codebooks and codes ----------------------------------------------------------------------------------------
def _one_blas_thread():
    """The k-means / encoder matmuls are tiny ([rows, d + 1] x [d + 1, K] per sub-space): threaded BLAS only adds
    synchronisation (2-3x slower on a busy 2-core machine), so run them on one thread when threadpoolctl exists."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - threadpoolctl ships with scikit-learn
        return contextlib.nullcontext()
    return threadpool_limits(1, user_api="blas")


def _split(vectors: np.ndarray, num_subspaces: int) -> np.ndarray:
    """[N, D] -> [C, N, D/C] float32 (sub-space major), or a ValueError when C does not divide D."""
    vectors = np.asarray(vectors, np.float32)
    if vectors.ndim != 2:
        raise ValueError(f"expected vectors [N, D], got shape {vectors.shape}")
    n, dim = vectors.shape
    if num_subspaces < 1 or dim % num_subspaces:
        raise ValueError(f"PQ: the dimension D={dim} must be divisible by the number of sub-spaces C={num_subspaces}")
    return np.ascontiguousarray(vectors.reshape(n, num_subspaces, dim // num_subspaces).transpose(1, 0, 2))


def _assign(xs: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Nearest centroid (L2) per sub-space: xs [C, N, d], centroids [C, K, d] -> [C, N] int64.
    argmin ||x - c||^2 = argmax <[x, 1], [c, -||c||^2 / 2]>: one batched matmul + argmax per block of rows."""
    c, n, _ = xs.shape
    k = centroids.shape[1]
    ct = np.concatenate([centroids, -0.5 * np.sum(centroids ** 2, -1, keepdims=True)], -1)
    ct = np.ascontiguousarray(ct.transpose(0, 2, 1), np.float32)          # [C, d + 1, K]
    step = max(1, _CHUNK_FLOATS // (c * k))
    out = np.empty((c, n), np.int64)
    with _one_blas_thread():
        for s in range(0, n, step):
            block = xs[:, s:s + step]
            block = np.concatenate([block, np.ones(block.shape[:2] + (1,), np.float32)], -1)
            out[:, s:s + step] = np.argmax(np.matmul(block, ct), axis=-1)
    return out


def _kmeans_pp(xs: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k-means++ seeding in all C sub-spaces at once: xs [C, N, d] -> [C, k, d]. When fewer than k distinct points
    exist, the remaining picks are uniform (duplicate centroids) instead of failing."""
    c, n, _ = xs.shape
    rows = np.arange(c)
    pick = rng.integers(0, n, size=c)
    cent = np.empty((c, k, xs.shape[2]), np.float32)
    cent[:, 0] = xs[rows, pick]
    dist = np.sum((xs - cent[:, :1]) ** 2, axis=-1)                        # [C, N]
    for j in range(1, k):
        total = dist.sum(axis=1)
        u = rng.random(c)
        cum = np.cumsum(dist, axis=1)
        pick = np.array([np.searchsorted(cum[i], u[i] * total[i], side="right") if total[i] > 0
                         else rng.integers(0, n) for i in range(c)]).clip(0, n - 1)
        cent[:, j] = xs[rows, pick]
        np.minimum(dist, np.sum((xs - cent[:, j:j + 1]) ** 2, axis=-1), out=dist)
    return cent


def train_pq_codebooks(vectors: np.ndarray, num_subspaces: int, num_codewords: int = 256, iters: int = 20,
                       seed: int = 0) -> np.ndarray:
    """Product-quantization codebooks by k-means (k-means++ seeding, Lloyd iterations) in each sub-space.

    Seeding runs on a random subsample of at most 16 K points (the Lloyd iterations use all N).
    vectors [N, D] -> [C, K, D/C] float32 (C = num_subspaces, K = num_codewords <= 256 so codes fit in uint8);
    vectors [N, M, D] (M modalities) -> [M, C, K, D/C], one codebook per modality (seed + m). Deterministic for a
    seed. N < K gives duplicate centroids; an empty cluster keeps its previous centroid. D % C != 0: ValueError.
    """
    vectors = np.asarray(vectors, np.float32)
    if vectors.ndim == 3:
        return np.stack([train_pq_codebooks(vectors[:, m], num_subspaces, num_codewords, iters, seed + m)
                         for m in range(vectors.shape[1])])
    if not 1 <= num_codewords <= 256:
        raise ValueError(f"PQ: num_codewords must be in [1, 256] (uint8 codes), got {num_codewords}")
    xs = _split(vectors, num_subspaces)
    c, n, d = xs.shape
    if n == 0:
        raise ValueError("PQ: no training vectors")
    rng = np.random.default_rng(seed)
    sample = np.sort(rng.choice(n, _SEED_POINTS * num_codewords, replace=False)) \
        if n > _SEED_POINTS * num_codewords else slice(None)
    cent = _kmeans_pp(np.ascontiguousarray(xs[:, sample]), num_codewords, rng)
    offsets = (np.arange(c) * num_codewords)[:, None]
    prev = None
    for _ in range(iters):
        assign = _assign(xs, cent)
        if prev is not None and np.array_equal(assign, prev):
            break
        prev = assign
        flat = (assign + offsets).ravel()
        counts = np.bincount(flat, minlength=c * num_codewords).reshape(c, num_codewords)
        sums = np.stack([np.bincount(flat, weights=xs[:, :, j].ravel(), minlength=c * num_codewords)
                         for j in range(d)], axis=-1).reshape(c, num_codewords, d)
        filled = counts > 0
        cent[filled] = (sums[filled] / counts[filled][:, None]).astype(np.float32)
    return cent


def pq_encode(vectors: np.ndarray, codebooks: np.ndarray) -> np.ndarray:
    """Nearest codeword (L2) per sub-space: vectors [N, D], codebooks [C, K, d] -> codes [N, C] uint8;
    vectors [N, M, D], codebooks [M, C, K, d] -> codes [N, M, C] uint8."""
    codebooks = np.asarray(codebooks, np.float32)
    if codebooks.ndim == 4:
        vectors = np.asarray(vectors)
        return np.stack([pq_encode(vectors[:, m], codebooks[m]) for m in range(codebooks.shape[0])], axis=1)
    return _assign(_split(vectors, codebooks.shape[0]), codebooks).T.astype(np.uint8)


def pq_decode(codes: np.ndarray, codebooks: np.ndarray) -> np.ndarray:
    """Reconstruction: codes [N, C], codebooks [C, K, d] -> [N, C*d] (the concatenated codewords);
    codes [N, M, C], codebooks [M, C, K, d] -> [N, M, C*d]."""
    codes, codebooks = np.asarray(codes).astype(np.int64), np.asarray(codebooks, np.float32)
    if codebooks.ndim == 4:
        return np.stack([pq_decode(codes[:, m], codebooks[m]) for m in range(codebooks.shape[0])], axis=1)
    parts = codebooks[np.arange(codebooks.shape[0])[None, :], codes]       # [N, C, d]
    return parts.reshape(codes.shape[0], -1)


def simhash_planes(dim: int, num_bits: int, seed: int = 0) -> np.ndarray:
    """Random Gaussian hyperplanes [D, num_bits] float32 for SimHash (ETA), fixed by the seed."""
    return np.random.default_rng(seed).standard_normal((dim, num_bits)).astype(np.float32)


# -- TF: scores and top-K ----------------------------------------------------------------------------------------------
def exact_scores(query, keys):
    """Inner products: query [B, D], keys [B, L, D] (per-example histories) or [L, D] (one history shared by the
    batch) -> [B, L]."""
    query, keys = tf.convert_to_tensor(query), tf.convert_to_tensor(keys)
    if keys.shape.rank == 2:
        return tf.matmul(query, keys, transpose_b=True)
    return tf.einsum("bd,bld->bl", query, keys)


def pq_scores(query, codes, codebooks, weights=None, decode: bool | None = None):
    """ADC scores: score[b, l] = sum_m w_m sum_c LUT[b, m, c, codes[b, l, m, c]], LUT[b, m, c, k] =
    <query[b, c-th sub-vector], codebooks[m, c, k]>, i.e. <query_b, sum_m w_m decode_m(codes[b, l])>.

    query [B, D] float, or [B, H, D]: H queries per row that share the row's codes (attention heads; one gather
    then serves all H); codebooks [C, K, d] (one modality) or [M, C, K, d]; codes (any int dtype, uint8 included)
    [B, L, C] / [B, L, M, C] (or [1, L, ...], broadcast), or without the batch axis ([L, C] / [L, M, C]: one
    user's history shared by all B queries, e.g. B candidates of one request); weights [M] (None = all ones).
    Returns [B, L] float32 ([B, H, L] for [B, H, D] queries).

    `decode` (shared codes only; default: True there) scores by decoding the L codes (L x M x C codeword gathers)
    and one [B*H, D] x [D, L] matmul instead of B*H*L*M*C table lookups: the same sums in another order (equal
    to float rounding), and on CPU far cheaper once B*H queries share one history (a rank request: 200 x 4).
    """
    query = tf.convert_to_tensor(query, tf.float32)
    per_head = query.shape.rank == 3
    if not per_head:
        query = query[:, None]
    codebooks = tf.convert_to_tensor(codebooks, tf.float32)
    codes = tf.convert_to_tensor(codes)
    if codebooks.shape.rank == 3:
        codebooks, codes = codebooks[None], tf.expand_dims(codes, -2)
    m, c, k, d = (codebooks.shape[i] for i in range(4))
    b, h = tf.shape(query)[0], query.shape[1]
    query = tf.reshape(query, [b, h, c, d])
    scale = 1.0 if weights is None else tf.cast(weights, tf.float32)
    index = tf.cast(codes, tf.int32) + tf.reshape(tf.range(m * c, dtype=tf.int32) * k, [m, c])
    if codes.shape.rank == 3 and decode is not False:  # shared history, decoded: [L, M, C] -> [L, D] -> matmul
        steps = tf.gather(tf.reshape(codebooks, [m * c * k, d]), index)            # [L, M, C, d]
        steps = tf.reduce_sum(tf.reshape(steps, [-1, m, c * d]) * tf.reshape(scale, [1, -1, 1]), axis=1)
        out = tf.reshape(tf.matmul(tf.reshape(query, [-1, c * d]), steps, transpose_b=True), [b, h, -1])
    # ADC: each LUT laid out so that one gathered row holds every query's partial score of one codeword
    elif codes.shape.rank == 3:                        # shared history, ADC: rows of B*H scores, [L, M*C, B*H]
        lut = tf.einsum("bhcd,mckd->mckbh", query, codebooks)
        lut = tf.reshape(lut * tf.reshape(scale, [-1, 1, 1, 1, 1]), [m * c * k, -1])
        out = tf.reduce_sum(tf.gather(lut, tf.reshape(index, [-1, m * c])), axis=1)
        out = tf.reshape(tf.transpose(out), [b, h, -1])
    else:                                              # per-row histories: rows of H scores, [B, L, M*C, H] -> [B, H, L]
        lut = tf.einsum("bhcd,mckd->bmckh", query, codebooks)
        lut = tf.reshape(lut * tf.reshape(scale, [1, -1, 1, 1, 1]), [-1, h])          # [B*M*C*K, H]
        # codes [1, L, ...] (one history for the B queries of a rank request) broadcast; row b reads LUT b
        index = tf.broadcast_to(tf.reshape(index, tf.concat([tf.shape(index)[:2], [m * c]], 0)),
                                tf.stack([b, tf.shape(index)[1], m * c]))
        index += tf.reshape(tf.range(b) * (m * c * k), [-1, 1, 1])
        out = tf.transpose(tf.reduce_sum(tf.gather(lut, index), axis=2), [0, 2, 1])
    return out if per_head else out[:, 0]


@keras.utils.register_keras_serializable(package="tfrec_zoo")
class PQScores(keras.layers.Layer):
    """`pq_scores` with the codebooks held as a non-trainable weight (saved with the model, restored by name).

    Build with `codebooks` ([C, K, d] or [M, C, K, d], e.g. from `train_pq_codebooks`) or, when restoring from a
    config, with `codebook_shape`. Inputs: (query [B, D], codes) or (query, codes, modality_weights [M]).
    """

    def __init__(self, codebooks: Optional[np.ndarray] = None, codebook_shape=None, **kwargs):
        super().__init__(**kwargs)
        if codebooks is None and codebook_shape is None:
            raise ValueError("PQScores needs codebooks or codebook_shape")
        init = None if codebooks is None else np.asarray(codebooks, np.float32)
        self.codebook_shape = tuple(int(s) for s in (init.shape if codebook_shape is None else codebook_shape))
        if len(self.codebook_shape) not in (3, 4):
            raise ValueError(f"PQScores: codebooks must be [C, K, d] or [M, C, K, d], got {self.codebook_shape}")
        self.codebooks = self.add_weight("codebooks", shape=self.codebook_shape, trainable=False, dtype=tf.float32,
                                         initializer="zeros" if init is None else keras.initializers.Constant(init))

    def call(self, inputs):
        query, codes, *rest = inputs
        return pq_scores(query, codes, self.codebooks, rest[0] if rest else None)

    def get_config(self):
        return {**super().get_config(), "codebook_shape": list(self.codebook_shape)}


def simhash_codes(vectors, planes):
    """SimHash bits: sign of the projections on random hyperplanes, vectors [..., D] @ planes [D, nb] > 0 ->
    bool [..., nb]."""
    vectors = tf.convert_to_tensor(vectors, tf.float32)
    return tf.tensordot(vectors, tf.cast(planes, tf.float32), axes=1) > 0


def pack_bits(bits):
    """bool [..., nb] (nb % 8 == 0) -> uint8 [..., nb / 8], most significant bit first (np.packbits' order)."""
    bits = tf.convert_to_tensor(bits)
    nb = bits.shape[-1]
    if nb is None or nb % 8:
        raise ValueError(f"pack_bits: the number of bits must be a known multiple of 8, got {nb}")
    grouped = tf.reshape(tf.cast(bits, tf.int32), tf.concat([tf.shape(bits)[:-1], [nb // 8, 8]], 0))
    return tf.cast(tf.reduce_sum(grouped * tf.constant([128, 64, 32, 16, 8, 4, 2, 1]), -1), tf.uint8)


def _signs(bits):
    """bool [..., nb] or packed uint8 [..., nb / 8] -> +-1 float32 [..., nb]."""
    bits = tf.convert_to_tensor(bits)
    if bits.dtype == tf.uint8:
        shifts = tf.constant([7, 6, 5, 4, 3, 2, 1, 0], tf.uint8)
        unpacked = tf.bitwise.bitwise_and(tf.bitwise.right_shift(bits[..., None], shifts), 1)
        bits = tf.reshape(unpacked, tf.concat([tf.shape(bits)[:-1], [bits.shape[-1] * 8]], 0))
    return tf.cast(bits, tf.float32) * 2.0 - 1.0


def hamming_matches(query_bits, key_bits, weights=None):
    """ETA's Hamming score = number of equal bits (num_bits - Hamming distance), computed exactly as
    (nb + <s_q, s_k>) / 2 with +-1 signs (one matmul, no popcount op needed).

    query_bits [B, nb]; key_bits [B, L, nb] (per-example histories) or [L, nb] (one history shared by the batch).
    With weights [M], key_bits carry a modality axis, [B, L, M, nb] / [L, M, nb], and the per-modality match counts
    are summed with the weights. Bits are bool or packed uint8 (`pack_bits`). -> [B, L] float32.
    """
    q, k = _signs(query_bits), _signs(key_bits)
    nb = float(q.shape[-1])
    if weights is None:
        dots = tf.matmul(q, k, transpose_b=True) if k.shape.rank == 2 else tf.einsum("bn,bln->bl", q, k)
        return (nb + dots) / 2.0
    dots = tf.einsum("bn,lmn->blm", q, k) if k.shape.rank == 3 else tf.einsum("bn,blmn->blm", q, k)
    return tf.reduce_sum((nb + dots) / 2.0 * tf.cast(weights, tf.float32), -1)


@keras.utils.register_keras_serializable(package="tfrec_zoo")
class SimHash(keras.layers.Layer):
    """SimHash bits of [..., D] vectors with `num_bits` seeded random hyperplanes kept as a non-trainable weight.
    Returns bool [..., num_bits], or packed uint8 [..., num_bits / 8] with `packed=True`."""

    def __init__(self, num_bits: int = 64, seed: int = 0, packed: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.num_bits, self.seed, self.packed = int(num_bits), int(seed), bool(packed)

    def build(self, input_shape):
        planes = simhash_planes(int(input_shape[-1]), self.num_bits, self.seed)
        self.planes = self.add_weight("planes", shape=planes.shape, trainable=False,
                                      initializer=keras.initializers.Constant(planes))
        super().build(input_shape)

    def call(self, vectors):
        bits = simhash_codes(vectors, self.planes)
        return pack_bits(bits) if self.packed else bits

    def get_config(self):
        return {**super().get_config(), "num_bits": self.num_bits, "seed": self.seed, "packed": self.packed}


def topk_indices(scores, mask, k: int):
    """Top-k steps of scores [B, L] among mask [B, L] (True = valid step) -> (indices [B, k] int32, valid [B, k]
    bool). Padded steps score -inf so they never precede a valid one; when k exceeds the valid steps they come last
    (valid False), and when k > L the tail is index 0 with valid False."""
    scores = tf.convert_to_tensor(scores, tf.float32)
    mask = tf.cast(mask, tf.bool)
    masked = tf.where(mask, scores, tf.fill(tf.shape(scores), float("-inf")))
    length = tf.shape(scores)[1]
    _, idx = tf.math.top_k(masked, k=tf.minimum(k, length), sorted=True)
    valid = tf.gather(mask, idx, batch_dims=1)
    pad = [[0, 0], [0, tf.maximum(k - length, 0)]]
    idx, valid = tf.pad(idx, pad), tf.pad(valid, pad, constant_values=False)
    return tf.ensure_shape(idx, [None, k]), tf.ensure_shape(valid, [None, k])
