"""Which recorded Ray head a starting server kills, shown with real processes (no Ray needed).

A stand-in head is a session leader (the supervisor's place) with children; the record is the
one a server writes into its data directory. tests/serve/test_ray_head.py covers the real
head and server.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from synapse_server.ray._head import (
    HEAD_ID_ENV,
    HeadRecord,
    LocalRayHeadError,
    _boot_id,
    _stat,
    remove_stale_head,
)

HEAD_ID = "0123456789abcdef0123456789abcdef"


def _alive(pid: int) -> bool:
    stat = _stat(pid)
    return stat is not None and stat[0] != "Z"


def _session(sid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = _stat(int(entry))
            if stat is not None and stat[0] != "Z" and stat[1] == sid:
                found.append(int(entry))
    return found


class StandIn:
    """A session leader that starts children, like the head's supervisor."""

    def __init__(self, tmp_path: Path, children: list[list[str]], env: dict[str, str]) -> None:
        pids = tmp_path / f"pids-{time.monotonic_ns()}"
        script = textwrap.dedent(
            f"""
            import subprocess, sys, time
            from pathlib import Path
            children = [subprocess.Popen(c, stdin=subprocess.DEVNULL) for c in {children!r}]
            Path({str(pids)!r}).write_text(" ".join(str(c.pid) for c in children))
            time.sleep(300)
            """
        )
        self.leader = subprocess.Popen(
            [sys.executable, "-c", script], env=env, start_new_session=True
        )
        deadline = time.monotonic() + 30
        while not pids.exists() or not pids.read_text():
            assert time.monotonic() < deadline, "the stand-in did not start its children"
            time.sleep(0.05)
        self.children = [int(p) for p in pids.read_text().split()]

    @property
    def pids(self) -> list[int]:
        return [self.leader.pid, *self.children]

    def record(self, **overrides: object) -> HeadRecord:
        stat = _stat(self.leader.pid)
        assert stat is not None
        values: dict[str, object] = {
            "boot_id": _boot_id(),
            "head_id": HEAD_ID,
            "supervisor_pid": self.leader.pid,
            "supervisor_start": stat[2],
            "server_pid": _gone_pid(),
            "server_start": 0,
        }
        values.update(overrides)
        return HeadRecord(**values)  # type: ignore[arg-type]

    def kill(self) -> None:
        for pid in self.pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.leader.wait(10)


def _gone_pid() -> int:
    exited = subprocess.Popen(["true"])
    exited.wait()
    return exited.pid


SLEEP = ["sleep", "300"]


@pytest.fixture
def stand_ins(tmp_path: Path) -> Iterator[list[StandIn]]:
    started: list[StandIn] = []
    yield started
    for stand_in in started:
        stand_in.kill()


def _head_env(**extra: str) -> dict[str, str]:
    return {**os.environ, HEAD_ID_ENV: HEAD_ID, **extra}


def test_a_head_whose_server_is_gone_is_killed_whole(
    tmp_path: Path, stand_ins: list[StandIn]
) -> None:
    # A child without the head's id in its environment belongs to the session all the same.
    head = StandIn(tmp_path, [SLEEP, ["env", "-i", *SLEEP]], _head_env())
    stand_ins.append(head)
    # Stopped processes leave only by SIGKILL: nothing is left to a graceful drain.
    for pid in head.pids:
        os.kill(pid, signal.SIGSTOP)
    record_path = tmp_path / "ray-head.json"
    head.record().write(record_path)

    remove_stale_head(record_path)

    assert _session(head.leader.pid) == []
    assert not record_path.exists()


def test_without_its_supervisor_only_what_belongs_to_the_head_is_killed(
    tmp_path: Path, stand_ins: list[StandIn]
) -> None:
    head = StandIn(
        tmp_path,
        [
            SLEEP,  # carries the head's id
            ["env", "-i", "bash", "-c", "exec -a ray::Agent sleep 300"],  # a Ray process title
            ["env", "-i", *SLEEP],  # neither
        ],
        _head_env(),
    )
    stand_ins.append(head)
    record_path = tmp_path / "ray-head.json"
    head.record().write(record_path)
    os.kill(head.leader.pid, signal.SIGKILL)
    head.leader.wait(10)
    marked, titled, unknown = head.children
    deadline = time.monotonic() + 10
    while not Path(f"/proc/{titled}/cmdline").read_bytes().startswith(b"ray::"):
        assert time.monotonic() < deadline, "bash did not exec"
        time.sleep(0.05)

    remove_stale_head(record_path)

    assert not _alive(marked) and not _alive(titled)
    assert _alive(unknown)
    assert not record_path.exists()


def test_a_reused_pid_is_left_alone(tmp_path: Path, stand_ins: list[StandIn]) -> None:
    record_path = tmp_path / "ray-head.json"
    # Same pid, another start time: the recorded supervisor is long gone.
    other = StandIn(tmp_path, [SLEEP], _head_env())
    stand_ins.append(other)
    stat = _stat(other.leader.pid)
    assert stat is not None
    other.record(supervisor_start=stat[2] - 1).write(record_path)
    remove_stale_head(record_path)
    assert all(_alive(pid) for pid in other.pids)
    assert not record_path.exists()
    # Same pid and start time, but not carrying the head's id.
    unrelated = StandIn(tmp_path, [SLEEP], {**os.environ})
    stand_ins.append(unrelated)
    unrelated.record().write(record_path)
    remove_stale_head(record_path)
    assert all(_alive(pid) for pid in unrelated.pids)
    assert not record_path.exists()


def test_the_head_of_a_running_server_is_left_alone(
    tmp_path: Path, stand_ins: list[StandIn]
) -> None:
    head = StandIn(tmp_path, [SLEEP], _head_env())
    stand_ins.append(head)
    server = subprocess.Popen(SLEEP)
    try:
        stat = _stat(server.pid)
        assert stat is not None
        record_path = tmp_path / "ray-head.json"
        head.record(server_pid=server.pid, server_start=stat[2]).write(record_path)
        remove_stale_head(record_path)
        assert all(_alive(pid) for pid in head.pids)
        assert record_path.exists()
    finally:
        server.kill()
        server.wait()


def test_records_of_another_boot_or_unreadable_are_dropped(
    tmp_path: Path, stand_ins: list[StandIn]
) -> None:
    head = StandIn(tmp_path, [SLEEP], _head_env())
    stand_ins.append(head)
    record_path = tmp_path / "ray-head.json"
    head.record(boot_id="another-boot").write(record_path)
    remove_stale_head(record_path)
    assert all(_alive(pid) for pid in head.pids)
    assert not record_path.exists()

    record_path.write_text("{not json")
    remove_stale_head(record_path)
    assert not record_path.exists()
    remove_stale_head(record_path)  # no record: nothing to do


def test_a_head_that_cannot_be_killed_is_an_error(
    tmp_path: Path, stand_ins: list[StandIn], monkeypatch: pytest.MonkeyPatch
) -> None:
    head = StandIn(tmp_path, [SLEEP], _head_env())
    stand_ins.append(head)
    record_path = tmp_path / "ray-head.json"
    head.record().write(record_path)
    # As if the processes hung in the kernel: signals are sent but nothing dies.
    monkeypatch.setattr(os, "kill", lambda pid, sig: None)
    with pytest.raises(LocalRayHeadError, match="did not stop"):
        remove_stale_head(record_path, timeout_s=0.5)
