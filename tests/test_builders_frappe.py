"""The frappe builder on the real partial files (skipped when ../shared is absent) and on broken copies."""
from __future__ import annotations

import shutil

import pandas as pd
import pytest

from conftest import shared_dataset
from tfrec_zoo.data.builders import get_builder
from tfrec_zoo.data.builders.frappe import FIELDS, read_libfm
from tfrec_zoo.features.spec import load_spec


def _build(raw=None):
    builder = get_builder("frappe")
    return builder.fn(load_spec(builder.spec_path), raw)


def test_splits_fields_and_labels():
    shared_dataset("frappe_partial")
    built = _build()
    s = built.splits
    assert len(s["train"]) + len(s["valid"]) == 57_722 and len(s["test"]) == 28_860
    assert 0.08 < len(s["valid"]) / 57_722 < 0.12
    for df in s.values():
        assert set(df["click"].unique()) == {0.0, 1.0}
        assert abs(df["click"].mean() - 1 / 3) < 0.01            # 2 sampled negatives per positive
    # every field keeps its own id range; 7 daytimes, 7 weekdays, 2 weekend values, 9 weathers
    both = pd.concat([s["train"], s["test"]])
    assert [both[f].nunique() for f in ("daytime", "weekday", "isweekend", "weather")] == [7, 7, 2, 9]
    assert list(both.columns[:len(FIELDS)]) == list(FIELDS)


def test_a_broken_line_names_file_and_line(tmp_path):
    src = shared_dataset("frappe_partial")
    for name in ("frappe.validation.libfm", "frappe.test.libfm"):
        shutil.copy(src / name, tmp_path / name)
    with open(tmp_path / "frappe.test.libfm", "a") as fh:
        fh.write("1 204:1 4798:1\n")
    with pytest.raises(ValueError, match=r"frappe.test.libfm:28861: expected 'label' \(1 or -1\) and 10"):
        _build(tmp_path)
    (tmp_path / "frappe.test.libfm").write_text("0 1:1 2:1 3:1 4:1 5:1 6:1 7:1 8:1 9:1 10:1\n")
    with pytest.raises(ValueError, match=r"frappe.test.libfm:1: expected 'label'"):
        read_libfm(tmp_path / "frappe.test.libfm")
    (tmp_path / "frappe.test.libfm").write_text("\n\n")
    with pytest.raises(ValueError, match=r"frappe.test.libfm: no rows \(an empty file\?\)"):
        read_libfm(tmp_path / "frappe.test.libfm")
    (tmp_path / "frappe.test.libfm").write_text("1 " + " ".join(f"{9 - i}:1" for i in range(10)) + "\n")
    with pytest.raises(ValueError, match="not in the expected order"):
        _build(tmp_path)
