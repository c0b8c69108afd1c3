"""benchmarks/macdae.py: each row's experiment (pretraining, restore, ablation) and the tables (no training here:
the numbers are synthetic)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from tfrec_zoo.models import model_config
from training.experiment import as_stages, pretrain_params

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "macdae.py"
_spec = importlib.util.spec_from_file_location("macdae_bench", _PATH)
mb = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(mb)


@pytest.mark.parametrize("key", list(mb.ROWS))
def test_every_row_is_a_valid_experiment_of_the_papers_protocol(key):
    exp = mb.experiment(key, "lbsn-gowalla-ctx", 1)
    assert exp.seed == 1 and exp.evaluation == {"splits": ["test"], "ks": [5, 10], "modes": ["recommendation"]}
    assert exp.early_stopping["monitor"] == "val_checkin_auc"
    model_config(exp.model, exp.params)                       # the params are the model's
    if mb.ROWS[key][2] is None:
        assert exp.pretrain is None
        return
    stages, restore = as_stages(exp)
    assert stages[0]["model"] == mb.ROWS[key][2] and stages[0]["rows"] == {"keep": {"checkin": [1]}}
    frappe = as_stages(mb.experiment(key, "frappe", 0))[0][0]
    assert frappe["rows"] == {"keep": {"click": [1]}}
    assert restore["include"] == ["^emb_", "^macdae_"]
    pre = pretrain_params(exp)                                # the encoder's params reach the pretraining model
    assert pre["heads"] == exp.params["heads"] and "dnn_units" not in pre
    model_config(stages[0]["model"], pre)


def test_frappe_is_evaluated_pointwise_and_stops_on_its_label():
    exp = mb.experiment("wide_deep", "frappe", 0)
    assert exp.evaluation == {"splits": ["test"]} and exp.early_stopping["monitor"] == "val_click_auc"
    text = "\n".join(mb.main_table("frappe", {"0": {"wide_deep": {"auc": 0.9, "logloss": 0.3, "gauc": 0.8,
                                                                     "epochs": 2}}}))
    assert "| model | AUC | logloss | GAUC | epochs |" in text
    assert "| Wide&Deep (base) | 0.9000 | 0.3000 | 0.8000 | 2 |" in text


def test_ablations_change_one_thing():
    assert mb.experiment("k8", "frappe", 0).params["heads"] == 8
    assert mb.experiment("no_attention", "frappe", 0).params["attention"] is False
    assert mb.experiment("no_constraint", "frappe", 0).pretrain["losses"] == {"constraint": 0.0}
    assert as_stages(mb.experiment("frozen", "frappe", 0))[1]["freeze"] == ["^macdae_encoder$"]


def test_table_shows_mean_range_and_the_relative_gain_beside_the_anchor():
    runs = {"0": {"wide_deep": {"ndcg@5": 0.40, "ndcg@10": 0.45, "auc": 0.80, "epochs": 3},
                  "wd_macdae": {"ndcg@5": 0.44, "ndcg@10": 0.48, "auc": 0.82, "epochs": 2}},
            "1": {"wide_deep": {"ndcg@5": 0.42, "ndcg@10": 0.47, "auc": 0.81, "epochs": 4},
                  "wd_macdae": {"ndcg@5": 0.46, "ndcg@10": 0.50, "auc": 0.83, "epochs": 3}}}
    text = "\n".join(mb.main_table("lbsn-gowalla-ctx", runs))
    assert "| Wide&Deep (base) | 0.4100 (0.4000-0.4200) | 0.4600 (0.4500-0.4700) | 0.8050 (0.8000-0.8100) | 3/4 |" \
        in text
    assert "NDCG@5 +9.8%" in text and "(the author's Yelp README: +14.5% / +11.6%)" in text
    analysis = {"rows": 10, "mean": [0.5, 0.5], "hour": {"levels": [0, 1], "counts": [4, 6],
                                                        "means": [[0.5, 0.5], [0.5, 0.5]], "eta2": [0.001, 0.0]}}
    said = "\n".join(mb.analysis_text("lbsn-gowalla-ctx", analysis, None))
    assert "the heads hardly separate by hour" in said and "| 1 | 6 | 0.500 | 0.500 |" in said
    assert "10 test check-ins" in said and "10 test rows" in "\n".join(mb.analysis_text("frappe", analysis, None))
