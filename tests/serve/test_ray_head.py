"""The embedded Ray head: loopback only, its own process tree, never outliving its server.

The server runs as a real ``synapse serve`` process here. The head runs in a session of its
own, led by its supervisor; Ray's workers each lead a process group of their own inside it.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest
from synapse_client import Client
from synapse_server.ray._head import LocalRayHead

pytestmark = [pytest.mark.ray, pytest.mark.timeout(420)]

REPO = Path(__file__).resolve().parents[2]
TOY = REPO / "tests" / "plugins"
EXAMPLES = REPO / "examples" / "plugins"


def _stat(pid: int) -> list[str] | None:
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def _live() -> dict[int, list[str]]:
    """Pid -> /proc stat fields after the name (state, ppid, pgrp, session, ...), no zombies."""
    found = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (fields := _stat(int(entry))) is not None and fields[0] != "Z":
            found[int(entry)] = fields
    return found


def _session(sid: int) -> list[int]:
    """Live processes of a session."""
    return [pid for pid, fields in _live().items() if int(fields[3]) == sid]


def _tree(root: int) -> set[int]:
    """The process and its descendants, plus every process of a session one of them leads
    (a session leader's members may have been reparented away from it)."""
    live = _live()
    found = {root}
    while True:
        sessions = {pid for pid in found if int(live.get(pid, ["", "0", "0", "0"])[3]) == pid}
        more = {
            pid
            for pid, fields in live.items()
            if pid not in found and (int(fields[1]) in found or int(fields[3]) in sessions)
        }
        if not more:
            return found
        found |= more


def _cmdline(pid: int) -> bytes:
    try:
        return (Path("/proc") / str(pid) / "cmdline").read_bytes()
    except OSError:
        return b""


def _wait_gone(pids: list[int], timeout_s: float) -> list[int]:
    deadline = time.monotonic() + timeout_s
    while True:
        live = _live()
        left = [pid for pid in pids if pid in live]
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.2)


def _listening_sockets() -> dict[int, str]:
    """Socket inode -> local address of every listening TCP socket of this network namespace."""
    found = {}
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] != "0A":  # TCP_LISTEN
                continue
            host_hex, port_hex = fields[1].split(":")
            raw = bytes.fromhex(host_hex)
            # The kernel prints each 32-bit word in host (little-endian) order.
            words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
            host: ipaddress.IPv4Address | ipaddress.IPv6Address = (
                ipaddress.IPv4Address(words) if table == "tcp" else ipaddress.IPv6Address(words)
            )
            if isinstance(host, ipaddress.IPv6Address) and host.ipv4_mapped is not None:
                host = host.ipv4_mapped
            found[int(fields[9])] = f"{host}:{int(port_hex, 16)}"
    return found


def _listening_by_process(pids: set[int]) -> dict[int, list[str]]:
    sockets = _listening_sockets()
    found: dict[int, list[str]] = {}
    for pid in pids:
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    target = os.readlink(f"/proc/{pid}/fd/{fd}")
                    if target.startswith("socket:[") and int(target[8:-1]) in sockets:
                        found.setdefault(pid, []).append(sockets[int(target[8:-1])])
    return found


def _is_loopback(address: str) -> bool:
    host = address.rsplit(":", 1)[0]
    return ipaddress.ip_address(host.strip("[]")).is_loopback


class ServeProcess:
    """``python -m synapse_server`` on port 0 in a session of its own (so its whole process
    group can be killed); stderr goes to a file, which nothing has to keep draining."""

    def __init__(self, data_dir: Path, log: Path, plugin_dir: Path) -> None:
        self.data_dir = data_dir
        self.log = log.open("ab")
        self.process = subprocess.Popen(
            [
                sys.executable, "-m", "synapse_server", "--listen", "127.0.0.1:0",
                "--data-dir", str(data_dir), "--plugin-dir", str(plugin_dir),
                "--log-level", "WARNING",
            ],
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
            start_new_session=True,
        )  # fmt: skip
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        while line and not line.startswith("synapse server listening on "):
            line = self.process.stdout.readline()
        if not line:
            self.process.kill()
            raise AssertionError(f"server did not start: {log.read_text()[-2000:]}")
        self.address = line.rsplit(" ", 1)[1].strip()

    @property
    def pid(self) -> int:
        return self.process.pid

    def kill(self) -> None:
        """SIGKILL to the server's process group: no cleanup code of it runs."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(30)
        self.log.close()


class Started:
    """Servers and head sessions a test started, all killed at its end."""

    def __init__(self) -> None:
        self.servers: list[ServeProcess] = []
        self.heads: list[int] = []

    def server(self, data_dir: Path, log: Path, plugin_dir: Path) -> ServeProcess:
        server = ServeProcess(data_dir, log, plugin_dir)
        self.servers.append(server)
        return server

    def head_of(self, server: ServeProcess) -> int:
        """The session of the server's Ray head: led by a child of the server."""
        leaders = [
            pid
            for pid, fields in _live().items()
            if int(fields[1]) == server.pid
            and int(fields[3]) == pid
            and (b"synapse_server/ray/_head.py" in _cmdline(pid) or b"ray.scripts" in _cmdline(pid))
        ]
        assert len(leaders) == 1, leaders
        self.heads.append(leaders[0])
        return leaders[0]


@pytest.fixture
def started() -> Iterator[Started]:
    started = Started()
    yield started
    for server in started.servers:
        server.kill()
    # Nothing of a head may be left for the next tests, whatever a test left behind.
    for sid in started.heads:
        for pid in _session(sid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _freeze(pids: Iterable[int]) -> None:
    """SIGSTOP: a stopped process can only leave by SIGKILL, never by a graceful drain."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):  # an idle worker may have ended
            os.kill(pid, signal.SIGSTOP)


def _start_ray_with_a_task_job(server: ServeProcess) -> None:
    """A job in task mode: the server starts its Ray head (and Serve) to run it."""
    with Client(server.address, timeout=60) as client:
        job = client.run_action("toy", "quick", {"count": 1, "label": "ray"}, mode="task")
        job.result(timeout=300)


def test_the_embedded_ray_listens_on_loopback_only(started: Started, tmp_path: Path) -> None:
    pytest.importorskip("torch")
    from examples.models import MLPConfig, build_model_dir

    server = started.server(tmp_path / "data", tmp_path / "server.log", EXAMPLES)
    with Client(server.address, timeout=60) as client:
        model_dir = tmp_path / "model"
        build_model_dir(model_dir, MLPConfig(hidden=8, seed=3))
        archive = shutil.make_archive(str(tmp_path / "model"), "zip", model_dir)
        model_id = client.register_model(archive, "mlp", framework="torch").id
        job = client.run_action(
            "torch-serve",
            "deployment",
            {"model": model_id, "num_gpus": 0, "num_cpus": 0},
            mode="local",
        )
        job.result(timeout=300)
        # Infer reaches the replica over Serve's gRPC channel (the default transport), so
        # the replica's port on loopback is reachable from the server.
        answer = client.infer(
            plugin="torch-serve",
            action="inference",
            model=model_id,
            json={"inputs": [{"data": [1.0, 2.0, 3.0]}]},
            timeout=120,
        )
        assert len(answer.json) == 1

    processes = _tree(server.pid)
    listening = _listening_by_process(processes)
    titles = {pid: _cmdline(pid).replace(b"\0", b" ").decode(errors="replace") for pid in listening}
    exposed = {
        titles[pid]: addresses
        for pid, addresses in listening.items()
        if not all(_is_loopback(a) for a in addresses)
    }
    assert exposed == {}
    # Not vacuous: the server, the GCS, the raylet and the replica were all looked at.
    described = " ".join(titles.values())
    for expected in ("synapse_server", "gcs_server", "raylet", "ray::ServeReplica"):
        assert expected in described, titles
    # No Ray client server (it would listen on port 10001) and no dashboard: Ray always
    # starts its dashboard process, but then without frontend and dashboard modules.
    assert not any(b"ray.util.client.server" in _cmdline(pid) for pid in processes)
    dashboards = [_cmdline(pid) for pid in processes if b"dashboard/dashboard.py" in _cmdline(pid)]
    for dashboard in dashboards:
        assert b"--disable-frontend" in dashboard.split(b"\0"), dashboard
        assert b"--modules-to-load=UsageStatsHead" in dashboard.split(b"\0"), dashboard


def test_a_killed_server_takes_its_whole_head_along(started: Started, tmp_path: Path) -> None:
    server = started.server(tmp_path / "data", tmp_path / "server.log", TOY)
    _start_ray_with_a_task_job(server)
    sid = started.head_of(server)
    head = _session(sid)
    # ray start, GCS, raylet, agents, the Serve controller and the task's worker.
    assert len(head) >= 6, head
    # Frozen, a head left to drain would stay. Only the session's leader (the supervisor)
    # keeps running.
    _freeze(pid for pid in head if pid != sid)
    server.kill()
    assert _wait_gone(head, 60) == []


def test_a_restarted_server_removes_the_head_a_killed_one_left(
    started: Started, tmp_path: Path
) -> None:
    first = started.server(tmp_path / "data", tmp_path / "first.log", TOY)
    _start_ray_with_a_task_job(first)
    sid = started.head_of(first)
    head = _session(sid)
    # As if the supervisor had failed: all of the head stopped, so nothing of it reacts to
    # the server's death.
    _freeze(head)
    head = _session(sid)  # what was still there to be stopped
    first.kill()
    assert _wait_gone(head, 2) == head  # still there

    second = started.server(tmp_path / "data", tmp_path / "second.log", TOY)
    # Removed during the second server's start, before anything could ask it for Ray.
    assert _wait_gone(head, 10) == []
    assert not (tmp_path / "data" / "ray-head.json").exists()
    # Its own head then starts as usual, and is recorded.
    _start_ray_with_a_task_job(second)
    record = json.loads((tmp_path / "data" / "ray-head.json").read_text())
    assert record["supervisor_pid"] == started.head_of(second) != sid


def test_stop_leaves_no_process_of_the_head() -> None:
    head = LocalRayHead(num_cpus=1)
    try:
        address = head.start(timeout_s=120)
        assert address.startswith("127.0.0.1:")
        sid = head.supervisor_pid
        assert sid is not None
        # The supervisor, ray start, its GCS and (once started) its raylet.
        deadline = time.monotonic() + 60
        while len(_session(sid)) < 4:
            assert time.monotonic() < deadline, _session(sid)
            time.sleep(0.2)
    finally:
        # Also when a check above fails: a head left running would share the machine with
        # the Ray session of the next tests.
        head.stop()
    # stop() returns once every process of the session is gone.
    assert _session(sid) == []
