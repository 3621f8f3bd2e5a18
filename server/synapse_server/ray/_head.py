"""The server's embedded Ray head: its own process tree, on loopback only, ending with the server.

**Own process tree.** ``ray.init(address="local")`` would start the head's processes (GCS,
raylet) by forking the calling process. The server calls it lazily, on first need, when its
gRPC threads are long running, and a fork taken while another thread holds a lock can leave
the child hung or crashed before it execs (seen as a segfault or "Timed out waiting for file
.../gcs_server_port_..."). So the head is started from a fresh process instead, which the
server connects to as to any cluster.

**Loopback only.** The platform authenticates every caller of its own port; Ray's ports
(GCS, raylet, object manager, core workers, agents, Serve controller and replicas) have no
such check, so the embedded head must not be reachable from other machines. Ray binds its
ports to its node IP when that is a loopback address, and ``ray start`` only keeps a loopback
node IP when ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` (single-machine mode: without it Ray
replaces 127.0.0.1 by the machine's outward IP). Drivers that connect to the head (the
server, deployment workers) need the same variable, or Ray rewrites the 127.0.0.1 of the head's
address the same way: :data:`LOOPBACK_ENVIRONMENT`. Two things ``ray start`` has no flag
for are set by its ``RAY_START_HOOK`` (:func:`configure_head`): no Ray client server (it
would listen on port 10001), and ``_loopback_worker.py`` as the worker program, because a
Serve replica binds its gRPC port (the one Infer requests reach it on) to ``[::]`` whatever
the node IP. No dashboard either.

**Ending with the server.** ``python .../synapse_server/ray/_head.py SERVER_PID ARGS`` is a
small supervisor: the leader of a session of its own, it runs ``ray start --head --block ARGS`` in
that session and watches the server process. When the server is gone (even killed with
SIGKILL), or the supervisor gets SIGTERM, it SIGKILLs every process of the session and so of
the head: ``ray start``, GCS, raylet, agents and the workers the raylet forked (each of which
is the leader of a process group of its own, so a group kill would miss them). No drain: the
embedded head has nothing to save, and a graceful stop with Serve replicas took 30 to 87 s.
``ray start`` itself is SIGKILLed by the kernel if its supervisor dies (``PR_SET_PDEATHSIG``).

**No stale head.** Should the supervisor fail too (hung, or killed before it could act), a
head could outlive its server. The server records the head's session in its data directory
(:class:`HeadRecord`), and :func:`remove_stale_head` (at server start and before starting a
head) kills a recorded head whose server is gone. A pid may have been reused since, so the
record keeps the kernel's boot id, the supervisor's start time and a random id that every
process of the head inherits in its environment (``SYNAPSE_RAY_HEAD_ID``): a live
supervisor must match all three before its session is killed; when the supervisor is gone,
only the processes of its session that carry the id (or a Ray process title) are.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import os
import select
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "LOOPBACK_ENVIRONMENT",
    "HeadRecord",
    "LocalRayHead",
    "LocalRayHeadError",
    "configure_head",
    "remove_stale_head",
]

logger = logging.getLogger(__name__)

#: Environment of every process that starts or connects to the embedded head: Ray then keeps
#: 127.0.0.1 as the node IP and as the head's address instead of the machine's outward IP.
LOOPBACK_ENVIRONMENT = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
#: Carried by every process of a head (inherited from the supervisor): which head it belongs to.
HEAD_ID_ENV = "SYNAPSE_RAY_HEAD_ID"
_LOOPBACK = "127.0.0.1"
_PR_SET_PDEATHSIG = 1
_BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


class LocalRayHeadError(RuntimeError):
    """The local Ray head did not start; the message carries the end of its log."""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((_LOOPBACK, 0))
        return int(sock.getsockname()[1])


def _boot_id() -> str:
    try:
        return _BOOT_ID.read_text().strip()
    except OSError:
        return ""


def _stat(pid: int) -> tuple[str, int, int] | None:
    """(state, session id, start time in clock ticks since boot) of a process, None if gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    # Fields after the command name: state is field 3, session 6, starttime 22 (proc(5)).
    return fields[0], int(fields[3]), int(fields[19])


def _carries(pid: int, head_id: str) -> bool:
    """True if the process was started with this head's id in its environment."""
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return False
    return f"{HEAD_ID_ENV}={head_id}".encode() in environ.split(b"\0")


def _belongs(pid: int, head_id: str) -> bool:
    """True if the process looks like one of the head's: it carries the head's id, or it is
    a Ray worker or agent, whose process title (``ray::...``) Ray writes over the memory
    that ``/proc/PID/environ`` shows."""
    if _carries(pid, head_id):
        return True
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"ray::")
    except OSError:
        return False


def _session_members(sid: int, head_id: str | None) -> list[int]:
    """Live (not zombie) processes of a session other than this one; with ``head_id``, only
    the ones that belong to that head."""
    members = []
    me = os.getpid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        stat = _stat(int(entry))
        if stat is None or stat[0] == "Z" or stat[1] != sid:
            continue
        if head_id is None or _belongs(int(entry), head_id):
            members.append(int(entry))
    return members


def _kill_session(sid: int, head_id: str | None = None, timeout_s: float = 10.0) -> list[int]:
    """SIGKILL every process of a session (but this one) until none is left; returns the
    processes still alive at the deadline (none, unless one hangs in the kernel).

    Repeated because a process may fork between one pass and the next; after the first pass
    the raylet, which starts the workers, is gone.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        members = _session_members(sid, head_id)
        if not members:
            return []
        for pid in members:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        if time.monotonic() > deadline:
            return _session_members(sid, head_id)
        time.sleep(0.05)


@dataclass(frozen=True)
class HeadRecord:
    """What a server writes down about its running head, to find it after a crash."""

    boot_id: str
    head_id: str
    supervisor_pid: int
    supervisor_start: int
    server_pid: int
    server_start: int

    def write(self, path: Path) -> None:
        """Write atomically: a crash leaves the old record or the new one, never half."""
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".partial")
        partial.write_text(json.dumps(asdict(self)))
        os.replace(partial, path)

    @classmethod
    def read(cls, path: Path) -> HeadRecord | None:
        """The record at ``path``; None when there is none or it cannot be read."""
        try:
            data = json.loads(path.read_text())
            return cls(
                boot_id=str(data["boot_id"]),
                head_id=str(data["head_id"]),
                supervisor_pid=int(data["supervisor_pid"]),
                supervisor_start=int(data["supervisor_start"]),
                server_pid=int(data["server_pid"]),
                server_start=int(data["server_start"]),
            )
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError):
            logger.warning("ignoring an unreadable Ray head record %s", path)
            return None


def remove_stale_head(record_path: Path, timeout_s: float = 10.0) -> None:
    """Kill the head recorded at ``record_path`` if its server is gone; forget the record.

    A head whose server still runs (another process) is left alone. See the module docstring
    for how a reused pid is told apart from the recorded head.
    """
    record = HeadRecord.read(record_path)
    if record is None:
        record_path.unlink(missing_ok=True)
        return
    if record.boot_id != _boot_id():
        record_path.unlink(missing_ok=True)  # every process of that boot is gone
        return
    server = _stat(record.server_pid)
    if (
        record.server_pid != os.getpid()
        and server is not None
        and server[0] != "Z"
        and server[2] == record.server_start
    ):
        logger.warning(
            "the Ray head recorded in %s belongs to server pid %d, which still runs; "
            "leaving it alone",
            record_path,
            record.server_pid,
        )
        return
    sid = record.supervisor_pid
    leader = _stat(sid)
    if leader is not None and leader[0] != "Z":
        if leader[2] != record.supervisor_start or not _carries(sid, record.head_id):
            # The pid was reused, so the recorded session ended: the kernel does not reuse
            # a pid while a process still has it as its session id.
            record_path.unlink(missing_ok=True)
            return
        # The recorded supervisor itself: every member of its session belongs to the head.
        head_id = None
    else:
        # Its supervisor is gone (so are ray start, GCS and raylet, which the kernel kills
        # with it): kill what belongs to the head among what is left of its session.
        head_id = record.head_id
    members = _session_members(sid, head_id)
    if members:
        logger.warning(
            "stopping a Ray head left running by a previous server (session %d, %d processes)",
            sid,
            len(members),
        )
        left = _kill_session(sid, head_id, timeout_s)
        if left:
            raise LocalRayHeadError(
                f"a stale Ray head (session {sid}) did not stop: processes {left} are left"
            )
    record_path.unlink(missing_ok=True)


def configure_head(ray_params: Any, head: bool) -> None:
    """``RAY_START_HOOK`` of the embedded head: what ``ray start`` has no flag for.

    Called by ``ray start`` in its own process with its ``RayParams`` before the head starts.
    """
    # ray start starts a Ray client server on port 10001 whenever ray[client] is installed;
    # the platform does not use it.
    ray_params.ray_client_server_port = None
    # Every Python worker runs Ray's default worker through this file: see its docstring.
    ray_params.worker_path = str(Path(__file__).with_name("_loopback_worker.py"))


class LocalRayHead:
    """``ray start --head`` under a supervisor in its own session, stopped with :meth:`stop`.

    ``record_path``: where the running head is recorded (the server's data directory), so a
    restarted server can remove a head its killed predecessor left; None records nothing.
    """

    def __init__(self, num_cpus: int | None = None, record_path: Path | None = None) -> None:
        self._num_cpus = num_cpus
        self._record_path = record_path
        self._process: subprocess.Popen[bytes] | None = None
        self._log_path: Path | None = None

    @property
    def supervisor_pid(self) -> int | None:
        """Pid of the head's supervisor, which is also the id of the head's session."""
        return None if self._process is None else self._process.pid

    def start(self, timeout_s: float) -> str:
        """Start the head; returns ``host:port`` of its GCS once it accepts connections."""
        if self._record_path is not None:
            remove_stale_head(self._record_path)
        port = _free_port()
        args = [
            "--head",
            "--block",
            f"--port={port}",
            f"--node-ip-address={_LOOPBACK}",
            "--include-dashboard=false",
            f"--dashboard-host={_LOOPBACK}",
            "--disable-usage-stats",
        ]
        if self._num_cpus is not None:
            args.append(f"--num-cpus={self._num_cpus}")
        head_id = uuid.uuid4().hex
        env = dict(os.environ)
        env.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        env.setdefault("RAY_AUTH_MODE", "disabled")
        env.update(LOOPBACK_ENVIRONMENT)
        env["RAY_START_HOOK"] = f"{__name__}.configure_head"
        env[HEAD_ID_ENV] = head_id
        with tempfile.NamedTemporaryFile(
            prefix="synapse-ray-head-", suffix=".log", delete=False
        ) as log:
            self._log_path = Path(log.name)
            # No preexec_fn: Popen then spawns without running Python in a forked child.
            # Run by path, not with -m: the supervisor then imports no more than the
            # standard library (the package would cost it 40 MB for all its life).
            self._process = subprocess.Popen(
                [sys.executable, str(Path(__file__).resolve()), str(os.getpid()), *args],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        self._record(head_id)
        deadline = time.monotonic() + timeout_s
        while True:
            if self._process.poll() is not None:
                code = self._process.returncode
                self.stop()
                raise LocalRayHeadError(f"the local Ray head exited ({code}): {self._log_tail()}")
            with contextlib.suppress(OSError), socket.create_connection((_LOOPBACK, port), 0.5):
                break
            if time.monotonic() > deadline:
                tail = self._log_tail()
                self.stop()
                raise LocalRayHeadError(
                    f"the local Ray head did not open port {port} within {timeout_s:.0f}s: {tail}"
                )
            time.sleep(0.1)
        address = f"{_LOOPBACK}:{port}"
        logger.info("local Ray head (supervisor pid %d) at %s", self._process.pid, address)
        return address

    def _record(self, head_id: str) -> None:
        if self._record_path is None or self._process is None:
            return
        supervisor = _stat(self._process.pid)
        server = _stat(os.getpid())
        assert server is not None
        HeadRecord(
            boot_id=_boot_id(),
            head_id=head_id,
            supervisor_pid=self._process.pid,
            # It may already have failed; its exit is noticed by the start loop.
            supervisor_start=supervisor[2] if supervisor is not None else 0,
            server_pid=os.getpid(),
            server_start=server[2],
        ).write(self._record_path)

    def stop(self, timeout_s: float = 10.0) -> None:
        """SIGKILL every process of the head at once.

        Nothing in the embedded Ray outlives the server, so there is no state to save: with
        Serve replicas running, a graceful stop of the head took 30 s and more.
        """
        process = self._process
        if process is None:
            return
        self._process = None
        # The supervisor is our child and not yet reaped, so its pid (the session id) cannot
        # have been reused.
        left = _kill_session(process.pid, timeout_s=timeout_s)
        if left:
            logger.warning("processes %s of the local Ray head did not stop", left)
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(5)
        if self._record_path is not None:
            self._record_path.unlink(missing_ok=True)
        if self._log_path is not None:
            self._log_path.unlink(missing_ok=True)

    def _log_tail(self) -> str:
        if self._log_path is None:
            return ""
        try:
            return self._log_path.read_text(errors="replace")[-2000:]
        except OSError:
            return ""


def _set_parent_death_signal(signum: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signum) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")


def _end_session(code: int) -> None:
    """Kill every other process of this session (the head), then exit."""
    _kill_session(os.getsid(0))
    os._exit(code)


def _wait_for_parent_exit(parent: int, ray_start: subprocess.Popen[bytes]) -> None:
    """Return once the server (our parent) is gone or ``ray start`` has exited."""
    pidfd: int | None = None
    with contextlib.suppress(AttributeError, OSError):
        pidfd = os.pidfd_open(parent)
    # Checked after opening: while the server is our parent, the pidfd is the server's.
    if os.getppid() != parent:
        return
    poller = select.poll()
    if pidfd is not None:
        poller.register(pidfd, select.POLLIN)
    while ray_start.poll() is None:
        # The pidfd becomes readable when the server exits; without one (kernels before
        # 5.3), a server that exits leaves us with another parent.
        if poller.poll(500) or os.getppid() != parent:
            return


def _supervise(argv: list[str]) -> None:
    parent = int(argv[0])
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, lambda *_: _end_session(0))
    if os.getppid() != parent:
        raise SystemExit("the server exited before its Ray head started")
    # Safe here, unlike in the server: this process has a single thread.
    ray_start = subprocess.Popen(
        [sys.executable, "-m", "ray.scripts.scripts", "start", *argv[1:]],
        stdin=subprocess.DEVNULL,
        preexec_fn=lambda: _set_parent_death_signal(signal.SIGKILL),
    )
    _wait_for_parent_exit(parent, ray_start)
    code = ray_start.poll()
    if code is not None:
        print(f"ray start exited ({code}); stopping the head", file=sys.stderr, flush=True)
    _end_session(1 if code is not None else 0)


if __name__ == "__main__":
    _supervise(sys.argv[1:])
