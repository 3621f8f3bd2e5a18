"""Worker processes start without forking the server (synapse_server.core._spawn)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap

import pytest
from synapse_server.core._spawn import SpawnedProcess, spawn

# Counts the fork handlers (pthread_atfork "prepare") that run in a process with a live
# grpc server, for a child started by the loop's own subprocess_exec and by spawn().
_FORK_HANDLER_PROBE = textwrap.dedent(
    """
    import asyncio, ctypes, os, subprocess, sys

    import grpc
    import uvloop
    from synapse_server.core._spawn import SpawnedProcess, spawn

    prepared = 0

    @ctypes.CFUNCTYPE(None)
    def prepare():
        global prepared
        prepared += 1

    libc = ctypes.CDLL(None)
    try:
        libc.pthread_atfork(prepare, None, None)
    except AttributeError:  # glibc keeps pthread_atfork static: its exported worker
        libc.__register_atfork(prepare, None, None, None)

    async def main():
        server = grpc.aio.server()
        server.add_insecure_port("127.0.0.1:0")
        await server.start()
        child = [sys.executable, "-c", "pass"]
        process = await asyncio.create_subprocess_exec(*child, stdin=subprocess.DEVNULL)
        await process.wait()
        by_loop = prepared
        spawned = await spawn(
            child, env=os.environ, stdin=subprocess.DEVNULL, stdout=None, stderr=None
        )
        code = await spawned.wait()
        await server.stop(None)
        print(by_loop, prepared - by_loop, code)

    uvloop.run(main())
    """
)


async def _quiet(code: str, *, stdin: int = subprocess.DEVNULL) -> SpawnedProcess:
    """``python -c code`` with its output dropped."""
    return await spawn(
        [sys.executable, "-c", code],
        env=os.environ,
        stdin=stdin,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def test_spawning_runs_no_fork_handlers_in_a_server_with_grpc_threads() -> None:
    pytest.importorskip("uvloop")
    done = subprocess.run(
        [sys.executable, "-c", _FORK_HANDLER_PROBE],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    by_loop, by_spawn, code = done.stdout.split()
    # The probe sees uvloop's fork (so it can see one); spawn() runs no handler at all, so
    # grpc's do not restart its threads in a child about to exec.
    assert int(by_loop) >= 1
    assert (int(by_spawn), int(code)) == (0, 0)


async def test_pipes_and_exit_status() -> None:
    process = await spawn(
        [sys.executable, "-c", "import sys; sys.stdout.write(sys.stdin.read().upper())"],
        env=os.environ,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    assert process.stdin is not None and process.stdout is not None
    assert process.returncode is None
    process.stdin.write(b"hello\n" * 20_000)  # more than a pipe holds: drain must wait
    await process.stdin.drain()
    process.stdin.close()
    assert await asyncio.wait_for(process.stdout.read(), 30) == b"HELLO\n" * 20_000
    assert await asyncio.wait_for(process.wait(), 30) == 0
    assert process.returncode == 0


async def test_a_killed_process_reports_the_signal_and_has_a_session_of_its_own() -> None:
    process = await _quiet("import time; time.sleep(60)")
    assert os.getsid(process.pid) == process.pid
    os.killpg(process.pid, signal.SIGKILL)
    assert await asyncio.wait_for(process.wait(), 30) == -signal.SIGKILL
    # Waiting again returns the same status.
    assert await process.wait() == -signal.SIGKILL


async def test_without_pidfds_a_thread_waits(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_pidfds(pid: int) -> int:
        raise OSError("pidfd_open is not supported here")

    monkeypatch.setattr(os, "pidfd_open", no_pidfds)
    process = await _quiet("raise SystemExit(3)")
    assert await asyncio.wait_for(process.wait(), 30) == 3


async def test_a_cancelled_waiter_leaves_the_exit_status_to_the_others() -> None:
    process = await _quiet("import sys; sys.stdin.read()", stdin=subprocess.PIPE)
    waiter = asyncio.create_task(process.wait())
    await asyncio.sleep(0.05)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert process.stdin is not None
    process.stdin.close()
    assert await asyncio.wait_for(process.wait(), 30) == 0
