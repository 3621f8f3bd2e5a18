"""Several servers on one database: this server's lease, its heartbeat, and taking over the
jobs of servers that stopped.

Each server has an id, stable across its restarts (kept in its data directory), and a lease
in the store that its heartbeat renews every third of ``lease_seconds``. The jobs submitted
to a server are its own; while its lease holds, no other server touches them. Once a lease
has expired, a survivor claims that server's unfinished jobs (each job by one survivor only)
and treats them as a restart does: RUNNING jobs fail naming the stopped server, PENDING jobs
run on the survivor.

A server that could not reach the database is not sure its own lease held meanwhile, and
others' leases look expired to everyone after an outage: so a server takes over the jobs of
servers whose lease *expired* only once its own heartbeat has succeeded without a break for a
whole lease period. A live server that was cut off as long renews its lease within that time,
and keeps its jobs. The jobs of a server that gave its lease up (a clean shutdown) are taken
over at the next heartbeat.

The heartbeat also brings the cancellations other servers stored for this server's jobs (a
notification brings them sooner: it only wakes the heartbeat).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from synapse_server.core._errors import StorageError
from synapse_server.core._hub import EventHub
from synapse_server.core._jobs import JobService
from synapse_server.core._store import ClaimedJob, JobStore, StoreNotifications

__all__ = ["JobCluster"]

logger = logging.getLogger(__name__)

# Jobs taken over per claim (the next heartbeat takes more).
_CLAIM_BATCH = 100


class JobCluster:
    """This server's membership of the servers sharing one store (see the module)."""

    def __init__(
        self,
        jobs: JobService,
        store: JobStore,
        hub: EventHub,
        notifications: StoreNotifications | None,
        *,
        server_id: str,
        host: str,
        lease_seconds: float,
    ) -> None:
        if lease_seconds <= 0:
            raise ValueError("lease_seconds must be positive")
        self._jobs = jobs
        self._store = store
        self._hub = hub
        self._notifications = notifications
        self.server_id = server_id
        self._host = host
        self._lease = lease_seconds
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        # Claimed jobs whose take-over failed (the store refused it): tried again each beat,
        # since no other server claims a job this one holds.
        self._unadopted: dict[str, ClaimedJob] = {}
        # Monotonic time since which every heartbeat succeeded (None: the last one failed).
        self._held_since: float | None = None

    @property
    def interval(self) -> float:
        """Seconds between heartbeats."""
        return self._lease / 3

    async def register(self, address: str) -> None:
        """Record this server (listening at ``address``) with a fresh lease: before it takes
        any job, so that no other server takes its jobs for a stopped server's."""
        await self._store.register_server(self.server_id, address, self._host, self._lease)
        self._held_since = time.monotonic()

    async def start(self) -> None:
        """Listen to the store, take back this server's own unfinished jobs (a restart) and
        start the heartbeat (after :meth:`register`, once workers can reach the server)."""
        if self._notifications is not None:
            await self._notifications.start(
                self.server_id,
                on_job_events=self._hub.remote_events,
                on_cancel=lambda _job_id: self._wake.set(),
                on_reconnect=self._reconnected,
            )
        await self._jobs.recover()
        self._task = asyncio.create_task(self._heartbeat(), name="cluster-heartbeat")
        logger.info("server %s: sharing the job store (lease %.1f s)", self.server_id, self._lease)

    def _reconnected(self) -> None:
        self._hub.refresh_remote()
        self._wake.set()

    async def stop(self) -> None:
        """Stop the heartbeat and give the lease up: the other servers may take this server's
        unfinished (pending) jobs at once."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._notifications is not None:
            await self._notifications.stop()
        try:
            await self._store.release_server(self.server_id)
        except StorageError as exc:
            logger.warning("server %s: lease not released (%s)", self.server_id, exc.cause)

    async def beat(self) -> None:
        """One heartbeat: renew the lease, act on cancel requests, take over the jobs of
        servers whose lease expired (once this server's own lease has held long enough)."""
        try:
            cancels = await self._store.renew_server(self.server_id, self._lease)
        except StorageError as exc:
            if self._held_since is not None:
                logger.warning(
                    "server %s: lease not renewed (%s); retrying", self.server_id, exc.cause
                )
            self._held_since = None
            return
        now = time.monotonic()
        if self._held_since is None:
            logger.warning("server %s: lease renewed again", self.server_id)
            self._held_since = now
            # Whatever other servers stored meanwhile is looked at again.
            self._hub.refresh_remote()
        for job_id, reason in cancels:
            await self._jobs.cancel_requested_elsewhere(job_id, reason)
        await self._adopt(list(self._unadopted.values()))
        # A lease given up is safe to act on at once; an expired one only once this server's
        # own lease has held for a whole period (see the module).
        released_only = now - self._held_since < self._lease
        try:
            claimed = await self._store.claim_jobs(
                self.server_id, released_only=released_only, limit=_CLAIM_BATCH
            )
        except StorageError as exc:
            logger.warning("server %s: could not claim jobs (%s)", self.server_id, exc.cause)
            return
        await self._adopt(claimed)
        if claimed:
            owners = sorted({c.previous_owner or "(none)" for c in claimed})
            logger.warning(
                "server %s: took over %d job(s) of stopped server(s) %s",
                self.server_id,
                len(claimed),
                ", ".join(owners),
            )
            self._wake.set()  # there may be more

    async def _adopt(self, claimed: list[ClaimedJob]) -> None:
        for claim in claimed:
            self._unadopted[claim.job.id] = claim
            try:
                await self._jobs.adopt(claim)
            except StorageError as exc:
                logger.warning(
                    "job %s: take-over not stored yet (%s); retrying", claim.job.id, exc.cause
                )
                continue
            del self._unadopted[claim.job.id]

    async def _heartbeat(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.interval)
            self._wake.clear()
            try:
                await self.beat()
            except asyncio.CancelledError:
                raise
            except Exception:
                # A bug in one beat must not end the lease: the next one tries again.
                logger.exception("server %s: heartbeat failed", self.server_id)
