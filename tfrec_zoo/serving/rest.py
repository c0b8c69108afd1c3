"""The REST side, shaped like TF Serving's REST API (https://www.tensorflow.org/tfx/serving/api_rest):

    POST /v1/models/NAME[/versions/N | /labels/L]:predict    {"instances": [...]} -> {"predictions": [...]}
                                                             {"inputs": ...}      -> {"outputs": ...}
    GET  /v1/models/NAME[/versions/N | /labels/L]            {"model_version_status": [...]}
    GET  /v1/models/NAME[/versions/N | /labels/L]/metadata   {"model_spec": ..., "metadata": {"signature_def": ...}}

Errors are {"error": "..."} with the HTTP status TF Serving maps the gRPC code to. Binary strings travel as
{"b64": "..."} both ways (a string output is base64'd when its name ends in `_bytes` or it is not UTF-8).
The HTTP stack is aiohttp, chosen on measurement (README, "Serving under load"): under 256 concurrent clients the
standard library's ThreadingHTTPServer reset connections (listen backlog 5) and reached a 4.5 s p99, aiohttp held
p99 under 0.1 s with no error, level with uvicorn + uvloop and far ahead of waitress.
"""
from __future__ import annotations

import asyncio
import base64
import json
import logging
import re
import threading
import time
from concurrent import futures
from typing import Any

import aiohttp
import aiohttp.http_exceptions
import grpc
import numpy as np
from aiohttp import web
from google.protobuf import json_format

from .._tf import tf
from .registry import LoadedVersion, ModelRegistry
from .signatures import ServingError, Signature, invalid, not_found

log = logging.getLogger(__name__)

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


MAX_RANK = 32  # no tensor of a signature has more dimensions: deeper nesting is refused before recursing further


def _flatten(v: Any, out: list, name: str, depth: int = 0) -> tuple[int, ...]:
    if not isinstance(v, list):
        out.append(v)
        return ()
    if depth >= MAX_RANK:
        raise invalid(f"input {name!r}: lists nested deeper than {MAX_RANK} levels: no input has that many "
                      "dimensions")
    shapes = [_flatten(x, out, name, depth + 1) for x in v]
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


def answer(registry: ModelRegistry, method: str, path: str, body: bytes) -> tuple[int, dict]:
    """One request -> (HTTP status, JSON payload). Runs on a worker thread: JSON decoding and the model are
    CPU work the event loop must not wait on."""
    try:
        return 200, _route(registry, method, path, body)
    except ServingError as e:
        return _HTTP_STATUS.get(e.code, 500), {"error": e.message}
    except Exception as e:  # a bug must not kill the server; the client learns what broke
        log.exception("REST %s %s failed", method, path)
        return 500, {"error": f"{type(e).__name__}: {e}"}


def _route(registry: ModelRegistry, method: str, path: str, body: bytes) -> dict:
    m = _URL.fullmatch(path)
    verb = m and m["verb"]
    if not m or (method == "GET") != (verb in (None, "/metadata")) or method not in ("GET", "POST"):
        raise not_found(f"Malformed request: {method} {path}")
    name, label = m["name"], m["label"]
    version = int(m["version"]) if m["version"] else None
    if verb is None:
        if label:
            version = registry.resolve(name, label=label).version
        return status_json(registry, name, version)
    lv = registry.resolve(name, version, label)
    if verb == "/metadata":
        return metadata_json(lv)
    if verb != ":predict":
        raise ServingError(grpc.StatusCode.UNIMPLEMENTED, f"{verb[1:]} is not served: the models have predict "
                                                          "signatures, use :predict")
    try:
        request = json.loads(body)
    except RecursionError:
        raise invalid("JSON Parse error: nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise invalid(f"JSON Parse error: {e}") from e
    sig, arrays, rows = parse_predict(request, lv)
    return format_predict(sig.run(arrays), rows)


class RestServer:
    """The REST API on aiohttp (an asyncio HTTP server with a C request parser), its event loop on a thread of its
    own; requests are decoded and run on a pool of `workers` threads.

    Limits, each answered at once with a JSON error: a body over `max_request_bytes` (413), a body that does not
    arrive within `body_timeout` seconds (408), more than `max_in_flight` requests at a time (503: the client backs
    off, nothing is reset). A malformed request line or header (`Content-Length: abc`) is aiohttp's 400."""

    def __init__(self, registry: ModelRegistry, host: str, port: int, *, max_request_bytes: int = 64 << 20,
                 workers: int = 16, max_in_flight: int = 1024, body_timeout: float = 30.0, backlog: int = 1024):
        self.registry, self.host, self.max_request_bytes = registry, host, max_request_bytes
        self.max_in_flight, self.body_timeout = max_in_flight, body_timeout
        self._pool = futures.ThreadPoolExecutor(workers, thread_name_prefix="rest")
        self._in_flight = 0
        self._loop = asyncio.new_event_loop()
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None
        app = web.Application(client_max_size=max_request_bytes, handler_args={"max_field_size": 16384})
        app.router.add_route("*", "/{path:.*}", self._handle)
        try:
            self.port = self._loop.run_until_complete(self._start(app, port, backlog))
        except OSError as e:
            self._loop.close()
            raise OSError(f"REST: cannot bind {host}:{port}: {e}") from e

    async def _start(self, app: web.Application, port: int, backlog: int) -> int:
        # shutdown_timeout: stop() lets in-flight requests finish for this long (aiohttp's default is 60 s)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False, keepalive_timeout=60,
                                     shutdown_timeout=2.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, port, backlog=backlog, reuse_address=True)
        try:
            await site.start()
        except OSError:
            await self._runner.cleanup()
            raise
        return site._server.sockets[0].getsockname()[1]

    async def _handle(self, request: web.Request) -> web.Response:
        start, method, path = time.perf_counter(), request.method, request.path
        if self._in_flight >= self.max_in_flight:
            status, payload = 503, {"error": f"the server has {self._in_flight} requests in flight (its limit): retry "
                                             "later"}
        else:
            self._in_flight += 1
            try:
                status, payload = await self._answer(request, method, path)
            finally:
                self._in_flight -= 1
        log.debug("REST %s %s -> %d %.1fms %s", method, path, status, 1000 * (time.perf_counter() - start),
                  payload.get("error", ""))
        return web.Response(status=status, body=json.dumps(payload).encode(), content_type="application/json")

    async def _answer(self, request: web.Request, method: str, path: str) -> tuple[int, dict]:
        try:
            body = await asyncio.wait_for(request.read(), self.body_timeout) if method == "POST" else b""
        except web.HTTPRequestEntityTooLarge:
            return 413, {"error": f"request body over the limit of {self.max_request_bytes} bytes "
                                  "(--max-request-bytes): split the request"}
        except asyncio.TimeoutError:
            return 408, {"error": f"the request body did not arrive within {self.body_timeout:.0f}s"}
        except (ConnectionError, aiohttp.ClientPayloadError, aiohttp.http_exceptions.HttpProcessingError) as e:
            return 400, {"error": f"malformed request body: {e}"}
        return await self._loop.run_in_executor(self._pool, answer, self.registry, method, path, body)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop.run_forever, name="model-server-rest", daemon=True)
        self._thread.start()

    async def _shutdown(self) -> None:
        await self._runner.cleanup()  # closes the listener, then lets in-flight requests finish (shutdown_timeout)
        rest = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for t in rest:  # idle keep-alive connections
            t.cancel()
        await asyncio.gather(*rest, return_exceptions=True)

    def stop(self, grace: float = 2.0) -> None:
        if self._runner is not None and self._thread is not None:
            try:
                asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(grace + 10)
            except Exception:  # stopping must finish: a hung connection is dropped with the loop
                log.debug("REST shutdown", exc_info=True)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(grace + 5)
        self._runner = self._thread = None
        self._pool.shutdown(wait=False, cancel_futures=True)
        if not self._loop.is_running():
            self._loop.close()
