"""TF Serving exports of the baselines: layout, signatures (saved_model_cli), warmup, versions, fresh-process parity."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from tfrec_zoo._tf import tf
from tfrec_zoo.data.builders import build
from tfrec_zoo.serving.export import WARMUP_FILE, export_model, versions
from training.experiment import load_experiment
from training.exporting import export_run, fresh_process_outputs, validation_records
from training.trainer import resolve_dataset, train

EXPERIMENTS = Path(__file__).resolve().parents[1] / "training" / "experiments"
ITEM_SIDE = ("movie_id", "genres", "year", "title")   # what a candidate carries; the rest is request context


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    data = root / "ml60"
    build("ml-latest-small", data, progress=False, log=lambda *_: None, options={"max_users": 60})
    out = {}
    for model in ("din", "deepfm", "mmoe"):
        exp = load_experiment(EXPERIMENTS / f"{model}-ml-latest-small.yaml",
                              [f"dataset={data}", "epochs=1", "early_stopping=null", "batch_size=512"])
        out[model] = train(exp, root / model, verbose=0, evaluate=False).run_dir
    return root, out


@pytest.fixture(scope="module")
def exported(runs):
    """The three baselines exported once into one base directory (each export passes fresh-process parity on
    256 validation examples, or raises), shared by the tests that read or serve them."""
    root, run_dirs = runs
    base = root / "saved_models"
    return base, {m: export_run(run_dirs[m], m, base, log=lambda *_: None) for m in ("din", "deepfm", "mmoe")}


@pytest.mark.parametrize("model", ["din", "deepfm", "mmoe"])
def test_export_passes_parity_and_shows_its_signatures(exported, model):
    base, versions_of = exported
    version = versions_of[model]
    assert version == base / model / "1"
    assert {p.name for p in version.iterdir()} >= {"saved_model.pb", "variables", "assets.extra"}
    cli = Path(os.environ.get("VIRTUAL_ENV", Path(__import__("sys").executable).parent.parent)) / "bin" / "saved_model_cli"
    shown = subprocess.run([str(cli), "show", "--dir", str(version), "--all"], capture_output=True, text=True,
                           timeout=120).stdout
    for sig in ("serving_default", "rank", "predict_raw"):
        assert f"signature_def['{sig}']" in shown
    assert "inputs['examples'] tensor_info:\n        dtype: DT_STRING\n        shape: (-1)" in shown
    assert "inputs['context'] tensor_info:\n        dtype: DT_STRING\n        shape: ()" in shown
    assert "outputs['like'] tensor_info:\n        dtype: DT_FLOAT\n        shape: (-1)" in shown
    assert "inputs['user_id'] tensor_info:\n        dtype: DT_INT64" in shown   # predict_raw takes raw ids
    # warmup: PredictionLog records holding real serialized examples
    from tensorflow_serving.apis import prediction_log_pb2

    logs = [prediction_log_pb2.PredictionLog.FromString(r.numpy())
            for r in tf.data.TFRecordDataset(str(version / "assets.extra" / WARMUP_FILE))]
    assert len(logs) == 4 and logs[0].predict_log.request.model_spec.signature_name == "serving_default"
    assert len(logs[0].predict_log.request.inputs["examples"].string_val) == 8
    assert f'name: "{model}"' in (base / "models.config").read_text()


def test_rank_scores_candidates_for_one_context(runs, exported):
    root, run_dirs = runs
    version = exported[1]["din"]
    loaded = tf.saved_model.load(str(version))
    exp = load_experiment(run_dirs["din"] / "config.yaml")
    records = [tf.train.Example.FromString(r) for r in validation_records(resolve_dataset(exp.dataset), 6)]
    context, candidates, merged = tf.train.Example(), [], []
    for key, feat in records[0].features.feature.items():
        if key not in ITEM_SIDE:
            context.features.feature[key].CopyFrom(feat)
    for ex in records:
        cand = tf.train.Example()
        for key in ITEM_SIDE:
            cand.features.feature[key].CopyFrom(ex.features.feature[key])
        candidates.append(cand.SerializeToString())
        full = tf.train.Example()
        full.CopyFrom(context)
        for key in ITEM_SIDE:
            full.features.feature[key].CopyFrom(ex.features.feature[key])
        merged.append(full.SerializeToString())
    ranked = loaded.signatures["rank"](context=tf.constant(context.SerializeToString()),
                                       candidates=tf.constant(candidates))
    direct = loaded.signatures["serving_default"](examples=tf.constant(merged))
    np.testing.assert_allclose(ranked["like"].numpy(), direct["like"].numpy(), atol=1e-6)
    assert ranked["like"].shape == (6,) and np.ptp(ranked["like"].numpy()) > 0   # candidates really differ


def test_rank_parsing_equals_parsing_the_merged_examples(runs):
    """The context is parsed once, yet every feature equals parsing context bytes + candidate bytes: item-side
    keys from the candidate, a candidate that overrides a context key (its own history), one that takes an
    item-side key from the context; a required feature neither side has is an error naming it."""
    from tfrec_zoo.data.reader import parse_features, parse_ranking_request

    _, run_dirs = runs
    data = resolve_dataset(load_experiment(run_dirs["din"] / "config.yaml").dataset)
    records = [tf.train.Example.FromString(r) for r in validation_records(data, 5)]
    context = records[0]
    candidates = []
    for i, ex in enumerate(records[1:]):
        cand = tf.train.Example()
        for key in ITEM_SIDE[:1] if i == 0 else ITEM_SIDE:      # the first: movie id only, the rest from context
            cand.features.feature[key].CopyFrom(ex.features.feature[key])
        if i == 1:                                             # its own (shorter) history replaces the context's
            for key in ("hist_movie_id", "hist_genres"):
                if key in ex.features.feature:
                    cand.features.feature[key].CopyFrom(ex.features.feature[key])
        candidates.append(cand.SerializeToString())
    ctx = context.SerializeToString()
    want = parse_features(data.spec, tf.constant([ctx + c for c in candidates]))
    got = parse_ranking_request(data.spec, tf.constant(ctx), tf.constant(candidates))
    assert set(got) == set(want) and "hist_movie_id" in got
    for key in want:
        np.testing.assert_array_equal(got[key].numpy(), want[key].numpy(), err_msg=key)
    assert not np.array_equal(got["hist_movie_id"].numpy()[1], got["hist_movie_id"].numpy()[0])
    np.testing.assert_array_equal(got["hist_movie_id"].numpy()[0], got["hist_movie_id"].numpy()[2])
    del context.features.feature["year"]
    with pytest.raises(tf.errors.InvalidArgumentError, match="'year'"):
        parse_ranking_request(data.spec, tf.constant(context.SerializeToString()), tf.constant(candidates[:1]))


def test_versions_increment_keep_the_newest_and_a_failed_export_leaves_nothing(runs):
    from training.runs import load_run

    root, run_dirs = runs
    base = root / "sm_versions"
    _, data, model = load_run(run_dirs["mmoe"], log=lambda *_: None)
    for _ in range(2):                     # (export_run's fresh-process parity is the `exported` fixture's test)
        export_model(model, data.spec, base, "m", keep=1)
    assert versions(base / "m") == [2]                               # numbered on, the oldest pruned
    assert not (base / "m" / "2" / "assets.extra").exists()       # no warmup examples: none written

    def refuse(path):
        raise RuntimeError("parity failed")

    with pytest.raises(RuntimeError, match="parity failed"):        # a check that fails publishes nothing
        export_model(model, data.spec, base, "m", keep=1, check=refuse)
    assert versions(base / "m") == [2]
    with pytest.raises(ValueError, match="model name 'bad name'"):
        export_model(None, None, base, "bad name")
    with pytest.raises(FileExistsError, match="versions are immutable"):
        export_model(None, None, base, "m", version=2)
    assert sorted(p.name for p in (base / "m").iterdir()) == ["2"]


def test_fresh_process_loads_with_tensorflow_only(runs, exported):
    root, run_dirs = runs
    version = exported[1]["deepfm"]
    exp = load_experiment(run_dirs["deepfm"] / "config.yaml")
    recs = validation_records(resolve_dataset(exp.dataset), 5)
    out = fresh_process_outputs(version, recs)
    assert set(out) == {"like", "rating"} and out["like"].shape == (5,)


def test_exported_baselines_are_served_to_the_stock_clients(runs, exported):
    import base64
    import json
    import urllib.request

    import grpc
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    from tfrec_zoo.serving.server import ModelServer

    root, run_dirs = runs
    base, versions_of = exported
    exp = load_experiment(run_dirs["din"] / "config.yaml")
    recs = validation_records(resolve_dataset(exp.dataset), 7)
    with ModelServer(str(base), grpc_port=0, rest_port=0, host="127.0.0.1", poll_seconds=60) as server:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(
            grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}"))
        for model in ("din", "deepfm", "mmoe"):
            # the export's serving_default (its fresh-process parity was checked when it was written)
            expected = {k: v.numpy() for k, v in tf.saved_model.load(str(versions_of[model])).signatures[
                "serving_default"](examples=tf.constant(recs)).items()}
            req = predict_pb2.PredictRequest()
            req.model_spec.name = model
            req.inputs["examples"].CopyFrom(tf.make_tensor_proto(recs, dtype=tf.string, shape=[len(recs)]))
            resp = stub.Predict(req, timeout=30)
            np.testing.assert_allclose(tf.make_ndarray(resp.outputs["like"]), expected["like"], atol=1e-5)
            body = json.dumps({"instances": [{"b64": base64.b64encode(r).decode()} for r in recs]}).encode()
            url = f"http://127.0.0.1:{server.rest_port}/v1/models/{model}:predict"
            out = json.loads(urllib.request.urlopen(urllib.request.Request(url, body), timeout=30).read())
            np.testing.assert_allclose([p["like"] for p in out["predictions"]], expected["like"], atol=1e-5)


def test_raw_text_signatures_encode_in_the_graph_like_data_write(runs):
    """`--raw-text`: serving_text / rank_text take a text feature as the raw string and score as serving_default /
    rank do on the vectors `data write` would store; a fresh process loads them with tensorflow_text's ops (which
    stock TF Serving links)."""
    from tfrec_zoo.text import get_encoder

    root, run_dirs = runs
    version = export_run(run_dirs["din"], "din_text", root / "sm_text", warmup=0, parity_rows=8,
                         options={"raw_text": True}, log=lambda *_: None)
    exp = load_experiment(run_dirs["din"] / "config.yaml")
    records = [tf.train.Example.FromString(r) for r in validation_records(resolve_dataset(exp.dataset), 4)]
    texts = {"title": ["Toy Story (1995)", "Heat (1995)", "", "Jumanji (1995)"],
             "query": ["pixar funny", "", "dark crime thriller", "board game"]}
    encoder = get_encoder("all-MiniLM-L6-v2")
    as_vectors, as_text = [], []
    for i, ex in enumerate(records):
        vec, raw = tf.train.Example(), tf.train.Example()
        vec.CopyFrom(ex)
        raw.CopyFrom(ex)
        for name, values in texts.items():
            del vec.features.feature[name].float_list.value[:]
            vec.features.feature[name].float_list.value.extend(encoder.encode([values[i]])[0].tolist())
            del raw.features.feature[name]
            raw.features.feature[name].bytes_list.value.append(values[i].encode())
        as_vectors.append(vec.SerializeToString())
        as_text.append(raw.SerializeToString())
    sigs = tf.saved_model.load(str(version)).signatures
    assert {"serving_text", "rank_text"} <= set(sigs)
    want = sigs["serving_default"](examples=tf.constant(as_vectors))["like"].numpy()
    got = sigs["serving_text"](examples=tf.constant(as_text))["like"].numpy()
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert np.ptp(want) > 0                                   # the texts change the scores
    ranked = sigs["rank_text"](context=tf.constant(as_text[0]), candidates=tf.constant(as_text[1:]))["like"].numpy()
    np.testing.assert_allclose(ranked, sigs["rank"](context=tf.constant(as_vectors[0]),
                                                    candidates=tf.constant(as_vectors[1:]))["like"].numpy(), atol=1e-5)
    fresh = subprocess.run([__import__("sys").executable, "-c", (
        "import sys, numpy as np, tensorflow as tf, tensorflow_text\n"
        "s = tf.saved_model.load(sys.argv[1]).signatures['serving_text']\n"
        "print(np.asarray(s(examples=tf.constant([bytes.fromhex(h) for h in sys.argv[2:]]))['like']).tolist())"),
        str(version), *(r.hex() for r in as_text)], capture_output=True, text=True, timeout=300,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert fresh.returncode == 0, fresh.stderr[-2000:]
    np.testing.assert_allclose(json.loads(fresh.stdout.strip().splitlines()[-1]), want, atol=1e-5)
    # an option the model does not take is an error naming it
    with pytest.raises(ValueError, match="export options \\['raw_txt'\\] do not apply"):
        export_run(run_dirs["din"], "x", root / "sm_x", options={"raw_txt": True}, log=lambda *_: None)


def test_predict_raw_refuses_lengths_outside_the_padded_width_and_nan(runs, exported):
    """predict_raw takes the model's tensors as they are: a `<seq>_len` above the padded width or below 0, and a
    NaN in a float input, would be scored as if fine; the exported graph refuses them (INVALID_ARGUMENT)."""
    root, run_dirs = runs
    version = exported[1]["din"]
    fn = tf.saved_model.load(str(version)).signatures["predict_raw"]
    exp = load_experiment(run_dirs["din"] / "config.yaml")
    data = resolve_dataset(exp.dataset)
    names = list(fn.structured_input_signature[1])
    from tfrec_zoo.data.reader import parse_features

    good = parse_features(data.spec, tf.constant(validation_records(data, 3)), names)
    assert set(fn(**good)) >= {"like"}
    lengths = [n for n in names if n.endswith("_len")]
    floats = [n for n in names if good[n].dtype.is_floating]
    assert lengths and floats, names
    for name, value, word in [(lengths[0], 10_000, "longer than the padded width"),
                              (lengths[0], -1, "negative length"), (floats[0], float("nan"), "NaN")]:
        bad = dict(good)
        bad[name] = tf.tensor_scatter_nd_update(good[name], [[0]], tf.cast([value], good[name].dtype)) \
            if good[name].shape.rank == 1 else tf.where(tf.range(3)[:, None] == 0, tf.cast(value, good[name].dtype),
                                                        good[name])
        with pytest.raises(tf.errors.InvalidArgumentError, match=word):
            fn(**bad)
