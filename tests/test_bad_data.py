"""Hostile input to `data write` / `train`: each mistake is one error line naming the file, the line and the column,
the exit code is non-zero and nothing is left in --out; damaged shards and manifests are named; Ctrl-C and SIGKILL
leave nothing behind that the next write does not clean up."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tfrec_zoo.data import open_dataset, write_dataset
from tfrec_zoo.data.examples import columns_for_examples
from tfrec_zoo.data.tables import read_table
from tfrec_zoo.features import FeatureSpecError, parse_spec
from training.cli import main

SPEC = """
name: clicks
keys: {user: uid, item: item, time: ts}
features:
  - {name: uid, kind: id, dtype: string}
  - {name: item, kind: id}
  - {name: cats, kind: multi_hot, dtype: string, max_len: 2}
  - {name: price, kind: dense}
  - {name: clicked, kind: label}
"""
HEADER = "uid,item,ts,cats,price,clicked\n"


def write(tmp_path: Path, text: str | bytes, spec: str = SPEC, name: str = "in.csv", split: str = "none",
          *extra: str) -> tuple[int, Path]:
    """Run `data write` on a file holding `text`; return (exit code, --out)."""
    (tmp_path / "s.yaml").write_text(spec)
    src = tmp_path / name
    src.write_bytes(text.encode() if isinstance(text, str) else text)
    out = tmp_path / "out"
    code = main(["data", "write", "--spec", str(tmp_path / "s.yaml"), "--input", str(src), "--out", str(out),
                 "--split", split, *extra])
    return code, out


def error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def assert_nothing_written(tmp_path: Path) -> None:
    assert not (tmp_path / "out").exists()
    assert not [p.name for p in tmp_path.iterdir() if ".tmp-" in p.name or ".old-" in p.name]


# -- 1. labels ---------------------------------------------------------------------------------------------------
def test_a_binary_label_must_be_0_or_1(tmp_path: Path, capsys):
    code, _ = write(tmp_path, HEADER + "a,1,1,x,1.0,1\nb,2,2,y,2.0,7\n")
    assert code == 2
    assert "in.csv [train]: feature 'clicked', line 3: a binary label must be 0 or 1, got 7. Fix:" in (
        error_line(capsys))
    assert_nothing_written(tmp_path)


def test_regression_labels_keep_their_range_and_multiclass_labels_are_class_indices(tmp_path: Path, capsys):
    rows = HEADER + "a,1,1,x,1.0,1\nb,2,2,y,2.0,7.5\n"
    code, out = write(tmp_path, rows, SPEC.replace("kind: label}", "kind: label, type: regression}"))
    assert code == 0
    labels = next(iter(open_dataset(out).dataset("train", 4)))[1]["clicked"].numpy().tolist()
    assert labels == [1.0, 7.5]
    multiclass = SPEC.replace("kind: label}", "kind: label, type: multiclass, num_classes: 3}")
    code, _ = write(tmp_path, HEADER + "a,1,1,x,1.0,2\nb,2,2,y,2.0,3\n", multiclass)
    assert code == 2
    assert "feature 'clicked', line 3: a multiclass label must be a class index 0..2, got 3" in error_line(capsys)
    code, _ = write(tmp_path, HEADER + "a,1,1,x,1.0,2\nb,2,2,y,2.0,1.5\n", multiclass)
    assert code == 2 and "line 3: a multiclass label must be a class index 0..2, got 1.5" in error_line(capsys)


# -- 2. empty input ----------------------------------------------------------------------------------------------
def test_an_empty_file_and_a_header_without_rows_are_rejected(tmp_path: Path, capsys):
    code, _ = write(tmp_path, "")
    assert code == 2 and "in.csv: the file is empty (0 bytes). Fix:" in error_line(capsys)
    code, _ = write(tmp_path, HEADER)
    assert code == 2
    assert "in.csv: has a header (uid, item, ts, cats, price, clicked) but no data rows" in error_line(capsys)
    code, _ = write(tmp_path, b"", name="in.parquet")
    assert code == 2 and "in.parquet: the file is empty (0 bytes)" in error_line(capsys)
    code, _ = write(tmp_path, b"PAR1 not really", name="in.parquet")
    assert code == 2 and "in.parquet: not a readable Parquet file" in error_line(capsys)
    assert_nothing_written(tmp_path)


def test_an_empty_train_split_is_an_error_and_an_empty_valid_split_is_named(tmp_path: Path, capsys):
    rows = HEADER + "".join(f"u{i % 2},{i},{i},x,1.0,{i % 2}\n" for i in range(6))
    code, _ = write(tmp_path, rows, SPEC, "in.csv", "random", "--test-frac", "1.0", "--valid-frac", "0")
    assert code == 2 and "--split random leaves the train split empty (6 rows in all)" in error_line(capsys)
    assert_nothing_written(tmp_path)
    code, out = write(tmp_path, rows, SPEC, "in.csv", "time")    # 3 rows per user: floor(0.3) = 0 valid, 0 test
    assert code == 0
    err = capsys.readouterr().err
    assert "note: " in err and "the valid split is empty (floor(0.1 x each user's rows) is 0 for every user)" in err
    assert sorted(open_dataset(out).manifest["splits"]) == ["train"]


# -- 3. max_len, duplicate headers, infinities -------------------------------------------------------------------
def test_lists_longer_than_max_len_keep_their_last_values_and_are_counted(tmp_path: Path, capsys):
    spec = SPEC.replace("  - {name: clicked", "  - {name: hist, kind: sequence, max_len: 2, fields: [{name: "
                        "hist_item, shares_embedding_with: item}]}\n  - {name: clicked")
    cols = HEADER.strip() + ",hist_item\n"
    rows = cols + 'a,1,1,x|y|z,1.0,1,"[5, 6, 7]"\nb,2,2,x,2.0,0,[5]\nc,3,3,w|x|y|z,2.0,0,"[1, 2, 3, 4]"\n'
    code, out = write(tmp_path, rows, spec)
    assert code == 0
    stdout = capsys.readouterr().out
    assert "truncated to max_len (the last max_len values kept; manifest extra.truncated): cats 2 rows (train 2); " \
           "hist 2 rows (train 2)" in stdout
    d = open_dataset(out)
    assert d.manifest["extra"]["truncated"] == {"train": {"cats": 2, "hist": 2}}
    feats = next(iter(d.dataset("train", 4)))[0]
    assert feats["cats"].numpy().tolist() == [[b"y", b"z"], [b"x", b""], [b"y", b"z"]]
    assert feats["hist_item"].numpy().tolist() == [[6, 7], [5, 0], [3, 4]]


def test_duplicate_and_unnamed_columns_are_rejected(tmp_path: Path, capsys):
    code, _ = write(tmp_path, HEADER.strip() + ",item\na,1,1,x,1.0,1,3\n")
    assert code == 2
    assert "in.csv: column 'item': appears twice in the header (columns 2 and 7)" in error_line(capsys)
    code, _ = write(tmp_path, HEADER.strip() + ",\na,1,1,x,1.0,1,3\n")
    assert code == 2 and "in.csv: line 1, column 7: the header gives this column no name" in error_line(capsys)
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_arrays([pa.array([1]), pa.array([2])], names=["item", "item"]), tmp_path / "d.pq")
    code, _ = write(tmp_path, (tmp_path / "d.pq").read_bytes(), name="in.parquet")
    assert code == 2 and "in.parquet: column 'item': appears twice in the header (columns 1 and 2)" in (
        error_line(capsys))
    assert_nothing_written(tmp_path)


@pytest.mark.parametrize("value, problem", [("inf", "value is inf"), ("-inf", "value is -inf"),
                                            ("1e39", "value 1e+39 does not fit a float32"),
                                            ("nan", "value is missing")])     # pandas reads "nan" as missing
def test_non_finite_floats_are_rejected_with_the_line(tmp_path: Path, capsys, value, problem):
    code, _ = write(tmp_path, HEADER + f"a,1,1,x,1.0,1\nb,2,2,y,{value},0\n")
    assert code == 2
    assert f"in.csv [train]: feature 'price', line 3: {problem}" in error_line(capsys)
    assert_nothing_written(tmp_path)


def test_non_finite_values_in_vectors_and_weights_are_rejected():
    spec = parse_spec({"name": "v", "features": [
        {"name": "img", "kind": "vector", "dim": 2},
        {"name": "tags", "kind": "multi_hot", "dtype": "string", "max_len": 3, "weights": "w"},
        {"name": "y", "kind": "label"}]}, "v.yaml")
    good = pd.DataFrame({"img": [[0.1, 0.2], [0.3, 0.4]], "tags": [["a"], ["b"]], "w": [[1.0], [2.0]],
                         "y": [0.0, 1.0], "__line__": [2, 3]})
    assert columns_for_examples(good, spec, "f.csv")["w"][1] == [[1.0], [2.0]]
    with pytest.raises(FeatureSpecError, match=r"f.csv: feature 'img', line 3: the vector's value 1 is not a finite"):
        columns_for_examples(good.assign(img=[[0.1, 0.2], [0.3, float("inf")]]), spec, "f.csv")
    with pytest.raises(FeatureSpecError, match=r"feature 'w', line 2: expected a list of float values, got \[nan\]"):
        columns_for_examples(good.assign(w=[[float("nan")], [2.0]]), spec, "f.csv")


# -- 4. cells pandas lets through or reports without a file ------------------------------------------------------
@pytest.mark.parametrize("cell, problem", [
    ('"[1, 2"', "the cell '[1, 2' is not a valid JSON list (Expecting ',' delimiter"),
    ('"[1,,2]"', "the cell '[1,,2]' is not a valid JSON list (Expecting value at character 4)"),
])
def test_bad_json_list_cells_name_file_line_and_column(tmp_path: Path, capsys, cell, problem):
    code, _ = write(tmp_path, HEADER + f"a,1,1,x,1.0,1\nb,2,2,{cell},2.0,0\n")
    assert code == 2
    assert f"in.csv: line 3, column 'cats': {problem}" in error_line(capsys)


def test_a_dict_inside_a_list_never_reaches_the_vocabulary(tmp_path: Path, capsys):
    code, _ = write(tmp_path, HEADER + 'a,1,1,x,1.0,1\nb,2,2,"[1, {""a"": 2}]",2.0,0\n')
    assert code == 2
    assert ("in.csv [train]: feature 'cats', line 3: expected a list of string values, got [1, {'a': 2}] (a dict, "
            "not a string or a number)") in error_line(capsys)
    for bad in ("[null]", "[true]", "[[1, 2]]"):
        code, _ = write(tmp_path, HEADER + f'a,1,1,"{bad}",1.0,1\n')
        assert code == 2 and "feature 'cats', line 2: expected a list of string values" in error_line(capsys)
    assert_nothing_written(tmp_path)


@pytest.mark.parametrize("value, why", [
    ("1e23", "got 1e+23 (outside the int64 range"),
    ("99999999999999999999", "got 99999999999999999999 (outside the int64 range"),
    ("18446744073709551615", "got 18446744073709551615 (outside the int64 range"),
    ("1.5", "got 1.5 (not a whole number)"),
    ("1152921504606846976.0", "(a float beyond 2^53 has lost digits"),
])
def test_int64_ids_outside_the_range_are_rejected(tmp_path: Path, capsys, value, why):
    code, _ = write(tmp_path, HEADER + f"a,1,1,x,1.0,1\nb,{value},2,y,2.0,0\n")
    assert code == 2
    line = error_line(capsys)
    assert "in.csv [train]: feature 'item', line 3: expected an int64 id, " in line and why in line, line


def test_int64_id_lists_are_range_checked():
    spec = parse_spec({"name": "v", "features": [
        {"name": "item", "kind": "id"},
        {"name": "h", "kind": "sequence", "max_len": 3, "fields": [{"name": "h_item", "shares_embedding_with": "item"}]},
        {"name": "y", "kind": "label"}]}, "v.yaml")
    df = pd.DataFrame({"item": [1, 2], "h_item": [[1, 2], [3, 2 ** 64]], "y": [0, 1], "__line__": [2, 3]})
    with pytest.raises(FeatureSpecError, match=r"feature 'h_item', line 3: expected a list of int64 values, got "
                                               r"\[3, 18446744073709551616\] \(outside the int64 range"):
        columns_for_examples(df, spec, "f.csv")
    assert columns_for_examples(df.iloc[:1], spec, "f.csv")["h_item"][1] == [[1, 2]]
    strings = df.assign(h_item=[["1", "2"], ["3"]])          # from `1|2` cells
    assert columns_for_examples(strings, spec, "f.csv")["h_item"][1] == [[1, 2], [3]]
    for bad, why in (([True], "a bool, not a number"), (["1", "x"], "not a number"), ([1.5], "not a whole number")):
        with pytest.raises(FeatureSpecError, match=rf"feature 'h_item', line 3: .*\({why}\)"):
            columns_for_examples(df.assign(h_item=[[1], bad]), spec, "f.csv")


def test_bytes_that_are_not_utf8_name_the_line_and_column(tmp_path: Path, capsys):
    code, _ = write(tmp_path, (HEADER + "a,1,1,x,1.0,1\nb,2,2,caf\xe9,2.0,0\n").encode("latin-1"))
    assert code == 2
    assert "in.csv: line 3, column 'cats': byte 0xe9 is not UTF-8. Fix: save the file as UTF-8" in error_line(capsys)
    code, _ = write(tmp_path, ("uid,item,ts,cats,pr\xefce,clicked\n").encode("latin-1"))
    assert code == 2 and "in.csv: line 1, field 5: byte 0xef is not UTF-8" in error_line(capsys)


@pytest.mark.parametrize("rows, where, problem", [
    ("a,1,1,x,1.0,1\nb,2,2,y,2.0\n", "line 3, column 'clicked'", "the row has 5 fields, the header 6: no value for "
                                                                "'clicked'"),
    ("a,1,1,x,1.0,1\nb,2,2,y\n", "line 3, column 'price'", "the row has 4 fields, the header 6: no value for "
                                                         "'price' and the columns after it"),
    ("a,1,1,x,1.0,1\nb,2,2,y,2.0,0,9\n", "line 3, column 'clicked'", "the row has 7 fields, the header 6: '9' is an "
                                                                    "extra field"),
    # pandas would silently make the first column the index when the first row has one field too many
    ("a,1,1,x,1.0,1,9\nb,2,2,y,2.0,0,9\n", "line 2, column 'clicked'", "the row has 7 fields"),
])
def test_ragged_rows_name_the_line_and_column(tmp_path: Path, capsys, rows, where, problem):
    code, _ = write(tmp_path, HEADER + rows)
    assert code == 2
    line = error_line(capsys)
    assert f"in.csv: {where}: {problem}" in line, line
    assert_nothing_written(tmp_path)


def test_line_numbers_stay_exact_with_blank_lines_and_quoted_newlines(tmp_path: Path, capsys):
    # line 1 header, 2 a, 3 blank, 4-5 b (a quoted newline), 6 c
    code, _ = write(tmp_path, HEADER + 'a,1,1,x,1.0,1\n\nb,2,2,"x\ny",2.0,0\nc,3,3,x,1.0,5\n')
    assert code == 2 and "feature 'clicked', line 6: a binary label must be 0 or 1, got 5" in error_line(capsys)
    src = tmp_path / "t.tsv"
    src.write_text("uid\titem\na\t1\n\nb\t2\n")
    assert read_table(src)["__line__"].tolist() == [2, 4]
    import gzip

    src = tmp_path / "t.csv.gz"
    src.write_bytes(gzip.compress(b"uid,item\na,1\nb,2\n"))
    assert read_table(src)["__line__"].tolist() == [2, 3]
    src.write_bytes(gzip.compress(b"uid,item\na,1\nb\n"))
    with pytest.raises(FeatureSpecError, match=r"t.csv.gz: line 3, column 'item': the row has 1 fields"):
        read_table(src)


# -- 5. damaged datasets -----------------------------------------------------------------------------------------
TRAIN_SPEC = parse_spec({"name": "t", "features": [
    {"name": "item", "kind": "id"}, {"name": "price", "kind": "dense"}, {"name": "clicked", "kind": "label"}]},
    "t.yaml")


def small_dataset(path: Path, compression: str = "GZIP") -> Path:
    rng = np.random.default_rng(0)
    df = pd.DataFrame({"item": rng.integers(1, 40, 1500), "price": rng.random(1500),
                       "clicked": rng.integers(0, 2, 1500).astype(float)})
    write_dataset({"train": df, "valid": df.iloc[:200]}, TRAIN_SPEC, path, source="t", rows_per_shard=500,
                  compression=compression, progress=False)
    return path


def flip_middle(file: Path) -> None:
    data = bytearray(file.read_bytes())
    mid = len(data) // 2
    data[mid:mid + 8] = bytes(b ^ 0xFF for b in data[mid:mid + 8])
    file.write_bytes(bytes(data))


def test_train_names_the_damaged_shard_and_points_to_data_check(tmp_path: Path, capsys):
    ds = small_dataset(tmp_path / "ds")
    shard = ds / "train" / "part-00001-of-00003.tfrecord.gz"
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size * 2 // 3])
    exp = tmp_path / "e.yaml"
    exp.write_text(f"name: e\ndataset: {ds}\nmodel: deepfm\nparams: {{fm_dim: 4, dnn_units: [8]}}\n"
                   "batch_size: 100\nepochs: 1\nshuffle_buffer: 0\n")
    code = main(["train", str(exp), "--run-dir", str(tmp_path / "run"), "--quiet"])
    assert code == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(f"error: {shard}: cannot read record "), err
    assert "of the decompressed stream (truncated record at" in err
    assert f"Fix: run `tfrec-zoo data check {ds}`" in err


def test_the_damaged_shard_is_found_whatever_the_damage(tmp_path: Path):
    import tensorflow as tf

    from training.datasets import explain_read_failure

    def failure(ds: Path) -> BaseException:
        d = open_dataset(ds)
        with pytest.raises(tf.errors.OpError) as info:
            for _ in d.dataset("train", 100):
                pass
        return info.value

    gz = small_dataset(tmp_path / "gz")
    flip_middle(gz / "train/part-00002-of-00003.tfrecord.gz")
    msg = explain_read_failure(str(gz), failure(gz))
    assert msg.startswith(f"{gz}/train/part-00002-of-00003.tfrecord.gz: cannot read record ") and "inflate()" in msg
    raw = small_dataset(tmp_path / "raw", compression="")
    shard = raw / "train/part-00000-of-00003.tfrecord"
    flip_middle(shard)
    msg = explain_read_failure(str(raw), failure(raw))
    # the record holding the flipped bytes: its start offset, in this uncompressed file
    assert msg.startswith(f"{shard}: cannot read record ") and "(corrupted record at" in msg, msg
    offset = int(msg.split("starts at byte ")[1].split(" ")[0])
    assert offset <= shard.stat().st_size // 2 < offset + 200
    raw2 = small_dataset(tmp_path / "raw2", compression="")
    shard = raw2 / "train/part-00001-of-00003.tfrecord"
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])    # tf.data stops early without an error
    msg = explain_read_failure(str(raw2), failure(raw2))
    assert re.match(rf"{shard}: 2\d\d records where the manifest says 500 \(the file was cut short", msg), msg
    assert explain_read_failure(str(raw2), ValueError("other")) is None


def test_a_truncated_manifest_is_named(tmp_path: Path, capsys):
    ds = small_dataset(tmp_path / "ds")
    mf = ds / "manifest.json"
    mf.write_text(mf.read_text()[:100])
    with pytest.raises(ValueError, match=rf"{mf}: not valid JSON \(.*\): the file is damaged or was cut short"):
        open_dataset(ds)
    exp = tmp_path / "e.yaml"
    exp.write_text(f"name: e\ndataset: {ds}\nmodel: deepfm\n")
    assert main(["train", str(exp), "--run-dir", str(tmp_path / "run")]) == 2
    assert f"error: {mf}: not valid JSON" in capsys.readouterr().err
    assert main(["data", "check", str(ds)]) == 1                       # data check names it too
    assert f"{mf}: not valid JSON" in capsys.readouterr().out
    mf.write_text(json.dumps({"splits": []}))
    with pytest.raises(ValueError, match="not a tfrec_zoo manifest"):
        open_dataset(ds)


# -- 6. interrupted and killed writes ----------------------------------------------------------------------------
# `data write` in a real process that waits just before its finished temporary directory is renamed into place
SLOW_WRITE = """
import sys, time
import tfrec_zoo.data.staging as staging
publish = staging.publish
def slow_publish(new, target):
    time.sleep(120)   # the test signals the process while it waits here
    publish(new, target)
staging.publish = slow_publish
from training.cli import main
sys.exit(main())
"""


def _start_slow_write(tmp_path: Path) -> tuple[subprocess.Popen, Path, Path]:
    (tmp_path / "s.yaml").write_text(SPEC)
    src = tmp_path / "in.csv"
    src.write_text(HEADER + "".join(f"u{i % 3},{i},{i},x,1.0,{i % 2}\n" for i in range(30)))
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-c", SLOW_WRITE, "data", "write", "--spec", str(tmp_path / "s.yaml"),
                             "--input", str(src), "--out", str(out), "--split", "none"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            # a runner started in the background (`cmd &` in a script) hands its children SIGINT
                            # ignored, and Python then never raises KeyboardInterrupt: give the writer the default
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 120
    while time.time() < deadline:
        staged = [p for p in tmp_path.glob(".out.tmp-*") if (p / "manifest.json").exists()]
        if staged:
            return proc, out, staged[0]
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    proc.kill()
    raise AssertionError(f"the write never staged its output: {proc.communicate()}")


def test_ctrl_c_prints_one_line_exits_130_and_leaves_nothing(tmp_path: Path):
    proc, out, staged = _start_slow_write(tmp_path)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert stderr.strip() == f"interrupted: nothing written to {out}"
    assert not out.exists() and not staged.exists()


def test_a_killed_write_is_cleaned_up_by_the_next_one(tmp_path: Path):
    from tfrec_zoo.data import staging

    proc, out, staged = _start_slow_write(tmp_path)
    proc.kill()
    proc.wait(timeout=60)
    assert staged.is_dir() and staged.name.startswith(f".out.tmp-{staging._host()}-{proc.pid}-")
    assert not out.exists()          # the staged copy is complete, but it is not the dataset
    live = tmp_path / f".out.tmp-{staging._host()}-{os.getpid()}-abcdefgh"   # a write still running
    other_host = tmp_path / f".out.tmp-{staging._host()}x-{proc.pid}-abcdefgh"  # someone else's machine
    unrelated = tmp_path / f".other.tmp-{staging._host()}-{proc.pid}-abcdefgh"
    for p in (live, other_host, unrelated):
        p.mkdir()
    assert staging.stale_dirs(out) == [staged]
    code = main(["data", "write", "--spec", str(tmp_path / "s.yaml"), "--input", str(tmp_path / "in.csv"),
                 "--out", str(out), "--split", "none"])
    assert code == 0 and open_dataset(out).rows("train") == 30
    assert not staged.exists() and live.exists() and other_host.exists() and unrelated.exists()
    # a second write replaces the dataset through `.out.old-*`, which does not outlive it either
    assert main(["data", "write", "--spec", str(tmp_path / "s.yaml"), "--input", str(tmp_path / "in.csv"),
                 "--out", str(out), "--split", "none"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".out.")) == sorted(
        [live.name, other_host.name])
    assert out.stat().st_mode & 0o777 == 0o777 & ~staging._umask()    # not mkdtemp's private 0700


def test_ctrl_c_during_data_build_names_the_default_directory(monkeypatch, tmp_path: Path, capsys):
    from tfrec_zoo.data import builders

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(builders, "build", interrupted)
    assert main(["data", "build", "ml-latest-small", "--out", str(tmp_path / "ml")]) == 130
    assert capsys.readouterr().err.strip() == f"interrupted: nothing written to {tmp_path / 'ml'}"


@pytest.mark.parametrize("value, problem", [("soon", "time 'soon' is not a number or an ISO date"),
                                            ("", "the time is missing")])
def test_a_time_that_is_not_a_time_names_its_line(tmp_path, capsys, value, problem):
    rows = HEADER + "a,1,10,[],1.0,1\na,2,9,[],1.0,0\n" + f"b,3,{value},[],2.0,1\n"
    code, _ = write(tmp_path, rows, split="time")
    assert code == 2
    line = error_line(capsys)
    assert f"feature 'ts', line 4: {problem}" in line, line
    assert_nothing_written(tmp_path)


def test_iso_dates_are_times(tmp_path, capsys):
    """A time column of ISO dates (not numbers) is read as dates: the latest (first in the file) is the test row."""
    spec = SPEC.replace("  - {name: price, kind: dense}\n", "")
    rows = "uid,item,ts,cats,clicked\n" + "".join(
        f"a,{i},{d},[],{i % 2}\n" for i, d in enumerate(["2024-10-09T08:00:00", "2024-09-30", "2024-10-02",
                                                         "2024-10-03", "2024-10-04", "2024-10-05", "2024-10-06",
                                                         "2024-10-07", "2024-10-08", "2024-10-09"]))
    code, out = write(tmp_path, rows, spec, "in.csv", "leave_one_out")
    assert code == 0, capsys.readouterr().err
    test = next(iter(open_dataset(out).dataset("test", 8)))[0]
    assert test["item"].numpy().tolist() == [0]       # the latest by date, though first in the file
