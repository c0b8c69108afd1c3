"""Pipeline throughput: writing TFRecords (old per-row protos vs the column-wise encoder vs Parquet), `data check`,
and reading (`make_dataset` against the I/O ceiling and against Parquet).

Data: ml-latest-small's real rating log (seeds/) replicated to N rows (each copy gets its own user ids, so
vocabularies grow as with more users), with the real genres multi-hot, a real 50-step history of earlier movies,
and a 64-float item vector (a fixed Gaussian per movie, standing in for a precomputed item embedding).

Writing, on the same frame (rows/s of the frame's rows; "x parquet" = vs `to_parquet`):
  validate           what write_dataset does before it writes: fills + `columns_for_examples` (per-row Python)
  artifacts          vocabularies + statistics of the train split (`fit_artifacts`)
  records_per_row    the writer before data/wire.py: one tf.train.Example proto per row + TFRecordWriter(GZIP)
  records_columnwise write_split now: data/wire.py's encoder + TF framing + gzip in a second thread
  write_dataset      all of the above, end to end, GZIP / uncompressed
  write_parquet      DataFrame.to_parquet (pyarrow, its default snappy compression)
Checking and reading ("x reader" = vs make_dataset on the gzip files), each one full pass (readers after a
warm-up pass over the first 20 batches):
  check              `data check DIR` (check_dataset): batched reads, parse_example per batch, numpy checks
  check_per_record   the check before: one record at a time, each decoded as a proto (on --old-check-rows rows)
  ceiling            TFRecordDataset -> batch, no parsing (what reading + decompression alone costs)
  make_dataset       tfrec_zoo: batch -> one parse_example per batch -> pad/truncate -> prefetch
  per_example        map(parse_single_example) -> ragged_batch (the common tutorial pattern; no padding)
  interleave         make_dataset's parsing behind interleave(num_parallel_calls=AUTOTUNE) over the shards
  parquet            pyarrow iter_batches -> the same padded numpy arrays

    python benchmarks/pipeline.py --rows 1000000 --json benchmarks/out/pipeline.json
"""
from __future__ import annotations

import argparse
import gzip
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
from tfrec_zoo.data.check import check_dataset, check_records  # noqa: E402
from tfrec_zoo.data.examples import columns_for_examples  # noqa: E402
from tfrec_zoo.data.fill import fill_missing  # noqa: E402
from tfrec_zoo.data.interactions import attach_histories, chronological  # noqa: E402
from tfrec_zoo.data.reader import parse_batch, parse_spec_features  # noqa: E402
from tfrec_zoo.data.wire import proto_rows  # noqa: E402
from tfrec_zoo.data.writer import write_split  # noqa: E402
from tfrec_zoo.features import fit_artifacts, load_spec  # noqa: E402
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


def per_row_write(cols: dict, n: int, path: Path) -> None:
    """The writer before data/wire.py: one tf.train.Example proto per row, written by TFRecordWriter(GZIP)."""
    import tensorflow as tf

    one = proto_rows(cols, n)
    with tf.io.TFRecordWriter(str(path), options=tf.io.TFRecordOptions(compression_type="GZIP")) as w:
        for i in range(n):
            w.write(one(i))


def per_record_check(files: list[str], rows: int) -> float:
    """rows/s of the check before: records read one at a time, each decoded and checked as a proto."""
    import tensorflow as tf

    start = time.perf_counter()
    n = 0
    for f in files:
        records = [r.numpy() for r in tf.data.TFRecordDataset(f, "GZIP").take(rows - n)]
        assert check_records(SPEC, f, records) == []
        n += len(records)
        if n >= rows:
            break
    return n / (time.perf_counter() - start)


def rate(rows: int, fn) -> dict:
    start = time.perf_counter()
    fn()
    return {"rows_per_s": rows / (time.perf_counter() - start)}


def measure_writes(df: pd.DataFrame, work: Path, rows: int) -> dict[str, dict]:
    results: dict[str, dict] = {}
    cols: dict = {}

    def validate():
        filled, _ = fill_missing({"train": df}, SPEC, "bench")
        cols.update(columns_for_examples(filled["train"].reset_index(drop=True), SPEC, "bench"))
    results["validate"] = rate(rows, validate)
    results["artifacts"] = rate(rows, lambda: fit_artifacts(SPEC, df))
    proto_rows({k: v for k, v in list(cols.items())[:1]}, 1)(0)   # imports TF's protos outside the timing
    results["records_per_row"] = rate(rows, lambda: per_row_write(cols, rows, work / "per_row.tfrecord.gz"))
    results["records_columnwise"] = rate(rows, lambda: write_split(cols, rows, work / "cw", "train",
                                                                   rows_per_shard=rows, progress=False))
    new = work / "cw" / "train" / "part-00000-of-00001.tfrecord.gz"
    assert gzip.decompress(new.read_bytes()) == gzip.decompress((work / "per_row.tfrecord.gz").read_bytes()), \
        "the column-wise writer's records differ from the per-row protos"
    for comp in ("GZIP", ""):
        name = "gzip" if comp else "none"
        results[f"write_dataset_{name}"] = rate(rows, lambda: write_dataset(
            {"train": df}, SPEC, work / name, source="ml-latest-small x N", compression=comp, progress=False))
    results["write_parquet"] = rate(rows, lambda: df.to_parquet(work / "data.parquet", index=False))
    return results


def print_table(title: str, results: dict[str, dict], base: str, label: str) -> None:
    print(f"{title:<26}{'rows/s':>12}{label:>14}")
    for k, v in results.items():
        print(f"{k:<26}{v['rows_per_s']:>12,.0f}{v['rows_per_s'] / results[base]['rows_per_s']:>13.2f}x")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--batch-size", type=int, default=1024)
    ap.add_argument("--workdir", help="where to write the data (default: a temp dir, removed)")
    ap.add_argument("--json", default="benchmarks/out/pipeline.json")
    ap.add_argument("--old-check-rows", type=int, default=20_000,
                    help="rows the per-record check reads (it runs at ~1k rows/s)")
    args = ap.parse_args()
    import tensorflow as tf

    work = Path(args.workdir or tempfile.mkdtemp(prefix="tfrec_pipeline_"))
    t0 = time.perf_counter()
    df = make_frame(args.rows)
    t_frame = time.perf_counter() - t0
    writes = measure_writes(df, work, args.rows)
    results: dict[str, dict] = {}
    gz_files = sorted(str(p) for p in (work / "gzip" / "train").glob("*.tfrecord*"))
    t0 = time.perf_counter()
    total, problems = check_dataset(work / "gzip")
    assert (total, problems) == (args.rows, []), (total, problems[:3])
    results["check"] = {"rows_per_s": args.rows / (time.perf_counter() - t0)}
    old_rows = min(args.rows, args.old_check_rows)
    results["check_per_record"] = {"rows_per_s": per_record_check(gz_files, old_rows), "rows": old_rows}
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
    print(f"\n{args.rows:,} rows (ml-latest-small x {-(-args.rows // 100_004)}), batch {bs}, "
          f"{os.cpu_count()} cores; frame built in {t_frame:.1f}s")
    print_table("write", writes, "write_parquet", "x parquet")
    print()
    print_table("check / read", results, "make_dataset_gzip", "x reader")
    print("bytes on disk: " + ", ".join(f"{k} {v / 2**20:,.0f} MiB" for k, v in sizes.items()))
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    ratios = {"write_vs_parquet": {k: v["rows_per_s"] / writes["write_parquet"]["rows_per_s"]
                                   for k, v in writes.items()},
              "read_vs_make_dataset_gzip": {k: v["rows_per_s"] / results["make_dataset_gzip"]["rows_per_s"]
                                            for k, v in results.items()}}
    out.write_text(json.dumps({"rows": args.rows, "batch_size": bs, "cores": os.cpu_count(), "write": writes,
                               "results": results, "ratios": ratios, "bytes": sizes}, indent=1) + "\n")
    print(f"wrote {out}")
    if not args.workdir:
        import shutil
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
