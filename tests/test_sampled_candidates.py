"""The sampled protocol scores each negative with its own candidate-dependent columns (an O2O POI's cell and
distance), named by the `source:` of the `eval_negatives` fields, not with the positive's."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tfrec_zoo import metrics as M
from tfrec_zoo.data import open_dataset
from tfrec_zoo.data.writer import write_dataset
from tfrec_zoo.features import parse_spec
from tfrec_zoo.models import build_model
from training.ranking import candidate_columns, evaluate_sampled

N_NEG = 5
SPEC = parse_spec({
    "name": "o2o-toy",
    "keys": {"user": "user_id", "item": "poi_id"},
    "features": [
        {"name": "user_id", "kind": "id", "embedding_dim": 4},
        {"name": "poi_id", "kind": "id", "embedding_dim": 4},
        {"name": "cell", "kind": "id", "dtype": "string", "embedding_dim": 4},
        {"name": "distance_km", "kind": "dense", "normalization": "log1p"},
        {"name": "hour", "kind": "id", "embedding_dim": 2},
        {"name": "eval_negatives", "kind": "sequence", "max_len": N_NEG, "fields": [
            {"name": "eval_neg_poi_id", "shares_embedding_with": "poi_id"},
            {"name": "eval_neg_cell", "dtype": "string", "source": "cell", "shares_embedding_with": "cell"},
            {"name": "eval_neg_distance_km", "kind": "dense", "source": "distance_km"}]},
        {"name": "checkin", "kind": "label"},
    ]}, "o2o-toy.yaml")


def _frame(n: int, seed: int, with_negatives: bool) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    poi = rng.integers(0, 30, n)
    out = {"user_id": rng.integers(0, 20, n), "poi_id": poi, "cell": [f"c{p % 7}" for p in poi],
           "distance_km": rng.exponential(3.0, n).astype(np.float32), "hour": rng.integers(0, 24, n),
           "checkin": (poi % 3 == 0).astype(float)}
    negs = rng.integers(0, 30, (n, N_NEG)) if with_negatives else np.zeros((n, 0), np.int64)
    out["eval_neg_poi_id"] = [list(r) for r in negs]
    out["eval_neg_cell"] = [[f"c{p % 7}" for p in r] for r in negs]
    out["eval_neg_distance_km"] = [list(rng.exponential(3.0, len(r)).astype(np.float32)) for r in negs]
    return pd.DataFrame(out)


@pytest.fixture(scope="module")
def o2o(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("o2o") / "o2o-toy"
    write_dataset({"train": _frame(400, 0, False), "valid": _frame(60, 1, True), "test": _frame(60, 2, True)},
                  SPEC, out, source="toy", progress=False)
    return out


def test_negatives_are_scored_with_their_own_cell_and_distance(o2o):
    data = open_dataset(o2o)
    model = build_model("wide_deep", data.spec, data.artifacts, {})
    assert candidate_columns(data.spec, list(model.input_names)) == {"cell": "eval_neg_cell",
                                                                      "distance_km": "eval_neg_distance_km"}
    got = evaluate_sampled(model, data, "test", modes=("recommendation",), ks=(1, 5))["recommendation"]
    # by hand: each row's 1 + N candidates with their own poi, cell and distance; user and hour repeat
    feats = next(iter(data.dataset("test", 1000, features=[*model.input_names, "eval_neg_poi_id",
                                                           "eval_neg_cell", "eval_neg_distance_km"])))[0]
    feats = {k: v.numpy() for k, v in feats.items()}
    n = len(feats["poi_id"])

    def candidates(own: bool) -> dict:
        x = {k: np.repeat(feats[k], 1 + N_NEG, axis=0) for k in ("user_id", "hour")}
        for col, field in (("poi_id", "eval_neg_poi_id"), ("cell", "eval_neg_cell"),
                           ("distance_km", "eval_neg_distance_km")):
            negs = feats[field] if (own or col == "poi_id") else np.repeat(feats[col][:, None], N_NEG, 1)
            x[col] = np.concatenate([feats[col][:, None], negs.astype(feats[col].dtype)], 1).reshape(-1)
        return x

    def auc(x) -> float:
        scores = np.asarray(model.score_model("checkin").predict_on_batch(x)).reshape(n, 1 + N_NEG)
        labels = np.concatenate([np.ones((n, 1)), np.zeros((n, N_NEG))], 1).ravel()
        return M.auc(labels, scores.ravel())

    assert got["auc"] == pytest.approx(auc(candidates(own=True)), abs=1e-6)
    assert abs(auc(candidates(own=False)) - got["auc"]) > 1e-4      # the positive's cell and distance differ
