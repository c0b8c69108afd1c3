"""Top-K retrieval over 1M item vectors: ScaNN (scann's TF ops) vs brute force (TF matmul + top_k, and numpy), recall@K
against the exact top-K and queries/s, side by side in one run.

Vectors (realistic, clustered): a two-tower model (tfrec_zoo.models.two_tower, output_dim = --dim) is trained on
Amazon-Book (KGAT split, 24,915 items; `--train-epochs`), its item vectors (L2-normalised, as the model serves them)
are cached in data/two_tower_vectors/, and
  * items: `--n-items` vectors sampled from a Gaussian mixture fitted to the 24,915 trained item vectors
    (sklearn GaussianMixture, `--gmm-components` full-covariance components), then L2-normalised; the real vectors
    themselves are included (`--synthesis gmm`, default). `--synthesis perturb` instead copies random real vectors
    and adds isotropic Gaussian noise (`--noise` x the median nearest-neighbour distance), then L2-normalises.
  * queries: real query-tower vectors of `--queries` Amazon-Book test users (not synthetic).
Without ../shared/datasets (no Amazon-Book) it falls back to a random mixture on the sphere, and says so.

Methods (each over the same queries, batched by `--batch`; the exact top-K is numpy's):
  numpy          Q @ V.T (float32 BLAS) + argpartition + sort: exact
  tf_brute       tf.matmul + tf.math.top_k (what brute_force_topk_model exports; stock TF Serving): exact
  scann ...      scann_ops searcher, search_batched_parallel; tfrs' default settings, then the tuned ones
Throughput is queries/s at batch `--batch` after a warm-up batch; latency is p50 ms at batch 1 over 200 queries.

    python benchmarks/serving_retrieval.py                          # 1M x 64, 2000 queries, K = 100
    python benchmarks/serving_retrieval.py --n-items 200000 --queries 500 --k 50

`--part multi` (benchmarks/out/serving_retrieval/multi_interest.json): multi-interest users, K_u uniform in
1..`--max-interests` active interests (the mask of a [users, K, d] query), each interest the real query vector of a
different Amazon-Book test user (masked slots hold real vectors too: they must be ignored). An item scores its best
active interest; the exact answer is numpy's per-interest exact top-K merged (tfrec_zoo.retrieval.search_interests;
exact, since an item of the merged top-K is in its best interest's top-K). Timed side by side on the same users,
batched by `--mi-batch` users, through the graphs the exports serve: the exact top-K (einsum over every slot, max
over the active ones, top_k: NAME_topk, stock TF Serving) and the ScaNN top-K (the active interests searched, merged:
NAME_topk_scann) at `scann_params` settings and the tried search settings on the same tree; users/s and interest
queries/s. Both on the 1M set and on the 24,915 real item vectors (Amazon-Book's size).

`--mi-run RUN` (with `--part multi`): the users and items of a trained multi-interest run instead: its query tower's
interests and serving masks for its first `--queries` test users, its item vectors ("real") and `--n-items` copies
of them with `--noise` perturbation ("synthesised", as `--synthesis perturb`).

`--part eval-memory` (benchmarks/out/serving_retrieval/eval_memory.json): evaluate_retrieval's search at 1M items,
alone in its process: search_interests over a BruteForceIndex (its default 1,024-query chunks) for `--queries`
multi-interest users in evaluate_retrieval's 1,024-user chunks; peak RSS (getrusage) and seconds.

    python benchmarks/serving_retrieval.py --part multi
    python benchmarks/serving_retrieval.py --part multi --mi-run RUN   # a trained multi-interest model's own users
    python benchmarks/serving_retrieval.py --part eval-memory
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from tfrec_zoo._tf import tf  # noqa: E402
from tfrec_zoo.paths import default_data_dir, shared_datasets_dir  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


# -- vectors -----------------------------------------------------------------------------------------------------------
def trained_vectors(dim: int, epochs: int, log) -> tuple[np.ndarray, np.ndarray, dict] | None:
    """(item vectors [24,915, dim], query vectors [test users, dim], provenance) of a two-tower on Amazon-Book."""
    cache = default_data_dir() / "two_tower_vectors" / f"amazon-book-d{dim}-e{epochs}.npz"
    info = {"source": "two_tower trained on amazon-book (KGAT split)", "epochs": epochs, "cache": str(cache),
            "config": {"query_features": ["history"], "logq_correction": True, "output_dim": dim},
            "batch_size": 4096, "learning_rate": 0.002}
    if cache.exists():
        z = np.load(cache)
        log(f"vectors: cached {cache}")
        return z["items"], z["queries"], {**info, **json.loads(str(z["info"]))}
    if not (shared_datasets_dir() / "amazon-book_kgat").exists():
        return None
    from tfrec_zoo.data import open_dataset
    from tfrec_zoo.data.builders import build
    from tfrec_zoo.retrieval import item_embeddings
    from training.fit import fit_model
    from training.retrieval import _first_rows, read_columns

    path = default_data_dir() / "amazon-book"
    if not (path / "manifest.json").exists():
        log(f"building amazon-book into {path}")
        build("amazon-book", path, progress=False, log=log)
    data = open_dataset(path)
    t0 = time.perf_counter()
    model, hist = fit_model("two_tower", data, info["config"], drop_remainder=True, epochs=epochs,
                            batch_size=info["batch_size"], learning_rate=info["learning_rate"], verbose=0)
    train_s = time.perf_counter() - t0
    _, items = item_embeddings(model, data.artifacts)
    cols = read_columns(data, "test", model.query_inputs + ["user_id"])
    first = _first_rows(cols["user_id"], None)
    queries = model.query_model.predict({k: cols[k][first] for k in model.query_inputs}, batch_size=8192, verbose=0)
    extra = {"train_s": round(train_s, 1), "loss": [round(x, 4) for x in hist.history["loss"]],
             "n_real_items": len(items), "n_real_queries": len(queries)}
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez(cache, items=items, queries=queries, info=json.dumps(extra))
    log(f"vectors: trained in {train_s:.0f}s, cached in {cache}")
    return items, np.asarray(queries, np.float32), {**info, **extra}


def _normalise(x: np.ndarray) -> np.ndarray:
    return (x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)).astype(np.float32)


def synthesize(real: np.ndarray, n: int, how: str, components: int, noise: float, seed: int) -> tuple[np.ndarray, dict]:
    rng = np.random.default_rng(seed)
    n_new = max(n - len(real), 0)
    if how == "gmm":
        from sklearn.mixture import GaussianMixture

        gmm = GaussianMixture(components, covariance_type="full", random_state=seed, max_iter=100, reg_covar=1e-5)
        gmm.fit(real)
        new, _ = gmm.sample(n_new)
        new = new[rng.permutation(len(new))]
        info = {"synthesis": f"{n_new} samples of a {components}-component full-covariance Gaussian mixture fitted "
                             f"to the {len(real)} trained item vectors, L2-normalised, plus the real vectors"}
    elif how == "perturb":
        sample = real[rng.choice(len(real), min(len(real), 2000), replace=False)]
        d = np.sqrt(np.maximum(2 - 2 * sample @ real.T, 0))             # unit vectors: |a - b|^2 = 2 - 2 a.b
        d[d < 1e-6] = np.inf
        nn = float(np.median(d.min(axis=1)))
        sigma = noise * nn / np.sqrt(real.shape[1])
        new = real[rng.integers(0, len(real), n_new)] + rng.normal(0, sigma, (n_new, real.shape[1]))
        info = {"synthesis": f"{n_new} copies of random trained item vectors + N(0, {sigma:.4f}^2 I) noise "
                             f"({noise} x the median nearest-neighbour distance {nn:.4f}), L2-normalised, plus the "
                             "real vectors"}
    else:
        raise ValueError(how)
    items = np.concatenate([real, _normalise(new)])[:n]
    return items[rng.permutation(len(items))].astype(np.float32), info


def cached_synthesis(real: np.ndarray, args, log) -> tuple[np.ndarray, dict]:
    """`synthesize`, cached in data/two_tower_vectors/ (the 1M GMM fit takes minutes on 2 cores)."""
    key = (f"synth-{args.synthesis}-n{args.n_items}-d{real.shape[1]}-g{args.gmm_components}-z{args.noise}"
           f"-s{args.seed}-e{args.train_epochs}")
    cache = default_data_dir() / "two_tower_vectors" / f"{key}.npz"
    if cache.exists():
        z = np.load(cache)
        log(f"items: cached {cache}")
        return z["items"], json.loads(str(z["info"]))
    t0 = time.perf_counter()
    items, info = synthesize(real, args.n_items, args.synthesis, args.gmm_components, args.noise, args.seed)
    info = {**info, "synthesis_s": round(time.perf_counter() - t0, 1)}
    tmp = cache.with_name(f".{key}.{os.getpid()}.npz")
    np.savez(tmp, items=items, info=json.dumps(info))
    os.replace(tmp, cache)
    return items, info


def random_mixture(n: int, dim: int, n_queries: int, seed: int) -> tuple[np.ndarray, np.ndarray, dict]:
    rng = np.random.default_rng(seed)
    centers = _normalise(rng.normal(size=(1000, dim)))
    weights = rng.dirichlet(np.full(1000, 0.5))
    items = _normalise(centers[rng.choice(1000, n, p=weights)] + rng.normal(0, 0.6 / np.sqrt(dim), (n, dim)))
    queries = _normalise(centers[rng.choice(1000, n_queries, p=weights)] + rng.normal(0, 0.8 / np.sqrt(dim),
                                                                                     (n_queries, dim)))
    return items, queries, {"source": "FALLBACK (no amazon-book): 1000 random unit centres, Dirichlet(0.5) "
                                      "weights, Gaussian spread, L2-normalised; queries from the same mixture"}


# -- methods -----------------------------------------------------------------------------------------------------------
def numpy_topk(items: np.ndarray, k: int):
    def run(q):
        s = q @ items.T
        part = np.argpartition(-s, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(s, part, 1), axis=1)
        return np.take_along_axis(part, order, 1)
    return run


def tf_brute_topk(items: np.ndarray, k: int):
    v = tf.constant(items)

    @tf.function(input_signature=[tf.TensorSpec([None, items.shape[1]], tf.float32)])
    def fn(q):
        return tf.math.top_k(tf.matmul(q, v, transpose_b=True), k=k).indices

    return lambda q: fn(tf.constant(q)).numpy()


def scann_topk(searcher, k: int, leaves: int, reorder: int | None):
    pre = reorder if reorder else -1

    def run(q):
        return searcher.search_batched_parallel(tf.constant(q), final_num_neighbors=k,
                                                pre_reorder_num_neighbors=pre, leaves_to_search=leaves).indices.numpy()
    return run


def build_scann(items: np.ndarray, k: int, leaves: int, search: int, reorder: int | None, threads: int = 0):
    from scann import scann_ops

    t0 = time.perf_counter()
    b = scann_ops.builder(tf.constant(items), k, "dot_product").tree(
        num_leaves=leaves, num_leaves_to_search=search, training_sample_size=min(len(items), 250_000))
    b = b.score_ah(2, anisotropic_quantization_threshold=0.2)
    if reorder:
        b = b.reorder(reorder)
    b.set_n_training_threads(threads)
    searcher = b.build()
    return searcher, time.perf_counter() - t0


def measure(run, queries: np.ndarray, batch: int, latency_queries: int = 200) -> tuple[np.ndarray, float, float]:
    run(queries[:min(batch, len(queries))])                       # warm-up (tracing, kernel / searcher creation)
    out = []
    t0 = time.perf_counter()
    for lo in range(0, len(queries), batch):
        out.append(run(queries[lo:lo + batch]))
    qps = len(queries) / (time.perf_counter() - t0)
    lat = []
    for i in range(min(latency_queries, len(queries))):
        t = time.perf_counter()
        run(queries[i:i + 1])
        lat.append(time.perf_counter() - t)
    return np.concatenate(out), qps, 1000 * float(np.median(lat))


def recall(approx: np.ndarray, exact: np.ndarray) -> float:
    k = exact.shape[1]
    return float(np.mean([len(set(a[:k].tolist()) & set(e.tolist())) / k for a, e in zip(approx, exact)]))


# -- multi-interest users -----------------------------------------------------------------------------------------------
def interest_users(real_q: np.ndarray, n_users: int, max_k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """([users, K, d] interests, [users, K] bool mask): K_u uniform in 1..K, each interest (masked slots too) the
    query vector of a different real test user."""
    rng = np.random.default_rng(seed + 1)
    k_u = rng.integers(1, max_k + 1, n_users)
    picks = rng.choice(len(real_q), n_users * max_k, replace=len(real_q) < n_users * max_k)
    vectors = np.asarray(real_q, np.float32)[picks].reshape(n_users, max_k, -1)
    return vectors, np.arange(max_k)[None, :] < k_u[:, None]


class NumpyIndex:
    """Exact top-K by float32 BLAS + argpartition: the reference (`.search` as tfrec_zoo.retrieval's indexes)."""

    def __init__(self, items: np.ndarray, chunk: int = 512):
        self.items, self.n, self.chunk = items, len(items), chunk

    def search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        ids, scores = [], []
        for lo in range(0, len(q), self.chunk):
            s = q[lo:lo + self.chunk] @ self.items.T
            part = np.argpartition(-s, k - 1, axis=1)[:, :k]
            sc = np.take_along_axis(s, part, 1)
            order = np.argsort(-sc, axis=1, kind="stable")
            ids.append(np.take_along_axis(part, order, 1))
            scores.append(np.take_along_axis(sc, order, 1))
        return np.concatenate(ids), np.concatenate(scores)


def identity_tower(max_k: int, dim: int):
    """A query tower whose raw inputs are already the interests and the mask: the top-K graphs alone."""
    from tfrec_zoo._tf import keras

    v, m = keras.Input((max_k, dim), name="interests"), keras.Input((max_k,), name="mask")
    return keras.Model([v, m], {"interests": keras.layers.Activation("linear")(v),
                                "mask": keras.layers.Activation("linear")(m)})


def measure_users(run, vectors: np.ndarray, mask: np.ndarray, batch: int, latency_users: int = 100):
    """(ids [users, K], users/s at `batch` users a call, p50 ms of one user a call) after a warm-up batch."""
    run(vectors[:batch], mask[:batch])
    out = []
    t0 = time.perf_counter()
    for lo in range(0, len(vectors), batch):
        out.append(run(vectors[lo:lo + batch], mask[lo:lo + batch]))
    ups = len(vectors) / (time.perf_counter() - t0)
    lat = []
    for i in range(min(latency_users, len(vectors))):
        t = time.perf_counter()
        run(vectors[i:i + 1], mask[i:i + 1])
        lat.append(time.perf_counter() - t)
    return np.concatenate(out), ups, 1000 * float(np.median(lat))


def topk_runner(topk):
    def run(v, m):
        return topk({"interests": v, "mask": m.astype(np.float32)})["ids"].numpy()
    return run


def scann_tries(n: int, p: dict) -> list[tuple[int, int]]:
    """(leaves searched, re-ordered) tried on scann_params' tree besides its own setting: fewer and more leaves,
    smaller and larger re-ordering."""
    leaves = p["num_leaves"]
    fractions = (0.02, 0.05, 0.1, 0.15) if n > 100_000 else (0.05, 0.1, 0.25, 0.5)
    tries = [(max(1, int(round(leaves * f))), r) for f in fractions for r in (300, 1000)]
    return [t for t in dict.fromkeys(tries) if t != (p["num_leaves_to_search"], p["reorder"])]


def multi_interest(args, item_sets: dict, real_q: np.ndarray, info: dict, log, users=None) -> int:
    from tfrec_zoo.retrieval import ScannIndex, brute_force_topk_model, scann_params, scann_topk_model, \
        search_interests

    k = args.k
    if users is None:
        max_k = args.max_interests
        vectors, mask = interest_users(real_q, args.queries, max_k, args.seed)
    else:                       # a trained multi-interest model's own users: its interests and serving masks
        vectors, mask = users
        max_k = vectors.shape[1]
    active = int(mask.sum())
    log(f"{len(vectors)} users, K_u in 1..{max_k} ({active} interests, {active / len(vectors):.2f} a user)")
    results = []
    for set_name, items in item_sets.items():
        n = len(items)
        exact = None                              # the first method's (numpy, exact) answer
        rows = []
        tower = identity_tower(max_k, items.shape[1])

        def add(name, run, build_s=0.0, params=None):
            nonlocal exact
            ids, ups, lat = measure_users(run, vectors, mask, args.mi_batch)
            exact = ids if exact is None else exact
            rows.append({"method": name, "recall": recall(ids, exact), "users_per_s": ups,
                         "interest_queries_per_s": ups * active / len(vectors), "p50_ms_one_user": lat,
                         "build_s": build_s, "params": params or {}})
            log(f"{set_name} {name:<58} recall@{k} {rows[-1]['recall']:.4f} {ups:8.0f} users/s  p50 {lat:6.2f} ms")

        index = NumpyIndex(items)
        add("numpy exact (per active interest + merge)",
            lambda v, m: search_interests(index, v, m, k)[0])
        add("tf brute force export (NAME_topk: einsum, max, top_k)",
            topk_runner(brute_force_topk_model(tower, np.arange(n), items, k)))
        p = scann_params(n, k)
        t0 = time.perf_counter()
        scann = ScannIndex(items, k)
        build_s = time.perf_counter() - t0
        for i, (search, reorder) in enumerate([(p["num_leaves_to_search"], p["reorder"]), *scann_tries(n, p)]):
            topk = scann_topk_model(tower, np.arange(n), items, k, index=scann, num_leaves_to_search=search,
                                    reorder=reorder)
            label = "scann_params()" if i == 0 else "tried"
            add(f"scann export ({label}): {p['num_leaves']} leaves, search {search}, reorder {reorder}",
                topk_runner(topk), build_s if i == 0 else 0.0, topk.params)
        brute = rows[1]["users_per_s"]
        for r in rows:
            r["x_tf_brute_force"] = r["users_per_s"] / brute
        results.append({"items": set_name, "n_items": n, "rows": rows})

    print(f"\nmulti-interest users: {len(vectors)}, K_u uniform in 1..{max_k} ({active / len(vectors):.2f} "
          f"interests a user), K = {k}, batch {args.mi_batch} users, {os.cpu_count()} CPUs\n")
    for res in results:
        print(f"{res['n_items']:,} items ({res['items']}):\n")
        print(f"| method | recall@{k} vs exact | users/s | interest queries/s | x tf brute force | "
              "p50 ms (1 user) | build s |")
        print("|---|---|---|---|---|---|---|")
        for r in res["rows"]:
            print(f"| {r['method']} | {r['recall']:.4f} | {r['users_per_s']:.0f} | {r['interest_queries_per_s']:.0f} "
                  f"| {r['x_tf_brute_force']:.1f} | {r['p50_ms_one_user']:.2f} | {r['build_s']:.1f} |")
        print()
    out = {"users": len(vectors), "max_interests": max_k, "active_interests": active, "k": k,
           "batch_users": args.mi_batch, "cpus": os.cpu_count(), "vectors": info,
           "interests": info.get("interests", "each a real query-tower vector of a different Amazon-Book test user; "
                                                "K_u uniform in 1..K"),
           "results": results}
    _write(args.json, out)
    return 0


def run_users(run_dir: str, n_users: int, n_items: int, noise: float, seed: int, log):
    """A trained multi-interest run: ({"real": its item vectors, "synthesised": n_items perturbed copies of them},
    (interests [users, K, d], serving masks [users, K]) of its first `n_users` test users, info)."""
    from tfrec_zoo.retrieval import as_interests, item_embeddings
    from training.retrieval import read_columns
    from training.runs import load_run

    _, data, model = load_run(run_dir, log=log)
    _, real = item_embeddings(model, data.artifacts)
    user_key = data.spec.keys["user"]
    cols = read_columns(data, "test", list(model.query_inputs) + [user_key])
    _, first = np.unique(cols[user_key], return_index=True)
    first = np.sort(first)[:n_users]
    vectors, mask = as_interests(model.query_model.predict({c: cols[c][first] for c in model.query_inputs},
                                                           batch_size=4096, verbose=0))
    items, syn = synthesize(real, n_items, "perturb", 0, noise, seed)
    k_u = mask.sum(1)
    info = {"run": str(run_dir), "model": model.name, **syn,
            "interests": f"the run's query tower on its first {len(first)} test users (serving masks: k_u mean "
                         f"{k_u.mean():.2f}, {dict(zip(*np.unique(k_u, return_counts=True)))})"}
    return {"synthesised": items, "real": real}, (vectors, mask), info


def _rss_gb() -> float:
    """Current resident set (/proc/self/statm), GB."""
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e9


def eval_memory(args, items: np.ndarray, real_q: np.ndarray, info: dict, log) -> int:
    """evaluate_retrieval's search loop (training/retrieval.py) at full size: per 1,024-user chunk,
    search_interests over a BruteForceIndex (query chunks of at most 1,024, fewer so that a chunk's [chunk x N]
    score block stays under 256 MB: 64 queries at 1M items)."""
    from tfrec_zoo.retrieval import BruteForceIndex, search_interests

    vectors, mask = interest_users(real_q, args.queries, args.max_interests, args.seed)
    chunk, index_chunk = 1024, 1024                    # evaluate_retrieval's and BruteForceIndex's defaults
    before = {"rss_gb": _rss_gb(), "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6}
    t0 = time.perf_counter()
    index = BruteForceIndex(items, chunk=index_chunk)
    index_s = time.perf_counter() - t0
    index_chunk = index.chunk                          # after the index's cap on the score block
    after_index = _rss_gb()
    top = np.full((len(vectors), args.k), -1, np.int64)
    t0 = time.perf_counter()
    for lo in range(0, len(vectors), chunk):
        pos, _ = search_interests(index, vectors[lo:lo + chunk], mask[lo:lo + chunk], args.k)
        top[lo:lo + chunk] = pos
    search_s = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6      # KB on Linux
    out = {"n_items": len(items), "dim": int(items.shape[1]), "users": len(vectors),
           "active_interests": int(mask.sum()), "k": args.k, "user_chunk": chunk, "index_query_chunk": index_chunk,
           "largest_score_matrix": f"[{index_chunk} x {len(items)}] float32 = "
                                   f"{index_chunk * len(items) * 4 / 1e9:.2f} GB",
           "rss_before_index_gb": round(before["rss_gb"], 2), "peak_rss_before_gb": round(before["peak_rss_gb"], 2),
           "rss_after_index_gb": round(after_index, 2), "peak_rss_gb": round(peak, 2),
           "index_build_s": round(index_s, 2), "search_s": round(search_s, 2),
           "users_per_s": round(len(vectors) / search_s, 1), "all_users_filled": bool((top >= 0).all()),
           "cpus": os.cpu_count(), "vectors": info}
    print(json.dumps({k_: v for k_, v in out.items() if k_ != "vectors"}, indent=1))
    _write(args.json, out)
    return 0


def _write(path: str, out: dict) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(json.dumps(out, indent=1, default=float) + "\n")
    os.replace(tmp, path)
    print(f"wrote {path}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-items", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--queries", type=int, default=2000)
    ap.add_argument("--k", type=int, default=100)
    ap.add_argument("--batch", type=int, default=256, help="queries per call for the throughput numbers")
    ap.add_argument("--synthesis", choices=["gmm", "perturb"], default="gmm")
    ap.add_argument("--gmm-components", type=int, default=256)
    ap.add_argument("--noise", type=float, default=1.0)
    ap.add_argument("--train-epochs", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--part", choices=["single", "multi", "eval-memory"], default="single",
                    help="single-vector queries (default), multi-interest users, or evaluate_retrieval's memory")
    ap.add_argument("--max-interests", type=int, default=4, help="--part multi / eval-memory: K (K_u in 1..K)")
    ap.add_argument("--mi-batch", type=int, default=64, help="--part multi: users per call")
    ap.add_argument("--mi-run", help="--part multi: a trained multi-interest run dir: its item vectors (+ --n-items "
                                     "perturbed copies) and its test users' interests and masks")
    ap.add_argument("--json", default=None, help="default: benchmarks/out/serving_retrieval.json (single), "
                                                 "benchmarks/out/serving_retrieval/{multi_interest,eval_memory}.json")
    args = ap.parse_args(argv)
    out_dir = ROOT / "benchmarks" / "out"
    args.json = args.json or str({"single": out_dir / "serving_retrieval.json",
                                  "multi": out_dir / "serving_retrieval" / "multi_interest.json",
                                  "eval-memory": out_dir / "serving_retrieval" / "eval_memory.json"}[args.part])

    def log(*a):
        print(*a, file=sys.stderr, flush=True)

    rng = np.random.default_rng(args.seed)
    if args.part == "multi" and args.mi_run:
        item_sets, users, info = run_users(args.mi_run, args.queries, args.n_items, args.noise, args.seed, log)
        return multi_interest(args, item_sets, None, info, log, users=users)
    got = trained_vectors(args.dim, args.train_epochs, log)
    if got is None:
        items, queries, info = random_mixture(args.n_items, args.dim, args.queries, args.seed)
        real, real_q = items, queries
        log("WARNING: amazon-book not found; using a random mixture (see the JSON's vectors.source)")
    else:
        real, real_q, info = got
        items, syn = cached_synthesis(real, args, log)
        info = {**info, **syn}
        queries = real_q[rng.choice(len(real_q), min(args.queries, len(real_q)), replace=False)].astype(np.float32)
    if args.part == "multi":
        return multi_interest(args, {"synthesised": items, "real": real}, real_q, info, log)
    if args.part == "eval-memory":
        return eval_memory(args, items, real_q, info, log)
    n, k = len(items), args.k
    log(f"{n} items x {items.shape[1]}, {len(queries)} queries, K = {k}")

    rows = []

    def add(name, run, build_s=0.0, params=None):
        ids, qps, lat = measure(run, queries, args.batch)
        rows.append({"method": name, "recall": recall(ids, exact) if exact is not None else 1.0, "qps": qps,
                     "p50_ms_batch1": lat, "build_s": build_s, "params": params or {}})
        log(f"{name:<44} recall@{k} {rows[-1]['recall']:.4f}  {qps:9.0f} q/s  p50 {lat:7.2f} ms")
        return ids

    exact = None
    exact = add("numpy brute force (exact)", numpy_topk(items, k))
    add("tf matmul + top_k (exact, stock TF Serving)", tf_brute_topk(items, k))

    configs = []
    default_s, default_b = build_scann(items, k, 100, 10, None)                 # tfrs' ScaNN layer defaults
    configs.append(("scann tfrs defaults (100 leaves/10, no reorder)", default_s, default_b, 10, None,
                    {"num_leaves": 100, "num_leaves_to_search": 10, "reorder": None}))
    leaves = int(round(np.sqrt(n) * 2))                                          # ~2000 at 1M
    tuned_s, tuned_b = build_scann(items, k, leaves, 50, 1000)
    for search, reorder in ((25, 250), (50, 500), (100, 500), (100, 800), (100, 1000), (200, 1000)):
        configs.append((f"scann {leaves} leaves, search {search}, reorder {reorder}", tuned_s, tuned_b, search,
                        reorder, {"num_leaves": leaves, "num_leaves_to_search": search, "reorder": reorder}))
        tuned_b = 0.0                                    # built once; search settings change at query time
    from tfrec_zoo.retrieval import scann_params

    p = scann_params(n, k)
    if p["num_leaves"] != leaves:
        s, b = build_scann(items, k, p["num_leaves"], p["num_leaves_to_search"], p["reorder"])
        configs.append((f"scann scann_params(): {p['num_leaves']} leaves, search {p['num_leaves_to_search']}, "
                        f"reorder {p['reorder']}", s, b, p["num_leaves_to_search"], p["reorder"], p))
    else:
        configs.append((f"scann scann_params(): {leaves} leaves, search {p['num_leaves_to_search']}, "
                        f"reorder {p['reorder']}", tuned_s, 0.0, p["num_leaves_to_search"], p["reorder"], p))
    for name, searcher, build_s, search, reorder, params in configs:
        add(name, scann_topk(searcher, k, search, reorder), build_s, params)

    tf_qps = rows[1]["qps"]
    print(f"\n{n:,} items x {items.shape[1]}, {len(queries)} queries, K = {k}, batch {args.batch}, "
          f"{os.cpu_count()} CPUs\n")
    print(f"| method | recall@{k} vs exact | queries/s | x tf brute force | p50 ms (batch 1) | build s |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['method']} | {r['recall']:.4f} | {r['qps']:.0f} | {r['qps'] / tf_qps:.1f} | "
              f"{r['p50_ms_batch1']:.2f} | {r['build_s']:.1f} |")
    out = {"n_items": n, "dim": int(items.shape[1]), "queries": len(queries), "k": k, "batch": args.batch,
           "cpus": os.cpu_count(), "vectors": info, "rows": rows}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=1, default=float) + "\n")
    print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
