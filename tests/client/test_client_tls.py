"""A connection that fails its TLS set-up is named, typed and never retried.

Real servers in this process (a TLS one, a mutual-TLS one, a plain-text one), real clients with
each wrong setting a user can make: the client raises :class:`TransportSecurityError` saying
what the server most likely wants, and the retry policy is never consulted. The policy here
counts each backoff it is asked for, so "not retried" does not depend on timing; a server that
is down (connection refused) is the control: that one is retried.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from synapse_client import (
    AsyncClient,
    Client,
    RetryPolicy,
    TLSConfig,
    TransportSecurityError,
    TransportSecurityProblem,
    UnavailableError,
)

from tests._pki import Authority, Issued
from tests.conftest import RunningServer, make_settings

pytestmark = pytest.mark.timeout(90)

Problem = TransportSecurityProblem
SYNAPSE = str(Path(sys.executable).with_name("synapse"))


class CountingPolicy(RetryPolicy):
    """A retry policy that records every backoff it is asked for and never waits."""

    def __init__(self, max_attempts: int = 4) -> None:
        super().__init__(max_attempts=max_attempts)
        object.__setattr__(self, "_asked", [])

    @property
    def asked(self) -> list[int]:
        return object.__getattribute__(self, "_asked")  # type: ignore[no-any-return]

    def backoff(self, attempt: int) -> float:
        self.asked.append(attempt)
        return 0.0


class Pki:
    def __init__(self, directory: Path) -> None:
        self.ca = Authority.create(directory / "ca", "server-ca")
        self.other_ca = Authority.create(directory / "other", "other-ca")
        self.server = self.ca.issue("localhost")
        self.client = self.ca.issue("client")
        self.foreign_client = self.other_ca.issue("intruder")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki(tmp_path_factory.mktemp("pki"))


def _server(directory: Path, pki: Pki, mutual: bool) -> RunningServer:
    return RunningServer(
        make_settings(
            directory,
            tls_cert_file=pki.server.cert,
            tls_key_file=pki.server.key,
            tls_client_ca_file=pki.ca.cert if mutual else None,
        )
    )


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Iterator[RunningServer]:
    server = _server(tmp_path_factory.mktemp("tls"), pki, mutual=False)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def mtls_server(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Iterator[RunningServer]:
    server = _server(tmp_path_factory.mktemp("mtls"), pki, mutual=True)
    yield server
    server.stop()


def _tls(pki: Pki, client: Issued | None = None, ca: Path | None = None, **kw: str) -> TLSConfig:
    return TLSConfig.from_files(
        ca_file=ca or pki.ca.cert,
        cert_file=client.cert if client else None,
        key_file=client.key if client else None,
        **kw,
    )


def _failure(address: str, tls: bool | TLSConfig) -> tuple[TransportSecurityError, list[int]]:
    policy = CountingPolicy()
    with Client(address, tls=tls, retry=policy, timeout=20) as client:
        with pytest.raises(TransportSecurityError) as info:
            client.list_actions()
        # A stream ends the same way, without reconnecting.
        with pytest.raises(TransportSecurityError):
            list(client.job("some-job").events())
    return info.value, policy.asked


def test_plain_text_client_to_a_tls_server(tls_server: RunningServer) -> None:
    error, asked = _failure(tls_server.address, tls=False)
    assert error.problem is Problem.TLS_REQUIRED
    assert "requires TLS" in error.message and "tls=True" in error.message
    # Existing `except UnavailableError` code still catches it; it just is not retried.
    assert isinstance(error, UnavailableError) and not error.retryable
    assert asked == []


def test_plain_text_client_to_a_mutual_tls_server(mtls_server: RunningServer) -> None:
    error, asked = _failure(mtls_server.address, tls=False)
    assert error.problem is Problem.TLS_REQUIRED
    assert asked == []


def test_tls_client_without_a_certificate_to_a_mutual_tls_server(
    mtls_server: RunningServer, pki: Pki
) -> None:
    error, asked = _failure(mtls_server.address, _tls(pki))
    assert error.problem is Problem.CLIENT_CERTIFICATE_REQUIRED
    assert "client certificate" in error.message and "certificate_chain" in error.message
    assert asked == []


def test_client_certificate_from_another_ca(mtls_server: RunningServer, pki: Pki) -> None:
    error, asked = _failure(mtls_server.address, _tls(pki, pki.foreign_client))
    assert error.problem is Problem.CLIENT_CERTIFICATE_REJECTED
    assert "rejected this client's certificate" in error.message
    assert asked == []


def test_tls_client_to_a_plain_text_server(platform_server: RunningServer, pki: Pki) -> None:
    error, asked = _failure(platform_server.address, _tls(pki))
    assert error.problem is Problem.SERVER_NOT_TLS
    assert "does not answer in TLS" in error.message
    assert asked == []


def test_server_certificate_from_an_untrusted_ca(tls_server: RunningServer, pki: Pki) -> None:
    error, asked = _failure(tls_server.address, _tls(pki, ca=pki.other_ca.cert))
    assert error.problem is Problem.SERVER_CERTIFICATE_UNTRUSTED
    assert "could not be verified" in error.message and "root_certificates" in error.message
    assert "issuer" in error.explanation  # OpenSSL's reason: unable to get local issuer ...
    assert asked == []


def test_server_certificate_for_another_name(tls_server: RunningServer, pki: Pki) -> None:
    error, asked = _failure(tls_server.address, _tls(pki, server_name_override="elsewhere.example"))
    assert error.problem is Problem.SERVER_NAME_MISMATCH
    assert "server_name_override" in error.message
    assert asked == []


def test_the_right_settings_connect(
    tls_server: RunningServer, mtls_server: RunningServer, pki: Pki
) -> None:
    with Client(tls_server.address, tls=_tls(pki)) as client:
        assert client.list_actions()
    with Client(mtls_server.address, tls=_tls(pki, pki.client)) as client:
        assert client.list_actions()


def test_a_server_that_is_down_is_still_retried() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
        address = f"127.0.0.1:{sock.getsockname()[1]}"
        policy = CountingPolicy(max_attempts=3)
        with (
            Client(address, retry=policy, timeout=20) as client,
            pytest.raises(UnavailableError) as info,
        ):
            client.list_actions()
    assert not isinstance(info.value, TransportSecurityError)
    assert policy.asked == [1, 2]


async def test_the_async_client_names_it_the_same_way(tls_server: RunningServer, pki: Pki) -> None:
    policy = CountingPolicy()
    async with AsyncClient(tls_server.address, retry=policy, timeout=20) as client:
        with pytest.raises(TransportSecurityError) as info:
            await client.list_actions()
    assert info.value.problem is Problem.TLS_REQUIRED
    untrusted = _tls(pki, ca=pki.other_ca.cert)
    async with AsyncClient(tls_server.address, tls=untrusted, retry=policy) as client:
        with pytest.raises(TransportSecurityError) as info:
            await client.list_actions()
    assert info.value.problem is Problem.SERVER_CERTIFICATE_UNTRUSTED
    assert policy.asked == []


# The CLI ---------------------------------------------------------------------------------------


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [SYNAPSE, "jobs", "list", "--timeout", "20", *args],
        capture_output=True,
        text=True,
        timeout=90,
        env={k: v for k, v in os.environ.items() if not k.startswith("SYNAPSE_")},
    )


def test_cli_says_which_tls_option_is_missing(
    tls_server: RunningServer, mtls_server: RunningServer, platform_server: RunningServer, pki: Pki
) -> None:
    ca, other_ca = str(pki.ca.cert), str(pki.other_ca.cert)
    cases = [
        (tls_server.address, (), "requires TLS", "--tls-ca FILE"),
        (mtls_server.address, ("--tls-ca", ca), "client certificate", "--tls-cert FILE"),
        (platform_server.address, ("--tls-ca", ca), "does not answer in TLS", "leave out --tls"),
        (tls_server.address, ("--tls-ca", other_ca), "could not be verified", "--tls-ca FILE"),
    ]
    for address, args, what, advice in cases:
        done = _cli("--server", address, *args)
        assert done.returncode == 2, done.stderr
        assert "Traceback" not in done.stderr, done.stderr
        line = done.stderr.strip().splitlines()[-1]
        assert line.startswith(f"error: cannot connect to the server at {address}: "), line
        assert what in line and advice in line, line


def _synapse(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("SYNAPSE_")}
    return subprocess.run(
        [SYNAPSE, *args], capture_output=True, text=True, timeout=90, env={**base, **(env or {})}
    )


def test_every_remote_command_names_a_tls_mismatch(tls_server: RunningServer) -> None:
    address = tls_server.address
    commands = [
        ("plugin", "run", "quick", "--plugin", "toy", "--params", '{"count": 1, "label": "x"}'),
        ("plugin", "list"),
        ("plugin", "describe", "toy"),
        ("jobs", "get", "some-job"),
        ("model", "list"),
        ("deployments", "list"),
    ]
    for command in commands:
        done = _synapse(*command, "--server", address, "--timeout", "20")
        assert done.returncode == 2, (command, done.stderr)
        lines = done.stderr.strip().splitlines()
        assert "Traceback" not in done.stderr, done.stderr
        assert lines[-1].startswith(f"error: cannot connect to the server at {address}: ")
        assert "requires TLS" in lines[-1] and "--tls-ca FILE" in lines[-1], lines[-1]


def test_the_cli_reads_the_tls_variables(
    tls_server: RunningServer, mtls_server: RunningServer, pki: Pki
) -> None:
    done = _synapse(
        "plugin", "list",
        env={"SYNAPSE_SERVER": tls_server.address, "SYNAPSE_TLS_CA": str(pki.ca.cert)},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "toy" in done.stdout
    mutual = {
        "SYNAPSE_SERVER": mtls_server.address,
        "SYNAPSE_TLS_CA": str(pki.ca.cert),
        "SYNAPSE_TLS_CERT": str(pki.client.cert),
        "SYNAPSE_TLS_KEY": str(pki.client.key),
    }
    done = _synapse("jobs", "list", env=mutual)
    assert done.returncode == 0, done.stderr
    # A flag overrides its variable: the other CA cannot verify the server.
    done = _synapse("jobs", "list", "--tls-ca", str(pki.other_ca.cert), env=mutual)
    assert done.returncode == 2 and "could not be verified" in done.stderr
    # And Client.from_env reads the same variables.
    with Client.from_env(mutual, timeout=20) as client:
        assert client.list_actions()
