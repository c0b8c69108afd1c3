"""`tfrec-zoo export RUN_DIR --name NAME`: a trained run -> saved_models/NAME/<version>/ (see tfrec_zoo.serving.export).

Warmup requests come from the run's real validation examples; after writing, the export is checked in a fresh
Python process that imports only TensorFlow: its `serving_default` on those examples must equal the in-memory
model's predictions (max abs difference <= 1e-5), so a version that would serve different numbers is removed.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from tfrec_zoo._tf import tf
from tfrec_zoo.data.reader import parse_features
from tfrec_zoo.serving.export import ServingModule, export_model, text_encoders_for

from .runs import load_run

_FRESH_PROCESS = """
import json, sys
import numpy as np, tensorflow as tf
for extra in sys.argv[3:]:  # op libraries a graph needs (scann), imported as TF Serving links them
    __import__(extra)
loaded = tf.saved_model.load(sys.argv[1])
records = [bytes.fromhex(h) for h in json.loads(open(sys.argv[2]).read())]
out = loaded.signatures["serving_default"](examples=tf.constant(records, dtype=tf.string))
print(json.dumps({k: np.asarray(v).tolist() for k, v in out.items()}))
"""


def validation_records(data, n: int, split: str = "valid") -> list[bytes]:
    split = split if split in data.manifest["splits"] else "train"
    ds = tf.data.TFRecordDataset([str(f) for f in data.files(split)], data.manifest.get("compression", "GZIP"))
    return [r.numpy() for r in ds.take(n)]


def fresh_process_outputs(version_dir: Path, records: list[bytes], imports: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
    """serving_default of an exported version, evaluated by a new Python that imports TensorFlow only (plus
    `imports`, e.g. scann for a ScaNN top-K graph)."""
    # the records travel in a temp file of the system's (a killed check leaves nothing in the model's directory)
    fd, name = tempfile.mkstemp(prefix="tfrec-zoo-parity-", suffix=".json")
    tmp = Path(name)
    with os.fdopen(fd, "w") as f:
        f.write(json.dumps([r.hex() for r in records]))
    try:
        p = subprocess.run([sys.executable, "-c", _FRESH_PROCESS, str(version_dir), str(tmp), *imports], capture_output=True,
                           text=True, timeout=600, env={"TF_CPP_MIN_LOG_LEVEL": "2", "PATH": "/usr/bin:/bin"})
    finally:
        tmp.unlink(missing_ok=True)
    if p.returncode != 0:
        raise RuntimeError(f"{version_dir}: the export does not load in a fresh process:\n{p.stderr[-3000:]}")
    return {k: np.asarray(v) for k, v in json.loads(p.stdout.strip().splitlines()[-1]).items()}


def export_run(run_dir: str | Path, name: str, base_dir: str | Path = "saved_models", *, keep: int = 5,
               warmup: int = 32, parity_rows: int = 256, options: dict | None = None, log=print):
    """Export a run; returns the version dir (ranking models) or {suffix: version dir} (retrieval models: see
    `export_retrieval_run`). `options` are the model's export options (`model.export_options`, e.g. a lifelong
    model's `gsu` / `pq_subspaces`, a retrieval model's `k` / `scann`); one the model does not take is an error."""
    exp, data, model = load_run(run_dir, log)
    options = dict(options or {})
    if model.export_kind == "retrieval":
        model.for_export(options, data.artifacts)          # rejects options the model does not take
        opts = {**model.export_options, **options}
        records = validation_records(data, max(warmup, parity_rows))
        return export_retrieval_run(model, data, name, base_dir, records, keep=keep, warmup=warmup,
                                    k=int(opts["k"]), scann=bool(opts["scann"]), log=log)
    # the parity reference is the model as trained (or with an approximate part the export serves, e.g. a PQ
    # GSU), the served model may differ only by serving-only rewrites (e.g. precomputed tables)
    reference, served = model.for_export(options, data.artifacts)
    for note in getattr(served, "export_notes", lambda: [])():
        log(note)
    records = validation_records(data, max(warmup, parity_rows))
    feats = parse_features(data.spec, tf.constant(records), list(reference.input_names))
    expected = {k: np.asarray(v) for k, v in reference(feats, training=False).items()}
    module = None
    if options.get("raw_text"):
        encoders = text_encoders_for(served, data.spec)
        if not encoders:
            raise ValueError(f"{run_dir}: --raw-text: {exp.model} reads no text feature of {data.spec.source}")
        module = ServingModule(served, data.spec, text_encoders=encoders)
    # checked while staged: the version becomes visible to a server only once a fresh process serves the model's
    # numbers. The text signatures hold tensorflow_text ops (the ones stock TF Serving links): load them as it does
    worst = []
    version_dir = export_model(served, data.spec, base_dir, name, warmup_examples=records[:warmup], keep=keep,
                               module=module, check=lambda path: worst.append(_check_parity(
                                   path, expected, records, imports=("tensorflow_text",) if module else ())))
    worst = worst[0]
    signatures = "serving_default, rank, predict_raw" + (", serving_text, rank_text" if module else "")
    log(f"exported {version_dir} (signatures {signatures}; outputs {sorted(expected)}; "
        f"{min(warmup, len(records))} warmup examples); fresh-process parity on {len(records)} validation examples: "
        f"max abs diff {worst:.1e}")
    return version_dir


def _check_parity(version_dir: Path, expected: dict, records, imports=(), exact: tuple[str, ...] = ()) -> float:
    """Max abs difference between a fresh process's serving_default and `expected`; `exact` outputs must be equal
    (raises otherwise: the staged version is then not published)."""
    served = fresh_process_outputs(version_dir, records, imports)
    equal = set(served) == set(expected)
    worst = max((float(np.max(np.abs(served[k].astype(np.float64) - np.asarray(expected[k], np.float64))))
                 for k in expected if k not in exact), default=0.0) if equal else float("inf")
    equal = equal and all(np.array_equal(served[k], np.asarray(expected[k])) for k in exact)
    if not equal or worst > 1e-5:
        raise RuntimeError(f"{version_dir}: served outputs differ from the model's (max abs diff {worst:.2e}"
                           f"{'' if equal else '; outputs ' + str(sorted(served)) + ' vs ' + str(sorted(expected)) + ' or ' + '/'.join(exact) + ' differ'}); not published")
    return worst


def export_retrieval_run(model, data, name: str, base_dir, records, *, keep: int = 5, warmup: int = 32,
                         k: int = 100, scann: bool = True, log=print) -> dict[str, Path]:
    """A trained retrieval model as NAME_query, NAME_item, NAME_topk (exact; stock TF Serving) and NAME_topk_scann
    (needs scann's ops: the ScaNN build of TF Serving), each checked in a fresh process on validation examples:
    towers and the exact top-K against the in-memory model (ids equal, scores 1e-5); the ScaNN top-K loads with
    `import scann` and serves what the saved index returns in this process (ids equal)."""
    from tfrec_zoo.retrieval import brute_force_topk_model, item_embeddings
    from tfrec_zoo.serving.export import export_retrieval

    records_t = tf.constant(records)
    q_feats = parse_features(data.spec, records_t, list(model.query_model.input_names))
    i_feats = parse_features(data.spec, records_t, list(model.item_model.input_names))
    ids, vectors = item_embeddings(model, data.artifacts)
    query = model.query_model(q_feats)
    # a single-vector tower serves `embedding`; a multi-interest one its dict's keys (interests, mask), as
    # ServingModule._outputs names them
    query = {k: np.asarray(v) for k, v in query.items()} if isinstance(query, dict) else {"embedding": query.numpy()}
    expected = {"query": query,
                "item": {"embedding": model.item_model(i_feats).numpy()},
                "topk": {k_: v.numpy() for k_, v in brute_force_topk_model(model.query_model, ids, vectors,
                                                                           k)(q_feats).items()}}
    report = []

    def parity(suffix: str):
        def check(path: Path) -> None:
            diff = _check_parity(path, expected[suffix], records, exact=("ids",) if suffix == "topk" else ())
            report.append(f"{name}_{suffix} {diff:.1e}")
        return check

    def scann_parity(path: Path) -> None:
        # the index is rebuilt from its saved tensors at load: compare with this process's load of the export
        loaded = tf.saved_model.load(str(path)).signatures["serving_default"]
        in_process = {k_: v.numpy() for k_, v in loaded(examples=records_t).items()}
        diff = _check_parity(path, in_process, records, imports=("scann",), exact=("ids",))
        report.append(f"{name}_topk_scann {diff:.1e} (with import scann)")

    checks = {suffix: parity(suffix) for suffix in ("query", "item", "topk")}
    if scann:
        checks["topk_scann"] = scann_parity
    paths = export_retrieval(model, data.spec, data.artifacts, base_dir, name, k=k, warmup_examples=records[:warmup],
                             keep=keep, scann=scann, checks=checks)
    log(f"exported {', '.join(str(p) for p in paths.values())} (top-{k} over {len(ids):,} items; "
        f"{min(warmup, len(records))} warmup examples); fresh-process parity on {len(records)} validation "
        f"examples, max abs diff: {'; '.join(report)}")
    return paths


def export_tflite(run_dir: str | Path, name: str, base_dir: str | Path = "saved_models", *, split: str = "test",
                  parity_rows: int = 256, batch: int = 25, log=print) -> Path:
    """The on-device export of a run (tfrec_zoo/serving/tflite.py) into BASE_DIR/NAME.tflite/: model.tflite
    (float32), model_dynamic_range.tflite (int8 weights), vocab/<table>.txt for every table an input looks up,
    signature.json (each input's dtype, shape and table; the outputs) and report.json (parity on `parity_rows`
    real examples of `split` against the Keras model: float32 within 1e-5 or nothing is written; the quantised
    variant's measured error; file sizes; per-call latency on `batch` examples). Written atomically."""
    import shutil

    from tfrec_zoo.data import staging
    from tfrec_zoo.serving.tflite import caller_rows, convert, latency_ms, row_index_model, run_tflite

    exp, data, model = load_run(run_dir, log)
    if model.export_kind != "ranking":
        raise ValueError(f"{run_dir}: --format tflite exports a model that scores examples (the on-device model, the "
                         f"controller); {exp.model} is a {model.export_kind} model: export it for TF Serving")
    rows_model = row_index_model(model, data.artifacts, exp.params)
    flats = {"model.tflite": convert(rows_model), "model_dynamic_range.tflite": convert(rows_model, "dynamic_range")}
    feats = next(iter(data.dataset(split, parity_rows, features=list(model.input_names))))[0]
    feats = {k: v.numpy() for k, v in feats.items()}
    expected = model.predict_on_batch(feats)
    expected = {k: np.asarray(v) for k, v in (expected if isinstance(expected, dict) else
                                              {model.task_names[0]: expected}).items()}
    rows = caller_rows(model, feats)
    report: dict = {"run": str(run_dir), "split": split, "examples": int(len(next(iter(rows.values())))),
                    "models": {}}
    for file, flat in flats.items():
        got = run_tflite(flat, rows)
        err = max(float(np.abs(got[k].reshape(expected[k].shape) - expected[k]).max()) for k in expected)
        if file == "model.tflite" and err > 1e-5:
            raise ValueError(f"{run_dir}: the float32 TFLite model differs from the Keras model by {err:.2e} "
                             f"(> 1e-5) on {report['examples']} {split} examples; nothing was written")
        report["models"][file] = {"bytes": len(flat), "max_abs_diff": err,
                                  "latency": latency_ms(flat, {k: v[:batch] for k, v in rows.items()})}
    spec, categorical = model.spec, dict(model.spec.categorical_columns())
    tables = sorted({spec.table_of(k) for k in model.input_names if k in categorical})
    signature = {"inputs": {k: {"dtype": str(rows[k].dtype), "shape": [None, *rows[k].shape[1:]],
                                **({"table": spec.table_of(k),
                                    "oov_buckets": spec.table_config(spec.table_of(k)).vocab.oov_buckets}
                                   if k in categorical else {})} for k in model.input_names},
                 "outputs": sorted(expected),
                 "lookup": "row = oov_buckets + the id's 0-based line in vocab/<table>.txt; an id not there goes "
                           "to an OOV row (row 0 with one OOV bucket)"}
    out = Path(base_dir) / f"{name}.tflite"
    tmp = staging.staging_dir(out)
    try:
        for file, flat in flats.items():
            (tmp / file).write_bytes(flat)
        (tmp / "vocab").mkdir()
        for table in tables:
            shutil.copy2(data.path / "artifacts" / "vocab" / f"{table}.txt", tmp / "vocab" / f"{table}.txt")
        (tmp / "signature.json").write_text(json.dumps(signature, indent=1) + "\n")
        (tmp / "report.json").write_text(json.dumps(report, indent=1) + "\n")
        staging.publish(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for file, m in report["models"].items():
        log(f"{out / file}: {m['bytes'] / 1024:.0f} KiB, max abs diff {m['max_abs_diff']:.1e} on "
            f"{report['examples']} {split} examples, {m['latency']['median_ms']:.3f} ms per call of {batch}")
    return out
