"""amazon-search-multidomain: HEM's four Amazon categories as domains, each with a search and a recommendation task.

Source: ../shared/datasets/amazon_product_search_hem (Ai et al. SIGIR'17), triples `<reviewerID>_<query line> 0
<asin> 1` per category. Domains (the `domain` feature, `kind: domain`): cell_phones (Cell_Phones_and_Accessories),
electronics (Electronics), kindle (Kindle_Store), cds (CDs_and_Vinyl).

Cold start: electronics (the smallest domain: 272 items, 5,541 triples, users with ~1 purchase each) is the held-out
domain. Its rows stay in every split; the manifest names it (`extra.cold_start`, select `domain == 'electronics'`)
with the rows and positive rate per domain, split and task (`extra.domain_stats`), so a later fine-tuning step
needs no extra column.

Tasks. Every row belongs to one task; both are binary labels of ONE dataset, and the spec's label masks (`mask:`,
the sample weight of a task) keep each task to its own rows, so a multi-task model (MMoE, PLE) gets one head per
task and the pointwise evaluation counts each task on its rows only (training/evaluation.py), per domain too:
* search (`is_search` = 1): one row per user-query-item triple; label `search` = 1, and each positive is followed by
  negatives that SHARE ITS QUERY (same user, query, history), items the user never interacted with.
* rec (`is_rec` = 1): one row per distinct user-item purchase of the domain; query '' (-> zero text vector) and
  `query_id` '' (never a vocabulary entry, so the OOV row); label `rec` = 1, negatives as above.
The label of the other task is 0 with mask 0 (weight 0: no loss, no metric). Masks rather than a second `kind:
domain` feature for the scenario: a mask column must be a number (data/reader.py casts it to the weight), each task
needs its own column (there is no "1 - column"), and a second domain feature would make every multi-domain model
name which of the two it gates on. `is_search` / `is_rec` are model inputs too (every non-label feature is); they
carry the scenario, which a serving request knows, and are constant within a task, so they give no label away.

Splits (a user-item pair's triples always go to one split):
* cell_phones keeps HEM's split as amazon-cellphones-search does: test = test.qrels; valid = per user with >= 3
  distinct train items, all triples of the item of the user's last train.qrels triple (file order); train = the
  rest of train.qrels. (HEM's test queries never occur in its train triples.)
* electronics, kindle, cds have only test.qrels (their train.qrels are not in the snapshot). Per user, in file
  order: users with >= 2 distinct items -> the item of the user's last triple, with all its triples, goes to test;
  users with >= 3 -> then the item of the last remaining triple goes to valid; everything else (including every
  user with a single item) -> train. (>= 3 for test as well would leave electronics 23 test pairs; >= 2 gives 172.)
* A pair present in two domains (an ASIN listed in two categories) keeps its latest split: its triples in an
  earlier split of another domain are dropped (`extra.cross_domain_pairs_dropped`), so no user-item pair is in
  train and in test.

Size cap (the whole build: 1 min 50 s to 3 min in three runs on 2 shared cores with the text cache warm, +~25 s to
encode its 2,486 distinct texts cold; 799 MB on disk), seeded and recorded in `extra.sample`. A draw in [0, 1) per id is a hash of (seed,
id) (`id_draw`), the same in every domain:
* kindle: the triples of the ASINs with draw < 0.1 (4,590 of 45,235 items; all their buyers, 15,143 users).
  Sampling items, not users, keeps items warm: with a 12% user sample 56% of kindle's test triples had an item
  without a train triple, with this item sample 8%.
* cell_phones: the users with draw < 0.2, plus every user of HEM's test.qrels so its small test set (667 triples)
  stays whole (6,022 users).
* electronics, cds: everything.
`max_users` (tests, CLI --max-users) then keeps the N users per domain with the smallest draws.

Features:
* query: the query string (a category path) -> MiniLM; query_id = "DOMAIN/LINE" (query lines are per category).
* item_text: the distinct queries the item occurs with in the TRAIN split (any domain), sorted, joined by " | ".
  In HEM every purchase is paired with all of the item's queries (checked: in all five qrels files every buyer of
  an item has the same query set), so this is the item's category paths, an item attribute, not a trace of who
  bought it. No valid/test triple contributes.
* hist_item_id: the user's distinct items of earlier splits (train rows: train; valid rows: train; test rows: train
  and valid), never the row's own item nor any test item of the user. No timestamps exist: other domains' items come
  first (domain order as above), the row's domain last, file order inside a domain; the most recent 50 are kept.
  Negatives copy their positive's history.

Negatives, drawn uniformly per domain (seeded, one stream per domain/split/task) among the items of the domain's
train split that the user never bought in any domain, sampled or not: 1 per positive in train, EVAL_NEGATIVES = 4
per positive in valid/test (pointwise rows with label 0, so AUC / GAUC per domain and task come from the pointwise
evaluation; 1 + 4 keeps valid/test at 110k / 132k rows). Only train items are drawn, and valid/test positives whose
item has no train triple in its domain are left out (`extra.cold_item_positives_left_out`: valid 1,614 search /
1,439 rec, test 1,209 / 944): such an item has an empty text and an OOV id, which only positives would have.

Rows (search + rec) per domain, default build (`extra.domain_stats` has the positive rates: 0.5 in train, 0.2 in
valid/test, in every domain and task):

    split   cell_phones        electronics     kindle             cds                all
    train   65,372 + 56,014    10,442 + 9,528  55,920 + 34,042    89,058 + 73,954    394,330
    valid   29,445 + 25,005    135 + 115       9,945 + 6,155      21,930 + 17,435    110,165
    test    3,230 + 2,970      1,020 + 835     25,480 + 15,770    45,685 + 37,020    132,010

Shortcut check (default build; `extra.shortcut_stats` records the first three per split and task):
* empty item text: 0.0 for positives and negatives in every split and task (see the negatives above).
* history: identical for a positive and its negatives (empty for 50% / 47% of train search / rec rows, the users
  with one purchase; never empty in valid/test, whose users have >= 2 items); never holds the target (0 rows).
* query in item text (search): positives 1.0 in train and valid and in test except cell_phones (0.008: HEM's test
  queries never occur in train), negatives 0.02-0.19. That is how HEM made its queries (a query is one of the bought
  item's category paths), not a leak, but it makes search easy: the exact match alone, as a score, has search AUC
  0.91 / 0.97 / 0.97 / 0.98 (cell_phones / electronics / kindle / cds) on train and 0.50 / 0.98 / 0.97 / 0.98 on
  test. A 1-epoch MMoE (training/experiments/mmoe-ml-latest-small.yaml with tasks search and rec) reached test
  search AUC 0.98 (cell_phones 0.88) and rec AUC 0.71: compare search models against the match, or look at the rec
  task and at cell_phones, where the match does not help.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ...features.spec import FeatureSpec
from ...paths import shared_datasets_dir
from . import Built, register
from ._sampling import SeenItems, rng_for, sample_unseen
from .amazon_search import FOLDER, read_qrels, read_queries


@dataclass(frozen=True)
class Domain:
    name: str
    folder: str
    hem_split: bool        # True: HEM's train.qrels / test.qrels; False: own per-user split of test.qrels
    sample_by: str = "item"   # "user" / "item": what the seeded share draws (see the module docstring)
    share: float = 1.0        # of the users / items kept; sized so the train split stays under ~400k rows


DOMAINS: tuple[Domain, ...] = (
    Domain("cell_phones", "Cell_Phones_and_Accessories", True, "user", 0.2),
    Domain("electronics", "Electronics", False),
    Domain("kindle", "Kindle_Store", False, "item", 0.1),
    Domain("cds", "CDs_and_Vinyl", False),
)
DOMAIN_NAMES: tuple[str, ...] = tuple(d.name for d in DOMAINS)
COLD_START = "electronics"
TASKS = ("search", "rec")
SPLITS = ("train", "valid", "test")
SEED = 2017
EVAL_NEGATIVES = 4
HISTORY_LEN = 50
TEXT_SEP = " | "


def id_draw(ids: np.ndarray, seed: int) -> np.ndarray:
    """A uniform [0, 1) number per id (ASIN or reviewerID), a pure function of (seed, id): the same in every domain
    and run."""
    out = np.empty(len(ids), np.float64)
    for i, v in enumerate(ids):
        digest = hashlib.blake2b(f"{seed}/{v}".encode(), digest_size=8).digest()
        out[i] = int.from_bytes(digest, "big") / 2.0**64
    return out


def sample_ids(ids: np.ndarray, share: float, max_ids: int | None, seed: int) -> np.ndarray:
    """The distinct `ids` with draw < share, at most `max_ids` of them (smallest draws first)."""
    draws = id_draw(ids, seed)
    order = np.argsort(draws, kind="stable")
    order = order[draws[order] < share]
    return ids[order[:max_ids] if max_ids is not None else order]


def hold_last_item(df: pd.DataFrame, min_items: int) -> pd.Series:
    """True for the triples of the item of each user's last triple (file order), for users with >= min_items
    distinct items."""
    by_user = df.groupby("user_id", sort=False)["item_id"]
    return (df["item_id"] == by_user.transform("last")) & (by_user.transform("nunique") >= min_items)


def sample_domain(dom: Domain, train: pd.DataFrame, test: pd.DataFrame, max_users: int | None, seed: int
                  ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The triples of the domain's sample: by item, those of the ASINs with draw < share; by user, those of the
    users with draw < share plus every user of a given test file. Then at most `max_users` users (smallest draws)."""
    both = pd.concat([train, test])
    if dom.sample_by == "item":
        both = both[both["item_id"].isin(sample_ids(both["item_id"].unique(), dom.share, None, seed))]
        users = both["user_id"].unique()
    else:
        users = np.union1d(sample_ids(both["user_id"].unique(), dom.share, None, seed),
                           test["user_id"].unique() if dom.hem_split else [])
        both = both[both["user_id"].isin(users)]
    users = sample_ids(np.asarray(users, object), 1.0, max_users, seed)
    keep = set(both["item_id"]), set(users)
    return tuple(df[df["item_id"].isin(keep[0]) & df["user_id"].isin(keep[1])].reset_index(drop=True)
                 for df in (train, test))


@dataclass
class DomainData:
    queries: list[str]           # query line -> string
    triples: pd.DataFrame        # the sample's (user_id, query_id, item_id, split) in file order
    purchases: pd.DataFrame      # every (user_id, item_id) of the raw files, sampled or not: what "seen" means
    dropped_label0: int


def split_domain(dom: Domain, raw: Path, max_users: int | None, seed: int) -> DomainData:
    """One domain read, sampled (`sample_domain`) and split (see the module docstring)."""
    folder = raw / dom.folder
    queries = read_queries(folder / "query_text.txt.gz")
    test, dropped = read_qrels(folder / "test.qrels.gz", len(queries))
    if dom.hem_split:
        train, dropped_train = read_qrels(folder / "train.qrels.gz", len(queries))
        dropped += dropped_train
    else:
        train, test = test, test.iloc[:0]
    purchases = pd.concat([train, test])[["user_id", "item_id"]].drop_duplicates()
    train, test = sample_domain(dom, train, test, max_users, seed)
    if not dom.hem_split:  # own split: the last item of users with >= 2 items -> test, the one before -> valid
        held = hold_last_item(train, 2)
        train, test = train[~held].reset_index(drop=True), train[held].reset_index(drop=True)
    held = hold_last_item(train, 3 if dom.hem_split else 2)
    parts = {"train": train[~held], "valid": train[held], "test": test}
    out = pd.concat([df.assign(split=name) for name, df in parts.items()], ignore_index=True)
    return DomainData(queries, out, purchases, dropped)


def drop_cross_domain_conflicts(triples: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """Keep only the latest split of each user-item pair across domains; (kept triples, number dropped)."""
    rank = triples["split"].map({s: i for i, s in enumerate(SPLITS)})
    latest = rank.groupby([triples["user_id"], triples["item_id"]]).transform("max")
    keep = rank == latest
    return triples[keep].reset_index(drop=True), int((~keep).sum())


def item_texts(train: pd.DataFrame) -> dict[str, str]:
    """item -> its distinct train query strings, sorted, joined by TEXT_SEP."""
    pairs = train[["item_id", "query"]].drop_duplicates().sort_values(["item_id", "query"], kind="stable")
    return pairs.groupby("item_id", sort=False)["query"].agg(TEXT_SEP.join).to_dict()


class Histories:
    """The user's distinct items per (split, domain) in file order; `of(user, domain, split, item)` builds a row's
    history (see the module docstring), without the row's item, the last HISTORY_LEN."""

    def __init__(self, triples: pd.DataFrame):
        firsts = triples.drop_duplicates(["user_id", "domain", "split", "item_id"])
        self.items: dict[tuple[str, str, str], list[str]] = {}
        for key, item in zip(zip(firsts["user_id"], firsts["domain"], firsts["split"]), firsts["item_id"]):
            self.items.setdefault(key, []).append(item)
        self._cache: dict[tuple[str, str, str], list[str]] = {}

    def base(self, user: str, domain: str, split: str) -> list[str]:
        key = (user, domain, split)
        if key not in self._cache:
            earlier = ("train",) if split in ("train", "valid") else ("train", "valid")
            order = [d for d in DOMAIN_NAMES if d != domain] + [domain]
            items = [i for d in order for s in earlier for i in self.items.get((user, d, s), ())]
            # an ASIN bought in two categories appears once, at its last place (the row's domain if it is there)
            self._cache[key] = list(dict.fromkeys(reversed(items)))[::-1]
        return self._cache[key]

    def of(self, user: str, domain: str, split: str, item: str) -> list[str]:
        return [i for i in self.base(user, domain, split) if i != item][-HISTORY_LEN:]


def positives(triples: pd.DataFrame, queries: dict[str, list[str]], task: str) -> pd.DataFrame:
    """The positive rows of one task from (domain, split)-tagged triples."""
    if task == "search":
        df = triples.assign(query=[queries[d][q] for d, q in zip(triples["domain"], triples["query_id"])],
                            query_id=triples["domain"] + "/" + triples["query_id"].astype(str))
    else:
        df = triples.drop_duplicates(["domain", "split", "user_id", "item_id"]).assign(query="", query_id="")
    return df.assign(is_search=np.float32(task == "search"), is_rec=np.float32(task == "rec"),
                     search=np.float32(task == "search"), rec=np.float32(task == "rec")).reset_index(drop=True)


class Sampler:
    """Unseen-item negatives per domain: the pool is the domain's train items; seen = every purchase in the raw files
    of any domain (also those the sample left out: an ASIN can be listed in two categories)."""

    def __init__(self, triples: pd.DataFrame, purchases: pd.DataFrame, seed: int):
        self.seed = seed
        self.users = np.unique(triples["user_id"].to_numpy()).astype(object)
        train = triples[triples["split"] == "train"]
        purchases = purchases[purchases["user_id"].isin(self.users)]
        self.pool: dict[str, np.ndarray] = {}
        self.seen: dict[str, SeenItems] = {}
        self._pool_sets: dict[str, set] = {}
        for d in DOMAIN_NAMES:
            pool = np.unique(train.loc[train["domain"] == d, "item_id"].to_numpy()).astype(object)
            inside = purchases[purchases["item_id"].isin(pool)]
            self.pool[d] = pool
            self._pool_sets[d] = set(pool)
            self.seen[d] = SeenItems(np.searchsorted(self.users, inside["user_id"].to_numpy()),
                                     np.searchsorted(pool, inside["item_id"].to_numpy()), len(self.users), len(pool))

    def warm(self, domains: pd.Series, items: pd.Series) -> np.ndarray:
        """Per row: is the item in its domain's train split (so it has an item text and an id in the vocabulary)."""
        return np.fromiter((i in self._pool_sets[d] for d, i in zip(domains, items)), bool, len(items))

    def draw(self, domain: str, users: np.ndarray, k: int, purpose: str) -> np.ndarray:
        rows = np.searchsorted(self.users, users)
        return self.pool[domain][sample_unseen(self.seen[domain], rows, k, rng_for(self.seed, purpose))]


def with_negatives(pos: pd.DataFrame, sampler: Sampler, split: str, task: str) -> pd.DataFrame:
    """Each positive followed by k rows (1 in train, EVAL_NEGATIVES otherwise) with a sampled item and label 0."""
    k = 1 if split == "train" else EVAL_NEGATIVES
    parts = []
    for d, grp in pos.groupby("domain", sort=False):
        items = sampler.draw(d, grp["user_id"].to_numpy(), k, f"{d}/{split}/{task}")
        neg = grp.loc[grp.index.repeat(k)].assign(item_id=items.ravel(), **{task: np.float32(0.0)})
        parts += [grp, neg]
    return pd.concat(parts).sort_index(kind="stable")


def domain_stats(splits: dict[str, pd.DataFrame]) -> dict[str, Any]:
    """{split: {domain: {task: {rows, positives, positive_rate}}}} over the rows of each task (its mask = 1)."""
    out: dict[str, Any] = {}
    for split, df in splits.items():
        out[split] = {}
        for d in DOMAIN_NAMES:
            rows = df[df["domain"] == d]
            out[split][d] = {}
            for task in TASKS:
                y = rows.loc[rows[f"is_{task}"] == 1, task]
                out[split][d][task] = {"rows": len(y), "positives": int(y.sum()),
                                       "positive_rate": round(float(y.mean()), 4) if len(y) else None}
    return out


def shortcut_stats(splits: dict[str, pd.DataFrame]) -> dict[str, Any]:
    """Per split and task, positives vs negatives: share with an empty item text, share whose item text contains
    the row's query (search), share with an empty history, and rows whose history holds the target (must be 0)."""
    out: dict[str, Any] = {}
    for split, df in splits.items():
        out[split] = {}
        for task in TASKS:
            rows = df[df[f"is_{task}"] == 1]
            res: dict[str, Any] = {}
            for name, part in (("pos", rows[rows[task] == 1]), ("neg", rows[rows[task] == 0])):
                text = part["item_text"]
                res[f"empty_item_text_{name}"] = round(float((text == "").mean()), 4)
                res[f"empty_history_{name}"] = round(float((part["hist_item_id"].map(len) == 0).mean()), 4)
                if task == "search":
                    hit = [q in t.split(TEXT_SEP) for q, t in zip(part["query"], text)]
                    res[f"query_in_item_text_{name}"] = round(float(np.mean(hit)), 4)
            res["target_in_history"] = int(sum(i in h for i, h in zip(rows["item_id"], rows["hist_item_id"])))
            out[split][task] = res
    return out


def _rows(triples: pd.DataFrame, queries: dict[str, list[str]], sampler: Sampler, texts: dict[str, str],
          seed: int) -> tuple[dict[str, pd.DataFrame], dict[str, Any]]:
    """(rows per split, {split: {task: {domain: cold positives left out}}})."""
    hist = Histories(triples)
    splits, cold = {}, {}
    for split in SPLITS:
        part = triples[triples["split"] == split]
        frames = []
        for task in TASKS:
            pos = positives(part, queries, task)
            if split != "train":  # an item without a train triple: empty text and an OOV id only positives had
                warm = sampler.warm(pos["domain"], pos["item_id"])
                cold.setdefault(split, {})[task] = {d: int((~warm & (pos["domain"] == d)).sum())
                                                    for d in DOMAIN_NAMES}
                pos = pos[warm].reset_index(drop=True)
            pos["hist_item_id"] = [hist.of(u, d, split, i)
                                   for u, d, i in zip(pos["user_id"], pos["domain"], pos["item_id"])]
            frames.append(with_negatives(pos, sampler, split, task).assign(group=lambda x, t=task: t + "/"
                                                                           + x.index.astype(str)))
        df = pd.concat(frames, ignore_index=True)
        if split == "train":  # interleave domains and tasks (a positive stays right before its negative)
            groups = df["group"].unique()
            rank = dict(zip(groups, rng_for(seed, "train_order").permutation(len(groups))))
            df = df.iloc[np.argsort(df["group"].map(rank).to_numpy(), kind="stable")]
        df = df.drop(columns=["group", "split"]).reset_index(drop=True)
        df["item_text"] = df["item_id"].map(texts).fillna("")
        splits[split] = df
    return splits, cold


@register("amazon-search-multidomain", "HEM's 4 Amazon categories as domains, a search and a rec task each "
          "(label masks), electronics held out as cold-start")
def build_amazon_search_multidomain(spec: FeatureSpec, raw_dir: Path | None, *, max_users: int | None = None,
                                    seed: int = SEED) -> Built:
    """`raw_dir`: the amazon_product_search_hem folder (with one sub-folder per category). `max_users` keeps at
    most N sampled users per domain (tests, --max-users)."""
    raw = raw_dir or shared_datasets_dir() / FOLDER
    data = {dom.name: split_domain(dom, raw, max_users, seed) for dom in DOMAINS}
    queries = {d: v.queries for d, v in data.items()}
    triples, dropped = drop_cross_domain_conflicts(pd.concat([v.triples.assign(domain=d) for d, v in data.items()],
                                                             ignore_index=True))
    train = triples[triples["split"] == "train"]
    texts = item_texts(train.assign(query=[queries[d][q] for d, q in zip(train["domain"], train["query_id"])]))
    sampler = Sampler(triples, pd.concat([v.purchases for v in data.values()]), seed)
    splits, cold = _rows(triples, queries, sampler, texts, seed)
    kept = triples.groupby("domain")["user_id"].nunique()
    # catalogues (label-free): each item's text and each query's string, for `side_of` text features (the [CLS]
    # token outputs `item_text_cls` / `query_cls`, encoded once per item / query instead of once per row)
    rows = pd.concat(splits.values(), ignore_index=True)
    catalogues = {"item_id": pd.DataFrame(sorted(texts.items()), columns=["item_id", "item_text"]),
                  "query_id": rows.loc[rows["query_id"] != "", ["query_id", "query"]].drop_duplicates("query_id")
                  .sort_values("query_id").reset_index(drop=True)}
    return Built(splits, source=str(raw), catalogues=catalogues, extra={
        "domains": {"names": list(DOMAIN_NAMES), "folders": {d.name: d.folder for d in DOMAINS}},
        "cold_start": {"domain": COLD_START, "select": f"domain == '{COLD_START}'",
                       "note": "its rows stay in every split; experiments choose how many to train on"},
        "tasks": {"search": "is_search == 1: user + query -> item; negatives share the query",
                  "rec": "is_rec == 1: user -> item; query '' and query_id '' (OOV)"},
        "split": "cell_phones: HEM train/test.qrels, valid = per user with >= 3 distinct train items the item of "
                 "the last train triple; other domains (test.qrels only): per user, >= 2 distinct items -> the "
                 "item of the last triple to test, >= 3 -> the next last to valid, the rest to train; a pair in "
                 "two domains keeps its latest split",
        "sample": {"by": {d.name: d.sample_by for d in DOMAINS}, "share": {d.name: d.share for d in DOMAINS},
                   "max_users": max_users,
                   "users_kept": {d: int(kept.get(d, 0)) for d in DOMAIN_NAMES},
                   "items_kept": {d: int(n) for d, n in triples.groupby("domain")["item_id"].nunique().items()},
                   "triples_kept": {d: {s: int((g == s).sum()) for s in SPLITS}
                                    for d, g in triples.groupby("domain")["split"]}},
        "cross_domain_pairs_dropped": dropped,
        "dropped_label0_lines": {d: v.dropped_label0 for d, v in data.items()},
        "cold_item_positives_left_out": cold,
        "negative_sampler": f"uniform over the domain's train items the user never interacted with; train 1 per "
                            f"positive, valid/test {EVAL_NEGATIVES}; same user/query/history",
        "seed": seed, "eval_negatives": EVAL_NEGATIVES,
        "domain_stats": domain_stats(splits),
        "shortcut_stats": shortcut_stats(splits),
    })
