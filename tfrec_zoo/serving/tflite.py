"""On-device export: a zoo model as a TFLite flatbuffer of built-in ops only, run with the maintained LiteRT
interpreter (PyPI `ai-edge-litert`; `tf.lite.Interpreter` is deprecated).

TFLite's built-in ops have no hash tables, and every zoo model looks its raw ids up in vocabularies inside the
graph. So the on-device graph is the same model built with `row_index_inputs()`: each categorical input is the
row of its embedding table, and the app does the lookup, with the vocabulary files written beside the model:
row = oov_buckets + (the id's line in vocab/<table>.txt), or an OOV row when the id is not there (with one OOV
bucket, row 0; with more, TF's lookup hashes the id into them). The weights are the trained model's, copied in
order. Everything else (attention over the valid steps, pooling, the MLPs, a prior's logit) converts to built-ins;
a model that would need a Select-TF op fails the conversion with the op named.

    flat = convert(row_model)                                   # float32
    flat_q = convert(row_model, quantize="dynamic_range")       # int8 weights, float activations
    rows = caller_rows(model, feats)                            # the app's lookup, done by the model's own layers
    out = run_tflite(flat, rows)                                # {output: array}
"""
from __future__ import annotations

import re
import time
from typing import Any

import numpy as np

from .._tf import keras, tf

QUANTIZATIONS = ("none", "dynamic_range")


class TFLiteConversionError(ValueError):
    """The model needs an op TFLite's built-ins lack (named in the message)."""


def row_index_model(model, artifacts, params: dict):
    """`model` rebuilt with row-index inputs (the vocabulary lookups out of the graph), its weights copied."""
    from ..inputs import row_index_inputs
    from ..models import build_model

    with row_index_inputs():
        rows = build_model(model.zoo_name, model.spec, artifacts, params)
    if [w.shape for w in rows.weights] != [w.shape for w in model.weights]:
        raise ValueError(f"{model.name}: the row-index model's weights differ from the trained model's")
    rows.set_weights(model.get_weights())
    return keras.Model(rows.inputs, rows.outputs, name=f"{model.name}_rows")


def convert(row_model, quantize: str = "none") -> bytes:
    """A TFLite flatbuffer of built-in ops; `quantize="dynamic_range"` stores the weights as int8."""
    if quantize not in QUANTIZATIONS:
        raise ValueError(f"quantize: {quantize!r} is not one of {', '.join(QUANTIZATIONS)}")
    conv = tf.lite.TFLiteConverter.from_keras_model(row_model)
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if quantize == "dynamic_range":
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
    try:
        return conv.convert()
    except Exception as e:                      # the converter raises ConverterError with the MLIR dump
        ops = sorted(set(re.findall(r"\btf\.([A-Za-z0-9]+)\(", str(e))))
        raise TFLiteConversionError(
            f"{row_model.name}: TFLite's built-in ops cannot run " + (f"{', '.join(ops)}" if ops else
                                                                       str(e).splitlines()[0])
            + " (Select-TF ops are not allowed on device: move them out of the graph, or change the model)") from None


def caller_rows(model, feats: dict) -> dict[str, np.ndarray]:
    """The inputs of the row-index model for raw features `feats`: each categorical input through the trained
    model's own lookup layer (what the app reproduces from the vocabulary files), the rest as they are."""
    spec, out = model.spec, {}
    categorical = dict(spec.categorical_columns())
    for name in model.input_names:
        value = feats[name]
        if name in categorical:
            out[name] = np.asarray(model.get_layer(f"lookup_{spec.table_of(name)}")(value)).astype(np.int64)
        else:
            out[name] = np.asarray(value)
    return out


def interpreter(flat: bytes):
    from ai_edge_litert.interpreter import Interpreter

    return Interpreter(model_content=flat)


def run_tflite(flat: bytes, rows: dict[str, np.ndarray], runner=None) -> dict[str, np.ndarray]:
    """Outputs of the flatbuffer's serving signature on `rows` (a batch of any size)."""
    runner = runner or interpreter(flat).get_signature_runner()
    details = runner.get_input_details()
    missing = sorted(set(details) - set(rows))
    if missing:
        raise ValueError(f"the TFLite model reads {missing}, which the request lacks")
    return {k: np.asarray(v) for k, v in runner(**{k: np.asarray(rows[k]).astype(details[k]["dtype"])
                                                   for k in details}).items()}


def latency_ms(flat: bytes, rows: dict[str, np.ndarray], calls: int = 200) -> dict[str, Any]:
    """Median and p90 wall time of one interpreter call on `rows` (after 10 warm-up calls), in ms."""
    runner = interpreter(flat).get_signature_runner()
    for _ in range(10):
        run_tflite(flat, rows, runner)
    times = []
    for _ in range(calls):
        t = time.perf_counter()
        run_tflite(flat, rows, runner)
        times.append((time.perf_counter() - t) * 1e3)
    return {"median_ms": float(np.median(times)), "p90_ms": float(np.percentile(times, 90)), "calls": calls,
            "batch": int(len(next(iter(rows.values()))))}
