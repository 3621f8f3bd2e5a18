"""The sans-IO side of ``infer`` and the deployment calls (the replacement of infer_remote).

The payload is JSON-like (``google.protobuf.Value``: numbers arrive as floats, as in JSON);
numeric arrays can go as binary tensors instead (``tensors={"x": numpy_array}``), which the
endpoint receives as numpy arrays and which is much faster for large inputs. Binary outputs
come back as numpy arrays in :attr:`InferResult.tensors`.

The JSON payload is converted with small direct converters instead of ``json_format``
(same results; ``json_format`` formats a field path for every element and was a measurable
share of a small Infer call).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, cast

from google.protobuf import struct_pb2
from synapse.plugin.v1 import deployment_pb2, inference_service_pb2, tensor_pb2

from ._errors import ClientConfigError

logger = logging.getLogger(__name__)

__all__ = [
    "UNSET_JSON",
    "DeploymentInfo",
    "InferResult",
    "array_to_tensor",
    "build_infer_request",
    "tensor_to_array",
]

#: ``infer``'s default ``json``: no JSON payload at all (``json=None`` sends a JSON null).
UNSET_JSON: Any = object()

_DTYPES: dict[str, int] = {
    "float32": tensor_pb2.DATA_TYPE_FLOAT32,
    "float64": tensor_pb2.DATA_TYPE_FLOAT64,
    "float16": tensor_pb2.DATA_TYPE_FLOAT16,
    "bfloat16": tensor_pb2.DATA_TYPE_BFLOAT16,
    "int8": tensor_pb2.DATA_TYPE_INT8,
    "int16": tensor_pb2.DATA_TYPE_INT16,
    "int32": tensor_pb2.DATA_TYPE_INT32,
    "int64": tensor_pb2.DATA_TYPE_INT64,
    "uint8": tensor_pb2.DATA_TYPE_UINT8,
    "bool": tensor_pb2.DATA_TYPE_BOOL,
}
_NAMES = {value: key for key, value in _DTYPES.items()}


@dataclass(frozen=True)
class InferResult:
    """An endpoint's answer: ``json`` and/or ``tensors`` (numpy arrays by output name)."""

    json: Any
    tensors: dict[str, Any] = field(default_factory=dict)
    model_id: str = ""
    request_id: str = ""
    application: str = ""


@dataclass(frozen=True)
class DeploymentInfo:
    """A deployed serve application as the server reports it.

    Each of ``replicas`` is ``{"replica_id", "state", "loaded_model_ids",
    "loaded_models_known"}``; ``loaded_models_known`` is False when the replica did not tell
    its loaded models in time, and ``loaded_model_ids`` is then empty because it is unknown.
    """

    id: int
    name: str
    plugin: str
    action: str
    status: str
    status_message: str
    route_prefix: str
    model_ids: list[int]
    replicas: list[dict[str, Any]]
    endpoint_action: str
    job_id: str


def array_to_tensor(name: str, value: Any) -> tensor_pb2.Tensor:
    """A numpy array (or anything ``numpy.asarray`` takes) as a wire tensor."""
    import numpy as np

    array = np.ascontiguousarray(np.asarray(value))
    dtype = _DTYPES.get(array.dtype.name)
    if dtype is None or array.dtype.name == "bfloat16":
        raise ClientConfigError(f"tensor {name!r}: dtype {array.dtype} cannot be sent")
    little = array.astype(array.dtype.newbyteorder("<"), copy=False)
    return tensor_pb2.Tensor(
        name=name,
        dtype=cast(Any, dtype),
        shape=list(array.shape),
        data=little.tobytes(),
    )


def tensor_to_array(tensor: tensor_pb2.Tensor) -> Any:
    """A wire tensor as a numpy array (bfloat16 as raw ``uint16`` bit patterns)."""
    import numpy as np

    name = _NAMES.get(tensor.dtype)
    if name is None:
        raise ClientConfigError(f"tensor {tensor.name!r}: unknown dtype {tensor.dtype}")
    dtype = np.dtype("<u2") if name == "bfloat16" else np.dtype(name).newbyteorder("<")
    return np.frombuffer(tensor.data, dtype=dtype).reshape(tuple(tensor.shape))


def _fill_value(message: struct_pb2.Value, value: Any) -> None:
    """Set ``message`` to the JSON-like ``value`` (as ``json_format.ParseDict`` would)."""
    if value is None:
        message.null_value = struct_pb2.NULL_VALUE
    elif isinstance(value, bool):
        message.bool_value = value
    elif isinstance(value, str):
        message.string_value = value
    elif isinstance(value, int | float):
        message.number_value = value
    elif isinstance(value, Mapping):
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


def _value_to_python(message: struct_pb2.Value) -> Any:
    """Plain Python for a ``Value`` (as ``json_format.MessageToDict``: numbers are floats)."""
    kind = message.WhichOneof("kind")
    if kind == "struct_value":
        return {key: _value_to_python(item) for key, item in message.struct_value.fields.items()}
    if kind == "list_value":
        return [_value_to_python(item) for item in message.list_value.values]
    if kind == "number_value":
        number = message.number_value
        if math.isinf(number) or math.isnan(number):
            raise ValueError(f"the answer holds {number}, which is not a JSON number")
        return number
    if kind == "string_value":
        return message.string_value
    if kind == "bool_value":
        return message.bool_value
    return None


def build_infer_request(
    application: str | None = None,
    *,
    plugin: str | None = None,
    action: str | None = None,
    model: int | str | None = None,
    json: Any = UNSET_JSON,
    tensors: Mapping[str, Any] | None = None,
    method: str = "post",
    path: str = "/",
    request_id: str | None = None,
) -> inference_service_pb2.InferRequest:
    """The InferRequest for these arguments (shared by the blocking and asyncio clients)."""
    if bool(application) == bool(plugin or action):
        raise ClientConfigError("infer needs either application, or plugin and action")
    request = inference_service_pb2.InferRequest(
        model_id="" if model is None else str(model),
        method=method or "",
        path=path or "",
        request_id=request_id or "",
    )
    if application:
        request.application = application
    else:
        if not (plugin and action):
            raise ClientConfigError("infer by action needs both plugin and action")
        request.action.plugin = plugin
        request.action.action = action
    if json is not UNSET_JSON:
        try:
            _fill_value(request.json, json)
        except (TypeError, ValueError) as exc:
            raise ClientConfigError(f"json payload is not JSON-like: {exc}") from exc
    for name, value in (tensors or {}).items():
        request.inputs.append(array_to_tensor(name, value))
    return request


def _result(response: inference_service_pb2.InferResponse) -> InferResult:
    body = _value_to_python(response.json) if response.HasField("json") else None
    return InferResult(
        json=body,
        tensors={t.name: tensor_to_array(t) for t in response.outputs},
        model_id=response.model_id,
        request_id=response.request_id,
        application=response.application,
    )


def _deployment(message: deployment_pb2.Deployment) -> DeploymentInfo:
    return DeploymentInfo(
        id=message.id,
        name=message.name,
        plugin=message.plugin,
        action=message.action,
        status=deployment_pb2.DeploymentStatus.Name(message.status).removeprefix(
            "DEPLOYMENT_STATUS_"
        ),
        status_message=message.status_message,
        route_prefix=message.route_prefix,
        model_ids=list(message.model_ids),
        replicas=[
            {
                "replica_id": r.replica_id,
                "state": deployment_pb2.ReplicaState.Name(r.state).removeprefix("REPLICA_STATE_"),
                "loaded_model_ids": list(r.loaded_model_ids),
                "loaded_models_known": r.loaded_models_known,
            }
            for r in message.replicas
        ],
        endpoint_action=message.endpoint_action,
        job_id=message.job_id,
    )
