"""The sans-IO side of ``infer``, ``infer_stream`` and the deployment calls (the replacement
of infer_remote).

The JSON payload travels as JSON text (``InferRequest.json_text``) and the answer comes back
as text too (``JSON_FORMAT_TEXT``), so integers stay integers both ways, exactly (a
``google.protobuf.Value`` would carry every number as a double). Numeric arrays can go as
binary tensors instead (``tensors={"x": numpy_array}``), which the endpoint receives as
numpy arrays and which is much faster for large inputs. Binary outputs come back as numpy
arrays in :attr:`InferResult.tensors`.

Tensors are converted by :mod:`synapse_client.codec` (the platform's one dtype table); an
answer a server sends as a ``google.protobuf.Value`` (a server that predates JSON text) is
read with its value converter.
"""

from __future__ import annotations

import json as jsonlib
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
    "build_infer_stream_request",
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


def _json_default(value: Any) -> Any:
    # Mappings other than dict (json.dumps takes dicts only), as the Value converter did.
    if isinstance(value, Mapping):
        return dict(value)
    raise TypeError(f"{type(value).__name__} is not JSON-like")


def encode_json(value: Any) -> bytes:
    """``value`` as compact UTF-8 JSON text; ClientConfigError for anything JSON cannot
    carry (NaN or infinity, an object of another type)."""
    try:
        text = jsonlib.dumps(
            value, allow_nan=False, ensure_ascii=False, separators=(",", ":"), default=_json_default
        )
    except (TypeError, ValueError) as exc:
        raise ClientConfigError(f"json payload is not JSON-like: {exc}") from exc
    return text.encode("utf-8")


def build_infer_request(
    application: str | None = None,
    *,
    plugin: str | None = None,
    action: str | None = None,
    model: int | str | None = None,
    json: Any = UNSET_JSON,
    json_text: str | bytes | None = None,
    tensors: Mapping[str, Any] | None = None,
    method: str = "post",
    path: str = "/",
    request_id: str | None = None,
) -> inference_service_pb2.InferRequest:
    """The InferRequest for these arguments (shared by the blocking and asyncio clients).

    ``json`` is encoded as JSON text; ``json_text`` is JSON text the caller encoded already
    (sent as it is: the server checks it). The answer is asked for as JSON text.
    """
    if bool(application) == bool(plugin or action):
        raise ClientConfigError("infer needs either application, or plugin and action")
    if json is not UNSET_JSON and json_text is not None:
        raise ClientConfigError("infer takes json or json_text, not both")
    request = inference_service_pb2.InferRequest(
        model_id="" if model is None else str(model),
        method=method or "",
        path=path or "",
        request_id=request_id or "",
        response_json_format=inference_service_pb2.JSON_FORMAT_TEXT,
    )
    if application:
        request.application = application
    else:
        if not (plugin and action):
            raise ClientConfigError("infer by action needs both plugin and action")
        request.action.plugin = plugin
        request.action.action = action
    if json_text is not None:
        data = json_text.encode("utf-8") if isinstance(json_text, str) else bytes(json_text)
        if not data:
            raise ClientConfigError("json_text is empty (send json=None for a JSON null)")
        request.json_text = data
    elif json is not UNSET_JSON:
        request.json_text = encode_json(json)
    for name, value in (tensors or {}).items():
        request.inputs.append(array_to_tensor(name, value))
    return request


def build_infer_stream_request(
    application: str | None = None, **arguments: Any
) -> inference_service_pb2.InferStreamRequest:
    """The InferStreamRequest for :func:`build_infer_request`'s arguments."""
    return inference_service_pb2.InferStreamRequest(
        request=build_infer_request(application, **arguments)
    )


def _result(response: inference_service_pb2.InferResponse) -> InferResult:
    if response.json_text:
        # json.loads keeps integers as ints, whatever their size.
        body = jsonlib.loads(response.json_text)
    elif response.HasField("json"):
        body = value_to_python(response.json, "json")
    else:
        body = None
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
