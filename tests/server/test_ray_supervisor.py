"""The Ray side's supervision of a job's worker process, with real child processes.

``supervise_worker`` is what a Ray task or actor runs (see ``synapse_server.ray._supervisor``);
here it supervises small Python programs that end the ways a plugin can, so each outcome and
its reason are checked without a cluster. tests/ray_modes/test_ray_modes.py runs the real
worker under Ray in both modes.
"""

from __future__ import annotations

import os
import signal
import sys
import textwrap
import time
from pathlib import Path

import pytest
from synapse_server.core._executor import WorkerExit
from synapse_server.ray._executors import RayResources, RayTaskExecutor
from synapse_server.ray._supervisor import (
    CREDENTIAL_ENV,
    NODE_ID_ENV,
    child_environment,
    root_certificates_file,
    supervise_worker,
    worker_command,
)


def _program(code: str) -> list[str]:
    return [sys.executable, "-c", textwrap.dedent(code)]


def _supervise(code: str, **kwargs: object) -> WorkerExit:
    return supervise_worker(_program(code), dict(os.environ), job_id="j1", **kwargs)  # type: ignore[arg-type]


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ("import os; os._exit(3)", "worker exited with code 3 without reporting a result"),
        ("import ctypes; ctypes.string_at(0)", "worker crashed with SIGSEGV (segmentation fault)"),
        (
            "import os, signal; os.kill(os.getpid(), signal.SIGKILL)",
            "worker was killed (SIGKILL), possibly out of memory",
        ),
    ],
)
def test_the_outcome_names_the_exit_code_or_signal_as_local_mode_does(
    code: str, expected: str
) -> None:
    outcome = _supervise(code, memory_limit_mb=None)
    assert outcome.describe() == expected
    assert outcome.error_type == "WorkerCrashed"


def test_a_worker_that_reported_its_job_exits_zero() -> None:
    assert _supervise("pass", memory_limit_mb=512) == WorkerExit(exit_code=0)


def test_a_worker_over_its_memory_limit_is_killed_and_the_job_names_the_limit() -> None:
    # Shared memory, which RLIMIT_DATA does not count: only the resident-memory watch stops it.
    outcome = _supervise(
        """
        import mmap, time
        held = []
        for _ in range(64):
            block = mmap.mmap(-1, 16 << 20)
            block.write(b"x" * (16 << 20))
            held.append(block)
            time.sleep(0.01)
        """,
        memory_limit_mb=96,
        memory_check_seconds=0.05,
    )
    assert outcome.memory_limit_mb == 96 and outcome.signal == signal.SIGKILL
    assert outcome.error_type == "MemoryLimitExceeded"
    assert outcome.describe() == "the job exceeded its memory limit of 96 MiB"


def test_a_worker_that_ran_out_of_memory_without_reporting_it_names_the_limit() -> None:
    outcome = _supervise("import os; os._exit(5)", memory_limit_mb=256)
    assert outcome.describe() == "the job exceeded its memory limit of 256 MiB"
    # Without a limit the same exit is an ordinary crash.
    assert _supervise("import os; os._exit(5)", memory_limit_mb=None).describe() == (
        "worker exited with code 5 without reporting a result"
    )


def _group_program(pid_file: Path) -> str:
    # The worker and a process it started (same process group), both waiting forever.
    return f"""
        import os, subprocess, sys, time
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
        with open({str(pid_file)!r}, "w") as f:
            f.write(f"{{os.getpid()}} {{child.pid}}")
        time.sleep(600)
        """


def _pids(pid_file: Path) -> list[int]:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if pid_file.is_file() and pid_file.read_text().count(" ") == 1:
            return [int(p) for p in pid_file.read_text().split()]
        time.sleep(0.05)
    raise AssertionError("the supervised program did not start")


def test_a_cancel_flag_kills_the_worker_and_what_it_started(tmp_path: Path) -> None:
    pid_file = tmp_path / "pids"
    calls = 0

    def cancelled() -> bool:
        nonlocal calls
        calls += 1
        return pid_file.is_file() and pid_file.read_text().count(" ") == 1

    outcome = _supervise(
        _group_program(pid_file), memory_limit_mb=None, cancelled=cancelled, poll_seconds=0.05
    )
    assert outcome.signal == signal.SIGKILL
    worker, grandchild = _pids(pid_file)
    assert not _alive(worker)
    deadline = time.monotonic() + 30
    while _alive(grandchild) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(grandchild), "the worker's process group was not killed"


def test_an_interrupted_supervisor_kills_the_worker_before_it_returns(tmp_path: Path) -> None:
    """A task's cancel raises KeyboardInterrupt in the supervisor: the worker must not go on."""
    pid_file = tmp_path / "pids"

    def interrupt() -> bool:
        if pid_file.is_file() and pid_file.read_text().count(" ") == 1:
            raise KeyboardInterrupt
        return False

    with pytest.raises(KeyboardInterrupt):
        _supervise(
            _group_program(pid_file), memory_limit_mb=None, cancelled=interrupt, poll_seconds=0.05
        )
    worker, grandchild = _pids(pid_file)
    assert not _alive(worker)
    deadline = time.monotonic() + 30
    while _alive(grandchild) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(grandchild)


def test_the_worker_environment_carries_the_credential_not_ray_worker_internals() -> None:
    base = {"PATH": "/bin", "RAY_JOB_ID": "01000000", "RAY_RAYLET_PID": "42", "KEEP": "1"}
    env = child_environment(
        base,
        {"RAY_ADDRESS": "10.0.0.1:6379", "EXTRA": "x"},
        "secret-token",
        ray_address="127.0.0.1:6379",
        node_id="abc123",
    )
    assert env[CREDENTIAL_ENV] == "secret-token"
    assert env[NODE_ID_ENV] == "abc123"
    # The job's own variables (a deployment job's server cluster) win over the defaults.
    assert env["RAY_ADDRESS"] == "10.0.0.1:6379" and env["EXTRA"] == "x"
    assert "RAY_JOB_ID" not in env and "RAY_RAYLET_PID" not in env
    assert env["KEEP"] == "1" and env["PATH"] == "/bin"
    assert child_environment(base, {}, "t", ray_address="127.0.0.1:1", node_id=None)[
        "RAY_ADDRESS"
    ] == ("127.0.0.1:1")
    # A fork server's environment holds no credential (its children get theirs per job).
    inherited = {**base, CREDENTIAL_ENV: "stale"}
    assert CREDENTIAL_ENV not in child_environment(
        inherited, {}, None, ray_address=None, node_id=None
    )


def test_the_worker_command_is_the_local_workers_without_the_credential(tmp_path: Path) -> None:
    cert = root_certificates_file(tmp_path / "tls", b"-----BEGIN CERTIFICATE-----\n")
    assert cert.read_bytes() == b"-----BEGIN CERTIFICATE-----\n"
    assert root_certificates_file(tmp_path / "tls", b"-----BEGIN CERTIFICATE-----\n") == cert
    command = worker_command(
        "/usr/bin/python3",
        "127.0.0.1:5000",
        tmp_path / "plugin",
        "--job-id",
        "job-1",
        worker_id="ray-node-1",
        memory_limit_mb=4096,
        root_cert_file=cert,
        server_name="synapse.local",
    )
    assert command[:3] == ["/usr/bin/python3", "-m", "synapse_server.worker"]
    pairs = dict(zip(command[3::2], command[4::2], strict=True))
    assert pairs == {
        "--address": "127.0.0.1:5000",
        "--job-id": "job-1",
        "--plugin-dir": str(tmp_path / "plugin"),
        "--parent-pid": str(os.getpid()),
        "--worker-id": "ray-node-1",
        "--memory-limit-mb": "4096",
        "--root-cert-file": str(cert),
        "--server-name": "synapse.local",
    }
    role = ("--fork-server", "--preload", "p")
    fork_server = worker_command("py", "a", tmp_path, *role, worker_id="w", memory_limit_mb=None)
    assert fork_server[3:8] == ["--address", "a", "--fork-server", "--preload", "p"]
    assert "--memory-limit-mb" not in fork_server and "--job-id" not in fork_server


def test_a_job_reserving_more_ray_memory_than_the_limit_gets_its_reservation() -> None:
    def limit(server_limit: int | None, memory: float) -> int | None:
        executor = RayTaskExecutor(None, "addr", None, memory_limit_mb=server_limit)  # type: ignore[arg-type]
        return executor.memory_limit_mb(RayResources(memory=memory))

    assert limit(4096, 0) == 4096
    assert limit(4096, 1 << 30) == 4096  # a smaller reservation never lowers the limit
    assert limit(4096, 6 * (1 << 30) + 1) == 6 * 1024 + 1
    assert limit(None, 8 * (1 << 30)) is None  # no limit configured: none in any mode
    assert limit(0, 8 * (1 << 30)) is None
