"""Ranking request latency through an exported SavedModel: 1 user, 200 candidates, a history of 1,000 steps.

    python benchmarks/serving.py --requests 300 --json benchmarks/out/serving.json

The model is DIN on ml-latest-small with the spec's history lengthened to 1,000 (ml-latest-small users have up
to 2,391 ratings; vocabularies fitted on the real training split), exported with `export_model` (weights as
initialised: latency does not depend on their values). Each request is the `rank` signature's: one context
tf.Example (user, time, query vector, the 1,000-step history) + 200 candidate tf.Examples (movie id, genres,
year, title vector) taken from real rows. Measured side by side in one run, alternating per round:

  in-process    tf.saved_model.load(...).signatures["rank"](...)
  grpc          `tfrec-zoo serve`'s PredictionService/Predict through the stock tensorflow-serving-api stub
  rest          POST /v1/models/NAME:predict (columnar `inputs`, b64 examples) with urllib

`--part seminar --seminar-run RUN` exports a trained seminar run twice (exact GSU, PQ GSU) and measures the same
`rank` request (the test user with the longest history x 200 sampled movie ids) in-process, over gRPC and over
REST for both, side by side (benchmarks/out/serving_seminar.json).

`--part sr_foundation --sr-run RUN` exports a trained sr_foundation run (e.g. of
training/experiments/sr_foundation-ml-latest-small-domains.yaml) with `--raw-text` and measures `rank` (precomputed
text vectors in the request) beside `rank_text` (raw title and query strings, MiniLM in the graph): 1 user (the test
row with the longest history and a non-empty query) x 200 test rows' movies with their domains, in-process and
through `tfrec-zoo serve` (gRPC, REST) (benchmarks/out/serving_sr_foundation.json).

`--part macdae --macdae-run RUN [--base-run RUN]` exports a trained Wide&Deep + MACDAE run (the encoder in the
graph), and beside it a base Wide&Deep run when given, and measures `rank`: 1 user (the test row with the longest
history: user, local time, history in the context) x 200 candidates taken from the test rows' eval negatives with
the candidate columns the spec's `eval_negatives` fields name (lbsn-*-ctx: POI id, cell, distance), in-process and
through `tfrec-zoo serve` (gRPC, REST) (benchmarks/out/serving_macdae.json).

`--part retrieval` (or `all`, the default) then runs `benchmarks/serving_retrieval.py` in the same process:
ScaNN vs brute force over 1M item vectors, recall@100 against exact and queries/s side by side (its options after
`--`, e.g. `python benchmarks/serving.py --part retrieval -- --n-items 100000`).
"""
from __future__ import annotations

import argparse
import base64
import dataclasses
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from tfrec_zoo._tf import tf  # noqa: E402
from tfrec_zoo.data.builders import get_builder  # noqa: E402
from tfrec_zoo.data.examples import columns_for_examples, serialize_rows  # noqa: E402
from tfrec_zoo.data.writer import encode_text_features  # noqa: E402
from tfrec_zoo.features import fit_artifacts, load_spec  # noqa: E402
from tfrec_zoo.models import build_model  # noqa: E402
from tfrec_zoo.serving.export import export_model  # noqa: E402

ITEM_SIDE = ("movie_id", "genres", "year", "title")


def long_history_spec(max_len: int):
    spec = load_spec(get_builder("ml-latest-small").spec_path)
    feats = tuple(dataclasses.replace(f, max_len=max_len) if f.name == "history" else f for f in spec.features)
    return dataclasses.replace(spec, features=feats)


def make_request(spec, frames, n_candidates: int) -> tuple[bytes, list[bytes]]:
    """A context from the test row with the longest history + candidates from other real rows."""
    test = frames["test"]
    row = test.iloc[[int(np.argmax(test["hist_movie_id"].map(len)))]]
    pool = test.sample(n_candidates, random_state=0)
    one = serialize_rows(columns_for_examples(row.reset_index(drop=True), spec, "bench"), 1)(0)
    cands = serialize_rows(columns_for_examples(pool.reset_index(drop=True), spec, "bench"), n_candidates)
    ctx = tf.train.Example.FromString(one)
    for key in ITEM_SIDE:
        del ctx.features.feature[key]
    out = []
    for i in range(n_candidates):
        ex = tf.train.Example.FromString(cands(i))
        keep = tf.train.Example()
        for key in ITEM_SIDE:
            keep.features.feature[key].CopyFrom(ex.features.feature[key])
        out.append(keep.SerializeToString())
    return ctx.SerializeToString(), out


def measure(calls: dict, requests: int, rounds: int, warmup: int = 10) -> dict[str, list[float]]:
    """Seconds per call of each named zero-argument call: warm-up, then `rounds` rounds of requests // rounds
    calls each, alternating the order every round (side by side, so machine noise hits all paths alike)."""
    for call in calls.values():
        for _ in range(warmup):
            call()
    results: dict[str, list[float]] = {name: [] for name in calls}
    for r in range(rounds):
        for name in (list(calls) if r % 2 == 0 else list(reversed(calls))):
            for _ in range(requests // rounds):
                t0 = time.perf_counter()
                calls[name]()
                results[name].append(time.perf_counter() - t0)
    return results


def report(title: str, column: str, results: dict[str, list[float]], out: Path, facts: dict) -> None:
    """Print the latency table of `measure`'s results and write it with `facts` to `out` (JSON)."""
    table = {name: percentiles(v) for name, v in results.items()}
    print(f"\n{title}\n| {column} | p50 ms | p99 ms | mean ms |\n|---|---|---|---|")
    for name, st in table.items():
        print(f"| {name} | {st['p50_ms']:.1f} | {st['p99_ms']:.1f} | {st['mean_ms']:.1f} |")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({**facts, "latency": table}, indent=1) + "\n")
    print(f"wrote {out}")


def percentiles(samples: list[float]) -> dict[str, float]:
    ms = np.asarray(samples) * 1000
    return {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)),
            "mean_ms": float(ms.mean()), "n": len(ms)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", choices=["ranking", "retrieval", "all", "seminar", "sr_foundation", "macdae"],
                    default="all")
    ap.add_argument("--macdae-run", help="--part macdae: a trained wide_deep_macdae run on an lbsn-*-ctx dataset")
    ap.add_argument("--base-run", help="--part macdae: a trained wide_deep run on the same dataset (optional)")
    ap.add_argument("--sr-run", help="--part sr_foundation: a trained sr_foundation run directory")
    ap.add_argument("--seminar-run", help="--part seminar: a trained seminar run directory; its exact-GSU and "
                                          "PQ-GSU exports answer the same rank requests side by side")
    ap.add_argument("retrieval_args", nargs="*", help="after --: options of benchmarks/serving_retrieval.py")
    ap.add_argument("--requests", type=int, default=300)
    ap.add_argument("--candidates", type=int, default=200)
    ap.add_argument("--history", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", default="benchmarks/out/serving.json")
    args = ap.parse_args()
    if args.part == "seminar":
        return seminar_rank(args)
    if args.part == "sr_foundation":
        return sr_foundation_rank(args)
    if args.part == "macdae":
        return macdae_rank(args)
    rc = ranking(args) if args.part in ("ranking", "all") else 0
    if args.part in ("retrieval", "all"):
        sys.path.insert(0, str(Path(__file__).parent))
        import serving_retrieval

        rc = rc or serving_retrieval.main(args.retrieval_args)
    return rc


def ranking(args) -> int:
    spec = long_history_spec(args.history)
    frames = get_builder("ml-latest-small").fn(spec, None).splits
    frames = encode_text_features(frames, spec)
    artifacts = fit_artifacts(spec, frames["train"])
    model = build_model("din", spec, artifacts, {})
    base = Path(tempfile.mkdtemp(prefix="tfrec_serving_"))
    version = export_model(model, spec, base, "din_long", keep=1)
    context, candidates = make_request(spec, frames, args.candidates)
    hist_len = tf.train.Example.FromString(context).features.feature["hist_movie_id"].int64_list.value
    print(f"request: 1 context (history {len(hist_len)} steps) + {len(candidates)} candidates; export {version}",
          file=sys.stderr)

    rank = tf.saved_model.load(str(version)).signatures["rank"]
    ctx_t, cand_t = tf.constant(context), tf.constant(candidates)
    clients = {"in-process": lambda: rank(context=ctx_t, candidates=cand_t)}
    server = None
    try:
        from tfrec_zoo.serving.server import ModelServer  # noqa: F401 - optional until the server lands

        server, extra = start_server(base, context, candidates)
        clients.update(extra)
    except ImportError as e:
        print(f"note: no server measured ({e})", file=sys.stderr)
    try:
        results = measure(clients, args.requests, args.rounds)
    finally:
        if server is not None:
            server.stop()
    report(f"DIN rank request: 1 user, {args.candidates} candidates, history {len(hist_len)}; {args.requests} "
           f"requests each, {args.rounds} alternating rounds, {os.cpu_count()} cores", "path", results,
           Path(args.json), {"candidates": args.candidates, "history": len(hist_len)})
    return 0


def seminar_rank(args) -> int:
    """`rank` latency of one seminar run exported twice (exact GSU, PQ GSU), each in-process and through `tfrec-zoo
    serve` (gRPC, REST): 1 user (the test row with the longest history) x `--candidates` movie ids, alternating
    rounds."""
    from training.exporting import export_run
    from training.trainer import load_run

    if not args.seminar_run:
        raise SystemExit("--part seminar needs --seminar-run RUN_DIR (a trained seminar run)")
    exp, data, _ = load_run(args.seminar_run, log=lambda *a: None)
    base = Path(tempfile.mkdtemp(prefix="tfrec_seminar_serving_"))
    versions = {gsu: export_run(args.seminar_run, f"seminar_{gsu}", base, warmup=4, parity_rows=32,
                                options={"gsu": gsu}, log=lambda *a: None) for gsu in ("exact", "pq")}
    item = data.spec.keys["item"]
    records = [r.numpy() for r in tf.data.TFRecordDataset([str(f) for f in data.files("test")],
                                                          data.manifest.get("compression", "GZIP"))]
    examples = [tf.train.Example.FromString(r) for r in records]
    longest = max(examples, key=lambda e: len(e.features.feature["hist_movie_id"].int64_list.value))
    hist = len(longest.features.feature["hist_movie_id"].int64_list.value)
    ids = [i for e in examples for i in e.features.feature["eval_neg_movie_id"].int64_list.value][:args.candidates]
    context = tf.train.Example()
    context.CopyFrom(longest)
    for key in (item, "eval_neg_movie_id", "click"):
        del context.features.feature[key]
    candidates = []
    for i in ids:
        c = tf.train.Example()
        c.features.feature[item].int64_list.value.append(i)
        candidates.append(c.SerializeToString())
    results = measure_rank(base, {f"seminar_{gsu}": v for gsu, v in versions.items()},
                           context.SerializeToString(), candidates, args)
    report(f"seminar rank request ({args.seminar_run}): 1 user, {len(ids)} candidates, history {hist}; "
           f"{args.requests} requests each, {args.rounds} alternating rounds, {os.cpu_count()} cores; "
           "in-process and through `tfrec-zoo serve` (gRPC, REST)",
           "export / path", results, Path(args.json).with_name("serving_seminar.json"),
           {"run": args.seminar_run, "candidates": len(ids), "history": hist})
    return 0


def macdae_rank(args) -> int:
    """`rank` latency of a Wide&Deep + MACDAE run (and a base Wide&Deep run beside it), in-process and through
    `tfrec-zoo serve` (gRPC, REST): 1 user x `--candidates` POIs with their own cell and distance."""
    from training.exporting import export_run
    from training.trainer import load_run

    if not args.macdae_run:
        raise SystemExit("--part macdae needs --macdae-run RUN_DIR (a trained wide_deep_macdae run)")
    runs = {"wd_macdae": args.macdae_run, **({"wide_deep": args.base_run} if args.base_run else {})}
    _, data, _ = load_run(args.macdae_run, log=lambda *a: None)
    base = Path(tempfile.mkdtemp(prefix="tfrec_macdae_serving_"))
    versions = {name: export_run(run, name, base, warmup=4, parity_rows=32, log=lambda *a: None)
                for name, run in runs.items()}
    records = [r.numpy() for r in tf.data.TFRecordDataset([str(f) for f in data.files("test")],
                                                          data.manifest.get("compression", "GZIP"))]
    examples = [tf.train.Example.FromString(r) for r in records]
    # the candidate columns come from the spec: the item id and each `eval_negatives` field's `source:`
    from training.ranking import negatives_field

    spec = data.spec
    seq, id_field = negatives_field(spec)
    per_candidate = {spec.keys["item"]: id_field,
                     **{sf.source: sf.name for sf in spec[seq].fields if sf.name != id_field and sf.source}}
    history = next(sf.name for f in spec.of_kind("sequence") if f.name != seq for sf in f.fields)
    longest = max(examples, key=lambda e: _length(e.features.feature[history]))
    hist = _length(longest.features.feature[history])
    candidates = []
    for e in examples:
        f = e.features.feature
        for i in range(_length(f[id_field])):
            c = tf.train.Example()
            for column, field in per_candidate.items():
                values = f[field]
                kind = values.WhichOneof("kind")
                getattr(c.features.feature[column], kind).value.append(getattr(values, kind).value[i])
            candidates.append(c.SerializeToString())
        if len(candidates) >= args.candidates:
            break
    candidates = candidates[:args.candidates]
    context = tf.train.Example()
    context.CopyFrom(longest)
    for key in (*per_candidate, *per_candidate.values(), *(lab.name for lab in spec.labels)):
        if key in context.features.feature:
            del context.features.feature[key]
    results = measure_rank(base, versions, context.SerializeToString(), candidates, args)
    report(f"Wide&Deep (+ MACDAE) rank request ({args.macdae_run}): 1 user, {len(candidates)} candidates, history "
           f"{hist}; {args.requests} requests each, {args.rounds} alternating rounds, {os.cpu_count()} cores; "
           "in-process and through `tfrec-zoo serve` (gRPC, REST)", "model / path", results,
           Path(args.json).with_name("serving_macdae.json"),
           {"runs": runs, "candidates": len(candidates), "history": hist})
    return 0


def sr_foundation_rank(args) -> int:
    """`rank` (text vectors in the request) and `rank_text` (raw strings, encoder in the graph) of one sr_foundation
    run, in-process and through `tfrec-zoo serve` (gRPC, REST), alternating rounds."""
    import pandas as pd

    from training.exporting import export_run
    from training.trainer import load_run

    if not args.sr_run:
        raise SystemExit("--part sr_foundation needs --sr-run RUN_DIR (a trained sr_foundation run)")
    exp, data, _ = load_run(args.sr_run, log=lambda *a: None)
    base = Path(tempfile.mkdtemp(prefix="tfrec_sr_serving_"))
    version = export_run(args.sr_run, "sr_foundation", base, warmup=4, parity_rows=32, options={"raw_text": True},
                         log=lambda *a: None)
    spec = data.spec
    raw = get_builder("ml-latest-small-domains").fn(spec, None).splits["test"]
    with_query = raw[raw["query"] != ""]
    row = with_query.iloc[[int(np.argmax(with_query["hist_movie_id"].map(len)))]]
    pool = raw.sample(args.candidates, random_state=0)
    frames = pd.concat([row, pool], ignore_index=True)
    vectors = encode_text_features({"test": frames}, spec)["test"]
    rows = serialize_rows(columns_for_examples(vectors, spec, "bench"), len(frames))
    texts = [f.name for f in spec.of_kind("text")]
    item_side = ("movie_id", "genres", "year", "title", "domain")

    def example(i: int, keys, raw_text: bool) -> bytes:
        ex, out = tf.train.Example.FromString(rows(i)), tf.train.Example()
        for key in ex.features.feature:
            if key in keys:
                out.features.feature[key].CopyFrom(ex.features.feature[key])
        for key in texts if raw_text else ():
            if key in out.features.feature:
                out.features.feature[key].Clear()
                out.features.feature[key].bytes_list.value.append(str(frames[key].iloc[i]).encode())
        return out.SerializeToString()

    context_keys = tuple(k for k in tf.train.Example.FromString(rows(0)).features.feature if k not in item_side)
    requests = {sig: (example(0, context_keys, sig == "rank_text"),
                      [example(i, item_side, sig == "rank_text") for i in range(1, len(frames))])
                for sig in ("rank", "rank_text")}
    loaded = tf.saved_model.load(str(version))
    calls = {}
    for sig, (ctx, cands) in requests.items():
        fn, c, k = loaded.signatures[sig], tf.constant(ctx), tf.constant(cands)
        calls[f"{sig} in-process"] = (lambda f, c, k: lambda: f(context=c, candidates=k))(fn, c, k)
    servers = []
    try:
        for sig, (ctx, cands) in requests.items():
            server, served = start_server(base, ctx, cands, models=("sr_foundation",), signature=sig,
                                          start=not servers, server=servers[0] if servers else None)
            servers.append(server)
            calls.update({f"{sig} {path}": call for path, call in served.items()})
        results = measure(calls, args.requests, args.rounds)
    finally:
        if servers:
            servers[0].stop()
    hist = int(np.asarray(row["hist_movie_id"].iloc[0]).size)
    report(f"sr_foundation rank request ({args.sr_run}): 1 user, {args.candidates} candidates, history {hist}; "
           f"rank (text vectors sent) vs rank_text (raw strings, MiniLM in the graph); {args.requests} requests "
           f"each, {args.rounds} alternating rounds, {os.cpu_count()} cores", "signature / path", results,
           Path(args.json).with_name("serving_sr_foundation.json"),
           {"run": args.sr_run, "candidates": args.candidates, "history": hist})
    return 0


def _length(feature) -> int:
    """How many values a tf.train.Feature holds, whatever its kind."""
    kind = feature.WhichOneof("kind")
    return len(getattr(feature, kind).value) if kind else 0


def measure_rank(base: Path, versions: dict[str, Path], context: bytes, candidates: list[bytes], args) -> dict:
    """`rank` of each exported version (keyed by its model name under `base`) in-process and through `tfrec-zoo
    serve` (gRPC, REST): {"NAME path": latencies}, alternating rounds."""
    ctx_t, cand_t = tf.constant(context), tf.constant(candidates)
    calls = {f"{name} in-process": (lambda f: lambda: f(context=ctx_t, candidates=cand_t))(
        tf.saved_model.load(str(v)).signatures["rank"]) for name, v in versions.items()}
    server, served = start_server(base, context, candidates, models=tuple(versions))
    only = next(iter(versions))
    calls.update(served if len(versions) > 1 else {f"{only} {path}": call for path, call in served.items()})
    try:
        return measure(calls, args.requests, args.rounds)
    finally:
        server.stop()


def start_server(base: Path, context: bytes, candidates: list[bytes], models: tuple[str, ...] = ("din_long",),
                 signature: str = "rank", start: bool = True, server=None):
    """Start `tfrec-zoo serve` over `base` in this process on free ports (or reuse `server` with start=False);
    return (server, {path: request function}): per model name, a gRPC Predict and a REST predict call of
    `signature` (keys "grpc" / "rest" for one model, "NAME grpc" / "NAME rest" for several)."""
    import socket
    import urllib.request

    import grpc
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    from tfrec_zoo.serving.server import ModelServer

    def free_port() -> int:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]

    if start:
        server = ModelServer(str(base), grpc_port=free_port(), rest_port=free_port())
        server.start()
    gport, rport = server.grpc_port, server.rest_port
    stub = prediction_service_pb2_grpc.PredictionServiceStub(grpc.insecure_channel(f"127.0.0.1:{gport}"))
    body = json.dumps({"signature_name": signature, "inputs": {
        "context": {"b64": base64.b64encode(context).decode()},
        "candidates": [{"b64": base64.b64encode(c).decode()} for c in candidates]}}).encode()

    def clients(name: str) -> tuple:
        req = predict_pb2.PredictRequest()
        req.model_spec.name, req.model_spec.signature_name = name, signature
        req.inputs["context"].CopyFrom(tf.make_tensor_proto(context, dtype=tf.string))
        req.inputs["candidates"].CopyFrom(tf.make_tensor_proto(candidates, dtype=tf.string,
                                                               shape=[len(candidates)]))
        url = f"http://127.0.0.1:{rport}/v1/models/{name}:predict"

        def rest():
            request = urllib.request.Request(url, body, {"Content-Type": "application/json"})
            with urllib.request.urlopen(request, timeout=30) as r:
                return r.read()

        return (lambda: stub.Predict(req, timeout=30)), rest

    calls = {}
    for name in models:
        grpc_call, rest_call = clients(name)
        prefix = "" if len(models) == 1 else f"{name} "
        calls[f"{prefix}grpc"], calls[f"{prefix}rest"] = grpc_call, rest_call
    return server, calls


if __name__ == "__main__":
    sys.exit(main())
