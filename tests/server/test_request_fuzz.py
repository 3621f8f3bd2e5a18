"""Property-based fuzzing of every RPC of a real server with hostile request bytes.

Each RPC of ActionService, ModelService, DeploymentService, InferenceService, the Open
Inference Protocol's GRPCInferenceService and WorkerService (with and without a worker
credential) is called through a raw channel with
random bytes, mutated valid requests and requests built from random field values (Unicode
digits, over-long ids and names, unknown enum numbers, NaN and Infinity, deep and wide
Structs). Whatever arrives, the server must answer with a status a caller can act on: never
UNKNOWN or INTERNAL, a short message, a RESOURCE_EXHAUSTED that names the limit, and it must
still answer health checks afterwards.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from google.protobuf import message_factory, struct_pb2
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from synapse_server.core import ServiceUnavailableError

from tests.server._raw import Method, Outcome, ServerWithPendingJob, all_methods, call_raw

pytestmark = pytest.mark.timeout(300)

#: A status message longer than this is an echo of the request, not an explanation.
MAX_DETAILS = 1024
#: Examples per RPC: bounded so the module stays well under a minute on a small machine;
#: SYNAPSE_FUZZ_EXAMPLES raises it for a deeper run.
EXAMPLES = int(os.environ.get("SYNAPSE_FUZZ_EXAMPLES", "40"))

FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.function_scoped_fixture,
        HealthCheck.large_base_example,
    ],
)

METHODS = all_methods()
CLIENT_METHODS = [m for m in METHODS if ".WorkerService/" not in m.path]
WORKER_METHODS = [m for m in METHODS if ".WorkerService/" in m.path]


# The server -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerWithPendingJob]:
    server = ServerWithPendingJob(tmp_path_factory.mktemp("fuzz"))

    async def ray_unavailable() -> str:
        raise ServiceUnavailableError("Ray is not started in this test")

    # Ray is not what is fuzzed: a request valid enough to make the server ask Ray Serve
    # (RegisterDeployment) is answered UNAVAILABLE, as when Ray cannot start, instead of
    # starting a Ray head (tens of seconds on a small machine). tests/serve covers Ray.
    server.server.server._ray.ensure_started = ray_unavailable  # type: ignore[union-attr,method-assign]
    try:
        yield server
    finally:
        server.stop()


# Value strategies --------------------------------------------------------------------------

_INTERESTING_TEXT = [
    "",
    "0",
    "-1",
    "12",
    " 12",
    "\u00b2",  # superscript two: isdigit() but not int()
    "\u0661\u0662",  # Arabic-Indic 12: int() reads 12
    "\uff11\uff12",  # full-width 12
    "9" * 19,
    "9" * 40,
    "1e3",
    "\x00",
    "\ud7ff\ue000",
    "/",
    "../../etc/passwd",
    "toy",
    "quick",
    "a" * 129,
    "b" * 257,
    "c" * 2049,
    "\u00e9" * 10_000,
    "x" * 70_000,
    "synapse://models/1",
    "POST",
    "ZDox",  # base64 of "d:1": a page token of another listing
    "bzox",  # base64 of "o:1"
    "bzrCsg==",  # base64 of "o:²"
    "bzo5OTk5OTk5OTk5OTk5OTk5OTk5OTk5OQ==",  # base64 of "o:" + 22 nines
]
_INT_EDGES = [0, 1, -1, 2, 255, 1 << 20, (1 << 31) - 1, -(1 << 31), (1 << 63) - 1, -(1 << 63)]
_JSON_BYTES = [
    b"",
    b"{}",
    b"[]",
    b'{"count": 1, "label": "x"}',
    b'{"count": NaN}',
    b'{"count": 1e999}',
    b'{"a":',
    b"\xff\xfe",
    b"null",
    b'"text"',
    b'{"count": 1, "big": 9999999999999999999999}',
]


def texts() -> st.SearchStrategy[str]:
    return st.one_of(st.sampled_from(_INTERESTING_TEXT), st.text(max_size=24))


def ints(bits: int, signed: bool) -> st.SearchStrategy[int]:
    low, high = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
    edges = [v for v in _INT_EDGES if low <= v <= high]
    return st.one_of(st.sampled_from(edges), st.integers(low, high))


def numbers() -> st.SearchStrategy[float]:
    return st.one_of(
        st.sampled_from([math.nan, math.inf, -math.inf, 0.0, -0.0, 1e308, 5e-324]),
        st.floats(allow_nan=True, allow_infinity=True),
    )


def deep_struct(depth: int) -> struct_pb2.Struct:
    """A Struct nested ``depth`` levels deep (past the parser's recursion limit for large)."""
    root = struct_pb2.Struct()
    node = root
    for _ in range(depth):
        node = node.fields["d"].struct_value
    node.fields["leaf"].number_value = 1.0
    return root


def wide_struct(width: int, bad: bool) -> struct_pb2.Struct:
    """A Struct with ``width`` keys and a ``width``-element list (one NaN in it when ``bad``)."""
    message = struct_pb2.Struct()
    for index in range(width):
        message.fields[f"k{index}"].string_value = "v"
    values = message.fields["list"].list_value
    for index in range(width):
        values.values.add().number_value = float(index)
    if bad:
        values.values[width // 2].number_value = math.nan
    return message


def json_values(depth: int = 0) -> st.SearchStrategy[struct_pb2.Value]:
    def number(x: float) -> struct_pb2.Value:
        value = struct_pb2.Value()
        value.number_value = x
        return value

    def text(x: str) -> struct_pb2.Value:
        value = struct_pb2.Value()
        value.string_value = x
        return value

    leaves = st.one_of(numbers().map(number), texts().map(text), st.just(struct_pb2.Value()))
    if depth >= 2:
        return leaves

    def listed(items: list[struct_pb2.Value]) -> struct_pb2.Value:
        value = struct_pb2.Value()
        value.list_value.values.extend(items)
        return value

    def structured(struct: struct_pb2.Struct) -> struct_pb2.Value:
        value = struct_pb2.Value()
        value.struct_value.CopyFrom(struct)
        return value

    return st.one_of(
        leaves,
        st.lists(json_values(depth + 1), max_size=4).map(listed),
        structs(depth + 1).map(structured),
    )


def structs(depth: int = 0) -> st.SearchStrategy[struct_pb2.Struct]:
    def build(items: dict[str, struct_pb2.Value]) -> struct_pb2.Struct:
        message = struct_pb2.Struct()
        for key, value in items.items():
            message.fields[key].CopyFrom(value)
        return message

    random = st.dictionaries(texts(), json_values(depth), max_size=4).map(build)
    if depth > 0:
        return random
    return st.one_of(
        random,
        st.integers(1, 60).map(deep_struct),
        st.builds(wide_struct, st.integers(1, 5000), st.booleans()),
    )


def field_values(field: FieldDescriptor, depth: int) -> st.SearchStrategy[Any]:
    kind = field.type
    if kind == FieldDescriptor.TYPE_STRING:
        return texts()
    if kind == FieldDescriptor.TYPE_BYTES:
        return st.one_of(st.sampled_from(_JSON_BYTES), st.binary(max_size=64))
    if kind == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if kind in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        return numbers() if kind == FieldDescriptor.TYPE_DOUBLE else st.floats(width=32)
    if kind == FieldDescriptor.TYPE_ENUM:
        return ints(32, signed=True)
    if kind in (
        FieldDescriptor.TYPE_INT64,
        FieldDescriptor.TYPE_SINT64,
        FieldDescriptor.TYPE_SFIXED64,
    ):
        return ints(64, signed=True)
    if kind in (FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_FIXED64):
        return ints(64, signed=False)
    if kind in (FieldDescriptor.TYPE_UINT32, FieldDescriptor.TYPE_FIXED32):
        return ints(32, signed=False)
    if kind in (
        FieldDescriptor.TYPE_INT32,
        FieldDescriptor.TYPE_SINT32,
        FieldDescriptor.TYPE_SFIXED32,
    ):
        return ints(32, signed=True)
    if kind == FieldDescriptor.TYPE_MESSAGE:
        name = field.message_type.full_name
        if name == "google.protobuf.Struct":
            return structs()
        if name == "google.protobuf.Value":
            return json_values()
        return messages(message_factory.GetMessageClass(field.message_type), depth + 1)
    raise AssertionError(f"no strategy for {field.full_name}")


def messages(cls: type, depth: int = 0) -> st.SearchStrategy[Message]:
    """Messages of ``cls`` with random values in a random subset of its fields."""
    descriptor = cls.DESCRIPTOR  # type: ignore[attr-defined]
    if depth > 3:
        return st.just(cls())
    strategies: dict[str, st.SearchStrategy[Any]] = {}
    for field in descriptor.fields:
        one = field_values(field, depth)
        many = st.lists(one, max_size=3) if field.is_repeated else one
        strategies[field.name] = st.one_of(st.none(), many)

    def build(values: dict[str, Any]) -> Message:
        message = cls()
        for name, value in values.items():
            if value is None:
                continue
            field = descriptor.fields_by_name[name]
            if field.is_repeated:
                target = getattr(message, name)
                if field.message_type is not None and field.message_type.GetOptions().map_entry:
                    # A map (the Open Inference Protocol's parameters): its entries arrive
                    # as key/value messages and are set by key.
                    value_field = field.message_type.fields_by_name["value"]
                    for entry in value:
                        if value_field.type == FieldDescriptor.TYPE_MESSAGE:
                            target[entry.key].CopyFrom(entry.value)
                        else:
                            target[entry.key] = entry.value
                elif field.type == FieldDescriptor.TYPE_MESSAGE:
                    for item in value:
                        target.add().CopyFrom(item)
                else:
                    target.extend(value)
            elif field.type == FieldDescriptor.TYPE_MESSAGE:
                getattr(message, name).CopyFrom(value)
            else:
                setattr(message, name, value)
        return message

    return st.fixed_dictionaries(strategies).map(build)


def mutated(data: bytes, draw: st.DrawFn) -> bytes:
    """``data`` with one random corruption: a flipped byte, a cut, an insertion."""
    operation = draw(st.sampled_from(["flip", "cut", "insert", "varint", "repeat"]))
    if operation == "flip" and data:
        index = draw(st.integers(0, len(data) - 1))
        return data[:index] + bytes([data[index] ^ draw(st.integers(1, 255))]) + data[index + 1 :]
    if operation == "cut" and data:
        return data[: draw(st.integers(0, len(data) - 1))]
    if operation == "varint":
        # A length-delimited field whose length runs past the end of the message.
        return data + bytes([draw(st.integers(0, 255))]) + b"\xff\xff\xff\xff\x0f"
    if operation == "repeat":
        return data * draw(st.integers(2, 4))
    index = draw(st.integers(0, len(data)))
    return data[:index] + draw(st.binary(min_size=1, max_size=16)) + data[index:]


def request_bytes(method: Method, draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["random", "mutated", "fields", "fields"]))
    if kind == "random":
        return draw(st.binary(max_size=128))
    message = draw(messages(method.request_class))
    data = message.SerializeToString()
    return mutated(data, draw) if kind == "mutated" else data


# Checks ------------------------------------------------------------------------------------

_NAMES_A_LIMIT = re.compile(r"\d+ bytes|larger than max|\d+ characters")


def check(method: Method, outcome: Outcome) -> None:
    where = f"{method.path}: {outcome.code.name} {outcome.details[:200]!r}"
    assert outcome.code not in (grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL), where
    assert outcome.code != grpc.StatusCode.DEADLINE_EXCEEDED, where
    assert len(outcome.details) <= MAX_DETAILS, where
    if outcome.code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        assert _NAMES_A_LIMIT.search(outcome.details), where


def _payloads(method: Method, draw: st.DrawFn, job_id: str) -> list[bytes]:
    if not method.client_streaming:
        return [request_bytes(method, draw)]
    count = draw(st.integers(0, 4))
    payloads = [request_bytes(method, draw) for _ in range(count)]
    if draw(st.booleans()):
        # Start the stream well, so that later messages get past the first-message checks.
        payloads.insert(0, _good_first(method, job_id))
    return payloads


def _good_first(method: Method, job_id: str) -> bytes:
    from synapse.plugin.v1 import model_pb2, model_service_pb2, worker_service_pb2

    if method.name == "ModelStreamInfer":
        from synapse_server.grpc.oip._proto import grpc_predict_v2_pb2

        return grpc_predict_v2_pb2.ModelInferRequest(model_name="fuzz").SerializeToString()
    if method.name == "RegisterModel":
        info = model_service_pb2.ModelUploadInfo(
            name="fuzz", archive_format=model_pb2.ARCHIVE_FORMAT_ZIP
        )
        return model_service_pb2.RegisterModelRequest(info=info).SerializeToString()
    return worker_service_pb2.ReportEventsRequest(
        open=worker_service_pb2.ReportEventsOpen(job_id=job_id, worker_id="fuzz")
    ).SerializeToString()


def _health(target: ServerWithPendingJob) -> None:
    with target.server.channel() as channel:
        health = health_pb2_grpc.HealthStub(channel)
        answer = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=30)
    assert answer.status == health_pb2.HealthCheckResponse.SERVING


# Tests -------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", CLIENT_METHODS, ids=lambda m: m.path.split(".")[-1])
def test_client_rpcs_answer_hostile_requests_with_actionable_statuses(
    target: ServerWithPendingJob, method: Method
) -> None:
    @FUZZ
    @given(st.data())
    def fuzz(data: st.DataObject) -> None:
        payloads = _payloads(method, data.draw, target.job_id)
        check(method, call_raw(target.channel, method, payloads, timeout=60))

    fuzz()
    _health(target)


@pytest.mark.parametrize("method", WORKER_METHODS, ids=lambda m: m.path.split(".")[-1])
@pytest.mark.parametrize("credential", [True, False], ids=["credential", "no-credential"])
def test_worker_rpcs_answer_hostile_requests_with_actionable_statuses(
    target: ServerWithPendingJob, method: Method, credential: bool
) -> None:
    @FUZZ
    @given(st.data())
    def fuzz(data: st.DataObject) -> None:
        payloads = _payloads(method, data.draw, target.job_id)
        token = (
            target.credential if credential else data.draw(st.sampled_from(["", "x", "swk1.a.b.c"]))
        )
        metadata = [("authorization", f"Bearer {token}")] if token else None
        check(method, call_raw(target.channel, method, payloads, metadata=metadata, timeout=60))

    fuzz()
    _health(target)
