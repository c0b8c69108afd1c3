"""Device-cloud replay (seed paper 4), step 1: sessions cut from real timestamps, the replay lists, a model's
feature subset (`features:`), a stage's own part of train (`rows.splits`) and GAUC per list (`group_by`)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tfrec_zoo.data import open_dataset
from tfrec_zoo.data.builders import build
from tfrec_zoo.data.builders.sessions import (FIRST_STEP, HISTORY, cut_sessions, replay_rows, replay_splits,
                                              step_parts)
from tfrec_zoo.data.subset import RowSelection
from tfrec_zoo.features import FeatureSpecError
from tfrec_zoo.features.spec import load_spec
from tfrec_zoo.paths import feature_specs_dir
from training.evaluation import task_metrics
from training.experiment import ExperimentError, parse_experiment

SPEC = feature_specs_dir() / "ml-latest-small-sessions.yaml"


def test_sessions_cut_at_a_new_user_or_a_gap_over_the_limit():
    users = np.array([1, 1, 1, 1, 2, 2])
    times = np.array([0, 1800, 3601, 3700, 3800, 9000], float)
    np.testing.assert_array_equal(cut_sessions(users, times, 1800), [0, 0, 1, 1, 2, 3])
    with pytest.raises(ValueError, match="seconds > 0"):
        cut_sessions(users, times, 0)


def test_steps_go_to_parts_by_their_place_in_time_among_all_steps():
    # 10 steps at times 9, 8, ..., 0: q by time = 0.95 .. 0.05 -> parts 4 3 2 2 1 1 0 0 0 0
    parts = step_parts(np.arange(10, dtype=float)[::-1])
    np.testing.assert_array_equal(parts, [4, 3, 2, 2, 1, 1, 0, 0, 0, 0])
    np.testing.assert_array_equal(step_parts(np.zeros(5)), [0, 0, 1, 2, 4])     # ties: by step order


def _log(n_users: int = 6, per_user: int = 40, n_items: int = 300, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n_users):
        t = 1_000_000.0 * u
        items = rng.choice(n_items, per_user, replace=False)
        for j, item in enumerate(items):
            t += 4000.0 if j % 10 == 0 else 60.0        # sessions of 10, an hour apart
            rows.append((u, int(item), t))
    return pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"])


def test_a_step_holds_the_next_logged_items_and_unseen_negatives_with_both_histories():
    log = _log()
    rows, facts = replay_rows(log, positives=3, negatives=4, seed=1)
    assert facts["sessions"] == 6 * 4
    by_user = {u: g.sort_values("timestamp")["item_id"].tolist() for u, g in log.groupby("user_id")}
    for step_id, lst in rows.groupby("step_id"):
        u = int(lst["user_id"].iat[0])
        assert lst["click"].tolist() == [1.0] * 3 + [0.0] * 4
        seq = by_user[u]
        pos = lst["item_id"].tolist()[:3]
        s = seq.index(pos[0])                             # the step's position in the user's log
        assert pos == seq[s:s + 3]
        neg = lst["item_id"].tolist()[3:]
        assert len(set(neg)) == 4 and not set(neg) & set(seq)      # never an item the user interacts with

        clicks = int(lst["session_clicks"].iat[0])
        assert clicks >= FIRST_STEP and (clicks - FIRST_STEP) % 3 == 0
        device = lst["device_hist_item_id"].iat[0]
        cloud = lst["cloud_hist_item_id"].iat[0]
        assert device == seq[max(0, s - HISTORY):s]       # everything before the step
        assert cloud == seq[max(0, s - clicks - HISTORY):s - clicks]   # before the session only
        assert lst["session_item_id"].iat[0] == seq[s - min(clicks, 20):s]    # the session's clicks alone
        assert lst["part"].nunique() == 1
    splits = replay_splits(rows)
    assert set(splits["valid"]["part"]) == {3} and set(splits["test"]["part"]) == {4}
    assert set(splits["train"]["part"]) == {0, 1, 2}


def test_negatives_come_from_the_interactions_just_before_the_step():
    log = _log(n_users=6, per_user=40)
    log["timestamp"] = log.groupby("user_id").cumcount() * 100.0 + log["user_id"] * 7.0   # users interleaved
    rows, facts = replay_rows(log, positives=3, negatives=4, window=30)
    assert "the last 30 interactions" in facts["list"]["sampler"]
    times = np.sort(log["timestamp"].to_numpy())
    checked = 0
    for _, lst in rows.groupby("step_id"):
        t = lst["timestamp"].iat[0]
        before = log[log["timestamp"] < t].sort_values("timestamp", kind="stable")
        if len(before) < 30:
            continue                                          # the log's first 30: drawn from those
        window = set(before["item_id"].iloc[-30:])
        assert set(lst.loc[lst["click"] == 0, "item_id"]) <= window
        checked += 1
    assert checked > 10 and len(times) == 240


def test_a_category_travels_with_every_candidate_and_history_step():
    log = _log(n_users=2)
    log["category_id"] = log["item_id"] % 7
    rows, _ = replay_rows(log, positives=3, negatives=4)
    assert (rows["category_id"] == rows["item_id"] % 7).all()
    for items, cats in (("device_hist_item_id", "device_hist_category_id"), ("session_item_id", "session_category_id"),
                        ("cloud_hist_item_id", "cloud_hist_category_id")):
        assert all([i % 7 for i in h] == c for h, c in zip(rows[items], rows[cats]))


def test_too_short_sessions_or_too_few_other_users_say_so():
    log = _log(n_users=1, per_user=4)
    with pytest.raises(ValueError, match="no session has 7 interactions or more"):
        replay_rows(log, positives=5)
    # one user alone: every recent interaction is the user's own, so no list can have its negatives
    with pytest.raises(ValueError, match="user 0, step 0: only 0 of 4 negatives .* build with more users"):
        replay_rows(_log(n_users=1), positives=3, negatives=4)


def test_a_feature_subset_keeps_labels_and_side_attributes_and_names_mistakes():
    spec = load_spec(SPEC)
    cloud = spec.select(keep=["item_id", "genres", "cloud_history"], where="cloud.yaml: features")
    assert [f.name for f in cloud.inputs] == ["item_id", "genres", "cloud_history"]
    assert [lab.task for lab in cloud.labels] == ["click"]
    # a side attribute follows its id (lbsn-gowalla-ctx: the POI's users), in or out
    ctx = load_spec(feature_specs_dir() / "lbsn-gowalla-ctx.yaml")
    assert [f.name for f in ctx.select(keep=["poi_id", "hour"]).side_features("poi_id")] == ["poi_users"]
    assert not ctx.select(drop=["poi_id", "history", "eval_negatives"]).side_features()
    device = spec.select(drop=["cloud_history", "step_id", "part"])
    assert [f.name for f in device.inputs] == ["user_id", "item_id", "genres", "session_clicks", "device_history",
                                               "session_history"]
    assert "device_history" in [f.name for f in device.inputs] and "cloud_history" not in device._by_name
    with pytest.raises(FeatureSpecError, match=r"cloud.yaml: features: 'device_histroy' is not an input feature.*"
                                               r"use 'device_history'"):
        spec.select(keep=["device_histroy"], where="cloud.yaml: features")
    with pytest.raises(FeatureSpecError, match="'click' is not an input feature"):
        spec.select(drop=["click"])
    # a history sharing the item's table cannot stand without the item
    with pytest.raises(FeatureSpecError, match="do not stand alone: .*shares_embedding_with.*keep the feature"):
        spec.select(keep=["cloud_history"])
    with pytest.raises(FeatureSpecError, match="no input feature is left"):
        spec.select(drop=[f.name for f in spec.inputs])


@pytest.mark.parametrize("features, message", [
    (["item_id"], "expected {keep: [names]} or {drop: [names]}"),
    ({"keep": ["item_id"], "drop": ["part"]}, "expected {keep: [names]} or {drop: [names]}"),
    ({"keep": []}, "features.keep: expected a non-empty list of feature names"),
])
def test_experiment_features_shape_errors_name_the_key(features, message):
    raw = {"name": "x", "dataset": "d", "model": "din", "features": features}
    with pytest.raises(ExperimentError, match=message.replace("[", r"\[").replace("{", r"\{")):
        parse_experiment(raw, "x.yaml")
    raw = {"name": "x", "dataset": "d", "model": "din",
           "stages": [{"name": "cloud", "model": "din", "features": features}]}
    with pytest.raises(ExperimentError, match=r"stages\[0\]\.features"):
        parse_experiment(raw, "x.yaml")


def test_rows_splits_limit_where_keep_applies():
    sel = RowSelection.parse({"keep": {"part": [1]}, "splits": ["train"]})
    assert sel.splits == ("train",) and sel.to_dict()["splits"] == ["train"]
    assert "splits" not in RowSelection.parse({"keep": {"part": [1]}}).to_dict()    # old subsets keep their names
    with pytest.raises(ValueError, match="rows.splits: expected a list of train / valid / test"):
        RowSelection.parse({"keep": {"part": [1]}, "splits": ["training"]})
    with pytest.raises(ValueError, match="neither is given"):
        RowSelection.parse({"share": {"train": 0.5}, "splits": ["train"]})


def test_gauc_groups_by_the_list_when_asked():
    spec = load_spec(SPEC)
    # two users, two lists each: within each list the model ranks the click first, across lists it does not
    data = {"label/click": np.array([1, 0, 1, 0, 1, 0, 1, 0], float),
            "pred/click": np.array([0.9, 0.8, 0.2, 0.1, 0.9, 0.8, 0.2, 0.1]),
            "weight/click": np.ones(8),
            "key/user_id": np.array([1, 1, 1, 1, 2, 2, 2, 2]),
            "key/step_id": np.array([10, 10, 11, 11, 12, 12, 13, 13])}
    by_list = task_metrics(spec, data, group_by="step_id")["click"]
    by_user = task_metrics(spec, data)["click"]
    assert by_list["gauc"] == 1.0 and by_list["gauc_groups"] == 4
    assert by_user["gauc"] == 0.75 and by_user["gauc_groups"] == 2


@pytest.fixture(scope="module")
def ml_sessions(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("data") / "mlsess"
    build("ml-latest-small-sessions", out, progress=False, log=lambda *_: None, options={"max_users": 30})
    return out


def test_prior_logit_is_the_squashed_logit_of_the_probability():
    from tfrec_zoo.layers import PriorLogit

    p = np.array([0.0, 0.2, 0.5, 1.0, 1.7], np.float32)
    q = np.clip(p, 0, 1) * (1 - 1e-3) + 1e-4
    np.testing.assert_allclose(PriorLogit()(p).numpy()[:, 0], np.log(q / (1 - q)), rtol=1e-5, atol=1e-6)


def _pipeline(data: Path, **extra) -> dict:
    din = {"dnn_units": [16], "attention_units": [8]}
    return {"name": "pipe", "dataset": str(data), "model": "din", "epochs": 1, "batch_size": 256,
            "params": {**din, "prior": "cloud_prior"},
            "features": {"keep": ["user_id", "item_id", "genres", "device_history", "session_history",
                                  "session_clicks", "cloud_prior"]},
            "rows": {"keep": {"part": [1]}, "splits": ["train"]},
            "join": {"cloud_prior": {"from": "cloud"},
                     "refresh_prior": {"from": "cloud", "feed": {"cloud_history": "device_history"}}},
            "evaluation": {"splits": ["valid"], "group_by": "step_id"},
            "stages": [{"name": "cloud", "model": "din", "params": din,
                        "features": {"keep": ["user_id", "item_id", "genres", "cloud_history"]},
                        "rows": {"keep": {"part": [0]}, "splits": ["train"]}}], **extra}


def _uplift_pipeline(data: Path, **final) -> dict:
    """cloud -> device (the step-1 pipeline's final model as a stage) -> the uplift T-learner on part 2's lists ->
    the meta controller on the same lists, labelled by the T-learner's estimates."""
    device = _pipeline(data)
    replay = {"scores": {"cloud": "cloud_prior", "device": "device_score", "refresh": "refresh_prior"},
              "keep": ["device_history", "session_history", "session_clicks"], "k": 5, "seed": 1}
    common = {"features": {"keep": ["device_history", "session_history", "session_clicks"]},
              "join": {**device["join"], "device_score": {"from": "device"}},
              "rows": {"keep": {"part": [2]}, "splits": ["train"]}, "batch_size": 64}
    return {"name": "pipe", "dataset": str(data), "model": "meta_controller", "epochs": 2,
            "params": {"dnn_units": [8], "attention_units": [4], "budget": 0.3, "smoothing": 1.0},
            **common, "replay": {**replay, "choice_from": "uplift"},
            "evaluation": {"splits": ["valid"], "policy": {"task": "choice", "outcomes": [
                "outcome_cloud", "outcome_device", "outcome_refresh"]}},
            "stages": [*device["stages"],
                       {"name": "device", "model": "din", "params": device["params"], "features": device["features"],
                        "rows": device["rows"], "join": {"cloud_prior": {"from": "cloud"}},
                        "evaluation": device["evaluation"]},
                       {"name": "uplift", "model": "dnn", "params": {"dnn_units": [16]}, "epochs": 2, **common,
                        "replay": replay, "evaluation": {"splits": ["valid"], "uplift": {"control": "cloud"}}},
                       {"name": "xlearner", "model": "dnn", "params": {"dnn_units": [16]}, "epochs": 1, **common,
                        "replay": {**replay, "xlearner_from": "uplift"},
                        "evaluation": {"splits": ["valid"], "uplift": {"control": "cloud"}}}],
            **final}


def _ndcg5(labels: np.ndarray, scores: np.ndarray) -> float:
    """NDCG@5 of one list, written out plainly (ties against the clicked items)."""
    order = sorted(range(len(labels)), key=lambda i: (-scores[i], labels[i]))
    dcg = sum(1 / np.log2(r + 2) for r, i in enumerate(order[:5]) if labels[i] > 0)
    ideal = sum(1 / np.log2(r + 2) for r in range(min(5, int(labels.sum()))))
    return dcg / ideal


def test_pipeline_cloud_device_uplift_and_controller_on_the_replay(ml_sessions, tmp_path, monkeypatch):
    """The cloud model trains on part 0 without the in-session clicks; its predictions (as trained, and refreshed
    with the device's history) are joined as columns; the on-device model learns a residual on them on part 1; its
    own predictions join after (it reads cloud_prior); part 2's lists become one example each with the three
    mechanisms' NDCG@5 as masked labels, a shared-encoder T-learner is scored as an uplift model, and the meta
    controller learns the mechanism of its largest estimate."""
    from tfrec_zoo._tf import tf
    from training.runs import load_run
    from training.trainer import train

    monkeypatch.setenv("TFREC_ZOO_DATA", str(tmp_path / "data"))       # where subsets and joins are written
    extra = open_dataset(ml_sessions).manifest["extra"]
    assert extra["gap_s"] == 1800 and extra["steps"] == sum(extra["steps_per_part"].values())
    run = tmp_path / "run"
    result = train(parse_experiment(_uplift_pipeline(ml_sessions), "pipe.yaml"), run, verbose=0, log=lambda *_: None)
    _, cloud_data, cloud = load_run(run / "cloud", log=lambda *_: None)
    assert set(cloud.input_names) == {"user_id", "item_id", "genres", "genres_len", "cloud_hist_item_id",
                                      "cloud_history_len"}
    counts = cloud_data.manifest["extra"]["rows"]["counts"]
    assert counts["train"]["kept"] == 25 * extra["steps_per_part"]["0"]           # part 0 only
    assert counts["valid"]["kept"] == counts["valid"]["rows"]                    # valid whole
    _, data, device = load_run(run / "device", log=lambda *_: None)
    assert "cloud_prior" in device.input_names and "cloud_hist_item_id" not in device.input_names
    assert data.manifest["extra"]["rows"]["counts"]["train"]["kept"] == 25 * extra["steps_per_part"]["1"]
    # the joined columns are the cloud model's scores: with its own history, and with the device's fed in
    joined = [open_dataset(p) for p in (tmp_path / "data" / "joined").iterdir()
              if "device_score" in {f.name for f in open_dataset(p).spec.row_features}][0]
    names = list(dict.fromkeys([*cloud.input_names, *device.input_names, "device_hist_item_id", "device_history_len",
                                "refresh_prior", "device_score", "step_id", "user_id"]))
    batches = list(joined.dataset("valid", 4096, features=names))
    cols = {k: np.concatenate([b[0][k].numpy() for b in batches]) for k in names}
    cols["click"] = np.concatenate([b[1]["click"].numpy() for b in batches])
    batch = {k: v[:64] for k, v in cols.items()}
    own = cloud.predict_on_batch({k: batch[k] for k in cloud.input_names})["click"]
    fed = cloud.predict_on_batch({**{k: batch[k] for k in ("user_id", "item_id", "genres", "genres_len")},
                                  "cloud_hist_item_id": batch["device_hist_item_id"],
                                  "cloud_history_len": batch["device_history_len"]})["click"]
    np.testing.assert_allclose(batch["cloud_prior"], own, atol=1e-6)
    np.testing.assert_allclose(batch["refresh_prior"], fed, atol=1e-6)
    assert np.abs(own - fed).max() > 1e-4                     # the in-session clicks change the cloud's score
    dev = device.predict_on_batch({k: batch[k] for k in device.input_names})["click"]
    np.testing.assert_allclose(batch["device_score"], dev, atol=1e-6)
    # `tfrec-zoo predict --feed` scores the same refresh by hand (on the cloud run's own data: part 0 of train)
    from training.cli import main

    out = tmp_path / "refresh.csv"
    assert main(["predict", str(run / "cloud"), "--split", "valid", "--out", str(out), "--data", str(data.path),
                 "--feed", "cloud_history=device_history"]) == 0
    np.testing.assert_allclose(pd.read_csv(out)["click"].to_numpy()[:64], batch["refresh_prior"], atol=1e-6)
    assert main(["predict", str(run / "cloud"), "--split", "valid", "--out", str(out),
                 "--feed", "cloud_history=session_clicks"]) == 2
    # the residual: with its own logit zeroed, the on-device model returns the (squashed) cloud prior
    layer = device.get_layer("click_logit")
    layer.set_weights([np.zeros_like(w) for w in layer.get_weights()])
    prior = batch["cloud_prior"] * (1 - 1e-3) + 1e-4
    np.testing.assert_allclose(device.predict_on_batch({k: batch[k] for k in device.input_names})["click"], prior,
                               rtol=1e-5)
    dev_valid = json.loads((run / "device" / "metrics.json").read_text())["valid"]["overall"]["click"]
    assert dev_valid["gauc_groups"] + dev_valid["gauc_groups_skipped"] == extra["steps_per_part"]["3"]
    # the replay: one example per list, the outcomes recomputed plainly from the joined rows
    _, steps, tlearner = load_run(run / "uplift", log=lambda *_: None)
    assert steps.rows("train") == extra["steps_per_part"]["2"] and steps.rows("valid") == extra["steps_per_part"]["3"]
    assert set(tlearner.input_names) == {"device_hist_item_id", "device_history_len", "session_item_id",
                                         "session_history_len", "session_clicks"}      # never which arm served
    assert [lab.mask for lab in steps.spec.labels] == ["served_cloud", "served_device", "served_refresh"]
    want = ["served_cloud", "served_device", "served_refresh", "step_id", "device_hist_item_id"]
    sb = list(steps.dataset("valid", 4096, features=want))
    got = {k: np.concatenate([b[0][k].numpy() for b in sb]) for k in want}
    got.update({f"o_{t}": np.concatenate([b[1][t].numpy() for b in sb]) for t in ("cloud", "device", "refresh")})
    served = np.stack([got["served_cloud"], got["served_device"], got["served_refresh"]], 1)
    assert (served.sum(1) == 1).all() and (served.mean(0) > 0.2).all()            # one arm each, all three used
    for i, s in enumerate(got["step_id"]):
        rows = cols["step_id"] == s
        for mech, col in (("cloud", "cloud_prior"), ("device", "device_score"), ("refresh", "refresh_prior")):
            np.testing.assert_allclose(got[f"o_{mech}"][i], _ndcg5(cols["click"][rows], cols[col][rows]), rtol=1e-6)
        np.testing.assert_array_equal(got["device_hist_item_id"][i], cols["device_hist_item_id"][rows][0])
    up = json.loads((run / "uplift" / "metrics.json").read_text())["valid"]["uplift"]
    assert set(up) == {"device", "refresh", "policy"}
    true_device = got["o_device"] - got["o_cloud"]
    np.testing.assert_allclose(up["device"]["ate_true"], true_device.mean(), rtol=1e-5)
    assert up["device"]["treated"] == int(got["served_device"].sum()) and np.isfinite(up["device"]["auuc"])
    np.testing.assert_allclose(up["policy"]["oracle"], np.max([got["o_cloud"], got["o_device"], got["o_refresh"]],
                                                              0).mean(), rtol=1e-5)
    assert "| valid | device vs control" in (run / "uplift" / "summary.md").read_text()
    # the controller's labels: the mechanism of the T-learner's largest estimate (ties to the cheaper)
    _, choices, controller = load_run(run, log=lambda *_: None)
    assert set(controller.input_names) == set(tlearner.input_names)
    cb = list(choices.dataset("valid", 4096, features=[*controller.input_names, "outcome_cloud", "outcome_device",
                                                       "outcome_refresh"]))
    feats = {k: np.concatenate([b[0][k].numpy() for b in cb]) for k in cb[0][0]}
    est = tlearner.predict_on_batch({k: feats[k] for k in tlearner.input_names})
    label = np.concatenate([b[1]["choice"].numpy() for b in cb])
    np.testing.assert_array_equal(label, np.argmax(np.stack([est["cloud"], est["device"], est["refresh"]], 1), 1))
    np.testing.assert_allclose(feats["outcome_device"], got["o_device"], rtol=1e-6)   # same lists, same order
    pol = result.metrics["valid"]["policy"]
    probs = controller.predict_on_batch({k: feats[k] for k in controller.input_names})["choice"]
    outcomes = np.stack([feats["outcome_cloud"], feats["outcome_device"], feats["outcome_refresh"]], 1)
    picked = np.argmax(probs, 1)
    np.testing.assert_allclose(pol["chosen"], outcomes[np.arange(len(picked)), picked].mean(), rtol=1e-5)
    shares = np.bincount(picked, minlength=3) / len(picked)
    np.testing.assert_allclose(pol["random_mix"], shares @ outcomes.mean(0), rtol=1e-5)
    assert pol["last_share"] == pytest.approx(shares[2]) and pol["oracle"] == pytest.approx(up["policy"]["oracle"])
    # the X-learner's second stage: imputed effects against the T-learner's estimates, each on its own arm's lists
    _, xdata, xlearner = load_run(run / "xlearner", log=lambda *_: None)
    xb = list(xdata.dataset("valid", 4096, features=[*tlearner.input_names, "outcome_cloud", "outcome_device"]))
    xf = {k: np.concatenate([b[0][k].numpy() for b in xb]) for k in xb[0][0]}
    mu = tlearner.predict_on_batch({k: xf[k] for k in tlearner.input_names})
    d_treated = np.concatenate([b[1]["effect_device_treated"].numpy() for b in xb])
    w_treated = np.concatenate([b[2]["effect_device_treated"].numpy() for b in xb])
    d_control = np.concatenate([b[1]["effect_device_control"].numpy() for b in xb])
    w_control = np.concatenate([b[2]["effect_device_control"].numpy() for b in xb])
    np.testing.assert_array_equal(w_treated, got["served_device"])
    np.testing.assert_array_equal(w_control, got["served_cloud"])
    on = w_treated > 0
    np.testing.assert_allclose(d_treated[on], (xf["outcome_device"] - mu["cloud"])[on], atol=1e-5)
    on = w_control > 0
    np.testing.assert_allclose(d_control[on], (mu["device"] - xf["outcome_cloud"])[on], atol=1e-5)
    assert "served_device" not in xlearner.input_names
    xup = json.loads((run / "xlearner" / "metrics.json").read_text())["valid"]["uplift"]
    assert xup["device"]["ate_true"] == pytest.approx(up["device"]["ate_true"]) and np.isfinite(xup["device"]["auuc"])
    # the controller saves and serves as every zoo model does (the protocol's serving_default)
    controller.save(tmp_path / "controller")
    served = tf.saved_model.load(str(tmp_path / "controller")).signatures["serving_default"]
    assert set(served.structured_input_signature[1]) == set(controller.input_names)
    assert set(served.structured_outputs) == {"choice"}
    np.testing.assert_allclose(served(**{k: tf.constant(feats[k]) for k in controller.input_names})["choice"].numpy(),
                               probs, atol=1e-5)
    # the on-device export: the on-device model and the controller as TFLite flatbuffers of built-in ops, the
    # vocabulary lookups out of the graph; run with the app's lookup done from the exported vocabulary files
    from training.exporting import export_tflite

    for r, name, rows_feats, want in ((run / "device", "dev", batch, None), (run, "mc", feats, probs)):
        out = export_tflite(r, name, tmp_path / "sm", parity_rows=64, batch=8, log=lambda *_: None)
        report = json.loads((out / "report.json").read_text())
        assert report["models"]["model.tflite"]["max_abs_diff"] <= 1e-5
        assert report["models"]["model_dynamic_range.tflite"]["bytes"] < report["models"]["model.tflite"]["bytes"]
        signature = json.loads((out / "signature.json").read_text())
        _, _, m = load_run(r, log=lambda *_: None)
        assert set(signature["inputs"]) == set(m.input_names)
        rows = {}
        for k in m.input_names:
            info, v = signature["inputs"][k], np.asarray(rows_feats[k])
            if "table" in info:        # the app's lookup: 1 + the id's line in the vocabulary file, else row 0
                lines = (out / "vocab" / f"{info['table']}.txt").read_text().split("\n")[:-1]
                where = {x: i for i, x in enumerate(lines)}
                as_text = np.vectorize(lambda x: x.decode() if isinstance(x, bytes) else str(x), otypes=[object])(v)
                v = np.vectorize(lambda x: info["oov_buckets"] + where[x] if x in where else 0, otypes=[np.int64])(
                    as_text)
            rows[k] = v[:16]
        from tfrec_zoo.serving.tflite import run_tflite

        got = run_tflite((out / "model.tflite").read_bytes(), rows)
        ref = m.predict_on_batch({k: np.asarray(rows_feats[k])[:16] for k in m.input_names})
        ref = ref if isinstance(ref, dict) else {m.task_names[0]: ref}
        for k in ref:
            np.testing.assert_allclose(got[k].reshape(np.shape(ref[k])), ref[k], atol=1e-5)
    # started again: every stage, join and the replay are reused, nothing trains
    again = train(parse_experiment(_uplift_pipeline(ml_sessions), "pipe.yaml"), run, verbose=0, log=lambda *_: None)
    assert again.finished_before
    assert len(list((tmp_path / "data" / "replay").iterdir())) == 3      # the lists, + their choices, + X targets
    assert len(list((tmp_path / "data" / "joined").iterdir())) == 3              # cloud_prior, + refresh, + device


def test_pipeline_mistakes_are_one_line_naming_the_key(ml_sessions, tmp_path, monkeypatch):
    from training.trainer import train

    up = _uplift_pipeline(ml_sessions)
    with pytest.raises(ExperimentError, match=r"pipe.yaml: evaluation.uplift.control: 'clod' is not a mechanism of "
                                              r"`replay.scores` \(those: cloud, device, refresh\)"):
        parse_experiment({**up, "evaluation": {"uplift": {"control": "clod"}}}, "pipe.yaml")
    with pytest.raises(ExperimentError, match=r"pipe.yaml: replay.scores.cluod: not a mechanism"):
        parse_experiment({**up, "replay": {**up["replay"], "scores": {"cluod": "cloud_prior", "device": "d"}}},
                         "pipe.yaml")
    with pytest.raises(ExperimentError, match=r"pipe.yaml: replay.outcome: 'mrr' is not one of ndcg, hit, auc"):
        parse_experiment({**up, "replay": {**up["replay"], "outcome": "mrr"}}, "pipe.yaml")
    with pytest.raises(ExperimentError, match=r"stages\[2\].evaluation.uplift: expected \{control: TASK"):
        bad = {**up, "stages": [*up["stages"][:2], {**up["stages"][2], "evaluation": {"uplift": "cloud"}}]}
        parse_experiment(bad, "pipe.yaml")

    monkeypatch.setenv("TFREC_ZOO_DATA", str(tmp_path / "data"))
    with pytest.raises(ExperimentError, match=r"pipe.yaml: join.cloud_prior.from: 'cloudy' is not an earlier stage "
                                              r"\(earlier: cloud\)"):
        parse_experiment(_pipeline(ml_sessions, join={"cloud_prior": {"from": "cloudy"}}), "pipe.yaml")
    with pytest.raises(ExperimentError, match=r"stages\[0\].join.cloud_prior.from: 'later' is not an earlier stage "
                                              r"\(no stage before it\)"):
        parse_experiment(_pipeline(ml_sessions, stages=[{"name": "cloud", "model": "din",
                                                         "join": {"cloud_prior": {"from": "later"}}}]), "pipe.yaml")
    # a join of a column the spec does not declare fails before the cloud stage trains
    bad = _pipeline(ml_sessions, join={"clicked_prior": {"from": "cloud"}})
    with pytest.raises(ValueError, match=r"pipe.yaml: join.clicked_prior: not a `joined: true` column .*\(those: "
                                         r"cloud_prior, refresh_prior, device_score\)"):
        train(parse_experiment(bad, "pipe.yaml"), tmp_path / "r0", verbose=0, log=lambda *_: None)
    assert not (tmp_path / "r0" / "cloud").exists()
    # the model reads a joined column nobody joins
    exp = parse_experiment({**_pipeline(ml_sessions), "stages": None, "join": None, "rows": None}, "pipe.yaml")
    with pytest.raises(ValueError, match="pipe.yaml: features: 'cloud_prior' is not an input feature"):
        train(exp, tmp_path / "r1", verbose=0, log=lambda *_: None)
    exp = parse_experiment({**_pipeline(ml_sessions), "stages": None, "join": None, "rows": None,
                            "features": None}, "pipe.yaml")
    with pytest.raises(ValueError, match="prior: 'cloud_prior' is joined from an earlier stage's predictions: add "
                                         "`join: {cloud_prior: {from: STAGE}}`"):
        train(exp, tmp_path / "r2", verbose=0, log=lambda *_: None)
    # a typo in a feature name fails before anything trains
    bad = _pipeline(ml_sessions)
    bad["stages"][0]["features"] = {"keep": ["item_id", "cloud_hist"]}
    with pytest.raises(ValueError, match="stages.cloud: features: 'cloud_hist' is not an input feature"):
        train(parse_experiment(bad, "pipe.yaml"), tmp_path / "r3", verbose=0, log=lambda *_: None)
    assert not (tmp_path / "r1").exists() and not (tmp_path / "r2").exists()
    # a GAUC grouping column the spec lacks fails before training, not after it
    exp = parse_experiment({**_pipeline(ml_sessions), "stages": None, "join": None, "rows": None, "params": {},
                            "features": None, "evaluation": {"splits": ["valid"], "group_by": "step"}}, "pipe.yaml")
    with pytest.raises(ExperimentError, match="pipe.yaml: evaluation.group_by: 'step' is not a column"):
        train(exp, tmp_path / "r4", verbose=0, log=lambda *_: None)
    assert not (tmp_path / "r4").exists()


def test_replay_steps_carry_the_lists_context_and_name_what_cannot_be_carried(ml_sessions, tmp_path):
    """One example per list: its context features (equal on every row of the list), `served_*` masks that are no
    model input, `outcome_*` labels; a history whose table the candidate owned takes the table over. A feature that
    varies within a list, a score column that is not there, or a score kept as an input are errors."""
    from tfrec_zoo.models import build_model
    from training.replay_steps import replay_steps

    parent = open_dataset(ml_sessions)
    out = tmp_path / "replay"
    with pytest.raises(ValueError, match=r"replay.keep: 'item_id' differs between rows of list step_id=\d+ "):
        replay_steps(parent, {"scores": {"cloud": "session_clicks", "device": "session_clicks"},
                              "keep": ["session_history", "item_id"]}, out)
    assert not list(out.iterdir())                                     # nothing half-written is left
    with pytest.raises(ValueError, match=r"replay.scores.device: 'device_score' is not a dense column .*join the"):
        replay_steps(parent, {"scores": {"cloud": "session_clicks", "device": "device_score"},
                              "keep": ["session_history"]}, out)
    with pytest.raises(ValueError, match=r"replay.keep: 'session_clicks' is a mechanism's score"):
        replay_steps(parent, {"scores": {"cloud": "session_clicks", "refresh": "session_clicks"},
                              "keep": ["session_clicks"]}, out)
    steps = replay_steps(parent, {"scores": {"cloud": "session_clicks", "refresh": "session_clicks"},
                                  "keep": ["session_history"]}, out, log=lambda *_: None)
    spec = steps.spec
    assert [f.name for f in spec.inputs] == ["user_id", "step_id", "session_history"]
    assert spec.table_of("session_item_id") == "item_id"              # the parent's vocabulary, by its name
    assert [lab.task for lab in spec.labels] == ["cloud", "refresh"]
    assert steps.rows("valid") == open_dataset(ml_sessions).manifest["extra"]["steps_per_part"]["3"]
    feats, labels, weights = next(iter(steps.dataset("valid", 4096)))
    # every candidate of a list scored alike: the ties go against the clicks, so the outcome is 0
    assert float(np.max(labels["cloud"].numpy())) == 0.0
    np.testing.assert_array_equal(weights["cloud"] + weights["refresh"], 1.0)
    model = build_model("dnn", spec, steps.artifacts, {"dnn_units": [8]})
    assert "served_cloud" not in model.input_names and "session_item_id" in model.input_names
    # the spec round-trips with its `input: false` columns
    from tfrec_zoo.features.spec import parse_spec

    assert parse_spec(spec.to_dict()).fingerprint == spec.fingerprint
    assert spec["served_cloud"].input is False and spec["served_cloud"] in spec.row_features


def test_a_tflite_conversion_that_needs_select_tf_ops_names_them():
    from tfrec_zoo._tf import keras, tf
    from tfrec_zoo.serving.tflite import TFLiteConversionError, convert

    x = keras.Input((), dtype=tf.string, name="query")
    model = keras.Model(x, keras.layers.Lambda(lambda s: tf.cast(tf.strings.length(s), tf.float32))(x))
    with pytest.raises(TFLiteConversionError, match=r"TFLite's built-in ops cannot run StringLength .*Select-TF"):
        convert(model)
    with pytest.raises(ValueError, match="quantize: 'int4'"):
        convert(model, "int4")


def test_budget_smoothing_targets_by_hand():
    from tfrec_zoo._tf import tf
    from tfrec_zoo.models.meta_controller import BudgetSmoothedCrossEntropy

    # predicted argmax 2, 2, 2, 0: a refresh rate of 0.75
    p = tf.constant([[.1, .3, .6], [.3, .1, .6], [.25, .15, .6], [.7, .1, .2]])
    y = tf.constant([2.0, 2.0, 1.0, 2.0])
    smoothed = BudgetSmoothedCrossEntropy(budget=0.5, smoothing=0.4).targets(y, p).numpy()
    # refresh labels move 0.4 to the most probable other class; a label of another class stays (the last row: the
    # paper's "second largest class" would be refresh itself there and leave the label whole)
    np.testing.assert_allclose(smoothed, [[0, .4, .6], [.4, 0, .6], [0, 1, 0], [.4, 0, .6]], atol=1e-7)
    within = BudgetSmoothedCrossEntropy(budget=0.8, smoothing=0.4).targets(y, p).numpy()   # 0.75 <= 0.8
    np.testing.assert_array_equal(within, np.eye(3)[[2, 2, 1, 2]])
    loss = BudgetSmoothedCrossEntropy(budget=0.5, smoothing=0.4)(y, p, sample_weight=tf.constant([1., 0, 1, 1]))
    want = -(np.log([.3, .6]) @ [.4, .6] + np.log(.15) + np.log([.7, .2]) @ [.4, .6]) / 4
    np.testing.assert_allclose(float(loss), want, rtol=1e-6)


def test_label_smoothing_settles_the_refresh_rate_at_the_budget():
    """A toy batch where 80% of the counterfactual labels say refresh: plain cross-entropy refreshes every step;
    with budget-aware smoothing (lambda 1) the predicted refresh rate settles at the budget (the rule is a feedback
    on the batch's rate: it hovers there, within 0.02 over the last 20 steps)."""
    from tfrec_zoo._tf import keras, tf
    from tfrec_zoo.models.meta_controller import BudgetSmoothedCrossEntropy, RefreshRate

    rng = np.random.default_rng(0)
    x = rng.normal(size=(512, 4)).astype("float32")
    y = np.where(rng.random(512) < 0.8, 2, rng.integers(0, 2, 512)).astype("float32")

    def refresh_rates(smoothing: float) -> list[float]:
        tf.random.set_seed(0)
        model = keras.Sequential([keras.layers.Dense(3, activation="softmax", input_shape=(4,))])
        loss, opt = BudgetSmoothedCrossEntropy(budget=0.3, smoothing=smoothing), keras.optimizers.Adam(0.01)
        rates = []
        for _ in range(200):
            with tf.GradientTape() as tape:
                p = model(x)
                value = loss(y, p)
            rate = RefreshRate()
            rate.update_state(y, p)
            rates.append(float(rate.result()))
            opt.apply_gradients(zip(tape.gradient(value, model.trainable_variables), model.trainable_variables))
        return rates[-20:]

    assert min(refresh_rates(0.0)) > 0.9
    last = refresh_rates(1.0)
    assert abs(np.mean(last) - 0.3) <= 0.02 and max(last) < 0.4


def test_controller_budget_outside_0_1_is_one_line(ml_sessions):
    with pytest.raises(ExperimentError, match=r"pipe.yaml: params.budget: the share of steps that may be refreshed "
                                              r"must lie in \(0, 1\], got 1.5"):
        parse_experiment(_uplift_pipeline(ml_sessions, params={"budget": 1.5}), "pipe.yaml")
    with pytest.raises(ExperimentError, match=r"params.budget: .* got 0"):
        parse_experiment(_uplift_pipeline(ml_sessions, params={"budget": 0}), "pipe.yaml")
    with pytest.raises(ExperimentError, match=r"pipe.yaml: replay.choice_from: 'uplfit' is not an earlier stage"):
        up = _uplift_pipeline(ml_sessions)
        parse_experiment({**up, "replay": {**up["replay"], "choice_from": "uplfit"}}, "pipe.yaml")
