"""Auth (tokens → tenants, worker credentials), TLS and mutual TLS, health and reflection."""

from __future__ import annotations

import datetime
import ipaddress
import time
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from synapse.plugin.v1 import action_service_pb2 as pb
from synapse.plugin.v1 import action_service_pb2_grpc, worker_service_pb2, worker_service_pb2_grpc
from synapse_server.core._credentials import WorkerCredentialIssuer
from synapse_server.settings import ServerSettings

pytestmark = pytest.mark.timeout(60)


def _md(token: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {token}")]


def test_tokens_and_tenant_isolation(server_factory: Any) -> None:
    server = server_factory(tokens="tok-a=alice,tok-b=bob")
    with server.channel() as channel:
        stub = action_service_pb2_grpc.ActionServiceStub(channel)
        for metadata in (None, _md("wrong"), [("authorization", "Basic tok-a")]):
            with pytest.raises(grpc.RpcError) as info:
                stub.ListActions(pb.ListActionsRequest(), metadata=metadata, timeout=5)
            assert info.value.code() is grpc.StatusCode.UNAUTHENTICATED
            assert "tok-a" not in (info.value.details() or "")
        request = pb.RunActionRequest(plugin="toy", action="quick", request_id="same")
        request.params.update({"count": 0, "label": "x"})
        job = stub.RunAction(request, metadata=_md("tok-a"), timeout=10).job
        # The same request id is independent per tenant.
        bob_job = stub.RunAction(request, metadata=_md("tok-b"), timeout=10).job
        assert bob_job.id != job.id
        for call in (
            lambda: stub.GetJob(pb.GetJobRequest(job_id=job.id), metadata=_md("tok-b")),
            lambda: stub.CancelJob(pb.CancelJobRequest(job_id=job.id), metadata=_md("tok-b")),
            lambda: list(
                stub.StreamProgress(
                    pb.StreamProgressRequest(job_id=job.id), metadata=_md("tok-b"), timeout=5
                )
            ),
        ):
            with pytest.raises(grpc.RpcError) as info:
                call()
            assert info.value.code() is grpc.StatusCode.NOT_FOUND
        bobs = stub.ListJobs(pb.ListJobsRequest(), metadata=_md("tok-b"), timeout=5).jobs
        assert [j.id for j in bobs] == [bob_job.id]
        assert stub.GetJob(pb.GetJobRequest(job_id=job.id), metadata=_md("tok-a")).job.id == job.id
        # Health needs no token.
        health = health_pb2_grpc.HealthStub(channel)
        assert health.Check(health_pb2.HealthCheckRequest(), timeout=5).status == 1


def test_worker_credentials_are_scoped(server_factory: Any, tmp_path: Path) -> None:
    server = server_factory(tokens="tok-a=alice")
    secret = (server.settings.data_dir / "server.secret").read_text().strip().encode()
    issuer = WorkerCredentialIssuer(secret)
    token_file = tmp_path / "credential"
    with server.channel() as channel:
        workers = worker_service_pb2_grpc.WorkerServiceStub(channel)
        actions = action_service_pb2_grpc.ActionServiceStub(channel)
        request = worker_service_pb2.GetAssignmentRequest(job_id="job-1")
        # A client token cannot act as a worker; a forged credential is rejected.
        with pytest.raises(grpc.RpcError) as info:
            workers.GetAssignment(request, metadata=_md("tok-a"), timeout=5)
        assert info.value.code() is grpc.StatusCode.UNAUTHENTICATED
        forged = WorkerCredentialIssuer(b"another secret of enough length").mint("job-1", "alice")
        with pytest.raises(grpc.RpcError) as info:
            workers.GetAssignment(request, metadata=_md(forged), timeout=5)
        assert info.value.code() is grpc.StatusCode.UNAUTHENTICATED
        # Well signed but not issued by this server for a running job: refused as well.
        with pytest.raises(grpc.RpcError) as info:
            workers.GetAssignment(request, metadata=_md(issuer.mint("job-1", "alice")), timeout=5)
        assert info.value.code() is grpc.StatusCode.UNAUTHENTICATED
        # The live credential of another job is PERMISSION_DENIED, and cannot call clients' RPCs.
        run = pb.RunActionRequest(plugin="toy", action="hold_credential")
        run.params.update({"path": str(token_file)})
        job = actions.RunAction(run, metadata=_md("tok-a"), timeout=10).job
        deadline = time.monotonic() + 60
        while not token_file.exists():
            assert time.monotonic() < deadline, "the job never handed out its credential"
            time.sleep(0.05)
        other = token_file.read_text()
        with pytest.raises(grpc.RpcError) as info:
            workers.GetAssignment(request, metadata=_md(other), timeout=5)
        assert info.value.code() is grpc.StatusCode.PERMISSION_DENIED
        with pytest.raises(grpc.RpcError) as info:
            actions.ListActions(pb.ListActionsRequest(), metadata=_md(other), timeout=5)
        assert info.value.code() is grpc.StatusCode.PERMISSION_DENIED
        actions.CancelJob(pb.CancelJobRequest(job_id=job.id), metadata=_md("tok-a"), timeout=10)


def test_public_bind_needs_tokens(tmp_path: Path) -> None:
    settings = ServerSettings(listen_address="0.0.0.0:0", data_dir=tmp_path)
    with pytest.raises(ValueError, match="without auth tokens"):
        settings.check()
    ServerSettings(listen_address="0.0.0.0:0", data_dir=tmp_path, tokens="t=x").check()
    ServerSettings(listen_address="0.0.0.0:0", data_dir=tmp_path, allow_public_bind=True).check()


def _cert(
    name: str, issuer_key: Any = None, issuer_name: Any = None, ca: bool = False
) -> tuple[Any, bytes, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name or subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
    cert = builder.sign(issuer_key or key, hashes.SHA256())
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return key, cert.public_bytes(serialization.Encoding.PEM), key_pem


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, Path]:
    ca_key, ca_pem, _ = _cert("test-ca", ca=True)
    ca_name = x509.load_pem_x509_certificate(ca_pem).subject
    _, server_pem, server_key = _cert("localhost", ca_key, ca_name)
    _, client_pem, client_key = _cert("client", ca_key, ca_name)
    files = {
        "ca": ca_pem, "server_cert": server_pem, "server_key": server_key,
        "client_cert": client_pem, "client_key": client_key,
    }  # fmt: skip
    paths = {}
    for name, data in files.items():
        paths[name] = tmp_path / f"{name}.pem"
        paths[name].write_bytes(data)
    return paths


def test_tls_and_mutual_tls(server_factory: Any, pki: dict[str, Path]) -> None:
    server = server_factory(
        tls_cert_file=pki["server_cert"],
        tls_key_file=pki["server_key"],
        tls_client_ca_file=pki["ca"],
    )
    ca = pki["ca"].read_bytes()
    good = grpc.ssl_channel_credentials(
        root_certificates=ca,
        private_key=pki["client_key"].read_bytes(),
        certificate_chain=pki["client_cert"].read_bytes(),
    )
    with grpc.secure_channel(server.address, good) as channel:
        stub = action_service_pb2_grpc.ActionServiceStub(channel)
        assert stub.ListActions(pb.ListActionsRequest(), timeout=10).plugins
        # Jobs still run: local workers use the private socket, not the TLS port.
        request = pb.RunActionRequest(plugin="toy", action="quick")
        request.params.update({"count": 1, "label": "tls"})
        job = stub.RunAction(request, timeout=10).job
        last = list(stub.StreamProgress(pb.StreamProgressRequest(job_id=job.id), timeout=30))
        assert last[-1].event.terminal.state == 3  # SUCCEEDED
    without_client_cert = grpc.ssl_channel_credentials(root_certificates=ca)
    with grpc.secure_channel(server.address, without_client_cert) as channel:
        stub = action_service_pb2_grpc.ActionServiceStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            stub.ListActions(pb.ListActionsRequest(), timeout=5)
        assert info.value.code() is grpc.StatusCode.UNAVAILABLE
    with server.channel() as plaintext:
        stub = action_service_pb2_grpc.ActionServiceStub(plaintext)
        with pytest.raises(grpc.RpcError):
            stub.ListActions(pb.ListActionsRequest(), timeout=5)


def test_health_and_reflection(platform_channel: grpc.Channel) -> None:
    health = health_pb2_grpc.HealthStub(platform_channel)
    for service in ("", "synapse.plugin.v1.ActionService"):
        status = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status
        assert status == health_pb2.HealthCheckResponse.SERVING
    reflection = reflection_pb2_grpc.ServerReflectionStub(platform_channel)
    responses = reflection.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5
    )
    names = {s.name for r in responses for s in r.list_services_response.service}
    assert {"synapse.plugin.v1.ActionService", "grpc.health.v1.Health"} <= names
