"""SIGHUP makes a running `synapse serve` import its plugins again for later jobs."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from synapse.plugin.v1 import action_service_pb2 as pb
from synapse.plugin.v1 import action_service_pb2_grpc, job_pb2

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

CONFIG = """\
code: hot
name: Hot plugin
version: "1.0.0"
category: custom
actions:
  greet:
    entrypoint: actions:GreetAction
  wait:
    entrypoint: actions:WaitAction
"""

WAIT = """

class WaitParams(BaseModel):
    marker: str


class WaitAction(BaseAction[WaitParams]):
    action_name = "wait"

    def execute(self):
        import os, time

        while not os.path.exists(self.params.marker):
            time.sleep(0.05)
        return {"version": VERSION}
"""

V1 = (
    """\
from pydantic import BaseModel
from synapse_sdk.plugins import BaseAction

VERSION = 1


class Params(BaseModel):
    name: str


class GreetAction(BaseAction[Params]):
    action_name = "greet"

    def execute(self):
        return {"greeting": f"hello {self.params.name}", "version": VERSION}
"""
    + WAIT
)

# Another params model and another result, so both the server's catalog (validation and
# schema) and the worker's code are seen to change.
V2 = (
    """\
from pydantic import BaseModel
from synapse_sdk.plugins import BaseAction

VERSION = 2


class Params(BaseModel):
    name: str
    excited: bool = False


class GreetAction(BaseAction[Params]):
    action_name = "greet"

    def execute(self):
        mark = "!" if self.params.excited else "."
        return {"greeting": f"hello again {self.params.name}{mark}", "version": VERSION}
"""
    + WAIT
)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Any]:
    plugin = tmp_path / "plugins" / "hot"
    plugin.mkdir(parents=True)
    (plugin / "config.yaml").write_text(CONFIG)
    (plugin / "actions.py").write_text(V1)
    log = tmp_path / "server.log"
    with log.open("w") as err:
        process = subprocess.Popen(
            [
                sys.executable, "-m", "synapse_server", "--listen", "127.0.0.1:0",
                "--data-dir", str(tmp_path / "data"), "--plugin-dir", str(plugin.parent),
                "--shutdown-grace", "3", "--log-level", "INFO",
            ],
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
        )  # fmt: skip
    assert process.stdout is not None
    line = process.stdout.readline()
    if not line.startswith("synapse server listening on "):
        process.kill()
        raise AssertionError(f"server did not start: {log.read_text()}")
    channel = grpc.insecure_channel(line.rsplit(" ", 1)[1].strip())
    try:
        yield process, action_service_pb2_grpc.ActionServiceStub(channel), plugin, log
    finally:
        channel.close()
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


def _submit(stub: Any, action: str, params: dict[str, Any]) -> str:
    request = pb.RunActionRequest(
        plugin="hot", action=action, params_json=json.dumps(params).encode()
    )
    return str(stub.RunAction(request, timeout=10).job.id)


def _greet(stub: Any, params: dict[str, Any]) -> Any:
    return _result(stub, _submit(stub, "greet", params))


def _result(stub: Any, job_id: str) -> Any:
    for message in stub.StreamProgress(pb.StreamProgressRequest(job_id=job_id), timeout=60):
        if message.HasField("event") and message.event.HasField("terminal"):
            assert message.event.terminal.state == job_pb2.JOB_STATE_SUCCEEDED, message
            break
    chunks = stub.GetJobResult(pb.GetJobResultRequest(job_id=job_id), timeout=10)
    return json.loads(b"".join(chunk.data for chunk in chunks))


def _schema(stub: Any) -> dict[str, Any]:
    (plugin,) = stub.ListActions(pb.ListActionsRequest(plugin="hot"), timeout=10).plugins
    greet = next(action for action in plugin.actions if action.name == "greet")
    return json.loads(greet.params_schema_json)  # type: ignore[no-any-return]


def _eventually(check: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def test_sighup_reloads_edited_plugins_and_keeps_them_when_an_edit_is_broken(
    server: Any,
) -> None:
    process, stub, plugin, log = server
    assert _greet(stub, {"name": "ada"}) == {"greeting": "hello ada", "version": 1}
    # Version 1's params model ignores a field it does not have.
    assert _greet(stub, {"name": "ada", "excited": "very"})["version"] == 1

    # A job running during the reload finishes on the code it started with.
    marker = plugin.parent.parent / "go"
    waiting = _submit(stub, "wait", {"marker": str(marker)})
    _eventually(
        lambda: (
            stub.GetJob(pb.GetJobRequest(job_id=waiting), timeout=10).job.state
            == job_pb2.JOB_STATE_RUNNING
        ),
        "the waiting job to run",
    )

    (plugin / "actions.py").write_text(V2)
    process.send_signal(signal.SIGHUP)
    # The reload is done once logged: the catalog's new schema shows before the old fork
    # server is retired, and a job submitted in between would still run version 1.
    _eventually(lambda: "plugins reloaded" in log.read_text(), "the reload to finish")
    assert "excited" in _schema(stub)["properties"]
    assert _greet(stub, {"name": "ada", "excited": True}) == {
        "greeting": "hello again ada!",
        "version": 2,
    }
    marker.touch()
    assert _result(stub, waiting) == {"version": 1}
    # The server validates with version 2's model now.
    with pytest.raises(grpc.RpcError) as info:
        _greet(stub, {"name": "ada", "excited": "very"})
    assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT

    (plugin / "actions.py").write_text("this is not python (\n")
    process.send_signal(signal.SIGHUP)
    _eventually(lambda: "plugin reload failed" in log.read_text(), "the failed reload's log")
    # The broken edit changed nothing: the catalog and the fork server keep version 2.
    assert "excited" in _schema(stub)["properties"]
    assert _greet(stub, {"name": "bob"}) == {"greeting": "hello again bob.", "version": 2}
