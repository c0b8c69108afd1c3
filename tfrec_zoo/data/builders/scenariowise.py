"""Two small real multi-domain datasets for smoke tests: the Scenario-Wise-Rec samples (../shared/datasets/
multidomain_samples_scenariowise, MIT; LOADER.md there says where they come from).

douban-multidomain-sample  douban/douban_sample.csv, 3,000 rows (user_id, item_id, rating, domain, living_place,
    join_time, time_bin). Domain = book | movie | music. `like` = `rating`, which the sample already holds as 0/1
    (Scenario-Wise-Rec binarised Douban's 1-5 stars; a value other than 0/1 is an error naming its line). Features:
    user, item, domain, living_place (106 rows empty -> the OOV row via the spec's `fill: oov`), and `join_month`
    = time_bin, the month the user joined (months since 2005-05; join_time is the same fact as a date, so it is not
    a second feature).
mind-multidomain-sample  mind/mind_sample.csv, 8,000 rows (User_ID, News_ID, label, Category, SubCategory).
    Domain = the news Category (finance | lifestyle | news | sports), `click` = label; features: user (7,892 users
    in 8,000 rows: almost every evaluation user is an OOV row), news item, subcategory.

Split (both): each row independently, seeded (SEED), 80% train / 10% valid / 10% test. A per-user time split does
not fit: neither file has an interaction time (douban's join_time / time_bin are per-user constants, mind has
none), and users have a median of 2 rows (douban) and 1 row (mind), so per-user fractions would leave the
valid/test splits almost empty. The manifest records the split, the seed and the rows and positive rate per
domain and split (`extra.domain_stats`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from ...features.spec import FeatureSpec
from ...paths import shared_datasets_dir
from . import Built, register
from ._csv import read_checked_csv

FOLDER = "multidomain_samples_scenariowise"
SEED = 2024
VALID_FRAC, TEST_FRAC = 0.1, 0.1


def _read_csv(path: Path, kinds: dict[str, str]) -> pd.DataFrame:
    return read_checked_csv(path, kinds, missing_fix=f"point `--raw` (or TFREC_ZOO_SHARED_DATASETS/{FOLDER}) at the "
                            "folder holding the Scenario-Wise-Rec samples' douban/ and mind/")


def random_split(df: pd.DataFrame, seed: int = SEED) -> dict[str, pd.DataFrame]:
    """Each row independently: a seeded uniform draw puts it in test (< TEST_FRAC), valid (< + VALID_FRAC) or train;
    rows keep their file order inside a split."""
    r = np.random.default_rng(seed).random(len(df))
    test, valid = r < TEST_FRAC, (r >= TEST_FRAC) & (r < TEST_FRAC + VALID_FRAC)
    parts = {"train": ~(test | valid), "valid": valid, "test": test}
    return {name: df[mask].reset_index(drop=True) for name, mask in parts.items()}


def domain_stats(splits: dict[str, pd.DataFrame], label: str) -> dict[str, dict[str, dict[str, Any]]]:
    """{split: {domain: {rows, positive_rate}}}."""
    return {split: {str(dom): {"rows": int(n), "positive_rate": round(float(rate), 4)}
                    for dom, n, rate in df.groupby("domain")[label].agg(["size", "mean"]).itertuples()}
            for split, df in splits.items()}


def _build(name: str, csv: str, kinds: dict[str, str], reshape: Callable[[pd.DataFrame], pd.DataFrame],
           label: str, raw_dir: Path | None, seed: int) -> Built:
    path = (raw_dir or shared_datasets_dir() / FOLDER) / csv
    splits = random_split(reshape(_read_csv(path, kinds)), seed)
    extra = {"split": {"method": "random rows", "seed": seed, "valid_frac": VALID_FRAC, "test_frac": TEST_FRAC},
             "label": label, "domain_stats": domain_stats(splits, label)}
    return Built(splits, source=f"{FOLDER}/{csv} (Scenario-Wise-Rec sample, {name})", extra=extra)


@register("douban-multidomain-sample", "Douban book/movie/music sample (3,000 rows, Scenario-Wise-Rec): "
          "multi-domain smoke data, random rows 80/10/10")
def build_douban(spec: FeatureSpec, raw_dir: Path | None, *, seed: int = SEED) -> Built:
    kinds = {"user_id": "int", "item_id": "int", "rating": "binary", "domain": "text", "living_place": "text?",
             "time_bin": "int"}

    def reshape(df: pd.DataFrame) -> pd.DataFrame:
        return pd.DataFrame({"user_id": df["user_id"], "item_id": df["item_id"], "domain": df["domain"],
                             "living_place": df["living_place"], "join_month": df["time_bin"].astype(np.float64),
                             "like": df["rating"].astype(np.float64)})
    return _build("douban", "douban/douban_sample.csv", kinds, reshape, "like", raw_dir, seed)


@register("mind-multidomain-sample", "MIND news sample (8,000 rows, Scenario-Wise-Rec), domain = news category: "
          "multi-domain smoke data, random rows 80/10/10")
def build_mind(spec: FeatureSpec, raw_dir: Path | None, *, seed: int = SEED) -> Built:
    kinds = {"User_ID": "text", "News_ID": "text", "label": "binary", "Category": "text", "SubCategory": "text"}

    def reshape(df: pd.DataFrame) -> pd.DataFrame:
        return pd.DataFrame({"user_id": df["User_ID"], "news_id": df["News_ID"], "domain": df["Category"],
                             "subcategory": df["SubCategory"], "click": df["label"].astype(np.float64)})
    return _build("mind", "mind/mind_sample.csv", kinds, reshape, "click", raw_dir, seed)
