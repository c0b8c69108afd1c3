"""Full-corpus evaluation of retrieval models: reads the dataset, so it lives here, not in tfrec_zoo.models (models
never read files). A retrieval model (`evaluation_protocol() == "retrieval"`) gives `query_model`, `item_model`,
`query_inputs`, `item_inputs`, `item_key`, `label_task` and `spec`; see tfrec_zoo/models/two_tower.py for the
protocol's details.
"""
from __future__ import annotations

import math
from typing import Any, Iterable, Sequence

import numpy as np

from tfrec_zoo._tf import keras
from tfrec_zoo.metrics import retrieval_metrics
from tfrec_zoo.retrieval import BruteForceIndex, ScannIndex, as_interests, item_embeddings, search_interests


class RetrievalEarlyStopping(keras.callbacks.Callback):
    """After each epoch, full-corpus `metric` (e.g. "recall@50") on the `split` split with the user's earlier items
    filtered; stops after `patience` epochs without improvement and restores the best epoch's weights. The score per
    epoch is appended to `self.scores` and to the History logs as `val_<metric>`."""

    def __init__(self, data, metric: str = "recall@50", split: str = "valid", patience: int = 1,
                 max_users: int | None = None):
        super().__init__()
        self.data, self.metric, self.split, self.patience, self.max_users = data, metric, split, patience, max_users
        self.scores: list[float] = []
        self.best_epoch, self._best, self._weights, self._wait = -1, -math.inf, None, 0
        self._cache: dict = {}

    def on_epoch_end(self, epoch, logs=None):
        k = int(self.metric.split("@")[1])
        r = evaluate_retrieval(self.model, self.data, split=self.split, ks=(k,), popularity=False,
                               max_users=self.max_users, cache=self._cache)
        score = float(r["model"]["filtered"][self.metric])
        self.scores.append(score)
        if logs is not None:
            logs[f"val_{self.metric}"] = score
        if score > self._best:
            self._best, self.best_epoch, self._wait = score, epoch, 0
            self._weights = self.model.get_weights()
        else:
            self._wait += 1
            if self._wait >= self.patience:
                self.model.stop_training = True

    def on_train_end(self, logs=None):
        if self._weights is not None and self.best_epoch != len(self.scores) - 1:
            self.model.set_weights(self._weights)


def retrieval_monitor(monitor: str) -> str | None:
    """"val_recall@50" -> "recall@50" (a full-corpus metric RetrievalEarlyStopping computes); else None."""
    name = monitor[4:] if monitor.startswith("val_") else ""
    return name if name.split("@")[0] in ("recall", "hitrate", "ndcg") and "@" in name else None


def collect_item_features(data, model, splits: Sequence[str] = ("train",)) -> tuple[np.ndarray, dict]:
    """(item ids, {feature: values}) of the item tower's inputs, each item's last row in `splits`."""
    cols = read_columns(data, splits, model.item_inputs)
    ids = cols[model.item_key]
    # last occurrence of each id
    rev = ids[::-1]
    uniq, first_rev = np.unique(rev, return_index=True)
    idx = len(ids) - 1 - first_rev
    return uniq, {k: v[idx] for k, v in cols.items() if k != model.item_key}


def corpus_vectors(model, data) -> tuple[np.ndarray, np.ndarray]:
    """(item ids, item vectors) of the retrieval corpus: the item vocabulary through the item tower, or the train
    split's items with their features when the tower reads more than the id."""
    item_ids = item_features = None
    if len(model.item_inputs) > 1:
        item_ids, item_features = collect_item_features(data, model)
    return item_embeddings(model, data.artifacts, item_ids=item_ids, item_features=item_features)


# -- evaluation --------------------------------------------------------------------------------------------------------
def read_columns(data, splits: Sequence[str] | str, features: Iterable[str], batch_size: int = 8192,
                 with_labels: bool = False, cache: dict | None = None) -> dict:
    """Concatenated numpy columns of `features` (and labels as `label:<task>`) over the given splits.
    `cache`: a dict memoising the result per (splits, features) (e.g. across per-epoch evaluations)."""
    if isinstance(splits, str):
        splits = [splits]
    features = list(dict.fromkeys(features))
    if cache is not None:
        key = (str(data.path), tuple(splits), tuple(features), with_labels)
        if key not in cache:
            cache[key] = read_columns(data, splits, features, batch_size, with_labels)
        return cache[key]
    parts: dict[str, list] = {}
    for split in splits:
        for batch in data.dataset(split, batch_size, features=features):
            feats, labels = batch[0], batch[1]
            for k in features:
                parts.setdefault(k, []).append(feats[k].numpy())
            if with_labels:
                for t, v in labels.items():
                    parts.setdefault(f"label:{t}", []).append(v.numpy())
    return {k: np.concatenate(v) for k, v in parts.items()}


def filter_seen(topk_pos: np.ndarray, users: np.ndarray, seen_keys: np.ndarray, n_items: int, k: int) -> np.ndarray:
    """Drop each row's seen items and keep the first k of the rest (-1 pads rows with fewer left).

    `users` [n] are row indices into the key space, `seen_keys` sorted `user * n_items + position` keys.
    """
    keys = users[:, None] * n_items + topk_pos
    if len(seen_keys):
        at = np.minimum(np.searchsorted(seen_keys, keys), len(seen_keys) - 1)
        seen = (seen_keys[at] == keys) & (topk_pos >= 0)
    else:
        seen = np.zeros(topk_pos.shape, bool)
    order = np.argsort(seen, axis=1, kind="stable")             # unseen first, each group in rank order
    out = np.take_along_axis(topk_pos, order, axis=1)[:, :k].copy()
    n_left = (~seen).sum(axis=1)
    out[np.arange(out.shape[1])[None, :] >= n_left[:, None]] = -1
    return out


def _first_rows(users: np.ndarray, times: np.ndarray | None) -> np.ndarray:
    """Index of each user's first row (earliest time, then file order), users in order of first appearance."""
    order = np.lexsort((np.arange(len(users)), times)) if times is not None else np.arange(len(users))
    _, first = np.unique(users[order], return_index=True)
    return np.sort(order[first])


def evaluate_retrieval(model, data, *, split: str = "test", ks: Sequence[int] = (10, 50, 100),
                       index: str | Any = "brute_force", seen_splits: Sequence[str] | None = None,
                       popularity: bool = True, item_ids=None, item_features: dict | None = None,
                       max_users: int | None = None, chunk: int = 1024, return_lists: bool = False,
                       cache: dict | None = None) -> dict:
    """Full-corpus Recall / HitRate / NDCG@ks of a retrieval model and the popularity baseline, with and without
    the user's earlier-split items filtered (see the module docstring for the protocol).

    `index`: "brute_force", "scann" or any object with `.search(query_vectors, k) -> (positions, scores)` built over
    `item_embeddings(model, data.artifacts)`'s vectors. The corpus is the item vocabulary, or `item_ids` with their
    `item_features` when the item tower reads more than the id (default then: `collect_item_features(data, model)`,
    the items of the train split). `seen_splits` default: the splits before `split` among
    train, valid, test. Returns {"model": {"all": metrics, "filtered": metrics}, "popularity": {...}, "protocol"}
    (+ "lists": the top-K positions and item ids when `return_lists`).
    """
    spec = model.spec
    k_max = max(ks)
    order = ["train", "valid", "test"]
    if seen_splits is None:
        seen_splits = [s for s in order[:order.index(split)] if s in data.manifest["splits"]] if split in order \
            else ["train"]
    user_key, time_key = spec.keys.get("user"), spec.keys.get("time")
    if not user_key:
        raise ValueError(f"{spec.source}: evaluate_retrieval needs `keys: {{user: ...}}` to group queries by user")
    if item_features is None and len(model.item_inputs) > 1:
        item_ids, item_features = collect_item_features(data, model)
    item_ids, vectors = item_embeddings(model, data.artifacts, item_ids=item_ids, item_features=item_features)
    n_items = len(item_ids)
    pos_of = {v: i for i, v in enumerate(item_ids.tolist())}

    def positions(raw) -> np.ndarray:
        return np.fromiter((pos_of.get(x, -1) for x in raw.tolist()), np.int64, count=len(raw))

    extra = [c for c in (user_key, model.item_key, time_key) if c]
    cols = read_columns(data, split, list(model.query_inputs) + extra, with_labels=True, cache=cache)
    users_raw = cols[user_key]
    positive = cols[f"label:{model.label_task}"] > 0
    first = _first_rows(users_raw, cols[time_key].astype(np.float64) if time_key and time_key in cols else None)
    first = first[np.isin(users_raw[first], users_raw[positive])]        # users with at least one positive
    if max_users is not None:
        first = first[:max_users]
    eval_users = users_raw[first]
    u_index = {u: i for i, u in enumerate(eval_users.tolist())}
    n_users = len(eval_users)

    # relevant: positives of the split; items outside the corpus get fresh ids >= n_items (never retrieved)
    rel_rows = np.flatnonzero(positive & np.isin(users_raw, eval_users))
    rel_u = np.fromiter((u_index[u] for u in users_raw[rel_rows].tolist()), np.int64, count=len(rel_rows))
    rel_p = positions(cols[model.item_key][rel_rows])
    outside = rel_p < 0
    rel_p[outside] = n_items + np.arange(int(outside.sum()))
    o = np.lexsort((rel_p, rel_u))
    rel_u, rel_p = rel_u[o], rel_p[o]
    indptr = np.zeros(n_users + 1, np.int64)
    np.cumsum(np.bincount(rel_u, minlength=n_users), out=indptr[1:])
    relevant = (indptr, rel_p)

    # seen: the users' items in the earlier splits (all rows, whatever their label)
    if seen_splits:
        seen_cols = read_columns(data, seen_splits, [user_key, model.item_key], with_labels=True, cache=cache)
    else:
        seen_cols = {user_key: np.zeros(0, users_raw.dtype), model.item_key: np.zeros(0, np.int64),
                     f"label:{model.label_task}": np.zeros(0, np.float32)}
    keep = np.isin(seen_cols[user_key], eval_users)
    s_u = np.fromiter((u_index[u] for u in seen_cols[user_key][keep].tolist()), np.int64, count=int(keep.sum()))
    s_p = positions(seen_cols[model.item_key][keep])
    ok = s_p >= 0
    seen_keys = np.unique(s_u[ok] * n_items + s_p[ok])
    n_seen = np.bincount(seen_keys // n_items, minlength=n_users) if len(seen_keys) else np.zeros(n_users, np.int64)

    # queries through the index, over-fetching each chunk's largest seen count so K remain after filtering
    qfeats = {k: cols[k][first] for k in model.query_inputs}
    # [n, K, d] + mask: K interests per query (K = 1 for a single query vector), scored by their best interest
    qvec, qmask = as_interests(model.query_model.predict(qfeats, batch_size=8192, verbose=0))
    if isinstance(index, str):
        index = BruteForceIndex(vectors) if index == "brute_force" else ScannIndex(vectors, k_max)
    top_all = np.full((n_users, k_max), -1, np.int64)
    top_filt = np.full((n_users, k_max), -1, np.int64)
    for lo in range(0, n_users, chunk):
        hi = min(n_users, lo + chunk)
        fetch = int(min(n_items, k_max + n_seen[lo:hi].max(initial=0)))
        pos, _ = search_interests(index, qvec[lo:hi], qmask[lo:hi], fetch)
        w = min(k_max, pos.shape[1])
        top_all[lo:hi, :w] = pos[:, :w]
        f = filter_seen(pos, np.arange(lo, hi), seen_keys, n_items, k_max)
        top_filt[lo:hi, :f.shape[1]] = f
    out: dict[str, Any] = {"model": {"all": retrieval_metrics(top_all, relevant, ks),
                                         "filtered": retrieval_metrics(top_filt, relevant, ks)}}

    if popularity:
        p = positions(seen_cols[model.item_key][seen_cols[f"label:{model.label_task}"] > 0])
        counts = np.bincount(p[p >= 0], minlength=n_items)
        ranked = np.argsort(-counts, kind="stable")                       # ties: vocabulary order
        fetch = int(min(n_items, k_max + n_seen.max(initial=0)))
        pop = np.broadcast_to(ranked[:fetch], (n_users, fetch))
        pop_filt = np.concatenate([filter_seen(pop[lo:lo + chunk], np.arange(lo, min(n_users, lo + chunk)),
                                               seen_keys, n_items, k_max) for lo in range(0, n_users, chunk)])
        out["popularity"] = {"all": retrieval_metrics(np.ascontiguousarray(pop[:, :k_max]), relevant, ks),
                             "filtered": retrieval_metrics(pop_filt, relevant, ks)}
    out["protocol"] = {
        "split": split, "users": n_users, "items": n_items, "seen_splits": list(seen_splits),
        "index": type(index).__name__, "query": "each user's first row of the split" + (
            f" (earliest {time_key})" if time_key else ""),
        "relevant": f"the user's {split} items with {model.label_task} > 0",
        "relevant_outside_corpus": int(outside.sum()),
    }
    if qvec.shape[1] > 1:   # a multi-interest query tower: how many interests its users got (k = 1 .. K)
        counts = np.bincount(qmask.sum(1), minlength=qvec.shape[1] + 1)
        out["protocol"]["interests"] = {"mean": float(qmask.sum(1).mean()) if n_users else 0.0,
                                        "users_with_k": {str(k): int(c) for k, c in enumerate(counts) if c}}
    if return_lists:
        out["lists"] = {"all": top_all, "filtered": top_filt, "item_ids": item_ids, "relevant": relevant,
                        "seen_keys": seen_keys, "query_vectors": qvec[:, 0] if qvec.shape[1] == 1 else qvec, "item_vectors": vectors,
                        "users": eval_users}
    return out
