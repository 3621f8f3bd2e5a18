"""Protobuf ↔ domain conversion for the InferenceService.

Tensors and JSON payloads go through ``synapse_client.codec`` (the one dtype table and value
converter, shared with the client and the replicas); this module turns the codec's errors
into the core's ``InvalidArgumentError``. The JSON payload is read by the codec rather than
``json_format``: same results, several times faster (``json_format`` formats a field path
string for every element it visits), and it runs twice per Infer call.
"""

from __future__ import annotations

from synapse.plugin.v1 import inference_service_pb2, tensor_pb2
from synapse_client import codec
from synapse_client.codec import TensorCodecError, TensorPayload, python_to_value

from synapse_server.core._errors import InvalidArgumentError
from synapse_server.core.inference import InferRequestData, InferResult
from synapse_server.grpc._converters import value_to_python

__all__ = [
    "infer_request_from_pb",
    "infer_response_to_pb",
    "python_to_value",
    "tensor_from_pb",
    "tensor_to_pb",
    "value_to_python",
]


def tensor_from_pb(message: tensor_pb2.Tensor) -> TensorPayload:
    """A wire tensor as the core's payload; checks dtype, shape and byte length."""
    try:
        return codec.tensor_from_pb(message)
    except TensorCodecError as exc:
        raise InvalidArgumentError(str(exc)) from None


def tensor_to_pb(tensor: TensorPayload) -> tensor_pb2.Tensor:
    """The wire form of an output tensor."""
    return codec.tensor_to_pb(tensor)


def infer_request_from_pb(
    request: inference_service_pb2.InferRequest, timeout_s: float | None
) -> InferRequestData:
    """The core's request for a wire request."""
    target = request.WhichOneof("target")
    has_json = request.HasField("json")
    return InferRequestData(
        application=request.application if target == "application" else None,
        plugin=request.action.plugin if target == "action" else None,
        action=request.action.action if target == "action" else None,
        model_id=request.model_id,
        json=value_to_python(request.json, "json") if has_json else None,
        has_json=has_json,
        tensors=tuple(tensor_from_pb(t) for t in request.inputs),
        method=request.method,
        path=request.path,
        request_id=request.request_id,
        timeout_s=timeout_s,
    )


def infer_response_to_pb(result: InferResult) -> inference_service_pb2.InferResponse:
    """The wire answer of a result: its tensors, and its JSON unless it answered only
    tensors (an answer of neither is a JSON null)."""
    response = inference_service_pb2.InferResponse(
        model_id=result.model_id,
        request_id=result.request_id,
        application=result.application,
        outputs=[tensor_to_pb(t) for t in result.tensors],
    )
    if result.json is not None or not result.tensors:
        python_to_value(result.json, response.json)
    return response
