"""ml-latest-small-domains: ml-latest-small (seeds/) with one recommendation domain per genre group.

Examples, label, split, histories, title/query text are exactly those of `ml-latest-small` (this builder calls it),
plus a catalogue of the movies' titles for `side_of: movie_id` text (the [CLS] token output `title_cls`):
per-user time split (last 10% of each user's ratings -> test, the 10% before -> valid), `like` = rating >= 4,
history = the user's earlier ratings (of every domain), never one of a later split.

Domain rule (deterministic, from the movie's genres in movies.csv): the groups are checked in this fixed order and
a movie belongs to the FIRST group that contains any of its genres:

    0 family  Animation, Children, Musical
    1 dark    Horror, Thriller, Mystery, Crime, Film-Noir
    2 action  Action, Adventure, Sci-Fi, War, Western, Fantasy, IMAX
    3 comedy  Comedy, Romance
    4 drama   Drama, Documentary, and movies with "(no genres listed)" (the catch-all)

so every movie has exactly one domain (Toy Story: Adventure|Animation|...|Comedy -> family).

Cold start: `family` (12% of the ratings, the second smallest group; the smallest, drama, is the catch-all) is the
held-out domain. Its rows stay in every split; the manifest records it (`extra.cold_start`) with the per-domain row
counts and positive rates per split, and `domain == 0` selects its rows, so a later fine-tuning step needs no
extra column. Per-domain positive rates differ (0.49-0.60 on the full data) but no domain decides the label.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ...features.spec import FeatureSpec
from . import Built, register
from .movielens import build_ml_latest_small

#: (name, genres) in priority order: a movie's domain is the index of the first group sharing one of its genres
DOMAIN_GROUPS: tuple[tuple[str, frozenset[str]], ...] = (
    ("family", frozenset({"Animation", "Children", "Musical"})),
    ("dark", frozenset({"Horror", "Thriller", "Mystery", "Crime", "Film-Noir"})),
    ("action", frozenset({"Action", "Adventure", "Sci-Fi", "War", "Western", "Fantasy", "IMAX"})),
    ("comedy", frozenset({"Comedy", "Romance"})),
    ("drama", frozenset({"Drama", "Documentary"})),
)
DOMAIN_NAMES: tuple[str, ...] = tuple(name for name, _ in DOMAIN_GROUPS)
#: movies none of whose genres is in a group (only "(no genres listed)" in this data) go to the last one
CATCH_ALL = len(DOMAIN_GROUPS) - 1
COLD_START = DOMAIN_NAMES.index("family")


def domain_of(genres: list[str]) -> int:
    """The domain index of a movie with these genres (see the module docstring for the rule)."""
    present = set(genres)
    for index, (_, members) in enumerate(DOMAIN_GROUPS):
        if present & members:
            return index
    return CATCH_ALL


def domain_stats(splits: dict[str, pd.DataFrame]) -> dict[str, dict[str, dict[str, Any]]]:
    """{split: {domain name: {rows, positive_rate}}}: the manifest's record and the shortcut check's numbers."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for split, df in splits.items():
        grouped = df.groupby("domain")["like"].agg(["size", "mean"])
        out[split] = {name: {"rows": int(grouped["size"].get(i, 0)),
                             "positive_rate": round(float(grouped["mean"].get(i, float("nan"))), 4)}
                      for i, name in enumerate(DOMAIN_NAMES)}
    return out


@register("ml-latest-small-domains",
          "MovieLens latest-small (seeds/) in 5 genre-group domains, `family` held out as cold-start",
          needs_shared=False)
def build_ml_latest_small_domains(spec: FeatureSpec, raw_dir: Path | None, *, max_users: int | None = None) -> Built:
    """`max_users` keeps the first N users by id (a quick deterministic subset)."""
    base = build_ml_latest_small(spec, raw_dir, max_users=max_users)
    # `genres` is movies.csv's list per row ([] for "(no genres listed)"), so the domain is a function of the movie
    splits = {name: df.assign(domain=np.fromiter((domain_of(g) for g in df["genres"]), np.int64, len(df)))
              for name, df in base.splits.items()}
    stats = domain_stats(splits)
    extra = {**base.extra,
             "domains": {"names": list(DOMAIN_NAMES),
                         "rule": "first group, in this order, containing one of the movie's genres; "
                                 f"none -> {DOMAIN_NAMES[CATCH_ALL]}",
                         "groups": {name: sorted(members) for name, members in DOMAIN_GROUPS}},
             "cold_start": {"domain": DOMAIN_NAMES[COLD_START], "id": COLD_START,
                            "select": f"domain == {COLD_START}",
                            "note": "its rows stay in every split; experiments choose how many to train on"},
             "domain_stats": stats}
    # the movies' titles as a catalogue (label-free metadata): `side_of: movie_id` text features are encoded once
    # per movie from it (the spec's [CLS] token output `title_cls`)
    titles = pd.concat([df[["movie_id", "title"]] for df in splits.values()]).drop_duplicates("movie_id")
    catalogues = {**base.catalogues, "movie_id": titles.sort_values("movie_id").reset_index(drop=True)}
    return Built(splits, source=base.source, extra=extra, catalogues=catalogues)
