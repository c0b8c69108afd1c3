"""The gRPC side: TF Serving's own generated servicers (PredictionService, ModelService), so stock clients work.

Classify, Regress, MultiInference and HandleReloadConfigRequest keep the generated UNIMPLEMENTED answers: the zoo's
exports are predict signatures.
"""
from __future__ import annotations

import logging
import time
from typing import Callable, TypeVar

import grpc
from tensorflow_serving.apis import (
    get_model_metadata_pb2, get_model_status_pb2, model_pb2, model_service_pb2_grpc, predict_pb2,
    prediction_service_pb2_grpc,
)

from .registry import LoadedVersion, ModelRegistry
from .signatures import ServingError, invalid, predict_protos

log = logging.getLogger(__name__)
T = TypeVar("T")


def _spec_str(spec: model_pb2.ModelSpec) -> str:
    choice = spec.WhichOneof("version_choice")
    where = f" v{spec.version.value}" if choice == "version" else f" @{spec.version_label}" if choice else ""
    return f"{spec.name}{where}"


def _answer(method: str, spec: model_pb2.ModelSpec, context: grpc.ServicerContext, fn: Callable[[], T]) -> T:
    """Runs fn; a ServingError becomes its status with the message. One debug line per call, whatever happened."""
    start, code, message = time.perf_counter(), grpc.StatusCode.OK, ""
    try:
        return fn()
    except ServingError as e:
        code, message = e.code, e.message
    except Exception as e:  # a bug must not take the server down; the client learns what broke
        log.exception("gRPC %s %s failed", method, _spec_str(spec))
        code, message = grpc.StatusCode.INTERNAL, f"{type(e).__name__}: {e}"
    finally:
        log.debug("gRPC %s %s -> %s %.1fms %s", method, _spec_str(spec), code.name,
                  1000 * (time.perf_counter() - start), message)
    context.abort(code, message)  # raises: grpc turns it into the status
    raise AssertionError("unreachable")


def resolve(registry: ModelRegistry, spec: model_pb2.ModelSpec) -> LoadedVersion:
    if not spec.name:
        raise invalid("model_spec.name is empty: name the model to use")
    choice = spec.WhichOneof("version_choice")
    return registry.resolve(spec.name, spec.version.value if choice == "version" else None,
                            spec.version_label if choice == "version_label" else None)


def _echo_spec(out: model_pb2.ModelSpec, lv: LoadedVersion, signature_name: str = "") -> None:
    out.name = lv.name
    out.version.value = lv.version
    out.signature_name = signature_name


class PredictionServicer(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, registry: ModelRegistry):
        self._registry = registry

    def Predict(self, request: predict_pb2.PredictRequest, context) -> predict_pb2.PredictResponse:
        def run() -> predict_pb2.PredictResponse:
            lv = resolve(self._registry, request.model_spec)
            sig = lv.signature(request.model_spec.signature_name)
            outputs = predict_protos(sig, request.inputs, request.output_filter)
            resp = predict_pb2.PredictResponse()
            _echo_spec(resp.model_spec, lv, sig.name)
            for name, proto in outputs.items():
                resp.outputs[name].CopyFrom(proto)
            return resp

        return _answer("Predict", request.model_spec, context, run)

    def GetModelMetadata(self, request: get_model_metadata_pb2.GetModelMetadataRequest,
                         context) -> get_model_metadata_pb2.GetModelMetadataResponse:
        def run() -> get_model_metadata_pb2.GetModelMetadataResponse:
            if not request.metadata_field:
                raise invalid("GetModelMetadataRequest must specify at least one metadata_field (signature_def)")
            for f in request.metadata_field:
                if f != "signature_def":
                    raise invalid(f"Metadata field {f!r} is not supported (only 'signature_def')")
            lv = resolve(self._registry, request.model_spec)
            resp = get_model_metadata_pb2.GetModelMetadataResponse()
            _echo_spec(resp.model_spec, lv)
            resp.metadata["signature_def"].Pack(lv.signature_def_map)
            return resp

        return _answer("GetModelMetadata", request.model_spec, context, run)


class ModelServicer(model_service_pb2_grpc.ModelServiceServicer):
    def __init__(self, registry: ModelRegistry):
        self._registry = registry

    def GetModelStatus(self, request: get_model_status_pb2.GetModelStatusRequest,
                       context) -> get_model_status_pb2.GetModelStatusResponse:
        def run() -> get_model_status_pb2.GetModelStatusResponse:
            spec = request.model_spec
            if not spec.name:
                raise invalid("model_spec.name is empty: name the model to use")
            version = spec.version.value if spec.WhichOneof("version_choice") == "version" else None
            if spec.WhichOneof("version_choice") == "version_label":
                version = resolve(self._registry, spec).version
            resp = get_model_status_pb2.GetModelStatusResponse()
            for v, st in self._registry.status(spec.name, version).items():
                s = resp.model_version_status.add(version=v, state=st.state)
                s.status.error_code = st.code.value[0]
                s.status.error_message = st.error
            return resp

        return _answer("GetModelStatus", request.model_spec, context, run)


def add_servicers(server: grpc.Server, registry: ModelRegistry) -> None:
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(PredictionServicer(registry), server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelServicer(registry), server)
