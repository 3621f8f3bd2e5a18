"""Pins the public API of synapse_client: changing it must be a deliberate edit here."""

from __future__ import annotations

from pathlib import Path

import synapse_client

from tests._imports import imported_modules, offending

EXPECTED = {
    "DEFAULT_PORT",
    "normalize_address",
    "ENV_SERVER",
    "ENV_TLS",
    "ENV_TLS_CA",
    "ENV_TLS_CERT",
    "ENV_TLS_KEY",
    "ENV_TLS_SERVER_NAME",
    "ENV_TOKEN",
    "STATUS_TO_ERROR",
    "AbortedError",
    "ActionInfo",
    "ActionKind",
    "AlreadyExistsError",
    "AsyncClient",
    "AsyncJobHandle",
    "ChannelSecurity",
    "Client",
    "ClientConfigError",
    "DataLossError",
    "DatasetChecksumError",
    "DatasetColumn",
    "DatasetInfo",
    "DeadlineExceededError",
    "ErrorOrigin",
    "EventPayload",
    "FailedPreconditionError",
    "FieldViolation",
    "InternalError",
    "InvalidArgumentError",
    "DeploymentInfo",
    "InferResult",
    "Job",
    "JobCancelledError",
    "JobErrorInfo",
    "JobEvent",
    "JobFailedError",
    "JobHandle",
    "JobState",
    "JobTimeoutError",
    "LogEvent",
    "LogLevel",
    "MetricEvent",
    "ModelChecksumError",
    "ModelInfo",
    "NotFoundError",
    "OutOfRangeError",
    "OutputNotFoundError",
    "PermissionDeniedError",
    "PluginInfo",
    "ProgressEvent",
    "ProtocolError",
    "RequestCancelledError",
    "ResourceExhaustedError",
    "RetryPolicy",
    "RpcFailedError",
    "RunMode",
    "StateChangedEvent",
    "StepFinishedEvent",
    "StepStartedEvent",
    "StepStatus",
    "SynapseClientError",
    "TLSConfig",
    "TerminalEvent",
    "TransportSecurityError",
    "TransportSecurityProblem",
    "UnauthenticatedError",
    "UnavailableError",
    "UnimplementedError",
    "UnknownError",
    "from_grpc_error",
}


def test_exports_are_pinned() -> None:
    assert set(synapse_client.__all__) == EXPECTED
    assert len(synapse_client.__all__) == len(EXPECTED)


def test_every_export_resolves() -> None:
    for name in synapse_client.__all__:
        assert getattr(synapse_client, name) is not None, name


def test_client_never_imports_sdk_or_server() -> None:
    import subprocess
    import sys

    code = (
        "import sys, synapse_client; "
        "bad = [m for m in sys.modules if m.split('.')[0] in ('synapse_sdk', 'synapse_server')]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def test_no_client_module_imports_sdk_or_server() -> None:
    # Also the imports inside functions, which importing the package does not run.
    imports = imported_modules(Path(synapse_client.__file__).parent)
    assert len(imports) > 5, "no client modules found"
    assert offending(imports, packages=("synapse_sdk", "synapse_server"), private_only=False) == {}
