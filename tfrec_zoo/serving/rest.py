"""The REST side, shaped like TF Serving's REST API (https://www.tensorflow.org/tfx/serving/api_rest):

    POST /v1/models/NAME[/versions/N | /labels/L]:predict    {"instances": [...]} -> {"predictions": [...]}
                                                             {"inputs": ...}      -> {"outputs": ...}
    GET  /v1/models/NAME[/versions/N | /labels/L]            {"model_version_status": [...]}
    GET  /v1/models/NAME[/versions/N | /labels/L]/metadata   {"model_spec": ..., "metadata": {"signature_def": ...}}

Errors are {"error": "..."} with the HTTP status TF Serving maps the gRPC code to. Binary strings travel as
{"b64": "..."} both ways (a string output is base64'd when its name ends in `_bytes` or it is not UTF-8).
Only the standard library: ThreadingHTTPServer, one thread per connection.
"""
from __future__ import annotations

import base64
import json
import logging
import re
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import grpc
import numpy as np
from google.protobuf import json_format

from .._tf import tf
from .registry import LoadedVersion, ModelRegistry
from .signatures import ServingError, Signature, invalid, not_found

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 256 << 20  # a request body larger than this is refused before it is read
_URL = re.compile(r"/v1/models/(?P<name>[^/:]+)(?:/versions/(?P<version>[0-9]+)|/labels/(?P<label>[^/:]+))?"
                  r"(?P<verb>/metadata|:predict|:classify|:regress)?")
_HTTP_STATUS = {  # TF Serving's ToHTTPStatusCode
    grpc.StatusCode.OK: 200, grpc.StatusCode.CANCELLED: 499, grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.FAILED_PRECONDITION: 400, grpc.StatusCode.OUT_OF_RANGE: 400, grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409, grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429, grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.UNIMPLEMENTED: 501, grpc.StatusCode.UNAVAILABLE: 503, grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}


def _is_b64(v: Any) -> bool:
    return isinstance(v, dict) and len(v) == 1 and "b64" in v


def _leaf(v: Any, dtype: tf.DType, name: str) -> Any:
    """One JSON scalar checked against the input's dtype (JSON's number/bool/string are not interchangeable)."""
    if dtype == tf.string:
        if isinstance(v, str):
            return v.encode()
        if _is_b64(v) and isinstance(v["b64"], str):
            try:
                return base64.b64decode(v["b64"], validate=True)
            except ValueError as e:
                raise invalid(f"input {name!r}: invalid base64 in {{\"b64\": ...}}: {e}") from e
    elif dtype == tf.bool:
        if isinstance(v, bool):
            return v
    elif dtype.is_integer:
        if isinstance(v, int) and not isinstance(v, bool):
            return v
    elif dtype.is_floating or dtype.is_complex:
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return v
    kind = "base64 object" if _is_b64(v) else type(v).__name__
    raise invalid(f"input {name!r}: JSON value {json.dumps(v)[:80]} ({kind}) is not of expected type {dtype.name}")


def _flatten(v: Any, out: list, name: str) -> tuple[int, ...]:
    if not isinstance(v, list):
        out.append(v)
        return ()
    shapes = [_flatten(x, out, name) for x in v]
    if any(s != shapes[0] for s in shapes):
        raise invalid(f"input {name!r}: ragged nested lists (element shapes {sorted(set(shapes))}): a tensor needs "
                      "the same length at every level")
    return (len(v),) + (shapes[0] if shapes else ())


def json_to_array(value: Any, sig: Signature, name: str) -> np.ndarray:
    dtype = sig.inputs[name].dtype
    leaves: list = []
    shape = _flatten(value, leaves, name)
    values = [_leaf(x, dtype, name) for x in leaves]
    try:
        arr = np.array(values, dtype=object if dtype == tf.string else dtype.as_numpy_dtype)
    except (OverflowError, ValueError) as e:
        raise invalid(f"input {name!r}: values do not fit {dtype.name}: {e}") from e
    return arr.reshape(shape)


def _named(value: Any) -> bool:
    return isinstance(value, dict) and not _is_b64(value)


def parse_predict(body: Any, lv: LoadedVersion) -> tuple[Signature, dict[str, np.ndarray], bool]:
    """The request JSON -> (signature, input arrays, row format?)."""
    if not isinstance(body, dict):
        raise invalid("the request body must be a JSON object with 'instances' or 'inputs'")
    sig = lv.signature(body.get("signature_name") or "")
    if ("instances" in body) == ("inputs" in body):
        raise invalid("Missing 'inputs' or 'instances' key" if "inputs" not in body else
                      "Not both 'instances' and 'inputs' can be specified: use one format")
    if "inputs" in body:  # columnar: each input's whole tensor, or the one input's tensor
        inputs = body["inputs"]
        columns = inputs if _named(inputs) else {_single_input(sig): inputs}
        sig.check_names(columns)
        return sig, {k: json_to_array(v, sig, k) for k, v in columns.items()}, False
    rows = body["instances"]
    if not isinstance(rows, list) or not rows:
        raise invalid("'instances' must be a non-empty list (one element per example)")
    if not any(_named(r) for r in rows):  # each row is the one input's value
        only = _single_input(sig)
        return sig, {only: json_to_array(rows, sig, only)}, True
    for i, row in enumerate(rows):
        if not _named(row):
            raise invalid(f"instances[{i}] is not an object: with named inputs every instance names them")
        try:
            sig.check_names(row)
        except ServingError as e:
            raise invalid(f"instances[{i}]: {e.message}") from e
    return sig, {k: json_to_array([r[k] for r in rows], sig, k) for k in sig.inputs}, True


def _single_input(sig: Signature) -> str:
    if len(sig.inputs) != 1:
        raise invalid(f"signature {sig.name!r} has {len(sig.inputs)} inputs ({', '.join(sorted(sig.inputs))}): "
                      "name them (an object per instance, or an object for 'inputs')")
    return next(iter(sig.inputs))


def _jsonable(arr: np.ndarray, name: str) -> Any:
    if arr.dtype != object:
        return arr.tolist()
    as_b64 = name.endswith("_bytes")

    def enc(b: bytes) -> Any:
        if not as_b64:
            try:
                return b.decode()
            except UnicodeDecodeError:
                pass
        return {"b64": base64.b64encode(b).decode()}

    return np.frompyfunc(enc, 1, 1)(arr).tolist() if arr.ndim else enc(arr.item())


def format_predict(outputs: dict[str, np.ndarray], rows: bool) -> dict:
    if not rows:
        cols = {k: _jsonable(v, k) for k, v in outputs.items()}
        return {"outputs": next(iter(cols.values())) if len(cols) == 1 else cols}
    sizes = {k: v.shape[0] if v.ndim else None for k, v in outputs.items()}
    if None in sizes.values() or len(set(sizes.values())) > 1:
        raise invalid(f"outputs do not share a batch dimension ({sizes}): use the columnar 'inputs' format")
    cols = {k: _jsonable(v, k) for k, v in outputs.items()}
    if len(cols) == 1:
        return {"predictions": next(iter(cols.values()))}
    n = next(iter(sizes.values()))
    return {"predictions": [{k: c[i] for k, c in cols.items()} for i in range(n)]}


def status_json(registry: ModelRegistry, name: str, version: int | None) -> dict:
    return {"model_version_status": [
        {"version": str(v), "state": st.state, "status": {"error_code": st.code.name, "error_message": st.error}}
        for v, st in registry.status(name, version).items()]}


def metadata_json(lv: LoadedVersion) -> dict:
    return {"model_spec": {"name": lv.name, "signature_name": "", "version": str(lv.version)},
            "metadata": {"signature_def": json_format.MessageToDict(lv.signature_def_map,
                                                                    preserving_proto_field_name=True)}}


class RestHandler(BaseHTTPRequestHandler):
    """One request: route, answer JSON, log one debug line."""

    registry: ModelRegistry  # set on the subclass make_rest_server builds
    protocol_version = "HTTP/1.1"  # keep-alive, as TF Serving; every answer carries Content-Length
    timeout = 60  # an idle keep-alive connection releases its thread
    server_version = "tfrec-zoo-serving"

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def _handle(self, method: str) -> None:
        start, status, payload = time.perf_counter(), 200, {}
        try:
            body = self._body() if method == "POST" else b""
            payload = self._route(method, body)
        except ServingError as e:
            status, payload = _HTTP_STATUS.get(e.code, 500), {"error": e.message}
        except Exception as e:  # a bug must not kill the server; the client learns what broke
            log.exception("REST %s %s failed", method, self.path)
            status, payload = 500, {"error": f"{type(e).__name__}: {e}"}
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
        log.debug("REST %s %s -> %d %.1fms %s", method, self.path, status, 1000 * (time.perf_counter() - start),
                  payload.get("error", ""))

    def _body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            self.close_connection = True
            raise ServingError(grpc.StatusCode.UNIMPLEMENTED, "chunked request bodies are not supported: send "
                                                              "Content-Length")
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY_BYTES:
            self.close_connection = True  # the unread body would be taken for the next request
            raise invalid(f"request body of {length} bytes is over the limit of {MAX_BODY_BYTES}")
        return self.rfile.read(length)

    def _route(self, method: str, body: bytes) -> dict:
        m = _URL.fullmatch(self.path.split("?", 1)[0])
        verb = m and m["verb"]
        if not m or (method == "GET") != (verb in (None, "/metadata")):
            raise not_found(f"Malformed request: {method} {self.path}")
        name, label = m["name"], m["label"]
        version = int(m["version"]) if m["version"] else None
        if verb is None:
            if label:
                version = self.registry.resolve(name, label=label).version
            return status_json(self.registry, name, version)
        lv = self.registry.resolve(name, version, label)
        if verb == "/metadata":
            return metadata_json(lv)
        if verb != ":predict":
            raise ServingError(grpc.StatusCode.UNIMPLEMENTED, f"{verb[1:]} is not served: the models have predict "
                                                              "signatures, use :predict")
        try:
            request = json.loads(body)
        except (ValueError, UnicodeDecodeError) as e:
            raise invalid(f"JSON Parse error: {e}") from e
        sig, arrays, rows = parse_predict(request, lv)
        return format_predict(sig.run(arrays), rows)

    def log_request(self, code: Any = "-", size: Any = "-") -> None:
        pass  # _handle logs the one line per request, with its duration and error

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class' signature
        log.debug("REST %s: " + format, self.address_string(), *args)


class _RestServer(ThreadingHTTPServer):
    daemon_threads = True  # stop() does not wait for idle keep-alive connections

    def handle_error(self, request: Any, client_address: Any) -> None:
        # a client that hangs up mid-answer is routine: no traceback on stderr (socketserver's default)
        log.debug("REST connection from %s dropped", client_address, exc_info=True)


def make_rest_server(registry: ModelRegistry, host: str, port: int) -> ThreadingHTTPServer:
    handler = type("BoundRestHandler", (RestHandler,), {"registry": registry})
    try:
        return _RestServer((host, port), handler)
    except OSError as e:
        raise OSError(f"REST: cannot bind {host}:{port}: {e}") from e
