"""The status table: what a caller gets for each kind of failure."""

from __future__ import annotations

import grpc
from google.rpc import error_details_pb2, status_pb2
from synapse_sdk.errors import FieldViolation, ParamsValidationError
from synapse_server.core import InvalidArgumentError
from synapse_server.core.inference import InferenceFailedError
from synapse_server.grpc._errors import status_for


def _details(status: grpc.Status) -> status_pb2.Status:
    for key, value in status.trailing_metadata:
        if key == "grpc-status-details-bin":
            return status_pb2.Status.FromString(value)
    raise AssertionError("no rich status details")


def _error_info(status: grpc.Status) -> error_details_pb2.ErrorInfo:
    for detail in _details(status).details:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            return info
    raise AssertionError("no ErrorInfo detail")


def test_unknown_error_is_internal_with_a_correlation_id_and_no_traceback() -> None:
    status = status_for(RuntimeError("secret path /etc/shadow"))
    assert status.code == grpc.StatusCode.INTERNAL
    assert "shadow" not in status.details
    correlation = _error_info(status).metadata["correlation_id"]
    assert len(correlation) == 32 and correlation in status.details


def test_replica_failure_keeps_the_replica_correlation_id() -> None:
    status = status_for(InferenceFailedError("serve code raised", correlation_id="abc123"))
    assert status.code == grpc.StatusCode.INTERNAL
    assert _error_info(status).metadata["correlation_id"] == "abc123"


def test_bad_params_carry_one_field_violation_per_field() -> None:
    exc = ParamsValidationError(
        [FieldViolation("model_id", "field required"), FieldViolation("inputs.0", "bad")]
    )
    status = status_for(exc)
    assert status.code == grpc.StatusCode.INVALID_ARGUMENT
    bad = error_details_pb2.BadRequest()
    assert any(d.Unpack(bad) for d in _details(status).details)
    assert [(v.field, v.description) for v in bad.field_violations] == [
        ("params.model_id", "field required"),
        ("params.inputs.0", "bad"),
    ]


def test_other_bad_request_fields_are_named_in_the_details() -> None:
    status = status_for(InvalidArgumentError("page_size must be positive", field="page_size"))
    assert status.code == grpc.StatusCode.INVALID_ARGUMENT
    bad = error_details_pb2.BadRequest()
    assert any(d.Unpack(bad) for d in _details(status).details)
    assert [v.field for v in bad.field_violations] == ["page_size"]
