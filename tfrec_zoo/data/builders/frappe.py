"""frappe (../shared/datasets/frappe_partial; Baltrunas et al. 2015, research use only, not redistributed): mobile
app usage with explicit contexts, as the NFM paper's libFM files hold it (each positive, a (user, app, context)
with usage, beside 2 sampled negatives: the same user and context with an app the user did not use in it).

Only 30% of the 288,609 rows are in ../shared (frappe.validation.libfm 57,722 rows, frappe.test.libfm 28,860 rows;
the train file is absent). Split: the validation file's rows, seeded (SEED), 90% train / 10% valid; the test file is
the test split. Each line is `label f1:1 ... f10:1`, one global feature id per field in the order user, item,
daytime, weekday, isweekend, homework, cost, weather, country, city (the ids of the fields are disjoint ranges:
checked). Features keep the raw global ids (fields are separate columns, so their vocabularies do not mix); label
-1 -> 0. Evaluation is pointwise (AUC, logloss, GAUC by user): the file's 2 negatives per positive cannot make the
51-item lists of the lbsn-*-ctx protocol.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ...features.spec import FeatureSpec
from ...paths import shared_datasets_dir
from . import Built, register

FOLDER = "frappe_partial"
FIELDS = ("user_id", "item_id", "daytime", "weekday", "isweekend", "homework", "cost", "weather", "country", "city")
SEED = 0
VALID_FRAC = 0.1


def read_libfm(path: Path) -> pd.DataFrame:
    """One row per line: `click` (1 or 0) and the 10 fields' global ids; a malformed line raises one ValueError
    naming the file and line."""
    if not path.exists():
        raise FileNotFoundError(f"{path}: missing (see {path.parent / 'LOADER.md'})")
    labels, ids = [], []
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            parts = line.split()
            if not parts:
                continue
            if parts[0] not in ("1", "-1") or len(parts) != 1 + len(FIELDS):
                raise ValueError(f"{path}:{n}: expected 'label' (1 or -1) and {len(FIELDS)} 'id:1' fields, got "
                                 f"{line.strip()[:80]!r}")
            try:
                row = [int(p.split(":")[0]) for p in parts[1:]]
            except ValueError:
                raise ValueError(f"{path}:{n}: a field is not 'id:1': {line.strip()[:80]!r}") from None
            labels.append(1.0 if parts[0] == "1" else 0.0)
            ids.append(row)
    if not ids:
        raise ValueError(f"{path}: no rows (an empty file?): expected lines 'label f1:1 ... f10:1' "
                         f"(see {path.parent / 'LOADER.md'})")
    frame = pd.DataFrame(np.asarray(ids, np.int64), columns=list(FIELDS))
    frame["click"] = labels
    return frame


def check_fields(frame: pd.DataFrame, source: str) -> None:
    """Each position must be its own field: the id ranges of the 10 positions are disjoint and in field order."""
    lo, hi = frame[list(FIELDS)].min(), frame[list(FIELDS)].max()
    for a, b in zip(FIELDS, FIELDS[1:]):
        if hi[a] >= lo[b]:
            raise ValueError(f"{source}: field {a!r} ids reach {hi[a]} but {b!r} starts at {lo[b]}: the fields "
                             "are not in the expected order (user, item, daytime, ..., city)")


@register("frappe", "Frappe app usage (30% partial: 86,582 rows): CTR with 8 explicit context fields")
def build_frappe(spec: FeatureSpec, raw_dir: Path | None, *, seed: int = SEED) -> Built:
    raw = raw_dir or shared_datasets_dir() / FOLDER
    pool = read_libfm(raw / "frappe.validation.libfm")
    test = read_libfm(raw / "frappe.test.libfm")
    check_fields(pd.concat([pool, test]), str(raw))
    valid = np.random.default_rng(seed).random(len(pool)) < VALID_FRAC
    splits = {"train": pool[~valid].reset_index(drop=True), "valid": pool[valid].reset_index(drop=True),
              "test": test}
    return Built(splits, source=str(raw), extra={
        "split": f"frappe.validation.libfm: seeded (seed {seed}) {1 - VALID_FRAC:.0%} train / {VALID_FRAC:.0%} "
                 "valid; frappe.test.libfm: test",
        "partial": "30% of the 288,609 rows of the NFM libFM version (the train file is not in ../shared)",
        "positive_rate": {k: round(float(v["click"].mean()), 4) for k, v in splits.items()},
    })
