"""Amazon personalized product search (HEM benchmark, Ai et al. SIGIR'17), Cell_Phones_and_Accessories.

Raw files (gzip): `query_text.txt.gz` (query line i = query_id i), `train.qrels.gz` / `test.qrels.gz` with lines
`<reviewerID>_<query line> 0 <asin> <label>`. One row per user-query-item triple; label-0 lines (none in this
category) are not purchases and are dropped. User and item ids stay strings (reviewerID, ASIN).

* test: the test qrels triples, positives only, each with `eval_negatives`: 99 distinct items the user never
  interacted with (train or test qrels), drawn uniformly. Search mode: the negatives are ranked for the row's own
  query. HEM's test queries never occur in training, so their `query_id` is out of vocabulary by design; the
  `query` text vector carries them.
* valid: for each user with >= 3 distinct train items, the item of the user's last train triple in file order is
  held out with all of that user's triples for it (so the held-out item is never a training positive of that user
  for another query, nor in the user's train histories). Valid rows carry 99 `eval_negatives` like test rows.
* train: the remaining train triples (label 1), each followed by one negative row: same user, query and history,
  an item drawn uniformly from the items the user never interacted with, label 0.
* history: the files have no timestamps, so the order of a user's purchases is unknown. The history is the user's
  distinct train items in file order (first occurrence), the most recent 50, without the row's own item: train rows
  see the train part, valid rows the train part, test rows the train part and the held-out valid items. A user's
  test items are removed from every history of that user (none of them is in train.qrels for this category anyway).
  A negative row copies its positive's history, so the history cannot tell the two apart.
"""
from __future__ import annotations

from dataclasses import dataclass

import gzip
from pathlib import Path

import numpy as np
import pandas as pd

from ...features.spec import FeatureSpec
from ...paths import shared_datasets_dir
from . import Built, register
from ._sampling import SeenItems, rng_for, sample_unseen

SEED = 2017  # HEM's year; recorded in the manifest
EVAL_NEGATIVES = 99
HISTORY_LEN = 50
FOLDER = "amazon_product_search_hem"


def read_queries(path: Path) -> list[str]:
    if not path.exists():
        raise FileNotFoundError(f"{path}: missing (one query string per line)")
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        queries = [line.rstrip("\n") for line in fh]
    for lineno, q in enumerate(queries, 1):
        if not q.strip():
            raise ValueError(f"{path}:{lineno}: empty query")
    return queries


def read_qrels(path: Path, n_queries: int) -> tuple[pd.DataFrame, int]:
    """`<user>_<query> 0 <asin> <label>` lines -> DataFrame(user_id, query_id, item_id) of the label-1 lines in file
    order, and the number of label-0 lines dropped."""
    if not path.exists():
        raise FileNotFoundError(f"{path}: missing (qrels lines `<reviewerID>_<query line> 0 <asin> <label>`)")
    users, queries, items, dropped = [], [], [], 0
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            parts = line.split()
            if not parts:
                continue
            user, sep, query = parts[0].rpartition("_")
            if len(parts) != 4 or not sep or not user or not query.isdigit() or parts[3] not in ("0", "1"):
                raise ValueError(f"{path}:{lineno}: expected `<reviewerID>_<query line> 0 <asin> <0|1>`, got "
                                 f"{line.strip()!r}")
            if int(query) >= n_queries:
                raise ValueError(f"{path}:{lineno}: query line {query} is past the {n_queries} queries of "
                                 "query_text.txt.gz")
            if parts[3] == "0":
                dropped += 1
                continue
            users.append(user)
            queries.append(int(query))
            items.append(parts[2])
    if not users:
        raise ValueError(f"{path}: no label-1 lines")
    return pd.DataFrame({"user_id": users, "query_id": np.asarray(queries, np.int64), "item_id": items}), dropped


def _histories(rows: pd.DataFrame, items_of: dict[str, list[str]]) -> list[list[str]]:
    """Per row: its user's items from `items_of` without the row's own item, the last HISTORY_LEN."""
    out = []
    for user, item in zip(rows["user_id"], rows["item_id"]):
        hist = [i for i in items_of.get(user, ()) if i != item]
        out.append(hist[-HISTORY_LEN:])
    return out


def _distinct_items(df: pd.DataFrame, banned: dict[str, set]) -> dict[str, list[str]]:
    """user -> distinct items in file order (first occurrence), without the user's `banned` (test) items."""
    firsts = df.drop_duplicates(["user_id", "item_id"])
    out: dict[str, list[str]] = {}
    for user, item in zip(firsts["user_id"], firsts["item_id"]):
        if item not in banned.get(user, ()):
            out.setdefault(user, []).append(item)
    return out


@dataclass
class HEMData:
    queries: list[str]
    train: pd.DataFrame
    test: pd.DataFrame
    universe: np.ndarray            # every item of the category (object array), also for a `max_users` subset
    dropped: tuple[int, int]        # label-0 lines dropped from train / test qrels


def read_hem(raw: Path, max_users: int | None = None) -> HEMData:
    """One HEM category folder: query strings, train / test qrels (`max_users`: the first N users by reviewerID,
    sorted as strings) and the item universe of the whole category, so a subset samples from the same items."""
    queries = read_queries(raw / "query_text.txt.gz")
    train, dropped_train = read_qrels(raw / "train.qrels.gz", len(queries))
    test, dropped_test = read_qrels(raw / "test.qrels.gz", len(queries))
    universe = np.unique(np.r_[train["item_id"].to_numpy(), test["item_id"].to_numpy()]).astype(object)
    if max_users is not None:
        keep = set(sorted(set(train["user_id"]) | set(test["user_id"]))[:max_users])
        train = train[train["user_id"].isin(keep)].reset_index(drop=True)
        test = test[test["user_id"].isin(keep)].reset_index(drop=True)
    return HEMData(queries, train, test, universe, (dropped_train, dropped_test))


@register("amazon-cellphones-search", "Amazon Cell Phones personalized product search (HEM): user-query-item "
          "triples, MiniLM query vectors, 99 sampled negatives for test")
def build_amazon_cellphones_search(spec: FeatureSpec, raw_dir: Path | None, *, max_users: int | None = None,
                                   seed: int = SEED) -> Built:
    """`max_users` keeps the first N users by reviewerID (sorted as strings), for tests."""
    raw = raw_dir or shared_datasets_dir() / FOLDER / "Cell_Phones_and_Accessories"
    hem = read_hem(raw, max_users)
    queries, train_all, test, universe = hem.queries, hem.train, hem.test, hem.universe
    dropped_train, dropped_test = hem.dropped

    # valid: the item of each user's last train triple (users with >= 3 distinct train items), all its triples
    by_user = train_all.groupby("user_id", sort=False)["item_id"]
    held = (train_all["item_id"] == by_user.transform("last")) & (by_user.transform("nunique") >= 3)
    train, valid = train_all[~held].reset_index(drop=True), train_all[held].reset_index(drop=True)

    test_items = test.groupby("user_id")["item_id"].agg(set).to_dict()
    train_items = _distinct_items(train, test_items)
    train["hist_item_id"] = _histories(train, train_items)
    valid["hist_item_id"] = _histories(valid, train_items)
    test["hist_item_id"] = _histories(test, _distinct_items(train_all, test_items))  # train + valid, file order

    users = np.unique(np.r_[train_all["user_id"].to_numpy(), test["user_id"].to_numpy()]).astype(object)
    both = pd.concat([train_all, test])
    seen = SeenItems(np.searchsorted(users, both["user_id"].to_numpy()),
                     np.searchsorted(universe, both["item_id"].to_numpy()), len(users), len(universe))

    def negatives(df: pd.DataFrame, k: int, purpose: str) -> np.ndarray:
        rows = np.searchsorted(users, df["user_id"].to_numpy())
        return universe[sample_unseen(seen, rows, k, rng_for(seed, purpose))]

    train["click"] = np.float32(1.0)
    train_neg = train.assign(item_id=negatives(train, 1, "train")[:, 0], click=np.float32(0.0))
    # each positive followed by its negative
    train = pd.concat([train, train_neg]).sort_index(kind="stable").reset_index(drop=True)
    train["eval_neg_item_id"] = [[] for _ in range(len(train))]
    splits = {"train": train}
    for split, df in (("valid", valid), ("test", test)):
        df["click"] = np.float32(1.0)
        df["eval_neg_item_id"] = [list(r) for r in negatives(df, EVAL_NEGATIVES, split)]
        splits[split] = df
    for df in splits.values():
        df["query"] = [queries[q] for q in df["query_id"]]
    return Built(splits, source=str(raw), extra={
        "split": "test = test.qrels; valid = per user with >= 3 distinct train items, all triples of the item of the "
                 "user's last train.qrels triple (file order); train = the rest of train.qrels",
        "history": "no timestamps: the user's distinct train items in file order without the row's item (test rows "
                   "also see valid items); test items never",
        "negative_sampler": "uniform over items the user never interacted with (train or test qrels); train: 1 per "
                            "positive, same user/query/history; valid/test: 99 distinct, same query",
        "seed": seed, "eval_negatives": EVAL_NEGATIVES, "max_users": max_users,
        "dropped_label0_lines": {"train": dropped_train, "test": dropped_test},
    })
