"""GSU quality on a trained SEMINAR / TWIN run: each GSU's per-head top-K against the exact per-head top-K, and
the model's ranking quality (test split, 1 + 99 sampled negatives, recommendation mode) with that GSU in place.

    python benchmarks/seminar_gsu.py --run RUN_DIR          # this part, then the latency part on the run's items

GSUs (all select K of the valid history steps per head, for the query q'_h = W_K^T (W_Q t + b_Q)):
  exact        top-K of q'_h . x_l (the model's own GSU)
  PQ C=c       the in-graph multi-modal PQ GSU (`with_pq_gsu`: k-means codebooks on the model's item and query
               tables, c sub-spaces x 256 codewords; per-row histories by ADC lookup tables, a history shared
               by the B candidates of a rank request decoded + one matmul): what the export serves
  SimHash b    top-K by equal bits of b-bit SimHash signatures of q'_h and x_l (ETA's search, random hyperplanes)
  ScaNN        one searcher per test history over its valid x_l (AH 2-dim blocks + exact reorder of 4K; a tree
               of sqrt(n) leaves searched half-way only over 2,000 steps), queried with q'_h
Recall@K counts only histories longer than K (shorter ones are selected whole by every GSU).
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from tfrec_zoo._tf import keras, tf


def _simhash(bits: int, dim: int, seed: int = 0):
    """ETA's selection for the model's head queries: top-K by equal SimHash bits of q'_h and x_l."""
    from tfrec_zoo.layers.lifelong import masked_top_k
    from tfrec_zoo.layers.quantization import hamming_matches, simhash_codes, simhash_planes

    planes = tf.constant(simhash_planes(dim, bits, seed))

    def select(q, bias, steps, mask, k):
        b, h = tf.shape(q)[0], q.shape[1]
        matches = hamming_matches(simhash_codes(tf.reshape(q, [-1, dim]), planes),
                                  tf.repeat(simhash_codes(steps, planes), h, axis=0))          # [B*H, L]
        idx, valid = masked_top_k(matches, tf.repeat(mask, h, axis=0), k)
        return tf.reshape(idx, [b, h, -1]), tf.reshape(valid, [b, h, -1])
    return select


def _scann(group: int, searcher_fn, stats: dict):
    """Rows come in blocks of `group` candidates sharing one history: one searcher per block."""
    def select(q, bias, steps, mask, k):
        q, steps, mask = q.numpy(), steps.numpy(), mask.numpy().astype(bool)
        b, h, _ = q.shape
        idx = np.zeros((b, h, k), np.int32)
        valid = np.zeros((b, h, k), bool)
        for lo in range(0, b, group):
            pos = np.flatnonzero(mask[lo])
            hi = min(b, lo + group)
            if len(pos) <= k:
                idx[lo:hi, :, :len(pos)] = pos
                valid[lo:hi, :, :len(pos)] = True
                continue
            t = time.perf_counter()
            searcher = searcher_fn(np.ascontiguousarray(steps[lo, pos]), k)
            stats["build_s"] = stats.get("build_s", 0.0) + time.perf_counter() - t
            stats["builds"] = stats.get("builds", 0) + 1
            found, _ = searcher.search_batched(q[lo:hi].reshape(-1, q.shape[-1]), final_num_neighbors=k)
            found = np.asarray(found).reshape(hi - lo, h, -1)
            idx[lo:hi, :, :found.shape[-1]] = pos[found]
            valid[lo:hi, :, :found.shape[-1]] = True
        return tf.constant(idx), tf.constant(valid)
    return select


def _recall(sel, ref, lengths, k) -> float:
    (ia, va), (ie, ve) = sel, ref
    out = []
    for b in np.flatnonzero(lengths > k):
        for h in range(ie.shape[1]):
            e = set(ie[b, h][ve[b, h]].tolist())
            out.append(len(e & set(ia[b, h][va[b, h]].tolist())) / max(1, len(e)))
    return float(np.mean(out)) if out else float("nan")


def model_gsu_quality(run_dir: str | Path, *, subspaces=(8, 16, 32), simhash_bits=(16, 64), scann: bool = True,
                      max_rows: int | None = None, recall_users: int = 8, log=print) -> tuple[list[dict], dict]:
    """(rows of the quality table, {"items": fused item table [V, D], "weights": gate}) for the run's model."""
    from benchmarks.seminar_gsu import scann_searcher
    from tfrec_zoo.models.seminar import fused_tables, with_pq_gsu
    from training.ranking import evaluate_sampled, query_columns
    from training.trainer import load_run

    exp, data, model = load_run(run_dir, log=lambda *a: None)
    esu = model.get_layer("esu")
    k = esu.top_k
    n_neg = data.spec["eval_negatives"].max_len
    # the esu's inputs for test candidate rows (recommendation mode: queries emptied) -> reference selections
    probe = keras.Model(model.inputs, esu.input)
    feats = next(iter(data.dataset("test", recall_users, features=list(model.input_names))))[0]
    x = {n: tf.repeat(feats[n], 1 + n_neg, axis=0) for n in model.input_names}
    for qcol in query_columns(data.spec, model.input_names):       # recommendation mode: queries emptied
        x[qcol] = tf.fill(tf.shape(x[qcol]), "")
    ins = probe(x)
    t, steps, mask = ins[0], ins[1], ins[2]
    lengths = tf.reduce_sum(tf.cast(mask, tf.int32), 1).numpy()
    q, bias = esu.query_in_step_space(t)
    ref = tuple(a.numpy() for a in esu.selected([t, steps, mask]))
    rows = []

    def record(name, sel_fn=None, scorer=None, seconds=0.0, extra=None):
        if sel_fn is not None:
            sel = tuple(np.asarray(a) for a in sel_fn(q, bias, steps, mask, k))
        else:
            sel = tuple(a.numpy() for a in scorer.get_layer("esu").selected(keras.Model(
                scorer.inputs, scorer.get_layer("esu").input)(x)))
        rec = _recall(sel, ref, lengths, k)
        target = scorer or model
        start = time.perf_counter()
        if sel_fn is not None:
            esu.selection_fn = sel_fn
        try:
            r = evaluate_sampled(target, data, "test", modes=("recommendation",), max_rows=max_rows,
                                 eager=sel_fn is not None)["recommendation"]
        finally:
            esu.selection_fn = None
        row = {"gsu": name, f"recall@{k}": rec, "hit@10": r["hit@10"], "ndcg@10": r["ndcg@10"], "mrr": r["mrr"],
               "eval_s": time.perf_counter() - start, "setup_s": seconds, **(extra or {})}
        log(row)
        rows.append(row)

    record("exact", scorer=model)
    for c in subspaces:
        start = time.perf_counter()
        pq_model, _ = with_pq_gsu(model, data.artifacts, subspaces=c)
        record(f"PQ C={c}", scorer=pq_model, seconds=time.perf_counter() - start)
    for bits in simhash_bits:
        record(f"SimHash {bits} bits", sel_fn=_simhash(bits, int(q.shape[-1])))
    if scann:
        stats: dict = {}
        # AH + exact reorder of 4K over every step; a tree only over 2,000 steps (a tree over a few hundred steps,
        # searched half-way, lost a third of the exact top-K for the head queries, which do not follow the steps'
        # clusters)
        fn = _scann(1 + n_neg, lambda db, kk: scann_searcher(db, kk, 0.5, 4 * kk, tree=len(db) > 2000), stats)
        record("ScaNN (per history)", sel_fn=fn, extra=stats)
    layer = model.get_layer("item_modalities")
    return rows, {"items": fused_tables(model, "item_modalities"),
                  "modalities": np.stack([tb.numpy() for tb in layer.tables()], 1),
                  "weights": layer.gate_weights().numpy(), "k": k, "run": str(run_dir)}
