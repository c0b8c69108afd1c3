"""One signature of a loaded SavedModel: TF Serving's checks on a request (names, dtypes, shapes, batch size), then
the call.

Both front ends (gRPC's TensorProtos, REST's JSON) turn a request into numpy arrays and come here, so an input is
judged by one set of rules and a mistake reads the same whichever protocol sent it. Errors carry the gRPC status
TF Serving answers with; the REST side maps it to an HTTP status.
"""
from __future__ import annotations

import re
from typing import Iterable, Mapping

import grpc
import numpy as np
from tensorflow.core.framework import tensor_pb2

from .._tf import tf

DEFAULT_SIGNATURE = "serving_default"

# TF's error codes are gRPC's codes (same numbers), so an op error keeps its meaning over the wire.
_GRPC_BY_NUMBER = {code.value[0]: code for code in grpc.StatusCode}


class ServingError(Exception):
    """A request TF Serving would refuse: `code` is the gRPC status, `message` says what to fix."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


def invalid(message: str) -> ServingError:
    return ServingError(grpc.StatusCode.INVALID_ARGUMENT, message)


def not_found(message: str) -> ServingError:
    return ServingError(grpc.StatusCode.NOT_FOUND, message)


def _op_message(message: str) -> str:
    """The cause in a TF op error, without eager's boilerplate ("Graph execution error", node and op names)."""
    lines = [ln.strip() for ln in message.splitlines()]
    keep = [ln for ln in lines if ln and not ln.startswith(("Graph execution error", "Detected at node", "<stack"))]
    text = re.sub(r"\s*\[\[\{\{node .*$", "", " ".join(keep)).strip()
    return text or message.strip()


def _shape_str(shape: Iterable) -> str:
    return "[" + ", ".join("-1" if d is None else str(d) for d in shape) + "]"


class Signature:
    """A named signature function with the input and output specs it was exported with. With a `scheduler`
    (--enable-batching), requests of a signature with a batch dimension everywhere run in shared batches."""

    def __init__(self, name: str, fn, max_batch_size: int | None = None, scheduler=None):
        self.name = name
        self._fn = fn
        self.inputs: dict[str, tf.TensorSpec] = dict(fn.structured_input_signature[1])
        self.outputs: dict[str, tf.TensorSpec] = dict(fn.structured_outputs)
        self.max_batch_size = max_batch_size
        # batched only when every input and output has a leading batch dimension (the `rank` signature's scalar
        # `context` has none: its requests run as they come)
        specs = [*self.inputs.values(), *self.outputs.values()]
        batchable = all(s.shape.rank and s.shape[0] is None for s in specs)
        self._scheduler = scheduler if batchable else None

    def check_names(self, names: Iterable[str]) -> None:
        """Every input present and nothing else (TF Serving rejects extras too, they would be silently ignored)."""
        sent, expected = set(names), set(self.inputs)
        if sent != expected:
            missing, extra = sorted(expected - sent), sorted(sent - expected)
            parts = [f"missing input(s) {', '.join(map(repr, missing))}"] if missing else []
            parts += [f"unknown input(s) {', '.join(map(repr, extra))}"] if extra else []
            raise invalid(f"signature {self.name!r}: {'; '.join(parts)} (expects {', '.join(sorted(expected))}; "
                          f"got {', '.join(sorted(sent)) or 'none'})")

    def check_dtype(self, name: str, dtype: tf.DType) -> None:
        want = self.inputs[name].dtype
        if dtype != want:
            raise invalid(f"input {name!r} of signature {self.name!r}: expects {want.name} but {dtype.name} "
                          "was provided")

    def _check_shapes(self, arrays: Mapping[str, np.ndarray]) -> int:
        """The request's batch size, once every shape fits the signature's."""
        batch, batch_input = 0, ""
        for name, arr in arrays.items():
            spec = self.inputs[name]
            if not spec.shape.is_compatible_with(arr.shape):
                raise invalid(f"input {name!r} of signature {self.name!r}: shape {_shape_str(arr.shape)} does not "
                              f"match the signature's {_shape_str(spec.shape.as_list())}")
            # the batch is dim 0 of the inputs that have one; scalar inputs (a request-level context) have none
            if arr.ndim and arr.shape[0] > batch:
                batch, batch_input = arr.shape[0], name
        if self.max_batch_size and batch > self.max_batch_size:
            raise invalid(f"batch size {batch} (input {batch_input!r}) is larger than the server's maximum input "
                          f"batch size {self.max_batch_size} (--max-batch-size): split the request")
        return batch

    def run(self, arrays: Mapping[str, np.ndarray], output_filter: Iterable[str] = ()) -> dict[str, np.ndarray]:
        """Checks `arrays` (already of the signature's dtypes) and returns the outputs, or those in output_filter."""
        self.check_names(arrays)
        wanted = list(output_filter) or list(self.outputs)
        unknown = [k for k in wanted if k not in self.outputs]
        if unknown:
            raise invalid(f"output_filter: {', '.join(map(repr, unknown))} not an output of signature "
                          f"{self.name!r} (outputs: {', '.join(sorted(self.outputs))})")
        batch = self._check_shapes(arrays)
        if self._scheduler is None:
            out = self._call(arrays)
        else:  # requests that can share a batch: same signature, same shapes but the batch dimension
            key = (id(self), tuple((k, arrays[k].shape[1:], arrays[k].dtype.str) for k in sorted(arrays)))
            out = self._scheduler.run(key, self._call, arrays, batch)
        return {k: out[k] for k in wanted}

    def _call(self, arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        try:
            tensors = {k: tf.convert_to_tensor(v, dtype=self.inputs[k].dtype) for k, v in arrays.items()}
        except (TypeError, ValueError, OverflowError) as e:
            raise invalid(f"signature {self.name!r}: inputs do not convert to the signature's dtypes: {e}") from e
        try:
            out = self._fn(**tensors)
        except tf.errors.OpError as e:
            # e.g. a serialized tf.Example that does not parse: the graph's own message names the op and feature
            raise ServingError(_GRPC_BY_NUMBER.get(e.error_code, grpc.StatusCode.UNKNOWN),
                               f"signature {self.name!r}: {_op_message(e.message)}") from e
        except UnicodeDecodeError as e:
            # TF builds the op's error message from the offending bytes; binary ones make it undecodable
            raise invalid(f"signature {self.name!r}: an op failed on the request's bytes and its message is not "
                          "text: usually a serialized tf.Example that does not parse (check the bytes you send "
                          "are tf.train.Example.SerializeToString())") from e
        return {k: v.numpy() for k, v in out.items()}


# A TensorProto's element count is claimed by its shape; only the values it carries are real. One value may fill a
# whole tensor (TF's make_ndarray broadcasts it), so a fill is bounded: a 1e11-element claim must not allocate.
MAX_FILL_ELEMENTS = 1 << 24
_VALUE_FIELDS = ("half_val", "float_val", "double_val", "int_val", "string_val", "scomplex_val", "dcomplex_val",
                 "bool_val", "int64_val", "uint32_val", "uint64_val")


def check_tensor_proto(name: str, proto: tensor_pb2.TensorProto, dtype: tf.DType) -> None:
    """The proto's shape agrees with the values it carries (so decoding allocates what the request paid for)."""
    if proto.tensor_shape.unknown_rank:
        raise invalid(f"input {name!r}: TensorProto has an unknown rank: send its shape")
    dims = [d.size for d in proto.tensor_shape.dim]
    if any(d < 0 for d in dims):
        raise invalid(f"input {name!r}: TensorProto shape {_shape_str(dims)} has a negative dimension")
    n = int(np.prod(dims, dtype=object)) if dims else 1
    if proto.tensor_content:
        need = n * dtype.size
        if dtype == tf.string or len(proto.tensor_content) != need:
            raise invalid(f"input {name!r}: tensor_content has {len(proto.tensor_content)} bytes but shape "
                          f"{_shape_str(dims)} of {dtype.name} needs {need}")
        return
    count = sum(len(getattr(proto, f)) for f in _VALUE_FIELDS)
    if dtype.is_complex:
        count //= 2
    if count == n or (count <= 1 and n <= MAX_FILL_ELEMENTS):
        return
    raise invalid(f"input {name!r}: TensorProto shape {_shape_str(dims)} claims {n} elements but carries {count} "
                  "values (send one value per element)")


def predict_protos(sig: Signature, inputs: Mapping[str, tensor_pb2.TensorProto],
                   output_filter: Iterable[str] = ()) -> dict[str, tensor_pb2.TensorProto]:
    """PredictRequest.inputs -> PredictResponse.outputs (the gRPC Predict path, also the warmup replay's)."""
    sig.check_names(inputs)
    arrays = {}
    for name, proto in inputs.items():
        # the dtype comes from the proto, before decoding: make_ndarray would happily decode anything
        try:
            dtype = tf.dtypes.as_dtype(proto.dtype)
        except TypeError as e:
            raise invalid(f"input {name!r}: TensorProto has no valid dtype ({proto.dtype})") from e
        sig.check_dtype(name, dtype)
        check_tensor_proto(name, proto, dtype)
        try:
            arrays[name] = tf.make_ndarray(proto)
        except (TypeError, ValueError) as e:
            raise invalid(f"input {name!r}: malformed TensorProto: {e}") from e
    return {k: tf.make_tensor_proto(v) for k, v in sig.run(arrays, output_filter).items()}
