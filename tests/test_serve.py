"""The TF-Serving-compatible server (tfrec_zoo.serving.server), driven the way its users drive TF Serving: the stock
`tensorflow_serving.apis` gRPC stubs and plain HTTP. Its answers must equal the SavedModel's own, in memory.

The SavedModels are made here (a small tf.Module with an examples signature and a raw-tensor one), not by the
exporter, so these tests judge the server alone.
"""
from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import pytest
from tensorflow_serving.apis import (
    get_model_metadata_pb2, get_model_status_pb2, model_service_pb2_grpc, predict_pb2, prediction_log_pb2,
    prediction_service_pb2_grpc,
)

from tfrec_zoo._tf import tf
from tfrec_zoo.serving.server import ModelServer

TIMEOUT = 30  # seconds, for every RPC, HTTP call and wait below
MAX_BATCH = 8
INVALID, NOT_FOUND = grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND


class Toy(tf.Module):
    """serving_default: serialized tf.Example -> like, click. raw: x, cat, tag -> like, click, tag_len, tag_bytes."""

    def __init__(self, scale: float):
        super().__init__()
        self.w = tf.Variable([0.5 * scale, -0.25 * scale])
        self.emb = tf.Variable(np.linspace(-1.0, 1.0, 10, dtype=np.float32) * scale)

    def _heads(self, x, cat):
        logit = tf.reduce_sum(x * self.w, -1) + tf.gather(self.emb, tf.clip_by_value(cat, 0, 9))
        return {"like": tf.sigmoid(logit), "click": tf.sigmoid(0.5 * logit - 0.1)}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
    def serve(self, examples):
        f = tf.io.parse_example(examples, {"x": tf.io.FixedLenFeature([2], tf.float32),
                                           "cat": tf.io.FixedLenFeature([], tf.int64, default_value=0)})
        return self._heads(f["x"], f["cat"])

    @tf.function(input_signature=[tf.TensorSpec([None, 2], tf.float32, name="x"),
                                  tf.TensorSpec([None], tf.int64, name="cat"),
                                  tf.TensorSpec([None], tf.string, name="tag")])
    def raw(self, x, cat, tag):
        return {**self._heads(x, cat), "tag_len": tf.strings.length(tag),
                "tag_bytes": tf.strings.join([tag, tf.constant(b"\xff")])}


def example(x: list[float], cat: int) -> bytes:
    return tf.train.Example(features=tf.train.Features(feature={
        "x": tf.train.Feature(float_list=tf.train.FloatList(value=x)),
        "cat": tf.train.Feature(int64_list=tf.train.Int64List(value=[cat]))})).SerializeToString()


RNG = np.random.default_rng(0)
X = RNG.normal(size=(4, 2)).astype(np.float32)
CAT = np.array([1, 3, 5, 9], np.int64)
TAG = np.array([b"a", b"bcd", b"", b"zz"], object)
EXAMPLES = [example(x.tolist(), int(c)) for x, c in zip(X, CAT)]
RAW = {"x": X, "cat": CAT, "tag": TAG}


def proto_request(name: str, signature: str = "", version: int | None = None, **inputs) -> predict_pb2.PredictRequest:
    req = predict_pb2.PredictRequest()
    req.model_spec.name, req.model_spec.signature_name = name, signature
    if version is not None:
        req.model_spec.version.value = version
    for k, v in inputs.items():
        req.inputs[k].CopyFrom(tf.make_tensor_proto(v))
    return req


def export(model_dir: Path, version: int, scale: float, warmup: str | None = None) -> Path:
    """Writes a version the way an exporter should: in a hidden temp dir, renamed in when complete."""
    tmp, final = model_dir / f".tmp-{version}", model_dir / str(version)
    module = Toy(scale)
    tf.saved_model.save(module, str(tmp), signatures={"serving_default": module.serve, "raw": module.raw})
    if warmup:
        (tmp / "assets.extra").mkdir()
        path = str(tmp / "assets.extra" / "tf_serving_warmup_requests")
        if warmup == "corrupt":
            Path(path).write_bytes(b"this is not a TFRecord file")
        else:
            with tf.io.TFRecordWriter(path) as w:
                for req in (proto_request("toy", examples=EXAMPLES[:2]), proto_request("toy", examples=EXAMPLES),
                            proto_request("toy", "raw", **RAW)):
                    w.write(prediction_log_pb2.PredictionLog(
                        predict_log=prediction_log_pb2.PredictLog(request=req)).SerializeToString())
    os.replace(tmp, final)
    return final


def expected(version_dir: Path, signature: str, **inputs) -> dict[str, np.ndarray]:
    """The same SavedModel's predictions, in memory."""
    fn = tf.saved_model.load(str(version_dir)).signatures[signature]
    return {k: v.numpy() for k, v in fn(**{k: tf.constant(v) for k, v in inputs.items()}).items()}


def close(a, b) -> None:
    assert np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))) <= 1e-5, (a, b)


def wait_for(cond, what: str) -> None:
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {TIMEOUT}s waiting for {what}")


def rest(port: int, method: str, path: str, body=None) -> tuple[int, dict]:
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, method=method,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=TIMEOUT) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("saved_models")
    for name in ("toy", "poll"):
        (root / name).mkdir()
    export(root / "toy", 1, 1.0, warmup="good")
    export(root / "poll", 1, 1.0)
    return root


@pytest.fixture(scope="module")
def server(base):
    srv = ModelServer(base, grpc_port=0, rest_port=0, host="127.0.0.1", poll_seconds=0.3, max_batch_size=MAX_BATCH)
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def stubs(server):
    channel = grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}")
    grpc.channel_ready_future(channel).result(timeout=TIMEOUT)
    yield (prediction_service_pb2_grpc.PredictionServiceStub(channel), model_service_pb2_grpc.ModelServiceStub(channel))
    channel.close()


def grpc_outputs(resp: predict_pb2.PredictResponse) -> dict[str, np.ndarray]:
    return {k: tf.make_ndarray(v) for k, v in resp.outputs.items()}


def test_grpc_predict_both_signatures(base, stubs):
    predict, _ = stubs
    resp = predict.Predict(proto_request("toy", examples=EXAMPLES), timeout=TIMEOUT)
    assert (resp.model_spec.name, resp.model_spec.version.value, resp.model_spec.signature_name) == \
        ("toy", 1, "serving_default")
    want = expected(base / "toy/1", "serving_default", examples=EXAMPLES)
    got = grpc_outputs(resp)
    assert set(got) == {"like", "click"} and got["like"].shape == (4,)
    for k in want:
        close(got[k], want[k])

    req = proto_request("toy", "raw", version=1, **RAW)
    req.output_filter.extend(["like", "tag_len"])
    got = grpc_outputs(predict.Predict(req, timeout=TIMEOUT))
    want = expected(base / "toy/1", "raw", **RAW)
    assert set(got) == {"like", "tag_len"}
    close(got["like"], want["like"])
    assert got["tag_len"].tolist() == [1, 3, 0, 2]


def test_rest_row_and_columnar(base, server):
    want = expected(base / "toy/1", "raw", **RAW)
    rows = [{"x": x.tolist(), "cat": int(c), "tag": t.decode()} for x, c, t in zip(X, CAT, TAG)]
    status, body = rest(server.rest_port, "POST", "/v1/models/toy:predict",
                        {"signature_name": "raw", "instances": rows})
    assert status == 200, body
    preds = body["predictions"]
    assert len(preds) == 4 and set(preds[0]) == {"like", "click", "tag_len", "tag_bytes"}
    for k in ("like", "click"):
        close([p[k] for p in preds], want[k])
    # a string output named *_bytes comes back base64'd, as in TF Serving
    assert [base64.b64decode(p["tag_bytes"]["b64"]) for p in preds] == [t + b"\xff" for t in TAG]

    cols = {"x": X.tolist(), "cat": CAT.tolist(), "tag": [{"b64": base64.b64encode(t).decode()} for t in TAG]}
    status, body = rest(server.rest_port, "POST", "/v1/models/toy/versions/1:predict",
                        {"signature_name": "raw", "inputs": cols})
    assert status == 200, body
    for k in ("like", "click"):
        close(body["outputs"][k], want[k])
    assert body["outputs"]["tag_len"] == [1, 3, 0, 2]


def test_rest_b64_examples(base, server):
    want = expected(base / "toy/1", "serving_default", examples=EXAMPLES)
    b64 = [{"b64": base64.b64encode(e).decode()} for e in EXAMPLES]
    for request, key in (({"instances": b64}, "predictions"), ({"instances": [{"examples": b} for b in b64]},
                                                               "predictions"),
                         ({"inputs": {"examples": b64}}, "outputs"), ({"inputs": b64}, "outputs")):
        status, body = rest(server.rest_port, "POST", "/v1/models/toy:predict", request)
        assert status == 200, (request, body)
        got = body[key]
        if key == "predictions":
            got = {k: [p[k] for p in got] for k in ("like", "click")}
        for k in ("like", "click"):
            close(got[k], want[k])


def test_metadata_and_status(stubs, server):
    predict, models = stubs
    req = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    req.model_spec.name = "toy"
    resp = predict.GetModelMetadata(req, timeout=TIMEOUT)
    assert resp.model_spec.version.value == 1
    sigs = get_model_metadata_pb2.SignatureDefMap()
    assert resp.metadata["signature_def"].Unpack(sigs)
    default, raw = sigs.signature_def["serving_default"], sigs.signature_def["raw"]
    assert default.method_name == "tensorflow/serving/predict"
    assert default.inputs["examples"].dtype == tf.string.as_datatype_enum
    assert [d.size for d in default.inputs["examples"].tensor_shape.dim] == [-1]
    assert set(default.outputs) == {"like", "click"}
    assert set(raw.inputs) == {"x", "cat", "tag"} and raw.inputs["cat"].dtype == tf.int64.as_datatype_enum
    assert set(raw.outputs) == {"like", "click", "tag_len", "tag_bytes"}

    status, body = rest(server.rest_port, "GET", "/v1/models/toy/versions/1/metadata")
    assert status == 200, body
    assert body["model_spec"] == {"name": "toy", "signature_name": "", "version": "1"}
    rest_sigs = body["metadata"]["signature_def"]["signature_def"]
    assert rest_sigs["serving_default"]["inputs"]["examples"]["dtype"] == "DT_STRING"
    assert set(rest_sigs["raw"]["outputs"]) == {"like", "click", "tag_len", "tag_bytes"}

    sreq = get_model_status_pb2.GetModelStatusRequest()
    sreq.model_spec.name = "toy"
    st = models.GetModelStatus(sreq, timeout=TIMEOUT).model_version_status
    assert [(s.version, s.state, s.status.error_code) for s in st] == \
        [(1, get_model_status_pb2.ModelVersionStatus.AVAILABLE, 0)]
    assert rest(server.rest_port, "GET", "/v1/models/toy") == (200, {"model_version_status": [
        {"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}]})


def test_warmup_replayed(server):
    assert server.registry.resolve("toy").warmup_replayed == 3
    assert server.registry.resolve("poll").warmup_replayed == 0


def test_warmup_request_that_fails_fails_the_load(tmp_path):
    from tfrec_zoo.serving.registry import ModelRegistry

    version = export(tmp_path / "toy", 1, 1.0, warmup="good")
    with tf.io.TFRecordWriter(str(version / "assets.extra" / "tf_serving_warmup_requests")) as w:
        w.write(prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(
            request=proto_request("toy", "raw", x=X))).SerializeToString())
    registry = ModelRegistry(tmp_path)
    registry.poll()
    state = registry.status("toy")[1]
    assert state.state == "END" and "record 1" in state.error and "'tag'" in state.error, state
    assert registry.models() == {"toy": []}


def _bad_proto(case: str) -> predict_pb2.PredictRequest:
    raw = dict(RAW)
    if case == "unknown model":
        return proto_request("nope", examples=EXAMPLES)
    if case == "unknown version":
        return proto_request("toy", version=99, examples=EXAMPLES)
    if case == "unknown signature":
        return proto_request("toy", "nope_sig", examples=EXAMPLES)
    if case == "missing input":
        raw.pop("tag")
    elif case == "wrong dtype":
        raw["x"] = np.array([[b"a", b"b"]] * 4, object)
    elif case == "wrong shape":
        raw["x"] = np.zeros((4, 3), np.float32)
    elif case == "malformed":
        return proto_request("toy", examples=[b"\x01garbage"])
    elif case == "over-limit batch":
        return proto_request("toy", examples=EXAMPLES * 3)
    return proto_request("toy", "raw", **raw)


_ROWS = [{"x": [1.0, 2.0], "cat": 1, "tag": "a"}] * 2
BAD = {  # case: (gRPC code, REST path, REST body, HTTP status, a word the message must contain)
    "unknown model": (NOT_FOUND, "/v1/models/nope:predict", {"instances": _ROWS}, 404, "nope"),
    "unknown version": (NOT_FOUND, "/v1/models/toy/versions/99:predict", {"instances": _ROWS}, 404, "99"),
    "unknown signature": (INVALID, "/v1/models/toy:predict", {"signature_name": "nope_sig", "instances": _ROWS},
                          400, "nope_sig"),
    "missing input": (INVALID, "/v1/models/toy:predict",
                      {"signature_name": "raw", "instances": [{"x": [1.0, 2.0], "cat": 1}]}, 400, "'tag'"),
    "wrong dtype": (INVALID, "/v1/models/toy:predict",
                    {"signature_name": "raw", "instances": [{"x": ["a", "b"], "cat": 1, "tag": "a"}]}, 400, "'x'"),
    "wrong shape": (INVALID, "/v1/models/toy:predict",
                    {"signature_name": "raw", "inputs": {"x": [1.0, 2.0, 3.0], "cat": [1], "tag": ["a"]}}, 400, "'x'"),
    "malformed": (INVALID, "/v1/models/toy:predict", b'{"instances": [1, 2', 400, "JSON"),
    "over-limit batch": (INVALID, "/v1/models/toy:predict", {"signature_name": "raw", "instances": _ROWS * 5},
                         400, f"{MAX_BATCH}"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_requests_then_good_ones(case, stubs, server):
    predict, _ = stubs
    code, path, body, http_status, word = BAD[case]
    with pytest.raises(grpc.RpcError) as err:
        predict.Predict(_bad_proto(case), timeout=TIMEOUT)
    assert err.value.code() == code, err.value.details()
    assert err.value.details() and (word in err.value.details() or case == "malformed"), err.value.details()
    assert predict.Predict(proto_request("toy", examples=EXAMPLES), timeout=TIMEOUT).outputs["like"].tensor_shape

    status, answer = rest(server.rest_port, "POST", path, body)
    assert status == http_status and word in answer["error"], (status, answer)
    status, answer = rest(server.rest_port, "POST", "/v1/models/toy:predict", {"signature_name": "raw",
                                                                               "instances": _ROWS})
    assert status == 200 and len(answer["predictions"]) == 2


def test_bad_status_and_metadata_requests(stubs, server):
    _, models = stubs
    req = get_model_status_pb2.GetModelStatusRequest()
    req.model_spec.name = "nope"
    with pytest.raises(grpc.RpcError) as err:
        models.GetModelStatus(req, timeout=TIMEOUT)
    assert err.value.code() == NOT_FOUND and "nope" in err.value.details()
    assert rest(server.rest_port, "GET", "/v1/models/toy/versions/7")[0] == 404
    assert rest(server.rest_port, "GET", "/v1/models/toy/versions/7/metadata")[0] == 404
    status, body = rest(server.rest_port, "GET", "/v1/nothing/here")
    assert status == 404 and "Malformed request" in body["error"]
    assert rest(server.rest_port, "GET", "/v1/models/toy")[0] == 200


def test_poll_loads_new_versions_and_bad_warmup_keeps_previous(base, stubs, server):
    predict, models = stubs
    port, model_dir = server.rest_port, base / "poll"

    def statuses() -> dict[str, tuple[str, str]]:
        return {s["version"]: (s["state"], s["status"]["error_message"])
                for s in rest(port, "GET", "/v1/models/poll")[1]["model_version_status"]}

    export(model_dir, 2, 2.0, warmup="corrupt")
    wait_for(lambda: statuses().get("2", ("",))[0] == "END", "version 2's failed load")
    assert "warmup" in statuses()["2"][1]
    resp = predict.Predict(proto_request("poll", examples=EXAMPLES), timeout=TIMEOUT)
    assert resp.model_spec.version.value == 1  # the previous version keeps serving
    want = expected(model_dir / "1", "serving_default", examples=EXAMPLES)
    close(tf.make_ndarray(resp.outputs["like"]), want["like"])

    v3 = export(model_dir, 3, 3.0)
    wait_for(lambda: statuses().get("3", ("",))[0] == "AVAILABLE", "version 3")
    resp = predict.Predict(proto_request("poll", examples=EXAMPLES), timeout=TIMEOUT)
    assert resp.model_spec.version.value == 3
    close(tf.make_ndarray(resp.outputs["like"]), expected(v3, "serving_default", examples=EXAMPLES)["like"])
    status, body = rest(port, "POST", "/v1/models/poll:predict",
                        {"instances": [{"b64": base64.b64encode(e).decode()} for e in EXAMPLES]})
    assert status == 200, body
    close([p["like"] for p in body["predictions"]], expected(v3, "serving_default", examples=EXAMPLES)["like"])
    wait_for(lambda: statuses()["1"][0] == "END", "version 1 unloaded once 3 serves (latest policy)")
    with pytest.raises(grpc.RpcError) as err:
        predict.Predict(proto_request("poll", version=1, examples=EXAMPLES), timeout=TIMEOUT)
    assert err.value.code() == NOT_FOUND and "poll" in err.value.details()

    # rolling back = deleting the newer versions: 3 is unloaded (its directory is gone), 1 is latest again
    shutil.rmtree(v3)
    shutil.rmtree(model_dir / "2")
    wait_for(lambda: statuses().get("1", ("",))[0] == "AVAILABLE" and statuses()["3"][0] == "END", "rollback to 1")
    resp = predict.Predict(proto_request("poll", examples=EXAMPLES), timeout=TIMEOUT)
    assert resp.model_spec.version.value == 1


def test_models_config(base, tmp_path):
    config = tmp_path / "models.config"
    config.write_text(f'model_config_list {{\n  config {{\n    name: "cfg_toy"\n    base_path: "{base / "toy"}"\n'
                      '    model_platform: "tensorflow"\n    model_version_policy { specific { versions: 1 } }\n'
                      '    version_labels { key: "stable" value: 1 }\n  }\n}\n')
    with ModelServer(config, grpc_port=None, rest_port=0, host="127.0.0.1", poll_seconds=0) as srv:
        assert srv.registry.models() == {"cfg_toy": [1]}
        status, body = rest(srv.rest_port, "POST", "/v1/models/cfg_toy/labels/stable:predict",
                            {"inputs": {"examples": [{"b64": base64.b64encode(e).decode()} for e in EXAMPLES]}})
        assert status == 200, body
        close(body["outputs"]["like"], expected(base / "toy/1", "serving_default", examples=EXAMPLES)["like"])
        assert rest(srv.rest_port, "GET", "/v1/models/toy")[0] == 404


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_main_command_line(base):
    """`python -m tfrec_zoo.serving.server` (what `tfrec-zoo serve` runs) serves, and SIGTERM stops it cleanly."""
    grpc_port, rest_port = _free_port(), _free_port()
    env = {**os.environ, "TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.Popen([sys.executable, "-m", "tfrec_zoo.serving.server", "--model-base-dir", str(base),
                             "--grpc-port", str(grpc_port), "--rest-port", str(rest_port), "--host", "127.0.0.1",
                             "--poll-seconds", "0"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        def up() -> bool:
            assert proc.poll() is None, proc.communicate(timeout=TIMEOUT)[0].decode()[-2000:]
            try:
                return rest(rest_port, "GET", "/v1/models/toy")[0] == 200
            except (urllib.error.URLError, ConnectionError):
                return False

        wait_for(up, "the server process to answer")
        with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            resp = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(
                proto_request("toy", examples=EXAMPLES[:1]), timeout=TIMEOUT)
            assert tf.make_ndarray(resp.outputs["like"]).shape == (1,)
        proc.send_signal(signal.SIGTERM)
        out = proc.communicate(timeout=TIMEOUT)[0].decode()
        assert proc.returncode == 0, out[-2000:]
        assert "model toy: version 1 available (3 warmup requests replayed" in out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=TIMEOUT)
