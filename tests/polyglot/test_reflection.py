"""Server reflection answers a generic client: ``buf curl`` with no local schema.

The server is a real ``synapse serve`` process, configured like a deployment would be: its own
process group, 127.0.0.1 port 0, a temporary data dir, the polyglot test plugin and one bearer
token; the bound address comes from the ``synapse server listening on <addr>`` line it prints.
``SYNAPSE_SERVE_CMD`` overrides the command (default: the venv's ``synapse serve``).

Every ``buf curl`` runs in an empty temporary directory, so no ``buf.yaml`` or proto file of
this repository can supply the schema: whatever it knows comes from the server's reflection.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import secrets
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

PLUGINS_DIR = Path(__file__).parent / "plugins"
_LISTENING = re.compile(r"synapse server listening on (?:[a-z]+://)?(\S+)")
_START_TIMEOUT_S = 60.0
_STOP_TIMEOUT_S = 20.0


@dataclass(frozen=True)
class ServedProcess:
    """A running server process: where it listens and a token it accepts."""

    address: str
    token: str
    log_path: Path

    def log(self) -> str:
        """Everything the server printed so far."""
        return self.log_path.read_text(encoding="utf-8", errors="replace")


def _read(path: Path) -> str:
    return path.read_text(encoding="utf-8", errors="replace")


def _serve_command() -> list[str]:
    override = os.environ.get("SYNAPSE_SERVE_CMD")
    if override:
        return shlex.split(override)
    return [str(Path(sys.executable).parent / "synapse"), "serve"]


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(_STOP_TIMEOUT_S)
    # Sweep the process group: worker processes the server may have left behind.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(5)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServedProcess]:
    """A ``synapse serve`` subprocess for this module, stopped with SIGTERM afterwards."""
    work = tmp_path_factory.mktemp("polyglot-server")
    token = secrets.token_urlsafe(24)
    env = {
        **os.environ,
        "SYNAPSE_LISTEN_ADDRESS": "127.0.0.1:0",
        "SYNAPSE_DATA_DIR": str(work / "data"),
        "SYNAPSE_PLUGIN_DIRS": str(PLUGINS_DIR),
        "SYNAPSE_TOKENS": f"{token}=polyglot",
        "PYTHONUNBUFFERED": "1",
        "RAY_USAGE_STATS_ENABLED": "0",
    }
    log_path = work / "server.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            _serve_command(),
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + _START_TIMEOUT_S
        address = None
        while address is None:
            match = _LISTENING.search(log_path.read_text(encoding="utf-8", errors="replace"))
            if match:
                address = match.group(1)
            elif process.poll() is not None:
                pytest.fail(
                    f"synapse serve exited with {process.returncode}:\n{log_path.read_text()}"
                )
            elif time.monotonic() > deadline:
                pytest.fail(f"synapse serve printed no address in {_START_TIMEOUT_S}s")
            else:
                time.sleep(0.1)
        yield ServedProcess(address=address, token=token, log_path=log_path)
    finally:
        _stop(process)


BUF = Path(sys.executable).parent / "buf"
_CURL_TIMEOUT_S = 60
# buf curl exits with the gRPC status code shifted left by three bits when the RPC fails.
_UNAUTHENTICATED_EXIT = 16 << 3


def buf_curl(
    cwd: Path, *args: str, check: bool = True, timeout: float = _CURL_TIMEOUT_S
) -> subprocess.CompletedProcess[str]:
    """Run ``buf curl`` over gRPC (HTTP/2 without TLS) in ``cwd``; raise on failure if ``check``."""
    result = subprocess.run(
        [str(BUF), "curl", "--protocol", "grpc", "--http2-prior-knowledge", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if check and result.returncode != 0:
        pytest.fail(
            f"buf curl {' '.join(args)} exited {result.returncode}:\n{result.stderr}{result.stdout}"
        )
    return result


def json_documents(text: str) -> list[Any]:
    """The JSON values printed one after another (buf curl's output for a stream)."""
    decoder = json.JSONDecoder()
    values: list[Any] = []
    index = 0
    while True:
        while index < len(text) and text[index].isspace():
            index += 1
        if index >= len(text):
            return values
        value, index = decoder.raw_decode(text, index)
        values.append(value)


@pytest.fixture
def empty_dir(tmp_path: Path) -> Path:
    """A working directory with no buf module or protos in it or above it in the repo."""
    directory = tmp_path / "no-schema"
    directory.mkdir()
    return directory


def test_buf_is_available() -> None:
    """The buf CLI comes with the dev install (buf-bin); without it these tests prove nothing."""
    assert BUF.is_file(), f"{BUF} is missing: run scripts/setup"


def test_lists_services_through_reflection(served: ServedProcess, empty_dir: Path) -> None:
    """--list-services names the public services, health and reflection."""
    out = buf_curl(empty_dir, "--list-services", f"http://{served.address}").stdout
    services = set(out.split())
    assert {
        "synapse.plugin.v1.ActionService",
        "synapse.plugin.v1.ModelService",
        "synapse.plugin.v1.DeploymentService",
        "synapse.plugin.v1.InferenceService",
        "grpc.health.v1.Health",
    } <= services, out
    assert any(s.startswith("grpc.reflection.") for s in services), out


def test_lists_action_service_methods(served: ServedProcess, empty_dir: Path) -> None:
    """--list-methods resolves ActionService's RPCs from the server's descriptors."""
    out = buf_curl(empty_dir, "--list-methods", f"http://{served.address}").stdout
    methods = set(out.split())
    for rpc in ("ListActions", "RunAction", "StreamProgress", "GetJob", "CancelJob"):
        assert f"synapse.plugin.v1.ActionService/{rpc}" in methods, out


def test_list_actions_with_token(served: ServedProcess, empty_dir: Path) -> None:
    """ListActions, encoded and decoded from reflected descriptors, returns the test plugin."""
    out = buf_curl(
        empty_dir,
        "--header",
        f"authorization: Bearer {served.token}",
        "--data",
        "{}",
        f"http://{served.address}/synapse.plugin.v1.ActionService/ListActions",
    ).stdout
    reply = json.loads(out)
    plugins = {plugin["code"]: plugin for plugin in reply["plugins"]}
    assert "polyglot-toy" in plugins, out
    actions = {action["name"]: action for action in plugins["polyglot-toy"]["actions"]}
    assert set(actions) == {"count", "wait"}
    assert actions["count"]["kind"] == "ACTION_KIND_JOB"
    schema = json.loads(actions["count"]["paramsSchemaJson"])
    assert schema["properties"]["n"]["type"] == "integer"


def test_list_actions_without_token_is_unauthenticated(
    served: ServedProcess, empty_dir: Path
) -> None:
    """Reflection needs no token, but the RPC itself does: buf curl reports UNAUTHENTICATED."""
    result = buf_curl(
        empty_dir,
        "--data",
        "{}",
        f"http://{served.address}/synapse.plugin.v1.ActionService/ListActions",
        check=False,
    )
    assert result.returncode == _UNAUTHENTICATED_EXIT, result.stderr
    assert "unauthenticated" in result.stderr.lower(), result.stderr


def test_health_check(served: ServedProcess, empty_dir: Path) -> None:
    """The standard health service answers SERVING for the server and ActionService."""
    for service in ("", "synapse.plugin.v1.ActionService"):
        out = buf_curl(
            empty_dir,
            "--data",
            json.dumps({"service": service}),
            f"http://{served.address}/grpc.health.v1.Health/Check",
        ).stdout
        assert json.loads(out) == {"status": "SERVING"}, (service, out)


def test_run_action_and_stream_progress(served: ServedProcess, empty_dir: Path) -> None:
    """A job started and followed with buf curl alone: gap-free seqs, terminal event last."""
    auth = ("--header", f"authorization: Bearer {served.token}")
    run = buf_curl(
        empty_dir,
        *auth,
        "--data",
        json.dumps({"plugin": "polyglot-toy", "action": "count", "params": {"n": 3}}),
        f"http://{served.address}/synapse.plugin.v1.ActionService/RunAction",
    ).stdout
    job_id = json.loads(run)["job"]["id"]
    stream = buf_curl(
        empty_dir,
        *auth,
        "--data",
        json.dumps({"jobId": job_id}),
        f"http://{served.address}/synapse.plugin.v1.ActionService/StreamProgress",
    ).stdout
    events = [message["event"] for message in json_documents(stream) if "event" in message]
    # uint64 fields are JSON strings in the canonical protobuf JSON mapping.
    assert [int(e["seq"]) for e in events] == list(range(1, len(events) + 1)), stream
    assert "terminal" in events[-1], stream
    terminal = events[-1]["terminal"]
    assert terminal["state"] == "JOB_STATE_SUCCEEDED", stream
    # bytes are base64 in protobuf JSON.
    assert json.loads(base64.b64decode(terminal["resultJson"])) == {
        "label": "count",
        "n": 3,
        "sum": 6,
    }
