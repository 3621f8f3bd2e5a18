"""The inference core over the serve protocol: what it sends, and a replica that refuses it.

The backend here is a stand-in that records requests and answers set replies; the real
replicas answering the same messages are exercised in tests/serve/test_serve_core.py.
"""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from synapse_sdk.serving import (
    PROTOCOL_VERSION,
    ErrorKind,
    ProtocolVersionError,
    ServeReply,
    ServeRequest,
    TensorPayload,
)
from synapse_server.core import FailedPreconditionError
from synapse_server.core.deployments import DeploymentRecord
from synapse_server.core.inference import (
    InferenceFailedError,
    InferenceService,
    InferRequestData,
    ServeKeyring,
    ServeProtocolMismatchError,
)
from synapse_server.grpc._errors import status_for
from synapse_server.telemetry import PrometheusMetrics

pytestmark = pytest.mark.asyncio(loop_scope="session")

RECORD = DeploymentRecord(id=1, tenant="acme", name="app", plugin="p", action="a", model_ids=(3,))


class _Deployments:
    async def resolve(self, tenant: str, application: Any, plugin: Any, action: Any) -> Any:
        return RECORD


class _Backend:
    def __init__(self, reply: ServeReply) -> None:
        self.reply = reply
        self.requests: list[ServeRequest] = []

    async def call(
        self, app_name: str, token: str, request: ServeRequest, timeout_s: float | None
    ) -> ServeReply:
        self.requests.append(request)
        return self.reply


def _service(reply: ServeReply) -> tuple[InferenceService, _Backend]:
    backend = _Backend(reply)
    service = InferenceService(_Deployments(), backend, ServeKeyring(b"s" * 32))  # type: ignore[arg-type]
    return service, backend


async def test_a_refusal_of_the_protocol_is_failed_precondition_naming_both_versions() -> None:
    newer = (PROTOCOL_VERSION[0] + 1, 0)
    refusal = ServeReply.unsupported(
        ProtocolVersionError("the request is protocol 1.0 and this replica speaks 2.0", newer)
    )
    service, _ = _service(refusal)
    with pytest.raises(ServeProtocolMismatchError) as raised:
        await service.infer("acme", InferRequestData(application="app"))
    assert isinstance(raised.value, FailedPreconditionError)
    status = status_for(raised.value)
    assert status.code == grpc.StatusCode.FAILED_PRECONDITION
    assert "'app'" in status.details and "1.0" in status.details and "2.0" in status.details


async def test_unknown_error_kinds_of_a_newer_replica_are_internal() -> None:
    service, _ = _service(ServeReply(error_kind="quota_exceeded", error_message="later kinds"))
    with pytest.raises(InferenceFailedError):
        await service.infer("acme", InferRequestData(application="app", request_id="r-1"))


async def test_the_core_sends_the_call_with_its_headers_and_version() -> None:
    tensor = TensorPayload("x", "int8", (2,), b"\x01\x02")
    service, backend = _service(ServeReply(json={"ok": True}))
    result = await service.infer(
        "acme",
        InferRequestData(
            application="app",
            json=None,
            has_json=True,
            tensors=(tensor,),
            method="put",
            path="/p",
            request_id="r-7",
            headers={"traceparent": "00-1-2-01"},
        ),
    )
    assert result.json == {"ok": True} and result.model_id == "3"
    (sent,) = backend.requests
    assert sent == ServeRequest(
        method="PUT",
        path="/p",
        json=None,
        has_json=True,
        tensors=(tensor,),
        request_id="r-7",
        headers={"traceparent": "00-1-2-01"},
    )
    assert sent.to_wire()["v"] == PROTOCOL_VERSION


def _samples(metrics: PrometheusMetrics, prefix: str) -> dict[tuple[str, str, str], float]:
    """(sample name, application, model) -> value, for the samples named ``prefix``…"""
    text = generate_latest(metrics.registry).decode()
    return {
        (s.name, s.labels["application"], s.labels["model"]): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name.startswith(prefix) and "le" not in s.labels
    }


async def test_batch_sizes_in_replies_are_observed_under_the_call_labels() -> None:
    metrics = PrometheusMetrics(process_metrics=False)
    backend = _Backend(ServeReply(json=1, batch_size=3))
    service = InferenceService(
        _Deployments(),  # type: ignore[arg-type]
        backend,
        ServeKeyring(b"s" * 32),
        metrics=metrics,
    )
    await service.infer("acme", InferRequestData(application="app"))
    # A model the deployment was not deployed with is "other", never the caller's id.
    await service.infer("acme", InferRequestData(application="app", model_id="987654"))
    backend.reply = ServeReply(json=1)  # a deployment that does not batch: not observed
    await service.infer("acme", InferRequestData(application="app"))
    backend.reply = ServeReply(error_kind=ErrorKind.INTERNAL, error_message="boom")
    with pytest.raises(InferenceFailedError):
        await service.infer("acme", InferRequestData(application="app"))
    found = _samples(metrics, "synapse_infer_")
    assert found[("synapse_infer_requests_total", "app", "3")] == 3
    assert found[("synapse_infer_batch_size_count", "app", "3")] == 1
    assert found[("synapse_infer_batch_size_sum", "app", "3")] == 3
    assert found[("synapse_infer_batch_size_count", "app", "other")] == 1
    assert not any("987654" in key for key in found)
