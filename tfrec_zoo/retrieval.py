"""Top-K retrieval over item vectors: exact (brute force, TF ops only: runs on stock TF Serving) and ScaNN, as
indexes for evaluation and as SavedModels whose `serving_default` maps a query tower's raw inputs to the top-K item
ids and scores. ScaNN's SavedModel needs its custom ops (`import scann` before loading; a ScaNN build of TF Serving).

Multi-interest query towers ({"interests": [B, K, d], "mask": [B, K]}) score an item by its best active interest.
Both top-K exports (exact and ScaNN) answer them with the same contract: each row's top-k distinct items by that
score; a slot with no item behind it (a row whose interests are all masked, or a ScaNN search that found fewer than
k candidates) holds PAD_ID (-1 for integer item ids, "" for string ids) and PAD_SCORE (the lowest finite float32:
below every real score and valid JSON, which -inf is not). A single-vector tower's exports are unchanged.
"""
from __future__ import annotations

import math
import numpy as np

from ._tf import tf

PAD_SCORE = float(np.finfo(np.float32).min)   # the score of a top-K slot with no item (multi-interest exports)
PAD_INT_ID, PAD_STR_ID = -1, b""              # ... and its id, for integer / string item ids

# -- query vectors: one per query, or K interests per query -------------------------------------------------------------
def as_interests(output) -> tuple[np.ndarray, np.ndarray]:
    """A query tower's output as ([n, K, d] vectors, [n, K] bool mask): [n, d] is K = 1; [n, K, d] has every
    interest valid; {"interests": [n, K, d], "mask": [n, K]} says which are (a user with fewer interests)."""
    if isinstance(output, dict):
        vectors, mask = np.asarray(output["interests"], np.float32), np.asarray(output["mask"]).astype(bool)
    else:
        vectors = np.asarray(output, np.float32)
        if vectors.ndim == 2:
            vectors = vectors[:, None, :]
        mask = np.ones(vectors.shape[:2], bool)
    if vectors.ndim != 3 or mask.shape != vectors.shape[:2]:
        raise ValueError(f"query vectors must be [n, d] or [n, K, d] with a [n, K] mask; got {vectors.shape} and "
                         f"mask {mask.shape}")
    return vectors, mask


def merge_interest_results(ids: np.ndarray, scores: np.ndarray, mask: np.ndarray, k: int
                           ) -> tuple[np.ndarray, np.ndarray]:
    """Per-interest top lists ([n, K, k'] positions and scores) -> each query's top-k distinct items by their best
    score over its valid interests (what max-over-interests scoring ranks); -1 pads rows with fewer items."""
    n, n_int, width = ids.shape
    scores = np.where(mask[:, :, None], scores, -np.inf).reshape(n, n_int * width)
    ids = np.where(mask[:, :, None], ids, -1).reshape(n, n_int * width)
    order = np.argsort(-scores, axis=1, kind="stable")
    ids, scores = np.take_along_axis(ids, order, 1), np.take_along_axis(scores, order, 1)
    out_ids, out_scores = np.full((n, k), -1, np.int64), np.full((n, k), -np.inf, np.float32)
    for r in range(n):
        row = ids[r]
        valid = (row >= 0) & np.isfinite(scores[r])
        _, first = np.unique(row[valid], return_index=True)      # the first (best) occurrence of each item
        keep = np.sort(np.flatnonzero(valid)[first])[:k]
        out_ids[r, :len(keep)], out_scores[r, :len(keep)] = row[keep], scores[r][keep]
    return out_ids, out_scores


def search_interests(index, vectors: np.ndarray, mask: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k of queries with K interests each through any index's `.search`: K = 1 is the index's own answer."""
    n, n_int, d = vectors.shape
    if n_int == 1:
        ids, scores = index.search(vectors[:, 0], k)
        ids = np.where(mask[:, :1], ids, -1)
        return ids, np.where(mask[:, :1], scores, -np.inf)
    # only the valid interests are searched (a user with 1 of K costs one query); the others stay -1 / -inf
    active = np.flatnonzero(mask.reshape(-1))
    if not len(active):
        return np.full((n, k), -1, np.int64), np.full((n, k), -np.inf, np.float32)
    found, found_scores = index.search(vectors.reshape(n * n_int, d)[active], k)
    ids = np.full((n * n_int, found.shape[1]), -1, np.int64)
    scores = np.full((n * n_int, found.shape[1]), -np.inf, np.float32)
    ids[active], scores[active] = found, found_scores
    return merge_interest_results(ids.reshape(n, n_int, -1), scores.reshape(n, n_int, -1), mask, k)


# -- indexes -----------------------------------------------------------------------------------------------------------
class BruteForceIndex:
    """Exact top-K by dot product: TF matmul + tf.math.top_k over query chunks. `search` returns (positions, scores)
    as numpy, positions into the indexed vectors.

    A chunk's score block is [chunk, N]: the chunk shrinks so that block stays under `max_block_bytes` (default
    256 MB: 64 queries at 1M items), whatever the corpus size; 1,024 queries x 1M items took 4.1 GB before."""

    def __init__(self, vectors, chunk: int = 1024, max_block_bytes: int = 256 << 20):
        self.vectors = tf.constant(np.asarray(vectors, np.float32))
        self.n = int(self.vectors.shape[0])
        self.chunk = max(1, min(int(chunk), max_block_bytes // (4 * max(self.n, 1))))
        self._fn = tf.function(self._topk, reduce_retracing=True)

    def _topk(self, q, k):
        scores, idx = tf.math.top_k(tf.matmul(q, self.vectors, transpose_b=True), k=k)
        return idx, scores

    def search(self, queries, k: int) -> tuple[np.ndarray, np.ndarray]:
        queries = np.asarray(queries, np.float32)
        k = min(int(k), self.n)
        ids, scores = [], []
        for lo in range(0, len(queries), self.chunk):
            i, s = self._fn(tf.constant(queries[lo:lo + self.chunk]), tf.constant(k))
            ids.append(i.numpy())
            scores.append(s.numpy())
        return np.concatenate(ids).astype(np.int64), np.concatenate(scores)


def scann_params(n_items: int, k: int = 100) -> dict:
    """ScaNN settings tuned on this project's measurements (benchmarks/serving_retrieval.py): a tree with ~sqrt(N)
    leaves (at most 1 per 100 items), searching enough leaves to score max(7.5% of N, 200 K) items, asymmetric
    hashing with 2 dims per block and exact re-ordering of max(8K, 300) candidates.

    Measured on 2 CPUs, K = 100, 1M x 64 vectors synthesised from trained amazon-book item vectors (see the
    benchmark): these settings (1000 leaves, 75 searched, re-order 800) gave recall@100 0.962 vs exact at 10.9-12.4x
    the queries/s of TF brute force (batch 256; run-to-run spread); 50 searched / re-order 1000: 0.946 at 14.3x;
    tfrs' ScaNN defaults (100 leaves, 10 searched, no re-ordering): 0.54. On 5.3k trained vectors, searching 8 of
    53 leaves gave 0.72, 30 of 53 0.98; on 50k perturbed vectors (K = 50), 7.5% of the leaves gave 0.89, 22% 0.99.
    Multi-interest users (`--part multi`: K_u uniform in 1..4, real query vectors as interests, merged top-100,
    batch 64 users, a loaded 2-CPU machine): on the 1M set these settings gave recall@100 0.968 at 38x the users/s
    of the exact export (which scores all K slots); on the 24,909 real items 0.9996 at only 1.4x (searching 40 of
    the 158 leaves: 0.969 at 2.7x): at that size the exact top-K is as good a serving choice.
    """
    leaves = max(int(min(round(math.sqrt(n_items)), n_items // 100)), 1)
    search = min(leaves, max(1, int(math.ceil(leaves * max(0.075, 200 * k / max(n_items, 1))))))
    return {"num_leaves": leaves, "num_leaves_to_search": search, "dimensions_per_block": 2,
            "reorder": int(min(n_items, max(8 * k, 300))), "training_sample_size": int(min(n_items, 250_000)),
            "anisotropic_quantization_threshold": 0.2}


class ScannIndex:
    """ScaNN (scann's TF ops) over dot product. `search` returns (positions, scores) like BruteForceIndex.

    Parameters default to `scann_params(N, k)`; `num_leaves=0` builds brute-force ScaNN scoring (no tree).
    """

    def __init__(self, vectors, k: int = 100, *, num_leaves: int | None = None, num_leaves_to_search: int | None = None,
                 dimensions_per_block: int | None = None, reorder: int | None = None,
                 training_sample_size: int | None = None, anisotropic_quantization_threshold: float | None = None,
                 training_threads: int = 0, parallel: bool = True):
        from scann import scann_ops

        vectors = np.asarray(vectors, np.float32)
        self.n = len(vectors)
        p = scann_params(self.n, k)
        given = {"num_leaves": num_leaves, "num_leaves_to_search": num_leaves_to_search,
                 "dimensions_per_block": dimensions_per_block, "reorder": reorder,
                 "training_sample_size": training_sample_size,
                 "anisotropic_quantization_threshold": anisotropic_quantization_threshold}
        p.update({key: v for key, v in given.items() if v is not None})
        p["reorder"] = int(min(max(p["reorder"], k), self.n))
        self.params, self.k, self.parallel = p, int(min(k, self.n)), parallel
        builder = scann_ops.builder(tf.constant(vectors), self.k, "dot_product")
        if p["num_leaves"] and p["num_leaves"] > 1:
            builder = builder.tree(num_leaves=p["num_leaves"], num_leaves_to_search=p["num_leaves_to_search"],
                                   training_sample_size=p["training_sample_size"])
        builder = builder.score_ah(p["dimensions_per_block"],
                                   anisotropic_quantization_threshold=p["anisotropic_quantization_threshold"])
        builder = builder.reorder(p["reorder"])
        builder.set_n_training_threads(training_threads)
        self.searcher = builder.build()

    def search(self, queries, k: int | None = None, chunk: int = 4096) -> tuple[np.ndarray, np.ndarray]:
        k = min(int(k or self.k), self.n)
        pre = max(self.params["reorder"], k)
        queries = np.asarray(queries, np.float32)
        ids, scores = [], []
        for lo in range(0, len(queries), chunk):
            q = tf.constant(queries[lo:lo + chunk])
            fn = self.searcher.search_batched_parallel if self.parallel else self.searcher.search_batched
            r = fn(q, final_num_neighbors=k, pre_reorder_num_neighbors=pre)
            ids.append(r.indices.numpy())
            scores.append(r.distances.numpy())
        return np.concatenate(ids).astype(np.int64), np.concatenate(scores)


# -- exportable top-K models -------------------------------------------------------------------------------------------
def _query_signature(query_model) -> dict:
    return {name: tf.TensorSpec(t.shape, t.dtype, name=name)
            for name, t in zip(query_model.input_names, query_model.inputs)}


class TopKModel(tf.Module):
    """A query tower + an index as one SavedModel-able module: `model(features) -> {"ids", "scores"}` [B, K].

    `kind` is "brute_force" (stock TF ops) or "scann" (needs scann's ops wherever it is loaded).
    """

    def __init__(self, query_model, item_ids, k: int, kind: str, name: str | None = None):
        super().__init__(name=name)
        self.query_model = query_model
        self.kind = kind
        self.k = int(k)
        self.item_ids = tf.Variable(np.asarray(item_ids), trainable=False, name="item_ids")
        self.serve = tf.function(self._serve, input_signature=[_query_signature(query_model)])

    def __call__(self, features: dict) -> dict:
        sig = self.serve.input_signature[0]
        return self.serve({k: tf.convert_to_tensor(features[k], dtype=s.dtype) for k, s in sig.items()})

    def _serve(self, features):
        q = self.query_model(features, training=False)
        idx, scores = self._topk(q)
        if not self._multi(q):       # one vector per query: every slot holds an item (as before multi-interest)
            return {"ids": tf.gather(self.item_ids, idx), "scores": scores}
        # -1 / -inf mark slots with no item behind them: PAD_ID and PAD_SCORE there (module docstring)
        filled = (idx >= 0) & (scores > -np.inf)
        pad_id = PAD_STR_ID if self.item_ids.dtype == tf.string else PAD_INT_ID
        ids = tf.gather(self.item_ids, tf.maximum(idx, 0))
        return {"ids": tf.where(filled, ids, tf.constant(pad_id, self.item_ids.dtype)),
                "scores": tf.where(filled, scores, tf.constant(PAD_SCORE, scores.dtype))}

    @staticmethod
    def _multi(q) -> bool:
        return isinstance(q, dict) or q.shape.rank != 2

    @staticmethod
    def _interests(q):
        """([B, K, d], [B, K] bool) of a query tower's output ([B, d], [B, K, d] or {"interests", "mask"})."""
        if isinstance(q, dict):
            return q["interests"], tf.cast(q["mask"], tf.bool)
        if q.shape.rank == 2:
            q = q[:, None, :]
        return q, tf.ones(tf.shape(q)[:2], tf.bool)

    def _topk(self, q):  # pragma: no cover - subclasses
        raise NotImplementedError


class _BruteForceTopK(TopKModel):
    def __init__(self, query_model, item_ids, item_vectors, k: int):
        vectors = np.asarray(item_vectors, np.float32)
        super().__init__(query_model, item_ids, min(k, len(vectors)), "brute_force", name="brute_force_topk")
        self.item_vectors = tf.Variable(vectors, trainable=False, name="item_vectors")

    def _topk(self, q):
        # max over a query's valid interests (K = 1: the plain dot product)
        interests, mask = self._interests(q)
        per_interest = tf.einsum("bkd,nd->bkn", interests, self.item_vectors)
        per_interest = tf.where(mask[:, :, None], per_interest, tf.constant(-np.inf, per_interest.dtype))
        scores, idx = tf.math.top_k(tf.reduce_max(per_interest, axis=1), k=self.k)
        return idx, scores


class _ScannTopK(TopKModel):
    def __init__(self, query_model, item_ids, index: ScannIndex, k: int, *, num_leaves_to_search: int | None = None,
                 reorder: int | None = None):
        super().__init__(query_model, item_ids, min(k, index.n), "scann", name="scann_topk")
        self.params = dict(index.params)
        self.scann_state = index.searcher.serialize_to_module()
        # ScaNN takes the leaves searched and the re-ordered count per call: an export may search a built tree
        # differently from the index's settings (-1: the searcher's own)
        self._leaves = -1
        if num_leaves_to_search is not None:
            leaves = int(self.params["num_leaves"] or 0)
            if not 1 <= num_leaves_to_search <= leaves:
                raise ValueError(f"num_leaves_to_search={num_leaves_to_search}: the index's tree has {leaves} "
                                 "leaves (0 or 1: no tree); search between 1 and that many")
            self._leaves = self.params["num_leaves_to_search"] = int(num_leaves_to_search)
        if reorder is not None:
            self.params["reorder"] = int(min(max(reorder, self.k), index.n))
        self._pre = max(self.params["reorder"], self.k)
        self._parallel = index.parallel

    def _topk(self, q):
        from scann import scann_ops

        handle = self.scann_state.recreate_handle()
        if not self._multi(q):
            res = scann_ops.scann_search_batched(handle, q, self.k, self._pre, self._leaves, self._parallel)
            return res.indices, res.distances
        interests, mask = self._interests(q)
        idx, scores = self._search_interests(handle, interests, mask)
        return merge_topk(idx, scores, self.k)

    def _search_interests(self, handle, interests, mask):
        """k per active interest: ([B, K * w] positions, scores); masked interests and missing neighbours are
        -1 / -inf. Only the active interests are searched (a user with 1 of K interests costs one search)."""
        from scann import scann_ops

        b, n_int, d = tf.unstack(tf.shape(interests))
        flat = tf.reshape(interests, [-1, d])
        active = tf.where(tf.reshape(mask, [-1]))                                       # [A, 1] rows of flat

        def search():
            res = scann_ops.scann_search_batched(handle, tf.gather_nd(flat, active), self.k, self._pre,
                                                 self._leaves, self._parallel)
            return res.indices, res.distances

        def nothing():          # ScaNN's op refuses an empty batch (e.g. every interest masked)
            return tf.zeros([0, self.k], tf.int32), tf.zeros([0, self.k], tf.float32)

        idx, dist = tf.cond(tf.shape(active)[0] > 0, search, nothing)
        # ScaNN pads a query with fewer than k candidates (a tree search of small leaves) with index 0 and NaN;
        # its result is then narrower than k (w columns)
        found = ~tf.math.is_nan(dist)
        idx, dist = tf.where(found, idx, -1), tf.where(found, dist, -np.inf)
        width = tf.shape(idx)[1]
        idx = tf.tensor_scatter_nd_update(tf.fill([b * n_int, width], tf.constant(-1, idx.dtype)), active, idx)
        dist = tf.tensor_scatter_nd_update(tf.fill([b * n_int, width], tf.constant(-np.inf, dist.dtype)), active,
                                           dist)
        return tf.reshape(idx, [b, n_int * width]), tf.reshape(dist, [b, n_int * width])


def merge_topk(idx, scores, k: int):
    """Per row, the top-k distinct positions of a [B, M] candidate list by each one's best score (TF ops): the
    merge of per-interest top lists. -1 / -inf candidates are no candidate; a row with fewer than k distinct ones
    is filled with -1 / -inf. Equal scores rank the lower position first, as tf.math.top_k over all items does."""
    short = tf.maximum(k - tf.shape(idx)[1], 0)
    idx = tf.pad(idx, [[0, 0], [0, short]], constant_values=-1)
    scores = tf.pad(scores, [[0, 0], [0, short]], constant_values=-np.inf)
    # best score first, then (stable) by position: each position's first copy is its best; later copies are dropped
    order = tf.argsort(scores, axis=1, direction="DESCENDING", stable=True)
    idx, scores = tf.gather(idx, order, batch_dims=1), tf.gather(scores, order, batch_dims=1)
    order = tf.argsort(idx, axis=1, stable=True)
    idx, scores = tf.gather(idx, order, batch_dims=1), tf.gather(scores, order, batch_dims=1)
    repeat = tf.pad(tf.equal(idx[:, 1:], idx[:, :-1]), [[0, 0], [1, 0]])
    scores = tf.where(repeat | (idx < 0), tf.constant(-np.inf, scores.dtype), scores)
    top, at = tf.math.top_k(scores, k=k)
    idx = tf.gather(idx, at, batch_dims=1)
    return tf.where(top > -np.inf, idx, tf.constant(-1, idx.dtype)), top


def brute_force_topk_model(query_model, item_ids, item_vectors, k: int = 100) -> TopKModel:
    """Exact top-K over the item table: q . V^T then tf.math.top_k (stock TF ops; serves on stock TF Serving)."""
    return _BruteForceTopK(query_model, item_ids, item_vectors, k)


def scann_topk_model(query_model, item_ids, item_vectors, k: int = 100, *, index: ScannIndex | None = None,
                     **scann_kwargs) -> TopKModel:
    """Approximate top-K with scann's TF ops; settings from `scann_params` unless given (see ScannIndex).
    With a built `index`, only the search-time settings `num_leaves_to_search` / `reorder` may be given (they
    override the index's in the export). Its SavedModel needs scann's ops to load (import scann) and is not
    servable by stock TF Serving."""
    if index is None:
        return _ScannTopK(query_model, item_ids, ScannIndex(item_vectors, k, **scann_kwargs), k)
    search = {key: scann_kwargs.pop(key) for key in ("num_leaves_to_search", "reorder") if key in scann_kwargs}
    if scann_kwargs:
        raise TypeError(f"scann_topk_model: {', '.join(sorted(scann_kwargs))} build an index; with `index` given "
                        "only num_leaves_to_search / reorder (search-time settings) apply")
    return _ScannTopK(query_model, item_ids, index, k, **search)


def save_topk_model(model: TopKModel, path) -> None:
    """tf.saved_model.save with `serving_default(**query inputs) -> {ids, scores}` (and the Scann op namespace)."""
    options = tf.saved_model.SaveOptions(namespace_whitelist=["Scann"]) if model.kind == "scann" else None
    tf.saved_model.save(model, str(path), signatures={"serving_default": model.serve.get_concrete_function()},
                        options=options)


def load_topk_model(path):
    """tf.saved_model.load, loading scann's ops first (harmless for a brute-force export)."""
    try:
        import scann.scann_ops.py.scann_ops  # noqa: F401  (registers the Scann>* ops)
    except ImportError:  # pragma: no cover - scann is a dependency
        pass
    return tf.saved_model.load(str(path))


# -- the item table of a retrieval model (query_model / item_model / item_key / item_inputs / spec) ---------------
def item_vocabulary(model, artifacts) -> np.ndarray:
    """The raw ids of every item of the item id's vocabulary (the retrieval corpus), in vocabulary order."""
    table = model.spec.table_of(model.item_key)
    if table not in artifacts.vocabs:
        raise ValueError(f"item table {table!r} is hashed: there is no vocabulary to enumerate the corpus from")
    return np.asarray(artifacts.vocabs[table])


def item_embeddings(model, artifacts=None, *, item_ids=None, item_features: dict | None = None,
                    batch_size: int = 8192) -> tuple[np.ndarray, np.ndarray]:
    """(ids [N], vectors [N, output_dim] float32): every item id through the item tower.

    `item_ids` defaults to the vocabulary (pass `artifacts`). An item tower with features besides the id needs
    `item_features` ({name: array aligned with item_ids}, e.g. from `collect_item_features`).
    """
    if item_ids is None:
        if artifacts is None:
            raise ValueError("item_embeddings: pass artifacts (for the vocabulary) or item_ids")
        item_ids = item_vocabulary(model, artifacts)
    item_ids = np.asarray(item_ids)
    feats = {model.item_key: item_ids}
    missing = [k for k in model.item_inputs if k not in feats and k not in (item_features or {})]
    if missing:
        raise ValueError(f"item_embeddings: the item tower also reads {missing}: pass item_features "
                         "(collect_item_features(data, model) gathers them from the data)")
    feats.update({k: np.asarray(v) for k, v in (item_features or {}).items() if k in model.item_inputs})
    vectors = model.item_model.predict(feats, batch_size=batch_size, verbose=0)
    return item_ids, np.asarray(vectors, np.float32)
