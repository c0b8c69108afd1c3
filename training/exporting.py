"""`tfrec-zoo export RUN_DIR --name NAME`: a trained run -> saved_models/NAME/<version>/ (see tfrec_zoo.serving.export).

Warmup requests come from the run's real validation examples; after writing, the export is checked in a fresh
Python process that imports only TensorFlow: its `serving_default` on those examples must equal the in-memory
model's predictions (max abs difference <= 1e-5), so a version that would serve different numbers is removed.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

from tfrec_zoo._tf import tf
from tfrec_zoo.data.reader import parse_features
from tfrec_zoo.serving.export import export_model, write_models_config

from .trainer import load_run

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
    tmp = version_dir.parent / f".parity-{version_dir.name}.json"
    tmp.write_text(json.dumps([r.hex() for r in records]))
    try:
        p = subprocess.run([sys.executable, "-c", _FRESH_PROCESS, str(version_dir), str(tmp), *imports], capture_output=True,
                           text=True, timeout=600, env={"TF_CPP_MIN_LOG_LEVEL": "2", "PATH": "/usr/bin:/bin"})
    finally:
        tmp.unlink(missing_ok=True)
    if p.returncode != 0:
        raise RuntimeError(f"{version_dir}: the export does not load in a fresh process:\n{p.stderr[-3000:]}")
    return {k: np.asarray(v) for k, v in json.loads(p.stdout.strip().splitlines()[-1]).items()}


def export_run(run_dir: str | Path, name: str, base_dir: str | Path = "saved_models", *, keep: int = 5,
               warmup: int = 32, parity_rows: int = 256, log=print) -> Path:
    _, data, model = load_run(run_dir, log)
    records = validation_records(data, max(warmup, parity_rows))
    version_dir = export_model(model, data.spec, base_dir, name, warmup_examples=records[:warmup], keep=keep)
    feats = parse_features(data.spec, tf.constant(records), list(model.input_names))
    expected = {k: np.asarray(v) for k, v in model(feats, training=False).items()}
    served = fresh_process_outputs(version_dir, records)
    worst = max(float(np.max(np.abs(served[k] - expected[k]))) for k in expected)
    if set(served) != set(expected) or worst > 1e-5:
        shutil.rmtree(version_dir, ignore_errors=True)
        write_models_config(base_dir)
        raise RuntimeError(f"{version_dir}: served outputs differ from the model's (max abs diff {worst:.2e}); removed")
    log(f"exported {version_dir} (signatures serving_default, rank, predict_raw; outputs {sorted(expected)}; "
        f"{min(warmup, len(records))} warmup examples); fresh-process parity on {len(records)} validation examples: "
        f"max abs diff {worst:.1e}")
    return version_dir
