"""Where the project's own files live: feature specs, embedded seed data, the shared real datasets.

The project is installed editable (`make` does `pip install -e .`), so these resolve inside the checkout.
`TFREC_ZOO_SHARED_DATASETS` overrides where the shared datasets are (default: `../shared/datasets` beside the checkout).
"""
from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def feature_specs_dir() -> Path:
    return ROOT / "feature_specs"


def seeds_data_dir() -> Path:
    return ROOT / "seeds" / "data"


def shared_datasets_dir() -> Path:
    env = os.environ.get("TFREC_ZOO_SHARED_DATASETS")
    return Path(env) if env else ROOT.parent / "shared" / "datasets"


def default_data_dir() -> Path:
    """Where `tfrec-zoo data build` writes unless told otherwise (git-ignored)."""
    return Path(os.environ.get("TFREC_ZOO_DATA", ROOT / "data"))
