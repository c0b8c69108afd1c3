"""MACDAE: the heads, the attention, the losses against numpy; the input x; pretrain -> fine-tune from one YAML."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from tfrec_zoo._tf import tf
from tfrec_zoo.layers import (MixtureHeadsEncoder, PairwiseProducts, gaussian_kl, head_diversity_loss,
                              reconstruction_loss)
from tfrec_zoo.models import build_model

from test_models import ART, SPEC, toy_batch

ROOT = Path(__file__).resolve().parents[1]


def _softplus(a):
    return np.log1p(np.exp(a))


def _encoder(heads=4, units=8, d=6, **kw):
    layer = MixtureHeadsEncoder(heads, units, input_dropout=0.5, seed=0, **kw)
    layer.build((None, d))
    return layer


def test_heads_attention_and_z_match_numpy():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 6)).astype(np.float32)
    enc = _encoder()
    out = enc(tf.constant(x), training=False)           # no input noise outside training
    w, b, wa = enc.kernel.numpy(), enc.bias.numpy(), enc.attention_kernel.numpy()
    heads = _softplus(np.einsum("bd,kdu->bku", x, w) + b)
    scores = np.einsum("bu,bku->bk", x @ wa, heads)
    att = np.exp(scores - scores.max(1, keepdims=True))
    att /= att.sum(1, keepdims=True)
    np.testing.assert_allclose(out["heads"].numpy(), heads, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out["attention"].numpy(), att, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out["z"].numpy(), (heads * att[:, :, None]).reshape(5, 8), rtol=1e-5, atol=1e-6)
    # Xavier-uniform per head: D x U = 6 x 2 -> limit sqrt(6 / 8); the attention kernel N(0, 0.1)
    assert np.abs(w).max() <= np.sqrt(6 / 8) and np.abs(w).max() > 0.3
    assert 0.02 < wa.std() < 0.3


def test_input_noise_only_while_training_and_the_dae_concatenates_plain_heads():
    x = tf.ones((64, 6))
    enc = _encoder()
    assert not np.allclose(enc(x, training=True)["z"].numpy(), enc(x, training=False)["z"].numpy())
    dae = _encoder(attention=False)
    out = dae(x, training=False)
    heads = _softplus(np.einsum("bd,kdu->bku", np.ones((64, 6)), dae.kernel.numpy()) + dae.bias.numpy())
    np.testing.assert_allclose(out["z"].numpy(), heads.reshape(64, 8), rtol=1e-5)
    np.testing.assert_allclose(out["attention"].numpy(), 0.25)


def test_vae_samples_while_training_and_serves_its_mean():
    rng = np.random.default_rng(1)
    x = tf.constant(rng.standard_normal((16, 6)).astype(np.float32))
    vae = _encoder(attention=False, variational=True)
    served = vae(x, training=False)
    np.testing.assert_allclose(served["z"].numpy(), served["mean"].numpy())          # mean, no softplus
    mean = np.einsum("bd,kdu->bku", x.numpy() * 1.0, vae.kernel.numpy()) + vae.bias.numpy()
    np.testing.assert_allclose(served["mean"].numpy(), mean.reshape(16, 8), rtol=1e-5, atol=1e-6)
    assert not np.allclose(vae(x, training=True)["z"].numpy(), served["z"].numpy())


def test_losses_match_numpy():
    rng = np.random.default_rng(2)
    x, x_hat = rng.standard_normal((7, 5)), rng.standard_normal((7, 5))
    assert float(reconstruction_loss(tf.constant(x), tf.constant(x_hat))) == pytest.approx(
        np.mean(0.5 * ((x_hat - x) ** 2).sum(1)), rel=1e-6)
    heads = rng.standard_normal((7, 3, 4)).astype(np.float32)
    unit = heads / np.linalg.norm(heads, axis=-1, keepdims=True)
    cos = np.array([[unit[b, i] @ unit[b, j] for i in range(3) for j in range(i + 1, 3)] for b in range(7)])
    cases = [(0.75, False, 0.5 * np.mean(cos - 0.75)), (0.1, True, 0.5 * np.mean(np.maximum(cos - 0.1, 0))),
             (-1.0, False, 0.5 * np.mean(cos + 1))]
    for eps, hinge, want in cases:
        assert float(head_diversity_loss(tf.constant(heads), eps, hinge)) == pytest.approx(want, abs=1e-6)
    assert float(head_diversity_loss(tf.constant(heads[:, :1]), 0.75)) == 0.0          # one head: no pairs
    mean, log_var = rng.standard_normal((7, 4)), rng.standard_normal((7, 4))
    want = np.mean(-0.5 * (1 + log_var - mean ** 2 - np.exp(log_var)).sum(1))
    assert float(gaussian_kl(tf.constant(mean), tf.constant(log_var))) == pytest.approx(want, rel=1e-6)
    assert float(gaussian_kl(tf.zeros((3, 4)), tf.zeros((3, 4)))) == 0.0


def test_the_linear_constraint_gradient_does_not_depend_on_epsilon_the_hinge_does():
    heads = tf.Variable(np.random.default_rng(3).standard_normal((4, 3, 5)).astype(np.float32))

    def grad(eps, hinge):
        with tf.GradientTape() as tape:
            loss = head_diversity_loss(heads, eps, hinge)
        return tape.gradient(loss, heads).numpy()

    np.testing.assert_allclose(grad(0.75, False), grad(-0.5, False), atol=1e-7)
    assert np.abs(grad(1.0, True)).max() == 0.0                    # no pair is above cos 1: nothing to push
    assert np.abs(grad(-1.0, True)).max() > 0


def test_pairwise_products_are_the_sum_over_pairs():
    f = np.random.default_rng(4).standard_normal((3, 5, 4)).astype(np.float32)
    pairs = sum(f[:, a] * f[:, b] for a in range(5) for b in range(a + 1, 5))
    np.testing.assert_allclose(PairwiseProducts(scale=1.0)(tf.constant(f)).numpy(), pairs, rtol=1e-5, atol=1e-5)
    # MACDAE's default scale: 0.5 / #pairs (the author's 0.5 * 1/10 over five embeddings)
    np.testing.assert_allclose(PairwiseProducts()(tf.constant(f)).numpy(), 0.05 * pairs, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("target_gradient", [False, True])
def test_the_reconstruction_target_is_fixed_unless_asked(target_gradient):
    """At initialisation the decoder is zero, so x^ = 0 and nothing flows through the encoder: the embeddings get a
    gradient only through the target, i.e. only with the author's `target_gradient: true` (it shrinks them)."""
    model = build_model("macdae", SPEC, ART, {"target_gradient": target_gradient})
    model.set_loss_weights({"constraint": 0})             # the heads' constraint reaches the embeddings by design
    feats, labels = toy_batch()
    table = model.get_layer("emb_item_id").embeddings
    with tf.GradientTape() as tape:
        loss = model.compute_loss((feats, labels), training=True)
    g = tape.gradient(loss, table)
    norm = 0.0 if g is None else float(tf.norm(tf.convert_to_tensor(g)))
    assert (norm > 0) == target_gradient


def test_a_layer_only_an_auxiliary_loss_reaches_trains_and_is_saved(tmp_path):
    """The decoder is in no output's graph (only the reconstruction loss reads it): the model must still train it
    and save it, or a pretraining would restore an untrained decoder (it once did: ZooModel now tracks such layers)."""
    from tfrec_zoo._tf import keras
    from training.runs import load_weights

    model = build_model("macdae", SPEC, ART, {})
    assert "macdae_decoder/kernel:0" in {v.name for v in model.trainable_variables}
    model.compile(keras.optimizers.Adam(0.001))
    feats, labels = toy_batch()
    model.train_on_batch(feats, labels)
    kernel = model.get_layer("macdae_x").output.shape[-1]
    decoder = next(layer for layer in model.auxiliary_layers if layer.name == "macdae_decoder")
    assert decoder.kernel.shape[-1] == kernel and np.abs(decoder.kernel.numpy()).max() > 0   # moved from zeros
    model.save(tmp_path / "m")
    again = build_model("macdae", SPEC, ART, {})
    load_weights(again, tmp_path / "m")
    twin = next(layer for layer in again.auxiliary_layers if layer.name == "macdae_decoder")
    np.testing.assert_array_equal(twin.kernel.numpy(), decoder.kernel.numpy())


def test_the_input_holds_every_field_projected_their_pairwise_products_and_dense():
    model = build_model("macdae", SPEC, ART, {"embedding_dim": 8})
    x = model.get_layer("macdae_x").output
    # fields: user, item, cate (4 -> 8), tags (pooled), hist_item, hist_cate (4 -> 8) + pairwise 8 + price 1 + title 6
    assert x.shape[-1] == 6 * 8 + 8 + 1 + 6
    assert {"macdae_proj_cate_id", "macdae_proj_hist_cate"} <= {layer.name for layer in model.layers}
    assert model.default_loss_weights == {"reconstruction": 1.0, "constraint": 0.005}
    assert model.task_names == [] and model.evaluation_protocol(SPEC) == "losses"


@pytest.mark.parametrize("params, words", [
    ({"heads": 0}, "macdae.heads: must be >= 1, got 0"),
    ({"epsilon": 1.5}, "macdae.epsilon: a cosine bound in [-1, 1], got 1.5"),
    ({"heads": 3, "units": 256}, "macdae.units: must be a multiple of heads (3), got 256"),
    ({"fields": ["nope"]}, "macdae.fields: 'nope' is not an input of toy.yaml"),
])
def test_bad_configs_name_the_field(params, words):
    with pytest.raises(ValueError, match=None) as e:
        build_model("macdae", SPEC, ART, params)
    assert words in str(e.value)


def test_wide_deep_encoders_share_the_pretraining_layer_names():
    pre = build_model("macdae", SPEC, ART, {})
    for name in ("wide_deep_macdae", "wide_deep_dae", "wide_deep_vae"):
        down = build_model(name, SPEC, ART, {})
        pre_vars = {v.name for v in pre.variables if v.name.startswith(("macdae_", "emb_"))}
        down_vars = {v.name for v in down.variables}
        if name == "wide_deep_macdae":
            assert pre_vars <= down_vars
        assert {v for v in down_vars if v.startswith("macdae_encoder")}
        assert down.loss_weights["reconstruction"] == 0.0           # downstream: the click loss alone by default
    # the attention-off ablation keeps the constraint; the DAE baseline has none
    assert build_model("macdae", SPEC, ART, {"attention": False}).loss_weights["constraint"] == 0.005
    assert build_model("multihead_dae", SPEC, ART, {}).loss_weights["constraint"] == 0.0
    base = build_model("wide_deep", SPEC, ART, {})
    assert not any(v.name.startswith("macdae_") for v in base.variables)
    assert any(v.name.startswith("wide_user_id") for v in base.variables)


# -- pretrain -> fine-tune from one YAML, on real data (a ml-latest-small subset) ---------------------------------
@pytest.fixture(scope="module")
def ml_small(tmp_path_factory) -> Path:
    from tfrec_zoo.data.builders import build

    out = tmp_path_factory.mktemp("data") / "ml60"
    build("ml-latest-small", out, progress=False, log=lambda *_: None, options={"max_users": 60})
    return out


def _experiment(tmp_path: Path, data: Path, **extra) -> Path:
    exp = {"name": "wdm", "dataset": str(data), "model": "wide_deep_macdae", "params": {"heads": 2, "units": 16},
           "epochs": 1, "batch_size": 256, "evaluation": {"splits": ["test"]},
           "pretrain": {"model": "macdae", "epochs": 2, "rows": {"keep": {"like": [1]}},
                        "include": ["^emb_", "^macdae_"]}, **extra}
    path = tmp_path / "wdm.yaml"
    path.write_text(yaml.safe_dump(exp))
    return path


def test_pretrain_on_positives_then_finetune_restores_the_encoder(ml_small, tmp_path, monkeypatch):
    monkeypatch.setenv("TFREC_ZOO_DATA", str(tmp_path / "data"))     # the row subset is written here, fresh
    from training.experiment import load_experiment
    from training.trainer import train

    exp = load_experiment(_experiment(tmp_path, ml_small))
    said: list[str] = []
    result = train(exp, tmp_path / "run", verbose=0, log=lambda *a: said.append(" ".join(map(str, a))))
    # the pretraining stage reads the positive rows only (`rows: {keep: {like: [1]}}`)
    kept = [line for line in said if "train:" in line and "rows kept" in line]
    assert kept, said
    n_kept, n_all = (int(v.replace(",", "")) for v in kept[0].split("train:")[1].split("rows")[0].split(" of "))
    assert 0 < n_kept < n_all
    history = (tmp_path / "run" / "pretrain" / "history.csv").read_text().splitlines()
    header = history[0].split(",")
    rec = [float(line.split(",")[header.index("reconstruction_loss")]) for line in history[1:]]
    assert len(rec) == 2 and rec[1] < rec[0] and "constraint_loss" in header and "like_loss" not in header
    report = json.loads((tmp_path / "run" / "restore.json").read_text())
    assert any(n.startswith("macdae_encoder/") for n in report["restored"])
    assert "emb_movie_id/embeddings:0" in report["restored"]
    assert not any(n.startswith("macdae_encoder") for n in report["skipped"])
    assert result.metrics["test"]["overall"]["like"]["auc"] > 0.5
    # one SavedModel with the encoder in the graph: fresh-process parity (export_run checks it), then requests
    from tfrec_zoo._tf import tf
    from training.exporting import export_run, validation_records

    version = export_run(tmp_path / "run", "wdm", tmp_path / "saved", parity_rows=64, warmup=8, log=lambda *a: None)
    serve = tf.saved_model.load(str(version)).signatures["serving_default"]
    from tfrec_zoo.data import open_dataset

    record = tf.train.Example.FromString(validation_records(open_dataset(ml_small), 1)[0])
    # a context value never seen in training (an unknown movie, a far-future time) is served
    unseen = tf.train.Example()
    unseen.CopyFrom(record)
    unseen.features.feature["movie_id"].int64_list.value[:] = [987654321]
    unseen.features.feature["timestamp"].float_list.value[:] = [4.1e9]
    out = serve(examples=tf.constant([unseen.SerializeToString()]))["like"].numpy()
    assert np.isfinite(out).all()
    # a request without a feature the model reads fails, naming it (TF Serving / tfrec-zoo serve: 400)
    missing = tf.train.Example()
    missing.CopyFrom(record)
    del missing.features.feature["timestamp"]
    with pytest.raises(tf.errors.InvalidArgumentError, match="timestamp"):
        serve(examples=tf.constant([missing.SerializeToString()]))


def test_a_frozen_encoder_keeps_its_pretrained_weights(ml_small, tmp_path):
    from training.experiment import load_experiment
    from training.runs import load_run
    from training.trainer import train

    path = _experiment(tmp_path, ml_small, pretrain={"model": "macdae", "epochs": 1, "include": ["^emb_", "^macdae_"],
                                                       "freeze": ["^macdae_encoder$"]})
    result = train(load_experiment(path), tmp_path / "run", verbose=0, evaluate=False)
    _, _, pre = load_run(tmp_path / "run" / "pretrain", log=lambda *_: None)
    np.testing.assert_array_equal(result.model.get_layer("macdae_encoder").kernel.numpy(),
                                  pre.get_layer("macdae_encoder").kernel.numpy())
    assert not np.allclose(result.model.get_layer("deep_dense0").kernel.numpy(), 0)


def test_bad_heads_and_epsilon_fail_with_one_error_line(ml_small, tmp_path):
    """From the CLI: one `error:` line naming the YAML; the pretraining stage inherits the encoder's params, so it
    is the first to refuse them (epsilon in-process: the same message, before anything trains)."""
    from training.experiment import load_experiment
    from training.fit import ModelBuildError
    from training.trainer import train

    path = _experiment(tmp_path, ml_small, params={"heads": 0})
    proc = subprocess.run([sys.executable, "-m", "training.cli", "train", str(path), "--run-dir",
                           str(tmp_path / "bad")], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "wdm.yaml" in lines[0], proc.stderr[-2000:]
    assert "params: macdae.heads: must be >= 1, got 0" in lines[0]
    path = _experiment(tmp_path, ml_small, params={"epsilon": -2.0})
    with pytest.raises(ModelBuildError, match=r"wdm.yaml.*params: macdae.epsilon: a cosine bound in \[-1, 1\]"):
        train(load_experiment(path), tmp_path / "bad2", verbose=0)
    assert not (tmp_path / "bad2" / "pretrain" / "checkpoints").exists()
