"""The sans-IO side of ``infer`` and the deployment calls (the replacement of infer_remote).

The payload is JSON-like (``google.protobuf.Value``: numbers arrive as floats, as in JSON);
numeric arrays can go as binary tensors instead (``tensors={"x": numpy_array}``), which the
endpoint receives as numpy arrays and which is much faster for large inputs. Binary outputs
come back as numpy arrays in :attr:`InferResult.tensors`.

Tensors and the JSON payload are converted by :mod:`synapse_client.codec` (the platform's
one dtype table and value converter) rather than ``json_format``: same results;
``json_format`` formats a field path for every element and was a measurable share of a
small Infer call.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from synapse.plugin.v1 import deployment_pb2, inference_service_pb2, tensor_pb2

from ._errors import ClientConfigError
from .codec import (
    TensorCodecError,
    TensorPayload,
    dtype_by_wire,
    python_to_value,
    tensor_to_pb,
    value_to_python,
)

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
    """A numpy array (or anything ``numpy.asarray`` takes) as a wire tensor.

    Raises :class:`ClientConfigError` for a dtype that cannot be sent.
    """
    # numpy's "bfloat16" (ml_dtypes) or torch.bfloat16: answers come back as raw bits here,
    # so the client sends none either.
    if str(getattr(value, "dtype", "")).endswith("bfloat16"):
        raise ClientConfigError(f"tensor {name!r}: dtype bfloat16 cannot be sent")
    try:
        payload = TensorPayload.from_array(name, value)
    except TensorCodecError as exc:
        raise ClientConfigError(str(exc)) from None
    return tensor_to_pb(payload)


def tensor_to_array(tensor: tensor_pb2.Tensor) -> Any:
    """A wire tensor as a numpy array (bfloat16 as raw ``uint16`` bit patterns)."""
    dtype = dtype_by_wire(tensor.dtype)
    if dtype is None:
        raise ClientConfigError(f"tensor {tensor.name!r}: unknown dtype {tensor.dtype}")
    return TensorPayload(tensor.name, dtype.name, tuple(tensor.shape), tensor.data).to_numpy()


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
            python_to_value(json, request.json)
        except (TypeError, ValueError) as exc:
            raise ClientConfigError(f"json payload is not JSON-like: {exc}") from exc
    for name, value in (tensors or {}).items():
        request.inputs.append(array_to_tensor(name, value))
    return request


def _result(response: inference_service_pb2.InferResponse) -> InferResult:
    body = value_to_python(response.json, "json") if response.HasField("json") else None
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
