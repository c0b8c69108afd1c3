"""S&R foundation model: row subsets, the model's pieces, per-domain means, and pretrain -> cold-start fine-tune."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tfrec_zoo._tf import keras, tf
from tfrec_zoo.data import open_dataset, write_dataset
from tfrec_zoo.data.subset import RowSelection, select_rows
from tfrec_zoo.features import parse_spec
from tfrec_zoo.layers import DomainRowCounter, RandomTextVectors
from tfrec_zoo.models import build_model
from training.evaluation import domain_mean, format_table
from training.experiment import ExperimentError, parse_experiment

DOMAINS = 4          # domain values 0..3; 0 plays the cold-start domain
SPEC = parse_spec({
    "name": "md-toy",
    "keys": {"user": "user_id", "item": "item_id"},
    "features": [
        {"name": "user_id", "kind": "id", "embedding_dim": 8},
        {"name": "item_id", "kind": "id", "embedding_dim": 8},
        {"name": "domain", "kind": "domain", "embedding_dim": 4},
        {"name": "tags", "kind": "multi_hot", "dtype": "string", "max_len": 3, "embedding_dim": 4},
        {"name": "title", "kind": "vector", "dim": 6},
        {"name": "query", "kind": "vector", "dim": 6},
        {"name": "hist", "kind": "sequence", "max_len": 4, "fields": [
            {"name": "hist_item", "shares_embedding_with": "item_id"}]},
        {"name": "like", "kind": "label"},
    ]}, "md-toy.yaml")


def frame(n: int, seed: int) -> pd.DataFrame:
    """Rows whose label depends on the item and, differently, on the domain (so domains differ)."""
    rng = np.random.default_rng(seed)
    item = rng.integers(0, 40, n)
    domain = item % DOMAINS
    title = np.random.default_rng(1).standard_normal((40, 6)).astype(np.float32)[item]
    like = ((item * 7 + domain * 3) % 5 < 2).astype(float)
    return pd.DataFrame({
        "user_id": rng.integers(0, 30, n), "item_id": item, "domain": domain,
        "tags": [list(rng.choice(["a", "b", "c"], rng.integers(0, 3))) for _ in range(n)],
        "title": list(title), "query": list(np.where(rng.random((n, 1)) < 0.5, 0.0, title).astype(np.float32)),
        "hist_item": [list(rng.integers(0, 40, rng.integers(0, 4))) for _ in range(n)],
        "like": like})


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("md") / "md-toy"
    write_dataset({"train": frame(2000, 0), "valid": frame(400, 1), "test": frame(400, 2)}, SPEC, out,
                  source="toy", progress=False)
    return out


def _rows(data, split: str) -> list[bytes]:
    return [r.numpy() for r in tf.data.TFRecordDataset([str(f) for f in data.files(split)], "GZIP")]


# -- rows: subsets ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("raw, words", [
    ({"keep": {"domain": [0]}, "take": 1}, "rows.take: unknown key"),
    ({"share": {"train": 1.5}}, r"rows.share.train: expected a fraction in \(0, 1\]"),
    ({"keep": {"domain": []}}, "rows.keep.domain: expected a non-empty list"),
    ({"drop": {"domain": [True]}}, "rows.drop.domain: expected a non-empty list of ids"),
    ({"seed": 1}, "rows: selects every row"),
])
def test_row_selection_errors_name_the_key(raw, words):
    with pytest.raises(ValueError, match=words):
        RowSelection.parse(raw)


def test_experiment_rows_errors_name_file_and_key():
    with pytest.raises(ExperimentError, match=r"x.yaml: rows.share.train: expected a fraction"):
        parse_experiment({"name": "x", "dataset": "d", "model": "mmoe", "rows": {"share": {"train": 0}}}, "x.yaml")
    with pytest.raises(ExperimentError, match=r"x.yaml: stages\[0\].rows.keep: expected"):
        parse_experiment({"name": "x", "dataset": "d", "model": "mmoe", "stages": [
            {"name": "p", "model": "mmoe", "rows": {"keep": 3}}]}, "x.yaml")


def test_select_rows_keeps_drops_and_shares_exactly(dataset, tmp_path):
    parent = open_dataset(dataset)
    domains = {s: pd.Series(frame(n, seed)["domain"]) for s, n, seed in
               (("train", 2000, 0), ("valid", 400, 1), ("test", 400, 2))}
    dropped = select_rows(parent, RowSelection.parse({"drop": {"domain": [0]}}), tmp_path, log=lambda *_: None)
    for split in ("train", "valid", "test"):
        assert dropped.rows(split) == int((domains[split] != 0).sum())
        assert set(_rows(dropped, split)) <= set(_rows(parent, split))     # the parent's bytes, unchanged
    assert dropped.artifacts.vocabs == parent.artifacts.vocabs              # same rows for the same ids
    sel = RowSelection.parse({"keep": {"domain": [0]}, "share": {"train": 0.25}})
    kept = select_rows(parent, sel, tmp_path, log=lambda *_: None)
    zero = int((domains["train"] == 0).sum())
    assert 0.15 * zero < kept.rows("train") < 0.35 * zero
    assert kept.rows("test") == int((domains["test"] == 0).sum())          # share applies to train only
    got = kept.dataset("train", 4096, features=["domain"])
    assert set(np.concatenate([b[0]["domain"].numpy() for b in got]).tolist()) == {0}
    # the same selection is read back, not written again; another seed picks other rows
    mtime = (kept.path / "manifest.json").stat().st_mtime_ns
    again = select_rows(parent, sel, tmp_path, log=lambda *_: None)
    assert again.path == kept.path and (kept.path / "manifest.json").stat().st_mtime_ns == mtime
    other = select_rows(parent, RowSelection.parse({"keep": {"domain": [0]}, "share": {"train": 0.25}, "seed": 1}),
                        tmp_path, log=lambda *_: None)
    assert set(_rows(other, "train")) != set(_rows(kept, "train"))
    manifest = json.loads((kept.path / "manifest.json").read_text())
    assert manifest["extra"]["rows"]["counts"]["train"] == {"rows": 2000, "kept": kept.rows("train")}


def test_select_rows_keeps_the_positive_rows_of_a_binary_label(dataset, tmp_path):
    """What an autoencoder pretrains on (MACDAE: the positive train pairs): `rows: {keep: {like: [1]}}`."""
    parent = open_dataset(dataset)
    positives = select_rows(parent, RowSelection.parse({"keep": {"like": [1]}}), tmp_path, log=lambda *_: None)
    negatives = select_rows(parent, RowSelection.parse({"drop": {"like": [1]}}), tmp_path, log=lambda *_: None)
    for split, n, seed in (("train", 2000, 0), ("test", 400, 2)):
        want = int(frame(n, seed)["like"].sum())
        assert 0 < positives.rows(split) == want and negatives.rows(split) == n - want
    labels = np.concatenate([b[1]["like"].numpy() for b in positives.dataset("train", 4096, features=["item_id"])])
    assert set(labels.tolist()) == {1.0}


def test_select_rows_errors(dataset, tmp_path):
    parent = open_dataset(dataset)
    with pytest.raises(ValueError, match="rows.keep.tags: not an id, domain or binary label column"):
        select_rows(parent, RowSelection.parse({"keep": {"tags": ["a"]}}), tmp_path)
    with pytest.raises(ValueError, match=r"rows.keep.like: like is a binary label: use \[0\] or \[1\], got \[2\]"):
        select_rows(parent, RowSelection.parse({"keep": {"like": [2]}}), tmp_path)
    with pytest.raises(ValueError, match="rows.keep.domain: domain holds integers"):
        select_rows(parent, RowSelection.parse({"keep": {"domain": ["zero"]}}), tmp_path)
    with pytest.raises(ValueError, match="rows: keeps no train row"):
        select_rows(parent, RowSelection.parse({"keep": {"domain": [9]}}), tmp_path, log=lambda *_: None)
    assert not [p for p in tmp_path.iterdir() if "rows-" in p.name]        # a failed selection leaves nothing


# -- the model's pieces -----------------------------------------------------------------------------------------
def test_domain_row_counter_counts_training_rows_only():
    layer = DomainRowCounter(3)
    rows = tf.constant([0, 2, 2, 1, 2])
    np.testing.assert_array_equal(layer(rows, training=False).numpy(), rows.numpy())
    assert layer.counts.numpy().tolist() == [0, 0, 0]
    layer(rows, training=True)
    layer(tf.constant([1]), training=True)
    assert layer.counts.numpy().tolist() == [1, 2, 3] and layer.seen().tolist() == [True, True, True]


def test_random_text_vectors_keep_identity_not_meaning():
    layer = RandomTextVectors(table_rows=1024, seed=3)
    a, b = np.ones(6, np.float32), np.full(6, 0.5, np.float32)
    out = layer(tf.constant([a, b, a, np.zeros(6, np.float32)])).numpy()
    np.testing.assert_array_equal(out[0], out[2])                      # equal texts: equal vectors
    assert not np.allclose(out[0], out[1])
    np.testing.assert_array_equal(out[3], 0.0)                         # an empty text stays zero
    np.testing.assert_allclose(np.linalg.norm(out[:3], axis=1), 1.0, rtol=1e-5)
    assert not layer.trainable_weights



def test_sr_foundation_entities_losses_and_errors(dataset):
    data = open_dataset(dataset)
    model = build_model("sr_foundation", data.spec, data.artifacts, {"query_features": ["query"], "units": 8})
    assert model.loss_names == ["like_loss", "divergence_loss"] and model.loss_weights["divergence"] == 0.1
    names = {layer.name for layer in model.layers}
    assert {"agf_user", "agf_query", "agf_item", "domain_maps", "domain_row_counter", "mmoe"} <= names
    assert model.row_names[0].startswith("<oov") and sorted(model.row_names[1:]) == ["0", "1", "2", "3"]
    assert build_model("sr_foundation", data.spec, data.artifacts, {"divergence": "none"}).loss_names == ["like_loss"]
    no_text = build_model("sr_foundation", data.spec, data.artifacts, {"text": "none", "units": 8})
    assert "title" not in no_text.input_names and "title" in model.input_names
    with pytest.raises(ValueError, match="params.gating=cls needs the text encoder's .CLS. token output as a feature"):
        build_model("sr_foundation", data.spec, data.artifacts, {"gating": "cls"})
    with pytest.raises(ValueError, match=r"'query' is in both user_features and query_features"):
        build_model("sr_foundation", data.spec, data.artifacts, {"user_features": ["user_id", "query"],
                                                                 "query_features": ["query"]})
    plain = parse_spec({"name": "one", "features": [{"name": "item_id", "kind": "id"},
                                                    {"name": "like", "kind": "label"}]}, "one.yaml")
    from tfrec_zoo.features import Artifacts

    with pytest.raises(ValueError, match=r"one.yaml: sr_foundation \(domain embeddings and maps\) needs a feature of "
                                         r"`kind: domain`"):
        build_model("sr_foundation", plain, Artifacts(vocabs={"item_id": [1, 2]}), {})
    single = parse_spec({"name": "single", "features": [
        {"name": "item_id", "kind": "id"}, {"name": "domain", "kind": "domain"}, {"name": "like", "kind": "label"}]},
        "single.yaml")
    with pytest.raises(ValueError, match="single.yaml: params.divergence=js compares domains, but the domain feature "
                                         "'domain' has 1 value"):
        build_model("sr_foundation", single, Artifacts(vocabs={"item_id": [1, 2], "domain": [0]}), {})


def test_sr_foundation_learns_and_logs_the_divergence(dataset):
    data = open_dataset(dataset)
    keras.utils.set_random_seed(0)
    model = build_model("sr_foundation", data.spec, data.artifacts, {"units": 8, "divergence": "mmd"})
    model.compile(keras.optimizers.Adam(0.01))
    ds = data.dataset("train", 256, features=model.input_names)
    first = model.evaluate(ds, verbose=0, return_dict=True)
    hist = model.fit(ds, epochs=4, verbose=0).history
    after = model.evaluate(ds, verbose=0, return_dict=True)
    assert after["like_loss"] < first["like_loss"] - 0.05 and hist["divergence_loss"][-1] > 0
    assert after["loss"] == pytest.approx(after["like_loss"] + 0.1 * after["divergence_loss"], rel=1e-4)
    counts = model.get_layer("domain_row_counter").counts.numpy()
    assert counts.sum() == 4 * 2000 and counts[0] == 0                  # 4 epochs of training rows, no OOV row


def test_fill_unseen_rows_sets_the_mean_of_the_trained_domains(dataset):
    data = open_dataset(dataset)
    model = build_model("sr_foundation", data.spec, data.artifacts, {"units": 8})
    counter = model.get_layer("domain_row_counter")
    seen_rows = [2, 3, 4]
    counter.counts.assign(np.array([0, 0, 5, 6, 7]))                   # row 0 = OOV, row 1 = a domain never seen
    table = model.get_layer("emb_domain").embeddings
    maps = model.get_layer("domain_maps")
    rng = np.random.default_rng(0)
    maps.kernel.assign(rng.standard_normal(maps.kernel.shape).astype(np.float32))
    maps.bias.assign(rng.standard_normal(maps.bias.shape).astype(np.float32))
    before_table, before_kernel = table.numpy().copy(), maps.kernel.numpy().copy()
    filled = model.fill_unseen_rows()
    assert list(filled.values())[0] == [model.row_names[0], model.row_names[1]]
    for row in (0, 1):
        np.testing.assert_allclose(table.numpy()[row], before_table[seen_rows].mean(0), rtol=1e-6)
        np.testing.assert_allclose(maps.kernel.numpy()[row], before_kernel[seen_rows].mean(0), rtol=1e-5)
    np.testing.assert_array_equal(table.numpy()[seen_rows], before_table[seen_rows])   # trained rows untouched


def test_domain_mean_weighs_every_domain_once():
    per = {"a": {"like": {"auc": 0.8, "gauc": 0.6, "count": 1000}},
           "b": {"like": {"auc": 0.6, "gauc": float("nan"), "count": 10}},
           "c": {"like": {"count": 0}}}
    mean = domain_mean(per)["like"]
    assert mean["auc"] == pytest.approx(0.7) and mean["auc_domains"] == 2
    assert mean["gauc"] == pytest.approx(0.6) and mean["gauc_domains"] == 1
    table = format_table({"test": {"overall": {"like": {"auc": 0.75}}, "by_domain": {"domain": per},
                                   "domain_mean": {"domain": {"like": mean}}}})
    assert "| test | domain=a | like | 1000 | auc 0.8000, gauc 0.6000 |" in table
    assert "| test | domain=mean over domains | like | 2 domains | auc 0.7000, gauc 0.6000 |" in table


# -- pretrain on every domain but one, fine-tune on a share of it --------------------------------------------------
@pytest.fixture(scope="module")
def cold_start(dataset, tmp_path_factory):
    """(run directory, result) of one pretrain -> cold-start fine-tune run (subsets under the run's own data dir)."""
    from training.trainer import train

    root = tmp_path_factory.mktemp("cold")
    params = {"units": 8, "query_features": ["query"], "expert_units": [16], "tower_units": [8]}
    exp = parse_experiment({
        "name": "cs", "dataset": str(dataset), "model": "sr_foundation", "params": params,
        "stages": [{"name": "pretrain", "model": "sr_foundation", "rows": {"drop": {"domain": [0]}},
                    "params": params, "epochs": 2, "evaluate": True}],
        "rows": {"keep": {"domain": [0]}, "share": {"train": 0.5}},
        "restore": {"from": "pretrain", "freeze_level": 2}, "epochs": 2, "batch_size": 64}, "cs.yaml")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TFREC_ZOO_DATA", str(root / "data"))
        yield root / "run", train(exp, root / "run", verbose=0, log=lambda *_: None)


def test_cold_start_pretrain_then_finetune(dataset, cold_start, tmp_path):
    run_dir, result = cold_start
    pre = json.loads((run_dir / "pretrain" / "metrics.json").read_text())
    assert sorted(pre["test"]["by_domain"]["domain"]) == ["1", "2", "3"]     # the cold-start domain left out
    assert pre["test"]["domain_mean"]["domain"]["like"]["auc_domains"] == 3
    assert list(result.metrics["test"]["by_domain"]["domain"]) == ["0"]       # fine-tuned and evaluated on it
    restore = json.loads((run_dir / "restore.json").read_text())
    assert list(restore["filled"].values()) == [["<oov0>", "0"]]
    assert {"emb_domain", "emb_item_id", "agf_user", "agf_item", "domain_maps"} <= set(restore["frozen"])
    # frozen while fine-tuning: the cold-start domain's map stays the mean of the pretrained domains' maps
    from training.runs import load_run

    _, _, pretrained = load_run(run_dir / "pretrain", lambda *_: None)
    model = result.model
    rows = model.row_names
    trained = [rows.index(v) for v in ("1", "2", "3")]
    pre_maps = pretrained.get_layer("domain_maps").kernel.numpy()
    np.testing.assert_allclose(model.get_layer("domain_maps").kernel.numpy()[rows.index("0")],
                               pre_maps[trained].mean(0), rtol=1e-5, atol=1e-8)
    np.testing.assert_array_equal(model.get_layer("emb_item_id").embeddings.numpy(),
                                  pretrained.get_layer("emb_item_id").embeddings.numpy())
    assert not np.allclose(model.get_layer("tower_like_dense0").kernel.numpy(),
                           pretrained.get_layer("tower_like_dense0").kernel.numpy())   # the towers trained
    # an unknown domain value lands on the OOV row, whose weights are the trained domains' mean: no crash
    data = open_dataset(dataset)
    feats = next(iter(data.dataset("test", 8, features=model.input_names)))[0]
    unknown = dict(feats, domain=tf.fill(tf.shape(feats["domain"]), tf.constant(77, tf.int64)))
    p = model.predict_on_batch(unknown)["like"]
    assert np.isfinite(p).all() and p.shape == (8,)
    # save -> reload in a fresh model gives the same predictions, the domain among the signature's inputs
    model.save(tmp_path / "saved")
    served = tf.saved_model.load(str(tmp_path / "saved")).signatures["serving_default"]
    assert "domain" in served.structured_input_signature[1]
    out = served(**{k: unknown[k] for k in served.structured_input_signature[1]})
    np.testing.assert_allclose(out["like"].numpy(), p, atol=1e-5)


def test_cli_errors_are_one_line_naming_file_and_key(dataset, tmp_path, capsys):
    from training.cli import main

    plain = tmp_path / "plain"
    spec = parse_spec({"name": "plain", "features": [{"name": "item_id", "kind": "id"},
                                                     {"name": "like", "kind": "label"}]}, "plain.yaml")
    write_dataset({"train": pd.DataFrame({"item_id": [1, 2, 3, 4], "like": [1.0, 0.0, 1.0, 0.0]})}, spec, plain,
                  source="toy", progress=False)
    cases = [
        ({"dataset": str(plain), "model": "sr_foundation"},
         "exp.yaml: params: {}/spec.yaml: sr_foundation (domain embeddings and maps) needs a feature of "
         "`kind: domain`".format(plain)),
        ({"dataset": str(dataset), "model": "sr_foundation", "params": {"gating": "cls"}},
         "exp.yaml: params: {}/spec.yaml: params.gating=cls needs".format(dataset)),
        ({"dataset": str(dataset), "model": "sr_foundation", "rows": {"keep": {"domain": ["x"]}}},
         "exp.yaml: rows.keep.domain: domain holds integers"),
    ]
    for raw, words in cases:
        exp = tmp_path / "exp.yaml"
        exp.write_text(json.dumps({"name": "x", **raw}))
        assert main(["train", str(exp), "--run-dir", str(tmp_path / "run"), "--quiet"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: " + str(tmp_path)) and words in err[0], err
        assert not (tmp_path / "run").exists()                       # nothing left behind


def test_cold_start_run_exports_with_parity_and_ranks_across_domains(cold_start, tmp_path):
    """The pretrained run exports (fresh-process parity checked by export_run) and one SavedModel ranks candidates
    of any domain, an unknown one included: the domain travels in the request."""
    from training.exporting import export_run

    run_dir, _ = cold_start
    lines: list[str] = []
    version = export_run(run_dir / "pretrain", "srf", tmp_path / "models", warmup=4, parity_rows=32,
                         log=lines.append)
    assert "fresh-process parity on 32 validation examples" in lines[-1]
    rank = tf.saved_model.load(str(version)).signatures["rank"]
    ctx = tf.train.Example()
    ctx.features.feature["user_id"].int64_list.value.append(3)
    ctx.features.feature["query"].float_list.value.extend([0.0] * 6)
    cands = []
    for item, domain in [(5, 1), (5, 2), (5, 77)]:
        c = tf.train.Example()
        c.features.feature["item_id"].int64_list.value.append(item)
        c.features.feature["domain"].int64_list.value.append(domain)
        c.features.feature["title"].float_list.value.extend([0.1] * 6)
        cands.append(c.SerializeToString())
    out = rank(context=tf.constant(ctx.SerializeToString()), candidates=tf.constant(cands))["like"].numpy()
    assert out.shape == (3,) and np.isfinite(out).all() and out[0] != out[1]    # the domain changes the score
