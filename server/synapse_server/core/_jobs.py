"""The job service: submit, follow, list and cancel jobs; and the worker side of running them.

Lifecycle: ``submit`` validates and stores a PENDING job, then a scheduler task waits for a
free slot and asks the job's executor to run a worker. The worker opens its event stream
(the job becomes RUNNING), reports events, result chunks and finally a finish, which becomes
the job's terminal event. A worker that ends without a finish fails the job with a reason
naming how it ended. Cancelling a running job pushes the request to the worker (the action
sees ``is_cancelled()`` and the step orchestrator rolls back) and kills the worker if it has
not finished within the grace period.

Restart policy (``recover``): jobs left RUNNING by a previous server process are FAILED with
"server stopped while the job was running" (their action may have had side effects, so it is
not run twice); jobs left PENDING never started plugin code and are queued again.

Several servers on one database (a ``server_id``): a job belongs to the server it was
submitted to, which alone runs it and appends its events; every server answers for every job
from the store. A restart recovers only this server's own jobs (the same policy); the jobs of
a server whose lease expired are taken over by a survivor (:meth:`adopt`, driven by
``_cluster.JobCluster``) with the same policy, naming that server. A cancellation asked on
another server is stored for the owner, which acts on it (:meth:`cancel_requested_elsewhere`).
A server that finds a job taken over from it (its lease expired while it could not reach the
database) stops the job's worker and forgets it (:class:`JobOwnershipLostError`).

Shutdown policy (``close``): jobs not yet RUNNING stay PENDING (their launches are withdrawn)
and run after the next start; RUNNING jobs get the shutdown grace period to finish and keep
whatever outcome they reach in it, and those still running then are FAILED with a reason that
says so and their workers killed.

A job's worker credential is valid from its launch until the job ends (see ``_credentials``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from synapse_sdk.errors import SynapseError
from synapse_sdk.jsonutil import dump_json
from synapse_sdk.tracing import (
    ATTR_ACTION,
    ATTR_JOB_ID,
    ATTR_JOB_MODE,
    ATTR_JOB_STATE,
    ATTR_PLUGIN,
    inject_headers,
)

from synapse_server.core._catalog import ActionKind, PluginCatalog
from synapse_server.core._credentials import WorkerClaims, WorkerCredentialIssuer
from synapse_server.core._errors import (
    FailedPreconditionError,
    InvalidArgumentError,
    JobNotFoundError,
    JobOwnershipLostError,
    PermissionDeniedError,
    ServiceUnavailableError,
    StorageError,
    StorageFullError,
)
from synapse_server.core._executor import Executor, SchedulingExecutor, WorkerExit
from synapse_server.core._hub import EventHub, NewEvent
from synapse_server.core._models import (
    ErrorOrigin,
    EventKind,
    Job,
    JobError,
    JobEvent,
    JobFilter,
    JobPage,
    JobState,
    Keepalive,
)
from synapse_server.core._storage import as_storage_error
from synapse_server.core._store import ClaimedJob, JobStore
from synapse_server.telemetry import PlatformMetrics, bind_log_context, forward_job_logs

__all__ = [
    "JobOutputs",
    "JobService",
    "ResultChunk",
    "WorkerFinished",
    "WorkerReport",
    "result_json_bytes",
]

logger = logging.getLogger(__name__)

MAX_REQUEST_ID_LENGTH = 128
SERVER_STOPPED_REASON = "server stopped while the job was running"


def server_lost_reason(server_id: str) -> str:
    """Why a job failed that another server was running when that server stopped."""
    return f"server {server_id} stopped while the job was running"


# A terminal state the store refused (full disk, I/O error) is retried after these delays,
# doubling from the first to the last, until it is stored.
STORE_RETRY_FIRST_SECONDS = 0.2
STORE_RETRY_MAX_SECONDS = 2.0
SHUTTING_DOWN_PENDING = (
    "the server is shutting down; the job stays pending and runs after a restart"
)


def shutdown_reason(grace_seconds: float) -> str:
    """Why a job still running when the shutdown grace period ended failed."""
    return f"server shut down before the job finished (grace {grace_seconds:g} s)"


@dataclass(frozen=True, slots=True)
class ResultChunk:
    """Part of a worker's result JSON."""

    offset: int
    data: bytes


@dataclass(frozen=True, slots=True)
class WorkerFinished:
    """The worker's last report: how the action ended."""

    state: JobState
    error: JobError | None = None
    result_size: int = 0


@dataclass(frozen=True, slots=True)
class WorkerReport:
    """One numbered report of a worker: an event, a result chunk or the finish."""

    worker_seq: int
    item: NewEvent | ResultChunk | WorkerFinished


def _not_run_type(exc: Exception) -> str:
    """The error type of a job the platform could not run (see ``JobService._run``)."""
    if isinstance(exc, ServiceUnavailableError):
        return "PlatformUnavailable"
    if isinstance(exc, InvalidArgumentError):
        return "InvalidArgument"
    return "PreconditionFailed"


def result_json_bytes(result: Any) -> bytes:
    """The canonical JSON text of a result, as served by GetJobResult."""
    return dump_json(result)


@dataclass
class _ActiveJob:
    job: Job
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    cancel: asyncio.Event = field(default_factory=asyncio.Event)
    worker_seq: int = 0
    opened: bool = False
    result: bytearray = field(default_factory=bytearray)
    task: asyncio.Task[None] | None = None
    killer: asyncio.Task[None] | None = None
    cancel_reason: str = ""
    # The job's last events (its terminal one last) with their job row, when the store
    # refused them: ``job`` already shows the outcome, ``storer`` retries until they are
    # stored. Subscribers see them only then (an event is visible once stored).
    unstored: tuple[Sequence[NewEvent], Job] | None = None
    storer: asyncio.Task[None] | None = None
    # The storage failure of the job's latest append, if it failed (cleared by a success):
    # a worker that then gives up is failed with it as the reason.
    storage_error: StorageError | None = None
    # Another server took the job over: nothing more is stored for it here.
    lost: bool = False
    # The job's span (tracing on) and its context for the worker (GetAssignment headers).
    span: Any = None
    headers: dict[str, str] = field(default_factory=dict)


class JobOutputs(Protocol):
    """What happens to the outputs a job's worker staged, once the job ends (the dataset
    registry: outputs are stored only for a job that succeeds)."""

    async def commit_outputs(self, job_id: str) -> None:
        """The job is about to be stored SUCCEEDED: its staged outputs become visible."""
        ...

    async def discard_outputs(self, job_id: str) -> None:
        """The job ended otherwise: its staged outputs are dropped."""
        ...


class JobService:
    """Jobs for clients (tenant-scoped) and for workers (credential-scoped).

    ``metrics`` hears of submissions, starts, ends and (through the hub) stored events;
    ``tracer`` (an OpenTelemetry tracer, None: no spans) traces each job from its submission
    to its worker's exit, and the worker continues that trace.
    """

    def __init__(
        self,
        store: JobStore,
        hub: EventHub,
        catalog: PluginCatalog,
        executors: Mapping[str, Executor],
        credentials: WorkerCredentialIssuer,
        *,
        cancel_grace_seconds: float = 5.0,
        max_concurrent_jobs: int = 4,
        inline_result_limit: int = 1 << 20,
        server_id: str = "",
        metrics: PlatformMetrics | None = None,
        tracer: Any = None,
        outputs: JobOutputs | None = None,
    ) -> None:
        """``server_id``: this server's id when several servers share the store (``""``: the
        only server, which owns every job). ``outputs``: told when a job ends, so that the
        outputs its worker staged are kept only when it succeeded."""
        if not executors:
            raise ValueError("at least one executor is needed")
        self._store = store
        self._hub = hub
        self._catalog = catalog
        self._executors = dict(executors)
        self._credentials = credentials
        self._grace = cancel_grace_seconds
        self._slots = asyncio.Semaphore(max_concurrent_jobs)
        self._inline_limit = inline_result_limit
        self._server_id = server_id
        self._metrics = metrics or PlatformMetrics()
        self._tracer = tracer
        self._outputs = outputs
        self._active: dict[str, _ActiveJob] = {}
        self._closing = False
        # Set on close: held terminal states get one last immediate attempt.
        self._store_now = asyncio.Event()
        for executor in self._executors.values():
            if isinstance(executor, SchedulingExecutor):
                executor.bind_pending_reporter(self.set_pending_reason)

    @property
    def catalog(self) -> PluginCatalog:
        """The plugin catalog jobs are resolved against."""
        return self._catalog

    @property
    def active_jobs(self) -> int:
        """Jobs not yet finished in this process."""
        return len(self._active)

    def job_counts(self) -> dict[tuple[str, str], int]:
        """Jobs not yet finished in this process by ``(mode, state)`` (PENDING, RUNNING).

        Read by the metrics scrape on another thread: ``list`` copies the jobs in one step.
        """
        counts: dict[tuple[str, str], int] = {}
        for active in list(self._active.values()):
            state = active.job.state
            if not state.is_terminal:
                key = (active.job.mode, state.value)
                counts[key] = counts.get(key, 0) + 1
        return counts

    def worker_headers(self, job_id: str) -> dict[str, str]:
        """The context a job's worker continues (its span's trace context; {} untraced)."""
        active = self._active.get(job_id)
        return dict(active.headers) if active is not None else {}

    # Client side ----------------------------------------------------------------------------

    async def submit(
        self,
        tenant: str,
        plugin: str,
        action: str,
        params_json: str,
        *,
        mode: str = "",
        request_id: str = "",
    ) -> tuple[Job, bool]:
        """Validate and store a new PENDING job and schedule it; ``(job, created)``.

        ``params_json`` is the text of one JSON object. It is validated against the action's
        params model and then kept, stored and passed to the worker as that text only.

        Raises PluginNotFoundError / ActionNotFoundError (NOT_FOUND), ParamsValidationError,
        InvalidArgumentError, RequestIdConflictError.
        """
        if self._closing:
            raise ServiceUnavailableError("the server is shutting down")
        if not plugin:
            raise InvalidArgumentError("plugin is required", field="plugin")
        if not action:
            raise InvalidArgumentError("action is required", field="action")
        if len(request_id) > MAX_REQUEST_ID_LENGTH:
            raise InvalidArgumentError(
                f"request_id is longer than {MAX_REQUEST_ID_LENGTH} characters"
            )
        info = self._catalog.action(plugin, action)
        if info.kind != ActionKind.JOB:
            # The request is well-formed; the action just is not something a job runs.
            raise FailedPreconditionError(
                f"action {action!r} of plugin {plugin!r} is a serve deployment; "
                "deploy it with a deployment action and call it with Infer"
            )
        mode = mode or info.default_mode
        if mode not in info.supported_modes or mode not in self._executors:
            supported = ", ".join(m for m in info.supported_modes if m in self._executors)
            raise InvalidArgumentError(
                f"mode {mode!r} is not available for this action (available: {supported})"
            )
        # The job runs the code whose params model validated it, whatever reloads come next.
        checked = self._catalog.check_params_json(plugin, action, params_json)
        version = self._catalog.plugins(plugin)[0].version
        pending_reason = (
            "waiting for a free worker slot" if self._slots.locked() else "starting a worker"
        )
        candidate = Job(
            id=uuid.uuid4().hex,
            tenant=tenant,
            plugin=plugin,
            action=action,
            params_json=params_json,
            plugin_version=version,
            plugin_sha256=checked.sha256,
            warnings=checked.warnings,
            mode=mode,
            request_id=request_id or None,
            pending_reason=pending_reason,
            owner=self._server_id,
        )
        executor = self._executors[mode]
        if isinstance(executor, SchedulingExecutor):
            admitted_reason = await executor.admit(candidate)
            if admitted_reason:
                candidate = candidate.evolve(pending_reason=admitted_reason)
        job, created = await self._store.create_job(candidate)
        if not created:
            return await self._current(job), False
        active = _ActiveJob(job=job)
        self._active[job.id] = active
        submitted = NewEvent(EventKind.STATE, {"state": "PENDING", "reason": "submitted"})
        try:
            await self._append(active, [submitted])
        except StorageError as exc:
            # The job's row is stored but not its first event: it never runs, it fails (for
            # good once the store takes it), and the caller learns why.
            error = _storage_job_error(exc)
            await self._finish(
                active, JobState.FAILED, error=error, reason=error.message, before=[submitted]
            )
            raise
        active.task = asyncio.create_task(self._run(active), name=f"job-{job.id}")
        self._metrics.job_submitted(plugin, action, mode)
        logger.info("job %s: submitted %s/%s mode=%s", job.id, plugin, action, mode)
        return active.job, True

    async def _current(self, job: Job) -> Job:
        active = self._active.get(job.id)
        if active is not None:
            return active.job
        stored = await self._store.get_job(job.id)
        return stored if stored is not None else job

    async def get(self, tenant: str | None, job_id: str, *, with_params: bool = False) -> Job:
        """The job; JobNotFoundError if unknown or another tenant's (``tenant=None``: any).

        A finished job comes from the store without its result text, and without its params
        unless ``with_params`` (see ``SqliteJobStore.get_job``).
        """
        active = self._active.get(job_id)
        job = (
            active.job
            if active is not None
            else await self._store.get_job(job_id, with_params=with_params)
        )
        if job is None or (tenant is not None and job.tenant != tenant):
            raise JobNotFoundError(job_id)
        return job

    async def list(
        self, tenant: str | None, flt: JobFilter, page_size: int, page_token: str
    ) -> JobPage:
        """The tenant's jobs matching ``flt``, newest first."""
        page = await self._store.list_jobs(
            JobFilter(tenant=tenant, states=flt.states, plugin=flt.plugin, action=flt.action),
            page_size,
            page_token,
        )
        jobs = [self._active[j.id].job if j.id in self._active else j for j in page.jobs]
        if flt.states:
            # An outcome held in memory until the store takes it (see _keep_unstored) is
            # what the job is, whatever the store still says.
            jobs = [j for j in jobs if j.state in flt.states]
        return JobPage(jobs=jobs, next_page_token=page.next_page_token)

    async def subscribe(
        self,
        tenant: str | None,
        job_id: str,
        after_seq: int = 0,
        *,
        follow: bool = True,
        keepalive_seconds: float | None = None,
    ) -> AsyncIterator[JobEvent | Keepalive]:
        """The job's events after ``after_seq``, then live ones (see EventHub.subscribe)."""
        await self.get(tenant, job_id)
        return self._hub.subscribe(
            job_id, after_seq, keepalive_seconds=keepalive_seconds, follow=follow
        )

    async def subscribe_batches(
        self,
        tenant: str | None,
        job_id: str,
        after_seq: int = 0,
        *,
        follow: bool = True,
        keepalive_seconds: float | None = None,
    ) -> AsyncIterator[Sequence[JobEvent] | Keepalive]:
        """:meth:`subscribe` in runs of the events ready at once (EventHub.subscribe_batches)."""
        await self.get(tenant, job_id)
        return self._hub.subscribe_batches(
            job_id, after_seq, keepalive_seconds=keepalive_seconds, follow=follow
        )

    async def result_json(self, tenant: str | None, job_id: str) -> bytes:
        """The result JSON text of a SUCCEEDED job."""
        active = self._active.get(job_id)
        if active is not None:
            owner, state = active.job.tenant, active.job.state
            text: str | None = active.job.result_json or None
            if text is None and state is JobState.SUCCEEDED:
                text = result_json_bytes(active.job.result).decode()
        else:
            # Only the result column: a finished job's params can be as large as its result.
            row = await self._store.get_result(job_id)
            if row is None:
                raise JobNotFoundError(job_id)
            owner, state, text = row
        if tenant is not None and owner != tenant:
            raise JobNotFoundError(job_id)
        if state is not JobState.SUCCEEDED:
            raise FailedPreconditionError(
                f"job {job_id!r} is {state.value}; only a SUCCEEDED job has a result"
            )
        return (text or "null").encode()

    async def cancel(self, tenant: str | None, job_id: str, reason: str = "") -> Job:
        """Ask the job to stop; a finished job is returned unchanged."""
        job = await self.get(tenant, job_id)
        active = self._active.get(job_id)
        reason = reason or "cancelled by the user"
        if active is None and self._server_id and not job.state.is_terminal:
            # Another server runs it: the request is stored for that server to act on.
            requested = await self._store.request_cancel(job_id, reason)
            logger.info("job %s: cancel requested for its owner %s", job_id, job.owner)
            return requested or job
        if job.state.is_terminal or active is None:
            return job
        async with active.lock:
            if active.job.state.is_terminal:
                return active.job
            active.cancel_reason = reason
            if not active.opened:
                # Plugin code has not started: nothing to signal or roll back.
                await self._finish_locked(active, JobState.CANCELLED, reason=reason)
                if active.task is not None:
                    active.task.cancel()
                executor = self._executors[active.job.mode]
                await executor.kill(job_id)
                return active.job
            if not active.job.cancel_requested:
                active.job = active.job.evolve(cancel_requested=True)
                await self._update_row(active)
                active.cancel.set()
                active.killer = asyncio.create_task(self._kill_after_grace(active))
                logger.info("job %s: cancel requested", job_id)
            return active.job

    async def cancel_requested_elsewhere(self, job_id: str, reason: str) -> None:
        """Act on a cancellation another server stored for a job of this one."""
        active = self._active.get(job_id)
        if active is None or active.job.state.is_terminal or active.cancel_reason:
            return
        try:
            await self.cancel(None, job_id, reason)
        except (JobNotFoundError, StorageError) as exc:
            # Asked again at the next heartbeat while the request is stored.
            logger.warning("job %s: cancel request not handled yet: %s", job_id, exc)

    async def adopt(self, claimed: ClaimedJob) -> None:
        """Take over a job claimed from a server that stopped (or this server's previous
        process): a RUNNING job fails, naming that server; a PENDING one runs here (or is
        cancelled, when that was asked for)."""
        job, previous = claimed.job, claimed.previous_owner
        await self._hub.adopt(job.id)
        job = job.evolve(last_seq=await self._hub.last_seq(job.id))
        active = _ActiveJob(job=job)
        if job.state is JobState.RUNNING:
            restarted = previous == self._server_id
            reason = SERVER_STOPPED_REASON if restarted else server_lost_reason(previous)
            await self._finish(
                active,
                JobState.FAILED,
                error=JobError(
                    type="ServerRestarted" if restarted else "ServerLost",
                    message=reason,
                    origin=ErrorOrigin.PLATFORM,
                ),
                reason=reason,
            )
            logger.warning("job %s: marked FAILED: %s", job.id, reason)
            return
        if job.cancel_requested:
            await self._finish(
                active, JobState.CANCELLED, reason=claimed.cancel_reason or "cancelled by the user"
            )
            return
        if self._closing:
            # Left PENDING: once this server has given its lease up, another one takes it.
            logger.info("job %s: not taken over while shutting down", job.id)
            return
        if job.mode not in self._executors:
            await self._finish(
                active,
                JobState.FAILED,
                error=JobError(
                    type="ExecutorUnavailable",
                    message=f"no executor for mode {job.mode!r} on the server that took it over",
                    origin=ErrorOrigin.PLATFORM,
                ),
            )
            return
        self._active[job.id] = active
        active.task = asyncio.create_task(self._run(active), name=f"job-{job.id}")
        logger.info("job %s: taken over from server %s; queued", job.id, previous or "(none)")

    def _lose(self, active: _ActiveJob) -> None:
        """Another server took the job over: stop its worker here and forget it."""
        if active.lost:
            return
        active.lost = True
        job_id = active.job.id
        logger.warning("job %s: now run by another server; stopping its worker here", job_id)
        if self._active.get(job_id) is active:
            del self._active[job_id]
        self._credentials.revoke(job_id)
        active.cancel.set()
        executor = self._executors.get(active.job.mode)
        if executor is not None:
            task = asyncio.get_running_loop().create_task(executor.kill(job_id))
            task.add_done_callback(lambda t: t.cancelled() or t.exception())
        if active.task is not None and active.task is not asyncio.current_task():
            active.task.cancel()

    async def set_pending_reason(self, job_id: str, reason: str) -> bool:
        """Record why a launched job still waits; False once it is no longer PENDING."""
        active = self._active.get(job_id)
        if active is None:
            return False
        async with active.lock:
            if active.opened or active.job.state is not JobState.PENDING:
                return False
            if active.job.pending_reason != reason:
                active.job = active.job.evolve(pending_reason=reason)
                await self._update_row(active)
                logger.info("job %s: pending: %s", job_id, reason)
            return True

    async def _update_row(self, active: _ActiveJob) -> None:
        """Store the job's row as it is in memory, where it has already changed.

        A store that refuses it loses nothing the job needs: the change stays in memory and
        the job's next append (its terminal event at the latest) writes the whole row.
        """
        try:
            await self._store.update_job(active.job)
        except StorageError as exc:
            logger.warning("job %s: could not store its row now (%s)", active.job.id, exc.cause)

    async def _kill_after_grace(self, active: _ActiveJob) -> None:
        await asyncio.sleep(self._grace)
        if not active.job.state.is_terminal:
            logger.warning(
                "job %s: still running %.1fs after cancel; killing its worker",
                active.job.id,
                self._grace,
            )
            await self._executors[active.job.mode].kill(active.job.id)

    # Running --------------------------------------------------------------------------------

    def _start_span(self, active: _ActiveJob) -> None:
        """Trace the job in this task (its own context): a span, the child of the submitting
        call's, made current here and handed to the worker as its headers."""
        job = active.job
        bind_log_context(job_id=job.id)
        if self._tracer is None:
            return
        from opentelemetry import context, trace

        active.span = self._tracer.start_span(
            f"job {job.plugin}/{job.action}",
            attributes={
                ATTR_JOB_ID: job.id,
                ATTR_PLUGIN: job.plugin,
                ATTR_ACTION: job.action,
                ATTR_JOB_MODE: job.mode,
            },
        )
        context.attach(trace.set_span_in_context(active.span))
        inject_headers(active.headers)

    @staticmethod
    def _end_span(active: _ActiveJob) -> None:
        span, active.span = active.span, None
        if span is None:
            return
        from opentelemetry import trace

        job = active.job
        span.set_attribute(ATTR_JOB_STATE, job.state.value)
        if job.state is JobState.FAILED:
            message = job.error.type if job.error is not None else "failed"
            span.set_status(trace.Status(trace.StatusCode.ERROR, message))
        span.end()

    async def _run(self, active: _ActiveJob) -> None:
        job_id = active.job.id
        self._start_span(active)
        try:
            async with self._slots:
                if active.job.state.is_terminal:
                    return
                executor = self._executors[active.job.mode]
                credential = self._credentials.mint(job_id, active.job.tenant)
                try:
                    outcome = await executor.run(active.job, credential, active.headers)
                except (
                    ServiceUnavailableError,
                    FailedPreconditionError,
                    InvalidArgumentError,
                ) as exc:
                    # The platform could not give the job what it needs (Ray did not start,
                    # no node could hold it, its serve application name is held): the error
                    # says so in words meant for the job's owner; no plugin code ran.
                    correlation = uuid.uuid4().hex
                    logger.warning("job %s: not run: %s [%s]", job_id, exc, correlation)
                    await self._finish(
                        active,
                        JobState.FAILED,
                        error=JobError(
                            type=_not_run_type(exc),
                            message=str(exc),
                            origin=ErrorOrigin.PLATFORM,
                            correlation_id=correlation,
                        ),
                        reason=str(exc),
                    )
                    return
                except Exception as exc:
                    correlation = uuid.uuid4().hex
                    logger.exception("job %s: executor failed [%s]", job_id, correlation)
                    # E.g. the worker's log file could not be created on a full disk.
                    storage = as_storage_error(exc)
                    cause = storage.cause if storage is not None else type(exc).__name__
                    await self._finish(
                        active,
                        JobState.FAILED,
                        error=JobError(
                            type="ExecutorError",
                            message=f"could not run the job: {cause}",
                            origin=ErrorOrigin.PLATFORM,
                            correlation_id=correlation,
                        ),
                    )
                    return
                await self._worker_gone(active, outcome)
        except asyncio.CancelledError:
            if not active.job.state.is_terminal and not self._closing:
                raise
        finally:
            # The worker is gone (or its launch withdrawn): nothing may use its credential.
            self._credentials.revoke(job_id)
            self._end_span(active)
            if active.job.state.is_terminal:
                if active.unstored is None:
                    # Otherwise its storer releases it once the outcome is stored.
                    self._active.pop(job_id, None)
                if active.killer is not None:
                    active.killer.cancel()

    async def _worker_gone(self, active: _ActiveJob, outcome: WorkerExit) -> None:
        if active.job.state.is_terminal:
            return
        if active.job.cancel_requested:
            await self._finish(
                active,
                JobState.CANCELLED,
                reason=f"{active.cancel_reason}; the worker did not stop within the grace "
                "period and was killed",
            )
            return
        correlation = uuid.uuid4().hex
        message = outcome.describe()
        error = JobError(
            type=outcome.error_type,
            message=message,
            origin=ErrorOrigin.PLATFORM,
            correlation_id=correlation,
        )
        if active.storage_error is not None:
            # The worker gave up because this server could not store what it reported: that,
            # not the worker, is why the job ended.
            error = _storage_job_error(
                active.storage_error, f"; {message}", correlation_id=correlation
            )
        logger.warning("job %s: %s [%s]", active.job.id, error.message, correlation)
        await self._finish(active, JobState.FAILED, error=error, reason=error.message)

    async def _append(
        self, active: _ActiveJob, events: Sequence[NewEvent], job: Job | None = None
    ) -> None:
        try:
            stored = await self._hub.append(active.job.id, events, job or active.job)
        except StorageError as exc:
            active.storage_error = exc
            raise
        except JobOwnershipLostError:
            self._lose(active)
            raise
        active.storage_error = None
        last_seq = stored[-1].seq if stored else active.job.last_seq
        active.job = (job or active.job).evolve(last_seq=last_seq)

    async def _finish(
        self,
        active: _ActiveJob,
        state: JobState,
        *,
        result: Any = None,
        error: JobError | None = None,
        reason: str = "",
        before: Sequence[NewEvent] = (),
    ) -> None:
        async with active.lock:
            await self._finish_locked(
                active, state, result=result, error=error, reason=reason, before=before
            )

    async def _finish_locked(
        self,
        active: _ActiveJob,
        state: JobState,
        *,
        result: Any = None,
        error: JobError | None = None,
        reason: str = "",
        result_text: str = "",
        result_size: int = 0,
        before: Sequence[NewEvent] = (),
        progress: float | None = None,
    ) -> None:
        """``result_text`` (``result_size`` bytes in UTF-8): the worker's own JSON text, when
        the result came from one; ``result`` is then parsed only if it travels inline.
        ``before``: events to store ahead of the terminal one, in the same transaction (with
        the job's ``progress`` after them).

        When the store refuses the events, the outcome is kept in memory (GetJob shows it)
        and stored by a background task once the store takes it. The one storage failure
        raised is a SUCCEEDED job's outputs that cannot be stored yet (the database
        restarting): the ``StorageError`` leaves the job RUNNING and the worker's finish
        unacknowledged, so the worker sends it again, as it does any batch the store refuses.
        """
        if active.job.state.is_terminal:
            return
        if state is JobState.SUCCEEDED and self._outputs is not None:
            # Before the terminal event: a job is never stored SUCCEEDED without its outputs.
            try:
                await self._outputs.commit_outputs(active.job.id)
            except StorageError as exc:
                # Passes by itself: failing the job for it would lose a finished job's work.
                # Should the worker give up first, the job fails naming this (storage_error).
                active.storage_error = exc
                raise
            except Exception as exc:
                logger.exception("job %s: its outputs could not be stored", active.job.id)
                state, result, result_text, result_size = JobState.FAILED, None, "", 0
                error = JobError(
                    type="OutputStoreError",
                    message=f"the job's outputs could not be stored ({type(exc).__name__})",
                    origin=ErrorOrigin.PLATFORM,
                )
                reason = ""
        if error is not None and not reason:
            # Every failure says why in the terminal event and the job's reason, whichever
            # path ended it (a crashed worker, the executor, a restart).
            reason = error.message
        data: dict[str, Any] = {"state": state.value, "reason": reason}
        progress = active.job.progress if progress is None else progress
        text = ""
        if state is JobState.SUCCEEDED:
            if not result_text:
                payload = result_json_bytes(result)
                result_text, result_size = payload.decode(), len(payload)
            text = result_text
            data["result_size"] = result_size
            data["result_inline"] = result_size <= self._inline_limit
            if data["result_inline"]:
                # The text as it is, never the parsed value: the event is stored and sent as
                # this text, so parsing it here only to write it out again costs twice.
                data["result_json"] = result_text
            progress = 100.0
        if error is not None:
            data["error"] = error.to_dict()
        job = active.job.evolve(
            state=state,
            finished_at=time.time(),
            result=result if state is JobState.SUCCEEDED else None,
            result_json=text,
            result_size=result_size if state is JobState.SUCCEEDED else 0,
            error=error,
            reason=reason,
            progress=progress,
            pending_reason="",
        )
        events = [*before, NewEvent(EventKind.TERMINAL, data)]
        try:
            await self._append(active, events, job)
        except StorageError as exc:
            self._keep_unstored(active, events, job, exc)
        except JobOwnershipLostError:
            return  # the server that took it over decides how it ends
        # The job has ended: its worker credential stops working now, not when the worker
        # process is gone (a process it started may outlive it), and whether or not the
        # outcome could be stored yet.
        self._credentials.revoke(job.id)
        if state is not JobState.SUCCEEDED and self._outputs is not None:
            try:
                await self._outputs.discard_outputs(job.id)
            except Exception:
                # Left staged (never visible); the next start drops them.
                logger.exception("job %s: its staged outputs could not be dropped", job.id)
        run_seconds = (
            job.finished_at - job.started_at
            if job.started_at is not None and job.finished_at is not None
            else None
        )
        self._metrics.job_finished(job.plugin, job.action, job.mode, state.value, run_seconds)
        if state is JobState.CANCELLED:
            # Wakes a worker stream still waiting, so it can be told to stop.
            active.cancel.set()
        logger.info("job %s: %s %s", job.id, state.value, reason or "")

    def _keep_unstored(
        self, active: _ActiveJob, events: Sequence[NewEvent], job: Job, exc: StorageError
    ) -> None:
        """Hold a terminal outcome the store refused, and retry it in the background."""
        # The outcome is known and final: GetJob, ListJobs and the worker side see it now.
        # last_seq stays the newest stored event's, so a subscriber resuming from it waits
        # for the outcome's events instead of missing them.
        active.job = job.evolve(last_seq=active.job.last_seq)
        active.unstored = (events, job)
        self._active.setdefault(job.id, active)
        logger.warning(
            "job %s: could not store its %s state (%s); retrying until it is stored",
            job.id,
            job.state.value,
            exc.cause,
        )
        active.storer = asyncio.create_task(
            self._store_unstored(active), name=f"store-job-{job.id}"
        )

    async def _store_unstored(self, active: _ActiveJob) -> None:
        """Store the job's held events, retrying with backoff; stops early on ``close``.

        No other event of the job can come in meanwhile (it is terminal in memory), so the
        events get the seqs that follow the stored ones, in order.
        """
        delay = STORE_RETRY_FIRST_SECONDS
        attempts = 0
        while active.unstored is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._store_now.wait(), delay)
            delay = min(delay * 2, STORE_RETRY_MAX_SECONDS)
            events, job = active.unstored
            attempts += 1
            try:
                stored = await self._hub.append(job.id, events, job)
            except StorageError as exc:
                if self._store_now.is_set():
                    # The server is stopping and the store still refuses: nothing more can
                    # be done in this process. The next start fails a job left RUNNING and
                    # queues one left PENDING again.
                    logger.error(
                        "job %s: its %s state could not be stored (%s) before the server "
                        "stopped; the database still holds an earlier state",
                        job.id,
                        job.state.value,
                        exc.cause,
                    )
                    return
                if attempts % 30 == 0:
                    logger.warning(
                        "job %s: %s state still not stored after %d attempts (%s)",
                        job.id,
                        job.state.value,
                        attempts,
                        exc.cause,
                    )
                continue
            except Exception:
                # Not a storage condition that passes (a bug): retrying cannot help. The job
                # keeps its outcome in memory for this process's life.
                logger.exception("job %s: storing its %s state failed", job.id, job.state.value)
                return
            active.job = job.evolve(last_seq=stored[-1].seq)
            active.unstored = None
            active.storage_error = None
            logger.warning(
                "job %s: %s state stored at attempt %d", job.id, job.state.value, attempts + 1
            )
        if active.task is None or active.task.done():
            self._active.pop(active.job.id, None)

    # Worker side ----------------------------------------------------------------------------

    def verify_worker(self, credential: str) -> WorkerClaims:
        """The claims of a worker credential (UnauthenticatedError if invalid)."""
        return self._credentials.verify(credential)

    def _worker_job(self, claims: WorkerClaims, job_id: str) -> _ActiveJob:
        if claims.job_id != job_id:
            raise PermissionDeniedError("this worker credential is for another job")
        active = self._active.get(job_id)
        if active is None:
            raise FailedPreconditionError(f"job {job_id!r} is not running on this server")
        if active.job.state.is_terminal:
            raise FailedPreconditionError(f"job {job_id!r} has already finished")
        return active

    def running_job(self, claims: WorkerClaims, job_id: str) -> Job:
        """The job a worker credential runs, while it runs (PermissionDeniedError for another
        job's credential, FailedPreconditionError once it has finished)."""
        return self._worker_job(claims, job_id).job

    def is_running(self, job_id: str) -> bool:
        """True while the job runs on this server and has not finished."""
        active = self._active.get(job_id)
        return active is not None and not active.job.state.is_terminal

    async def assignment(self, claims: WorkerClaims, job_id: str) -> Job:
        """The job a worker must run."""
        if claims.job_id != job_id:
            raise PermissionDeniedError("this worker credential is for another job")
        active = self._active.get(job_id)
        if active is None:
            job = await self._store.get_job(job_id)
            if job is None:
                raise JobNotFoundError(job_id)
            raise FailedPreconditionError(f"job {job_id!r} is not runnable ({job.state.value})")
        if active.job.state.is_terminal:
            raise FailedPreconditionError(f"job {job_id!r} has already finished")
        if self._closing and not active.opened:
            raise ServiceUnavailableError(SHUTTING_DOWN_PENDING)
        return active.job

    async def open_worker_stream(
        self, claims: WorkerClaims, job_id: str, worker_id: str
    ) -> tuple[int, asyncio.Event]:
        """Start (or resume) a worker's event stream: ``(stored worker_seq, cancel event)``.

        The first open moves the job to RUNNING.
        """
        active = self._worker_job(claims, job_id)
        async with active.lock:
            if self._closing and not active.opened:
                # Shutting down: a job that has not started stays PENDING for the next start.
                raise ServiceUnavailableError(SHUTTING_DOWN_PENDING)
            if not active.opened:
                job = active.job.evolve(
                    state=JobState.RUNNING, started_at=time.time(), pending_reason=""
                )
                await self._append(
                    active,
                    [NewEvent(EventKind.STATE, {"state": "RUNNING", "reason": "worker started"})],
                    job,
                )
                # Only once RUNNING is stored: a worker whose open the store refused opens
                # again, and its job must not go on without that event.
                active.opened = True
                self._metrics.job_started(
                    job.plugin, job.action, job.mode, time.time() - job.created_at
                )
                logger.info("job %s: running on worker %s", job_id, worker_id)
            return active.worker_seq, active.cancel

    async def report(
        self, claims: WorkerClaims, job_id: str, reports: Sequence[WorkerReport]
    ) -> tuple[int, bool]:
        """Store a batch of worker reports; ``(acked worker_seq, finished)``.

        Reports already stored (after a reconnect) are skipped; a gap is INVALID_ARGUMENT.
        A batch the store refuses is not acknowledged (StorageError), so the worker sends it
        again; one that ends with the finish is accepted all the same and stored later, unless
        the job's outputs could not be stored (see ``_finish_locked``).
        """
        active = self._worker_job(claims, job_id)
        async with active.lock:
            if not active.opened:
                raise InvalidArgumentError("the stream must be opened before reporting events")
            result_size = len(active.result)
            try:
                return await self._report_locked(active, reports)
            except BaseException:
                # Not acknowledged: when the worker sends the batch again, its result chunks
                # must fit again.
                del active.result[result_size:]
                raise

    async def _report_locked(
        self, active: _ActiveJob, reports: Sequence[WorkerReport]
    ) -> tuple[int, bool]:
        events: list[NewEvent] = []
        logs: list[tuple[Any, Any, NewEvent]] = []
        finished: WorkerFinished | None = None
        expected = active.worker_seq + 1
        progress = active.job.progress
        for report in reports:
            if report.worker_seq < expected:
                continue
            if report.worker_seq > expected:
                raise InvalidArgumentError(
                    f"worker_seq gap: expected {expected}, got {report.worker_seq}"
                )
            if finished is not None:
                raise InvalidArgumentError("events after the finish")
            expected += 1
            item = report.item
            if isinstance(item, NewEvent):
                if item.kind is EventKind.PROGRESS:
                    progress = float(item.data.get("overall", progress))
                elif item.kind is EventKind.LOG:
                    logs.append((item.data.get("level", ""), item.data.get("event", ""), item))
                events.append(item)
            elif isinstance(item, ResultChunk):
                if item.offset != len(active.result):
                    raise InvalidArgumentError(
                        f"result chunk at offset {item.offset}, expected {len(active.result)}"
                    )
                active.result.extend(item.data)
            else:
                finished = item
        if finished is None:
            if events:
                await self._append(active, events, active.job.evolve(progress=progress))
        else:
            try:
                outcome = self._worker_outcome(active, finished)
            except InvalidArgumentError:
                if events:  # what the worker reported before its bad finish is kept
                    await self._append(active, events, active.job.evolve(progress=progress))
                raise
            # The batch's events and the terminal one go to the store together.
            await self._finish_locked(active, before=events, progress=progress, **outcome)
        active.worker_seq = expected - 1
        if logs:
            # Stored (or held as the outcome) by now: the server's log gets them too.
            job = active.job
            forward_job_logs(
                job.id,
                job.plugin,
                job.action,
                [(str(level), str(event), item.data.get("data")) for level, event, item in logs],
            )
        return active.worker_seq, finished is not None

    def _worker_outcome(self, active: _ActiveJob, finished: WorkerFinished) -> dict[str, Any]:
        """The ``_finish_locked`` arguments for a worker's finish (InvalidArgumentError if
        it does not fit what the worker sent)."""
        if finished.state is JobState.SUCCEEDED:
            if finished.result_size != len(active.result):
                raise InvalidArgumentError(
                    f"result has {len(active.result)} bytes, finish says {finished.result_size}"
                )
            if not active.result:
                active.result.extend(b"null")  # no bytes: the action's result was None
            size = len(active.result)
            try:
                text = active.result.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise InvalidArgumentError(f"result is not UTF-8 JSON: {exc}") from None
            # The result is stored and served as the worker's text, never parsed here (not
            # even an inline one: its terminal event carries the same text). The worker's SDK
            # wrote it with a JSON serialiser, and clients parse what they fetch, reporting
            # text that is not JSON as a protocol error.
            return {"state": JobState.SUCCEEDED, "result_text": text, "result_size": size}
        if finished.state is JobState.CANCELLED:
            return {"state": JobState.CANCELLED, "reason": active.cancel_reason or "cancelled"}
        if finished.state is JobState.FAILED:
            error = finished.error or JobError(
                type="UnknownError",
                message="the worker reported a failure without details",
                origin=ErrorOrigin.PLATFORM,
            )
            return {"state": JobState.FAILED, "error": error, "reason": error.message}
        raise InvalidArgumentError(f"a worker cannot finish a job as {finished.state.value}")

    # Lifecycle ------------------------------------------------------------------------------

    async def recover(self) -> None:
        """Fail jobs a previous process left RUNNING and queue again those left PENDING.

        With a ``server_id``: only the jobs of this server's previous process (the others'
        are theirs, or taken over once their lease expires).
        """
        if self._server_id:
            claimed = await self._store.claim_jobs(
                self._server_id, previous_owner=self._server_id, limit=1_000_000
            )
            for claim in claimed:
                await self.adopt(claim)
            return
        for job in await self._store.jobs_in_states([JobState.RUNNING]):
            active = _ActiveJob(job=job)
            await self._finish(
                active,
                JobState.FAILED,
                error=JobError(
                    type="ServerRestarted",
                    message=SERVER_STOPPED_REASON,
                    origin=ErrorOrigin.PLATFORM,
                ),
                reason=SERVER_STOPPED_REASON,
            )
            logger.warning("job %s: marked FAILED: %s", job.id, SERVER_STOPPED_REASON)
        for job in await self._store.jobs_in_states([JobState.PENDING]):
            if job.mode not in self._executors:
                await self._finish(
                    _ActiveJob(job=job),
                    JobState.FAILED,
                    error=JobError(
                        type="ExecutorUnavailable",
                        message=f"no executor for mode {job.mode!r} after a server restart",
                        origin=ErrorOrigin.PLATFORM,
                    ),
                )
                continue
            active = _ActiveJob(job=job)
            self._active[job.id] = active
            active.task = asyncio.create_task(self._run(active), name=f"job-{job.id}")
            logger.info("job %s: queued again after a server restart", job.id)

    async def close(self, grace_seconds: float = 0.0) -> None:
        """Stop accepting jobs, then shut down (see the module's shutdown policy).

        Jobs not yet RUNNING stay PENDING and their launches are withdrawn at once; RUNNING
        jobs get ``grace_seconds`` to finish on their own, then the ones still running are
        FAILED and every worker is killed. Worker RPCs must still be served meanwhile.
        """
        self._closing = True
        waiting = [a for a in self._active.values() if not a.opened]
        running = [a for a in self._active.values() if a.opened]
        # No await since ``_closing`` was set, so no job counted as waiting can have opened
        # its stream: from here on open_worker_stream refuses it.
        for active in waiting:
            if active.task is not None:
                active.task.cancel()
        withdrawn = [a.task for a in waiting if a.task is not None]
        if withdrawn:
            await asyncio.wait(withdrawn)
        busy = [a.task for a in running if a.task is not None and not a.task.done()]
        if busy and grace_seconds > 0:
            await asyncio.wait(busy, timeout=grace_seconds)
        reason = shutdown_reason(grace_seconds)
        for active in running:
            if not active.job.state.is_terminal:
                logger.warning("job %s: %s", active.job.id, reason)
                await self._finish(
                    active,
                    JobState.FAILED,
                    error=JobError(
                        type="ServerStopped", message=reason, origin=ErrorOrigin.PLATFORM
                    ),
                    reason=reason,
                )
        for executor in self._executors.values():
            await executor.close()
        tasks = [a.task for a in self._active.values() if a.task is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, SynapseError):
                await task
        await self._flush_unstored()

    async def _flush_unstored(self) -> None:
        """Give each held terminal state one last attempt now, and wait for the outcome."""
        self._store_now.set()
        storers = [a.storer for a in self._active.values() if a.storer is not None]
        if storers:
            await asyncio.gather(*storers, return_exceptions=True)


def _storage_job_error(
    exc: StorageError, detail: str = "", *, correlation_id: str = ""
) -> JobError:
    """The error of a job that failed because the server could not store its events."""
    return JobError(
        type="StorageFull" if isinstance(exc, StorageFullError) else "StorageUnavailable",
        message=f"the server could not store the job's events ({exc.cause}){detail}",
        origin=ErrorOrigin.PLATFORM,
        correlation_id=correlation_id,
    )
