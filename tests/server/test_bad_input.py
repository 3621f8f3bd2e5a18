"""Bad input on every RPC answers a status a caller can act on, with a short message.

Regression tests for what a fuzzing run against ``synapse serve`` found: undecodable request
bytes (unary, and later messages of client streams), NaN and Infinity in every Struct a
request carries, Unicode digits in ids, huge ids and names echoed into errors and logs, and
message sizes over a path's limit. The property-based run over every RPC is
``test_request_fuzz.py``; these pin each case.
"""

from __future__ import annotations

import base64
import logging
import math
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import struct_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from synapse.plugin.v1 import (
    action_service_pb2,
    deployment_service_pb2,
    inference_service_pb2,
    job_pb2,
    model_pb2,
    model_service_pb2,
    worker_service_pb2,
)
from synapse_sdk.errors import FieldViolation, ModelNotFoundError, ParamsValidationError
from synapse_sdk.models._backend import parse_model_id
from synapse_server.cli import build_parser
from synapse_server.core._errors import quoted
from synapse_server.core._limits import parse_id
from synapse_server.core._paging import decode_page_token
from synapse_server.grpc._errors import MAX_MESSAGE_BYTES, MAX_VIOLATIONS, status_for
from synapse_server.grpc._requests import STRING_LIMITS

from tests.server._raw import (
    Method,
    Outcome,
    ServerWithPendingJob,
    all_methods,
    call_raw,
    raw_channel,
)

pytestmark = pytest.mark.timeout(120)

#: A status message longer than this echoes the request instead of explaining it.
SHORT = 1024
METHODS = {m.path.rsplit("/", 1)[-1]: m for m in all_methods()}
GARBAGE = b"\xff\xff\xff\xff\xff"
UNICODE_DIGITS = ["\u00b2", "\u0661\u0662", "\uff11\uff12", "\u0969"]


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerWithPendingJob]:
    server = ServerWithPendingJob(tmp_path_factory.mktemp("bad-input"))
    try:
        yield server
    finally:
        server.stop()


def _call(target: ServerWithPendingJob, rpc: str, *messages: Any, worker: bool = False) -> Outcome:
    """Call ``rpc`` with ``messages`` (protobuf messages or raw bytes)."""
    payloads = [m if isinstance(m, bytes) else m.SerializeToString() for m in messages]
    return call_raw(
        target.channel,
        METHODS[rpc],
        payloads,
        metadata=target.worker_metadata if worker else None,
        timeout=60,
    )


def _rich_violations(channel: grpc.Channel, method: Method, request: object) -> list[str]:
    """The BadRequest field names of the call's status (through a typed stub call)."""
    call = channel.unary_unary(method.path)
    try:
        call(request.SerializeToString(), timeout=60)  # type: ignore[attr-defined]
    except grpc.RpcError as exc:
        for key, value in exc.trailing_metadata() or ():  # type: ignore[attr-defined]
            if key == "grpc-status-details-bin":
                status = status_pb2.Status.FromString(value)
                fields = []
                for detail in status.details:
                    bad = error_details_pb2.BadRequest()
                    if detail.Unpack(bad):
                        fields.extend(v.field for v in bad.field_violations)
                return fields
        return []
    raise AssertionError("the call succeeded")


def _assert_code(outcome: Outcome, code: grpc.StatusCode) -> str:
    assert outcome.code == code, (outcome.code, outcome.details[:300])
    assert len(outcome.details) <= SHORT, len(outcome.details)
    return outcome.details


def _open(target: ServerWithPendingJob) -> worker_service_pb2.ReportEventsRequest:
    return worker_service_pb2.ReportEventsRequest(
        open=worker_service_pb2.ReportEventsOpen(job_id=target.job_id, worker_id="test")
    )


# Undecodable bytes -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "rpc",
    [
        "ListActions",
        "GetJob",
        "RunAction",
        "GetModel",
        "RegisterDeployment",
        "Infer",
        "InferStream",
    ],
)
def test_undecodable_unary_request_is_invalid_argument_without_a_traceback(
    target: ServerWithPendingJob, rpc: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO):
        details = _assert_code(_call(target, rpc, GARBAGE), grpc.StatusCode.INVALID_ARGUMENT)
    assert "not a valid" in details
    for internal in ("DecodeError", "protobuf", "Error parsing", "Traceback", "class"):
        assert internal not in details
    # Nothing logged as an error, and no traceback for a caller's bad bytes.
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]


def test_undecodable_later_message_of_register_model(
    target: ServerWithPendingJob, caplog: pytest.LogCaptureFixture
) -> None:
    info = model_service_pb2.RegisterModelRequest(
        info=model_service_pb2.ModelUploadInfo(
            name="m", archive_format=model_pb2.ARCHIVE_FORMAT_ZIP
        )
    )
    chunk = model_service_pb2.RegisterModelRequest(chunk=b"PK\x03\x04")
    with caplog.at_level(logging.INFO):
        error = _call(target, "RegisterModel", info, chunk, GARBAGE)
    details = _assert_code(error, grpc.StatusCode.INVALID_ARGUMENT)
    assert "not a valid RegisterModel request" in details
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]


def test_undecodable_later_message_of_report_events(
    target: ServerWithPendingJob, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO):
        error = _call(target, "ReportEvents", _open(target), GARBAGE, worker=True)
    details = _assert_code(error, grpc.StatusCode.INVALID_ARGUMENT)
    assert "not a valid ReportEvents request" in details
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]


def test_undecodable_bytes_of_an_unauthenticated_call_answer_unauthenticated(
    target: ServerWithPendingJob,
) -> None:
    # The auth failure comes first: nothing about the request is revealed to such a caller.
    _assert_code(_call(target, "GetAssignment", GARBAGE), grpc.StatusCode.UNAUTHENTICATED)


# NaN and Infinity in Structs ---------------------------------------------------------------


def test_nan_in_run_action_params_names_the_field(target: ServerWithPendingJob) -> None:
    request = action_service_pb2.RunActionRequest(plugin="toy", action="quick")
    request.params.update({"count": 1, "label": "x", "extra": {"deep": [1.0, math.nan]}})
    fields = _rich_violations(target.channel, METHODS["RunAction"], request)
    assert fields == ["params.extra.deep[1]"]


def test_nan_in_ray_actor_options_names_the_field(target: ServerWithPendingJob) -> None:
    request = deployment_service_pb2.RegisterDeploymentRequest(
        name="app", plugin="p", action="a", job_id="j"
    )
    request.ray_actor_options.update({"num_cpus": math.inf})
    fields = _rich_violations(target.channel, METHODS["RegisterDeployment"], request)
    assert fields == ["ray_actor_options.num_cpus"]


def test_nan_in_model_metadata_names_the_field(target: ServerWithPendingJob) -> None:
    info = model_service_pb2.ModelUploadInfo(name="m", archive_format=model_pb2.ARCHIVE_FORMAT_ZIP)
    info.metadata.update({"scores": [1.0, -math.inf]})
    error = _call(target, "RegisterModel", model_service_pb2.RegisterModelRequest(info=info))
    details = _assert_code(error, grpc.StatusCode.INVALID_ARGUMENT)
    assert details.startswith("info.metadata.scores[1]:"), details


def test_nan_in_infer_json_names_the_field(target: ServerWithPendingJob) -> None:
    request = inference_service_pb2.InferRequest(application="app", model_id="1")
    request.json.struct_value.update({"x": [math.nan]})
    fields = _rich_violations(target.channel, METHODS["Infer"], request)
    assert fields == ["json.x[0]"]
    streamed = inference_service_pb2.InferStreamRequest(request=request)
    fields = _rich_violations(target.channel, METHODS["InferStream"], streamed)
    assert fields == ["request.json.x[0]"]


@pytest.mark.parametrize("text", [b"[1e999]", b'{"x": NaN}', b"\xff", b"[1,"])
def test_bad_infer_json_text_names_the_field(target: ServerWithPendingJob, text: bytes) -> None:
    request = inference_service_pb2.InferRequest(application="app", json_text=text)
    assert _rich_violations(target.channel, METHODS["Infer"], request) == ["json_text"]
    streamed = inference_service_pb2.InferStreamRequest(request=request)
    fields = _rich_violations(target.channel, METHODS["InferStream"], streamed)
    assert fields == ["request.json_text"]


@pytest.mark.parametrize("value", [3, 7, -1, 2**31 - 1])
def test_unknown_infer_json_format_names_the_field(
    target: ServerWithPendingJob, value: int
) -> None:
    request = inference_service_pb2.InferRequest(
        application="app", json_text=b"{}", response_json_format=value
    )
    assert _rich_violations(target.channel, METHODS["Infer"], request) == ["response_json_format"]
    streamed = inference_service_pb2.InferStreamRequest(request=request)
    fields = _rich_violations(target.channel, METHODS["InferStream"], streamed)
    assert fields == ["request.response_json_format"]


def test_infer_stream_without_a_request_is_invalid_argument(target: ServerWithPendingJob) -> None:
    empty = inference_service_pb2.InferStreamRequest()
    error = _call(target, "InferStream", empty)
    details = _assert_code(error, grpc.StatusCode.INVALID_ARGUMENT)
    assert len(details) < 300, details


@pytest.mark.parametrize("kind", ["log", "metric", "step_finished", "progress"])
def test_nan_in_worker_events_is_invalid_argument(target: ServerWithPendingJob, kind: str) -> None:
    event = worker_service_pb2.WorkerEvent(worker_seq=1)
    if kind == "log":
        event.log.event = "e"
        event.log.data.update({"loss": math.nan})
    elif kind == "metric":
        event.metric.values.update({"loss": math.inf})
    elif kind == "step_finished":
        event.step_finished.name = "s"
        event.step_finished.status = 1
        event.step_finished.data.update({"v": [math.nan]})
    else:
        event.progress.overall_percent = math.nan
    report = worker_service_pb2.ReportEventsRequest(event=event)
    error = _call(target, "ReportEvents", _open(target), report, worker=True)
    details = _assert_code(error, grpc.StatusCode.INVALID_ARGUMENT)
    assert "not a" in details and ("JSON number" in details or "finite" in details), details


@pytest.mark.parametrize(("seconds", "nanos"), [(1, -1), (1, 10**9), (10**15, 0), (-(10**15), 0)])
def test_an_invalid_worker_event_time_is_invalid_argument(
    target: ServerWithPendingJob, seconds: int, nanos: int
) -> None:
    event = worker_service_pb2.WorkerEvent(worker_seq=1)
    event.log.event = "e"
    event.time.seconds, event.time.nanos = seconds, nanos
    report = worker_service_pb2.ReportEventsRequest(event=event)
    outcome = _call(target, "ReportEvents", _open(target), report, worker=True)
    assert _assert_code(outcome, grpc.StatusCode.INVALID_ARGUMENT) == (
        "time is not a valid timestamp"
    )


# Unicode digits in ids ---------------------------------------------------------------------


@pytest.mark.parametrize("model_id", [*UNICODE_DIGITS, " 12", "12 ", "-3", "0", "9" * 25])
def test_infer_model_id_is_ascii_digits(target: ServerWithPendingJob, model_id: str) -> None:
    request = inference_service_pb2.InferRequest(application="app", model_id=model_id)
    assert _rich_violations(target.channel, METHODS["Infer"], request) == ["model_id"]


@pytest.mark.parametrize("position", [*UNICODE_DIGITS, "9" * 19, "9" * 400])
def test_page_tokens_with_unicode_or_huge_positions_are_invalid(
    target: ServerWithPendingJob, position: str
) -> None:
    token = base64.urlsafe_b64encode(f"o:{position}".encode()).decode()
    request = action_service_pb2.ListJobsRequest(page_token=token)
    assert _rich_violations(target.channel, METHODS["ListJobs"], request) == ["page_token"]


def test_id_parsers_refuse_unicode_digits() -> None:
    for text in UNICODE_DIGITS:
        with pytest.raises(ValueError):
            parse_id(text, "model_id")
        with pytest.raises(ModelNotFoundError):
            parse_model_id(text)
        with pytest.raises(ValueError):
            decode_page_token("o", base64.urlsafe_b64encode(f"o:{text}".encode()).decode())
    assert parse_id("12", "model_id") == 12
    assert parse_model_id("synapse://models/12") == 12


@pytest.mark.parametrize(
    "argv",
    [
        ["model", "get", "\u0661\u0662"],
        ["model", "delete", "\u00b2"],
        ["deployments", "get", "\uff11"],
        ["jobs", "list", "--limit", "\u0663"],
    ],
)
def test_cli_ids_and_counts_are_ascii_digits(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args([*argv, "--server", "127.0.0.1:1"])
    assert exited.value.code == 2


# Huge ids and names ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rpc", "request_for"),
    [
        ("GetJob", lambda big: action_service_pb2.GetJobRequest(job_id=big)),
        ("CancelJob", lambda big: action_service_pb2.CancelJobRequest(job_id=big)),
        ("StreamProgress", lambda big: action_service_pb2.StreamProgressRequest(job_id=big)),
        ("ListActions", lambda big: action_service_pb2.ListActionsRequest(plugin=big)),
        ("ListModels", lambda big: model_service_pb2.ListModelsRequest(name=big)),
        ("Infer", lambda big: inference_service_pb2.InferRequest(application=big)),
        (
            "InferStream",
            lambda big: inference_service_pb2.InferStreamRequest(
                request=inference_service_pb2.InferRequest(application=big)
            ),
        ),
    ],
)
def test_a_10_kb_id_or_name_is_refused_with_a_short_message(
    target: ServerWithPendingJob, rpc: str, request_for: object
) -> None:
    request = request_for("\u00e9" * 10_000)  # type: ignore[operator]
    error = _call(target, rpc, request)
    details = _assert_code(error, grpc.StatusCode.INVALID_ARGUMENT)
    assert "10000 characters" in details


def test_multi_mb_names_are_refused_and_never_echoed_or_logged(
    target: ServerWithPendingJob, caplog: pytest.LogCaptureFixture
) -> None:
    big = "p" * (3 << 20)
    requests = [
        ("RunAction", action_service_pb2.RunActionRequest(plugin=big, action="quick")),
        ("RunAction", action_service_pb2.RunActionRequest(plugin="toy", action=big)),
        (
            "RegisterModel",
            model_service_pb2.RegisterModelRequest(
                info=model_service_pb2.ModelUploadInfo(
                    name=big, archive_format=model_pb2.ARCHIVE_FORMAT_ZIP
                )
            ),
        ),
        (
            "RegisterDeployment",
            deployment_service_pb2.RegisterDeploymentRequest(name="a", plugin=big, action="a"),
        ),
    ]
    with caplog.at_level(logging.DEBUG):
        for rpc, request in requests:
            outcome = _call(target, rpc, request)
            assert outcome.code in (
                grpc.StatusCode.INVALID_ARGUMENT,
                grpc.StatusCode.RESOURCE_EXHAUSTED,
            ), outcome
            assert len(outcome.details) <= SHORT
    assert all(len(r.getMessage()) < 4096 for r in caplog.records)


def test_refused_requests_are_freed_at_once_not_left_in_reference_cycles(
    target: ServerWithPendingJob,
) -> None:
    # An abort raised through the handler kept the request alive in a reference cycle
    # (grpc.aio stores the AbortError, whose traceback holds the handler frames) until the
    # cyclic collector ran: 12 refused 50 MB requests grew the server by over 1 GB.
    import gc

    requests = [
        action_service_pb2.RunActionRequest(plugin="toy", action="quick", params_json=b"["),
        action_service_pb2.RunActionRequest(plugin="p" * 1000, action="quick"),
        action_service_pb2.RunActionRequest(plugin="no-such-plugin", action="quick"),
    ]
    gc.collect()
    gc.disable()
    try:
        for request in requests:
            assert _call(target, "RunAction", request).code != grpc.StatusCode.OK
        gc.set_debug(gc.DEBUG_SAVEALL)
        gc.collect()
        left = [o for o in gc.garbage if type(o).__name__ == "RunActionRequest"]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
    assert left == []


def test_a_multi_mb_id_on_a_small_rpc_is_refused_before_it_is_read(
    target: ServerWithPendingJob,
) -> None:
    request = action_service_pb2.GetJobRequest(job_id="j" * (5 << 20))
    details = _assert_code(_call(target, "GetJob", request), grpc.StatusCode.RESOURCE_EXHAUSTED)
    assert "65536 bytes (64 KiB)" in details


def test_every_string_field_of_a_request_has_a_bound() -> None:
    # New request fields must get a bound too; worker events are the one exception (stored,
    # never looked up or quoted, bounded by the message size).
    from google.protobuf.descriptor import FieldDescriptor

    missing = []

    skipped = {
        "synapse.plugin.v1.WorkerEventBatch",
        "synapse.plugin.v1.WorkerEvent",
        # An OIP parameter's value and a tensor's contents are the endpoint's data (passed on,
        # never looked up or quoted), bounded by the message size.
        "inference.InferParameter",
        "inference.InferTensorContents",
    }

    def visit(descriptor: Any, path: str) -> None:
        limits = STRING_LIMITS.get(descriptor.full_name, {})
        for field in descriptor.fields:
            if field.type == FieldDescriptor.TYPE_STRING and field.name not in limits:
                missing.append(f"{path}.{field.name}")
            name = field.message_type.full_name if field.message_type else ""
            if name.startswith(("synapse.", "inference.")) and name not in skipped:
                assert name in STRING_LIMITS, f"{path}.{field.name}: {name} is not checked"
                visit(field.message_type, f"{path}.{field.name}")

    for method in all_methods():
        visit(method.request_class.DESCRIPTOR, method.name)
    assert missing == []


# Message size limits -----------------------------------------------------------------------


def test_a_request_over_the_server_limit_names_the_limit(server_factory: object) -> None:
    server = server_factory(max_message_bytes=8 << 20)  # type: ignore[operator]
    request = action_service_pb2.RunActionRequest(
        plugin="toy", action="quick", params_json=b" " * (9 << 20)
    )
    with server.channel() as channel:
        call = channel.unary_unary("/synapse.plugin.v1.ActionService/RunAction")
        with pytest.raises(grpc.RpcError) as info:
            call(request.SerializeToString(), timeout=60)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "8388608" in (info.value.details() or "")


def test_the_python_client_refuses_a_message_over_its_limit_before_sending(
    target: ServerWithPendingJob,
) -> None:
    import synapse_client as sc

    with (
        sc.Client(target.server.address, max_message_bytes=4096) as client,
        pytest.raises(sc.ResourceExhaustedError) as info,
    ):
        client.run_action("toy", "quick", {"count": 1, "label": "x" * 10_000})
    assert "4096" in str(info.value)


def test_the_python_client_receives_answers_over_grpcs_4_mib_default(
    target: ServerWithPendingJob,
) -> None:
    import synapse_client as sc

    label = "x" * (5 << 20)
    with sc.Client(target.server.address, timeout=60) as client:
        handle = client.run_action("toy", "quick", {"count": 0, "label": label}, mode="local")
        # GetJob's full view carries the 5 MiB params back (twice: Struct and JSON text).
        assert client.get_job(handle.id).params["label"] == label


def test_get_job_full_view_near_the_limit_sends_the_params_once(server_factory: object) -> None:
    server = server_factory(max_message_bytes=8 << 20)  # type: ignore[operator]
    label = "y" * (5 << 20)
    request = action_service_pb2.RunActionRequest(
        plugin="toy", action="quick", params_json=f'{{"count": 0, "label": "{label}"}}'.encode()
    )
    with raw_channel(server.address) as channel:
        run = channel.unary_unary("/synapse.plugin.v1.ActionService/RunAction")
        job = action_service_pb2.RunActionResponse.FromString(
            run(request.SerializeToString(), timeout=60)
        ).job
        get = channel.unary_unary("/synapse.plugin.v1.ActionService/GetJob")
        answer = action_service_pb2.GetJobResponse.FromString(
            get(
                action_service_pb2.GetJobRequest(
                    job_id=job.id, view=job_pb2.JOB_VIEW_FULL
                ).SerializeToString(),
                timeout=60,
            )
        )
    assert label in answer.job.params_json.decode()
    assert not answer.job.HasField("params")


# Status bounds -----------------------------------------------------------------------------


def test_status_messages_and_violations_are_bounded() -> None:
    from synapse_server.core import InvalidArgumentError

    status = status_for(InvalidArgumentError("x" * 1_000_000, field="f" * 10_000))
    assert len(status.details.encode()) <= MAX_MESSAGE_BYTES
    assert sum(len(v) for _, v in status.trailing_metadata) < 4096
    many = ParamsValidationError([FieldViolation(f"f{i}", "bad " * 100) for i in range(5000)])
    status = status_for(many)
    details = dict(status.trailing_metadata)["grpc-status-details-bin"]
    assert len(details) < 4096
    bad = error_details_pb2.BadRequest()
    assert any(d.Unpack(bad) for d in status_pb2.Status.FromString(details).details)
    assert len(bad.field_violations) == MAX_VIOLATIONS
    assert "5000 field violations" in status.details


def test_quoted_cuts_long_values_and_says_how_long_they_were() -> None:
    assert quoted("abc") == "'abc'"
    text = quoted("z" * 50_000)
    assert len(text) < 120 and "50000 characters" in text


# The server is still healthy ---------------------------------------------------------------


def test_the_server_still_answers_health_checks(
    target: ServerWithPendingJob, tmp_path: Path
) -> None:
    with target.server.channel() as channel:
        health = health_pb2_grpc.HealthStub(channel)
        answer = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=30)
    assert answer.status == health_pb2.HealthCheckResponse.SERVING
    # And an ordinary model upload still works after the bad ones.
    archive = tmp_path / "m.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("w.txt", "1")
    info = model_service_pb2.RegisterModelRequest(
        info=model_service_pb2.ModelUploadInfo(
            name="ok", archive_format=model_pb2.ARCHIVE_FORMAT_ZIP
        )
    )
    chunk = model_service_pb2.RegisterModelRequest(chunk=archive.read_bytes())
    assert _call(target, "RegisterModel", info, chunk).code == grpc.StatusCode.OK


def test_struct_values_keep_their_meaning() -> None:
    # The one converter gives what json_format gave for finite values.
    from google.protobuf import json_format
    from synapse_server.grpc._converters import struct_to_python

    message = struct_pb2.Struct()
    message.update({"a": 1, "b": [True, None, "s", {"c": 2.5}], "d": {}})
    assert struct_to_python(message, "x") == json_format.MessageToDict(message)
