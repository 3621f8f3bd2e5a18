"""The server ↔ replica contract: plain messages, protocol versions, the replica's answers."""

from __future__ import annotations

import asyncio
import io
import pickle
from typing import Any

import numpy as np
import pytest
import synapse_sdk.serving as serving
from synapse_client import codec
from synapse_sdk.serving import (
    PROTOCOL_VERSION,
    ErrorKind,
    ProtocolVersionError,
    ReplicaInfo,
    ServeReply,
    ServeRequest,
    TensorPayload,
    WireFormatError,
)
from synapse_sdk.serving._replica import ReplicaRuntime
from synapse_sdk.serving.wire import MAX_GROUP_SIZE

EXPECTED_EXPORTS = {
    "DEFAULT_REPLICA_MESSAGE_BYTES",
    "INFER_GROUP_METHOD",
    "INFER_METHOD",
    "INFER_STREAM_METHOD",
    "MAX_GROUP_SIZE",
    "PROTOCOL_VERSION",
    "RELEASE_CHECKSUM_ENV",
    "RELEASE_CODE_ENV",
    "REPLICA_INFO_METHOD",
    "REPLICA_MESSAGE_BYTES_ENV",
    "REPLICA_PLATFORM_ADDRESS_ENV",
    "SERVE_SIGNING_KEY_ENV",
    "SERVE_TENANT_ENV",
    "ErrorKind",
    "ProtocolVersionError",
    "ReplicaInfo",
    "ServeDeploymentError",
    "ServeModelClaims",
    "ServeModelIdError",
    "ServeModelIdSigner",
    "ServeModelIdVerifier",
    "ServeReply",
    "ServeRequest",
    "TensorPayload",
    "WireFormatError",
    "derive_app_key",
    "derive_tenant_key",
    "format_version",
    "looks_like_serve_model_id",
    "unverified_claims",
    # The replicas' direct endpoint (its contract with the server's Infer router).
    "DIRECT_APP_METADATA",
    "DIRECT_ENV",
    "DIRECT_INFER",
    "DIRECT_INFER_GROUP",
    "DIRECT_KV_NAMESPACE",
    "DIRECT_MODEL_METADATA",
    "DIRECT_REGISTRY_VERSION",
    "DirectMessageError",
    "pack_direct_message",
    "registry_key",
    "registry_prefix",
    "unpack_direct_message",
}

TENSOR = TensorPayload.from_array("x", np.arange(6, dtype=np.float32).reshape(2, 3))
MAJOR, MINOR = PROTOCOL_VERSION


class _BuiltinsOnly(pickle.Unpickler):
    """Unpickles only builtins: what a replica of any SDK version can read."""

    def find_class(self, module: str, name: str) -> Any:
        raise AssertionError(f"the message needs {module}.{name} to be read")


def _cross(message: Any) -> Any:
    """``message`` as the other side reads it after Ray's plain pickle."""
    return _BuiltinsOnly(io.BytesIO(pickle.dumps(message))).load()


def test_exports_are_pinned() -> None:
    assert set(serving.__all__) == EXPECTED_EXPORTS
    for name in serving.__all__:
        assert getattr(serving, name) is not None, name


def test_the_wire_tensor_is_the_codecs() -> None:
    assert TensorPayload is codec.TensorPayload


def test_a_request_crosses_as_builtins_and_round_trips() -> None:
    request = ServeRequest(
        method="PUT",
        path="/predict",
        json={"inputs": [1.0, None]},
        has_json=True,
        tensors=(TENSOR,),
        request_id="req-1",
        headers={"traceparent": "00-abc-def-01", "x-request-id": "req-1"},
    )
    wire = _cross(request.to_wire())
    assert wire["v"] == PROTOCOL_VERSION
    assert ServeRequest.from_wire(wire) == request


def test_a_json_null_is_not_an_absent_payload() -> None:
    null = ServeRequest(json=None, has_json=True)
    absent = ServeRequest()
    assert ServeRequest.from_wire(_cross(null.to_wire())).has_json is True
    assert ServeRequest.from_wire(_cross(absent.to_wire())).has_json is False


def test_fields_at_their_default_are_left_out() -> None:
    assert ServeRequest().to_wire() == {"v": PROTOCOL_VERSION, "method": "POST", "path": "/"}
    assert ServeReply(json=None).to_wire() == {"v": PROTOCOL_VERSION}


def test_unknown_fields_of_a_newer_minor_are_ignored() -> None:
    wire = ServeRequest(json={"a": 1}, has_json=True).to_wire()
    wire.update({"v": (MAJOR, MINOR + 3), "priority": 7, "deadline_ns": 123})
    request = ServeRequest.from_wire(_cross(wire))
    assert request.json == {"a": 1} and request.protocol_version == (MAJOR, MINOR + 3)
    reply = ServeReply(json=[1]).to_wire()
    reply.update({"v": [MAJOR, MINOR + 1], "timings": {"queue_ms": 3}})
    assert ServeReply.from_wire(_cross(reply)).json == [1]


def test_a_reply_s_group_hint_crosses_as_builtins() -> None:
    reply = ServeReply(json={"y": 1}, batch_size=4, group=(32, 0.005))
    wire = _cross(reply.to_wire())
    assert wire["group"] == (32, 0.005)
    assert ServeReply.from_wire(wire) == reply
    # An int wait is read as seconds too (a replica may write 0).
    assert ServeReply.from_wire({"v": PROTOCOL_VERSION, "group": [8, 0]}).group == (8, 0.0)


@pytest.mark.parametrize(
    "group",
    ["32", (32,), (0, 0.1), (MAX_GROUP_SIZE + 1, 0.1), (True, 0.1), (4, -1.0), (4, float("inf"))],
)
def test_a_malformed_group_hint_is_a_wire_format_error(group: Any) -> None:
    with pytest.raises(WireFormatError, match="'group'"):
        ServeReply.from_wire({"v": PROTOCOL_VERSION, "group": group})


def test_an_older_minor_without_newer_fields_is_accepted() -> None:
    # What a writer that predates headers and request ids sends.
    wire = {"v": (MAJOR, 0), "method": "POST", "path": "/", "json": {"x": [1.0]}}
    request = ServeRequest.from_wire(wire)
    assert (request.headers, request.request_id, request.has_json) == ({}, "", True)


@pytest.mark.parametrize("remote", [(MAJOR + 1, 0), (MAJOR - 1, 9)])
def test_another_major_is_refused_naming_both_versions(remote: tuple[int, int]) -> None:
    wire = ServeRequest().to_wire()
    wire["v"] = remote
    with pytest.raises(ProtocolVersionError) as raised:
        ServeRequest.from_wire(wire)
    message = str(raised.value)
    assert f"{remote[0]}.{remote[1]}" in message and f"{MAJOR}.{MINOR}" in message
    assert raised.value.remote == remote and raised.value.local == PROTOCOL_VERSION


@pytest.mark.parametrize(
    "message",
    [None, "POST /", object(), {"method": "POST"}, {"v": "1.0"}, {"v": (1,)}, {"v": (1, -1)}],
)
def test_a_message_without_a_readable_version_is_refused(message: Any) -> None:
    with pytest.raises(ProtocolVersionError, match="protocol unknown"):
        ServeRequest.from_wire(message)


@pytest.mark.parametrize(
    "fields",
    [
        {"method": 5},
        {"path": None},
        {"request_id": b"x"},
        {"headers": {"a": 1}},
        {"headers": [("a", "b")]},
        {"tensors": "x"},
        {"tensors": [("x", "float32", (1,))]},
        {"tensors": [("x", "float32", (1.5,), b"\0" * 4)]},
        {"tensors": [("x", "float32", (1,), "four")]},
    ],
)
def test_known_fields_of_the_wrong_type_are_wire_format_errors(fields: dict[str, Any]) -> None:
    wire = {**ServeRequest().to_wire(), **fields}
    with pytest.raises(WireFormatError) as raised:
        ServeRequest.from_wire(wire)
    assert not isinstance(raised.value, ProtocolVersionError)


def test_a_reply_crosses_as_builtins_and_round_trips() -> None:
    reply = ServeReply(json={"y": [2.0]}, tensors=(TENSOR,))
    assert ServeReply.from_wire(_cross(reply.to_wire())) == reply
    failed = ServeReply(error_kind=ErrorKind.NOT_FOUND, error_message="no endpoint for GET /x")
    read = ServeReply.from_wire(_cross(failed.to_wire()))
    assert (read.error_kind, read.error_message) == ("not_found", "no endpoint for GET /x")
    assert type(_cross(failed.to_wire())["error_kind"]) is str


def test_a_reply_of_another_major_is_refused() -> None:
    wire = ServeReply(json=1).to_wire()
    wire["v"] = (MAJOR + 1, 0)
    with pytest.raises(ProtocolVersionError, match=f"protocol {MAJOR + 1}.0"):
        ServeReply.from_wire(wire)
    with pytest.raises(WireFormatError, match="not a serve reply"):
        ServeReply.from_wire(["not", "a", "reply"])


def test_a_refusal_is_read_from_a_replica_of_any_version() -> None:
    # The envelope (v, error_kind, error_message) never changes: a replica of protocol 9
    # refusing our request is understood, not reported as an unreadable reply.
    wire = {"v": (9, 4), "error_kind": "unsupported_protocol", "error_message": "9.4 vs 1.0"}
    reply = ServeReply.from_wire(_cross(wire))
    assert reply.error_kind == ErrorKind.UNSUPPORTED_PROTOCOL
    assert reply.error_message == "9.4 vs 1.0" and reply.protocol_version == (9, 4)


def test_replica_info_round_trips_and_reads_answers_of_older_replicas() -> None:
    info = ReplicaInfo("r1", "acme", "app", ("1", "2"), {"1": 1, "2": 3})
    assert ReplicaInfo.from_wire(_cross(info.to_wire())) == info
    # An answer without a version (replicas deployed before the protocol had one).
    old = {"replica_id": "r2", "loaded_model_ids": ["7"], "load_counts": {"7": 1}}
    read = ReplicaInfo.from_wire(old)
    assert read is not None
    assert (read.tenant, read.app_name, read.loaded_model_ids) == (None, None, ("7",))
    assert ReplicaInfo.from_wire({"tenant": "acme"}) is None
    assert ReplicaInfo.from_wire("r1") is None
    odd = ReplicaInfo.from_wire({"replica_id": 5, "tenant": 3, "load_counts": {"a": "x"}})
    assert odd is not None and (odd.replica_id, odd.tenant, odd.load_counts) == ("5", None, {})


# The replica's side ---------------------------------------------------------------------------


class _Deployment:
    """Stands in for a deployed BaseServeDeployment: no request may reach its endpoints."""

    app = None
    _synapse_replica_config = None

    def infer(self, **kwargs: Any) -> Any:
        raise AssertionError("the endpoint was called")


def test_the_replica_answers_another_major_with_a_typed_refusal() -> None:
    runtime = ReplicaRuntime(_Deployment())
    wire = ServeRequest(json={"x": 1}, has_json=True).to_wire()
    wire["v"] = (MAJOR + 1, 0)
    answer = _cross(asyncio.run(runtime.infer(wire)))
    assert answer["error_kind"] == "unsupported_protocol"
    assert f"{MAJOR + 1}.0" in answer["error_message"]
    assert f"{MAJOR}.{MINOR}" in answer["error_message"]
    assert ServeReply.from_wire(answer).error_kind == ErrorKind.UNSUPPORTED_PROTOCOL


def test_the_replica_answers_an_unreadable_request_as_internal() -> None:
    runtime = ReplicaRuntime(_Deployment())
    wire = {**ServeRequest().to_wire(), "headers": {"a": 1}}
    reply = ServeReply.from_wire(_cross(asyncio.run(runtime.infer(wire))))
    assert reply.error_kind == ErrorKind.INTERNAL
    assert "could not read the request" in reply.error_message


@pytest.mark.parametrize("messages", [None, "text", [], {"v": PROTOCOL_VERSION}, [{}] * 1025])
def test_a_group_the_replica_cannot_read_is_one_internal_reply(messages: Any) -> None:
    """Not a list of 1 to MAX_GROUP_SIZE requests: one reply, which a server reads as a
    group answered wrongly (never a reply per request it did not get)."""
    runtime = ReplicaRuntime(_Deployment())
    (answer,) = _cross(asyncio.run(runtime.infer_group(messages, 0.01)))
    reply = ServeReply.from_wire(answer)
    assert reply.error_kind == ErrorKind.INTERNAL
    assert f"1 to {MAX_GROUP_SIZE} requests" in reply.error_message


@pytest.mark.parametrize("waited", [-1.0, float("nan"), float("inf"), "0.5", None])
def test_each_request_of_a_group_is_answered_alone(waited: Any) -> None:
    """Each message of a group gets its own reply, in order: an unreadable one and one of
    another major fail alone; a waited time of any value or type is read safely."""
    runtime = ReplicaRuntime(_Deployment())
    newer = {**ServeRequest().to_wire(), "v": (MAJOR + 1, 0)}
    unreadable = {**ServeRequest().to_wire(), "headers": {"a": 1}}
    answers = _cross(asyncio.run(runtime.infer_group([newer, unreadable, newer], waited)))
    kinds = [ServeReply.from_wire(answer).error_kind for answer in answers]
    assert kinds == [
        ErrorKind.UNSUPPORTED_PROTOCOL,
        ErrorKind.INTERNAL,
        ErrorKind.UNSUPPORTED_PROTOCOL,
    ]
