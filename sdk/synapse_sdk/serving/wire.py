"""The messages between the platform's Infer router and serve replicas, and their versioning.

The server and a replica may run different SDK versions: a plugin's ``requirements.txt``
becomes the replica's pip environment. So nothing travels as a class of either side's SDK.
Every message crosses Ray as a plain ``dict`` of builtins (str, int, float, bool, None,
bytes, lists, tuples and dicts of those), which any Python reads without importing anything
of ours; the dataclasses here are only each side's view of it (``to_wire`` / ``from_wire``).

**Versioning.** :data:`PROTOCOL_VERSION` is ``(major, minor)`` and every message carries
its writer's as ``"v"``.

* Adding a field is a *minor* bump. A reader ignores keys it does not know, and a writer
  leaves out a field that has its default value, so a reader that predates a field sees
  exactly what it would have been sent before the field existed. An older or newer minor is
  therefore always accepted.
* Changing what a field means, or removing one, is a *major* bump. A replica answers a
  request of another major with error kind :attr:`ErrorKind.UNSUPPORTED_PROTOCOL` and a
  message naming both versions; the server refuses a reply of another major the same way.
  The server maps both to FAILED_PRECONDITION.
* The envelope never changes, in any version: ``"v"`` (two ints) in every message, and
  ``"error_kind"`` / ``"error_message"`` (two strings) in replies, so a mismatch is always
  reported, never misread.

**Request** (server → replica, the argument of :data:`INFER_METHOD` and of
:data:`INFER_STREAM_METHOD`), protocol 1.2::

    {"v": (1, 2), "method": "POST", "path": "/",
     "json": ...,                       # present only when the call carried a JSON payload
     "tensors": [(name, dtype, shape, data), ...],   # dtype: numpy name; data: little-endian
     "request_id": "...", "headers": {"traceparent": "...", ...}}

**Reply** (replica → server)::

    {"v": (1, 2), "json": ..., "tensors": [...], "error_kind": "...", "error_message": "...",
     "batch_size": 8,                   # present only when the request ran in a batch
     "group": (32, 0.005)}              # present only when the endpoint batches (below)

**Stream** (protocol 1.1): :data:`INFER_STREAM_METHOD` takes the same request and yields one
reply per item the endpoint yields; a failure is the last reply, with ``error_kind`` set.

**Group** (protocol 1.2): :data:`INFER_GROUP_METHOD` takes a list of requests for one model
(the call's multiplexed model id) and ``waited_s``, and answers a list of replies, one per
request, in the same order. A reply of a batched endpoint carries ``group``:
``(max_batch_size, batch_wait_timeout_s)`` of its deployment, which tells the server it may
gather concurrent requests for that endpoint and model and send them as one group;
``waited_s`` says how long it held the group, and the replica's batch queue takes its
requests as if they had arrived that long ago (the batch wait is not paid twice).

**History.** 1.0: requests, replies, replica info. 1.1: :data:`INFER_STREAM_METHOD`; error
kinds ``resource_exhausted`` and ``failed_precondition``; ``batch_size`` in replies. A 1.0
reader of a 1.1 reply ignores ``batch_size`` and answers an unknown error kind as internal;
a 1.0 replica has no stream method, which the server reports as a protocol mismatch. 1.2:
:data:`INFER_GROUP_METHOD` and ``group`` in replies. A server older than 1.2 ignores
``group`` and sends each request alone; a replica older than 1.2 never sends ``group``, so
a 1.2 server never sends it a group.

**Replica info** (the answer of :data:`REPLICA_INFO_METHOD`): ``replica_id``, ``tenant``,
``app_name``, ``loaded_model_ids``, ``load_counts`` (see :class:`ReplicaInfo`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from synapse_client.codec import TensorPayload

from synapse_sdk.errors import SynapseError

__all__ = [
    "INFER_GROUP_METHOD",
    "INFER_METHOD",
    "INFER_STREAM_METHOD",
    "MAX_GROUP_SIZE",
    "PROTOCOL_VERSION",
    "REPLICA_INFO_METHOD",
    "ErrorKind",
    "ProtocolVersionError",
    "ReplicaInfo",
    "ServeReply",
    "ServeRequest",
    "TensorPayload",
    "WireFormatError",
    "format_version",
]

#: The serve protocol this SDK speaks: (major, minor).
PROTOCOL_VERSION: tuple[int, int] = (1, 2)

#: The replica method the router calls with a request (the name is part of the contract).
INFER_METHOD = "_synapse_infer"
#: The replica method that streams the replies of one request (protocol 1.1).
INFER_STREAM_METHOD = "_synapse_infer_stream"
#: The replica method that answers a list of requests for one model with a list of replies
#: (protocol 1.2).
INFER_GROUP_METHOD = "_synapse_infer_group"
#: The most requests one group carries (a reader refuses a longer list).
MAX_GROUP_SIZE = 1024
#: The replica method that answers a :class:`ReplicaInfo`.
REPLICA_INFO_METHOD = "_synapse_replica_info"


class ErrorKind(StrEnum):
    """Why a replica did not answer a request; travels as its string value."""

    INVALID_ARGUMENT = "invalid_argument"
    NOT_FOUND = "not_found"
    PERMISSION_DENIED = "permission_denied"
    INTERNAL = "internal"
    #: The replica's queues are full (protocol 1.1).
    RESOURCE_EXHAUSTED = "resource_exhausted"
    #: The endpoint cannot answer this kind of call, e.g. Infer on a generator (1.1).
    FAILED_PRECONDITION = "failed_precondition"
    #: The request's protocol major is not the replica's (the message names both).
    UNSUPPORTED_PROTOCOL = "unsupported_protocol"


class WireFormatError(SynapseError, ValueError):
    """A message is not a well-formed serve message of its protocol version."""


class ProtocolVersionError(WireFormatError):
    """A message's protocol major is not this side's; ``remote`` is None when it has none."""

    def __init__(self, message: str, remote: tuple[int, int] | None) -> None:
        super().__init__(message)
        self.local = PROTOCOL_VERSION
        self.remote = remote


def format_version(version: tuple[int, int] | None) -> str:
    """``(1, 0)`` as ``"1.0"`` (``"unknown"`` for None)."""
    return "unknown" if version is None else f"{version[0]}.{version[1]}"


def _version(message: Mapping[str, Any]) -> tuple[int, int] | None:
    raw = message.get("v")
    if (
        isinstance(raw, tuple | list)
        and len(raw) == 2
        and all(type(part) is int and part >= 0 for part in raw)
    ):
        return (raw[0], raw[1])
    return None


def _checked_version(message: Any, what: str, reader: str) -> tuple[int, int]:
    """The message's version when this side can read it; :class:`ProtocolVersionError` else."""
    remote = _version(message) if isinstance(message, Mapping) else None
    if remote is None or remote[0] != PROTOCOL_VERSION[0]:
        raise ProtocolVersionError(
            f"serve protocol mismatch: the {what} is protocol {format_version(remote)} and "
            f"this {reader} speaks {format_version(PROTOCOL_VERSION)} (the server and the "
            "application's synapse-sdk must share the major version: redeploy the "
            "application or upgrade the server)",
            remote,
        )
    return remote


def _tensors_to_wire(tensors: tuple[TensorPayload, ...]) -> list[tuple[str, str, Any, bytes]]:
    return [(t.name, t.dtype, t.shape, t.data) for t in tensors]


def _tensors_from_wire(raw: Any) -> tuple[TensorPayload, ...]:
    if not isinstance(raw, list | tuple):
        raise WireFormatError("'tensors' is not a list")
    out = []
    for item in raw:
        if not (isinstance(item, tuple | list) and len(item) == 4):
            raise WireFormatError("a tensor is not a (name, dtype, shape, data) tuple")
        name, dtype, shape, data = item
        if not (
            isinstance(name, str)
            and isinstance(dtype, str)
            and isinstance(shape, tuple | list)
            and all(type(dim) is int for dim in shape)
            and isinstance(data, bytes)
        ):
            raise WireFormatError("a tensor's name, dtype, shape or data has the wrong type")
        out.append(TensorPayload(name, dtype, tuple(shape), data))
    return tuple(out)


def _text(message: Mapping[str, Any], key: str, default: str) -> str:
    value = message.get(key, default)
    if not isinstance(value, str):
        raise WireFormatError(f"{key!r} is not a string")
    return value


def _group(value: Any) -> tuple[int, float] | None:
    """A reply's ``group``: ``(max_batch_size, batch_wait_timeout_s)``, or None."""
    if value is None:
        return None
    if not isinstance(value, list | tuple) or len(value) != 2:
        raise WireFormatError("'group' is not a (max_batch_size, batch_wait_timeout_s) pair")
    size, wait = value
    if type(size) is not int or not 1 <= size <= MAX_GROUP_SIZE:
        raise WireFormatError(f"'group' size is not an int from 1 to {MAX_GROUP_SIZE}")
    if type(wait) not in (int, float) or not math.isfinite(wait) or wait < 0:
        raise WireFormatError("'group' wait is not a finite number of seconds >= 0")
    return size, float(wait)


@dataclass(frozen=True, slots=True)
class ServeRequest:
    """One Infer call as the replica receives it (built by the server's inference core).

    ``json`` is the payload when ``has_json`` (a JSON null is ``json=None, has_json=True``);
    ``headers`` carries request-scoped context across the hop (trace context, ids), string
    to string; ``protocol_version`` is the version the request was written with.
    """

    method: str = "POST"
    path: str = "/"
    json: Any = None
    has_json: bool = False
    tensors: tuple[TensorPayload, ...] = ()
    request_id: str = ""
    headers: Mapping[str, str] = field(default_factory=dict)
    protocol_version: tuple[int, int] = PROTOCOL_VERSION

    def to_wire(self) -> dict[str, Any]:
        """The message the router sends (fields at their default are left out)."""
        message: dict[str, Any] = {
            "v": self.protocol_version,
            "method": self.method,
            "path": self.path,
        }
        if self.has_json:
            message["json"] = self.json
        if self.tensors:
            message["tensors"] = _tensors_to_wire(self.tensors)
        if self.request_id:
            message["request_id"] = self.request_id
        if self.headers:
            message["headers"] = dict(self.headers)
        return message

    @classmethod
    def from_wire(cls, message: Any) -> ServeRequest:
        """The request a router sent; unknown keys are ignored.

        Raises :class:`ProtocolVersionError` for another major version (or no version at
        all), :class:`WireFormatError` for a known field of the wrong type.
        """
        version = _checked_version(message, "request", "replica")
        headers = message.get("headers") or {}
        if not (
            isinstance(headers, Mapping)
            and all(isinstance(k, str) and isinstance(v, str) for k, v in headers.items())
        ):
            raise WireFormatError("'headers' is not a mapping of strings to strings")
        return cls(
            method=_text(message, "method", "POST"),
            path=_text(message, "path", "/"),
            json=message.get("json"),
            has_json="json" in message,
            tensors=_tensors_from_wire(message["tensors"]) if "tensors" in message else (),
            request_id=_text(message, "request_id", ""),
            headers=dict(headers),
            protocol_version=version,
        )


@dataclass(frozen=True, slots=True)
class ServeReply:
    """The replica's answer. Failures are values (``error_kind``, an :class:`ErrorKind`
    value), never a traceback. ``batch_size`` is how many requests the endpoint answered in
    the same call as this one (0: the request did not run in a batch). ``group`` is the
    endpoint's ``(max_batch_size, batch_wait_timeout_s)`` when it batches (protocol 1.2):
    the server may then send it concurrent requests as one group."""

    json: Any = None
    tensors: tuple[TensorPayload, ...] = ()
    error_kind: str | None = None
    error_message: str = ""
    batch_size: int = 0
    group: tuple[int, float] | None = None
    protocol_version: tuple[int, int] = PROTOCOL_VERSION

    def to_wire(self) -> dict[str, Any]:
        """The message the replica answers (fields at their default are left out)."""
        message: dict[str, Any] = {"v": self.protocol_version}
        if self.json is not None:
            message["json"] = self.json
        if self.tensors:
            message["tensors"] = _tensors_to_wire(self.tensors)
        if self.error_kind is not None:
            # A plain str on the wire: an enum member would need our class to unpickle.
            message["error_kind"] = str(self.error_kind)
            message["error_message"] = self.error_message
        if self.batch_size:
            message["batch_size"] = self.batch_size
        if self.group is not None:
            message["group"] = self.group
        return message

    @classmethod
    def from_wire(cls, message: Any) -> ServeReply:
        """The reply a replica answered; unknown keys are ignored.

        A replica's refusal of the request's protocol is read whatever its version (the
        envelope never changes). Raises :class:`ProtocolVersionError` for a reply of another
        major, :class:`WireFormatError` for one that is not a serve reply at all.
        """
        if not isinstance(message, Mapping):
            raise WireFormatError(f"the reply is a {type(message).__name__}, not a serve reply")
        kind = message.get("error_kind")
        if kind is not None and not isinstance(kind, str):
            raise WireFormatError("'error_kind' is not a string")
        if kind == ErrorKind.UNSUPPORTED_PROTOCOL:
            return cls(
                error_kind=kind,
                error_message=_text(message, "error_message", ""),
                protocol_version=_version(message) or (0, 0),
            )
        version = _checked_version(message, "reply", "server")
        batch_size = message.get("batch_size", 0)
        if type(batch_size) is not int or batch_size < 0:
            raise WireFormatError("'batch_size' is not a non-negative int")
        return cls(
            json=message.get("json"),
            tensors=_tensors_from_wire(message["tensors"]) if "tensors" in message else (),
            error_kind=kind,
            error_message=_text(message, "error_message", ""),
            batch_size=batch_size,
            group=_group(message.get("group")),
            protocol_version=version,
        )

    @classmethod
    def unsupported(cls, error: ProtocolVersionError) -> ServeReply:
        """The replica's answer to a request it cannot read: names both versions."""
        return cls(error_kind=ErrorKind.UNSUPPORTED_PROTOCOL, error_message=str(error))


@dataclass(frozen=True, slots=True)
class ReplicaInfo:
    """A replica's answer to :data:`REPLICA_INFO_METHOD`: who it was deployed for (tenant,
    application) and which model ids it has loaded, with how often each was loaded."""

    replica_id: str
    tenant: str | None = None
    app_name: str | None = None
    loaded_model_ids: tuple[str, ...] = ()
    load_counts: Mapping[str, int] = field(default_factory=dict)
    protocol_version: tuple[int, int] = PROTOCOL_VERSION

    def to_wire(self) -> dict[str, Any]:
        """The replica's answer."""
        return {
            "v": self.protocol_version,
            "replica_id": self.replica_id,
            "tenant": self.tenant,
            "app_name": self.app_name,
            "loaded_model_ids": list(self.loaded_model_ids),
            "load_counts": dict(self.load_counts),
        }

    @classmethod
    def from_wire(cls, answer: Any) -> ReplicaInfo | None:
        """The info in a replica's answer; None for anything that is not one.

        Lenient on purpose: replicas deployed before the protocol had versions answer the
        same keys without ``"v"``, and a tenant or application that is not a string is
        reported as unknown (None), never guessed.
        """
        if not isinstance(answer, Mapping) or "replica_id" not in answer:
            return None
        tenant, app_name = answer.get("tenant"), answer.get("app_name")
        counts = answer.get("load_counts")
        return cls(
            replica_id=str(answer["replica_id"]),
            tenant=tenant if isinstance(tenant, str) else None,
            app_name=app_name if isinstance(app_name, str) else None,
            loaded_model_ids=tuple(str(m) for m in answer.get("loaded_model_ids") or ()),
            load_counts=(
                {str(k): v for k, v in counts.items() if type(v) is int}
                if isinstance(counts, Mapping)
                else {}
            ),
            protocol_version=_version(answer) or (0, 0),
        )
