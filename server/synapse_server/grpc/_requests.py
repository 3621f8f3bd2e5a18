"""Request checks that run before any servicer code: size, decoding, string lengths.

grpc.aio decodes a request with the method's deserializer before the servicer runs; a
deserializer that raises makes grpc.aio answer ``UNKNOWN`` with the exception's text and log
a traceback (unary requests), or raises inside the servicer's ``async for`` (streamed ones).
:class:`RequestGuard` wraps every method's deserializer instead (the interceptor chain's
handler re-wrap, ``_interceptors``, applies it to every service on the port), so that

* a message over its RPC's size limit is refused with ``RESOURCE_EXHAUSTED`` naming the
  limit, without being parsed;
* bytes that are not a valid message are refused with ``INVALID_ARGUMENT`` and a short
  message, and nothing is logged per request;
* an id, name or short text longer than its bound is refused with ``INVALID_ARGUMENT``
  naming the field, before it is looked up, stored, logged or quoted in an error.

The deserializer never raises: it returns a :class:`RejectedRequest` that the handler wrapper
turns into the status (unary requests), or that :meth:`RequestGuard.checked` raises as the
domain error from the request iterator (streamed requests), where the servicer's error
mapping or the handler wrapper answers it.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from synapse_server.core._errors import (
    InvalidArgumentError,
    ResourceExhaustedError,
    ServerError,
)
from synapse_server.core._limits import (
    MAX_ID_CHARS,
    MAX_NAME_CHARS,
    MAX_PAGE_TOKEN_CHARS,
    MAX_PATH_CHARS,
    MAX_TEXT_CHARS,
)

__all__ = [
    "DEFAULT_MAX_MESSAGE_BYTES",
    "DEPLOYMENT_REQUEST_BYTES",
    "REGISTER_MODEL_MESSAGE_BYTES",
    "SMALL_REQUEST_BYTES",
    "STRING_LIMITS",
    "RejectedRequest",
    "RequestGuard",
    "format_bytes",
]

logger = logging.getLogger(__name__)

#: The default of the server's ``max_message_bytes`` setting.
DEFAULT_MAX_MESSAGE_BYTES = 64 << 20
#: Requests that carry only ids, names, filters and page tokens (and health, reflection).
SMALL_REQUEST_BYTES = 64 << 10
#: RegisterDeployment: names and ids plus the replicas' ``ray_actor_options``.
DEPLOYMENT_REQUEST_BYTES = 1 << 20
#: Each RegisterModel message: an archive chunk of at most 4 MiB, or the model's info (the
#: same for each message of a dataset or job output upload).
REGISTER_MODEL_MESSAGE_BYTES = (4 << 20) + (64 << 10)

_PREFIX = "/synapse.plugin.v1."
#: The Open Inference Protocol v2 service (``synapse_server.grpc.oip``).
_OIP = "/inference.GRPCInferenceService/"
#: The RPCs whose requests may be as large as the server's ``max_message_bytes``.
_LARGE_REQUEST_METHODS = frozenset(
    {
        _PREFIX + "ActionService/RunAction",
        _PREFIX + "InferenceService/Infer",
        _PREFIX + "InferenceService/InferStream",
        _PREFIX + "WorkerService/ReportEvents",
        # Tensors, as Infer's: each message of the stream too.
        _OIP + "ModelInfer",
        _OIP + "ModelStreamInfer",
    }
)
_FIXED_LIMITS = {
    _PREFIX + "ModelService/RegisterModel": REGISTER_MODEL_MESSAGE_BYTES,
    _PREFIX + "DatasetService/UploadDataset": REGISTER_MODEL_MESSAGE_BYTES,
    _PREFIX + "WorkerService/UploadJobOutput": REGISTER_MODEL_MESSAGE_BYTES,
    _PREFIX + "DeploymentService/RegisterDeployment": DEPLOYMENT_REQUEST_BYTES,
}

_P = "synapse.plugin.v1."
#: The longest value each string field of a request may hold, by message type. Nested
#: messages of a type listed here are checked too. Worker events are left out: they are
#: stored as the job's history, never looked up or quoted, and bounded by the message size.
STRING_LIMITS: Mapping[str, Mapping[str, int]] = {
    _P + "ListActionsRequest": {"plugin": MAX_NAME_CHARS},
    _P + "RunActionRequest": {
        "plugin": MAX_NAME_CHARS,
        "action": MAX_NAME_CHARS,
        "request_id": MAX_ID_CHARS,
    },
    _P + "StreamProgressRequest": {"job_id": MAX_ID_CHARS},
    _P + "GetJobRequest": {"job_id": MAX_ID_CHARS},
    _P + "ListJobsRequest": {
        "plugin": MAX_NAME_CHARS,
        "action": MAX_NAME_CHARS,
        "page_token": MAX_PAGE_TOKEN_CHARS,
    },
    _P + "CancelJobRequest": {"job_id": MAX_ID_CHARS, "reason": MAX_TEXT_CHARS},
    _P + "GetJobResultRequest": {"job_id": MAX_ID_CHARS},
    _P + "RegisterModelRequest": {},
    _P + "ModelUploadInfo": {
        "name": MAX_NAME_CHARS,
        "description": MAX_TEXT_CHARS,
        "framework": MAX_NAME_CHARS,
        "expected_sha256": MAX_ID_CHARS,
    },
    _P + "ListModelsRequest": {"name": MAX_NAME_CHARS, "page_token": MAX_PAGE_TOKEN_CHARS},
    _P + "UploadDatasetRequest": {},
    _P + "DatasetUploadInfo": {"name": MAX_NAME_CHARS, "expected_sha256": MAX_ID_CHARS},
    _P + "GetDatasetRequest": {"dataset_id": MAX_ID_CHARS},
    _P + "ListDatasetsRequest": {"name": MAX_NAME_CHARS, "page_token": MAX_PAGE_TOKEN_CHARS},
    _P + "DownloadDatasetRequest": {"dataset_id": MAX_ID_CHARS},
    _P + "DeleteDatasetRequest": {"dataset_id": MAX_ID_CHARS},
    _P + "ListJobOutputsRequest": {"job_id": MAX_ID_CHARS},
    _P + "ListDeploymentsRequest": {
        "plugin": MAX_NAME_CHARS,
        "name": MAX_NAME_CHARS,
        "page_token": MAX_PAGE_TOKEN_CHARS,
    },
    _P + "RegisterDeploymentRequest": {
        "name": MAX_NAME_CHARS,
        "plugin": MAX_NAME_CHARS,
        "action": MAX_NAME_CHARS,
        "job_id": MAX_ID_CHARS,
        "route_prefix": MAX_PATH_CHARS,
        "endpoint_action": MAX_NAME_CHARS,
    },
    _P + "InferRequest": {
        "application": MAX_NAME_CHARS,
        "model_id": MAX_ID_CHARS,
        "method": MAX_NAME_CHARS,
        "path": MAX_PATH_CHARS,
        "request_id": MAX_ID_CHARS,
    },
    # Its one field is an InferRequest, checked as for Infer.
    _P + "InferStreamRequest": {},
    _P + "ActionTarget": {"plugin": MAX_NAME_CHARS, "action": MAX_NAME_CHARS},
    _P + "Tensor": {"name": MAX_NAME_CHARS},
    _P + "GetAssignmentRequest": {"job_id": MAX_ID_CHARS, "worker_id": MAX_ID_CHARS},
    _P + "ReportEventsRequest": {},
    _P + "ReportEventsOpen": {"job_id": MAX_ID_CHARS, "worker_id": MAX_ID_CHARS},
    _P + "UploadJobOutputRequest": {},
    _P + "JobOutputInfo": {
        "job_id": MAX_ID_CHARS,
        "name": MAX_NAME_CHARS,
        "local_file": MAX_NAME_CHARS,
    },
    # Open Inference Protocol v2: model names are serve application names, versions model
    # ids; the values of string parameters are the endpoint's data (bounded by the message).
    "inference.ModelReadyRequest": {"name": MAX_NAME_CHARS, "version": MAX_ID_CHARS},
    "inference.ModelMetadataRequest": {"name": MAX_NAME_CHARS, "version": MAX_ID_CHARS},
    "inference.ModelInferRequest": {
        "model_name": MAX_NAME_CHARS,
        "model_version": MAX_ID_CHARS,
        "id": MAX_ID_CHARS,
    },
    "inference.ModelInferRequest.ParametersEntry": {"key": MAX_NAME_CHARS},
    "inference.ModelInferRequest.InferInputTensor": {
        "name": MAX_NAME_CHARS,
        "datatype": MAX_NAME_CHARS,
    },
    "inference.ModelInferRequest.InferInputTensor.ParametersEntry": {"key": MAX_NAME_CHARS},
    "inference.ModelInferRequest.InferRequestedOutputTensor": {"name": MAX_NAME_CHARS},
    "inference.ModelInferRequest.InferRequestedOutputTensor.ParametersEntry": {
        "key": MAX_NAME_CHARS
    },
}


def format_bytes(size: int) -> str:
    """``size`` for a message: exact bytes, and MiB or KiB when it is a whole number of them."""
    for unit, shift in (("MiB", 20), ("KiB", 10)):
        if size >= 1 << shift and size % (1 << shift) == 0:
            return f"{size} bytes ({size >> shift} {unit})"
    return f"{size} bytes"


class RejectedRequest:
    """What a guarded deserializer returns for a request it refuses: the error to answer."""

    __slots__ = ("error",)

    def __init__(self, error: ServerError) -> None:
        self.error = error


class RequestGuard:
    """Size, decoding and string-length checks for every request; see the module docstring.

    ``max_message_bytes`` bounds RunAction, Infer, InferStream, WorkerService.ReportEvents and
    the Open Inference Protocol's ModelInfer and ModelStreamInfer messages; every other RPC has
    the smaller fixed bound of its kind.
    """

    def __init__(self, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> None:
        if max_message_bytes < SMALL_REQUEST_BYTES:
            raise ValueError(f"max_message_bytes must be at least {SMALL_REQUEST_BYTES}")
        self.max_message_bytes = max_message_bytes

    def limit_for(self, method: str) -> int:
        """The largest request message ``method`` accepts, in bytes."""
        if method in _LARGE_REQUEST_METHODS:
            return self.max_message_bytes
        return _FIXED_LIMITS.get(method, SMALL_REQUEST_BYTES)

    def deserializer(
        self, method: str, inner: Callable[[bytes], Any] | None
    ) -> Callable[[bytes], Any]:
        """``inner`` wrapped to return a :class:`RejectedRequest` instead of raising."""
        limit = self.limit_for(method)
        rpc = method.rsplit("/", 1)[-1] or "request"

        def deserialize(raw: bytes) -> Any:
            if len(raw) > limit:
                return RejectedRequest(
                    ResourceExhaustedError(
                        f"the {rpc} request message is {len(raw)} bytes; this server accepts "
                        f"at most {format_bytes(limit)} for {rpc}"
                    )
                )
            if inner is None:
                return raw
            try:
                message = inner(raw)
            except Exception:
                # The parser's text names internal types and says nothing a caller can act
                # on; the bytes are simply not this RPC's request message.
                return RejectedRequest(
                    InvalidArgumentError(f"the request bytes are not a valid {rpc} request")
                )
            if isinstance(message, Message):
                try:
                    check_strings(message)
                except InvalidArgumentError as exc:
                    # Without its traceback: the frames would keep the refused message and
                    # its over-long value alive in a reference cycle until the cyclic
                    # collector ran, which an idle server may not do for a long time.
                    return RejectedRequest(exc.with_traceback(None))
            return message

        return deserialize

    @staticmethod
    async def checked(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
        """The messages of a request stream; raises the error of the first refused one."""
        async for message in requests:
            if isinstance(message, RejectedRequest):
                raise message.error
            yield message


def check_strings(message: Message, prefix: str = "") -> None:
    """InvalidArgumentError naming the first string field longer than its bound."""
    limits = STRING_LIMITS.get(message.DESCRIPTOR.full_name)
    if limits is None:
        return
    for field, value in message.ListFields():
        if field.type == FieldDescriptor.TYPE_STRING:
            limit = limits.get(field.name)
            if limit is not None and len(value) > limit:
                name = prefix + field.name
                raise InvalidArgumentError(
                    f"{name} is {len(value)} characters long; at most {limit} are allowed",
                    field=name,
                )
        elif field.type == FieldDescriptor.TYPE_MESSAGE:
            entry_limits = STRING_LIMITS.get(field.message_type.full_name)
            if entry_limits is None:
                continue
            if field.message_type.GetOptions().map_entry:
                # A map reads as a mapping (its keys), not as a list of entry messages.
                _check_map_keys(value, entry_limits.get("key"), prefix + field.name)
            elif field.is_repeated:
                for index, item in enumerate(value):
                    check_strings(item, f"{prefix}{field.name}[{index}].")
            else:
                check_strings(value, f"{prefix}{field.name}.")


def _check_map_keys(mapping: Any, limit: int | None, name: str) -> None:
    """InvalidArgumentError naming map field ``name`` when a string key is over ``limit``."""
    if limit is None:
        return
    for key in mapping:
        if isinstance(key, str) and len(key) > limit:
            raise InvalidArgumentError(
                f"a key of {name} is {len(key)} characters long; at most {limit} are allowed",
                field=name,
            )
