"""benchmarks/candidate_generation.py: what each row's experiment reads, activity buckets, tables and claims (no
training here: the numbers are synthetic)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "candidate_generation.py"
_spec = importlib.util.spec_from_file_location("candidate_generation_bench", _PATH)
cg = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(cg)


def test_rows_read_only_the_history_and_the_datasets_activeness():
    cfg = cg.DATASETS["amazon-beauty"]
    model, p, losses = cg.row_params("dssm", cfg)
    assert (model, p["query_features"], p["item_units"]) == ("two_tower", ["history"], [64])
    model, p, losses = cg.row_params("aisl_pcl", cfg)
    assert model == "adaptive_interests_pcl" and losses == {"prototype": 0.1}
    assert p["activeness_features"] == ["user_activity", "user_spread"] and p["prototypes"] == cfg["prototypes"]
    assert (p["max_interests"], p["adaptive"], p["prototype_update"], p["collision"]) == (8, True, "kmeans", "mask")
    _, p, _ = cg.row_params("fixed_k2", cfg)
    assert (p["max_interests"], p["adaptive"]) == (2, False) and "activeness_features" not in p
    _, p, losses = cg.row_params("no_pcl", cfg)
    assert p["prototypes"] == 0 and losses == {}
    _, p, _ = cg.row_params("mind", cfg)
    assert p["history"] == "history" and p["max_interests"] == 4 and "prototypes" not in p


def test_experiment_is_a_valid_retrieval_experiment():
    exp = cg.experiment("no_collision", "lbsn-gowalla", 1)
    assert exp.seed == 1 and exp.params["collision"] == "none" and exp.params["activeness_features"] == [
        "user_activity", "user_spread", "user_recency"]
    assert exp.early_stopping["monitor"] == "val_recall@50" and exp.evaluation["ks"] == [20, 50, 100]


def test_buckets_are_activity_quartiles_labelled_by_their_range():
    idx, labels = cg._buckets(np.arange(1, 9, dtype=float))
    assert idx.tolist() == [0, 0, 1, 1, 2, 2, 3, 3] and labels == ["1-2", "3-4", "5-6", "7-8"]
    idx, labels = cg._buckets(np.array([3, 3, 3, 3, 3, 3, 9, 10], float))      # ties merge quartiles
    assert idx.tolist() == [0, 0, 0, 0, 0, 0, 1, 1] and labels == ["3-3", "9-10"]


def _metrics(r50: float) -> dict:
    return {m: r50 for m in cg._metrics()}


def _run(**recall) -> dict:
    return {k: {"model": _metrics(v), "popularity": _metrics(0.01), "epochs": 3} for k, v in recall.items()}


def test_table_has_most_popular_published_rows_and_seed_range():
    seeds = {"0": _run(youtube_dnn=0.2, aisl_pcl=0.3), "1": _run(youtube_dnn=0.4, aisl_pcl=0.5)}
    text = "\n".join(cg.main_table("amazon-book", seeds))
    assert "| most popular | 0.0100 (0.0100-0.0100) |" in text
    assert "| YouTube DNN | 0.3000 (0.2000-0.4000) |" in text and "| 3/3 |" in text
    assert "KGIN (KGIN paper, Wang et al. WWW 2021): published, not rerun | 0.1687 |" in text
    assert "0.0915" in text and "published" not in "\n".join(cg.main_table("ml-latest-small", seeds))


@pytest.mark.parametrize("aisl, fixed, verdict", [(0.3, 0.2, "holds"), (0.2, 0.3, "does not hold here")])
def test_claims_say_holds_or_not_with_the_numbers(aisl, fixed, verdict):
    seeds = {"0": _run(aisl_pcl=aisl, fixed_k1=fixed, fixed_k4=0.1, no_pcl=fixed)}
    a = {"buckets": ["1-5", "6-9"], "mean_k": [1.0, 2.0, 1.5], "k_counts": [[3, 0] + [0] * 6, [1, 4] + [0] * 6],
         "recall@50": {"aisl_pcl": [aisl, 0.5, 0.4], "fixed_k1": [fixed, 0.6, 0.5]}}
    lines = cg.claims("x", seeds, a)
    adaptive = next(x for x in lines if x.startswith("- adaptive k"))
    assert f"best fixed K (K = 1): {verdict} (recall@50 {aisl:.4f} vs {fixed:.4f})" in adaptive
    assert f"least active quartile (1-5, seed 0): {verdict}" in adaptive
    assert f"- PCL above no PCL: {verdict}" in "\n".join(lines)
    assert "CAUTION" not in adaptive
    a["k_counts"] = [[3] + [0] * 7, [5] + [0] * 7]             # k = 1 for every user
    assert "CAUTION: AISL serves k = 1 to every user" in cg.claims("x", seeds, a)[2]


def test_overlapping_seed_ranges_are_said():
    seeds = {"0": _run(aisl_pcl=0.30, no_pcl=0.32), "1": _run(aisl_pcl=0.36, no_pcl=0.31)}
    assert cg._compare(list(seeds.values()), "aisl_pcl", "no_pcl")[0] == "holds (the seeds' ranges overlap)"


def test_results_file_keeps_what_another_process_wrote(tmp_path):
    path = tmp_path / "results.json"
    cg.save_results(path, lambda st: cg.put_run(st, "a", 0, "mind", {"x": 1}))
    cg.save_results(path, lambda st: cg.put_run(st, "b", 1, "dssm", {"x": 2}))      # a second process
    cg.save_results(path, lambda st: cg.put_run(st, "a", 0, "dssm", {"x": 3}))
    cg.save_results(path, lambda st: cg.put_analysis(st, "a", {"k": 1}))
    assert cg.load_results(path) == {"runs": {"a": {"0": {"mind": {"x": 1}, "dssm": {"x": 3}}},
                                              "b": {"1": {"dssm": {"x": 2}}}}, "analysis": {"a": {"k": 1}}}
    assert [f.name for f in tmp_path.iterdir()] == ["results.json"]


def test_per_user_recall_counts_a_repeated_relevant_item_once():
    assert cg._recall(np.array([4, 7, -1]), np.array([7, 7, 9])) == 0.5
    assert cg._recall(np.array([-1, -1]), np.array([3])) == 0.0
