"""InferenceService over the core :class:`InferenceService`.

The call's deadline becomes the core's timeout (and the Ray request is cancelled when it
passes or the caller cancels); tensors and the JSON payload are converted here only.

The JSON payload is converted by :func:`value_to_python` (the converter of every Struct a
request carries) and :func:`python_to_value` rather than ``json_format``: same results,
several times faster (``json_format`` formats a field path string for every element it
visits), and this runs twice per Infer call.
"""

from __future__ import annotations

import logging
from typing import Any

import grpc
from google.protobuf import struct_pb2
from synapse.plugin.v1 import inference_service_pb2, inference_service_pb2_grpc, tensor_pb2
from synapse_sdk.plugins.actions.inference._serve import TensorPayload

from synapse_server.core._errors import InvalidArgumentError, ResourceExhaustedError, quoted
from synapse_server.core.inference import InferenceService, InferRequestData
from synapse_server.grpc._auth import current_principal
from synapse_server.grpc._converters import value_to_python
from synapse_server.grpc._errors import map_errors
from synapse_server.grpc._requests import DEFAULT_MAX_MESSAGE_BYTES, format_bytes

__all__ = [
    "InferenceServicer",
    "infer_request_from_pb",
    "python_to_value",
    "tensor_from_pb",
    "tensor_to_pb",
    "value_to_python",
]

logger = logging.getLogger(__name__)

_DTYPE_NAMES = {
    tensor_pb2.DATA_TYPE_FLOAT32: "float32",
    tensor_pb2.DATA_TYPE_FLOAT64: "float64",
    tensor_pb2.DATA_TYPE_FLOAT16: "float16",
    tensor_pb2.DATA_TYPE_BFLOAT16: "bfloat16",
    tensor_pb2.DATA_TYPE_INT8: "int8",
    tensor_pb2.DATA_TYPE_INT16: "int16",
    tensor_pb2.DATA_TYPE_INT32: "int32",
    tensor_pb2.DATA_TYPE_INT64: "int64",
    tensor_pb2.DATA_TYPE_UINT8: "uint8",
    tensor_pb2.DATA_TYPE_BOOL: "bool",
}
_DTYPE_SIZES = {
    "float32": 4,
    "float64": 8,
    "float16": 2,
    "bfloat16": 2,
    "int8": 1,
    "int16": 2,
    "int32": 4,
    "int64": 8,
    "uint8": 1,
    "bool": 1,
}
_DTYPE_VALUES = {name: value for value, name in _DTYPE_NAMES.items()}


def python_to_value(value: Any, message: struct_pb2.Value | None = None) -> struct_pb2.Value:
    """Plain Python (JSON-like) as a ``google.protobuf.Value`` (as ``json_format.ParseDict``).

    Fills ``message`` when given. Raises ``TypeError`` for anything JSON cannot represent
    (a non-string key, an object of another type).
    """
    target = struct_pb2.Value() if message is None else message
    _fill_value(target, value)
    return target


def _fill_value(message: struct_pb2.Value, value: Any) -> None:
    if value is None:
        message.null_value = struct_pb2.NULL_VALUE
    elif isinstance(value, bool):
        message.bool_value = value
    elif isinstance(value, str):
        message.string_value = value
    elif isinstance(value, int | float):
        message.number_value = value
    elif isinstance(value, dict):
        struct = message.struct_value
        struct.SetInParent()
        fields = struct.fields
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"JSON object keys must be strings, got {type(key).__name__}")
            _fill_value(fields[key], item)
    elif isinstance(value, list | tuple):
        values = message.list_value
        values.SetInParent()
        for item in value:
            _fill_value(values.values.add(), item)
    else:
        raise TypeError(f"{type(value).__name__} is not JSON-like")


def tensor_from_pb(message: tensor_pb2.Tensor) -> TensorPayload:
    """A wire tensor as the core's payload; checks dtype, shape and byte length."""
    name = _DTYPE_NAMES.get(message.dtype)
    if name is None:
        raise InvalidArgumentError(f"tensor {quoted(message.name)}: dtype must be set")
    shape = message.shape
    if any(dim < 0 for dim in shape):
        raise InvalidArgumentError(f"tensor {quoted(message.name)}: negative dimension")
    size = len(message.data)
    expected = 0 if 0 in shape else _DTYPE_SIZES[name]
    for dim in shape if expected else ():
        expected *= dim
        if expected > size:
            # Cannot match any more: stop before a long shape builds a huge number.
            break
    if size != expected:
        described = list(shape) if len(shape) <= 8 else f"of {len(shape)} dimensions"
        raise InvalidArgumentError(
            f"tensor {quoted(message.name)}: {size} bytes do not fit shape {described} "
            f"and dtype {name}"
        )
    return TensorPayload(message.name, name, tuple(shape), message.data)


def tensor_to_pb(tensor: TensorPayload) -> tensor_pb2.Tensor:
    """The wire form of an output tensor."""
    dtype: Any = _DTYPE_VALUES[tensor.dtype]
    return tensor_pb2.Tensor(
        name=tensor.name, dtype=dtype, shape=list(tensor.shape), data=tensor.data
    )


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


class InferenceServicer(inference_service_pb2_grpc.InferenceServiceServicer):
    """Thin gRPC face of the core :class:`InferenceService`."""

    def __init__(
        self, service: InferenceService, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    ) -> None:
        self._service = service
        self._max_message_bytes = max_message_bytes

    @map_errors
    async def Infer(  # type: ignore[override]  # noqa: N802
        self, request: inference_service_pb2.InferRequest, context: grpc.aio.ServicerContext
    ) -> inference_service_pb2.InferResponse:
        """Run one inference request."""
        data = infer_request_from_pb(request, context.time_remaining())
        result = await self._service.infer(current_principal().tenant, data)
        response = inference_service_pb2.InferResponse(
            model_id=result.model_id,
            request_id=result.request_id,
            application=result.application,
            outputs=[tensor_to_pb(t) for t in result.tensors],
        )
        if result.json is not None or not result.tensors:
            python_to_value(result.json, response.json)
        size = response.ByteSize()
        if size > self._max_message_bytes:
            # Said here, with the limit, rather than left to gRPC's send to fail.
            raise ResourceExhaustedError(
                f"the answer of {result.application!r} is {size} bytes; this server sends at "
                f"most {format_bytes(self._max_message_bytes)}"
            )
        return response
