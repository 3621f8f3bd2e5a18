"""A running `synapse serve` switches plugin code only when it loads its plugins again.

SIGHUP (or a restart) loads them; an edit on disk alone changes nothing, not even for a fork
server started again after a crash, a fresh worker process per job, or a job that waited in
the queue across a reload: each job runs the code snapshot its params were validated against,
and records its digest.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from synapse.plugin.v1 import action_service_pb2 as pb
from synapse.plugin.v1 import action_service_pb2_grpc, job_pb2

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

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
  where:
    entrypoint: actions:WhereAction
"""

COMMON = """

class WaitParams(BaseModel):
    marker: str


class WaitAction(BaseAction[WaitParams]):
    action_name = "wait"

    def execute(self):
        import os, time

        while not os.path.exists(self.params.marker):
            time.sleep(0.05)
        return {"version": VERSION}


class WhereParams(BaseModel):
    pass


class WhereAction(BaseAction[WhereParams]):
    action_name = "where"

    def execute(self):
        return {"file": __file__, "version": VERSION}
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
    + COMMON
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
    + COMMON
)

BROKEN = "this is not python (\n"


@dataclass
class Served:
    """A `synapse serve` process with the `hot` plugin, and a stub to it."""

    process: subprocess.Popen[str]
    stub: action_service_pb2_grpc.ActionServiceStub
    plugin: Path
    log: Path
    data: Path


@contextlib.contextmanager
def _serve(base: Path, *flags: str, **env: str) -> Iterator[Served]:
    """Serve ``base/plugins/hot`` (written with V1 unless it exists) from ``base/data``."""
    plugin = base / "plugins" / "hot"
    if not plugin.exists():
        plugin.mkdir(parents=True)
        (plugin / "config.yaml").write_text(CONFIG)
        (plugin / "actions.py").write_text(V1)
    data = base / "data"
    log = base / f"server-{time.monotonic_ns()}.log"
    with log.open("w") as err:
        process = subprocess.Popen(
            [
                sys.executable, "-m", "synapse_server", "--listen", "127.0.0.1:0",
                "--data-dir", str(data), "--plugin-dir", str(plugin.parent),
                "--shutdown-grace", "3", "--log-level", "INFO", *flags,
            ],
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            env={**os.environ, **env},
        )  # fmt: skip
    assert process.stdout is not None
    line = process.stdout.readline()
    if not line.startswith("synapse server listening on "):
        process.kill()
        process.wait(10)
        raise AssertionError(f"server did not start: {log.read_text()}")
    channel = grpc.insecure_channel(line.rsplit(" ", 1)[1].strip())
    try:
        yield Served(process, action_service_pb2_grpc.ActionServiceStub(channel), plugin, log, data)
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


def _job(stub: Any, job_id: str) -> job_pb2.Job:
    return stub.GetJob(pb.GetJobRequest(job_id=job_id), timeout=10).job


def _where(stub: Any) -> tuple[dict[str, Any], job_pb2.Job]:
    """Run `where`: its result (the file its code ran from, the version) and its job."""
    job_id = _submit(stub, "where", {})
    return _result(stub, job_id), _job(stub, job_id)


def _ran_from(served: Served, result: dict[str, Any], job: job_pb2.Job) -> str:
    """The digest of the snapshot the job's code was imported from; checks the job names it."""
    snapshot = Path(result["file"]).parent
    assert snapshot.parent == served.data / "plugins", result["file"]
    assert job.plugin_sha256 == snapshot.name, (job.plugin_sha256, result["file"])
    return snapshot.name


def _fork_servers(server_pid: int) -> list[int]:
    """Pids of the server's live fork server processes."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        state, ppid = stat.rsplit(")", 1)[1].split()[:2]
        if int(ppid) == server_pid and state != "Z" and b"--fork-server" in cmdline:
            found.append(int(entry.name))
    return found


def _reloaded(served: Served, times: int) -> Callable[[], bool]:
    return lambda: served.log.read_text().count("plugins reloaded") >= times


def test_sighup_reloads_edited_plugins_and_keeps_them_when_an_edit_is_broken(
    tmp_path: Path,
) -> None:
    with _serve(tmp_path) as served:
        process, stub, plugin, log = served.process, served.stub, served.plugin, served.log
        assert _greet(stub, {"name": "ada"}) == {"greeting": "hello ada", "version": 1}
        # Version 1's params model ignores a field it does not have.
        assert _greet(stub, {"name": "ada", "excited": "very"})["version"] == 1
        where, job = _where(stub)
        first = _ran_from(served, where, job)
        assert where["version"] == 1

        # A job running during the reload finishes on the code it started with.
        marker = tmp_path / "go"
        waiting = _submit(stub, "wait", {"marker": str(marker)})
        _eventually(
            lambda: _job(stub, waiting).state == job_pb2.JOB_STATE_RUNNING,
            "the waiting job to run",
        )

        (plugin / "actions.py").write_text(V2)
        process.send_signal(signal.SIGHUP)
        _eventually(_reloaded(served, 1), "the reload to finish")
        assert "excited" in _schema(stub)["properties"]
        assert _greet(stub, {"name": "ada", "excited": True}) == {
            "greeting": "hello again ada!",
            "version": 2,
        }
        where, job = _where(stub)
        second = _ran_from(served, where, job)
        assert where["version"] == 2 and second != first
        marker.touch()
        assert _result(stub, waiting) == {"version": 1}
        assert _job(stub, waiting).plugin_sha256 == first
        # The server validates with version 2's model now.
        with pytest.raises(grpc.RpcError) as info:
            _greet(stub, {"name": "ada", "excited": "very"})
        assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT

        (plugin / "actions.py").write_text(BROKEN)
        process.send_signal(signal.SIGHUP)
        _eventually(lambda: "plugin reload failed" in log.read_text(), "the failed reload's log")
        # The error names the file the author edited, not the server's copy of it.
        failure = log.read_text().split("plugin reload failed", 1)[1]
        assert str(plugin / "config.yaml") in failure
        assert "SyntaxError" in failure
        # The broken edit changed nothing: the catalog and the fork server keep version 2.
        assert "excited" in _schema(stub)["properties"]
        assert _greet(stub, {"name": "bob"}) == {"greeting": "hello again bob.", "version": 2}
        where, job = _where(stub)
        assert where["version"] == 2 and _ran_from(served, where, job) == second
        # Disk stays bounded: the broken code's snapshot is removed after the failed reload;
        # the loaded code and the one loaded before it are kept.
        assert sorted(p.name for p in (served.data / "plugins").iterdir()) == sorted(
            [first, second]
        )


@pytest.mark.parametrize("warm_workers", ["1", "0"], ids=["fork-server", "process-per-job"])
def test_an_edit_without_a_reload_runs_nowhere(tmp_path: Path, warm_workers: str) -> None:
    with _serve(tmp_path, SYNAPSE_WARM_WORKERS=warm_workers) as served:
        where, job = _where(served.stub)
        loaded = _ran_from(served, where, job)
        (served.plugin / "actions.py").write_text(V2)
        if warm_workers == "1":
            # A fork server that dies is started again, and must import the loaded code,
            # not the files as they are on disk now.
            (pid,) = _fork_servers(served.process.pid)
            os.kill(pid, signal.SIGKILL)
            _eventually(lambda: pid not in _fork_servers(served.process.pid), "its death")
        assert _greet(served.stub, {"name": "ada"}) == {"greeting": "hello ada", "version": 1}
        where, job = _where(served.stub)
        assert where["version"] == 1 and _ran_from(served, where, job) == loaded
        if warm_workers == "1":
            assert len(_fork_servers(served.process.pid)) == 1  # the replacement served them
        assert "excited" not in _schema(served.stub)["properties"]


def test_a_job_queued_across_a_reload_runs_the_code_it_was_validated_against(
    tmp_path: Path,
) -> None:
    with _serve(tmp_path, "--max-concurrent-jobs", "1") as served:
        stub = served.stub
        marker = tmp_path / "go"
        busy = _submit(stub, "wait", {"marker": str(marker)})
        _eventually(
            lambda: _job(stub, busy).state == job_pb2.JOB_STATE_RUNNING, "the busy job to run"
        )
        # Validated by version 1's model, then waits for the only slot.
        queued = _submit(stub, "greet", {"name": "ada", "excited": "very"})
        assert _job(stub, queued).state == job_pb2.JOB_STATE_PENDING
        (served.plugin / "actions.py").write_text(V2)
        served.process.send_signal(signal.SIGHUP)
        _eventually(_reloaded(served, 1), "the reload to finish")
        marker.touch()
        # Version 2 would have refused "very" for a bool, and says "hello again".
        assert _result(stub, queued) == {"greeting": "hello ada", "version": 1}
        assert _job(stub, queued).plugin_sha256 == _job(stub, busy).plugin_sha256
        where, job = _where(stub)
        assert where["version"] == 2
        assert _ran_from(served, where, job) != _job(stub, queued).plugin_sha256


def test_a_restart_loads_the_plugins_as_they_are_on_disk(tmp_path: Path) -> None:
    with _serve(tmp_path) as served:
        where, job = _where(served.stub)
        before = _ran_from(served, where, job)
        (served.plugin / "actions.py").write_text(V2)
        assert _where(served.stub)[0]["version"] == 1
    # A fresh server loads the plugins, as a reload does: the edit takes effect.
    with _serve(tmp_path) as served:
        where, job = _where(served.stub)
        after = _ran_from(served, where, job)
        assert where["version"] == 2 and after != before
        assert "excited" in _schema(served.stub)["properties"]
        # No unfinished job needs the earlier snapshot: the start removed it. Finished jobs
        # still tell which code they ran.
        assert [p.name for p in (served.data / "plugins").iterdir()] == [after]
        jobs = served.stub.ListJobs(pb.ListJobsRequest(), timeout=10).jobs
        assert sorted(j.plugin_sha256 for j in jobs) == sorted([before, before, after])


def test_a_queued_job_recovered_after_a_crash_runs_the_code_it_was_validated_against(
    tmp_path: Path,
) -> None:
    with _serve(tmp_path, "--max-concurrent-jobs", "1") as served:
        stub = served.stub
        busy = _submit(stub, "wait", {"marker": str(tmp_path / "never")})
        _eventually(
            lambda: _job(stub, busy).state == job_pb2.JOB_STATE_RUNNING, "the busy job to run"
        )
        queued = _submit(stub, "greet", {"name": "ada", "excited": "very"})
        validated_with = _job(stub, queued).plugin_sha256
        served.process.kill()
        served.process.wait(10)
    (served.plugin / "actions.py").write_text(V2)
    # The new server loads the edited plugin, and queues the job left PENDING again: it runs
    # the snapshot its params were checked against, which the start kept for it.
    with _serve(tmp_path, "--max-concurrent-jobs", "1") as served:
        assert _result(served.stub, queued) == {"greeting": "hello ada", "version": 1}
        assert _job(served.stub, queued).plugin_sha256 == validated_with
        where, job = _where(served.stub)
        assert where["version"] == 2 and _ran_from(served, where, job) != validated_with
