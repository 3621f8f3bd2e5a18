"""``Client.from_env`` and server addresses: the variables the CLI reads, the default port, URLs.

Real clients against the session's real server; the TLS variables are covered with real TLS
servers in test_client_tls.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from synapse_client import (
    DEFAULT_PORT,
    AsyncClient,
    Client,
    ClientConfigError,
    TransportSecurityError,
)
from synapse_client._config import normalize_address


@pytest.mark.parametrize(
    ("given", "target"),
    [
        ("localhost", f"localhost:{DEFAULT_PORT}"),
        ("10.1.2.3", f"10.1.2.3:{DEFAULT_PORT}"),
        (" server.example ", f"server.example:{DEFAULT_PORT}"),
        ("::1", f"[::1]:{DEFAULT_PORT}"),
        ("[::1]", f"[::1]:{DEFAULT_PORT}"),
        ("[::1]:7000", "[::1]:7000"),
        ("localhost:7000", "localhost:7000"),
        ("unix:/tmp/synapse.sock", "unix:/tmp/synapse.sock"),
        ("dns:///localhost:7000", "dns:///localhost:7000"),
    ],
)
def test_an_address_without_a_port_gets_the_default_port(given: str, target: str) -> None:
    assert DEFAULT_PORT == 50051
    assert normalize_address(given) == target
    with Client(given) as client:
        assert client.address == target


@pytest.mark.parametrize(
    ("given", "said"),
    [
        ("http://localhost:50051", "drop the scheme 'http://'"),
        ("https://localhost:50051/", "and connect with TLS"),
        ("grpc://h:1", "drop the scheme 'grpc://'"),
        ("localhost:http", "the port must be a number"),
        ("localhost:0", "the port must be a number"),
        ("localhost:", "the port must be a number"),
        ("[::1]x", "the port must be a number"),
        (":7000", "has no host"),
        ("   ", "non-empty"),
    ],
)
def test_malformed_addresses_are_named(given: str, said: str) -> None:
    with pytest.raises(ClientConfigError, match=said.replace("(", r"\(")):
        Client(given)


def test_a_long_url_is_not_echoed_whole() -> None:
    with pytest.raises(ClientConfigError) as info:
        Client("http://" + "h" * 100_000)
    assert len(str(info.value)) < 400


def test_from_env_reads_the_server_and_token(platform_server: Any) -> None:
    environ = {"SYNAPSE_SERVER": platform_server.address, "SYNAPSE_TOKEN": "ignored-here"}
    with Client.from_env(environ, timeout=20) as client:
        assert client.address == platform_server.address
        assert [p.code for p in client.list_actions("toy")] == ["toy"]
        assert client._config.token == "ignored-here"
        assert client._config.tls is None


async def test_the_async_client_reads_the_same_variables(platform_server: Any) -> None:
    async with AsyncClient.from_env({"SYNAPSE_SERVER": platform_server.address}) as client:
        assert [p.code for p in await client.list_actions("toy")] == ["toy"]


def test_from_env_uses_os_environ(monkeypatch: pytest.MonkeyPatch, platform_server: Any) -> None:
    monkeypatch.setenv("SYNAPSE_SERVER", platform_server.address)
    for name in ("SYNAPSE_TOKEN", "SYNAPSE_TLS", "SYNAPSE_TLS_CA", "SYNAPSE_TLS_CERT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("SYNAPSE_TLS_KEY", raising=False)
    monkeypatch.delenv("SYNAPSE_TLS_SERVER_NAME", raising=False)
    with Client.from_env() as client:
        assert client.list_actions("toy")


def test_from_env_turns_tls_on(tmp_path: Path) -> None:
    with Client.from_env({"SYNAPSE_SERVER": "h:1", "SYNAPSE_TLS": "yes"}) as client:
        assert client._config.tls is not None and client._config.tls.root_certificates is None
    ca = tmp_path / "ca.pem"
    ca.write_bytes(b"-----BEGIN CERTIFICATE-----\n")
    environ = {"SYNAPSE_SERVER": "h", "SYNAPSE_TLS_CA": str(ca), "SYNAPSE_TLS": ""}
    with Client.from_env(environ) as client:
        assert client.address == f"h:{DEFAULT_PORT}"
        assert client._config.tls is not None
        assert client._config.tls.root_certificates == ca.read_bytes()
    with Client.from_env({"SYNAPSE_SERVER": "h:1", "SYNAPSE_TLS": "off"}) as client:
        assert client._config.tls is None


@pytest.mark.parametrize(
    ("environ", "said"),
    [
        ({}, "no server address: set SYNAPSE_SERVER"),
        ({"SYNAPSE_SERVER": ""}, "no server address"),
        ({"SYNAPSE_SERVER": "h:1", "SYNAPSE_TLS": "maybe"}, "SYNAPSE_TLS must be"),
        ({"SYNAPSE_SERVER": "h:1", "SYNAPSE_TLS_CA": "/no/such/ca.pem"}, "/no/such/ca.pem"),
        ({"SYNAPSE_SERVER": "h:1", "SYNAPSE_TLS_CERT": "/no/such/c.pem"}, "/no/such/c.pem"),
        ({"SYNAPSE_SERVER": "http://h:1"}, "drop the scheme"),
    ],
)
def test_from_env_names_what_is_wrong(environ: dict[str, str], said: str) -> None:
    with pytest.raises(ClientConfigError, match=said):
        Client.from_env(environ)


def test_a_tls_client_from_env_to_a_plain_server_is_a_tls_error(platform_server: Any) -> None:
    environ = {"SYNAPSE_SERVER": platform_server.address, "SYNAPSE_TLS": "1"}
    with Client.from_env(environ, timeout=20) as client, pytest.raises(TransportSecurityError):
        client.list_actions()
