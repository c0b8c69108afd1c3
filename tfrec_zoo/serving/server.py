"""A model server speaking TF Serving's APIs, for machines where `tensorflow_model_server` cannot be installed.

    tfrec-zoo serve --model-base-dir saved_models --grpc-port 8500 --rest-port 8501
    tfrec-zoo serve --model-config-file saved_models/models.config --max-batch-size 512
    tfrec-zoo serve --enable-batching --batching-parameters-file batching.config   # TF Serving's file format
    tfrec-zoo serve --host 0.0.0.0      # listen on every interface (default: 127.0.0.1, this machine only)

No authentication and no TLS: anyone who can reach the ports can call the models. Bind 127.0.0.1 (the default) or
put it behind a proxy that terminates TLS and authenticates (nginx, Envoy, a service mesh) before opening it.

Production runs TF Serving itself on the same directory, with the same ports and the same clients:

    tensorflow_model_server --port=8500 --rest_api_port=8501 \\
        --model_config_file=saved_models/models.config --model_config_file_poll_wait_seconds=60 \\
        --file_system_poll_wait_seconds=2 --enable_model_warmup=true
    # or, one model:  --model_name=NAME --model_base_path=$PWD/saved_models/NAME
    # and --enable_batching --batching_parameters_file=batching.config for max_batch_size

gRPC: tensorflow.serving.PredictionService/{Predict, GetModelMetadata}, tensorflow.serving.ModelService/
GetModelStatus (stock `tensorflow_serving.apis` stubs). REST: see rest.py. The model source, version policy,
polling, warmup replay, batching (batching.py) and error codes follow TF Serving (see registry.py); what is not
covered: Classify, Regress, MultiInference, config reload over gRPC, batching's allowed_batch_sizes / padding.

Limits (each refused at once with a clear error, never a reset): requests over --max-request-bytes (gRPC
RESOURCE_EXHAUSTED, REST 413), batches over --max-batch-size (INVALID_ARGUMENT / 400), more than --max-in-flight
requests at a time (gRPC RESOURCE_EXHAUSTED, REST 503), a full batching queue (UNAVAILABLE / 503).
"""
from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from concurrent import futures
from pathlib import Path

import grpc

from .batching import BatchingParameters, BatchScheduler
from .grpc_service import add_servicers
from .registry import ModelRegistry
from .rest import RestServer

log = logging.getLogger(__name__)
DEFAULT_MAX_BATCH = 1024              # rows in one request (TF Serving's batching default is 1000)
DEFAULT_MAX_REQUEST_BYTES = 64 << 20  # one request's bytes, gRPC and REST
# request threads per API: measured side by side at 64 clients with batching (wrk, README), 16 threads against 64
# cut p99 from 242-277 to 98 ms for 20% less throughput (fewer threads contend less for the GIL); requests beyond
# them wait in the queue
DEFAULT_WORKERS = 16


class ModelServer:
    """gRPC + REST over the models under `source` (a base dir with one sub-dir per model, one model's base path,
    or a models.config). Ports: an int binds that port (0: a free one, see `.grpc_port`), None: that API off."""

    def __init__(self, source: str | Path, *, grpc_port: int | None = 8500, rest_port: int | None = 8501,
                 host: str = "127.0.0.1", poll_seconds: float = 2.0, max_batch_size: int | None = DEFAULT_MAX_BATCH,
                 enable_warmup: bool = True, batching: BatchingParameters | None = None,
                 max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES, workers: int = DEFAULT_WORKERS,
                 max_in_flight: int = 1024):
        """`batching`: server-side batching with these parameters (None: off, as TF Serving without
        --enable_batching); its max_batch_size is then the request limit too. `workers` threads per API run
        requests (with batching they wait for their batch, so more threads make fuller batches)."""
        self.scheduler = BatchScheduler(batching) if batching is not None else None
        limit = batching.max_batch_size if batching is not None else max_batch_size
        self.registry = ModelRegistry(source, max_batch_size=limit, enable_warmup=enable_warmup,
                                      scheduler=self.scheduler)
        self.host, self.poll_seconds, self.workers = host, poll_seconds, workers
        self.max_request_bytes, self.max_in_flight = max_request_bytes, max_in_flight
        self._want_grpc, self._want_rest = grpc_port, rest_port
        self.grpc_port: int | None = None
        self.rest_port: int | None = None
        self._grpc: grpc.Server | None = None
        self._rest = None
        self._threads: list[threading.Thread] = []
        self._stopped = threading.Event()
        self._started = False

    def start(self) -> "ModelServer":
        """Loads what is there now (so the first request finds it), then opens the ports and starts polling."""
        if self._started:
            return self
        self._started = True
        self.registry.poll()
        try:
            if self._want_grpc is not None:
                self._start_grpc()
            if self._want_rest is not None:
                self._rest = RestServer(self.registry, self.host, self._want_rest, workers=self.workers,
                                        max_request_bytes=self.max_request_bytes, max_in_flight=self.max_in_flight)
                self.rest_port = self._rest.port
                self._rest.start()
        except BaseException:
            self.stop()
            raise
        if self.poll_seconds > 0:
            self._spawn("poll", self._poll_loop)
        log.info("serving %s; gRPC %s, REST %s", self.registry.models() or "no models yet",
                 f"{self.host}:{self.grpc_port}" if self.grpc_port else "off",
                 f"{self.host}:{self.rest_port}" if self.rest_port else "off")
        return self

    def _start_grpc(self) -> None:
        # a batch of serialized examples easily passes gRPC's 4 MiB default: the limit is ours (--max-request-bytes)
        options = [("grpc.max_receive_message_length", self.max_request_bytes),
                   ("grpc.max_send_message_length", -1),
                   ("grpc.so_reuseport", 0)]  # 0: a port in use is an error, not a silently shared listener
        self._grpc = grpc.server(futures.ThreadPoolExecutor(self.workers, thread_name_prefix="grpc"),
                                 options=options, maximum_concurrent_rpcs=self.max_in_flight)
        add_servicers(self._grpc, self.registry)
        address = f"{self.host}:{self._want_grpc}"
        try:
            port = self._grpc.add_insecure_port(address)
        except RuntimeError as e:
            raise OSError(f"gRPC: cannot bind {address}: {e}") from e
        if not port:
            raise OSError(f"gRPC: cannot bind {address} (in use?)")
        self.grpc_port = port
        self._grpc.start()

    def _spawn(self, name: str, target) -> None:
        t = threading.Thread(target=target, name=f"model-server-{name}", daemon=True)
        t.start()
        self._threads.append(t)

    def _poll_loop(self) -> None:
        while not self._stopped.wait(self.poll_seconds):
            try:
                self.registry.poll()
            except Exception:  # a transient disk or config problem: log it, keep serving, try again next time
                log.exception("polling %s failed", self.registry.source)

    def stop(self, grace: float = 2.0) -> None:
        """Stops polling and both APIs; in-flight gRPC calls get `grace` seconds. Safe to call twice."""
        self._stopped.set()
        if self._rest is not None:
            self._rest.stop(grace)
            self._rest = None
        if self._grpc is not None:
            self._grpc.stop(grace).wait(grace + 5)
            self._grpc = None
        if self.scheduler is not None:
            self.scheduler.stop()
        for t in self._threads:
            t.join(timeout=grace + 5)
        self._threads = []

    def serve_forever(self) -> None:
        """start(), then block until stop() (from another thread or a signal handler) or Ctrl-C."""
        self.start()
        try:
            while not self._stopped.wait(1.0):
                pass
        except KeyboardInterrupt:
            pass
        finally:
            self.stop()

    def __enter__(self) -> "ModelServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def build_parser(prog: str = "tfrec-zoo serve") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    src = p.add_mutually_exclusive_group()
    src.add_argument("--model-base-dir", default="saved_models",
                     help="one sub-directory per model (NAME/<version>/saved_model.pb); default: saved_models")
    src.add_argument("--model-config-file", help="TF Serving's models.config (model_config_list), instead")
    p.add_argument("--grpc-port", type=int, default=8500, help="0: no gRPC (default 8500)")
    p.add_argument("--rest-port", type=int, default=8501, help="0: no REST (default 8501)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1; 0.0.0.0 opens it to the network: no auth, no TLS)")
    p.add_argument("--poll-seconds", type=float, default=2.0, help="look for new versions this often; 0: never")
    p.add_argument("--max-batch-size", type=int, default=DEFAULT_MAX_BATCH,
                   help=f"refuse requests of more rows (default {DEFAULT_MAX_BATCH}; 0: no limit); with "
                        "--enable-batching, the batch size unless the batching file sets max_batch_size")
    p.add_argument("--enable-batching", action="store_true",
                   help="batch concurrent requests on the server (TF Serving's --enable_batching)")
    p.add_argument("--batching-parameters-file",
                   help="TF Serving's batching file (max_batch_size, batch_timeout_micros, max_enqueued_batches, "
                        "num_batch_threads); implies --enable-batching")
    p.add_argument("--batch-timeout-micros", type=int, help="batching: how long a batch waits to fill (default 0)")
    p.add_argument("--num-batch-threads", type=int, help="batching: batches run at once (default: CPU count)")
    p.add_argument("--max-enqueued-batches", type=int,
                   help="batching: queued batches per signature before requests get UNAVAILABLE (default 10)")
    p.add_argument("--max-request-bytes", type=int, default=DEFAULT_MAX_REQUEST_BYTES,
                   help=f"refuse larger request messages / bodies (default {DEFAULT_MAX_REQUEST_BYTES})")
    p.add_argument("--max-in-flight", type=int, default=1024,
                   help="requests at a time per API; more are refused at once (default 1024)")
    p.add_argument("--workers", type=int, default=DEFAULT_WORKERS,
                   help=f"threads per API that decode and run requests (default {DEFAULT_WORKERS})")
    p.add_argument("--no-warmup", action="store_true", help="skip assets.extra/tf_serving_warmup_requests")
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                   help="DEBUG logs one line per request")
    return p


def main(argv: list[str] | None = None, prog: str = "tfrec-zoo serve") -> int:
    args = build_parser(prog).parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not args.grpc_port and not args.rest_port:
        raise SystemExit("error: --grpc-port 0 and --rest-port 0: nothing would be served")
    try:
        batching = None
        knobs = {"batch_timeout_micros": args.batch_timeout_micros, "num_batch_threads": args.num_batch_threads,
                 "max_enqueued_batches": args.max_enqueued_batches}
        if args.batching_parameters_file:
            base = BatchingParameters(max_batch_size=args.max_batch_size or DEFAULT_MAX_BATCH)
            batching = BatchingParameters.from_file(args.batching_parameters_file, base, **knobs)
        elif args.enable_batching:
            batching = BatchingParameters(max_batch_size=args.max_batch_size or DEFAULT_MAX_BATCH,
                                          **{k: v for k, v in knobs.items() if v is not None})
        elif any(v is not None for v in knobs.values()):
            raise ValueError("--batch-timeout-micros, --num-batch-threads and --max-enqueued-batches need "
                             "--enable-batching")
        server = ModelServer(args.model_config_file or args.model_base_dir, grpc_port=args.grpc_port or None,
                             rest_port=args.rest_port or None, host=args.host, poll_seconds=args.poll_seconds,
                             max_batch_size=args.max_batch_size or None, enable_warmup=not args.no_warmup,
                             batching=batching, max_request_bytes=args.max_request_bytes, workers=args.workers,
                             max_in_flight=args.max_in_flight)
        if threading.current_thread() is threading.main_thread():
            # SIGTERM (docker stop, kill PID) ends serve_forever like Ctrl-C: ports closed, threads joined
            signal.signal(signal.SIGTERM, lambda *_: server._stopped.set())
        server.serve_forever()
    except (OSError, ValueError) as e:  # a missing model dir, a bad models.config, a port in use
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
