"""Ranking metrics: sampled-candidate evaluation and full-corpus retrieval.

* `sampled_ranking_metrics`: each test case ranks its one held-out positive among N sampled negatives (the
  SASRec / S3-Rec / SEMINAR protocol, typically N = 99 or 100); returns `hit@k`, `ndcg@k`, `mrr`.
* `retrieval_metrics`: each user's top-K list retrieved from the whole corpus (e.g. by ScaNN / brute force)
  against that user's set of relevant (held-out) items; returns `recall@k`, `hitrate@k`, `ndcg@k`.

Both are vectorised over users (no Python loop, except to turn a `list[set]` into CSR arrays).
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from ._checks import as_ks, as_scores

__all__ = ["sampled_ranking_metrics", "retrieval_metrics"]

_CHUNK_ELEMENTS = 1 << 24          # rows of neg_scores compared per step, to bound the temporary [rows, N] mask


def sampled_ranking_metrics(pos_scores, neg_scores, ks: Iterable[int] = (1, 5, 10, 50)) -> dict[str, float]:
    """Hit rate, NDCG and MRR of one positive ranked among its N sampled negatives.

    The positive's rank (1-based) is `1 + #{negatives with score >= positive's score}`:

    * **Ties count against the model.** A negative scoring exactly as much as the positive is ranked above it.
      Any optimistic or "average" tie rule lets a degenerate model look good: a constant scorer (or one whose
      scores saturate, e.g. sigmoid 1.0 in float32 for every candidate) would put every positive at rank 1 under
      the optimistic rule and at the middle rank under the average one. With the conservative rule it gets
      rank N + 1, the worst possible, i.e. hit@k = 0 for k <= N.
    * `hit@k` = mean of `[rank <= k]`.
    * `ndcg@k` = mean of `[rank <= k] / log2(rank + 1)`: with a single relevant item the ideal DCG is 1.
    * `mrr` = mean of `1 / rank` (no cut-off).

    Args:
        pos_scores: `[n]` (or `[n, 1]`) score of each test case's positive.
        neg_scores: `[n, N]` scores of its N sampled negatives, N >= 1 (the same N for every row).
        ks: cut-offs; k > N + 1 is allowed (hit@k is then 1).

    Returns:
        `{"hit@k": ..., "ndcg@k": ... for each k, "mrr": ...}` as Python floats.
    """
    pos = as_scores("pos_scores", pos_scores)
    neg = as_scores("neg_scores", neg_scores, ndim=2)
    if neg.shape[0] != len(pos):
        raise ValueError(f"neg_scores has {neg.shape[0]} rows but pos_scores has length {len(pos)}")
    ks = as_ks("ks", ks)
    n, n_neg = neg.shape
    rank = np.empty(n, dtype=np.int64)
    step = max(1, _CHUNK_ELEMENTS // n_neg)
    for lo in range(0, n, step):
        hi = min(n, lo + step)
        rank[lo:hi] = 1 + np.count_nonzero(neg[lo:hi] >= pos[lo:hi, None], axis=1)
    gain = 1.0 / np.log2(rank + 1.0)
    out: dict[str, float] = {}
    for k in ks:
        hit = rank <= k
        out[f"hit@{k}"] = float(hit.mean())
        out[f"ndcg@{k}"] = float(np.where(hit, gain, 0.0).mean())
    out["mrr"] = float((1.0 / rank).mean())
    return out


def _relevant_csr(relevant, n_users: int) -> tuple[np.ndarray, np.ndarray]:
    """`relevant` as CSR (indptr [n_users + 1], indices) int64 arrays, validated."""
    if hasattr(relevant, "indptr") and hasattr(relevant, "indices"):        # scipy.sparse CSR matrix
        indptr, indices = relevant.indptr, relevant.indices
    elif isinstance(relevant, tuple) and len(relevant) == 2 and all(isinstance(r, np.ndarray) for r in relevant):
        indptr, indices = relevant                                          # CSR (indptr, indices)
    elif isinstance(relevant, Sequence) or (isinstance(relevant, np.ndarray) and relevant.dtype == object):
        if len(relevant) != n_users:
            raise ValueError(f"relevant has {len(relevant)} entries but topk_ids has {n_users} rows")
        lengths = np.fromiter((len(r) for r in relevant), dtype=np.int64, count=n_users)
        indptr = np.zeros(n_users + 1, dtype=np.int64)
        np.cumsum(lengths, out=indptr[1:])
        flat = [i for r in relevant for i in r]
        try:
            indices = np.asarray(flat, dtype=np.int64).reshape(-1)
        except (TypeError, ValueError, OverflowError):
            raise ValueError("relevant must hold sets of integer item ids") from None
    else:
        raise ValueError("relevant must be a list of sets of item ids, an (indptr, indices) CSR tuple or a "
                         f"scipy CSR matrix, got {type(relevant).__name__}")
    indptr, indices = np.asarray(indptr), np.asarray(indices)
    if indptr.ndim != 1 or indices.ndim != 1:
        raise ValueError(f"relevant (indptr, indices) must be 1-D, got shapes {indptr.shape}, {indices.shape}")
    for name, arr in (("indptr", indptr), ("indices", indices)):
        if arr.size and not np.issubdtype(arr.dtype, np.integer):
            raise ValueError(f"relevant {name} must be integers, got dtype {arr.dtype}")
    if len(indptr) != n_users + 1:
        raise ValueError(f"relevant indptr has length {len(indptr)}, expected n_users + 1 = {n_users + 1} "
                         "(one row per row of topk_ids)")
    if indptr[0] != 0 or indptr[-1] != len(indices) or (np.diff(indptr) < 0).any():
        raise ValueError("relevant indptr must start at 0, be non-decreasing and end at len(indices)")
    if indices.size and indices.min() < 0:
        raise ValueError("relevant item ids must be non-negative")
    return indptr.astype(np.int64, copy=False), indices.astype(np.int64, copy=False)


def retrieval_metrics(topk_ids, relevant, ks: Iterable[int] = (10, 50, 100)) -> dict[str, float | int]:
    """Recall, hit rate and NDCG of full-corpus top-K retrieval, averaged over users with relevant items.

    For user u with relevant set R_u (|R_u| > 0) and hits h_u@k = |top-k(u) & R_u|:

    * `recall@k` = h_u@k / |R_u|: the standard definition (e.g. the LightGCN / NGCF evaluation code). It cannot
      reach 1 when |R_u| > k; the "capped" variant h / min(|R_u|, k) is not used, so numbers compare with papers.
    * `hitrate@k` = [h_u@k >= 1].
    * `ndcg@k` = DCG / IDCG with binary relevance: DCG = sum over hit positions j <= k of 1 / log2(j + 1), and
      IDCG the same with min(|R_u|, k) hits at the top (so a perfect list scores 1 even when |R_u| > k).

    Users with an empty relevant set are skipped (no metric is defined for them) and counted.

    Args:
        topk_ids: `[n_users, K]` integer item ids, best first, no id repeated within a row. Negative ids are
            padding (a retriever that found fewer than K items) and never count as hits.
        relevant: per user, the relevant item ids (non-negative ints): a list (length n_users) of sets or other
            iterables, an `(indptr, indices)` tuple of numpy arrays in CSR layout (row u's items are
            `indices[indptr[u]:indptr[u + 1]]`; a tuple of lists is read as per-user lists),
            or a scipy CSR matrix (its column indices are the item ids). Duplicates are ignored.
        ks: cut-offs, each <= K.

    Returns:
        `{"recall@k", "hitrate@k", "ndcg@k"}` per k (floats, NaN if no user has relevant items), plus
        `"n_users"` (users evaluated) and `"n_users_skipped"` (users without relevant items), as ints.
    """
    top = np.asarray(topk_ids)
    if top.ndim != 2:
        raise ValueError(f"topk_ids must be 2-D (shape [n_users, K]), got shape {top.shape}")
    if top.size == 0:
        raise ValueError(f"topk_ids is empty (shape {top.shape})")
    if not np.issubdtype(top.dtype, np.integer):
        raise ValueError(f"topk_ids must be integer item ids, got dtype {top.dtype}")
    top = top.astype(np.int64, copy=False)
    n_users, k_max = top.shape
    ks = as_ks("ks", ks, max_k=k_max)
    srt = np.sort(top, axis=1)
    dup = (srt[:, 1:] == srt[:, :-1]) & (srt[:, 1:] >= 0)
    if dup.any():
        u = int(np.flatnonzero(dup.any(axis=1))[0])
        raise ValueError(f"topk_ids row {u} repeats an item id; each row must list distinct items")
    del srt, dup
    indptr, indices = _relevant_csr(relevant, n_users)

    # Encode (user, item) pairs as one int64 key; remap item ids to dense codes if user * item could overflow.
    rel_user = np.repeat(np.arange(n_users, dtype=np.int64), np.diff(indptr))
    max_item = int(max(indices.max(initial=0), top.max(initial=0)))
    if n_users * (max_item + 1) >= 2**62:
        vocab, inv = np.unique(np.concatenate([indices, top[top >= 0]]), return_inverse=True)
        indices = inv[:len(indices)]
        top = np.where(top >= 0, np.searchsorted(vocab, top), -1)
        max_item = len(vocab) - 1
    m = max_item + 1
    rel_keys = np.unique(rel_user * m + indices)                # sorted, duplicates dropped
    n_rel = np.bincount(rel_keys // m, minlength=n_users)
    top_keys = np.arange(n_users, dtype=np.int64)[:, None] * m + top
    if len(rel_keys):
        pos = np.minimum(np.searchsorted(rel_keys, top_keys), len(rel_keys) - 1)
        hits = (top >= 0) & (rel_keys[pos] == top_keys)                  # padding (-1) never hits
    else:
        hits = np.zeros(top.shape, dtype=bool)

    keep = n_rel > 0
    n_eval = int(keep.sum())
    out: dict[str, float | int] = {}
    hits, n_rel = hits[keep], n_rel[keep]
    discount = 1.0 / np.log2(np.arange(2, k_max + 2, dtype=np.float64))   # position j (1-based) -> 1/log2(j+1)
    cum_hits = np.cumsum(hits, axis=1)
    cum_dcg = np.cumsum(hits * discount, axis=1)
    ideal = np.cumsum(discount)
    for k in ks:
        if n_eval == 0:
            out[f"recall@{k}"] = out[f"hitrate@{k}"] = out[f"ndcg@{k}"] = float("nan")
            continue
        h = cum_hits[:, k - 1]
        out[f"recall@{k}"] = float((h / n_rel).mean())
        out[f"hitrate@{k}"] = float((h > 0).mean())
        out[f"ndcg@{k}"] = float((cum_dcg[:, k - 1] / ideal[np.minimum(n_rel, k) - 1]).mean())
    out["n_users"] = n_eval
    out["n_users_skipped"] = n_users - n_eval
    return out
