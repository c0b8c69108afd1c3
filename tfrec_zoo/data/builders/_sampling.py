"""Pieces the implicit-feedback builders share: reading `user item item ...` files, seeded generators, and
uniform negative sampling over the items a user never interacted with, vectorised with numpy.

Sampling works in index space: users and items are numbered 0..n-1 by the caller (e.g. with `np.unique`), and a
user's interactions are kept as sorted int64 keys `user * n_items + item`, so membership of millions of candidate
pairs is one `np.searchsorted`.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np


def rng_for(seed: int, purpose: str) -> np.random.Generator:
    """A generator for one purpose ('train_negatives', 'test_negatives', ...): each purpose has its own stream, so
    changing how many draws one step makes never shifts another step's samples."""
    return np.random.default_rng([seed, zlib.crc32(purpose.encode())])


@dataclass(frozen=True)
class UserLines:
    """A `user item item ...` file as flat arrays: line i is user `users[i]` with items
    `items[offsets[i]:offsets[i + 1]]` in file order."""

    users: np.ndarray
    offsets: np.ndarray
    items: np.ndarray

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def take_users(self, max_users: int | None) -> "UserLines":
        """The first `max_users` users by id (all when None), sorted by id."""
        order = np.argsort(self.users, kind="stable")
        if max_users is not None:
            order = order[:max_users]
        lens = self.lengths[order]
        starts = self.offsets[order]
        idx = np.repeat(starts - np.r_[0, np.cumsum(lens)[:-1]], lens) + np.arange(lens.sum())
        return UserLines(self.users[order], np.r_[0, np.cumsum(lens)].astype(np.int64), self.items[idx])


def read_user_lines(path: Path, min_items: int = 0) -> UserLines:
    """Parse a file of `user item item ...` lines (ints, whitespace separated). Raises ValueError naming the file
    and line for a non-integer token, a repeated user or a line with fewer than `min_items` items."""
    if not path.exists():
        raise FileNotFoundError(f"{path}: missing")
    users: list[int] = []
    lengths: list[int] = []
    items: list[int] = []
    seen: dict[int, int] = {}
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            tokens = line.split()
            if not tokens:
                continue  # trailing blank line
            try:
                values = [int(t) for t in tokens]
            except ValueError:
                bad = next(t for t in tokens if not t.lstrip("-").isdigit())
                raise ValueError(f"{path}:{lineno}: {bad!r} is not an integer id (expected `user item item ...`)") \
                    from None
            if values[0] in seen:
                raise ValueError(f"{path}:{lineno}: user {values[0]} already has line {seen[values[0]]}")
            if len(values) - 1 < min_items:
                raise ValueError(f"{path}:{lineno}: user {values[0]} has {len(values) - 1} items, "
                                 f"expected at least {min_items}")
            seen[values[0]] = lineno
            users.append(values[0])
            lengths.append(len(values) - 1)
            items.extend(values[1:])
    if not users:
        raise ValueError(f"{path}: no user lines")
    return UserLines(np.asarray(users, np.int64), np.r_[0, np.cumsum(lengths)].astype(np.int64),
                     np.asarray(items, np.int64))


class SeenItems:
    """Which items each user interacted with (any split), for sampling negatives among the others."""

    def __init__(self, user_idx: np.ndarray, item_idx: np.ndarray, n_users: int, n_items: int):
        self.n_items = int(n_items)
        self.keys = np.unique(np.asarray(user_idx, np.int64) * self.n_items + np.asarray(item_idx, np.int64))
        self.count = np.bincount(self.keys // self.n_items, minlength=n_users)  # distinct items per user

    def contains(self, user_idx: np.ndarray, item_idx: np.ndarray) -> np.ndarray:
        """Elementwise: did user `user_idx` interact with item `item_idx` (broadcasting)."""
        keys = np.asarray(user_idx, np.int64) * self.n_items + np.asarray(item_idx, np.int64)
        pos = np.minimum(np.searchsorted(self.keys, keys), len(self.keys) - 1)
        return self.keys[pos] == keys


def sample_unseen(seen: SeenItems, row_users: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """[len(row_users), k] item indices: per row, k distinct items drawn uniformly (without replacement) from the
    items its user never interacted with.

    Rejection sampling: draw a batch of candidates per row, drop seen items and repeats within the row (keeping the
    first occurrence, so the accepted sequence is a uniform draw without replacement), and redraw only for rows that
    still lack items. The result depends only on the inputs and the generator's state.
    """
    row_users = np.asarray(row_users, np.int64)
    n = len(row_users)
    out = np.empty((n, k), np.int64)
    if n == 0 or k == 0:
        return out
    short = seen.n_items - seen.count[row_users] < k
    if short.any():
        u = int(row_users[np.flatnonzero(short)[0]])
        raise ValueError(f"user index {u} interacted with {int(seen.count[u])} of {seen.n_items} items: fewer than "
                         f"{k} are left to sample as negatives")
    pending = np.arange(n)
    kept = np.full((n, k), -1, np.int64)  # accepted so far, left-aligned, -1 = empty
    while pending.size:
        users = row_users[pending]
        # enough draws that most rows finish in one round: k / (share of unseen items), plus slack
        share = (seen.n_items - seen.count[users].max()) / seen.n_items
        width = int(np.ceil(k / share * 1.2)) + 8
        cand = np.concatenate([kept[pending], rng.integers(0, seen.n_items, (pending.size, width))], axis=1)
        ok = (cand >= 0) & ~seen.contains(users[:, None], np.maximum(cand, 0))
        # a repeat within a row is dropped; the stable sort keeps the earliest column of equal values first
        order = np.argsort(cand, axis=1, kind="stable")
        srt = np.take_along_axis(cand, order, axis=1)
        rep_sorted = np.zeros_like(ok)
        rep_sorted[:, 1:] = srt[:, 1:] == srt[:, :-1]
        rep = np.empty_like(ok)
        np.put_along_axis(rep, order, rep_sorted, axis=1)
        ok &= ~rep
        rank = np.cumsum(ok, axis=1)
        take = ok & (rank <= k)
        got = rank[:, -1]
        done = got >= k
        out[pending[done]] = cand[done][take[done]].reshape(-1, k)
        rows, cols = np.nonzero(take & ~done[:, None])
        kept[pending[rows], rank[rows, cols] - 1] = cand[rows, cols]
        pending = pending[~done]
    return out
