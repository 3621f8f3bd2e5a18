"""What the shared PostgreSQL database tells a server as it happens: LISTEN/NOTIFY.

One connection per server, outside the pool, listens on two channels: stored event batches
of any job (``EVENTS_CHANNEL``: the event hub wakes the subscribers following that job from
this server) and cancel requests (``CANCEL_CHANNEL``: the job's owner tells its worker). The
payloads are small; subscribers read the events themselves from the tables.

A notification sent while the connection is down is lost: after reconnecting, the listener
calls ``on_reconnect`` so that the server looks again at everything it follows, and the
callers poll at a bounded interval anyway. TCP keepalives make a silently dead connection
noticed within seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from synapse_server.stores._postgres import PostgresDatabase
from synapse_server.stores._postgres_jobs import CANCEL_CHANNEL, EVENTS_CHANNEL

__all__ = ["PostgresNotifications"]

logger = logging.getLogger(__name__)

_FIRST_RETRY_SECONDS = 0.2
_MAX_RETRY_SECONDS = 2.0
_LOG_EVERY_SECONDS = 30.0


class PostgresNotifications:
    """The :class:`~synapse_server.core.StoreNotifications` of a PostgreSQL database."""

    def __init__(self, database: PostgresDatabase) -> None:
        self._db = database
        self._task: asyncio.Task[None] | None = None
        self._connected = asyncio.Event()

    @property
    def connected(self) -> bool:
        """True while the listening connection is up."""
        return self._connected.is_set()

    async def start(
        self,
        server_id: str,
        on_job_events: Callable[[str, int, bool], None],
        on_cancel: Callable[[str], None],
        on_reconnect: Callable[[], None],
    ) -> None:
        """Connect and listen (in the background); returns once listening, or after the
        connect timeout when the database cannot be reached yet (it keeps trying)."""
        if self._task is not None:
            return
        self._task = asyncio.create_task(
            self._listen(server_id, on_job_events, on_cancel, on_reconnect),
            name="postgres-listener",
        )
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._connected.wait(), self._db.options.connect_timeout)

    async def stop(self) -> None:
        """Stop listening and close the connection."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._connected.clear()

    async def _listen(
        self,
        server_id: str,
        on_job_events: Callable[[str, int, bool], None],
        on_cancel: Callable[[str], None],
        on_reconnect: Callable[[], None],
    ) -> None:
        import psycopg

        delay = _FIRST_RETRY_SECONDS
        lost_since: float | None = None
        last_log = 0.0
        while True:
            try:
                conn = await psycopg.AsyncConnection.connect(
                    self._db.url,
                    autocommit=True,
                    connect_timeout=max(1, round(self._db.options.connect_timeout)),
                    keepalives=1,
                    keepalives_idle=5,
                    keepalives_interval=2,
                    keepalives_count=3,
                )
                async with conn:
                    await conn.execute(f"LISTEN {EVENTS_CHANNEL}")
                    await conn.execute(f"LISTEN {CANCEL_CHANNEL}")
                    self._connected.set()
                    delay = _FIRST_RETRY_SECONDS
                    if lost_since is not None:
                        logger.warning(
                            "listening to %s again after %.1f s",
                            self._db.display,
                            time.monotonic() - lost_since,
                        )
                        lost_since = None
                        # Whatever was announced meanwhile is looked at again.
                        on_reconnect()
                    async for note in conn.notifies():
                        self._dispatch(
                            note.channel, note.payload, server_id, on_job_events, on_cancel
                        )
            except asyncio.CancelledError:
                raise
            except (psycopg.Error, OSError) as exc:
                self._connected.clear()
                now = time.monotonic()
                if lost_since is None:
                    lost_since = now
                if now - last_log >= _LOG_EVERY_SECONDS:
                    last_log = now
                    logger.warning(
                        "listening to %s failed (%s); retrying",
                        self._db.display,
                        " ".join(str(exc).split())[:200],
                    )
            await asyncio.sleep(delay)
            delay = min(delay * 2, _MAX_RETRY_SECONDS)

    @staticmethod
    def _dispatch(
        channel: str,
        payload: str,
        server_id: str,
        on_job_events: Callable[[str, int, bool], None],
        on_cancel: Callable[[str], None],
    ) -> None:
        try:
            if channel == EVENTS_CHANNEL:
                job_id, seq, terminal = payload.split(" ")
                on_job_events(job_id, int(seq), terminal == "1")
            elif channel == CANCEL_CHANNEL:
                owner, job_id = payload.split(" ")
                if owner == server_id:
                    on_cancel(job_id)
        except Exception:
            # A callback's bug must not stop the listener; polling covers the event.
            logger.exception("notification on %s not handled", channel)
