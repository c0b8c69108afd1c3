"""`tfrec-zoo serve` under load: 1 to 256 concurrent clients over gRPC and REST, batching off and on.

    python benchmarks/serving_load.py --json benchmarks/out/serving_load.json

The model is DIN on ml-latest-small (the embedded seed data; vocabularies fitted on its real training split,
weights as initialised: latency does not depend on their values), exported with `export_model`. Each request is
`serving_default` on `--rows` real serialized test examples. The server runs in its own process
(`python -m tfrec_zoo.serving.server`, as `tfrec-zoo serve` does); the clients are asyncio tasks in this process
(grpc.aio with the stock tensorflow-serving-api stub; aiohttp over keep-alive connections), each sending its next
request when the last one is answered. Every row: requests/s, p50 / p99 latency, and failed requests by cause.
The aim (issue 11): zero failed requests at 256 clients, and p99 at 64 clients <= 5x the idle (1 client) p99.
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from pathlib import Path

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402


def build_export(base: Path, n_examples: int) -> list[bytes]:
    """Exports DIN on ml-latest-small to base/din/1; returns real serialized test examples."""
    from tfrec_zoo.data.builders import get_builder
    from tfrec_zoo.data.examples import columns_for_examples, serialize_rows
    from tfrec_zoo.data.writer import encode_text_features
    from tfrec_zoo.features import fit_artifacts, load_spec
    from tfrec_zoo.models import build_model
    from tfrec_zoo.serving.export import export_model

    spec = load_spec(get_builder("ml-latest-small").spec_path)
    frames = encode_text_features(get_builder("ml-latest-small").fn(spec, None).splits, spec)
    artifacts = fit_artifacts(spec, frames["train"])
    model = build_model("din", spec, artifacts, {})
    test = frames["test"].head(n_examples).reset_index(drop=True)
    one = serialize_rows(columns_for_examples(test, spec, "bench"), len(test))
    examples = [one(i) for i in range(len(test))]
    export_model(model, spec, base, "din", keep=1, warmup_examples=examples[:32])
    return examples


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(base: Path, batching: bool, args) -> tuple[subprocess.Popen, int, int]:
    grpc_port, rest_port = free_port(), free_port()
    cmd = [sys.executable, "-m", "tfrec_zoo.serving.server", "--model-base-dir", str(base), "--grpc-port",
           str(grpc_port), "--rest-port", str(rest_port), "--poll-seconds", "0", "--log-level", "WARNING"]
    if batching:
        cmd += ["--enable-batching", "--max-batch-size", str(args.max_batch_size), "--batch-timeout-micros",
                str(args.batch_timeout_micros), "--max-enqueued-batches", "64"]
    proc = subprocess.Popen(cmd, env=os.environ.copy())
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{rest_port}/v1/models/din", timeout=2) as r:
                if r.status == 200:
                    return proc, grpc_port, rest_port
        except OSError:
            time.sleep(0.3)
    proc.kill()
    raise SystemExit("the server did not come up in 120 s")


async def run_clients(protocol: str, port: int, bodies: list, clients: int, total: int) -> dict:
    """`clients` concurrent loops sending `total` requests in all; latency of each answered one, errors by cause."""
    latencies: list[float] = []
    errors: Counter = Counter()
    sent = 0

    if protocol == "grpc":
        import grpc
        from tensorflow_serving.apis import prediction_service_pb2_grpc

        channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.max_receive_message_length", -1)])
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)

        async def one(body) -> None:
            try:
                await stub.Predict(body, timeout=60)
            except grpc.aio.AioRpcError as e:
                errors[e.code().name] += 1
                raise
    else:
        import aiohttp

        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=clients),
                                        timeout=aiohttp.ClientTimeout(total=60))
        url = f"http://127.0.0.1:{port}/v1/models/din:predict"

        async def one(body) -> None:
            try:
                async with session.post(url, data=body, headers={"Content-Type": "application/json"}) as r:
                    await r.read()
                    if r.status != 200:
                        errors[f"HTTP {r.status}"] += 1
                        raise RuntimeError
            except (aiohttp.ClientError, asyncio.TimeoutError) as e:
                errors[type(e).__name__] += 1
                raise

    async def loop() -> None:
        nonlocal sent
        while sent < total:
            body = bodies[sent % len(bodies)]
            sent += 1
            t0 = time.perf_counter()
            try:
                await one(body)
            except Exception:  # noqa: BLE001 - counted in `errors`
                continue
            latencies.append(time.perf_counter() - t0)

    start = time.perf_counter()
    try:
        await asyncio.gather(*(loop() for _ in range(clients)))
    finally:
        await (channel.close() if protocol == "grpc" else session.close())
    wall = time.perf_counter() - start
    ms = np.asarray(latencies) * 1000 if latencies else np.asarray([np.nan])
    return {"protocol": protocol, "clients": clients, "requests": total, "ok": len(latencies),
            "failed": sum(errors.values()), "errors": dict(errors), "rps": len(latencies) / wall,
            "p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99))}


def request_bodies(examples: list[bytes], rows: int, protocol: str) -> list:
    chunks = [examples[i:i + rows] for i in range(0, len(examples) - rows + 1, rows)]
    if protocol == "rest":
        return [json.dumps({"instances": [{"b64": base64.b64encode(e).decode()} for e in c]}).encode()
                for c in chunks]
    from tensorflow_serving.apis import predict_pb2

    from tfrec_zoo._tf import tf

    out = []
    for c in chunks:
        req = predict_pb2.PredictRequest()
        req.model_spec.name = "din"
        req.inputs["examples"].CopyFrom(tf.make_tensor_proto(c, dtype=tf.string, shape=[len(c)]))
        out.append(req)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", default="1,4,16,64,256", help="comma-separated client counts")
    ap.add_argument("--rows", type=int, default=4, help="examples per request")
    ap.add_argument("--requests-per-client", type=int, default=20)
    ap.add_argument("--min-requests", type=int, default=300, help="at least this many requests per row")
    ap.add_argument("--max-batch-size", type=int, default=1024)
    ap.add_argument("--batch-timeout-micros", type=int, default=0)
    ap.add_argument("--json", default="benchmarks/out/serving_load.json")
    args = ap.parse_args()
    counts = [int(c) for c in args.clients.split(",")]

    base = Path(tempfile.mkdtemp(prefix="tfrec_serving_load_"))
    examples = build_export(base, 2048)
    bodies = {p: request_bodies(examples, args.rows, p) for p in ("grpc", "rest")}
    rows = []
    for batching in (False, True):
        proc, grpc_port, rest_port = start_server(base, batching, args)
        try:
            for protocol, port in (("grpc", grpc_port), ("rest", rest_port)):
                asyncio.run(run_clients(protocol, port, bodies[protocol], 1, 50))  # warm the path up
                for c in counts:
                    total = max(args.min_requests, c * args.requests_per_client)
                    row = asyncio.run(run_clients(protocol, port, bodies[protocol], c, total))
                    row["batching"] = batching
                    rows.append(row)
                    print(f"{protocol:4s} batching={'on ' if batching else 'off'} clients={c:4d} "
                          f"{row['rps']:8.0f} req/s p50 {row['p50_ms']:7.1f} ms p99 {row['p99_ms']:7.1f} ms "
                          f"failed {row['failed']} {row['errors'] or ''}", file=sys.stderr, flush=True)
        finally:
            proc.terminate()
            proc.wait(30)

    print(f"\n`tfrec-zoo serve`, DIN on ml-latest-small, {args.rows} examples per request, {os.cpu_count()} cores "
          "(server and clients on the same machine)\n")
    print("| protocol | batching | clients | requests | failed | req/s | p50 ms | p99 ms | p99 / idle p99 |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        idle = next(x["p99_ms"] for x in rows if x["protocol"] == r["protocol"] and x["batching"] == r["batching"]
                    and x["clients"] == counts[0])
        r["p99_over_idle"] = r["p99_ms"] / idle
        print(f"| {r['protocol']} | {'on' if r['batching'] else 'off'} | {r['clients']} | {r['requests']} | "
              f"{r['failed']} | {r['rps']:.0f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {r['p99_over_idle']:.1f} |")
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"rows_per_request": args.rows, "cores": os.cpu_count(), "results": rows},
                              indent=1) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
