"""Transport-neutral job logic shared by the sync and async clients.

Both clients do the same I/O in two flavours; what to send, how to resume a stream, and how
to turn a terminal event into a result or an exception is decided here, once.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Generic, TypeVar

from synapse.plugin.v1 import action_service_pb2, job_event_pb2

from ._config import RetryPolicy
from ._converters import dict_to_json, event_from_proto, json_loads, run_mode_to_proto
from ._errors import (
    ClientConfigError,
    DeadlineExceededError,
    JobCancelledError,
    JobFailedError,
    JobTimeoutError,
    ProtocolError,
    SynapseClientError,
    UnavailableError,
)
from ._types import Job, JobErrorInfo, JobEvent, JobState, RunMode, TerminalEvent

logger = logging.getLogger(__name__)

__all__ = [
    "EventSequencer",
    "JobHandleBase",
    "ProgressFollower",
    "ResultAssembler",
    "deadline_after",
    "finished_terminal",
    "inline_result",
    "job_timeout",
    "new_request_id",
    "raise_for_terminal",
    "reconnect_delay",
    "remaining",
    "result_stream_start",
    "run_action_request",
    "stream_ended_early",
]

C = TypeVar("C")

#: A job handle's result cache before the result is known (None is a valid result).
UNSET: Any = object()

_MAX_REQUEST_ID = 128
#: Events the client takes in one StreamProgress message (the server caps it; see the proto).
EVENTS_PER_MESSAGE = 256


def remaining(deadline: float | None) -> float | None:
    """Seconds left until ``deadline`` (a ``time.monotonic`` value; None: no deadline)."""
    return None if deadline is None else max(deadline - time.monotonic(), 0.0)


def deadline_after(timeout: float | None) -> float | None:
    """The ``time.monotonic`` deadline ``timeout`` seconds from now (None: no deadline)."""
    return None if timeout is None else time.monotonic() + timeout


class JobHandleBase(Generic[C]):
    """What both job handles hold: the client, the job's id, and what they learned of it."""

    def __init__(
        self, client: C, job_id: str, job: Job | None = None, created: bool | None = None
    ) -> None:
        self._client = client
        self._id = job_id
        #: The job as the server last reported it to this handle (None until fetched).
        self.job = job
        #: From run_action: False when its request_id matched a job that already existed.
        self.created = created
        self._result: Any = UNSET
        # The terminal event this handle's events() delivered: result() needs no more calls.
        self._terminal: TerminalEvent | None = None

    def _note(self, event: JobEvent) -> JobEvent:
        if isinstance(event.payload, TerminalEvent):
            self._terminal = event.payload
        return event

    @property
    def id(self) -> str:
        """The job's id."""
        return self._id

    def __repr__(self) -> str:
        state = self.job.state.value if self.job is not None else "unknown"
        return f"{type(self).__name__}({self._id!r}, state={state})"


def new_request_id() -> str:
    """A fresh idempotency key for RunAction."""
    return uuid.uuid4().hex


def run_action_request(
    plugin: str,
    action: str,
    params: dict[str, Any] | None,
    mode: RunMode | str | None,
    request_id: str | None,
) -> action_service_pb2.RunActionRequest:
    """Validates the caller's arguments locally and builds the RunAction request."""
    if not plugin:
        raise ClientConfigError("plugin must be a non-empty plugin code")
    if not action:
        raise ClientConfigError("action must be a non-empty action name")
    rid = request_id if request_id is not None else new_request_id()
    if not rid or len(rid) > _MAX_REQUEST_ID:
        raise ClientConfigError(f"request_id must be 1 to {_MAX_REQUEST_ID} characters")
    return action_service_pb2.RunActionRequest(
        plugin=plugin,
        action=action,
        # JSON text rather than a Struct: far cheaper to build and parse for large params.
        params_json=dict_to_json(params),
        mode=run_mode_to_proto(mode),  # type: ignore[arg-type]
        request_id=rid,
    )


class EventSequencer:
    """Tracks the last seq delivered so a reconnected stream repeats and skips nothing."""

    def __init__(self, job_id: str, after_seq: int = 0, follow: bool = True) -> None:
        if after_seq < 0:
            raise ClientConfigError("after_seq must be >= 0")
        self.job_id = job_id
        self.last_seq = after_seq
        #: False: replay the stored events only; a stream that ends before the terminal
        #: event is then complete rather than dropped.
        self.follow = follow
        self.terminal: TerminalEvent | None = None

    def accept(self, response: action_service_pb2.StreamProgressResponse) -> list[JobEvent]:
        """The events to deliver for one stream message, in order (none for a keepalive or
        what was delivered already)."""
        kind = response.WhichOneof("kind")
        if kind == "event":
            event = self._accept(response.event)
            return [] if event is None else [event]
        if kind == "events":
            found = (self._accept(message) for message in response.events.events)
            return [event for event in found if event is not None]
        return []

    def _accept(self, message: job_event_pb2.JobEvent) -> JobEvent | None:
        if message.seq <= self.last_seq:
            # A reconnect replays from after_seq, so anything at or below it was delivered.
            return None
        # Seqs may skip ahead: a server may drop progress events that a newer progress event
        # of the same category supersedes when a subscriber lags (never logs or the terminal
        # event). Resuming from the last delivered seq therefore still loses nothing else.
        event = event_from_proto(message)
        self.last_seq = event.seq
        if isinstance(event.payload, TerminalEvent):
            self.terminal = event.payload
        return event

    @property
    def done(self) -> bool:
        """True once the terminal event was delivered."""
        return self.terminal is not None

    def ended_early(self) -> bool:
        """Whether a stream that just closed cleanly stopped short of what was asked for."""
        return self.follow and self.terminal is None

    def request(self) -> action_service_pb2.StreamProgressRequest:
        """The StreamProgress request that continues right after the last delivered event."""
        return action_service_pb2.StreamProgressRequest(
            job_id=self.job_id,
            after_seq=self.last_seq,
            replay_only=not self.follow,
            # A burst of events (a job logging in a loop, a replay) comes in a few messages.
            max_events_per_message=EVENTS_PER_MESSAGE,
        )


class _StreamEndedEarlyError(ProtocolError):
    """A progress stream closed with OK before the terminal event (a server shutting down)."""


def stream_ended_early(job_id: str) -> ProtocolError:
    """The error for a stream that closed cleanly without delivering the terminal event."""
    return _StreamEndedEarlyError(f"job {job_id}: progress stream ended before the terminal event")


class ProgressFollower:
    """One ``events()`` iteration across reconnects: what to ask for, when to ask again.

    The driver opens StreamProgress with :meth:`request`, passes each message to
    :meth:`accept`, and when the stream fails or closes (:meth:`end_of_stream`) sleeps
    :meth:`reconnect_after` seconds before opening it again.
    """

    def __init__(self, sequencer: EventSequencer, policy: RetryPolicy) -> None:
        self.sequencer = sequencer
        self._policy = policy
        # Failed openings since the last delivered event: a stream that keeps delivering
        # may drop any number of times.
        self._failures = 0

    def request(self) -> action_service_pb2.StreamProgressRequest:
        """The StreamProgress request that continues after the last delivered event."""
        return self.sequencer.request()

    def accept(self, response: action_service_pb2.StreamProgressResponse) -> list[JobEvent]:
        """The events to deliver for one stream message, in order."""
        events = self.sequencer.accept(response)
        if events:
            self._failures = 0
        return events

    def end_of_stream(self) -> SynapseClientError | None:
        """What a stream that closed cleanly means: None when nothing is left to follow."""
        if self.sequencer.ended_early():
            return stream_ended_early(self.sequencer.job_id)
        return None

    def reconnect_after(self, failure: SynapseClientError) -> float:
        """Seconds to wait before reopening the stream; re-raises ``failure`` when the drop
        is not one to recover from or the retry policy's attempts are used up."""
        self._failures += 1
        delay = reconnect_delay(self._policy, self._failures, failure)
        logger.info(
            "progress stream of job %s dropped after seq %d, resuming in %.2fs",
            self.sequencer.job_id,
            self.sequencer.last_seq,
            delay,
        )
        return delay


def reconnect_delay(policy: RetryPolicy, attempt: int, failure: SynapseClientError) -> float:
    """Seconds to wait before reopening a dropped progress stream; re-raises ``failure``
    when the drop is not one to recover from or the policy's attempts are used up.
    """
    # Retryable, as for unary calls: UNAVAILABLE, but never a failed TLS set-up.
    recoverable = isinstance(failure, _StreamEndedEarlyError) or (
        isinstance(failure, UnavailableError) and failure.retryable
    )
    if recoverable and attempt < policy.max_attempts:
        return policy.backoff(attempt)
    raise failure


def result_stream_start(job: Job) -> int:
    """The after_seq from which a stream reaches the terminal event without old history.

    The terminal event is always a job's last event, so for a finished job it is the single
    event after ``last_seq - 1``; for a running one everything after ``last_seq`` is new.
    """
    if job.state.is_terminal:
        return max(job.last_seq - 1, 0)
    return job.last_seq


def raise_for_terminal(job_id: str, terminal: TerminalEvent) -> None:
    """Raises the typed error a FAILED or CANCELLED terminal event stands for."""
    if terminal.state is JobState.FAILED:
        error = terminal.error or JobErrorInfo(type="Unknown", message="no error reported")
        raise JobFailedError(job_id, error)
    if terminal.state is JobState.CANCELLED:
        raise JobCancelledError(job_id, terminal.reason)
    if terminal.state is not JobState.SUCCEEDED:
        raise ProtocolError(f"job {job_id}: terminal event with state {terminal.state}")


def finished_terminal(sequencer: EventSequencer) -> TerminalEvent:
    """The terminal event a followed stream ended with, once it is a success.

    Raises the typed error of a FAILED or CANCELLED job, and :class:`ProtocolError` when the
    stream ended without one.
    """
    terminal = sequencer.terminal
    if terminal is None:
        raise ProtocolError(f"job {sequencer.job_id}: stream ended without a terminal event")
    raise_for_terminal(sequencer.job_id, terminal)
    return terminal


@contextmanager
def job_timeout(job_id: str, timeout: float | None) -> Iterator[None]:
    """Turns a deadline that ran out while waiting for a result into :class:`JobTimeoutError`.

    Without a timeout a deadline can only be a call's own, and stays a DeadlineExceededError.
    """
    try:
        yield
    except DeadlineExceededError as error:
        if timeout is None:
            raise
        raise JobTimeoutError(job_id, timeout) from error


def inline_result(job_id: str, terminal: TerminalEvent) -> Any:
    """The parsed result a terminal event carries inline (up to the server's inline limit).

    Parsed like GetJobResult's bytes (see ``json_loads``): a large heap makes ``json.loads``
    pay for garbage collections, which a result's containers trigger and cannot need.
    """
    if not terminal.result_json:
        return None
    try:
        return json_loads(terminal.result_json)
    except ValueError as exc:
        raise ProtocolError(f"job {job_id}: the inline result is not JSON: {exc}") from None


class ResultAssembler:
    """Collects GetJobResult chunks, checking offsets and size, and parses the JSON."""

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        self._parts: list[bytes] = []
        self._received = 0
        self._total: int | None = None

    def add(self, chunk: action_service_pb2.GetJobResultResponse) -> None:
        """Appends one chunk; raises :class:`ProtocolError` if it is out of order."""
        if chunk.offset != self._received:
            raise ProtocolError(
                f"job {self.job_id}: result chunk at offset {chunk.offset}, "
                f"expected {self._received}"
            )
        if self._total is None:
            self._total = chunk.total_size_bytes
        self._parts.append(chunk.data)
        self._received += len(chunk.data)

    def result(self) -> Any:
        """The parsed result, once every byte arrived."""
        total = self._total or 0
        if self._received != total:
            raise ProtocolError(
                f"job {self.job_id}: result stream ended after {self._received} of {total} bytes"
            )
        if not total:
            return None
        try:
            return json_loads(b"".join(self._parts))
        except ValueError as exc:
            raise ProtocolError(f"job {self.job_id}: the result is not JSON: {exc}") from None
