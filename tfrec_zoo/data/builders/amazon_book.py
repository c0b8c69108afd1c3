"""Amazon-Book 10-core as split by KGAT (`train.txt` / `test.txt`, lines `user item item ...`), for candidate
generation (two-tower) with full-corpus recall: one row per (user, item) interaction, label `click` = 1, no
negatives written (in-batch / full-corpus negatives are the model's business).

* ids are KGAT's remap ids as in the files (users and items from 0, matching `user_list.txt` / `item_list.txt`);
  `hist_item_id` pads with -1 so the padding is never item 0.
* test: `test.txt` as given. valid: for users with >= 5 train items, a seeded sample of round(5%) (at least 1) of
  their `train.txt` items; train: the rest of `train.txt`.
* history: the files have no timestamps (the item order on a line is not time), so the history is the user's other
  train items in file order. A train row at position p of the user's train items sees the (up to) 50 train items
  before p, wrapping around the end of the list, so every other train item when the user has <= 51 and different
  windows of a long list otherwise. Valid rows see the last 50 train items, test rows the last 50 of train + valid
  items. Test items are in no history, valid items in no train history.
* `user_activity` (every row of a user, every split): the user's number of train rows, so valid and test items are
  never counted (see `_activeness`). No timestamps and no categories, so no recency or spread.
Everything is numpy: 846k rows take a few seconds here; writing the TFRecords dominates the build.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ...features.spec import FeatureSpec
from ...paths import shared_datasets_dir
from . import Built, register
from ._activeness import activeness_table, with_activeness
from ._sampling import read_user_lines, rng_for

SEED = 2019  # KGAT's year; recorded in the manifest
HISTORY_LEN = 50
VALID_FRAC = 0.05
VALID_MIN_ITEMS = 5
FOLDER = "amazon-book_kgat"


def _ragged(values: np.ndarray, lengths: np.ndarray) -> list[np.ndarray]:
    """Split a flat array into per-row arrays (views, so 846k rows cost no copies)."""
    return np.split(values, np.cumsum(lengths)[:-1])


def _last_k(items: np.ndarray, starts: np.ndarray, lengths: np.ndarray, k: int) -> list[np.ndarray]:
    """Per group (start, length) in `items`: its last k values."""
    return [items[s + max(n - k, 0): s + n] for s, n in zip(starts.tolist(), lengths.tolist())]


@register("amazon-book", "Amazon-Book 10-core (KGAT split): one row per interaction with the user's other train "
          "items, for two-tower candidate generation and full-corpus recall")
def build_amazon_book(spec: FeatureSpec, raw_dir: Path | None, *, max_users: int | None = None,
                      seed: int = SEED) -> Built:
    """`max_users` keeps the first N users by id (for tests)."""
    raw = raw_dir or shared_datasets_dir() / FOLDER
    train_lines = read_user_lines(raw / "train.txt", min_items=1).take_users(max_users)
    test_lines = read_user_lines(raw / "test.txt").take_users(None)
    if max_users is not None:  # the test lines of the same users: ids up to the last kept train user
        test_lines = test_lines.take_users(int(np.searchsorted(test_lines.users, train_lines.users[-1], "right")))
    n_users = len(train_lines.users)
    lens = train_lines.lengths
    user = np.repeat(train_lines.users, lens)
    pos = np.arange(len(user)) - np.repeat(train_lines.offsets[:-1], lens)

    # valid: per eligible user, the n_valid positions with the smallest seeded random keys
    n_valid = np.where(lens >= VALID_MIN_ITEMS, np.maximum(1, np.round(lens * VALID_FRAC)), 0).astype(np.int64)
    key = rng_for(seed, "valid").random(len(user))
    order = np.lexsort((key, user))  # users are sorted and contiguous, so this orders within each user
    rank = np.empty(len(user), np.int64)
    rank[order] = pos  # pos of the i-th sorted row equals its rank inside its user's block
    is_valid = rank < np.repeat(n_valid, lens)

    # the train part per user, in file order
    t_user, t_item = user[~is_valid], train_lines.items[~is_valid]
    t_lens = lens - n_valid
    t_starts = np.r_[0, np.cumsum(t_lens)[:-1]]
    t_pos = np.arange(len(t_user)) - np.repeat(t_starts, t_lens)
    t_size = np.repeat(t_lens, t_lens)
    # train history: the L = min(size - 1, 50) items before p cyclically, oldest first (steps p-L .. p-1 mod size)
    hist_len = np.minimum(t_size - 1, HISTORY_LEN)
    steps = np.arange(HISTORY_LEN, 0, -1)[None, :]  # 50 .. 1 steps back
    use = steps <= hist_len[:, None]
    src = np.repeat(t_starts, t_lens)[:, None] + (t_pos[:, None] - steps) % np.maximum(t_size, 1)[:, None]
    train = pd.DataFrame({"user_id": t_user, "item_id": t_item})
    train["hist_item_id"] = _ragged(t_item[src[use]], hist_len)  # row-major: each row's steps stay in order

    valid = pd.DataFrame({"user_id": user[is_valid], "item_id": train_lines.items[is_valid]})
    t_hist = _last_k(t_item, t_starts, t_lens, HISTORY_LEN)
    valid["hist_item_id"] = [t_hist[u] for u in np.repeat(np.arange(n_users), n_valid)]

    # test rows see train + valid items: the whole train.txt line of the user
    test_users = np.searchsorted(train_lines.users, test_lines.users)
    if not np.array_equal(train_lines.users[np.minimum(test_users, n_users - 1)], test_lines.users):
        bad = test_lines.users[train_lines.users[np.minimum(test_users, n_users - 1)] != test_lines.users][0]
        raise ValueError(f"{raw / 'test.txt'}: user {bad} has no line in train.txt")
    all_hist = _last_k(train_lines.items, train_lines.offsets[:-1], lens, HISTORY_LEN)
    test = pd.DataFrame({"user_id": np.repeat(test_lines.users, test_lines.lengths), "item_id": test_lines.items})
    test["hist_item_id"] = [all_hist[u] for u in np.repeat(test_users, test_lines.lengths)]
    overlap = np.intersect1d(test["user_id"].to_numpy() * (1 << 32) + test["item_id"].to_numpy(),
                             user * (1 << 32) + train_lines.items)
    if overlap.size:  # a test interaction in train.txt would sit in histories: refuse rather than leak
        u, i = divmod(int(overlap[0]), 1 << 32)
        raise ValueError(f"{raw}: user {u} has item {i} in both train.txt and test.txt")

    # activeness (train split only; no timestamps and no categories here, so only user_activity)
    active = activeness_table(t_user)
    splits = {name: with_activeness(df, "user_id", active) for name, df in
              {"train": train, "valid": valid, "test": test}.items()}
    for df in splits.values():
        df["click"] = np.float32(1.0)
    return Built(splits, source=str(raw), extra={
        "split": "test = test.txt; valid = seeded round(5%) (>= 1) of train.txt items of users with >= 5 of them; "
                 "train = the rest",
        "history": "no timestamps: the user's other train items in file order, the 50 before the row's item "
                   "cyclically (valid: last 50 train items; test: last 50 of train + valid)",
        "negative_sampler": "none: positives only, for in-batch / full-corpus retrieval",
        "activeness": "user_activity = the user's number of train rows (valid/test rows not counted), on every row",
        "seed": seed, "max_users": max_users,
    })
