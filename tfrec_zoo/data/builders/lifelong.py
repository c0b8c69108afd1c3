"""Lifelong query-item sequences (SEMINAR's setting): each user's whole chronological log of (query, item) pairs.

One protocol for every `*-lifelong` dataset, the one of SEMINAR's code (inherited from S3-Rec):

* leave-one-out per user: the last pair -> test, the second to last -> valid, the rest train (users with fewer
  than 3 pairs: all train).
* train rows: the user's last `train_positions` train positions t >= 1 (all when None): a positive row (target =
  pair t, history = pairs before t, `click` = 1) and one negative row with the same history, an item the user never
  interacted with (uniform) and, as in SEMINAR's code, a query drawn from the user's own earlier queries (the
  positive's query when the user has none), `click` = 0.
* valid / test rows: one positive row per user (history = every pair before it) with `eval_neg_<item>`: 99 distinct
  items the user never interacted with, ranked against the positive (training/ranking.py: "recommendation" mode
  empties every query, "search" mode gives the negatives the positive's query).
* histories: the most recent `max_len` pairs before the target (item ids + query strings, oldest first); never
  a later split's pair.

Exception: amazon-cellphones-search-lifelong keeps HEM's own test pairs as test (`lifelong_rows_given_test`: valid =
the last train pair, each test pair's history = every train pair); taobao-head-lifelong has no queries (empty).

Item and query metadata (titles, genres, attributes, query texts) are not columns of the rows: the builder returns
them as catalogues and the spec declares them `side_of` the ids, so the model looks them up by id for the target
and for every history step (tfrec_zoo.inputs.FeatureEmbeddings.side).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ...features.spec import FeatureSpec
from ...paths import seeds_data_dir, shared_datasets_dir
from . import Built, register
from ._sampling import SeenItems, read_user_lines, rng_for, sample_unseen

SEED = 2024
EVAL_NEGATIVES = 99


def lifelong_rows(log: pd.DataFrame, *, item: str, hist_item: str, hist_query: str, eval_neg: str,
                  max_len: int, train_positions: int | None, seed: int) -> dict[str, pd.DataFrame]:
    """Rows of the three splits from `log` (columns user_id, `item`, query; each user's rows contiguous and in
    time order). See the module docstring for the protocol."""
    users = log["user_id"].to_numpy()
    items = log[item].to_numpy()
    queries = log["query"].astype(str).to_numpy()
    starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]])
    ends = np.r_[starts[1:], len(users)]
    universe = np.unique(items)
    user_idx = np.repeat(np.arange(len(starts)), ends - starts)
    seen = SeenItems(user_idx, np.searchsorted(universe, items), len(starts), len(universe))
    rng_q = rng_for(seed, "negative queries")

    rows = _position_rows(starts, ends, items, queries, ("valid", "test"), max_len, train_positions)
    out = {}
    for split, rs in rows.items():
        u = np.array([r[0] for r in rs], np.int64)
        at = np.array([r[1] for r in rs], np.int64)
        df = pd.DataFrame({"user_id": users[at] if len(at) else users[:0], item: items[at] if len(at) else items[:0],
                           "query": queries[at] if len(at) else queries[:0],
                           hist_item: [r[2] for r in rs], hist_query: [r[3] for r in rs]})
        df["click"] = np.float32(1.0)
        if split == "train":
            neg = df.copy()
            neg[item] = universe[sample_unseen(seen, u, 1, rng_for(seed, "train"))[:, 0]] if len(u) else []
            neg["query"] = [_earlier_query(h, q, rng_q) for h, q in zip(df[hist_query], df["query"])]
            neg["click"] = np.float32(0.0)
            df = pd.concat([df, neg]).sort_index(kind="stable").reset_index(drop=True)
            df[eval_neg] = [[] for _ in range(len(df))]
        else:
            df[eval_neg] = list(universe[sample_unseen(seen, u, EVAL_NEGATIVES, rng_for(seed, split))])
        out[split] = df
    return out


def _position_rows(starts, ends, items, queries, held: tuple[str, ...], max_len: int,
                   train_positions: int | None) -> dict[str, list]:
    """Per user (log rows starts[u]:ends[u]): the last len(held) pairs go to the `held` splits in order (users with
    more pairs than that), the train positions t >= 1 before them (the last `train_positions`) to train. A row is
    (user index, log position, history items, history queries): the `max_len` most recent pairs before it."""
    rows: dict[str, list] = {"train": [], **{h: [] for h in held}}
    for u, (s, e) in enumerate(zip(starts, ends)):
        n = e - s
        n_train = n - len(held) if n > len(held) else n
        first = 1 if train_positions is None else max(1, n_train - train_positions)
        positions = [(t, "train") for t in range(first, n_train)]
        if n > len(held):
            positions += [(n_train + i, split) for i, split in enumerate(held)]
        for t, split in positions:
            lo = max(0, t - max_len)
            rows[split].append((u, s + t, list(items[s + lo:s + t]), list(queries[s + lo:s + t])))
    return rows


def _earlier_query(history_queries: list, own: str, rng: np.random.Generator) -> str:
    nonempty = [q for q in history_queries if q]
    return nonempty[int(rng.integers(len(nonempty)))] if nonempty else own


def _summary(splits: dict[str, pd.DataFrame], hist: str) -> dict:
    lens = np.array([len(h) for h in splits["test"][hist]]) if len(splits["test"]) else np.zeros(1)
    return {"test_history_len_mean": float(lens.mean()), "test_history_len_max": int(lens.max()),
            "test_history_len_p90": float(np.percentile(lens, 90))}


# -- MovieLens -----------------------------------------------------------------------------------------------------------
@register("ml-latest-small-lifelong", "MovieLens latest-small as lifelong query-item sequences (SEMINAR): "
          "leave-one-out, 99 sampled negatives", needs_shared=False)
def build_ml_lifelong(spec: FeatureSpec, raw_dir: Path | None, *, max_users: int | None = None,
                      train_positions: int | None = 20, seed: int = SEED) -> Built:
    """Queries: the user's tags on the movie given at or before the rating, else the movie's genres as a phrase
    ("Adventure Animation Children"), the way SEMINAR's Amazon setting builds dummy queries from item text."""
    from .movielens import movie_table, read_movielens, tag_queries

    raw = raw_dir or seeds_data_dir() / "ml-latest-small"
    ratings, movies, tags = read_movielens(raw, max_users)
    ratings = ratings.assign(tag_query=tag_queries(ratings, tags).to_numpy())
    table = movie_table(movies)
    genre_phrase = dict(zip(table["movie_id"], [" ".join(g) for g in table["genres"]]))
    log = ratings.rename(columns={"userId": "user_id", "movieId": "movie_id"})
    log["query"] = [t if t else genre_phrase.get(m, "") for t, m in zip(log["tag_query"], log["movie_id"])]
    log = log.sort_values(["user_id", "timestamp", "movie_id"], kind="stable").reset_index(drop=True)
    max_len = spec["history"].max_len
    splits = lifelong_rows(log, item="movie_id", hist_item="hist_movie_id", hist_query="hist_query",
                           eval_neg="eval_neg_movie_id", max_len=max_len, train_positions=train_positions, seed=seed)
    queries = sorted({q for df in splits.values() for q in df["query"]} | set(log["query"]))
    # the rated movies: the only ones a target, a history step or a sampled negative can be
    rated = table[table["movie_id"].isin(log["movie_id"].unique())]
    catalogues = {"movie_id": rated[["movie_id", "title", "genres"]],
                  "query": pd.DataFrame({"query": queries, "query_text": queries})}
    return Built(splits, source=str(raw), catalogues=catalogues, extra={
        "protocol": "leave-one-out; train = last %s train positions per user + 1 negative each; 99 eval negatives"
                    % train_positions, "queries": "user tags at or before the rating, else the genre phrase",
        "seed": seed, "max_users": max_users, **_summary(splits, "hist_movie_id")})


# -- Amazon Beauty (S3-Rec files) ----------------------------------------------------------------------------------------
@register("amazon-beauty-lifelong", "Amazon Beauty (S3-Rec) as query-item sequences (SEMINAR): query = the item's "
          "attribute tokens, leave-one-out, 99 sampled negatives")
def build_beauty_lifelong(spec: FeatureSpec, raw_dir: Path | None, *, max_users: int | None = None,
                          train_positions: int | None = None, seed: int = SEED) -> Built:
    """Dummy queries as HEM and SEMINAR's Amazon setting build them: the item's category/brand attribute ids as
    keyword tokens ("12 40 7"); the file has no attribute names, so the query has no text vector."""
    from .s3rec import FOLDER, read_item_attributes

    raw = raw_dir or shared_datasets_dir() / FOLDER
    lines = read_user_lines(raw / "Beauty.txt", min_items=1).take_users(max_users)
    attrs = read_item_attributes(raw / "Beauty_item2attributes.json")
    log = pd.DataFrame({"user_id": np.repeat(lines.users, lines.lengths), "item_id": lines.items})
    log["query"] = [" ".join(map(str, attrs.get(int(i), []))) for i in log["item_id"]]
    splits = lifelong_rows(log, item="item_id", hist_item="hist_item_id", hist_query="hist_query",
                           eval_neg="eval_neg_item_id", max_len=spec["history"].max_len,
                           train_positions=train_positions, seed=seed)
    all_items = sorted(set(attrs) | set(int(i) for i in lines.items))
    catalogues = {"item_id": pd.DataFrame({"item_id": all_items,
                                           "item_attrs": [attrs.get(i, []) for i in all_items]})}
    return Built(splits, source=str(raw), catalogues=catalogues, extra={
        "protocol": "leave-one-out; train = every train position t >= 1 + 1 negative; 99 eval negatives",
        "queries": "the item's attribute ids as keyword tokens", "seed": seed, "max_users": max_users,
        **_summary(splits, "hist_item_id")})


# -- explicit test pairs (HEM) -------------------------------------------------------------------------------------------
def lifelong_rows_given_test(log: pd.DataFrame, test: pd.DataFrame, *, item: str, hist_item: str, hist_query: str,
                             eval_neg: str, max_len: int, train_positions: int | None, seed: int,
                             universe: np.ndarray | None = None) -> dict[str, pd.DataFrame]:
    """`lifelong_rows` for data whose test pairs are given (HEM's held-out test qrels) instead of "the last pair".

    `log` (columns user_id, `item`, query; each user's rows contiguous, in sequence order) holds the train pairs,
    `test` the held-out pairs (same columns; every test user must have a log). Per user with n log pairs:

    * valid: the last log pair (users with n >= 2), held out of train, history = the pairs before it.
    * train: positions 1 <= t < n_train (n_train = n - 1 with a valid pair, else n), the last `train_positions`
      of them (all when None), each + 1 negative exactly as `lifelong_rows` does.
    * test: one row per test pair (in `test`'s order), history = the user's whole log (valid pair included), the
      most recent `max_len`; a user's several test pairs have no order among them, so none is in another's history.
    * valid / test rows get 99 distinct items the user never interacted with (log or test) from `universe`
      (default: every item of `log` and `test`; pass the whole catalogue's items so a user subset samples from
      the same items).
    """
    users = log["user_id"].to_numpy()
    items = log[item].to_numpy()
    queries = log["query"].astype(str).to_numpy()
    starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]])
    ends = np.r_[starts[1:], len(users)]
    order = {u: i for i, u in enumerate(users[starts])}
    if len(order) != len(starts):
        raise ValueError("lifelong_rows_given_test: each user's log rows must be contiguous")
    test_u = np.array([order.get(u, -1) for u in test["user_id"]], np.int64)
    if (test_u < 0).any():
        missing = test["user_id"].to_numpy()[test_u < 0][:5]
        raise ValueError(f"lifelong_rows_given_test: test users without a train log: {list(missing)}")
    test_items = test[item].to_numpy()
    if universe is None:
        universe = np.unique(np.r_[items, test_items])
    universe = np.asarray(universe)
    all_items = np.r_[items, test_items]
    at_item = np.searchsorted(universe, all_items)
    if (at_item >= len(universe)).any() or (universe[np.minimum(at_item, len(universe) - 1)] != all_items).any():
        raise ValueError("lifelong_rows_given_test: `universe` lacks some items of the log or the test pairs")
    user_idx = np.r_[np.repeat(np.arange(len(starts)), ends - starts), test_u]
    seen = SeenItems(user_idx, at_item, len(starts), len(universe))
    rng_q = rng_for(seed, "negative queries")

    rows = _position_rows(starts, ends, items, queries, ("valid",), max_len, train_positions)

    def frame(rs: list) -> tuple[np.ndarray, pd.DataFrame]:
        u = np.array([r[0] for r in rs], np.int64)
        at = np.array([r[1] for r in rs], np.int64)
        return u, pd.DataFrame({"user_id": users[at], item: items[at], "query": queries[at],
                                hist_item: [r[2] for r in rs], hist_query: [r[3] for r in rs]})

    out = {}
    u, train = frame(rows["train"])
    train["click"] = np.float32(1.0)
    neg = train.copy()
    neg[item] = universe[sample_unseen(seen, u, 1, rng_for(seed, "train"))[:, 0]] if len(u) else []
    neg["query"] = [_earlier_query(h, q, rng_q) for h, q in zip(train[hist_query], train["query"])]
    neg["click"] = np.float32(0.0)
    train = pd.concat([train, neg]).sort_index(kind="stable").reset_index(drop=True)
    train[eval_neg] = [[] for _ in range(len(train))]
    out["train"] = train
    u, valid = frame(rows["valid"])
    lo = np.maximum(starts[test_u], ends[test_u] - max_len)
    test_df = pd.DataFrame({"user_id": test["user_id"].to_numpy(), item: test_items,
                            "query": test["query"].astype(str).to_numpy(),
                            hist_item: [list(items[a:b]) for a, b in zip(lo, ends[test_u])],
                            hist_query: [list(queries[a:b]) for a, b in zip(lo, ends[test_u])]})
    for split, df, uu in (("valid", valid, u), ("test", test_df, test_u)):
        df["click"] = np.float32(1.0)
        df[eval_neg] = list(universe[sample_unseen(seen, uu, EVAL_NEGATIVES, rng_for(seed, split))])
        out[split] = df
    return out


def _history_stats(splits: dict[str, pd.DataFrame], item: str, hist: str) -> dict:
    """Per split: history length mean / p50 / p90 / max over the positive rows, and the share of positives whose
    target item is already in its history (a shortcut: sampled negatives never are)."""
    out = {}
    for split, df in splits.items():
        pos = df[df["click"] == 1]
        lens = np.array([len(h) for h in pos[hist]]) if len(pos) else np.zeros(1)
        repeat = float(np.mean([i in set(h) for i, h in zip(pos[item], pos[hist])])) if len(pos) else 0.0
        out[split] = {"len_mean": round(float(lens.mean()), 2), "len_p50": float(np.percentile(lens, 50)),
                      "len_p90": float(np.percentile(lens, 90)), "len_max": int(lens.max()),
                      "target_in_history": round(repeat, 4)}
    return out


# -- Amazon Cell Phones personalized product search (HEM) ----------------------------------------------------------------
@register("amazon-cellphones-search-lifelong", "Amazon Cell Phones product search (HEM) as lifelong query-item "
          "sequences (SEMINAR): real query strings, HEM's test qrels as test, 99 sampled negatives")
def build_cellphones_lifelong(spec: FeatureSpec, raw_dir: Path | None, *, max_users: int | None = None,
                              train_positions: int | None = 20, seed: int = SEED) -> Built:
    """Per user the (query string, item) pairs of train.qrels in file order (HEM has no timestamps); valid = the
    last one, test = the user's test.qrels pairs (queries never seen in train: the query vocabulary is the whole
    query_text file, so they keep their MiniLM text vector). The folder has no item metadata: items are ids only.
    `max_users` keeps the first N users by reviewerID (sorted as strings); negatives are still drawn from every
    item of the category."""
    from .amazon_search import FOLDER, read_hem

    raw = raw_dir or shared_datasets_dir() / FOLDER / "Cell_Phones_and_Accessories"
    hem = read_hem(raw, max_users)
    queries, train, test, universe = hem.queries, hem.train, hem.test, hem.universe
    dropped_train, dropped_test = hem.dropped
    # each user's pairs contiguous, in file order (users in order of first appearance)
    train = train.assign(_u=pd.factorize(train["user_id"])[0]).sort_values("_u", kind="stable")
    log = pd.DataFrame({"user_id": train["user_id"].to_numpy(), "item_id": train["item_id"].to_numpy(),
                        "query": [queries[q] for q in train["query_id"]]})
    test_pairs = pd.DataFrame({"user_id": test["user_id"], "item_id": test["item_id"],
                               "query": [queries[q] for q in test["query_id"]]})
    splits = lifelong_rows_given_test(log, test_pairs, item="item_id", hist_item="hist_item_id",
                                      hist_query="hist_query", eval_neg="eval_neg_item_id",
                                      max_len=spec["history"].max_len, train_positions=train_positions, seed=seed,
                                      universe=universe)
    strings = sorted(set(queries))
    catalogues = {"query": pd.DataFrame({"query": strings, "query_text": strings})}
    pairs = log.groupby("user_id", sort=False).size()
    return Built(splits, source=str(raw), catalogues=catalogues, extra={
        "protocol": "per user: train.qrels pairs in file order (no timestamps); valid = the last one; test = HEM's "
                    "test.qrels pairs (history = every train.qrels pair); train = the last %s train positions "
                    "t >= 1 + 1 negative each; 99 eval negatives over every item of the category" % train_positions,
        "queries": "HEM's query strings (category paths); test queries never occur in train",
        "items": "ids only (the HEM folder has no titles or categories)",
        "seed": seed, "max_users": max_users, "universe_items": len(universe),
        "dropped_label0_lines": {"train": dropped_train, "test": dropped_test},
        "train_pairs_per_user": {"mean": round(float(pairs.mean()), 2), "p50": float(pairs.median()),
                                 "p90": float(pairs.quantile(0.9)), "max": int(pairs.max())},
        "history": _history_stats(splits, "item_id", "hist_item_id"), **_summary(splits, "hist_item_id")})


# -- Taobao UserBehavior head --------------------------------------------------------------------------------------------
@register("taobao-head-lifelong", "Taobao UserBehavior head as lifelong item sequences (SEMINAR, no queries): "
          "id + category, leave-one-out, 99 sampled negatives")
def build_taobao_lifelong(spec: FeatureSpec, raw_dir: Path | None, *, max_users: int | None = None,
                          train_positions: int | None = 20, seed: int = SEED) -> Built:
    """Per user every behaviour (pv, cart, fav, buy) in time order (ties in file order), the `lifelong_rows`
    protocol with empty queries (the rows carry no query column). The catalogue maps every item of the file to
    its category (the category of the item's first line: one item of the head file has two). `max_users` keeps
    the first N users by id."""
    from ..interactions import chronological
    from .taobao import RAW_FILE, read_log

    raw = raw_dir or shared_datasets_dir() / "taobao_userbehavior_head"
    full = read_log(raw)
    firsts = full.drop_duplicates("item_id", keep="first").sort_values("item_id")
    catalogues = {"item_id": pd.DataFrame({"item_id": firsts["item_id"].to_numpy(),
                                           "category_id": [[int(c)] for c in firsts["category_id"]]})}
    log = full
    if max_users is not None:
        log = log[log["user_id"].isin(np.sort(log["user_id"].unique())[:max_users])]
    log = chronological(log.reset_index(drop=True), "user_id", "timestamp")
    log["query"] = ""
    splits = lifelong_rows(log[["user_id", "item_id", "query"]], item="item_id", hist_item="hist_item_id",
                           hist_query="hist_query", eval_neg="eval_neg_item_id", max_len=spec["history"].max_len,
                           train_positions=train_positions, seed=seed)
    splits = {k: df.drop(columns=["query", "hist_query"]) for k, df in splits.items()}
    lens = log.groupby("user_id", sort=False).size()
    return Built(splits, source=str(raw / RAW_FILE), catalogues=catalogues, extra={
        "protocol": "leave-one-out over every behaviour (pv/cart/fav/buy) in time order; train = last %s train "
                    "positions per user + 1 negative each; 99 eval negatives; no queries" % train_positions,
        "items": "id + category (side table: the category of the item's first line in the file)",
        "seed": seed, "max_users": max_users,
        "log_length_per_user": {"mean": round(float(lens.mean()), 2), "p50": float(lens.median()),
                                "p90": float(lens.quantile(0.9)), "max": int(lens.max())},
        "history": _history_stats(splits, "item_id", "hist_item_id"), **_summary(splits, "hist_item_id")})
