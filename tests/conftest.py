"""Shared fixtures. Tests that need the real datasets in ../shared/datasets skip with a reason when it is absent."""
from __future__ import annotations

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Under pytest-xdist (`make test` runs 2 workers) each worker builds the datasets experiments name into a data
# directory of its own: two workers building data/ml-latest-small at once would race to publish it.
if os.environ.get("PYTEST_XDIST_WORKER") and "TFREC_ZOO_DATA" not in os.environ:
    from tfrec_zoo.paths import ROOT as _ROOT

    os.environ["TFREC_ZOO_DATA"] = str(_ROOT / "data" / f"tests-{os.environ['PYTEST_XDIST_WORKER']}")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from tfrec_zoo.paths import shared_datasets_dir  # noqa: E402


def shared_dataset(name: str) -> Path:
    """Path of ../shared/datasets/NAME, or skip the test saying what is missing."""
    path = shared_datasets_dir() / name
    if not path.exists():
        pytest.skip(f"real dataset {name!r} not found at {path} (the shared datasets sit beside the checkout as "
                    "../shared/datasets, or set TFREC_ZOO_SHARED_DATASETS)")
    return path


@pytest.fixture(scope="session")
def shared_root() -> Path:
    root = shared_datasets_dir()
    if not root.exists():
        pytest.skip(f"shared datasets not found at {root}")
    return root
