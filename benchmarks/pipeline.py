"""Input-pipeline throughput: tfrec_zoo's `make_dataset` against the I/O ceiling and against Parquet.

Data: ml-latest-small's real rating log (seeds/) replicated to N rows (each copy gets its own user ids, so
vocabularies grow as with more users), with the real genres multi-hot, a real 50-step history of earlier movies,
and a 64-float item vector (a fixed Gaussian per movie, standing in for a precomputed item embedding).

Measured side by side in one run, each variant one full pass (after a warm-up pass over the first 20 batches):
  ceiling        TFRecordDataset -> batch, no parsing (what reading + decompression alone costs)
  make_dataset   tfrec_zoo: batch -> one parse_example per batch -> pad/truncate -> prefetch
  per_example    map(parse_single_example) -> ragged_batch (the common tutorial pattern; no padding)
  interleave     make_dataset's parsing behind interleave(num_parallel_calls=AUTOTUNE) over the shards
  parquet        pyarrow iter_batches -> the same padded numpy arrays

    python benchmarks/pipeline.py --rows 1000000 --json benchmarks/out/pipeline.json
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from tfrec_zoo.data import make_dataset, write_dataset  # noqa: E402
from tfrec_zoo.data.interactions import attach_histories, chronological  # noqa: E402
from tfrec_zoo.data.reader import parse_batch, parse_spec_features  # noqa: E402
from tfrec_zoo.features import load_spec  # noqa: E402
from tfrec_zoo.paths import feature_specs_dir, seeds_data_dir  # noqa: E402

SPEC = load_spec(feature_specs_dir() / "pipeline-bench.yaml")


def make_frame(rows: int) -> pd.DataFrame:
    raw = seeds_data_dir() / "ml-latest-small"
    ratings = pd.read_csv(raw / "ratings.csv").rename(columns={"userId": "user_id", "movieId": "movie_id"})
    movies = pd.read_csv(raw / "movies.csv").rename(columns={"movieId": "movie_id"})
    movies["genres"] = [[] if g == "(no genres listed)" else g.split("|") for g in movies["genres"]]
    base = ratings.merge(movies[["movie_id", "genres"]], on="movie_id")
    base["like"] = (base["rating"] >= 4).astype(np.float32)
    base = chronological(base, "user_id", "timestamp")
    base = attach_histories(base, SPEC, "user_id", np.zeros(len(base), np.int8))
    copies = -(-rows // len(base))
    offset = int(base["user_id"].max()) + 1
    df = pd.concat([base.assign(user_id=base["user_id"] + k * offset) for k in range(copies)], ignore_index=True)
    df = df.iloc[:rows].reset_index(drop=True)
    rng = np.random.default_rng(0)
    table = {m: rng.standard_normal(64).astype(np.float32) for m in df["movie_id"].unique()}
    df["item_vec"] = [table[m] for m in df["movie_id"]]
    df["timestamp"] = df["timestamp"].astype(float)
    return df[["user_id", "movie_id", "genres", "timestamp", "item_vec", "hist_movie_id", "like"]]


def timed(ds, rows: int) -> float:
    import tensorflow as tf

    for _ in ds.take(20):  # warm-up: graph tracing, file open
        pass
    start = time.perf_counter()
    n = 0
    for batch in ds:
        first = batch[0] if isinstance(batch, tuple) else batch
        n += int(tf.shape(next(iter(first.values())) if isinstance(first, dict) else first)[0])
    elapsed = time.perf_counter() - start
    assert n == rows, (n, rows)
    return rows / elapsed


def parquet_rows_per_s(path: Path, rows: int, batch_size: int) -> float:
    import pyarrow.parquet as pq

    def pad(lists, max_len, fill, dtype):
        out = np.full((len(lists), max_len), fill, dtype=dtype)
        for i, v in enumerate(lists):
            v = v[-max_len:]
            out[i, :len(v)] = v
        return out

    start = time.perf_counter()
    n = 0
    for rb in pq.ParquetFile(path).iter_batches(batch_size=batch_size):
        cols = rb.to_pydict()
        _ = (np.asarray(cols["user_id"]), np.asarray(cols["movie_id"]), np.asarray(cols["timestamp"]),
             np.asarray(cols["item_vec"], dtype=np.float32), pad(cols["genres"], 8, "", object),
             pad(cols["hist_movie_id"], 50, 0, np.int64), np.asarray(cols["like"]))
        n += rb.num_rows
    assert n == rows
    return rows / (time.perf_counter() - start)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--batch-size", type=int, default=1024)
    ap.add_argument("--workdir", help="where to write the data (default: a temp dir, removed)")
    ap.add_argument("--json", default="benchmarks/out/pipeline.json")
    args = ap.parse_args()
    import tensorflow as tf

    work = Path(args.workdir or tempfile.mkdtemp(prefix="tfrec_pipeline_"))
    t0 = time.perf_counter()
    df = make_frame(args.rows)
    t_frame = time.perf_counter() - t0
    results: dict[str, dict] = {}
    for comp in ("GZIP", ""):
        name = "gzip" if comp else "none"
        t0 = time.perf_counter()
        write_dataset({"train": df}, SPEC, work / name, source="ml-latest-small x N", compression=comp,
                      progress=False)
        results[f"write_{name}"] = {"rows_per_s": args.rows / (time.perf_counter() - t0)}
    t0 = time.perf_counter()
    df.to_parquet(work / "data.parquet", index=False)
    results["write_parquet"] = {"rows_per_s": args.rows / (time.perf_counter() - t0)}

    bs = args.batch_size
    for comp in ("gzip", "none"):
        files = sorted(str(p) for p in (work / comp / "train").glob("*.tfrecord*"))
        ct = "GZIP" if comp == "gzip" else ""
        variants = {
            "ceiling": tf.data.TFRecordDataset(files, ct, buffer_size=8 << 20).batch(bs).prefetch(2),
            "make_dataset": make_dataset(SPEC, files, bs, compression=ct),
            "per_example": tf.data.TFRecordDataset(files, ct, buffer_size=8 << 20).map(
                lambda s: tf.io.parse_single_example(s, parse_spec_features(SPEC)),
                num_parallel_calls=tf.data.AUTOTUNE).ragged_batch(bs).prefetch(tf.data.AUTOTUNE),
            "interleave": tf.data.Dataset.from_tensor_slices(files).interleave(
                lambda f: tf.data.TFRecordDataset(f, ct), num_parallel_calls=tf.data.AUTOTUNE).batch(bs).map(
                lambda s: parse_batch(SPEC, s), num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE),
        }
        for name, ds in variants.items():
            results[f"{name}_{comp}"] = {"rows_per_s": timed(ds, args.rows)}
            print(f"  {name:<13} {comp:<5} {results[f'{name}_{comp}']['rows_per_s']:>12,.0f} rows/s", file=sys.stderr)
    results["parquet"] = {"rows_per_s": parquet_rows_per_s(work / "data.parquet", args.rows, bs)}

    sizes = {"gzip": sum(p.stat().st_size for p in (work / "gzip/train").iterdir()),
             "none": sum(p.stat().st_size for p in (work / "none/train").iterdir()),
             "parquet": (work / "data.parquet").stat().st_size}
    ceiling = results["ceiling_gzip"]["rows_per_s"]
    print(f"\n{args.rows:,} rows (ml-latest-small x {-(-args.rows // 100_004)}), batch {bs}, "
          f"{os.cpu_count()} cores; frame built in {t_frame:.1f}s")
    print(f"{'variant':<26}{'rows/s':>12}{'vs ceiling(gz)':>16}")
    for k, v in results.items():
        print(f"{k:<26}{v['rows_per_s']:>12,.0f}{v['rows_per_s'] / ceiling:>15.2f}x")
    print("bytes on disk: " + ", ".join(f"{k} {v / 2**20:,.0f} MiB" for k, v in sizes.items()))
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"rows": args.rows, "batch_size": bs, "cores": os.cpu_count(), "results": results,
                               "bytes": sizes}, indent=1) + "\n")
    print(f"wrote {out}")
    if not args.workdir:
        import shutil
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
