"""Amazon Beauty and Yelp as preprocessed by S3-Rec (`<Name>.txt` + `<Name>_item2attributes.json`).

Each line of `<Name>.txt` is `user item item ...`, items in time order, ids remapped from 1. The protocol is the
S3-Rec / SASRec one:

* leave-one-out per user: last item -> test, second to last -> valid, the rest train (users with fewer than 3
  items: all train, as `interactions.assign_splits` does; the S3-Rec files are 5-core so none are).
* train: for every position t >= 1 of the user's train part, a positive row (target = item t, history = items
  before t, `click` = 1) and one negative row with the same history and an item drawn uniformly from the items the
  user never interacted with (in any split), `click` = 0. Position 0 has no history and gives no row.
* valid / test: one positive row per user (history = everything before the target, so the test history holds the
  valid item) with `eval_negatives`: 99 distinct items the user never interacted with, drawn uniformly. Valid and
  test draw independently. Train rows carry an empty `eval_negatives`.
* `item_attrs`: the target item's attribute ids (Amazon: categories + brand; Yelp: business categories).
* activeness, the same on every row of a user (negatives and valid/test too): `user_activity` = the number of the
  user's train items (the sequence without its last two; position 0 counts though it has no row of its own; sampled
  negatives never count), `user_spread` = distinct attribute ids among them. No timestamps, so no recency.

Histories are strict prefixes of the user's sequence, so no valid/test interaction is ever in a train history and
no test interaction in a valid history. Yelp sequences repeat items (revisits): an earlier visit of the test item
may be in a history, the test interaction itself never is.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from ...features.spec import FeatureSpec
from ...paths import shared_datasets_dir
from ..interactions import assign_splits, attach_histories
from . import Built, register
from ._activeness import activeness_table, with_activeness
from ._sampling import SeenItems, read_user_lines, rng_for, sample_unseen

SEED = 2020  # S3-Rec's year; any fixed value works, it is recorded in the manifest
EVAL_NEGATIVES = 99
FOLDER = "s3rec_amazon_yelp_lastfm"


def read_item_attributes(path: Path) -> dict[int, list[int]]:
    """`{"item": [attr, ...]}` -> {item: [attr, ...]}; errors name the file (and line for bad JSON)."""
    if not path.exists():
        raise FileNotFoundError(f"{path}: missing (the S3-Rec item -> attribute ids file)")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a JSON object item -> [attribute ids], got {type(raw).__name__}")
    out = {}
    for key, attrs in raw.items():
        if not (str(key).isdigit() and isinstance(attrs, list) and all(isinstance(a, int) for a in attrs)):
            raise ValueError(f"{path}: entry {key!r}: expected an integer item id -> a list of integer attribute ids, "
                             f"got {attrs!r}")
        out[int(key)] = attrs
    return out


def build_s3rec(spec: FeatureSpec, raw_dir: Path | None, name: str, *, max_users: int | None = None,
                seed: int = SEED) -> Built:
    """Rows of S3-Rec dataset `name` ('Beauty', 'Yelp'); `max_users` keeps the first N users by id (for tests)."""
    raw = raw_dir or shared_datasets_dir() / FOLDER
    seq_path, attr_path = raw / f"{name}.txt", raw / f"{name}_item2attributes.json"
    lines = read_user_lines(seq_path, min_items=1)
    attrs = read_item_attributes(attr_path)
    # the item universe comes from the whole file, so a `max_users` subset samples negatives from the same items
    universe = np.unique(lines.items)
    lines = lines.take_users(max_users)
    lens = lines.lengths
    log = pd.DataFrame({"user_id": np.repeat(lines.users, lens), "item_id": lines.items})
    pos = np.arange(len(log)) - np.repeat(lines.offsets[:-1], lens)  # position in the user's sequence
    # the file is already in time order per user and users are sorted, as assign_splits/attach_histories expect
    ranks = assign_splits(log, "user_id", "leave_one_out")
    log = attach_histories(log, spec, "user_id", ranks, sequences=[spec["history"]])
    train_items = log.loc[ranks == 0, "item_id"].to_numpy()  # position 0 included: an interaction without a row
    log = with_activeness(log, "user_id", activeness_table(
        log.loc[ranks == 0, "user_id"].to_numpy(), categories=[attrs.get(int(i), []) for i in train_items]))
    log["click"] = np.float32(1.0)

    user_idx = np.repeat(np.arange(len(lines.users)), lens)
    seen = SeenItems(user_idx, np.searchsorted(universe, lines.items), len(lines.users), len(universe))

    # train: positive at each position >= 1, each followed by its negative (same user and history)
    train_pos = log[(ranks == 0) & (pos >= 1)].reset_index(drop=True)
    neg_items = universe[sample_unseen(seen, user_idx[(ranks == 0) & (pos >= 1)], 1, rng_for(seed, "train"))[:, 0]]
    train_neg = train_pos.assign(item_id=neg_items, click=np.float32(0.0))
    train = pd.concat([train_pos, train_neg]).sort_index(kind="stable").reset_index(drop=True)
    train["eval_neg_item_id"] = [[] for _ in range(len(train))]
    splits = {"train": train}
    for rank, split in ((1, "valid"), (2, "test")):
        part = log[ranks == rank].reset_index(drop=True)
        negs = universe[sample_unseen(seen, user_idx[ranks == rank], EVAL_NEGATIVES, rng_for(seed, split))]
        part["eval_neg_item_id"] = list(negs)
        splits[split] = part

    missing = [int(i) for i in universe if int(i) not in attrs]
    for df in splits.values():
        df["item_attrs"] = [attrs.get(int(i), []) for i in df["item_id"]]  # an item without attributes -> []
    return Built(splits, source=str(raw), extra={
        "split": "leave-one-out per user: last item test, second to last valid, rest train (users < 3 items: train)",
        "train_rows": "every train position t >= 1 (history = items before t) + 1 negative row per positive",
        "negative_sampler": "uniform over items the user never interacted with (any split); eval: 99 distinct, "
                            "drawn independently for valid and test",
        "seed": seed, "eval_negatives": EVAL_NEGATIVES, "max_users": max_users,
        "items_without_attributes": len(missing),
        "activeness": "from the user's train items only (position 0 included, negatives never): user_activity = "
                      "how many, user_spread = distinct attribute ids among them",
    })


@register("amazon-beauty", "Amazon Beauty (S3-Rec): next-item CTR, leave-one-out with 99 sampled negatives")
def build_amazon_beauty(spec: FeatureSpec, raw_dir: Path | None, *, max_users: int | None = None) -> Built:
    return build_s3rec(spec, raw_dir, "Beauty", max_users=max_users)


@register("yelp", "Yelp (S3-Rec): next-business CTR, leave-one-out with 99 sampled negatives")
def build_yelp(spec: FeatureSpec, raw_dir: Path | None, *, max_users: int | None = None) -> Built:
    return build_s3rec(spec, raw_dir, "Yelp", max_users=max_users)
