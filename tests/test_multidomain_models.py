"""Multi-domain baselines (dnn, shared_bottom, ple, star): they train, select each row's own domain exactly, send an
unknown domain to the OOV row, save and reload; and the Scenario-Wise-Rec sample datasets they smoke-test on."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tfrec_zoo._tf import keras, tf
from tfrec_zoo.features import Artifacts, load_spec, parse_spec
from tfrec_zoo.layers.domain_select import DomainSelect
from tfrec_zoo.models import build_model, model_config, rebuild

DOMAIN_MODELS = ["shared_bottom", "ple", "star"]          # need a `kind: domain` feature
SMALL = {"dnn": {"dnn_units": [16, 8]},
         "shared_bottom": {"bottom_units": [16], "tower_units": [8]},
         "ple": {"expert_units": [8], "tower_units": [4], "num_levels": 1},   # 2 levels: test_multidomain_layers
         "star": {"star_units": [16, 8], "aux_units": [4]}}
FEATURES = [
    {"name": "user_id", "kind": "id", "embedding_dim": 4},
    {"name": "item_id", "kind": "id", "embedding_dim": 4},
    {"name": "price", "kind": "dense"},
    {"name": "hist", "kind": "sequence", "max_len": 4, "fields": [
        {"name": "hist_item", "shares_embedding_with": "item_id"}]},
    {"name": "click", "kind": "label"},
    {"name": "rating", "kind": "label", "type": "regression", "loss_weight": 0.5},
]
SPEC = parse_spec({"name": "md", "keys": {"user": "user_id", "item": "item_id"}, "features": [
    *FEATURES, {"name": "scene", "kind": "domain", "dtype": "string", "embedding_dim": 3}]}, "md.yaml")
NO_DOMAIN = parse_spec({"name": "plain", "keys": {"item": "item_id"}, "features": FEATURES}, "plain.yaml")
SCENES = ["a", "b", "c"]                   # vocabulary order: rows 1, 2, 3 (row 0 is the OOV row)
ART = Artifacts(vocabs={"user_id": list(range(20)), "item_id": list(range(30)), "scene": SCENES},
                stats={"price": {"mean": 1.0, "std": 2.0, "min": 0.0, "max": 5.0, "log1p_mean": 0.0,
                                 "log1p_std": 1.0}})


def batch(n: int = 64, seed: int = 0, scene=None):
    rng = np.random.default_rng(seed)
    x = {"user_id": rng.integers(0, 20, n), "item_id": rng.integers(0, 30, n),
         "price": (rng.random(n) * 5).astype(np.float32), "hist_item": rng.integers(0, 30, (n, 4)),
         "hist_len": rng.integers(0, 5, n).astype(np.int32),
         "scene": np.array(rng.choice(SCENES, n) if scene is None else [scene] * n)}
    # the label depends on the domain, so per-domain parts have something to learn
    y = {"click": ((x["item_id"] + (x["scene"] == "b")) % 2).astype(np.float32),
         "rating": rng.random(n).astype(np.float32)}
    return x, y


def _build(name: str, spec=SPEC):
    keras.utils.set_random_seed(0)          # the same weights every run: the assertions below do not depend on luck
    model = build_model(name, spec, ART, SMALL[name])
    model.compile(keras.optimizers.Adam(0.01))
    return model


def _relu(x):
    return np.maximum(x, 0)


def _sigmoid(x):
    return 1 / (1 + np.exp(-x))


def _dense(model, name, x):
    layer = model.get_layer(name)
    return x @ layer.kernel.numpy() + layer.bias.numpy()


# -- every model: trains, saves, reloads, serves -------------------------------------------------------------------
def _predict(model, x) -> dict:
    """The model's outputs for a batch, run eagerly (a small batch: cheaper than tracing a predict function)."""
    out = model({k: tf.constant(v) for k, v in x.items() if k in model.input_names}, training=False)
    return {k: v.numpy() for k, v in out.items()}


@pytest.mark.parametrize("name", ["dnn", *DOMAIN_MODELS])
def test_model_trains_saves_reloads_and_serves(name, tmp_path):
    model = _build(name)
    x, y = batch()
    logs = model.fit(x, y, epochs=5, batch_size=64, verbose=0).history      # one batch per epoch
    assert logs["loss"][-1] < logs["loss"][0]                                 # it learns
    assert logs["loss"][-1] == pytest.approx(logs["click_loss"][-1] + 0.5 * logs["rating_loss"][-1], rel=1e-4)
    assert "scene" in model.input_names and model.ignored_features == []
    preds = _predict(model, x)
    if name != "dnn":     # an unknown domain value is the OOV row: two unknown values, one output; a known one differs
        unknown = [_predict(model, {**x, "scene": np.array([s] * 64)})["click"] for s in ("zzz", "", "a")]
        np.testing.assert_array_equal(unknown[0], unknown[1])
        assert np.abs(unknown[0] - unknown[2]).max() > 1e-4
    from training.runs import atomic_save, load_weights                       # how a run saves and reloads a model

    atomic_save(model, tmp_path / name)
    served = tf.saved_model.load(str(tmp_path / name)).signatures["serving_default"]
    out = served(**{k: tf.constant(v) for k, v in x.items() if k in served.structured_input_signature[1]})
    for task in ("click", "rating"):
        np.testing.assert_allclose(out[task].numpy(), preds[task], rtol=1e-5, atol=1e-6)
    again = build_model(name, SPEC, ART, SMALL[name])
    load_weights(again, tmp_path / name)
    np.testing.assert_allclose(_predict(again, x)["click"], preds["click"], rtol=1e-5, atol=1e-6)


# -- exact per-domain selection ------------------------------------------------------------------------------------
MIXED = np.array(["a", "b", "c", "zzz", "c", "a", "", "b"])   # zzz and "": unknown -> the OOV row
MIXED_ROWS = np.array([1, 2, 3, 0, 3, 1, 0, 2])


def _eager(model, outputs, x):
    """The model's tensors `outputs` for a batch, run eagerly (no predict function to trace)."""
    return tf.nest.map_structure(lambda t: t.numpy(), keras.Model(model.inputs, outputs)(
        {k: tf.constant(v) for k, v in x.items() if k in model.input_names}, training=False))


def _tower_inputs(model, name, x):
    """{(row, task index): the input of tower_{task}_d{row}} for every domain row, from the model's own tensors."""
    tasks = [lab.task for lab in SPEC.labels]
    if name == "shared_bottom":
        bottom = _eager(model, model.get_layer("bottom_act0").output, x)
        return {(r, t): bottom for r in range(4) for t in range(len(tasks))}
    branches = _eager(model, model.get_layer("ple").output, x)
    return {(r, t): branches[r * len(tasks) + t] for r in range(4) for t in range(len(tasks))}


@pytest.mark.parametrize("name", ["shared_bottom", "ple"])
def test_each_row_goes_through_its_own_domains_tower(name):
    model = _build(name)
    x = {**batch(8, seed=1)[0], "scene": MIXED}
    np.testing.assert_array_equal(_eager(model, model.get_layer("tower_click_own").input[-1], x), MIXED_ROWS)
    got = _eager(model, model.outputs, x)
    ins = _tower_inputs(model, name, x)
    def output(r, t, lab):
        tower = _relu(_dense(model, f"tower_{lab.task}_d{r}_dense0", ins[(r, t)]))
        logit = _dense(model, f"{lab.task}_logit", tower)[:, 0]
        return _sigmoid(logit) if lab.type == "binary" else logit
    for t, lab in enumerate(SPEC.labels):
        every = np.stack([output(r, t, lab) for r in range(4)])                # [rows, B]: each domain's tower
        want = every[MIXED_ROWS, np.arange(8)]
        np.testing.assert_allclose(got[model.output_names.index(lab.task)], want, rtol=1e-4, atol=1e-6)
        # another tower gives another output (rows where both relu towers are all zero give 0.5 twice: not all)
        wrong = every[(MIXED_ROWS + 1) % 4, np.arange(8)]
        assert (np.abs(wrong - want) > 1e-5).sum() >= 4


def test_star_row_uses_its_domains_pn_and_kernels_plus_the_auxiliary_logit():
    model = _build("star")
    star = model.get_layer("star")
    rng = np.random.default_rng(4)             # every domain its own PN statistics and weights (as after training)
    for var in star.weights:
        var.assign(rng.uniform(0.5, 2.0, var.shape) if "moving_var" in var.name else rng.normal(0, 0.5, var.shape))
    mm, mv = star.moving_mean.numpy(), star.moving_var.numpy()
    x = {**batch(8, seed=2)[0], "scene": MIXED}
    feats, aux, *got = _eager(model, [model.get_layer("star_concat").output, model.get_layer("aux_act0").output,
                                      *model.outputs], x)
    r = MIXED_ROWS
    h = (star.gamma.numpy() * star.domain_gamma.numpy()[r] * (feats - mm[r]) / np.sqrt(mv[r] + star.epsilon)
         + star.beta.numpy() + star.domain_beta.numpy()[r])
    for level in range(2):
        kernels = star.shared_kernels[level].numpy() * star.domain_kernels[level].numpy()[r]     # [B, i, o]
        h = _relu(np.einsum("bi,bio->bo", h, kernels) + star.shared_biases[level].numpy()
                  + star.domain_biases[level].numpy()[r])
    for lab in SPEC.labels:
        logit = (_dense(model, f"{lab.task}_logit", h) + _dense(model, f"aux_{lab.task}_logit", aux))[:, 0]
        np.testing.assert_allclose(got[model.output_names.index(lab.task)],
                                   _sigmoid(logit) if lab.type == "binary" else logit, rtol=1e-4, atol=1e-5)


# -- bad specs and params ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", DOMAIN_MODELS)
def test_a_spec_without_a_domain_feature_is_one_clear_error(name):
    with pytest.raises(ValueError, match=rf"^plain.yaml: {name} needs a feature of `kind: domain`"):
        build_model(name, NO_DOMAIN, ART, {})
    with pytest.raises(ValueError, match=rf"^md.yaml: {name} needs the domain feature 'site'.*: \['scene'\]"):
        build_model(name, SPEC, ART, {"domain": "site"})


def test_dnn_needs_no_domain_feature():
    model = build_model("dnn", NO_DOMAIN, ART, SMALL["dnn"])
    assert set(model.input_names) == {"user_id", "item_id", "price", "hist_item", "hist_len"}
    assert model.get_layer("dnn_dense0").input.shape[-1] == 4 + 4 + 1 + 4      # user, item, price, pooled history


@pytest.mark.parametrize("name", ["dnn", *DOMAIN_MODELS])
def test_config_round_trips_through_the_registry(name):
    model = build_model(name, SPEC, ART, SMALL[name])
    assert model.zoo_name == name and model.config == model_config(name, SMALL[name])
    assert all(isinstance(getattr(model.config, k), tuple) for k, v in SMALL[name].items() if isinstance(v, list))
    again = rebuild(model, ART)
    assert again.config == model.config and [w.shape for w in again.weights] == [w.shape for w in model.weights]
    with pytest.raises(ValueError, match=rf"exp.yaml.params.units: unknown hyper-parameter of {name}; known: "):
        build_model(name, SPEC, ART, {"units": [4]}, source="exp.yaml.params")


def test_tower_units_shared_bottom_needs_a_layer_ple_may_have_none():
    with pytest.raises(ValueError, match="tower_units must have at least one layer"):
        build_model("shared_bottom", SPEC, ART, {"tower_units": []})
    model = build_model("ple", SPEC, ART, {**SMALL["ple"], "tower_units": []})
    branches = model.get_layer("tower_click_own").input[:-1]          # the PLE branches themselves, one per row
    assert len(branches) == 4 and all(b.shape[-1] == 8 for b in branches)


def test_domain_select_rejects_an_index_outside_its_branches():
    a, b = tf.ones([2, 3]), 2 * tf.ones([2, 3])
    np.testing.assert_array_equal(DomainSelect()([a, b, tf.constant([1, 0])]).numpy(), [[2, 2, 2], [1, 1, 1]])
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"pick: a domain index is outside \[0, 2\)"):
        DomainSelect(name="pick")([a, b, tf.constant([0, 2])])


# -- the Scenario-Wise-Rec samples ---------------------------------------------------------------------------------
def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


DOUBAN_HEAD = "user_id,item_id,rating,domain,living_place,join_time,time_bin\n"


def test_douban_builder_reads_labels_places_and_a_seeded_split(tmp_path):
    from tfrec_zoo.data.builders.scenariowise import build_douban

    rows = "".join(f"{u},{100 + u},{u % 2},{['book', 'movie', 'music'][u % 3]},{'' if u == 4 else 'X'},2007-07-10,"
                   f"{u}\n" for u in range(40))
    _write(tmp_path / "douban/douban_sample.csv", DOUBAN_HEAD + rows)
    spec = load_spec(Path(__file__).parents[1] / "feature_specs/douban-multidomain-sample.yaml")
    built = build_douban(spec, tmp_path)
    frame = pd.concat(built.splits.values()).sort_values("user_id")
    assert sorted(built.splits) == ["test", "train", "valid"] and len(frame) == 40       # every row, once
    np.testing.assert_array_equal(frame["like"], np.arange(40) % 2)                       # like = rating (0/1)
    np.testing.assert_array_equal(frame["join_month"], np.arange(40))
    assert frame["living_place"].isna().sum() == 1                                        # empty -> fill: oov
    again = build_douban(spec, tmp_path)
    assert all(again.splits[s].equals(built.splits[s]) for s in built.splits)              # seeded
    other = build_douban(spec, tmp_path, seed=1)
    assert not all(other.splits[s].equals(built.splits[s]) for s in built.splits)
    stats = built.extra["domain_stats"]["train"]
    assert sum(v["rows"] for v in stats.values()) == len(built.splits["train"])


@pytest.mark.parametrize("body, error", [
    ("1,2,3,book,X,2007-07-10,5\n", r"douban_sample.csv:2: column 'rating' is '3', expected 0 or 1"),
    ("1,2,1,book,X,2007-07-10,5\n1,2,1,,X,2007-07-10,5\n",
     r"douban_sample.csv:3: column 'domain' is '', expected a non-empty value"),
    ("1,x2,1,book,X,2007-07-10,5\n", r"douban_sample.csv:2: column 'item_id' is 'x2', expected a whole number"),
])
def test_douban_builder_names_the_line_and_column_of_a_bad_value(tmp_path, body, error):
    from tfrec_zoo.data.builders.scenariowise import build_douban

    _write(tmp_path / "douban/douban_sample.csv", DOUBAN_HEAD + body)
    with pytest.raises(ValueError, match=error):
        build_douban(None, tmp_path)


def test_mind_builder_bad_header_and_missing_file(tmp_path):
    from tfrec_zoo.data.builders.scenariowise import build_mind

    with pytest.raises(FileNotFoundError, match=r"mind_sample.csv: missing"):
        build_mind(None, tmp_path)
    _write(tmp_path / "mind/mind_sample.csv", "User_ID,News_ID,label,Category\nU1,N1,0,news\n")
    with pytest.raises(ValueError, match=r"mind_sample.csv: columns \['SubCategory'\] are missing"):
        build_mind(None, tmp_path)


def test_mind_sample_reads_whole(shared_root):
    from tfrec_zoo.data.builders.scenariowise import build_mind

    built = build_mind(None, None)
    frame = pd.concat(built.splits.values())
    assert len(frame) == 8000 and set(frame["domain"]) == {"finance", "lifestyle", "news", "sports"}
    assert set(frame["click"]) == {0.0, 1.0}


@pytest.fixture(scope="module")
def douban(tmp_path_factory, shared_root):
    from tfrec_zoo.data import open_dataset
    from tfrec_zoo.data.builders import build

    out = tmp_path_factory.mktemp("data") / "douban"
    build("douban-multidomain-sample", out, progress=False, log=lambda *_: None)
    return open_dataset(out)


@pytest.mark.parametrize("name", ["mmoe", "dnn", "shared_bottom", "ple", "star", "sr_foundation"])
def test_one_epoch_on_douban_reports_per_domain_auc(douban, name):
    from training.evaluation import evaluate_split

    assert douban.rows("train") + douban.rows("valid") + douban.rows("test") == 3000
    params = {"mmoe": {"num_experts": 2, "expert_units": [16], "tower_units": [8]},
              "sr_foundation": {"units": 8, "num_experts": 2, "expert_units": [16], "tower_units": [8]},
              **SMALL}[name]
    model = build_model(name, douban.spec, douban.artifacts, params)
    model.compile(keras.optimizers.Adam(0.003))
    history = model.fit(douban.dataset("train", 256, shuffle_buffer=4096, seed=0), epochs=1, verbose=0).history
    assert np.isfinite(history["like_loss"][0])
    keys = [*model.input_names, "user_id", "domain"]
    result = evaluate_split(model, douban.dataset("test", 1024, features=list(dict.fromkeys(keys))), douban.spec)
    by_domain = result["by_domain"]["domain"]
    assert set(by_domain) == {"book", "movie", "music"}
    assert sum(d["like"]["count"] for d in by_domain.values()) == result["overall"]["like"]["count"] == \
        douban.rows("test")
    assert all(0.0 <= d["like"]["auc"] <= 1.0 for d in by_domain.values())
    assert set(result["domain_mean"]["domain"]["like"]) >= {"auc", "auc_domains"}
