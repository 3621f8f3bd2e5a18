"""Calling any RPC of the server with raw request bytes (identity serializers), and a server
with a job whose worker a test can act as."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
from synapse.plugin.v1 import (
    action_service_pb2,
    action_service_pb2_grpc,
    deployment_service_pb2,
    inference_service_pb2,
    model_service_pb2,
    worker_service_pb2,
)
from synapse_server.core._credentials import WorkerCredentialIssuer
from synapse_server.grpc.oip._proto import grpc_predict_v2_pb2

from tests.conftest import RunningServer, make_settings

SECRET = "bad-input-tests-secret-0123456789abcdef"

#: Every client-facing service of the platform (the Open Inference Protocol's included) and
#: the worker service.
SERVICES = {
    "ActionService": action_service_pb2,
    "ModelService": model_service_pb2,
    "DeploymentService": deployment_service_pb2,
    "InferenceService": inference_service_pb2,
    "WorkerService": worker_service_pb2,
    # The Open Inference Protocol v2 on the same port.
    "GRPCInferenceService": grpc_predict_v2_pb2,
}


@dataclass(frozen=True)
class Method:
    """One RPC: its full path, request class and streaming shape."""

    path: str
    request_class: type
    client_streaming: bool
    server_streaming: bool

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1]


def all_methods() -> list[Method]:
    """Every RPC of :data:`SERVICES`, from the generated descriptors."""
    methods = []
    for service_name, module in SERVICES.items():
        service = module.DESCRIPTOR.services_by_name[service_name]
        for method in service.methods:
            request_class = _message_class(method.input_type)
            methods.append(
                Method(
                    f"/{service.full_name}/{method.name}",
                    request_class,
                    method.client_streaming,
                    method.server_streaming,
                )
            )
    return methods


def _message_class(descriptor: object) -> type:
    from google.protobuf import message_factory

    return message_factory.GetMessageClass(descriptor)  # type: ignore[arg-type]


@dataclass(frozen=True)
class Outcome:
    """How a call ended: OK or an error code with its details."""

    code: grpc.StatusCode
    details: str
    responses: int


def call_raw(
    channel: grpc.Channel,
    method: Method,
    payloads: Sequence[bytes],
    *,
    metadata: Sequence[tuple[str, str]] | None = None,
    timeout: float = 60,
) -> Outcome:
    """Send ``payloads`` (one for unary requests) as the request bytes of ``method``."""
    count = 0
    try:
        if method.client_streaming and method.server_streaming:
            call = channel.stream_stream(method.path)
            for _ in call(iter(payloads), metadata=metadata, timeout=timeout):
                count += 1
        elif method.client_streaming:
            channel.stream_unary(method.path)(iter(payloads), metadata=metadata, timeout=timeout)
            count = 1
        elif method.server_streaming:
            call = channel.unary_stream(method.path)
            for _ in call(payloads[0], metadata=metadata, timeout=timeout):
                count += 1
        else:
            channel.unary_unary(method.path)(payloads[0], metadata=metadata, timeout=timeout)
            count = 1
    except grpc.RpcError as exc:
        return Outcome(exc.code(), exc.details() or "", count)
    return Outcome(grpc.StatusCode.OK, "", count)


def raw_channel(address: str, extra: Iterable[tuple[str, int]] = ()) -> grpc.Channel:
    """A channel that sends anything (no client-side size limit) and receives up to 256 MiB."""
    options = [
        ("grpc.max_send_message_length", -1),
        ("grpc.max_receive_message_length", 256 << 20),
        *extra,
    ]
    return grpc.insecure_channel(address, options=options)


class ServerWithPendingJob:
    """A real server whose one worker slot is taken, so a second job stays PENDING with no
    worker: a test holding that job's credential can act as its worker."""

    def __init__(self, data_dir: Path, **overrides: object) -> None:
        self.server = RunningServer(
            make_settings(
                data_dir,
                server_secret=SECRET,
                max_concurrent_jobs=1,
                warm_workers=0,
                **overrides,
            )
        )
        try:
            with self.server.channel() as channel:
                stub = action_service_pb2_grpc.ActionServiceStub(channel)
                # "stubborn" ignores cancellation and sleeps: it holds the slot.
                stub.RunAction(
                    action_service_pb2.RunActionRequest(plugin="toy", action="stubborn"),
                    timeout=30,
                )
                self.job_id = stub.RunAction(
                    action_service_pb2.RunActionRequest(plugin="toy", action="whoami"),
                    timeout=30,
                ).job.id
        except BaseException:
            self.server.stop()
            raise
        # Minted by the server's own issuer, so it is live (credentials are valid only while
        # the server has them on record for a job that has not ended).
        issuer: WorkerCredentialIssuer = self.server.server.jobs._credentials
        self.credential = issuer.mint(self.job_id, "default")
        self.channel = raw_channel(self.server.address)

    @property
    def worker_metadata(self) -> list[tuple[str, str]]:
        """Call metadata with the pending job's worker credential."""
        return [("authorization", f"Bearer {self.credential}")]

    def stop(self) -> None:
        self.channel.close()
        self.server.stop()
