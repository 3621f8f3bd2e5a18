"""A per-plugin fork server ("zygote"): imports once, then forks one worker process per job.

Starting a worker costs seconds of imports (the SDK, grpc, and above all the plugin's own
dependencies such as torch). The fork server pays that once per plugin: it imports the SDK,
the client package and the plugin's action modules, then waits for requests on stdin and
forks a child for each job. The child becomes an ordinary worker (``run_worker``) in a new
session of its own, runs exactly that one job and exits, so isolation is that of a fresh
process: a crash, ``os._exit``, segfault, memory limit (RLIMIT_DATA, inherited) or hard kill ends
only that child.

The next job's child is forked ahead of its request (the "spare"): it detaches, opens its
channel to the server and waits on a pipe of its own; a request goes to it, and a new spare is
forked once that job's worker has its first event stored (it says so on its acknowledgement
pipe, or closes it by exiting). Fork, process setup and connection are thus off the job's path
twice: before its request, and until its first event. (A spare costs about 10 ms of CPU of its
own until it waits, and the fork server 2-3 ms per fork, measured on the 2-CPU bench machine;
forked right after the hand-off, that ran beside the job's own start, on the same CPUs.) A
request that finds no spare (one that died waiting, or a burst of jobs) forks its child
directly, and the next spare is forked at once.

Nothing that does not survive ``fork`` exists in the fork server: no grpc channel is opened
and no Python thread is started there (the child opens its own channel); a Python thread
found before a fork is logged as an error, since a lock it holds would stay locked in the
child forever. Native library thread pools started at import (numpy's OpenBLAS server, which
torch brings in) stop and restart around ``fork`` through their own fork handlers.

Protocol, one JSON object per line. Requests (server -> fork server, on stdin):

* ``{"op": "fork", "job_id", "credential", "log_file", "environment", "assignment"}``: start
  that job; ``assignment`` (optional) is what GetAssignment would answer, so the worker opens
  its event stream at once instead of asking for it first;
* ``{"op": "kill", "job_id"}``: SIGKILL the job's process group (no-op once it is reaped).

End of input stops new forks; the fork server exits once its last child has been reaped.
Reports (fork server -> server, on the stdout it was started with; the plugin's own prints
go to stderr instead):

* ``{"event": "ready", "pid"}`` once the imports are done;
* ``{"event": "started", "job_id", "pid"}`` after a fork;
* ``{"event": "exited", "job_id", "pid", "returncode"}`` when the child is reaped
  (``returncode`` as ``subprocess`` gives it: negative for a signal);
* ``{"event": "failed", "job_id", "error"}`` when a request could not be carried out.

The credential arrives over the pipe, never in argv, so process listings do not show it.
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import json
import logging
import os
import select
import selectors
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from synapse_sdk.tracing import preload_tracing

from synapse_server.worker._exit import exit_process
from synapse_server.worker._runner import (
    Assignment,
    _die_with_parent,
    _limit_memory,
    open_channel,
    preload_plugin,
    run_worker,
)

__all__ = ["EXIT_CHILD_SETUP", "ForkRequest", "RequestError", "parse_request", "run_zygote"]

logger = logging.getLogger(__name__)

# A forked child that failed before its job started (it never returns into the loop).
EXIT_CHILD_SETUP = 6
# How long a spare child may take to acknowledge its job before one is forked instead.
_SPARE_ACK_SECONDS = 5.0


class RequestError(ValueError):
    """A request line is not a valid fork server request."""


@dataclass(frozen=True, slots=True)
class ForkRequest:
    """What a forked child needs to become the worker of one job."""

    job_id: str
    credential: str
    log_file: str = ""
    environment: dict[str, str] = field(default_factory=dict)
    #: The job's assignment, handed over so that the worker need not ask for it; None: the
    #: worker calls GetAssignment.
    assignment: Assignment | None = None

    def to_line(self) -> bytes:
        """The request as one JSON line."""
        data: dict[str, Any] = {
            "op": "fork",
            "job_id": self.job_id,
            "credential": self.credential,
            "log_file": self.log_file,
            "environment": self.environment,
        }
        if self.assignment is not None:
            data["assignment"] = self.assignment.to_json()
        return json.dumps(data, separators=(",", ":")).encode() + b"\n"


def parse_request(line: bytes) -> ForkRequest | str:
    """A fork request, or the job id of a kill request; RequestError if malformed."""
    try:
        data = json.loads(line)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RequestError(f"request is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise RequestError("request must be a JSON object")
    job_id = data.get("job_id")
    if not isinstance(job_id, str) or not job_id:
        raise RequestError("request has no job_id")
    op = data.get("op")
    if op == "kill":
        return job_id
    if op != "fork":
        raise RequestError(f"unknown request op {op!r}")
    credential = data.get("credential")
    if not isinstance(credential, str) or not credential:
        raise RequestError("fork request has no credential")
    log_file = data.get("log_file") or ""
    environment = data.get("environment") or {}
    if not isinstance(log_file, str):
        raise RequestError("fork request log_file must be a string")
    if not isinstance(environment, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in environment.items()
    ):
        raise RequestError("fork request environment must map strings to strings")
    assignment = None
    if data.get("assignment") is not None:
        try:
            assignment = Assignment.from_json(data["assignment"])
        except ValueError as exc:
            raise RequestError(f"fork request assignment: {exc}") from None
    return ForkRequest(job_id, credential, log_file, dict(environment), assignment)


def _reread_import_time_ray_settings() -> None:
    """Apply the job's environment to what Ray read from it at import, in this fork.

    A preloaded plugin may have imported Ray in the fork server, before any job's
    environment existed. Ray reads ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER`` once, at import:
    a worker forked after that would ignore the server's loopback setting for its own Ray
    head, take the machine's outward IP for 127.0.0.1 and fail to reach a head that listens
    on loopback only. Never imports Ray itself (only the Ray package does).
    """
    constants = sys.modules.get("ray._private.ray_constants")
    value = os.environ.get("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")
    if constants is not None and value is not None:
        # Read as Ray reads it.
        setattr(constants, "ENABLE_RAY_CLUSTER", value.lower() in ("1", "true"))  # noqa: B010


def _preload(plugin_dirs: Sequence[Path], code: str) -> None:
    # Loading a plugin imports its action modules and with them their heavy dependencies;
    # each job's own load later finds them in sys.modules. A plugin that fails here fails the
    # same way when the job loads it, which reports the error properly, so only log it.
    try:
        preload_plugin(plugin_dirs, code)
    except Exception:
        logger.warning("could not preload plugin %r; each job will load it", code, exc_info=True)


def _preload_dataset_runner() -> None:
    # A preloaded plugin takes dataset params: its jobs run the SDK's batch runner, whose
    # pyarrow and Parquet imports (0.1 to 0.3 s) are done once here instead of in each job.
    # pyarrow starts no thread at import (its pools start at first use, in the child). Its
    # first conversion to numpy imports pandas (0.4 to 0.7 s): warm_up() pays that here too.
    try:
        local = importlib.import_module("synapse_sdk.datasets._local")
    except ImportError:
        logger.info("pyarrow is not installed: dataset jobs will fail to read their datasets")
        return
    try:
        local.warm_up()
    except Exception:
        logger.warning("could not warm up the dataset runner; each job will", exc_info=True)


@dataclass(slots=True)
class _Spare:
    pid: int
    request_fd: int
    ack_fd: int


class _Going:
    """In a job's child: tells the fork server, once, that the job's first event is stored."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._lock = threading.Lock()

    def __call__(self) -> None:
        with self._lock:
            if self._fd < 0:
                return
            fd, self._fd = self._fd, -1
        try:
            os.write(fd, b"g")
        except OSError:
            pass  # the fork server is gone; nothing waits for this
        finally:
            os.close(fd)


class _ForkServer:
    def __init__(
        self,
        address: str,
        plugin_dirs: Sequence[Path],
        report_fd: int,
        options: dict[str, Any],
        worker_id: str | None = None,
    ) -> None:
        self._address = address
        self._plugin_dirs = list(plugin_dirs)
        self._report_fd = report_fd
        self._options = options
        self._worker_id = worker_id
        self._selector = selectors.DefaultSelector()
        self._children: dict[int, str] = {}  # pid -> job id, until reaped
        self._pids: dict[str, int] = {}  # job id -> pid, until reaped
        self._buffer = b""
        self._input_open = True
        self._wake_r, self._wake_w = os.pipe()
        # The pre-forked child that takes the next job, and the fork server's ends of its
        # request pipe (-1 once closed) and acknowledgement pipe.
        self._spare: _Spare | None = None
        # The acknowledgement pipe of the child that took the last job from the spare: it
        # becomes readable once that job's first event is stored (or the child is gone),
        # and the next spare is forked then (-1: none pending).
        self._going_fd = -1

    def report(self, **data: Any) -> None:
        line = json.dumps(data, separators=(",", ":")).encode() + b"\n"
        view = memoryview(line)
        while view:
            written = os.write(self._report_fd, view)
            view = view[written:]

    def serve(self, request_fd: int) -> int:
        os.set_blocking(self._wake_w, False)
        os.set_blocking(self._wake_r, False)
        # SIGCHLD only wakes the loop (through the wakeup fd); children are reaped there.
        signal.signal(signal.SIGCHLD, lambda signum, frame: None)
        signal.set_wakeup_fd(self._wake_w)
        self._selector.register(request_fd, selectors.EVENT_READ, "request")
        self._selector.register(self._wake_r, selectors.EVENT_READ, "wake")
        self.report(event="ready", pid=os.getpid())
        self._make_spare()
        while self._input_open or self._children or self._spare is not None:
            for key, _ in self._selector.select(timeout=1.0):
                if key.data == "request":
                    self._read_requests(request_fd)
                elif key.data == "going":
                    self._drop_going()
                    self._make_spare()
                else:
                    with contextlib.suppress(BlockingIOError):
                        while os.read(self._wake_r, 512):
                            pass
            self._reap()
        return 0

    def _read_requests(self, fd: int) -> None:
        data = os.read(fd, 1 << 16)
        if not data:
            self._input_open = False
            self._selector.unregister(fd)
            self._drop_going()
            if self._spare is not None and self._spare.request_fd >= 0:
                # The spare sees the end of its input and exits; it is reaped like a job.
                os.close(self._spare.request_fd)
                self._spare.request_fd = -1
            return
        self._buffer += data
        *lines, self._buffer = self._buffer.split(b"\n")
        for line in lines:
            if line.strip():
                self._handle(line)

    def _handle(self, line: bytes) -> None:
        try:
            request = parse_request(line)
        except RequestError as exc:
            logger.error("fork server: %s", exc)
            self.report(event="failed", job_id="", error=str(exc))
            return
        if isinstance(request, str):
            pid = self._pids.get(request)
            if pid is not None:
                # The child is not reaped yet (this loop reaps), so the pid is still ours.
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL)
            return
        if request.job_id in self._pids:
            self.report(event="failed", job_id=request.job_id, error="job is already running")
            return
        self._fork(request)

    def _fork(self, request: ForkRequest) -> None:
        pid = self._hand_to_spare(request)
        handed = pid is not None
        if pid is None:
            pid = self._fork_child(lambda: self._run_job(request, None))
            if pid is None:
                self.report(event="failed", job_id=request.job_id, error="fork failed")
                return
        self._children[pid] = request.job_id
        self._pids[request.job_id] = pid
        self.report(event="started", job_id=request.job_id, pid=pid)
        if not handed:
            # No spare was waiting (a burst, or it died): the next job must not fork its
            # own child as well, whatever the jobs before it are doing.
            self._drop_going()
            self._make_spare()

    def _drop_going(self) -> None:
        """Stop waiting for the last handed-off job's first event."""
        if self._going_fd >= 0:
            self._selector.unregister(self._going_fd)
            os.close(self._going_fd)
            self._going_fd = -1

    def _fork_child(self, body: Callable[[], int], close: Sequence[int] = ()) -> int | None:
        """Fork a child that runs ``body`` and exits with its code; the child's pid."""
        threads = threading.enumerate()
        if len(threads) > 1:
            logger.error("fork server has Python threads %s; forking anyway", threads)
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError):
                stream.flush()
        try:
            pid = os.fork()
        except OSError as exc:
            logger.error("fork failed: %s", exc)
            return None
        if pid != 0:
            return pid
        code = EXIT_CHILD_SETUP
        try:
            self._detach(close)
            code = body()
        except BaseException:
            logger.exception("forked worker failed")
        finally:
            exit_process(code)

    def _detach(self, close: Sequence[int]) -> None:
        # In the child: drop everything of the fork server's loop, start a session of its own
        # (the server kills the job's whole process group) and die with the fork server.
        os.setsid()
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        self._selector.close()
        fds = [self._wake_r, self._wake_w, self._report_fd, *close]
        if self._going_fd >= 0:
            fds.append(self._going_fd)
        if self._spare is not None:
            fds += [fd for fd in (self._spare.request_fd, self._spare.ack_fd) if fd >= 0]
        for fd in fds:
            os.close(fd)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)
        _die_with_parent(os.getppid())

    def _run_job(
        self, request: ForkRequest, channel: grpc.Channel | None, going: _Going | None = None
    ) -> int:
        if request.log_file:
            try:
                out = os.open(request.log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            except OSError as exc:
                # A full disk must not stop the job: its output is dropped (never left on
                # the fork server's stdout, which carries its reports) and the reason stays
                # in the fork server's log.
                logger.warning("job %s: cannot open its log (%s)", request.job_id, exc)
                out = os.open(os.devnull, os.O_WRONLY)
                os.dup2(out, 1)
            else:
                os.dup2(out, 1)
                os.dup2(out, 2)
            os.close(out)
        os.environ.update(request.environment)
        _reread_import_time_ray_settings()
        return run_worker(
            self._address,
            request.job_id,
            request.credential,
            plugin_dirs=self._plugin_dirs,
            channel=channel,
            assignment=request.assignment,
            worker_id=f"{self._worker_id}-{os.getpid()}" if self._worker_id else None,
            on_first_event_stored=going,
            **self._options,
        )

    def _make_spare(self) -> None:
        """Fork the next job's child ahead of its request (one at a time)."""
        if self._spare is not None or not self._input_open:
            return
        request_r, request_w = os.pipe()
        ack_r, ack_w = os.pipe()
        pid = self._fork_child(lambda: self._spare_main(request_r, ack_w), close=[request_w, ack_r])
        os.close(request_r)
        os.close(ack_w)
        if pid is None:
            os.close(request_w)
            os.close(ack_r)
            return
        self._spare = _Spare(pid, request_w, ack_r)

    def _spare_main(self, request_fd: int, ack_fd: int) -> int:
        # The spare connects to the server before its job exists, then waits for the job's
        # request on its pipe; end of input (the fork server closing) ends it without a job.
        channel = open_channel(
            self._address, self._options["root_certificates"], self._options["server_name"]
        )
        # Connects in grpc's background threads while this one waits for the request; the
        # job's first call waits for the connection if it is not up yet.
        ready = grpc.channel_ready_future(channel)
        data = b""
        while not data.endswith(b"\n"):
            chunk = os.read(request_fd, 1 << 16)
            if not chunk:
                ready.cancel()
                channel.close()
                return 0
            data += chunk
        os.close(request_fd)
        os.write(ack_fd, b"+")  # the job is this process's now
        request = parse_request(data)
        if not isinstance(request, ForkRequest):
            raise RequestError("a spare worker got no fork request")
        # The same pipe then tells the fork server when to fork the next spare; the
        # process's exit closes it in any case. The channel is left open on purpose: the
        # process ends at once (exit_process), and closing it first would wait for the
        # connectivity watch channel_ready_future keeps in flight (up to 0.2 s each):
        # measured 20-190 ms after the job's outcome was stored, with its worker slot still
        # taken, so a job submitted behind it waited as long to start. By then the server
        # has acknowledged everything the job sent.
        return self._run_job(request, channel, _Going(ack_fd))

    def _hand_to_spare(self, request: ForkRequest) -> int | None:
        """Give ``request`` to the waiting spare child; its pid, or None if there is none.

        The spare acknowledges the request: one that died waiting (its pipe may still
        accept the request while its threads exit) never does, and the job is then forked
        directly instead of being reported as a worker killed before it started.
        """
        spare, self._spare = self._spare, None
        if spare is None:
            return None
        self._drop_going()
        taken = b""
        try:
            view = memoryview(request.to_line())
            while view:
                view = view[os.write(spare.request_fd, view) :]
            os.close(spare.request_fd)
            spare.request_fd = -1
            ready, _, _ = select.select([spare.ack_fd], [], [], _SPARE_ACK_SECONDS)
            if ready:
                taken = os.read(spare.ack_fd, 1)
        except OSError:
            pass
        finally:
            if spare.request_fd >= 0:
                os.close(spare.request_fd)
            if not taken:
                os.close(spare.ack_fd)
        if taken:
            # Its next byte (or end of file) says the job's first event is stored.
            self._going_fd = spare.ack_fd
            self._selector.register(spare.ack_fd, selectors.EVENT_READ, "going")
            return spare.pid
        logger.warning("spare worker pid %d did not take the job; forking one", spare.pid)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(spare.pid, signal.SIGKILL)
        return None

    def _reap(self) -> None:
        while self._children or self._spare is not None:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            job_id = self._children.pop(pid, None)
            if job_id is None:
                if self._spare is not None and self._spare.pid == pid:
                    # A spare that died waiting: the next job is forked directly.
                    if self._spare.request_fd >= 0:
                        logger.warning("spare worker pid %d exited (%s)", pid, status)
                        os.close(self._spare.request_fd)
                    os.close(self._spare.ack_fd)
                    self._spare = None
                continue
            self._pids.pop(job_id, None)
            returncode = os.waitstatus_to_exitcode(status)
            self.report(event="exited", job_id=job_id, pid=pid, returncode=returncode)


def run_zygote(
    address: str,
    *,
    plugin_dirs: Sequence[Path],
    preload: Sequence[str] = (),
    memory_limit_mb: int | None = None,
    parent_pid: int | None = None,
    root_certificates: bytes | None = None,
    server_name: str | None = None,
    worker_id: str | None = None,
) -> int:
    """Import ``preload`` plugins once, then fork a worker per request read from stdin.

    Reports go to the stdout this process was started with; from here on file descriptor 1
    is the standard error, so output of plugin code at import cannot corrupt them. Returns
    0 once the input has ended and every child has been reaped. ``worker_id``: each child
    names itself ``<worker_id>-<its pid>`` to the server (default: ``local-<pid>-...``).
    """
    if parent_pid is not None:
        _die_with_parent(parent_pid)
    if memory_limit_mb:
        _limit_memory(memory_limit_mb)
    sys.stdout.flush()
    report_fd = os.dup(1)
    os.dup2(2, 1)
    # Every job builds a platform model backend, which imports the client package: done
    # once here rather than in every child.
    importlib.import_module("synapse_client")
    # With tracing on, each job's worker installs an exporter: its imports are done here.
    preload_tracing()
    for code in preload:
        _preload(plugin_dirs, code)
    if "synapse_sdk.datasets" in sys.modules:
        _preload_dataset_runner()
    # Everything imported so far lives as long as this process and every child: the
    # collector need not traverse it again, and children do not dirty (copy) its pages by
    # updating its collector bookkeeping.
    gc.collect()
    gc.freeze()
    options: dict[str, Any] = {
        "root_certificates": root_certificates,
        "server_name": server_name,
        # The children inherit the limit; they need its value to report a job that hits it.
        "memory_limit_mb": memory_limit_mb,
    }
    server = _ForkServer(address, plugin_dirs, report_fd, options, worker_id)
    return server.serve(sys.stdin.fileno())
