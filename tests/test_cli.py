"""The `tfrec-zoo` command line: spec validate/show, data write (rows or an interaction log), data check."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from tfrec_zoo.data import open_dataset
from training.cli import main

LOG_SPEC = """
name: clicks
keys: {user: uid, item: item, time: ts}
features:
  - {name: uid, kind: id, dtype: string}
  - {name: item, kind: id}
  - {name: cats, kind: multi_hot, dtype: string, max_len: 3}
  - {name: hist, kind: sequence, max_len: 3, fields: [{name: hist_item, source: item, shares_embedding_with: item}]}
  - {name: clicked, kind: label}
"""


def run_cli(*args) -> tuple[int, str, str]:
    """Run the real console entry point in a subprocess (what a user types)."""
    p = subprocess.run([sys.executable, "-c", "import sys; from training.cli import main; sys.exit(main())", *args],
                       capture_output=True, text=True, timeout=300)
    return p.returncode, p.stdout, p.stderr


def test_spec_validate_and_show(tmp_path: Path, capsys):
    spec = tmp_path / "s.yaml"
    spec.write_text(LOG_SPEC)
    assert main(["spec", "validate", str(spec)]) == 0
    assert "ok (4 input features, 1 labels" in capsys.readouterr().out
    assert main(["spec", "show", str(spec)]) == 0
    out = capsys.readouterr().out
    assert "hist     sequence   max_len=3 fields=hist_item:id" in out
    assert "item<-item+hist_item" in out
    spec.write_text(LOG_SPEC.replace("max_len: 3, fields", "max_len: -3, fields"))
    assert main(["spec", "validate", str(spec)]) == 2
    err = capsys.readouterr().err
    assert f"error: {spec}: features[3].max_len: must be > 0, got -3. Fix:" in err


def test_data_write_builds_histories_from_a_log_and_check_passes(tmp_path: Path):
    spec = tmp_path / "s.yaml"
    spec.write_text(LOG_SPEC)
    rng = np.random.default_rng(0)
    n = 200
    log = pd.DataFrame({
        "uid": rng.choice(["ann", "bob", "cyd", "dan"], n), "item": rng.integers(1, 30, n), "ts": rng.permutation(n),
        "cats": ["a|b", "c", "", "a|c|d|e"] * (n // 4), "clicked": rng.integers(0, 2, n),
    })
    csv = tmp_path / "log.csv"
    log.to_csv(csv, index=False)
    out = tmp_path / "ds"
    code, stdout, stderr = run_cli("data", "write", "--spec", str(spec), "--input", str(csv), "--out", str(out),
                                   "--split", "time", "--test-frac", "0.2", "--valid-frac", "0.1")
    assert code == 0, stderr
    assert "interaction log; building histories for hist" in stdout
    d = open_dataset(out)
    assert d.rows("train") + d.rows("valid") + d.rows("test") == n
    # every history step is an earlier item of the same user
    feats, _ = next(iter(d.dataset("test", 64)))
    srt = log.sort_values(["uid", "ts"], kind="stable")
    for u, item, hist, length in zip(feats["uid"].numpy(), feats["item"].numpy(), feats["hist_item"].numpy(),
                                     feats["hist_len"].numpy()):
        user_items = srt[srt.uid == u.decode()]["item"].tolist()
        assert length == 3 and hist.tolist() in [user_items[i - 3:i] for i in range(3, len(user_items))
                                                 if user_items[i] == item]
    assert feats["cats"].shape[1] == 3
    code, stdout, _ = run_cli("data", "check", str(out))
    assert code == 0 and f"{n} records scanned, 0 problem(s)" in stdout


def test_data_write_rejects_bad_rows_with_the_record(tmp_path: Path):
    spec = tmp_path / "s.yaml"
    spec.write_text(LOG_SPEC.replace("  - {name: hist, kind: sequence, max_len: 3, fields: [{name: hist_item, source: "
                                     "item, shares_embedding_with: item}]}\n", ""))
    csv = tmp_path / "rows.csv"
    pd.DataFrame({"uid": ["a", "b"], "item": [1, "x7"], "ts": [1, 2], "cats": ["a", "b"],
                  "clicked": [1, 0]}).to_csv(csv, index=False)
    assert main(["data", "write", "--spec", str(spec), "--input", str(csv), "--out", str(tmp_path / "o"),
                 "--split", "none"]) == 2
    assert not (tmp_path / "o").exists()


FILL_SPEC = """
name: prices
keys: {user: uid, item: item, time: ts}
features:
  - {name: uid, kind: id, dtype: string}
  - {name: item, kind: id}
  - {name: brand, kind: id, dtype: string}
  - {name: price, kind: dense}
  - {name: clicked, kind: label}
"""


def _prices(tmp_path: Path) -> Path:
    # rows are written in a shuffled order; the split sorts them by user and time
    df = pd.DataFrame({"uid": ["b", "a", "b", "a", "a", "b"], "item": [3, 1, 4, 2, 5, 6], "ts": [2, 1, 1, 3, 2, 3],
                       "brand": ["x", "y", None, "x", "y", "z"], "price": [1.0, 2.0, 4.0, None, 10.0, 3.0],
                       "clicked": [1, 0, 1, 0, 1, 0]})
    csv = tmp_path / "prices.csv"
    df.to_csv(csv, index=False)
    return csv


def test_a_missing_value_names_the_file_line_and_the_fill_to_add(tmp_path: Path, capsys):
    spec = tmp_path / "s.yaml"
    spec.write_text(FILL_SPEC)
    csv = _prices(tmp_path)
    assert main(["data", "write", "--spec", str(spec), "--input", str(csv), "--out", str(tmp_path / "o"),
                 "--split", "time"]) == 2
    err = capsys.readouterr().err
    # brand is missing on line 4 of the file (header = line 1), whatever its position inside the sorted split
    assert "prices.csv [train]: feature 'brand', line 4: value is missing" in err and "fill:" in err, err
    assert not (tmp_path / "o").exists()


def test_fill_policies_fill_from_train_and_never_enter_the_vocabulary(tmp_path: Path):
    spec = tmp_path / "s.yaml"
    spec.write_text(FILL_SPEC.replace("{name: brand, kind: id, dtype: string}",
                                      "{name: brand, kind: id, dtype: string, fill: oov}")
                    .replace("{name: price, kind: dense}", "{name: price, kind: dense, fill: median}"))
    csv = _prices(tmp_path)
    assert main(["data", "write", "--spec", str(spec), "--input", str(csv), "--out", str(tmp_path / "o"),
                 "--split", "none"]) == 0
    d = open_dataset(tmp_path / "o")
    fills = d.manifest["extra"]["fills"]
    assert fills["values"] == {"brand": "", "price": 3.0}            # median of 1, 2, 4, 10, 3
    assert fills["filled"] == {"train": {"brand": 1, "price": 1}}
    assert sorted(d.artifacts.vocabs["brand"]) == ["x", "y", "z"]      # the fill is not an id
    feats = next(iter(d.dataset("train", 8)))[0]
    rows = dict(zip(feats["item"].numpy().tolist(), feats["price"].numpy().tolist()))
    assert rows[2] == 3.0 and rows[5] == 10.0
    # the dense statistics come from the values that were there (mean of 1, 2, 4, 10, 3 = 4.0)
    assert d.artifacts.stats["price"]["mean"] == 4.0


def test_a_non_number_in_a_filled_dense_column_names_its_line(tmp_path: Path, capsys):
    spec = tmp_path / "s.yaml"
    spec.write_text(FILL_SPEC.replace("{name: price, kind: dense}", "{name: price, kind: dense, fill: median}"))
    csv = _prices(tmp_path)
    csv.write_text(csv.read_text().replace("b,6,3,z,3.0,0", "b,6,3,z,cheap,0"))
    assert main(["data", "write", "--spec", str(spec), "--input", str(csv), "--out", str(tmp_path / "o"),
                 "--split", "none"]) == 2
    err = capsys.readouterr().err
    assert "feature 'price', line 7: value 'cheap' is not a number (1 such value(s) in the column)" in err, err
    assert not (tmp_path / "o").exists()


def test_fill_values_are_validated_in_the_spec(tmp_path: Path, capsys):
    spec = tmp_path / "s.yaml"
    spec.write_text(FILL_SPEC.replace("{name: price, kind: dense}", "{name: price, kind: dense, fill: average}"))
    assert main(["spec", "validate", str(spec)]) == 2
    assert "features[3].fill: expected a finite number or one of mean, median, got 'average'" in capsys.readouterr().err
    spec.write_text(FILL_SPEC.replace("{name: item, kind: id}", "{name: item, kind: id, fill: x}"))
    assert main(["spec", "validate", str(spec)]) == 2
    assert "features[1].fill: expected `oov` or an int64 id, got 'x'" in capsys.readouterr().err


def test_data_check_reports_missing_manifest(tmp_path: Path, capsys):
    assert main(["data", "check", str(tmp_path)]) == 1
    assert "no manifest.json" in capsys.readouterr().out


def test_data_list_names_every_builder(capsys):
    assert main(["data", "list"]) == 0
    assert "ml-latest-small" in capsys.readouterr().out


def test_unknown_dataset_is_a_clear_error(capsys):
    assert main(["data", "build", "no-such-data", "--out", "/tmp/never"]) == 2
    assert "unknown dataset 'no-such-data'; known:" in capsys.readouterr().err


def test_bad_json_list_cell_names_the_column(tmp_path: Path, capsys):
    spec = tmp_path / "s.yaml"
    spec.write_text(LOG_SPEC)
    csv = tmp_path / "rows.csv"
    pd.DataFrame({"uid": ["a"], "item": [1], "ts": [1], "cats": ["[1, 2"], "clicked": [1],
                  "hist_item": ["[]"]}).to_csv(csv, index=False)
    code = main(["data", "write", "--spec", str(spec), "--input", str(csv), "--out", str(tmp_path / "o"),
                 "--split", "none"])
    assert code == 2 and "rows.csv: line 2, column 'cats': the cell '[1, 2' is not a valid JSON list" in (
        capsys.readouterr().err)


def test_train_strategy_flags_are_checked(capsys):
    assert main(["train", "din-ml-latest-small", "--local-workers", "2"]) == 2
    assert "--local-workers needs --strategy multi_worker or parameter_server" in capsys.readouterr().err
    assert main(["train", "din-ml-latest-small", "--strategy", "multi_worker"]) == 2
    assert "needs an explicit --run-dir" in capsys.readouterr().err
