"""The embedded Ray head runs as its own process tree and never outlives the server."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from synapse_server.ray._head import LocalRayHead

pytestmark = [pytest.mark.ray, pytest.mark.timeout(180)]


def _group(pgid: int) -> list[int]:
    """Live (not zombie) processes of a process group."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if fields[0] != "Z" and int(fields[2]) == pgid:
            members.append(int(entry.name))
    return members


def _wait_gone(pgid: int, timeout_s: float) -> list[int]:
    deadline = time.monotonic() + timeout_s
    while (left := _group(pgid)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left


def test_stop_leaves_no_process_of_the_head() -> None:
    head = LocalRayHead(num_cpus=1)
    try:
        address = head.start(timeout_s=120)
        assert address.startswith("127.0.0.1:")
        assert head._process is not None
        pgid = head._process.pid
        # The CLI, its GCS and (once started) its raylet, all in the head's own session.
        deadline = time.monotonic() + 60
        while len(_group(pgid)) < 3:
            assert time.monotonic() < deadline, _group(pgid)
            time.sleep(0.2)
    finally:
        # Also when a check above fails: a head left running would share the machine with
        # the Ray session of the next tests.
        head.stop()
    # stop() ends with SIGKILL to the group; the wait only lets a loaded machine reap them.
    assert _wait_gone(pgid, 30) == []


def test_the_head_dies_with_a_killed_server(tmp_path: Path) -> None:
    pgid_file = tmp_path / "pgid"
    script = textwrap.dedent(
        f"""
        import time
        from pathlib import Path
        from synapse_server.ray._head import LocalRayHead

        head = LocalRayHead(num_cpus=1)
        head.start(timeout_s=120)
        Path({str(pgid_file)!r}).write_text(str(head._process.pid))
        time.sleep(600)
        """
    )
    server = subprocess.Popen([sys.executable, "-c", script], env=dict(os.environ))
    try:
        deadline = time.monotonic() + 150
        while not pgid_file.exists():
            assert server.poll() is None, "the stand-in server exited"
            assert time.monotonic() < deadline, "the head did not start"
            time.sleep(0.2)
        pgid = int(pgid_file.read_text())
        assert len(_group(pgid)) >= 2  # the CLI and at least its GCS
        server.send_signal(signal.SIGKILL)  # no cleanup code runs in the server
        server.wait(10)
        assert _wait_gone(pgid, 60) == []
    finally:
        if server.poll() is None:
            server.kill()
        if pgid_file.exists():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(int(pgid_file.read_text()), signal.SIGKILL)
