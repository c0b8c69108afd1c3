"""Per-user activeness features (issue 13: Adaptive Interest Selection decides from them how many interest vectors
a user gets), computed from the train split only.

* `user_activity`: how many train interactions the user has.
* `user_spread`: how many distinct categories (genres, attributes, map cells) the user's train items cover.
* `user_recency`: days from the user's last train interaction to the end of the train period (the latest train
  timestamp over all users).

The caller passes only the user's train interactions (positives: never a sampled negative, never a valid/test row),
so a feature never counts what the model is evaluated on. Every row of a user, in every split and negative or not,
gets the same values; a user without train interactions gets 0 for each.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

ACTIVITY, SPREAD, RECENCY = "user_activity", "user_spread", "user_recency"
SECONDS_PER_DAY = 86_400.0


def activeness_table(users: np.ndarray, *, categories: Sequence | None = None,
                     times: np.ndarray | None = None) -> pd.DataFrame:
    """One row per user with train interactions: `user_activity`, and `user_spread` when `categories` (per
    interaction: a list of category values, or one value) and `user_recency` when `times` (unix seconds) are given.

    `users` (and `categories`, `times`, aligned with it) must hold the train interactions only.
    """
    users = np.asarray(users)
    table = pd.DataFrame({ACTIVITY: pd.Series(users).value_counts(sort=False).astype(np.float64)})
    if categories is not None:
        # explode turns each list into one row per value ([] -> NaN, dropped); a scalar stays one row
        pairs = pd.DataFrame({"user": users, "category": list(categories)}).explode("category").dropna()
        spread = pairs.drop_duplicates().groupby("user").size()
        table[SPREAD] = spread.reindex(table.index, fill_value=0).astype(np.float64)
    if times is not None:
        times = np.asarray(times, dtype=np.float64)
        last = pd.Series(times).groupby(users).max()
        end = times.max() if times.size else 0.0  # no train rows at all: an empty table, nothing to measure from
        table[RECENCY] = ((end - last) / SECONDS_PER_DAY).reindex(table.index)
    return table


def with_activeness(frame: pd.DataFrame, user: str, table: pd.DataFrame) -> pd.DataFrame:
    """`frame` with the table's columns looked up by `frame[user]` (0 for users the table does not have)."""
    values = table.reindex(frame[user].to_numpy(), fill_value=0.0)
    return frame.assign(**{col: values[col].to_numpy(np.float64) for col in table.columns})
