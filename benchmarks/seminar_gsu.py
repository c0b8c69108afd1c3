"""SEMINAR's GSU search (arXiv 2407.10714): top-K of a user's L history items for B target queries, exact vs
multi-modal PQ (ADC lookup tables), ETA's SimHash and ScaNN, recall@K against the exact top-K and per-request latency,
side by side in one run.

Score of history item l for a target: <q, sum_m w_m k_{l,m}>, q = sum_i w_i q_i the target's fused query, k_{l,m}
item l's modality-m vector, w the modality weights (default 0.1, 0.2, 0.3, 0.4).

Data (default, the paper's synthetic protocol): random unit vectors per modality (M = 4, D = 64). The history items
live in an item table of `--items` items [N, M, D]; each user's history is L ids sampled from it (without
replacement), each request is B = `--batch` target queries (fused random unit vectors) against one user's L items.
`--item-vectors PATH.npy` ([N, M, D] or [N, D]; `--vectors` is an alias) samples histories and targets from real item
embeddings instead.

Methods (all return positions in the user's history; recall@K = |approx top-K & exact top-K| / K, mean over queries):
  exact           gather float32 [L, M, D] by id, fuse with w, matmul, top_k (the reference)
  exact prefused  gather a pre-fused [L, D] table (weights frozen at serving), matmul, top_k
  PQ C=c          gather uint8 codes [L, M, C] by id, decode them (L x M x C codeword gathers) and one matmul
                  with the B queries (pq_scores' shared-history path, what the served model runs), top_k;
                  codebooks per modality, C sub-spaces x `--codewords`, trained on the item table (`--codebooks
                  global`) or on each user's own L vectors (`per-user`, the paper's script; first `--per-user-users`)
  PQ C=c ADC      the same codes and scores by ADC lookup tables per request (B x L x M x C lookups)
  SimHash b bits  gather packed bits [L, M, b/8] by id, hash the query, sum_m w_m (equal bits), top_k (ETA)
  ScaNN           one searcher per user over its L fused vectors (tree sqrt(L) leaves, search `--scann-search-frac`
                  of them, score_ah(2, threshold 0.2), reorder `--scann-reorder`); build time reported separately
Latency: p50 / p90 over users of one request (ids -> gather -> scores -> top-K indices on the host), after warm-up.
Bytes/user: what one request fetches from the item tables (exact: L*M*D*4, PQ: L*M*C, SimHash: L*M*b/8); for ScaNN
the per-user index it keeps (reorder floats L*D*4 + AH codes L*D/4, an estimate).

    python benchmarks/seminar_gsu.py --quick                         # < 1 minute
    python benchmarks/seminar_gsu.py                                 # L in 1000, 2000, 10000, 200 users
    python benchmarks/seminar_gsu.py --item-vectors emb.npy --codebooks both
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from tfrec_zoo._tf import tf  # noqa: E402
from tfrec_zoo.layers.quantization import (  # noqa: E402
    hamming_matches, pack_bits, pq_encode, pq_scores, simhash_codes, simhash_planes, train_pq_codebooks)

ROOT = Path(__file__).resolve().parents[1]


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def load_items(args, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, str]:
    """(item table [N, M, D] float32, modality weights [M], description)."""
    path = args.item_vectors or args.vectors
    weights = np.array([float(v) for v in args.weights.split(",")], np.float32)
    if path is None:
        items = unit(rng.standard_normal((args.items, len(weights), args.dim)).astype(np.float32))
        return items, weights, f"synthetic: random unit vectors, N={args.items}, M={len(weights)}, D={args.dim}"
    items = np.load(path).astype(np.float32)
    items = items[:, None, :] if items.ndim == 2 else items
    if items.shape[1] != len(weights):
        print(f"note: {path} has M={items.shape[1]} modalities, not {len(weights)}: using equal weights")
        weights = np.full(items.shape[1], 1.0 / items.shape[1], np.float32)
    return items, weights, f"item vectors {path}: N={items.shape[0]}, M={items.shape[1]}, D={items.shape[2]}"


def recall(approx: np.ndarray, exact: np.ndarray) -> float:
    """Mean over rows of |approx_row & exact_row| / k (rows hold distinct positions)."""
    return float((approx[:, :, None] == exact[:, None, :]).any(-1).sum(1).mean() / exact.shape[1])


@contextlib.contextmanager
def quiet_stderr(enabled: bool = True):
    """Silence file descriptor 2 (ScaNN's C++ logging prints a few lines per searcher build)."""
    if not enabled:
        yield
        return
    sys.stderr.flush()
    saved, null = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(null)


def scann_searcher(db: np.ndarray, k: int, frac: float, reorder: int, quiet: bool = True, tree: bool = True):
    """ScaNN searcher over one user's fused history [L, D]: tree of sqrt(L) leaves (search frac of them; `tree`
    False scans every step), asymmetric hashing (2-dim blocks, anisotropic threshold 0.2), exact reorder of the
    best `reorder`."""
    import scann
    leaves = max(8, int(np.sqrt(len(db))))
    with quiet_stderr(quiet):
        b = scann.scann_ops_pybind.builder(db, k, "dot_product")
        if tree:
            b = b.tree(num_leaves=leaves, num_leaves_to_search=max(2, int(round(leaves * frac))),
                       training_sample_size=len(db))
        return b.score_ah(2, anisotropic_quantization_threshold=0.2).reorder(reorder).build()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--item-vectors", help="item embeddings .npy, [N, M, D] or [N, D] (default: synthetic)")
    p.add_argument("--vectors", help="alias of --item-vectors")
    p.add_argument("--items", type=int, default=50_000, help="synthetic item table size N")
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--weights", default="0.1,0.2,0.3,0.4", help="modality weights (M = their count)")
    p.add_argument("--lengths", default="1000,2000,10000")
    p.add_argument("--users", type=int, default=200)
    p.add_argument("--batch", type=int, default=200, help="target queries per request")
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--pq-subspaces", default="8,16")
    p.add_argument("--codewords", type=int, default=256)
    p.add_argument("--kmeans-iters", type=int, default=20)
    p.add_argument("--train-sample", type=int, default=20_000, help="item vectors per modality for global codebooks")
    p.add_argument("--codebooks", choices=["global", "per-user", "both"], default="global")
    p.add_argument("--per-user-users", type=int, default=20, help="users measured with per-user codebooks")
    p.add_argument("--simhash-bits", default="16,64,128")
    p.add_argument("--no-scann", action="store_true")
    p.add_argument("--scann-search-frac", type=float, default=0.5)
    p.add_argument("--scann-reorder", type=int, default=128)
    p.add_argument("--scann-logs", action="store_true", help="keep ScaNN's C++ log lines (silenced by default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="50 users, L in 1000, 2000, N = 20,000 (< 1 minute)")
    p.add_argument("--json", default=str(ROOT / "benchmarks" / "out" / "seminar_gsu.json"))
    p.add_argument("--run", help="a trained seminar / twin run directory: first measure each GSU on the model "
                                 "(benchmarks/seminar_gsu_model.py), then time them on the model's item table")
    p.add_argument("--run-max-rows", type=int, help="test rows for the model-quality part (default: all)")
    p.add_argument("--card", action="store_true", help="write the tables into seeds/papers/seminar.md")
    args = p.parse_args(argv)
    if args.quick:                                                      # smaller defaults; explicit flags still win
        p.set_defaults(users=50, lengths="1000,2000", items=20_000, train_sample=10_000)
        args = p.parse_args(argv)
    model_rows = None
    if args.run:
        from benchmarks.seminar_gsu_model import model_gsu_quality

        model_rows, tables = model_gsu_quality(args.run, max_rows=args.run_max_rows)
        k_model = tables["k"]
        print(f"\nGSU quality on {args.run} (test, 1 + 99 negatives, recommendation mode; recall@{k_model} of the "
              f"per-head top-{k_model} vs the exact one, histories longer than {k_model})\n")
        quality = [f"| GSU | recall@{k_model} | HIT@10 | NDCG@10 | MRR |", "|---|---|---|---|---|"]
        quality += [f"| {r['gsu']} | {r[f'recall@{k_model}']:.4f} | {r['hit@10']:.4f} | {r['ndcg@10']:.4f} | "
                    f"{r['mrr']:.4f} |" for r in model_rows]
        print("\n".join(quality))
        # the latency part then runs on the model's own per-modality item table and gate weights
        path = Path(args.json).with_name("seminar_gsu_items.npy")
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, tables["modalities"])
        args.item_vectors = str(path)
        args.weights = ",".join(f"{w:.6f}" for w in tables["weights"])
    lengths = [int(v) for v in args.lengths.split(",")]
    subspaces = [int(v) for v in args.pq_subspaces.split(",")]
    bits_list = [int(v) for v in args.simhash_bits.split(",")]
    rng = np.random.default_rng(args.seed)
    t_start = time.perf_counter()

    items, weights, source = load_items(args, rng)
    n, m, dim = items.shape
    fused_items = np.einsum("nmd,m->nd", items, weights).astype(np.float32)
    print(f"{source}; weights {weights.tolist()}; {os.cpu_count()} CPUs")
    w = tf.constant(weights)
    k = args.k

    # -- offline: tables, codebooks, codes ----------------------------------------------------------------------------
    float_table, fused_table = tf.Variable(items, trainable=False), tf.Variable(fused_items, trainable=False)
    offline, pq_global = {}, {}
    if args.codebooks in ("global", "both"):
        sample = items[np.sort(rng.choice(n, min(n, args.train_sample), replace=False))]
        for c in subspaces:
            t = time.perf_counter()
            books = train_pq_codebooks(sample, c, args.codewords, args.kmeans_iters, args.seed)
            train_s = time.perf_counter() - t
            t = time.perf_counter()
            codes = pq_encode(items, books)
            offline[f"PQ C={c} (global)"] = {"train_s": train_s, "encode_s": time.perf_counter() - t}
            pq_global[c] = (tf.constant(books), tf.Variable(codes, trainable=False))
    simhash = {}
    for b in bits_list:
        t = time.perf_counter()
        planes = tf.constant(simhash_planes(dim, b, args.seed))
        simhash[b] = (planes, tf.Variable(pack_bits(simhash_codes(items, planes)), trainable=False))
        offline[f"SimHash {b} bits"] = {"train_s": 0.0, "encode_s": time.perf_counter() - t}
    print(f"offline: {json.dumps({a: {x: round(y, 2) for x, y in v.items()} for a, v in offline.items()})}")

    spec_q, spec_ids = tf.TensorSpec([None, dim], tf.float32), tf.TensorSpec([None], tf.int32)

    @tf.function(input_signature=[spec_q, spec_ids])
    def exact_fn(q, ids):
        keys = tf.einsum("lmd,m->ld", tf.gather(float_table, ids), w)
        return tf.math.top_k(tf.matmul(q, keys, transpose_b=True), k).indices

    @tf.function(input_signature=[spec_q, spec_ids])
    def prefused_fn(q, ids):
        return tf.math.top_k(tf.matmul(q, tf.gather(fused_table, ids), transpose_b=True), k).indices

    def pq_fn(books, table, decode):
        @tf.function(input_signature=[spec_q, spec_ids, tf.TensorSpec(books.shape, tf.float32)])
        def fn(q, ids, codebooks):
            return tf.math.top_k(pq_scores(q, tf.gather(table, ids), codebooks, w, decode=decode), k).indices
        return fn

    def simhash_fn(planes, table):
        @tf.function(input_signature=[spec_q, spec_ids])
        def fn(q, ids):
            qbits = pack_bits(simhash_codes(q, planes))
            return tf.math.top_k(hamming_matches(qbits, tf.gather(table, ids), w), k).indices
        return fn

    methods = {"exact": (exact_fn, 4 * m * dim), "exact prefused [L, D]": (prefused_fn, 4 * dim)}
    for c, (books, table) in pq_global.items():
        for decode, label in ((True, f"PQ C={c} (global)"), (False, f"PQ C={c} ADC (global)")):
            fn = pq_fn(books, table, decode)
            methods[label] = ((lambda q, ids, fn=fn, books=books: fn(q, ids, books)), m * c)
        offline[f"PQ C={c} ADC (global)"] = offline[f"PQ C={c} (global)"]
    for b, (planes, table) in simhash.items():
        methods[f"SimHash {b} bits"] = (simhash_fn(planes, table), m * b // 8)

    rows = []
    for length in lengths:
        stats = {name: {"recall": [], "ms": []} for name in methods}
        extra = {}
        user_codes_fn = {}
        for c in subspaces if args.codebooks in ("per-user", "both") else []:
            @tf.function(input_signature=[spec_q, spec_ids, tf.TensorSpec([None, m, c], tf.uint8),
                                          tf.TensorSpec([m, c, args.codewords, dim // c], tf.float32)])
            def fn(q, ids, codes, codebooks):
                return tf.math.top_k(pq_scores(q, tf.gather(codes, ids), codebooks, w), k).indices
            user_codes_fn[c] = fn
        for u in range(-2, args.users):                                 # users -2, -1: warm-up, not recorded
            ids = rng.choice(n, length, replace=length > n).astype(np.int32)
            if args.item_vectors or args.vectors:
                q = fused_items[rng.integers(0, n, args.batch)]
            else:
                q = np.einsum("bmd,m->bd", unit(rng.standard_normal((args.batch, m, dim))), weights).astype(np.float32)
            q_t, ids_t = tf.constant(q), tf.constant(ids)
            truth = None
            for name, (fn, _) in methods.items():
                t = time.perf_counter()
                idx = fn(q_t, ids_t).numpy()
                ms = 1e3 * (time.perf_counter() - t)
                truth = idx if truth is None else truth
                if u >= 0:
                    stats[name]["recall"].append(recall(idx, truth))
                    stats[name]["ms"].append(ms)
            if not args.no_scann:
                t = time.perf_counter()
                searcher = scann_searcher(fused_items[ids], k, args.scann_search_frac, args.scann_reorder,
                                          quiet=not args.scann_logs)
                build = time.perf_counter() - t
                t = time.perf_counter()
                idx, _ = searcher.search_batched(q, final_num_neighbors=k)
                ms = 1e3 * (time.perf_counter() - t)
                if u >= 0:
                    s = stats.setdefault("ScaNN per user", {"recall": [], "ms": [], "build_s": []})
                    s["recall"].append(recall(np.asarray(idx), truth))
                    s["ms"].append(ms)
                    s["build_s"].append(build)
            if u < args.per_user_users:
                user_local = np.arange(length, dtype=np.int32)
                for c, fn in user_codes_fn.items():
                    t = time.perf_counter()
                    books = train_pq_codebooks(items[ids], c, args.codewords, args.kmeans_iters, args.seed)
                    codes = pq_encode(items[ids], books)
                    build = time.perf_counter() - t
                    books_t, codes_t = tf.constant(books), tf.constant(codes)
                    t = time.perf_counter()
                    idx = fn(q_t, tf.constant(user_local), codes_t, books_t).numpy()
                    ms = 1e3 * (time.perf_counter() - t)
                    if u >= 0:
                        s = stats.setdefault(f"PQ C={c} (per-user)", {"recall": [], "ms": [], "build_s": []})
                        s["recall"].append(recall(idx, truth))
                        s["ms"].append(ms)
                        s["build_s"].append(build)
                        extra[f"PQ C={c} (per-user)"] = m * c
        for name, s in stats.items():
            if name in methods:
                per_item = methods[name][1]
            elif name == "ScaNN per user":
                per_item = 4 * dim + dim // 4
            else:
                per_item = extra[name]
            build = float(np.mean(s["build_s"])) if "build_s" in s else offline.get(name, {}).get("train_s")
            if name in offline:
                build += offline[name]["encode_s"]
            rows.append({"L": length, "method": name, "users": len(s["ms"]), f"recall@{k}": float(np.mean(s["recall"])),
                         "p50_ms": float(np.percentile(s["ms"], 50)), "p90_ms": float(np.percentile(s["ms"], 90)),
                         "bytes_per_user": per_item * length,
                         "build_s": build,
                         "build_kind": "per user" if "build_s" in s else "once, offline" if build is not None else ""})

    print(f"\nB = {args.batch} queries per request, top-{k}, M = {m}, D = {dim}, {args.codewords} codewords; "
          f"recall vs exact; latency = one request, ids -> top-K indices\n")
    latency = [f"| L | method | recall@{k} | p50 ms | p90 ms | bytes/user | build s (train + encode) |",
               "|---|---|---|---|---|---|---|"]
    for r in rows:
        build = "-" if r["build_s"] is None else f"{r['build_s']:.3f} ({r['build_kind']})"
        latency.append(f"| {r['L']} | {r['method']} | {r[f'recall@{k}']:.3f} | {r['p50_ms']:.2f} | "
                       f"{r['p90_ms']:.2f} | {r['bytes_per_user']:,} | {build} |")
    print("\n".join(latency))
    total = time.perf_counter() - t_start
    print(f"\ntotal {total:.0f} s")
    out = {"source": source, "weights": weights.tolist(), "items": n, "modalities": m, "dim": dim, "k": k,
           "batch": args.batch, "users": args.users, "lengths": lengths, "codewords": args.codewords,
           "codebooks": args.codebooks, "scann": {"search_frac": args.scann_search_frac, "reorder": args.scann_reorder},
           "cpus": os.cpu_count(), "offline": offline, "rows": rows, "total_s": total,
           "model_quality": model_rows, "run": args.run}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {args.json}")
    plot(rows, k, Path(args.json).with_suffix(".png"))
    if args.card:
        from benchmarks.seminar import write_card

        text = ""
        if model_rows:
            rows_note = f"the first {args.run_max_rows} test rows" if args.run_max_rows else "test"
            text += (f"Quality of each GSU inside the trained model ({args.run}; {rows_note}, 1 + 99 negatives, "
                     f"recommendation mode; recall@{k_model} of each head's top-{k_model} against the exact one, "
                     f"histories longer than {k_model}):\n\n" + "\n".join(quality) + "\n\n")
        text += (f"Search cost, {source}, B = {args.batch} candidates per request against one user's L history "
                 f"items, top-{k}, {os.cpu_count()} CPUs (ids -> gather -> scores -> top-K indices; recall vs "
                 f"exact):\n\n" + "\n".join(latency) + "\n")
        text = text.replace(str(ROOT) + "/", "")
        write_card(text, "python benchmarks/seminar_gsu.py " + " ".join(argv if argv is not None else sys.argv[1:]),
                   "<!-- seminar-gsu -->")
    return 0


def plot(rows: list[dict], k: int, path: Path) -> None:
    """Recall@k vs p50 latency, one panel per history length."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("note: matplotlib is not installed, skipping the plot")
        return
    lengths = sorted({r["L"] for r in rows})
    fig, axes = plt.subplots(1, len(lengths), figsize=(5 * len(lengths), 4), squeeze=False)
    for ax, length in zip(axes[0], lengths):
        for r in (r for r in rows if r["L"] == length):
            ax.scatter(r["p50_ms"], r[f"recall@{k}"])
            ax.annotate(r["method"], (r["p50_ms"], r[f"recall@{k}"]), fontsize=7)
        ax.set(title=f"L = {length}", xlabel="p50 ms / request", ylabel=f"recall@{k}", xscale="log")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")


if __name__ == "__main__":
    sys.exit(main())
