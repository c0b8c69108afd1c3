"""The trainer on real data (a ml-latest-small subset): runs, resumes after a kill, restores, freezes, evaluates."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import yaml

from tfrec_zoo.data import open_dataset
from tfrec_zoo.data.builders import build
from tfrec_zoo.features import parse_spec
from training.evaluation import task_metrics
from training.experiment import ExperimentError, load_experiment, parse_experiment
from training.trainer import evaluate_run, train

EXPERIMENTS = Path(__file__).resolve().parents[1] / "training" / "experiments"


@pytest.fixture(scope="module")
def ml_small(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("data") / "ml60"
    build("ml-latest-small", out, progress=False, log=lambda *_: None, options={"max_users": 60})
    return out


@pytest.fixture(scope="module")
def ml_other(tmp_path_factory) -> Path:
    """Another subset (users 1-90): its movie vocabulary differs from ml_small's."""
    out = tmp_path_factory.mktemp("data") / "ml90"
    build("ml-latest-small", out, progress=False, log=lambda *_: None, options={"max_users": 90})
    return out


def exp_for(data: Path, *extra: str):
    return load_experiment(EXPERIMENTS / "din-ml-latest-small.yaml",
                           [f"dataset={data}", "epochs=1", "early_stopping=null", "batch_size=512", *extra])


@pytest.mark.parametrize("raw, words", [
    ({"name": "x", "dataset": "d", "model": "din", "epoch": 2}, "x.yaml: epoch: unknown key"),
    ({"name": "x", "dataset": "d"}, "x.yaml: model: is required"),
    ({"name": "x", "dataset": "d", "model": "din", "strategy": "tpu"}, "strategy: 'tpu' is not one of"),
    ({"name": "x", "dataset": "d", "model": "din", "params": {"units": 3}}, "x.yaml: params.units: unknown hyper-parameter of din"),
    ({"name": "x", "dataset": "d", "model": "dinn"}, "x.yaml: model: unknown model 'dinn'"),
    ({"name": "x", "dataset": "d", "model": "din", "optimizer": {"name": "adam", "lr": 1}}, "optimizer.lr: unknown key"),
    ({"name": "x", "dataset": "d", "model": "din", "batch_size": 0}, "batch_size: must be > 0"),
])
def test_experiment_errors_name_file_and_key(raw, words):
    with pytest.raises(ExperimentError, match=words.replace("(", r"\(")):
        parse_experiment(raw, "x.yaml")


def test_set_overrides_dotted_keys():
    exp = load_experiment(EXPERIMENTS / "din-ml-latest-small.yaml",
                          ["optimizer.learning_rate=0.01", "params.dnn_units=[8, 4]", "epochs=3"])
    assert exp.optimizer["learning_rate"] == 0.01 and exp.params["dnn_units"] == [8, 4] and exp.epochs == 3


@pytest.mark.parametrize("path", sorted(EXPERIMENTS.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_experiments_validate(path):
    from tfrec_zoo.models import MODELS

    exp = load_experiment(path)
    assert exp.model in MODELS and exp.name == path.stem


def test_train_writes_a_complete_run_and_evaluate_reproduces_it(ml_small, tmp_path):
    run = tmp_path / "run"
    result = train(exp_for(ml_small), run, verbose=0)
    for name in ("config.yaml", "metrics.json", "summary.md", "history.csv", "model/saved_model.pb"):
        assert (run / name).exists(), name
    assert list((run / "checkpoints").glob("ckpt-001*"))
    test = result.metrics["test"]["overall"]["like"]
    assert 0.5 < test["auc"] <= 1.0 and 0.0 < test["logloss"] < 1.0 and test["gauc_groups"] > 0
    # the rating head is trained with weight 0 (tasks: {rating: {loss_weight: 0}}): nothing to report for it,
    # neither after training nor in the epoch logs
    assert set(result.metrics["test"]["overall"]) == {"like"}
    assert not [k for k in result.history if "rating" in k]
    assert "ignored features of the spec (not model inputs): history.hist_rating" in (run / "summary.md").read_text()
    assert test["count"] == open_dataset(ml_small).rows("test")
    again = evaluate_run(run, log=lambda *_: None)
    assert again["test"]["overall"]["like"]["auc"] == pytest.approx(test["auc"], abs=1e-6)
    with pytest.raises(ValueError, match="holds a run of another config"):
        train(exp_for(ml_small, "epochs=2"), run, verbose=0)


KILLER = textwrap.dedent("""
    import os, sys
    from tfrec_zoo._tf import keras
    from training.experiment import load_experiment
    from training.trainer import train

    class Kill(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            self.n = getattr(self, "n", 0) + 1
            if self.n == int(sys.argv[3]):
                os._exit(3)   # like a SIGKILL: no cleanup, no final save

    exp = load_experiment(sys.argv[1], ["dataset=" + sys.argv[2], "epochs=2", "early_stopping=null",
                                         "batch_size=512"])
    r = train(exp, sys.argv[4], callbacks=[Kill()] if int(sys.argv[3]) else [], verbose=0, evaluate=False)
    print("ITERATIONS", int(r.model.optimizer.iterations.numpy()))
""")


def test_a_killed_run_resumes_to_the_same_step_count(ml_small, tmp_path):
    script = tmp_path / "killer.py"
    script.write_text(KILLER)
    exp_file = EXPERIMENTS / "din-ml-latest-small.yaml"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}

    def run(kill_at: int, run_dir: Path):
        return subprocess.run([sys.executable, str(script), str(exp_file), str(ml_small), str(kill_at), str(run_dir)],
                              capture_output=True, text=True, timeout=300, env=env)

    steps_per_epoch = -(-open_dataset(ml_small).rows("train") // 512)
    killed = run(steps_per_epoch + 3, tmp_path / "r")      # dies in the second epoch
    assert killed.returncode == 3, killed.stderr[-2000:]
    assert (tmp_path / "r" / "backup").exists() and not (tmp_path / "r" / "model").exists()
    resumed = run(0, tmp_path / "r")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"ITERATIONS {2 * steps_per_epoch}" in resumed.stdout


RESUMER = textwrap.dedent("""
    import os, sys
    import numpy as np
    from tfrec_zoo._tf import keras
    from training.experiment import load_experiment
    from training.trainer import train

    class Kill(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            self.n = getattr(self, "n", 0) + 1
            if self.n == int(sys.argv[3]):
                os._exit(3)

    # early stopping that stops after epoch 2 (epoch 1 is the best: nothing improves by 1.0 AUC)
    exp = load_experiment(sys.argv[1], ["dataset=" + sys.argv[2], "epochs=3", "batch_size=512",
                                         "early_stopping={monitor: val_like_auc, mode: max, patience: 1, min_delta: 1.0}"])
    r = train(exp, sys.argv[4], callbacks=[Kill()] if int(sys.argv[3]) else [], verbose=0, evaluate=False,
              log=lambda *a: print(*a))
    if r.model is not None:
        print("ITERATIONS", int(r.model.optimizer.iterations.numpy()))
        print("WEIGHTS", repr(float(sum(np.abs(w).sum() for w in r.model.get_weights()))))
""")


def test_a_killed_run_with_early_stopping_ends_where_the_uninterrupted_one_ends(ml_small, tmp_path):
    """Resume restores the early-stopping state: same steps, same (best-epoch) weights; a finished run is reported,
    not trained again (history.csv gets no duplicate rows)."""
    script = tmp_path / "resumer.py"
    script.write_text(RESUMER)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}

    def run(kill_at: int, run_dir: Path):
        return subprocess.run([sys.executable, str(script), str(EXPERIMENTS / "din-ml-latest-small.yaml"),
                               str(ml_small), str(kill_at), str(run_dir)], capture_output=True, text=True,
                              timeout=300, env=env)

    def value(out: str, key: str) -> str:
        return next(line.split()[1] for line in out.splitlines() if line.startswith(key + " "))

    steps_per_epoch = -(-open_dataset(ml_small).rows("train") // 512)
    straight = run(0, tmp_path / "straight")
    assert straight.returncode == 0, straight.stderr[-2000:]
    assert value(straight.stdout, "ITERATIONS") == str(2 * steps_per_epoch)     # stopped after epoch 2 of 3
    killed = run(steps_per_epoch + 3, tmp_path / "r")                         # dies in the second epoch
    assert killed.returncode == 3, killed.stderr[-2000:]
    resumed = run(0, tmp_path / "r")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert value(resumed.stdout, "ITERATIONS") == str(2 * steps_per_epoch)
    assert float(value(resumed.stdout, "WEIGHTS")) == pytest.approx(float(value(straight.stdout, "WEIGHTS")),
                                                                     rel=1e-6)
    rows = (tmp_path / "r" / "history.csv").read_text().splitlines()
    again = run(0, tmp_path / "r")
    assert again.returncode == 0 and "finished already" in again.stdout and "ITERATIONS" not in again.stdout
    assert (tmp_path / "r" / "history.csv").read_text().splitlines() == rows


def test_an_unknown_early_stopping_monitor_fails_before_training(ml_small, tmp_path):
    exp = exp_for(ml_small, "early_stopping={monitor: val_auc, patience: 1}")
    with pytest.raises(ExperimentError, match=r"early_stopping.monitor: 'val_auc' is not logged by din.*val_like_auc"):
        train(exp, tmp_path / "run", verbose=0, log=lambda *_: None)
    assert not (tmp_path / "run").exists()


def test_set_errors_name_the_key():
    with pytest.raises(ExperimentError, match=r"--set batch_size: '\[1' is not a YAML value"):
        load_experiment(EXPERIMENTS / "din-ml-latest-small.yaml", ["batch_size=[1"])
    with pytest.raises(ExperimentError, match=r"params.dnn_units: expected a list"):
        load_experiment(EXPERIMENTS / "din-ml-latest-small.yaml", ["params.dnn_units=abc"])
    with pytest.raises(ExperimentError, match=r"--set optimizer.learning_rate.x: 'learning_rate' is not a mapping"):
        load_experiment(EXPERIMENTS / "din-ml-latest-small.yaml", ["optimizer.learning_rate.x=1"])


BOMB = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{c}: &{c} [{', '.join(['*' + p] * 10)}]\n" for p, c in zip("abcdefgh", "bcdefghi"))


@pytest.mark.parametrize("content, words", [
    (b"name: x\nname: y\n", "line 2, column 1: not valid YAML (duplicate key 'name'"),
    (BOMB.encode(), "aliases expand to more than"),
    (b"[" * 20_000, "nest"),    # libyaml: "exceeded maximum nesting depth"; ours: "nested deeper than 20"
    (b"name: caf\xe9\n", "line 1, byte offset 9: not UTF-8 (byte 0xe9)"),
    (b"x" * ((1 << 20) + 1), "larger than 1,048,576 bytes"),
])
def test_a_hostile_experiment_file_is_one_clear_error(tmp_path, content, words):
    """Experiments are read with the feature specs' YAML limits (size, depth, aliases, duplicate keys)."""
    path = tmp_path / "exp.yaml"
    path.write_bytes(content)
    with pytest.raises(ExperimentError) as e:
        load_experiment(path)
    assert str(e.value).startswith(str(path)) and words in str(e.value), str(e.value)
    with pytest.raises(ExperimentError, match="aliases expand"):    # a --set value goes through the same loader
        load_experiment(EXPERIMENTS / "din-ml-latest-small.yaml", ["params={" + BOMB.replace("\n", ", ") + "}"])


def test_pretrain_then_finetune_restores_by_name_remaps_vocab_and_freezes(ml_small, ml_other, tmp_path):
    pre = train(exp_for(ml_other), tmp_path / "pre", verbose=0, evaluate=False)
    fine_exp = exp_for(ml_small, f"restore={{checkpoint: {tmp_path / 'pre'}, freeze: ['^emb_movie_id$']}}")
    fine = train(fine_exp, tmp_path / "fine", verbose=0, evaluate=False)
    report = json.loads((tmp_path / "fine" / "restore.json").read_text())
    assert "emb_movie_id/embeddings:0" in report["restored"] and "emb_movie_id" in report["frozen"]
    assert "ids found in the pretrained vocabulary" in report["remapped"]["emb_movie_id/embeddings:0"]
    # every movie of the fine-tune vocabulary keeps exactly its pretrained row (the table is frozen)
    src, dst = open_dataset(ml_other), open_dataset(ml_small)
    src_rows = pre.model.get_layer("emb_movie_id").embeddings.numpy()
    dst_rows = fine.model.get_layer("emb_movie_id").embeddings.numpy()
    src_index = {m: i + 1 for i, m in enumerate(src.artifacts.vocabs["movie_id"])}
    shared = [(j + 1, src_index[m]) for j, m in enumerate(dst.artifacts.vocabs["movie_id"]) if m in src_index]
    assert len(shared) > 100
    for j, i in shared[:200]:
        np.testing.assert_array_equal(dst_rows[j], src_rows[i])
    # a layer that was not frozen moved away from its restored value
    assert not np.allclose(fine.model.get_layer("dnn_dense0").kernel.numpy(),
                           pre.model.get_layer("dnn_dense0").kernel.numpy())


def test_masked_task_metrics_count_only_masked_rows():
    spec = parse_spec({"name": "m", "keys": {"user": "u"}, "features": [
        {"name": "u", "kind": "id"}, {"name": "click", "kind": "label"},
        {"name": "buy", "kind": "label", "mask": "click"}]}, "m.yaml")
    data = {"label/click": np.array([1, 1, 0, 0, 1.0]), "pred/click": np.array([.9, .8, .3, .6, .2]),
            "weight/click": np.ones(5), "label/buy": np.array([1, 0, 0, 1, 1.0]),
            "pred/buy": np.array([.7, .4, .9, .9, .1]), "weight/buy": np.array([1, 1, 0, 0, 1.0]),
            "key/u": np.array([1, 1, 2, 2, 2])}
    m = task_metrics(spec, data)
    assert m["buy"]["count"] == 3 and m["click"]["count"] == 5
    # buy over rows 0, 1, 4: positives (.7, .1) vs negative .4 -> AUC 0.5
    assert m["buy"]["auc"] == pytest.approx(0.5)
    # click: user 1 has only positives (skipped); user 2: positive .2 vs negatives .3, .6 -> 0
    assert m["click"]["gauc"] == pytest.approx(0.0) and m["click"]["gauc_groups_skipped"] == 1


def test_cli_train_and_evaluate(ml_small, tmp_path):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    cmd = [sys.executable, "-c", "import sys; from training.cli import main; sys.exit(main())"]
    p = subprocess.run(cmd + ["train", "deepfm-ml-latest-small", "--set", f"dataset={ml_small}", "--set", "epochs=1",
                              "--run-dir", str(tmp_path / "r"), "--quiet"], capture_output=True, text=True,
                       timeout=300, env=env)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "| test | like | auc |" in p.stdout
    p = subprocess.run(cmd + ["evaluate", str(tmp_path / "r")], capture_output=True, text=True, timeout=300, env=env)
    assert p.returncode == 0 and "| valid | like | gauc |" in p.stdout
    cfg = yaml.safe_load((tmp_path / "r" / "config.yaml").read_text())
    assert cfg["model"] == "deepfm" and cfg["epochs"] == 1


def test_domain_loss_weights_scale_sample_weights(tmp_path):
    import pandas as pd

    from tfrec_zoo.data import write_dataset
    from training.trainer import train_dataset

    spec = parse_spec({"name": "md", "features": [
        {"name": "item", "kind": "id"}, {"name": "scene", "kind": "domain", "dtype": "string"},
        {"name": "click", "kind": "label"}, {"name": "buy", "kind": "label", "mask": "click"}]}, "md.yaml")
    df = pd.DataFrame({"item": [1, 2, 3, 4], "scene": ["search", "rec", "rec", "feed"],
                       "click": [1.0, 1.0, 0.0, 1.0], "buy": [1.0, 0.0, 0.0, 1.0]})
    write_dataset({"train": df}, spec, tmp_path / "md", source="toy", progress=False)
    exp = parse_experiment({"name": "x", "dataset": str(tmp_path / "md"), "model": "mmoe", "batch_size": 4,
                            "shuffle_buffer": 0, "domain_loss_weights": {"scene": {"rec": 0.5, "search": 2}}}, "x.yaml")
    _, _, w = next(iter(train_dataset(exp, open_dataset(tmp_path / "md"))))
    assert w["click"].numpy().tolist() == [2.0, 0.5, 0.5, 1.0]        # feed is not listed: weight 1
    assert w["buy"].numpy().tolist() == [2.0, 0.5, 0.0, 1.0]          # times the click mask
    with pytest.raises(ExperimentError, match="domain_loss_weights.scene: expected"):
        parse_experiment({"name": "x", "dataset": "d", "model": "din", "domain_loss_weights": {"scene": 3}}, "x.yaml")
    # per-domain metrics: every domain value gets its own block, counts add up
    from tfrec_zoo.models import build_model
    from training.evaluation import evaluate_split

    d = open_dataset(tmp_path / "md")
    model = build_model("mmoe", d.spec, d.artifacts, {})
    res = evaluate_split(model, d.dataset("train", 2), d.spec)
    by = res["by_domain"]["scene"]
    assert sorted(by) == ["feed", "rec", "search"]
    assert sum(v["click"]["count"] for v in by.values()) == res["overall"]["click"]["count"] == 4
    assert by["rec"]["buy"]["count"] == 1                               # one rec row has click = 1
