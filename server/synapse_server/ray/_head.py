"""The server's embedded Ray head, run as a process tree of its own.

``ray.init(address="local")`` would start the head's processes (GCS, raylet) by forking the
calling process. The server calls it lazily, on first need, when its gRPC threads are long
running, and a fork taken while another thread holds a lock can leave the child hung or
crashed before it execs (seen as a segfault or "Timed out waiting for file
.../gcs_server_port_..."). So the head is started from a fresh process instead:
``python -m synapse_server.ray._head ARGS`` arranges to get SIGTERM when the server dies
(even by SIGKILL), then execs ``ray start --head --block ARGS``, which stops its GCS and
raylet when it gets SIGTERM. The server connects to it as to any cluster.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

__all__ = ["LocalRayHead", "LocalRayHeadError"]

logger = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1


class LocalRayHeadError(RuntimeError):
    """The local Ray head did not start; the message carries the end of its log."""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class LocalRayHead:
    """``ray start --head --block`` in its own session, stopped with :meth:`stop`."""

    def __init__(self, num_cpus: int | None = None) -> None:
        self._num_cpus = num_cpus
        self._process: subprocess.Popen[bytes] | None = None
        self._log_path: Path | None = None

    def start(self, timeout_s: float) -> str:
        """Start the head; returns ``host:port`` of its GCS once it accepts connections."""
        port = _free_port()
        args = [
            "--head",
            "--block",
            f"--port={port}",
            "--include-dashboard=false",
            "--disable-usage-stats",
        ]
        if self._num_cpus is not None:
            args.append(f"--num-cpus={self._num_cpus}")
        env = dict(os.environ)
        env.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        env.setdefault("RAY_AUTH_MODE", "disabled")
        with tempfile.NamedTemporaryFile(
            prefix="synapse-ray-head-", suffix=".log", delete=False
        ) as log:
            self._log_path = Path(log.name)
            # No preexec_fn: Popen then spawns without running Python in a forked child.
            self._process = subprocess.Popen(
                [sys.executable, "-m", __name__, str(os.getpid()), *args],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout_s
        while True:
            if self._process.poll() is not None:
                raise LocalRayHeadError(
                    f"the local Ray head exited ({self._process.returncode}): {self._log_tail()}"
                )
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
                break
            if time.monotonic() > deadline:
                self.stop()
                raise LocalRayHeadError(
                    f"the local Ray head did not open port {port} within {timeout_s:.0f}s: "
                    f"{self._log_tail()}"
                )
            time.sleep(0.1)
        address = f"127.0.0.1:{port}"
        logger.info("local Ray head pid %d at %s", self._process.pid, address)
        return address

    def stop(self, timeout_s: float = 5.0) -> None:
        """SIGTERM (the head stops its processes), then SIGKILL to what is left of the group.

        Nothing in the embedded Ray outlives the server, so there is no state to save: with
        Serve replicas running, a graceful stop of the head took over 15 s, and is cut short.
        """
        process = self._process
        if process is None:
            return
        self._process = None
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                logger.info("the local Ray head did not stop in %.0fs; killing it", timeout_s)
        # Its GCS and raylet share its process group: nothing of it may outlive the server.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(5)
        if self._log_path is not None:
            self._log_path.unlink(missing_ok=True)

    def _log_tail(self) -> str:
        if self._log_path is None:
            return ""
        try:
            return self._log_path.read_text(errors="replace")[-2000:]
        except OSError:
            return ""


def _main(argv: list[str]) -> None:
    parent = int(argv[0])
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        # Kept across exec: `ray start` gets SIGTERM when the server dies and stops the head.
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        print("cannot arrange to stop with the server", file=sys.stderr)
    if os.getppid() != parent:
        raise SystemExit("the server exited before its Ray head started")
    os.execv(sys.executable, [sys.executable, "-m", "ray.scripts.scripts", "start", *argv[1:]])


if __name__ == "__main__":
    _main(sys.argv[1:])
