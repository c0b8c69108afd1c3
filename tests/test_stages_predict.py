"""Staged experiments (`stages:`) and batch scoring (`tfrec-zoo predict`) on a real ml-latest-small subset."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tfrec_zoo.data import open_dataset
from tfrec_zoo.data.builders import build
from training.experiment import ExperimentError, parse_experiment
from training.predict import predict_run
from training.runs import load_run
from training.trainer import train


@pytest.fixture(scope="module")
def ml_small(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("data") / "ml40"
    build("ml-latest-small", out, progress=False, log=lambda *_: None, options={"max_users": 40})
    return out


def staged(data: Path, **extra) -> dict:
    return {"name": "staged", "dataset": str(data), "model": "mmoe", "epochs": 1, "batch_size": 512,
            "params": {"expert_units": [16], "tower_units": [8]},
            "tasks": {"like": {"loss_weight": 1.0}, "rating": {"loss_weight": 0.0}},
            "stages": [
                {"name": "warm", "model": "deepfm", "params": {"dnn_units": [16]}, "tasks": {"rating": {
                    "loss_weight": 0.0}}},
                {"name": "din", "model": "din", "params": {"dnn_units": [16]}, "evaluate": True,
                 "restore": {"from": "warm", "include": ["^emb_"]}}],
            "restore": {"from": "din", "include": ["^emb_"], "freeze": ["^emb_movie_id$"]},
            "evaluation": {"splits": ["test"]}, **extra}


def test_stages_train_in_order_restore_from_each_other_and_resume_as_finished(ml_small, tmp_path):
    run = tmp_path / "run"
    lines: list[str] = []
    result = train(parse_experiment(staged(ml_small), "staged.yaml"), run, verbose=0, log=lines.append)
    for stage in ("warm", "din"):
        assert (run / stage / "DONE").exists() and (run / stage / "model").exists()
    assert not (run / "warm" / "metrics.json").exists()             # evaluate: false (the default)
    assert json.loads((run / "din" / "metrics.json").read_text())["test"]["overall"]["like"]["auc"] > 0.5
    # din restored the embeddings deepfm trained; the final mmoe restored din's and froze the movie table
    din_restore = json.loads((run / "din" / "restore.json").read_text())
    assert "emb_movie_id/embeddings:0" in din_restore["restored"]
    final = json.loads((run / "restore.json").read_text())
    assert final["frozen"] == ["emb_movie_id"]
    _, _, din = load_run(run / "din", log=lambda *_: None)
    np.testing.assert_array_equal(result.model.get_layer("emb_movie_id").embeddings.numpy(),
                                  din.get_layer("emb_movie_id").embeddings.numpy())
    assert result.metrics["test"]["overall"]["like"]["count"] > 0
    # started again: every stage and the run itself are finished, nothing trains
    lines.clear()
    again = train(parse_experiment(staged(ml_small), "staged.yaml"), run, verbose=0, log=lines.append)
    assert again.finished_before and any("finished already" in line for line in lines)


@pytest.mark.parametrize("change, words", [
    ({"restore": {"from": "nope"}}, r"restore.from: 'nope' is not an earlier stage \(earlier: warm, din\)"),
    ({"stages": [{"name": "a", "model": "din", "restore": {"from": "b"}}, {"name": "b", "model": "din"}]},
     r"stages\[0\].restore.from: 'b' is not an earlier stage \(no stage before it\)"),
    ({"stages": [{"name": "model", "model": "din"}]}, r"stages\[0\].name: 'model' must be a new name"),
    ({"stages": [{"name": "a", "model": "dinn"}]}, r"stages\[0\].model: unknown model 'dinn'"),
    ({"stages": [{"name": "a", "model": "din", "epoch": 1}]}, r"stages\[0\].epoch: unknown key"),
    ({"stages": [{"name": "a", "model": "din", "params": {"dnn_units": "x"}}]}, r"stages\[0\].params.dnn_units"),
])
def test_stage_mistakes_name_the_stage(ml_small, change, words):
    raw = {**staged(ml_small), **change}
    if "stages" in change:
        raw.pop("restore")
    with pytest.raises(ExperimentError, match=words):
        parse_experiment(raw, "staged.yaml")


def test_predict_writes_every_row_with_its_keys(ml_small, tmp_path):
    exp = parse_experiment({"name": "p", "dataset": str(ml_small), "model": "din", "epochs": 1, "batch_size": 512,
                            "params": {"dnn_units": [16]}, "evaluation": {"splits": []}}, "p.yaml")
    run = tmp_path / "run"
    train(exp, run, verbose=0, log=lambda *_: None)
    out = predict_run(run, "test", tmp_path / "out" / "test.parquet", log=lambda *_: None)
    frame = pd.read_parquet(out)
    data = open_dataset(ml_small)
    assert len(frame) == data.rows("test")
    assert list(frame.columns) == ["row", "user_id", "movie_id", "timestamp", "like", "rating"]
    assert (frame["row"].to_numpy() == np.arange(len(frame))).all()
    # the rows are the split's rows in file order: the first batch's keys and predictions line up
    _, _, model = load_run(run, log=lambda *_: None)
    feats, labels = next(iter(data.dataset("test", 16)))[:2]
    np.testing.assert_array_equal(frame["user_id"].to_numpy()[:16], feats["user_id"].numpy())
    np.testing.assert_array_equal(frame["movie_id"].to_numpy()[:16], feats["movie_id"].numpy())
    want = model.predict_on_batch({k: feats[k] for k in model.input_names})["like"]
    np.testing.assert_allclose(frame["like"].to_numpy()[:16], want, atol=1e-6)
    assert frame["like"].between(0, 1).all()
    # csv too; a split the data lacks and a wrong suffix are errors naming them; no half-written file is left
    csv = predict_run(run, "valid", tmp_path / "valid.csv", log=lambda *_: None)
    assert len(pd.read_csv(csv)) == data.rows("valid")
    with pytest.raises(ValueError, match="no split 'tset'"):
        predict_run(run, "tset", tmp_path / "x.parquet", log=lambda *_: None)
    with pytest.raises(ValueError, match=r"--out .*x.json: write .parquet or .csv"):
        predict_run(run, "test", tmp_path / "x.json", log=lambda *_: None)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["test.parquet"]
