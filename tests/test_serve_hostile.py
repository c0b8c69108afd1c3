"""The model server against hostile and heavy traffic: malformed HTTP, bytes that are no tf.Example, TensorProtos
that lie about their size, message limits, and server-side batching (answers equal to unbatched ones, one bad
request in a batch fails alone, a full queue answers UNAVAILABLE at once)."""
from __future__ import annotations

import base64
import json
import socket
import threading
import time
from concurrent import futures
from pathlib import Path

import grpc
import numpy as np
import pytest
from tensorflow_serving.apis import prediction_service_pb2_grpc

from test_serve import EXAMPLES, RAW, TIMEOUT, close, expected, export, proto_request, rest
from tfrec_zoo._tf import tf
from tfrec_zoo.serving.batching import BatchingParameters, BatchScheduler
from tfrec_zoo.serving.server import ModelServer, build_parser
from tfrec_zoo.serving.signatures import ServingError

INVALID = grpc.StatusCode.INVALID_ARGUMENT
RANDOM_BYTES = np.random.default_rng(7).bytes(64)


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("saved_models")
    (root / "toy").mkdir()
    export(root / "toy", 1, 1.0)
    return root


@pytest.fixture(scope="module", params=["unbatched", "batched"])
def server(base, request):
    # batched: a 50 ms window so concurrent requests really share batches
    batching = BatchingParameters(max_batch_size=64, batch_timeout_micros=50_000, num_batch_threads=2) \
        if request.param == "batched" else None
    srv = ModelServer(base, grpc_port=0, rest_port=0, poll_seconds=0, batching=batching, max_batch_size=64,
                      max_request_bytes=1 << 20)
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def predict(server):
    channel = grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}")
    grpc.channel_ready_future(channel).result(timeout=TIMEOUT)
    yield prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict
    channel.close()


def raw_http(port: int, request: bytes, wait: float = 5.0) -> tuple[int, bytes]:
    """Sends `request` as is; the status code and body of the answer, which must come within `wait` seconds."""
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as s:
        s.sendall(request)
        data = b""
        start = time.monotonic()
        while b"\r\n\r\n" not in data or len(data.split(b"\r\n\r\n", 1)[1]) < _length(data):
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
            assert time.monotonic() - start < wait, data
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


def _length(data: bytes) -> int:
    for line in data.split(b"\r\n\r\n", 1)[0].split(b"\r\n")[1:]:
        k, _, v = line.partition(b":")
        if k.strip().lower() == b"content-length":
            return int(v)
    return 0


def test_default_bind_is_loopback_and_limits_are_set():
    args = build_parser().parse_args([])
    assert args.host == "127.0.0.1"
    assert args.max_batch_size == 1024 and args.max_request_bytes == 64 << 20
    assert "no auth" in build_parser().format_help()


@pytest.mark.parametrize("header", [b"Content-Length: abc", b"Content-Length: -1", b"Content-Length: 1e3"])
def test_bad_content_length_is_400_at_once(server, header):
    status, _ = raw_http(server.rest_port, b"POST /v1/models/toy:predict HTTP/1.1\r\nHost: x\r\n" + header +
                         b"\r\n\r\n{}")
    assert status == 400


def test_deep_json_and_deep_lists_are_400(server):
    deep = b"[" * 100_000 + b"]" * 100_000
    status, answer = rest(server.rest_port, "POST", "/v1/models/toy:predict", b'{"instances": ' + deep + b"}")
    assert status == 400 and "nested" in answer["error"], answer
    nested = json.dumps({"signature_name": "raw", "inputs": {"x": [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1.0]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]],
                                                        "cat": [1], "tag": ["a"]}}).encode()
    status, answer = rest(server.rest_port, "POST", "/v1/models/toy:predict", nested)
    assert status == 400 and "nested deeper" in answer["error"], answer


def test_body_over_the_limit_is_413_and_grpc_resource_exhausted(server, predict):
    big = json.dumps({"instances": [{"b64": base64.b64encode(b"x" * 1000).decode()}] * 1500}).encode()
    assert len(big) > 1 << 20
    status, answer = rest(server.rest_port, "POST", "/v1/models/toy:predict", big)
    assert status == 413 and "--max-request-bytes" in answer["error"], answer
    with pytest.raises(grpc.RpcError) as err:
        predict(proto_request("toy", examples=[b"x" * (2 << 20)]), timeout=TIMEOUT)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_random_bytes_as_an_example_is_invalid_argument(server, predict):
    with pytest.raises(grpc.RpcError) as err:
        predict(proto_request("toy", examples=[RANDOM_BYTES]), timeout=TIMEOUT)
    assert err.value.code() == INVALID and "tf.Example" in err.value.details(), err.value.details()
    body = {"instances": [{"b64": base64.b64encode(RANDOM_BYTES).decode()}]}
    status, answer = rest(server.rest_port, "POST", "/v1/models/toy:predict", body)
    assert status == 400 and "tf.Example" in answer["error"], answer


def test_tensor_protos_that_lie_about_their_size(server, predict):
    req = proto_request("toy", examples=EXAMPLES[:1])
    req.inputs["examples"].tensor_shape.dim[0].size = 100_000_000_000   # one value, 1e11 claimed
    with pytest.raises(grpc.RpcError) as err:
        predict(req, timeout=TIMEOUT)
    assert err.value.code() == INVALID and "1000000" in err.value.details(), err.value.details()

    req = proto_request("toy", "raw", **RAW)                            # 4 rows of x in tensor_content ...
    req.inputs["x"].tensor_shape.dim[0].size = 400                      # ... claiming 400
    with pytest.raises(grpc.RpcError) as err:
        predict(req, timeout=TIMEOUT)
    assert err.value.code() == INVALID and "tensor_content" in err.value.details(), err.value.details()

    req = proto_request("toy", "raw", **RAW)
    req.inputs["x"].tensor_shape.dim[0].size = -4
    with pytest.raises(grpc.RpcError) as err:
        predict(req, timeout=TIMEOUT)
    assert err.value.code() == INVALID and "negative" in err.value.details()


def test_concurrent_requests_get_their_own_rows(base, server, predict):
    """32 clients at once, each with its own examples: every answer equals the model's on exactly those rows
    (batched: rows of different requests share a batch and must come back to the right request)."""
    want = expected(base / "toy" / "1", "serving_default", examples=np.array(EXAMPLES, object))
    before = server.scheduler.batches_run if server.scheduler else 0

    def one(i: int) -> None:
        rows = [i % 4, (i + 1) % 4] if i % 2 else [i % 4]
        if i % 3:
            out = predict(proto_request("toy", examples=[EXAMPLES[r] for r in rows]), timeout=TIMEOUT).outputs
            like = tf.make_ndarray(out["like"])
        else:
            body = {"instances": [{"b64": base64.b64encode(EXAMPLES[r]).decode()} for r in rows]}
            status, answer = rest(server.rest_port, "POST", "/v1/models/toy:predict", body)
            assert status == 200, answer
            like = np.array([p["like"] for p in answer["predictions"]])
        close(like, want["like"][rows])

    with futures.ThreadPoolExecutor(32) as pool:
        list(pool.map(one, range(64)))
    if server.scheduler:
        assert server.scheduler.batches_run - before < 64, "no two requests shared a batch"


def test_a_bad_request_in_a_batch_fails_alone(server, predict):
    """With batching, a request whose bytes do not parse is batched with good ones: only it fails."""
    results: dict[int, object] = {}

    def one(i: int) -> None:
        examples = [RANDOM_BYTES] if i == 5 else EXAMPLES[:2]
        try:
            results[i] = predict(proto_request("toy", examples=examples), timeout=TIMEOUT)
        except grpc.RpcError as e:
            results[i] = e.code()

    threads = [threading.Thread(target=one, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(TIMEOUT)
    assert results.pop(5) == INVALID
    assert all(not isinstance(r, grpc.StatusCode) for r in results.values()), results


def test_scheduler_full_queue_is_unavailable_at_once():
    """One batch runs (its model blocked), one waits (max_enqueued_batches=1): the next request is refused now."""
    release, started = threading.Event(), threading.Event()

    def model(arrays):
        started.set()
        release.wait(TIMEOUT)
        return {"y": arrays["x"] * 2}

    sched = BatchScheduler(BatchingParameters(max_batch_size=2, max_enqueued_batches=1, num_batch_threads=1))
    try:
        with futures.ThreadPoolExecutor(2) as pool:
            running = pool.submit(sched.run, "k", model, {"x": np.array([1.0, 2.0])}, 2)
            assert started.wait(TIMEOUT)
            waiting = pool.submit(sched.run, "k", model, {"x": np.array([3.0, 4.0])}, 2)
            time.sleep(0.2)
            t0 = time.monotonic()
            with pytest.raises(ServingError) as err:
                sched.run("k", model, {"x": np.array([5.0])}, 1)
            assert err.value.code == grpc.StatusCode.UNAVAILABLE and time.monotonic() - t0 < 1.0
            with pytest.raises(ServingError) as err:   # larger than a batch: never fits, INVALID_ARGUMENT
                sched.run("k", model, {"x": np.zeros(3)}, 3)
            assert err.value.code == INVALID
            release.set()
            assert running.result(TIMEOUT)["y"].tolist() == [2.0, 4.0]
            assert waiting.result(TIMEOUT)["y"].tolist() == [6.0, 8.0]
    finally:
        release.set()
        sched.stop()


def test_scheduler_fills_batches_and_splits_them_back():
    calls = []

    def model(arrays):
        calls.append(len(arrays["x"]))
        return {"y": arrays["x"] + 1, "n": np.full(len(arrays["x"]), len(arrays["x"]))}

    sched = BatchScheduler(BatchingParameters(max_batch_size=8, batch_timeout_micros=200_000, num_batch_threads=1))
    try:
        with futures.ThreadPoolExecutor(4) as pool:
            outs = list(pool.map(lambda i: sched.run("k", model, {"x": np.arange(2) + 10 * i}, 2), range(4)))
    finally:
        sched.stop()
    assert calls == [8]                                      # four requests of 2 rows: one full batch
    assert [o["y"].tolist() for o in outs] == [[1 + 10 * i, 2 + 10 * i] for i in range(4)]
    assert all(o["n"].tolist() == [8, 8] for o in outs)


def test_batching_parameters_file(tmp_path):
    f = tmp_path / "batching.config"
    f.write_text("max_batch_size { value: 128 }\nbatch_timeout_micros { value: 500 }  # half a millisecond\n"
                 "num_batch_threads { value: 3 }\n")
    p = BatchingParameters.from_file(f, BatchingParameters(max_batch_size=7, max_enqueued_batches=4),
                                     num_batch_threads=None)
    assert (p.max_batch_size, p.batch_timeout_micros, p.num_batch_threads, p.max_enqueued_batches) == (128, 500, 3, 4)
    f.write_text("max_batch_size { value: 128 }\nallowed_batch_sizes: 32\n")
    with pytest.raises(ValueError, match="allowed_batch_sizes"):
        BatchingParameters.from_file(f)
    f.write_text("pad_variable_length_inputs { value: true }\n")
    with pytest.raises(ValueError, match="pad_variable_length_inputs"):
        BatchingParameters.from_file(f)
    with pytest.raises(ValueError, match="max_batch_size"):
        BatchingParameters(max_batch_size=0)


def test_requests_over_the_in_flight_limit_get_503_at_once(base):
    """One request held in a batch (a 3 s window) fills `max_in_flight=1`: the next is refused now, not queued."""
    from tfrec_zoo.serving.registry import ModelRegistry
    from tfrec_zoo.serving.rest import RestServer

    sched = BatchScheduler(BatchingParameters(max_batch_size=64, batch_timeout_micros=3_000_000, num_batch_threads=1))
    registry = ModelRegistry(base, scheduler=sched, enable_warmup=False)
    registry.poll()
    rest_server = RestServer(registry, "127.0.0.1", 0, max_in_flight=1, body_timeout=1.0)
    rest_server.start()
    body = {"instances": [{"b64": base64.b64encode(EXAMPLES[0]).decode()}]}
    try:
        with futures.ThreadPoolExecutor(1) as pool:
            held = pool.submit(rest, rest_server.port, "POST", "/v1/models/toy:predict", body)
            time.sleep(0.5)
            t0 = time.monotonic()
            status, answer = rest(rest_server.port, "POST", "/v1/models/toy:predict", body)
            assert status == 503 and "in flight" in answer["error"] and time.monotonic() - t0 < 1.0, answer
            assert held.result(TIMEOUT)[0] == 200
        # a body that never arrives: 408 after body_timeout, the connection is not held forever
        status, body = raw_http(rest_server.port, b"POST /v1/models/toy:predict HTTP/1.1\r\nHost: x\r\n"
                                                  b"Content-Length: 100\r\n\r\n{\"instances\"")
        assert status == 408 and b"did not arrive" in body
    finally:
        rest_server.stop()
        sched.stop()
