"""The worker: runs one job's action and reports its events to the server over WorkerService.

The same code runs in a local worker process and (later) in a Ray task on another machine; all
it needs is the server address, the job id and the job-scoped credential. Events are numbered
by the worker (``worker_seq``) and kept until the server acknowledges them, so after a broken
stream the worker reconnects and resends only what the server has not stored.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import logging
import mmap
import os
import re
import resource
import signal
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import yaml
from google.protobuf import json_format
from synapse.plugin.v1 import job_pb2, worker_service_pb2, worker_service_pb2_grpc
from synapse_sdk.errors import (
    ActionCancelledError,
    ActionFailedError,
    PluginNotFoundError,
)
from synapse_sdk.events import ErrorInfo, Event
from synapse_sdk.jsonutil import dump_json, gc_paused
from synapse_sdk.models import PlatformModelBackend
from synapse_sdk.plugins import (
    Plugin,
    load_plugin,
    params_model,
    run_action,
    validate_params_json,
)
from synapse_sdk.runtime import PlatformInfo, RunContext
from synapse_sdk.tracing import (
    ATTR_ACTION,
    ATTR_JOB_ID,
    ATTR_JOB_MODE,
    ATTR_PLUGIN,
    extract_context,
    inject_headers,
    install_global_tracing,
)

from synapse_server.core._memory import (
    EXIT_OUT_OF_MEMORY,
    MEMORY_LIMIT_ERROR,
    memory_limit_message,
)
from synapse_server.grpc._converters import error_info_to_pb, sdk_event_to_worker_pb
from synapse_server.telemetry import bind_log_context
from synapse_server.worker._datasets import WorkerDatasets
from synapse_server.worker._ray_batch import batch_runner_for

if TYPE_CHECKING:
    from opentelemetry.context import Context

__all__ = ["Assignment", "WorkerError", "run_worker"]

logger = logging.getLogger(__name__)

_CHUNK = 1 << 20
# Limits of one WorkerEventBatch message (see _batches).
_BATCH_EVENTS = 256
_BATCH_BYTES = 1 << 20
# Progress events wait up to this long to be sent together with the ones that follow them
# (logs, results and the finish go out at once; a sender idle for longer sends at once
# too). An action that reports after every batch would otherwise wake the sending thread
# once per event, and the thread switches cost the action's own thread a third of its
# compute time (measured: 391 progress events of a 100k-input batch job, 0.72 s of
# inference instead of 0.50 s).
PROGRESS_FLUSH_SECONDS = 0.05
# While progress events wait, at most this many in a row of one category are kept; a newer
# one then supersedes the latest waiting one (progress may be coalesced, logs never are).
# Short bursts arrive complete; a flood (one event per batch of a 100k-input job: 391 in half
# a second) costs a gRPC message, a stored row and a client event per kept event only.
PROGRESS_KEEP = 4
# How long a finished worker waits for its last spans to be exported.
_SPAN_FLUSH_MILLIS = 3000
_MODES = {job_pb2.RUN_MODE_LOCAL: "local", job_pb2.RUN_MODE_TASK: "task"}
# Net allocations between young-generation collections while the action runs.
YOUNG_GC_THRESHOLD = 20_000
# RESOURCE_EXHAUSTED: the server could not store the events (its disk is full); it keeps
# nothing of a refused batch, so the batch is sent again until the server takes it. As with
# any answer, the server accepting the reopened stream restarts the reconnect budget.
_RETRYABLE = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    }
)

EXIT_OK = 0
EXIT_LOST_SERVER = 3
EXIT_REFUSED = 4
# Held while the job runs and given back when it runs out of memory, so that the worker can
# still build and send its report (a failed allocation leaves it at its limit).
_RESERVE_BYTES = 8 << 20
# torch's CPU allocator raises a RuntimeError, not a MemoryError, when an allocation fails.
_ALLOCATION_FAILED = re.compile(r"DefaultCPUAllocator: (can't allocate memory|not enough memory)")


class WorkerError(Exception):
    """The worker could not talk to the server (or the server refused the job)."""


class _EventReporter:
    """EventSink that streams a job's events to the server, resending after reconnects.

    Events are sent in order; progress events are held back for at most
    ``progress_flush_seconds`` so that a burst of them costs one wake-up of the sending
    thread and reaches the server as one batch. Of a run of more than ``PROGRESS_KEEP``
    waiting progress events of one category, the newest replaces the latest waiting one
    (same ``worker_seq``, so numbering stays gap-free); an event already sent is never
    replaced, and the last progress before any other event is always delivered.
    """

    def __init__(
        self,
        stub: worker_service_pb2_grpc.WorkerServiceStub,
        job_id: str,
        worker_id: str,
        metadata: Sequence[tuple[str, str]],
        reconnect_seconds: float,
        progress_flush_seconds: float = PROGRESS_FLUSH_SECONDS,
        on_first_event_stored: Callable[[], None] | None = None,
    ) -> None:
        """``on_first_event_stored``: called once, on the reporter's thread, when the server
        has acknowledged the job's first event (or the stream has ended without)."""
        self._stub = stub
        self._job_id = job_id
        self._worker_id = worker_id
        self._metadata = tuple(metadata)
        self._reconnect_seconds = reconnect_seconds
        self._cond = threading.Condition()
        self._buffer: list[worker_service_pb2.WorkerEvent] = []
        self._next_seq = 1
        self._acked = 0
        self._finished_queued = False
        self._flush_seconds = progress_flush_seconds
        # Sequence number of the latest event that must go out without waiting (0: none).
        self._urgent_seq = 0
        # When the sending thread last sent; and whether it waits for events at all (only
        # then does a progress event wake it).
        self._last_flush = 0.0
        self._sender_idle = False
        # Highest worker_seq ever handed to a stream (never lowered by a reconnect), and
        # the run of waiting progress events of one category at the end of the buffer.
        self._sent_seq = 0
        self._tail_category: str | None = None
        self._tail_run = 0
        self.done = threading.Event()
        # Set once the server has accepted the stream (the job is RUNNING there); ``_settled``
        # also when the stream failed for good, so that a waiter never waits forever.
        self.opened = threading.Event()
        self._settled = threading.Event()
        self.error: BaseException | None = None
        self.cancel_event = threading.Event()
        self._first_event_stored = on_first_event_stored
        self._thread = threading.Thread(target=self._run, name="event-reporter", daemon=True)

    def start(self) -> None:
        """Open the stream in the background."""
        self._thread.start()

    def emit(self, event: Event) -> None:
        """EventSink: queue an SDK event (never raises)."""
        try:
            # Built before taking the lock; numbered under it.
            self._add(sdk_event_to_worker_pb(event, 0))
        except Exception:
            logger.exception("could not report event %r", event)

    def _add(self, message: worker_service_pb2.WorkerEvent) -> None:
        progress = message.HasField("progress")
        with self._cond:
            if self._finished_queued:
                return
            message.worker_seq = self._next_seq
            if not progress:
                self._tail_run = 0
            else:
                category = message.progress.category
                if not self._buffer or self._buffer[-1].worker_seq <= self._sent_seq:
                    self._tail_run = 0  # the run was sent meanwhile
                if self._tail_run and category == self._tail_category:
                    if self._tail_run >= PROGRESS_KEEP:
                        # Supersede the latest waiting event of the run, in its place.
                        message.worker_seq = self._buffer[-1].worker_seq
                        self._buffer[-1] = message
                        return
                    self._tail_run += 1
                else:
                    self._tail_category, self._tail_run = category, 1
            self._next_seq += 1
            self._buffer.append(message)
            if not progress:
                self._urgent_seq = message.worker_seq
                self._cond.notify_all()
            elif self._sender_idle:
                # The sender waits for events, not for its flush time: start its clock.
                self._cond.notify_all()

    def finish(
        self,
        state: job_pb2.JobState,
        error: job_pb2.JobError | None = None,
        result: bytes = b"",
    ) -> None:
        """Queue the result chunks and the finish.

        All messages are built first and queued at once: the sending thread wakes once, not
        once per chunk while this thread still builds the next one.
        """
        messages: list[worker_service_pb2.WorkerEvent] = []
        for offset in range(0, len(result), _CHUNK):
            message = worker_service_pb2.WorkerEvent()
            message.result_chunk.offset = offset
            message.result_chunk.data = result[offset : offset + _CHUNK]
            messages.append(message)
        message = worker_service_pb2.WorkerEvent()
        message.finished.state = state
        message.finished.result_size_bytes = len(result)
        if error is not None:
            message.finished.error.CopyFrom(error)
        messages.append(message)
        with self._cond:
            if self._finished_queued:
                return
            for message in messages:
                message.worker_seq = self._next_seq
                self._next_seq += 1
            self._buffer.extend(messages)
            self._finished_queued = True
            self._tail_run = 0
            self._urgent_seq = messages[-1].worker_seq
            self._cond.notify_all()

    def wait_opened(self) -> bool:
        """Wait until the server has accepted the stream; False when it never will.

        The action starts only then: until the server has marked the job RUNNING it may still
        decide to run it later instead (a shutdown keeps jobs that have not started PENDING),
        and the action must not have run by then.
        """
        self._settled.wait()
        return self.opened.is_set()

    def wait(self, timeout: float | None) -> bool:
        """Wait until the server stored the finish (True) or the stream failed for good."""
        self._thread.join(timeout)
        return self.done.is_set() and self.error is None

    def _requests(
        self, resume: threading.Event, stop: threading.Event
    ) -> Iterator[worker_service_pb2.ReportEventsRequest]:
        yield worker_service_pb2.ReportEventsRequest(
            open=worker_service_pb2.ReportEventsOpen(job_id=self._job_id, worker_id=self._worker_id)
        )
        while not resume.wait(0.2):
            if stop.is_set():
                return
        sent = self._acked
        while True:
            with self._cond:
                while not stop.is_set():
                    if not self._buffer or self._buffer[-1].worker_seq <= sent:
                        self._sender_idle = True
                        self._cond.wait(0.2)
                        continue
                    self._sender_idle = False
                    wait = self._last_flush + self._flush_seconds - time.monotonic()
                    if self._urgent_seq > sent or wait <= 0:
                        break
                    self._cond.wait(wait)
                self._sender_idle = False
                if stop.is_set():
                    return
                self._last_flush = time.monotonic()
                pending = [m for m in self._buffer if m.worker_seq > sent]
                self._sent_seq = max(self._sent_seq, pending[-1].worker_seq)
            for group in _batches(pending):
                yield worker_service_pb2.ReportEventsRequest(
                    events=worker_service_pb2.WorkerEventBatch(events=group)
                )
                sent = group[-1].worker_seq
            if pending[-1].HasField("finished"):
                return

    def _run(self) -> None:
        try:
            self._stream()
        except BaseException as exc:
            # Out of memory (or a bug) in this thread: the job cannot be reported any more.
            logger.exception("event reporter failed")
            self.error = exc
            self.cancel_event.set()
            self.done.set()
        finally:
            self._settled.set()
            self._notify_first_event_stored()

    def _notify_first_event_stored(self) -> None:
        callback, self._first_event_stored = self._first_event_stored, None
        if callback is not None:
            callback()

    def _stream(self) -> None:
        deadline = time.monotonic() + self._reconnect_seconds
        delay = 0.1
        while True:
            resume, stop = threading.Event(), threading.Event()
            try:
                responses = self._stub.ReportEvents(
                    self._requests(resume, stop), metadata=self._metadata
                )
                for response in responses:
                    with self._cond:
                        self._acked = max(self._acked, response.acked_worker_seq)
                        self._buffer = [m for m in self._buffer if m.worker_seq > self._acked]
                        self._cond.notify_all()
                    if response.cancel_requested:
                        self.cancel_event.set()
                    if response.acked_worker_seq >= 1:
                        self._notify_first_event_stored()
                    resume.set()
                    self.opened.set()
                    self._settled.set()
                    # Any answer proves the server is back: restart the reconnect budget.
                    deadline = time.monotonic() + self._reconnect_seconds
                stop.set()
                self.done.set()
                return
            except grpc.RpcError as exc:
                stop.set()
                code = exc.code() if isinstance(exc, grpc.Call) else None
                if code in _RETRYABLE and time.monotonic() < deadline:
                    details = exc.details() if isinstance(exc, grpc.Call) else ""
                    logger.warning("event stream broken (%s: %s); reconnecting", code, details)
                    time.sleep(delay)
                    delay = min(delay * 2, 2.0)
                    continue
                self.error = exc
                # Without a server nobody can see the job; stop the action.
                self.cancel_event.set()
                self.done.set()
                return


# Plugins this process loaded before its job (a fork server's preload, inherited by its
# children), by code: a job of one of them skips finding and parsing its config again.
_preloaded: dict[str, Plugin] = {}


def _batches(
    messages: Sequence[worker_service_pb2.WorkerEvent],
) -> Iterator[list[worker_service_pb2.WorkerEvent]]:
    """Consecutive groups of at most ``_BATCH_EVENTS`` events and about ``_BATCH_BYTES``.

    A message bigger than that (a result chunk) travels alone; messages stay far below the
    server's receive limit either way.
    """
    group: list[worker_service_pb2.WorkerEvent] = []
    size = 0
    for message in messages:
        message_size = message.ByteSize()
        if group and (len(group) >= _BATCH_EVENTS or size + message_size > _BATCH_BYTES):
            yield group
            group, size = [], 0
        group.append(message)
        size += message_size
    if group:
        yield group


def preload_plugin(plugin_dirs: Sequence[Path], code: str) -> Plugin:
    """Load plugin ``code`` (importing its action modules) and keep it for this process's jobs."""
    plugin = _find_plugin(plugin_dirs, code, "")
    _preloaded[code] = plugin
    return plugin


def _find_plugin(plugin_dirs: Sequence[Path], code: str, version: str) -> Plugin:
    plugin = _preloaded.get(code)
    if plugin is not None and (not version or plugin.version == version):
        return plugin
    for root in plugin_dirs:
        if not root.is_dir():
            continue  # a plugin dir this machine lacks: the plugin is not found here, below
        candidates = [root] if (root / "config.yaml").is_file() else sorted(root.iterdir())
        for directory in candidates:
            config = directory / "config.yaml"
            if not config.is_file():
                continue
            raw = yaml.safe_load(config.read_text(encoding="utf-8"))
            if isinstance(raw, dict) and str(raw.get("code")) == code:
                plugin = load_plugin(directory)
                if version and plugin.version != version:
                    raise PluginNotFoundError(
                        f"plugin {code!r} is at version {plugin.version}, the job needs {version}"
                    )
                return plugin
    raise PluginNotFoundError(f"plugin {code!r} is not installed on this worker")


def _check_code(plugin: Plugin, sha256: str) -> None:
    """Refuse to run a job on other plugin code than the snapshot it was validated against.

    The server hands a worker the directory of that snapshot (or, on a Ray node, the copy
    unpacked from it), and both are named by the code's digest. A mismatch is a platform
    fault: running the job anyway would run code its params were never checked against.
    """
    if not sha256:
        return  # a job stored before digests were recorded
    held = plugin.path.name if plugin.path is not None else ""
    if held != sha256:
        raise PluginNotFoundError(
            f"this worker holds other code of plugin {plugin.code!r} "
            f"({held[:12] or 'not a snapshot'}) than the job was submitted with ({sha256[:12]})"
        )


#: pyarrow's allocator for a worker under a memory limit (see _limit_memory).
ARROW_POOL_ENV = "ARROW_DEFAULT_MEMORY_POOL"


def _limit_memory(limit_mb: int) -> None:
    # The data segment (heap, private anonymous mappings, thread stacks), not the address
    # space: see synapse_server.core._memory.
    limit = limit_mb * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))
    # pyarrow's default allocator (mimalloc) reserves about 1 GiB of address space on first
    # use, and the kernel counts a reservation as data: a dataset job under a limit of that
    # order would fail to read its first batch ("Failed to launch worker thread"). The
    # system allocator takes what it uses (measured: 25 MB of data to read a Parquet file
    # batch by batch, against 1.07 GB with mimalloc).
    os.environ.setdefault(ARROW_POOL_ENV, "system")
    if "pyarrow" in sys.modules:  # already imported (a preloaded plugin): switch it now
        import pyarrow

        pyarrow.set_memory_pool(pyarrow.system_memory_pool())


def is_out_of_memory(exc: BaseException) -> bool:
    """True when ``exc``, or an exception it was raised from, is a failed allocation."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, MemoryError):
            return True
        if isinstance(current, RuntimeError) and _ALLOCATION_FAILED.search(str(current)):
            return True
        current = current.__cause__ or current.__context__
    return False


class _MemoryGuard:
    """What a worker does when its job runs out of memory."""

    def __init__(self, limit_mb: int | None) -> None:
        self.limit_mb = limit_mb
        # Mapped, never touched: the limit (RLIMIT_DATA) counts a private writable mapping
        # whole at once, so unmapping it gives that room back. A bytearray of the same size
        # is zero-filled page by page: 4 ms per job on the path to its first event.
        self._reserve: mmap.mmap | None = None
        if limit_mb:
            self._reserve = mmap.mmap(
                -1, _RESERVE_BYTES, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS
            )

    def release(self) -> None:
        """Give the reserve back, making room for the report."""
        reserve, self._reserve = self._reserve, None
        if reserve is not None:
            reserve.close()

    def error(self, info: ErrorInfo, step: str = "") -> job_pb2.JobError:
        """The job's error for an out-of-memory failure described by ``info``.

        Under a limit: MemoryLimitExceeded with the limit (the plugin's traceback kept, it
        says where the memory went). Without one (Ray modes, or turned off) the error keeps its
        type, and a MemoryError without a message gets one.
        """
        self.release()
        if self.limit_mb:
            info = ErrorInfo(
                type=MEMORY_LIMIT_ERROR,
                message=memory_limit_message(self.limit_mb),
                traceback=info.traceback,
            )
        elif not info.message:
            info = ErrorInfo(type=info.type, message="out of memory", traceback=info.traceback)
        return error_info_to_pb(info, step)


_MODE_NAMES = {
    "local": job_pb2.RUN_MODE_LOCAL,
    "task": job_pb2.RUN_MODE_TASK,
    "job": job_pb2.RUN_MODE_JOB,
}


@dataclass(frozen=True)
class Assignment:
    """What a worker must run, handed over with its fork request (JSON) instead of asked for.

    The fields of GetAssignment's answer: a worker that has one opens its event stream at
    once, one round trip earlier on the way to the job's first event. The server still
    decides at that open whether the job runs (as it does for a worker that asked).
    """

    plugin: str
    action: str
    params_json: str
    plugin_version: str = ""
    plugin_sha256: str = ""
    mode: str = "local"
    cancel_requested: bool = False
    #: The trace context the worker's span continues (empty when untraced).
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_json(cls, data: Any) -> Assignment:
        """The assignment in a fork request; ``ValueError`` naming what is wrong."""
        if not isinstance(data, dict):
            raise ValueError("must be a JSON object")
        values: dict[str, Any] = {}
        for name in ("plugin", "action", "params_json", "plugin_version", "plugin_sha256", "mode"):
            value = data.get(name, "")
            if not isinstance(value, str):
                raise ValueError(f"{name} must be a string")
            values[name] = value
        if not values["plugin"] or not values["action"]:
            raise ValueError("plugin and action are required")
        if values["mode"] not in _MODE_NAMES:
            raise ValueError(f"unknown mode {values['mode'][:16]!r}")
        cancel = data.get("cancel_requested", False)
        headers = data.get("headers") or {}
        if not isinstance(cancel, bool):
            raise ValueError("cancel_requested must be true or false")
        if not isinstance(headers, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in headers.items()
        ):
            raise ValueError("headers must map strings to strings")
        return cls(**values, cancel_requested=cancel, headers=dict(headers))

    def to_json(self) -> dict[str, Any]:
        return {
            "plugin": self.plugin,
            "action": self.action,
            "params_json": self.params_json,
            "plugin_version": self.plugin_version,
            "plugin_sha256": self.plugin_sha256,
            "mode": self.mode,
            "cancel_requested": self.cancel_requested,
            "headers": dict(self.headers),
        }

    def to_pb(self, job_id: str) -> worker_service_pb2.GetAssignmentResponse:
        """The same as GetAssignment's answer for job ``job_id``."""
        return worker_service_pb2.GetAssignmentResponse(
            job_id=job_id,
            plugin=self.plugin,
            plugin_version=self.plugin_version,
            plugin_sha256=self.plugin_sha256,
            action=self.action,
            params_json=self.params_json.encode(),
            mode=_MODE_NAMES[self.mode],
            cancel_requested=self.cancel_requested,
            headers=self.headers,
        )


def _die_with_parent(parent_pid: int) -> None:
    # Linux: the kernel kills this worker when the server process dies (even by SIGKILL), so a
    # crashed server leaves no orphan running plugin code.
    pr_set_pdeathsig = 1
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL)
    except (OSError, AttributeError):
        logger.warning("cannot arrange to die with the server; continuing")
    if os.getppid() != parent_pid:
        os._exit(EXIT_LOST_SERVER)


def open_channel(
    address: str, root_certificates: bytes | None, server_name: str | None
) -> grpc.Channel:
    """A channel to the server's WorkerService (TLS when ``root_certificates`` is given)."""
    # Unlimited here: what the server sends (an assignment with its params) is bounded by
    # the server's own max_message_bytes, which an operator may raise past any fixed value.
    options: list[tuple[str, Any]] = [("grpc.max_receive_message_length", -1)]
    if root_certificates is None:
        return grpc.insecure_channel(address, options=options)
    if server_name:
        options.append(("grpc.ssl_target_name_override", server_name))
    credentials = grpc.ssl_channel_credentials(root_certificates=root_certificates)
    return grpc.secure_channel(address, credentials, options=options)


def run_worker(
    address: str,
    job_id: str,
    credential: str,
    *,
    plugin_dirs: Sequence[Path],
    root_certificates: bytes | None = None,
    server_name: str | None = None,
    worker_id: str | None = None,
    memory_limit_mb: int | None = None,
    reconnect_seconds: float = 10.0,
    parent_pid: int | None = None,
    channel: grpc.Channel | None = None,
    assignment: Assignment | None = None,
    on_first_event_stored: Callable[[], None] | None = None,
) -> int:
    """Run job ``job_id`` to the end and report it; returns the process exit code.

    ``address`` is the server's WorkerService (``host:port`` or ``unix:/path``);
    ``credential`` the job-scoped token the server minted. Failures of the action are reported
    as the job's outcome (exit code 0); a server that is gone or refuses the job gives a
    non-zero code. ``channel``, when given, is a channel to ``address`` opened ahead of the
    job, and stays its caller's to close; otherwise one is opened here and closed at the end.
    ``assignment``, when given (a fork server hands it over), is the job's, and the server
    is not asked for it. ``on_first_event_stored`` is called once the server has stored the
    job's first event (a fork server forks its next spare worker then, see ``_zygote``), or
    once the job's event stream has ended without.
    """
    if parent_pid is not None:
        _die_with_parent(parent_pid)
    if memory_limit_mb:
        _limit_memory(memory_limit_mb)
    memory = _MemoryGuard(memory_limit_mb)
    worker_id = worker_id or f"local-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    metadata = [("authorization", f"Bearer {credential}")]
    bind_log_context(job_id=job_id)
    own_channel = channel is None
    if channel is None:
        channel = open_channel(address, root_certificates, server_name)
    with contextlib.ExitStack() as cleanup:
        if own_channel:
            cleanup.callback(channel.close)
        stub = worker_service_pb2_grpc.WorkerServiceStub(channel)
        if assignment is not None:
            job = assignment.to_pb(job_id)
        else:
            try:
                job = stub.GetAssignment(
                    worker_service_pb2.GetAssignmentRequest(job_id=job_id, worker_id=worker_id),
                    metadata=metadata,
                    timeout=30,
                    wait_for_ready=True,
                )
            except grpc.RpcError as exc:
                logger.error("job %s: the server refused the assignment: %s", job_id, exc)
                return EXIT_REFUSED
        # Spans as the server's OTEL_* variables say (handed on to this process), under the
        # job's trace context: none at all where the sampler would record none under it. The
        # last ones are exported before the process exits.
        parent = extract_context(dict(job.headers))
        provider = install_global_tracing("worker", only_under=parent)
        if provider is not None:
            cleanup.callback(provider.force_flush, _SPAN_FLUSH_MILLIS)
        cleanup.enter_context(_job_span(job, parent, metadata))
        reporter = _EventReporter(
            stub,
            job_id,
            worker_id,
            metadata,
            reconnect_seconds,
            on_first_event_stored=on_first_event_stored,
        )
        reporter.start()
        if job.cancel_requested:
            reporter.finish(job_pb2.JOB_STATE_CANCELLED)
        else:
            try:
                _execute(
                    job,
                    reporter,
                    address,
                    credential,
                    root_certificates,
                    plugin_dirs,
                    memory,
                    (stub, metadata),
                )
            except MemoryError as exc:
                # Out of memory outside the action's own error handling (its result, say).
                reporter.finish(
                    job_pb2.JOB_STATE_FAILED, memory.error(ErrorInfo.from_exception(exc))
                )
        if not reporter.wait(timeout=None):
            logger.error("job %s: could not report the outcome: %s", job_id, reporter.error)
            if isinstance(reporter.error, MemoryError):
                return EXIT_OUT_OF_MEMORY
            return EXIT_LOST_SERVER
    return EXIT_OK


@contextlib.contextmanager
def _job_span(
    assignment: worker_service_pb2.GetAssignmentResponse,
    parent: Context | None,
    metadata: list[tuple[str, str]],
) -> Iterator[None]:
    """The worker's span for the job, the child of the server's job span (``parent``, from
    the assignment's headers); the reports then carry its context, so their RPCs join the
    trace too."""
    if parent is None:
        yield
        return
    from opentelemetry import trace

    attributes = {
        ATTR_JOB_ID: assignment.job_id,
        ATTR_PLUGIN: assignment.plugin,
        ATTR_ACTION: assignment.action,
        ATTR_JOB_MODE: _MODES.get(assignment.mode, "job"),
    }
    with trace.get_tracer("synapse_server.worker").start_as_current_span(
        f"run {assignment.plugin}/{assignment.action}", context=parent, attributes=attributes
    ):
        metadata.extend(inject_headers({}).items())
        yield


def _execute(
    assignment: worker_service_pb2.GetAssignmentResponse,
    reporter: _EventReporter,
    address: str,
    credential: str,
    root_certificates: bytes | None,
    plugin_dirs: Sequence[Path],
    memory: _MemoryGuard,
    worker_service: tuple[worker_service_pb2_grpc.WorkerServiceStub, Sequence[tuple[str, str]]],
) -> None:
    platform = PlatformInfo(
        address=address,
        token=credential,
        tls=root_certificates is not None,
        root_certificates=root_certificates,
    )
    # Dataset references resolve as the job's tenant; outputs go up staged (kept if the job
    # succeeds). Its scratch directory is removed when the job is done, however it ended.
    datasets = WorkerDatasets(platform, assignment.job_id, *worker_service)
    try:
        _execute_with(assignment, reporter, platform, datasets, plugin_dirs, memory)
    finally:
        datasets.close()


def _execute_with(
    assignment: worker_service_pb2.GetAssignmentResponse,
    reporter: _EventReporter,
    platform: PlatformInfo,
    datasets: WorkerDatasets,
    plugin_dirs: Sequence[Path],
    memory: _MemoryGuard,
) -> None:
    ctx = RunContext(
        sink=reporter,
        cancel_event=reporter.cancel_event,
        job_id=assignment.job_id,
        plugin_code=assignment.plugin,
        action_name=assignment.action,
        platform=platform,
        # On Ray, map_batches runs as a Ray Data pipeline over the cluster.
        batch_runner=batch_runner_for(_MODES.get(assignment.mode, "job")),
        # Model downloads go through the platform (works without a shared file system).
        model_backend=PlatformModelBackend.from_platform(platform),
        mode=_MODES.get(assignment.mode, "job"),
        datasets=datasets,
    )
    try:
        # This process runs this one job and then exits, so everything alive once the params
        # are validated (imports, the params) lives until the end anyway. Freezing it takes
        # it out of the cyclic collector's full passes, which otherwise re-traverse all of it
        # again and again while the action allocates its results (measured: a quarter of the
        # compute time of the 100k-input batch example). Collection stays paused from the
        # parse to the freeze, so the new objects skip even the one young-generation pass.
        with gc_paused():
            plugin = _find_plugin(plugin_dirs, assignment.plugin, assignment.plugin_version)
            _check_code(plugin, assignment.plugin_sha256)
            action_cls = plugin.get_action_class(assignment.action)
            # Validated here rather than inside run_action so that the params can be frozen
            # below in their validated form; run_action takes the model instance as it is.
            # Parsed and validated in one pass from the text (the server keeps only text).
            params = validate_params_json(
                params_model(action_cls),
                assignment.params_json or dump_json(json_format.MessageToDict(assignment.params)),
                assignment.action,
            )
            gc.freeze()
            # A young-generation pass every 700 net allocations (the default) is tuned for
            # long-running programs; an action that builds a large result (one dict and one
            # list per item) pays for hundreds of them. Cyclic garbage is still collected,
            # every YOUNG_GC_THRESHOLD allocations (measured: 100k-input batch inference in a
            # forked worker 0.50 s -> 0.47 s).
            gc.set_threshold(YOUNG_GC_THRESHOLD, *gc.get_threshold()[1:])
        if not reporter.wait_opened():
            return  # the server did not take the job: nothing of the action may run
        if reporter.cancel_event.is_set():
            # Cancelled before its stream opened (after the assignment was made, which an
            # assignment handed over with the fork request makes likelier): nothing runs.
            reporter.finish(job_pb2.JOB_STATE_CANCELLED)
            return
        result = run_action(action_cls, params, ctx)
    except ActionCancelledError:
        reporter.finish(job_pb2.JOB_STATE_CANCELLED)
    except ActionFailedError as exc:
        if is_out_of_memory(exc):
            error = memory.error(exc.error, exc.step or "")
        else:
            error = error_info_to_pb(exc.error, exc.step or "")
        reporter.finish(job_pb2.JOB_STATE_FAILED, error)
    except PluginNotFoundError as exc:
        # This worker lacks the plugin (or has another version): the platform's failure.
        info = ErrorInfo.from_exception(exc)
        reporter.finish(job_pb2.JOB_STATE_FAILED, error_info_to_pb(info, plugin=False))
    except Exception as exc:
        # Importing the plugin's code or validating its params failed: the plugin's side.
        info = ErrorInfo.from_exception(exc)
        error = memory.error(info) if is_out_of_memory(exc) else error_info_to_pb(info)
        reporter.finish(job_pb2.JOB_STATE_FAILED, error)
    else:
        # run_action returns plain JSON data, which dump_json writes as json.dumps would.
        # A MemoryError here (a result too big for the limit) is reported by run_worker.
        payload = dump_json(result)
        reporter.finish(job_pb2.JOB_STATE_SUCCEEDED, result=payload)
