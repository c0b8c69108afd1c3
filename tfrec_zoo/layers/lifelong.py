"""Layers for lifelong query-item sequences (SEMINAR and its baselines SIM, ETA, TWIN, QIN).

* `ModalityGate`: SEMINAR's global multi-modal fusion: softmax over one learnable logit per modality, the same
  weights for every item (the official code computes softmax(Linear(c)) of a learnable vector c: the same family).
* `PairFusion`: a query-item pair as alpha * query + (1 - alpha) * item (SEMINAR's "weighed_average", alpha 0.5).
* `GSUScores`: the general search unit's relevance of every history step to the target, for the baselines whose
  selection is shared by all heads: SIM (inner product in the embedding space), ETA (SimHash Hamming matches),
  QIN (two stages: query relevance, then item relevance among the best `first_k`).
* `MultiHeadTargetAttention`: TWIN / SEMINAR: per-head projections W_Q, W_K, W_V; each head picks its own top-K
  of the whole sequence by its exact score (W_Q t) . (W_K x_l) (or takes a shared selection from `GSUScores`), then
  softmax attention over the K retrieved steps with the same projections (TWIN's consistency), W_O over the heads.

Padded steps are never selected ahead of valid ones; ties prefer recent steps (a 1e-6 * position bonus), so an
empty-query QIN stage or a coarse SimHash keeps the most recent items.
"""
from __future__ import annotations

import math

from .._tf import keras, tf
from .quantization import hamming_matches, simhash_codes, topk_indices

_NEG = -1e9


def _recency(mask):
    """[B, L] tie-breaker: 1e-6 * position / L (later steps win ties)."""
    length = tf.shape(mask)[1]
    return 1e-6 * tf.cast(tf.range(length), tf.float32)[None, :] / tf.cast(tf.maximum(length, 1), tf.float32)


def masked_top_k(scores, mask, k: int):
    """(indices [B, k] int32, valid [B, k] bool): the k best valid steps (padding last, never ahead of a valid one),
    ties to the most recent; k is cut to the (static) sequence length."""
    mask = tf.cast(mask, tf.bool)
    k = min(int(k), int(scores.shape[-1])) if scores.shape[-1] is not None else int(k)
    return topk_indices(scores + _recency(mask), mask, k)


@keras.utils.register_keras_serializable(package="tfrec_zoo")
class ModalityGate(keras.layers.Layer):
    """[x_1, ..., x_M] (same shape) -> sum_m softmax(logits)_m x_m; `gate_weights()` returns the softmax."""

    def build(self, input_shape):
        self.logits = self.add_weight("logits", shape=[len(input_shape)], initializer="zeros")
        super().build(input_shape)

    def gate_weights(self):
        return tf.nn.softmax(self.logits)

    def call(self, inputs):
        w = self.gate_weights()
        return tf.add_n([w[m] * x for m, x in enumerate(inputs)])


@keras.utils.register_keras_serializable(package="tfrec_zoo")
class PairFusion(keras.layers.Layer):
    """(query, item) -> alpha * query + (1 - alpha) * item; an empty query is a zero vector."""

    def __init__(self, alpha: float = 0.5, **kwargs):
        super().__init__(**kwargs)
        self.alpha = float(alpha)

    def call(self, inputs):
        query, item = inputs
        return self.alpha * query + (1.0 - self.alpha) * item

    def get_config(self):
        return {**super().get_config(), "alpha": self.alpha}


@keras.utils.register_keras_serializable(package="tfrec_zoo")
class GSUScores(keras.layers.Layer):
    """Relevance [B, L] of each history step to the target, shared by all heads.

    kind "sim": target . step (SIM's soft search, in the model's embedding space); "eta": the number of equal bits
    of `bits`-bit SimHash signatures (fixed random hyperplanes, ETA); "qin": stage 1 = target query . step query,
    the best `first_k` steps kept, stage 2 = target item . step item among them (QIN), others -1e9.
    Inputs: sim / eta (target [B, D], steps [B, L, D], mask); qin (target query, step queries, target item,
    step items, mask).
    """

    def __init__(self, kind: str, bits: int = 16, first_k: int = 80, seed: int = 0, **kwargs):
        super().__init__(**kwargs)
        if kind not in ("sim", "eta", "qin"):
            raise ValueError(f"GSUScores: kind must be sim, eta or qin, got {kind!r}")
        self.kind, self.bits, self.first_k, self.seed = kind, int(bits), int(first_k), int(seed)

    def build(self, input_shape):
        if self.kind == "eta":
            d = int(input_shape[0][-1])
            self.planes = self.add_weight("planes", shape=[d, self.bits], trainable=False,
                                          initializer=keras.initializers.RandomNormal(seed=self.seed))
        super().build(input_shape)

    def call(self, inputs):
        if self.kind == "sim":
            target, steps, _ = inputs
            return tf.einsum("bd,bld->bl", target, steps)
        if self.kind == "eta":
            target, steps, _ = inputs
            return hamming_matches(simhash_codes(target, self.planes), simhash_codes(steps, self.planes))
        tq, sq, ti, si, mask = inputs
        first, valid = masked_top_k(tf.einsum("bd,bld->bl", tq, sq), mask, self.first_k)
        item_scores = tf.einsum("bd,bld->bl", ti, si)
        kept = tf.scatter_nd(
            tf.stack([tf.repeat(tf.range(tf.shape(first)[0]), tf.shape(first)[1]), tf.reshape(first, [-1])], 1),
            tf.reshape(tf.cast(valid, tf.float32), [-1]), tf.shape(item_scores))
        return tf.where(kept > 0, item_scores, _NEG)

    def get_config(self):
        return {**super().get_config(), "kind": self.kind, "bits": self.bits, "first_k": self.first_k,
                "seed": self.seed}


@keras.utils.register_keras_serializable(package="tfrec_zoo")
class MultiHeadTargetAttention(keras.layers.Layer):
    """GSU top-K + ESU multi-head target attention (TWIN / SEMINAR).

    Inputs: (target [B, D], steps [B, L, D], mask [B, L]) or, with a shared selection, (..., scores [B, L]).
    Output [B, D]. `top_k` >= L (or 0) attends over the whole sequence (the exact reference path).
    Returns only the output; `selected(inputs)` gives each head's retrieved indices [B, H, K] (for recall checks).

    Approximate GSU (`pq`: {"codebook_shape": [M, C, K, d], "item_rows": V, "query_rows": Vq, "alpha": a}): each
    step is x_l = w_item * item_l + w_query * present_l * query_l (SEMINAR's pair fusion), items and queries are
    product-quantised (per-id codes [V, C] precomputed from the trained tables, codebooks [M, C, K, d]), and each
    head scores a step by asymmetric distance: LUT_h = <q'_h sub-vectors, codewords> built once per request, then
    score_{h,l} = w_item * sum_c LUT_h,item[c, code_c(item_l)] + w_query * present_l * sum_c LUT_h,query[...],
    with q'_h = W_K^h^T (W_Q^h t + b_Q^h) so the ranking matches the exact head score's. The top-K steps then go
    through the exact ESU. Inputs then: (target, steps, mask, item_rows [B, L], query_rows [B, L], present [B, L])
    (the last two only when M = 2). Codebooks and codes are non-trainable weights (`set_pq`).
    """

    def __init__(self, heads: int = 4, top_k: int = 50, pq: dict | None = None, **kwargs):
        super().__init__(**kwargs)
        self.heads, self.top_k = int(heads), int(top_k)
        self.pq = dict(pq) if pq else None
        # benchmarks only (eager calls): selection_fn(q_step [B,H,D], bias [B,H], steps, mask, k) -> (idx, valid)
        # replaces the GSU, e.g. to measure the model's quality with a ScaNN or SimHash selection
        self.selection_fn = None

    def build(self, input_shape):
        d = int(input_shape[0][-1])
        self.dim = d
        h = self.heads
        init = "glorot_uniform"         # a fresh initializer per weight
        self.wq = self.add_weight("wq", shape=[h, d, d], initializer=init)
        self.wk = self.add_weight("wk", shape=[h, d, d], initializer=init)
        self.wv = self.add_weight("wv", shape=[h, d, d], initializer=init)
        self.bq = self.add_weight("bq", shape=[h, d], initializer="zeros")
        self.bk = self.add_weight("bk", shape=[h, d], initializer="zeros")
        self.bv = self.add_weight("bv", shape=[h, d], initializer="zeros")
        self.wo = self.add_weight("wo", shape=[h * d, d], initializer=init)
        self.bo = self.add_weight("bo", shape=[d], initializer="zeros")
        if self.pq:
            m, c, k, sub = (int(x) for x in self.pq["codebook_shape"])
            self.pq_codebooks = self.add_weight("pq_codebooks", shape=[m, c, k, sub], trainable=False,
                                                initializer="zeros")
            self.pq_item_codes = self.add_weight("pq_item_codes", shape=[int(self.pq["item_rows"]), c],
                                                 dtype="int32", trainable=False, initializer="zeros")
            if m > 1:
                self.pq_query_codes = self.add_weight("pq_query_codes", shape=[int(self.pq["query_rows"]), c],
                                                      dtype="int32", trainable=False, initializer="zeros")
        super().build(input_shape)

    def set_pq(self, codebooks, item_codes, query_codes=None) -> None:
        """Load trained codebooks [M, C, K, d] and per-id codes (items [V, C], queries [Vq, C])."""
        self.pq_codebooks.assign(codebooks)
        self.pq_item_codes.assign(item_codes.astype("int32"))
        if query_codes is not None:
            self.pq_query_codes.assign(query_codes.astype("int32"))

    def _pq_scores(self, q_step, bias, inputs):
        """[B, H, L] approximate head scores from the steps' PQ codes (see the class docstring)."""
        from .quantization import pq_scores

        alpha = float(self.pq.get("alpha", 0.0))
        multi = self.pq_codebooks.shape[0] > 1

        def part(codes_table, rows, m):                                          # [B, H, L]
            codes = tf.gather(codes_table, tf.cast(rows, tf.int32))              # [B or 1, L, C]
            one_history = tf.logical_and(tf.equal(tf.shape(codes)[0], 1), tf.shape(q_step)[0] > 1)
            # one [1, L] history for B targets: the shared layout gathers L rows of B*H partial scores
            return tf.cond(one_history, lambda: pq_scores(q_step, codes[0], self.pq_codebooks[m]),
                           lambda: pq_scores(q_step, codes, self.pq_codebooks[m]))

        scores = (1.0 - alpha if multi else 1.0) * part(self.pq_item_codes, inputs[3], 0)
        if multi:
            scores += alpha * tf.cast(inputs[5], scores.dtype)[:, None, :] * part(self.pq_query_codes, inputs[4], 1)
        return scores + bias[..., None]

    def query_in_step_space(self, target):
        """(q'_h = W_K^h^T (W_Q^h t + b_Q^h) [B, H, D], (W_Q^h t + b_Q^h) . b_K^h [B, H]): the head score of a step
        x is q'_h . x + that bias."""
        qh = tf.einsum("bd,hde->bhe", target, self.wq) + self.bq                 # [B, H, D]
        return tf.einsum("bhe,hde->bhd", qh, self.wk), tf.reduce_sum(qh * self.bk, -1)

    def head_scores(self, target, steps):
        """[B, H, L] exact per-head scores (W_Q t + b_Q) . (W_K x_l + b_K), without materialising W_K x_l.
        A [1, L, D] history (one user's, scored against B targets: the rank signature) broadcasts."""
        q_step, bias = self.query_in_step_space(target)
        return tf.matmul(q_step, steps, transpose_b=True) + bias[..., None]

    def selected(self, inputs):
        target, steps, mask = inputs[:3]
        length = int(steps.shape[1])
        k = length if self.top_k <= 0 or self.top_k >= length else self.top_k
        if len(inputs) > 3 and not self.pq:                                     # a shared GSU selection
            idx, valid = masked_top_k(inputs[3], mask, k)
            return tf.tile(idx[:, None], [1, self.heads, 1]), tf.tile(valid[:, None], [1, self.heads, 1])
        if self.selection_fn is not None:
            return self.selection_fn(*self.query_in_step_space(target), steps, mask, k)
        if self.pq:
            scores = self._pq_scores(*self.query_in_step_space(target), inputs)  # [B, H, L] from codes
        else:
            scores = self.head_scores(target, steps)                             # [B, H, L]
        b = tf.shape(scores)[0]
        mask = tf.broadcast_to(tf.cast(mask, tf.bool), tf.shape(scores)[::2])   # a shared [1, L] history's mask
        flat_mask = tf.repeat(mask, self.heads, axis=0)
        idx, valid = masked_top_k(tf.reshape(scores, [b * self.heads, -1]), flat_mask, k)
        return tf.reshape(idx, [b, self.heads, k]), tf.reshape(valid, [b, self.heads, k])

    def call(self, inputs):
        target, steps = inputs[0], inputs[1]
        idx, valid = self.selected(inputs)                                       # [B, H, K]
        qh = tf.einsum("bd,hde->bhe", target, self.wq) + self.bq                 # [B, H, D]

        def per_row():                                                           # project the K picked steps
            picked = tf.gather(steps, idx, batch_dims=1)                         # [B, H, K, D]
            return (tf.einsum("bhkd,hde->bhke", picked, self.wk) + self.bk[None, :, None],
                    tf.einsum("bhkd,hde->bhke", picked, self.wv) + self.bv[None, :, None])

        def shared():          # one [1, L, D] history for B targets: project its L steps once, then pick
            at = tf.transpose(idx, [1, 0, 2])                                    # [H, B, K]
            k_all = tf.einsum("ld,hde->hle", steps[0], self.wk) + self.bk[:, None]
            v_all = tf.einsum("ld,hde->hle", steps[0], self.wv) + self.bv[:, None]
            return (tf.transpose(tf.gather(k_all, at, batch_dims=1), [1, 0, 2, 3]),
                    tf.transpose(tf.gather(v_all, at, batch_dims=1), [1, 0, 2, 3]))

        one_history = tf.logical_and(tf.equal(tf.shape(steps)[0], 1), tf.shape(idx)[0] > 1)
        kh, vh = tf.cond(one_history, shared, per_row)                          # [B, H, K, D] each
        logits = tf.einsum("bhe,bhke->bhk", qh, kh) / math.sqrt(self.dim)
        logits = tf.where(valid, logits, _NEG)
        att = tf.nn.softmax(logits, -1) * tf.cast(valid, logits.dtype)          # an empty history attends to nothing
        out = tf.einsum("bhk,bhke->bhe", att, vh)                                # [B, H, D]
        out = tf.reshape(out, [-1, self.heads * self.dim])
        return tf.matmul(out, self.wo) + self.bo

    def get_config(self):
        return {**super().get_config(), "heads": self.heads, "top_k": self.top_k, "pq": self.pq}


@keras.utils.register_keras_serializable(package="tfrec_zoo")
class NonEmpty(keras.layers.Layer):
    """ids (any shape) -> float 1.0 where the id is present ("" for strings, 0 for integers means empty)."""

    def call(self, ids):
        empty = tf.constant("", tf.string) if ids.dtype == tf.string else tf.zeros([], ids.dtype)
        return tf.cast(tf.not_equal(ids, empty), tf.float32)


@keras.utils.register_keras_serializable(package="tfrec_zoo")
class ModalityTables(keras.layers.Layer):
    """Multi-modal vectors of an id (an item, a query) computed table-first: each modality's [V, D] table is built
    once per call from the whole vocabulary, then gathered at the requested rows, so a 1,000-step history costs a
    gather instead of 1,000 text projections per example (V x 384 x D flops instead of B x L x 384 x D).

    Modalities (`specs`, one per modality, in order):
      ("id", None)                        the id's own embedding (`id_embedding`, a built Embedding layer, shared)
      ("dense", "name")                   a frozen float table [V, d] (text / vector side feature) -> Dense(D)
      ("multi_hot", "name")               frozen [V, A] row indices into `attr_embeddings[name]` + lengths [V]:
                                          the mean of the valid attribute embeddings -> Dense(D) if d != D
    Each modality is then multiplied by its G projection (D x D, identity init) when `modality_projection`, and the
    fused vector is the softmax-gated sum (one logit per modality, as SEMINAR's global gate).
    `cached` (serving): the [V, D] tables are read from non-trainable copies filled once by `fill_cache()` after
    the weights are final, instead of recomputed per call (ml-latest-small: 9,125 titles x 384 x 64 multiply-adds
    per request).
    `frozen_parts` makes weights non-trainable from the start (restore-by-name still fills them), as the official
    code's fine-tuning options: "gproj" (G, `freeze_psu_projection`), "proj" (the side features' d -> D projections,
    `freeze_multi_modal_projection`). The id / attribute embeddings are sub-layers: freeze them by name (`^emb_`).

    call(rows_list) -> [fused(rows) for rows in rows_list] + [modality m (rows_list[0]) for m] (the per-modality
    vectors of the first rows tensor, e.g. the history, for the alignment objective).
    """

    PARTS = ("proj", "gproj")

    def __init__(self, modalities, dim: int, modality_projection: bool = False, id_embedding=None,
                 frozen: dict | None = None, attr_embeddings: dict | None = None, n_rows: int = 0,
                 frozen_parts=(), cached: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.cached = bool(cached)
        bad = sorted(set(frozen_parts) - set(self.PARTS))
        if bad:
            raise ValueError(f"ModalityTables: frozen_parts {bad} are not among {list(self.PARTS)}")
        self.frozen_parts = tuple(frozen_parts)
        self.modalities = [tuple(m) for m in modalities]
        self.dim, self.modality_projection, self.n_rows = int(dim), bool(modality_projection), int(n_rows)
        self.id_embedding = id_embedding
        self.attr_embeddings = dict(attr_embeddings or {})
        self._frozen_values = dict(frozen or {})

    def build(self, input_shape):
        self.frozen, self.proj, self.gproj = {}, {}, {}
        for kind, name in self.modalities:
            key = name or "id"
            if kind == "dense":
                v = self._frozen_values.get(name)
                width = v.shape[1] if v is not None else None
                self.frozen[name] = self.add_weight(f"side_{name}", shape=[self.n_rows, width], trainable=False,
                                                    initializer=keras.initializers.Constant(v) if v is not None
                                                    else "zeros")
                in_dim = width
            elif kind == "multi_hot":
                idx, lens = self._frozen_values.get(name), self._frozen_values.get(name + "_len")
                self.frozen[name] = self.add_weight(f"side_{name}", shape=list(idx.shape), dtype="int32",
                                                    trainable=False, initializer=keras.initializers.Constant(idx))
                self.frozen[name + "_len"] = self.add_weight(f"side_{name}_len", shape=[self.n_rows], dtype="int32",
                                                             trainable=False,
                                                             initializer=keras.initializers.Constant(lens))
                in_dim = int(self.attr_embeddings[name].output_dim)
            else:
                in_dim = int(self.id_embedding.output_dim)
            if kind == "dense" or in_dim != self.dim:
                train_proj = "proj" not in self.frozen_parts
                self.proj[key] = (self.add_weight(f"proj_{key}_kernel", shape=[in_dim, self.dim],
                                                  trainable=train_proj),
                                  self.add_weight(f"proj_{key}_bias", shape=[self.dim], initializer="zeros",
                                                  trainable=train_proj))
            if self.modality_projection:
                self.gproj[key] = self.add_weight(f"gproj_{key}", shape=[self.dim, self.dim],
                                                  initializer=keras.initializers.Identity(),
                                                  trainable="gproj" not in self.frozen_parts)
        if len(self.modalities) > 1:
            self.gate_logits = self.add_weight("gate_logits", shape=[len(self.modalities)], initializer="zeros")
        if self.cached:
            self.cached_fused = self.add_weight("cached_fused", shape=[self.n_rows, self.dim], trainable=False,
                                                initializer="zeros")
            self.cached_tables = self.add_weight("cached_tables", shape=[len(self.modalities), self.n_rows, self.dim],
                                                 trainable=False, initializer="zeros")
        self._frozen_values = {}
        super().build(input_shape)

    def gate_weights(self):
        return tf.nn.softmax(self.gate_logits) if len(self.modalities) > 1 else tf.ones([1])

    def tables(self) -> list:
        """[V, D] per modality (after projections)."""
        out = []
        for kind, name in self.modalities:
            key = name or "id"
            if kind == "id":
                t = self.id_embedding.embeddings
            elif kind == "dense":
                t = self.frozen[name]
            else:
                emb = tf.gather(self.attr_embeddings[name].embeddings, self.frozen[name])      # [V, A, d]
                m = tf.cast(tf.sequence_mask(self.frozen[name + "_len"], tf.shape(emb)[1]), emb.dtype)
                t = tf.math.divide_no_nan(tf.reduce_sum(emb * m[..., None], 1), tf.reduce_sum(m, 1, keepdims=True))
            if key in self.proj:
                t = tf.matmul(t, self.proj[key][0]) + self.proj[key][1]
            if key in self.gproj:
                t = tf.matmul(t, self.gproj[key])
            out.append(t)
        return out

    def fill_cache(self) -> None:
        """Copy the current tables into the `cached` layer's non-trainable weights (call once the weights are final)."""
        tables = self.tables()
        w = self.gate_weights()
        self.cached_fused.assign(tf.add_n([w[m] * t for m, t in enumerate(tables)]))
        self.cached_tables.assign(tf.stack(tables))

    def call(self, rows_list):
        if self.cached:
            fused, tables = self.cached_fused, tf.unstack(self.cached_tables)
        else:
            tables = self.tables()
            w = self.gate_weights()
            fused = tf.add_n([w[m] * t for m, t in enumerate(tables)])
        rows_list = [tf.cast(r, tf.int32) for r in rows_list]
        return [tf.gather(fused, r) for r in rows_list] + [tf.gather(t, rows_list[0]) for t in tables]

    def get_config(self):
        return {**super().get_config(), "modalities": self.modalities, "dim": self.dim,
                "modality_projection": self.modality_projection, "n_rows": self.n_rows,
                "frozen_parts": list(self.frozen_parts), "cached": self.cached}


@keras.utils.register_keras_serializable(package="tfrec_zoo")
class QueryDropout(keras.layers.Layer):
    """Training only: presence [B] -> presence * Bernoulli(1 - rate), i.e. the query is emptied with prob `rate`."""

    def __init__(self, rate: float, **kwargs):
        super().__init__(**kwargs)
        self.rate = float(rate)

    def call(self, present, training=None):
        if not training or self.rate <= 0:
            return present
        keep = tf.cast(tf.random.uniform(tf.shape(present)) >= self.rate, present.dtype)
        return present * keep

    def get_config(self):
        return {**super().get_config(), "rate": self.rate}
