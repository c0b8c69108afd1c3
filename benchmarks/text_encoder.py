"""Throughput of the all-MiniLM-L6-v2 text encoder on real MovieLens titles.

    TF_USE_LEGACY_KERAS=1 .venv/bin/python benchmarks/text_encoder.py --n 2000 --batch-size 64 --json OUT.json

Measures sentences/s of `MiniLMEncoder.encode` at batch sizes B/2, B and 2B (after one warm-up call, so graph
tracing is not timed), then `CachedEncoder` at B on an empty cache directory (cold: model + shard writes) and again
on the filled one (cached: disk lookups only). Prints a table and writes the same rows as JSON. The numbers depend
on the machine; nothing here asserts on them.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

MOVIES = ROOT / "seeds" / "data" / "ml-latest-small" / "movies.csv"


def load_titles(n: int, path: Path = MOVIES) -> list[str]:
    with path.open(newline="", encoding="utf-8") as f:
        titles = [row["title"] for row in csv.DictReader(f)]
    if n > len(titles):
        print(f"note: {path} has {len(titles)} titles; using all of them, not {n}", file=sys.stderr)
    return titles[:n]


def timed(fn, texts: list[str], batch_size: int) -> float:
    start = time.perf_counter()
    fn(texts, batch_size=batch_size)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description="sentences/s of the MiniLM text encoder on MovieLens titles")
    parser.add_argument("--n", type=int, default=2000, help="number of titles (default 2000)")
    parser.add_argument("--batch-size", type=int, default=64, help="B: model runs at B/2, B, 2B; cache runs at B")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--cache-dir", type=Path, help="empty directory for the cache runs (default: a temp dir)")
    args = parser.parse_args(argv)

    from tfrec_zoo.text import CachedEncoder, MiniLMEncoder

    titles = load_titles(args.n)
    start = time.perf_counter()
    model = MiniLMEncoder()
    build_s = time.perf_counter() - start
    model.encode(titles[:256], batch_size=args.batch_size)  # warm-up: trace once, allocate

    rows = []
    for bs in sorted({max(1, args.batch_size // 2), args.batch_size, args.batch_size * 2}):
        rows.append({"encoder": "MiniLMEncoder", "mode": "model", "batch_size": bs,
                     "seconds": timed(model.encode, titles, bs)})
    with tempfile.TemporaryDirectory(prefix="tfrec_text_bench_") as tmp:
        cache_dir = args.cache_dir or Path(tmp)
        if args.cache_dir and any(cache_dir.glob("*.npz")):
            parser.error(f"--cache-dir {cache_dir} must be empty for a cold run")
        for mode in ("cold", "cached"):
            cached = CachedEncoder(model, cache_dir)  # a fresh instance: 'cached' reads the shards from disk
            rows.append({"encoder": "CachedEncoder", "mode": mode, "batch_size": args.batch_size,
                         "seconds": timed(cached.encode, titles, args.batch_size)})
    for row in rows:
        row["sentences_per_s"] = len(titles) / row["seconds"]

    result = {
        "n": len(titles), "source": str(MOVIES.relative_to(ROOT)), "build_seconds": build_s,
        "cpu_count": os.cpu_count(), "python": platform.python_version(), "rows": rows,
    }
    print(f"{len(titles)} MovieLens titles, {os.cpu_count()} CPUs, model built in {build_s:.1f}s")
    print(f"{'encoder':<14} {'mode':<7} {'batch':>5} {'seconds':>8} {'sentences/s':>12}")
    for r in rows:
        print(f"{r['encoder']:<14} {r['mode']:<7} {r['batch_size']:>5} {r['seconds']:>8.2f} "
              f"{r['sentences_per_s']:>12.0f}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
        print(f"wrote {args.json}")
    return result


if __name__ == "__main__":
    main()
