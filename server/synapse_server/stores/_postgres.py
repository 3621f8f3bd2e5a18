"""PostgreSQL plumbing of every PostgreSQL store: the connection pool, calls, storage errors.

The one place that says how the server talks to PostgreSQL (psycopg 3 and its pool): every
store call borrows a pooled connection (autocommit; multi-statement writes open a
transaction), is bounded in time, and has the driver's failures turned into the core's
storage errors. A database that cannot be reached answers UNAVAILABLE quickly instead of
holding the caller: once a call has seen the database gone, later calls wait at most
``_DOWN_ACQUIRE_SECONDS`` for a connection until one succeeds again. The pool re-establishes
its connections by itself when the database is back.

URLs are ``postgresql://`` (or ``postgres://``) libpq URLs. They may carry a password: only
:func:`display_url` (host, port and database) ever reaches a log line or an error.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from synapse_server.core._errors import (
    InvalidArgumentError,
    StorageError,
    StorageFullError,
    StorageUnavailableError,
)
from synapse_server.core._storage import StorageGuard

__all__ = [
    "POSTGRES_SCHEMES",
    "DatabaseUnreachableError",
    "PostgresChannel",
    "PostgresDatabase",
    "PostgresOptions",
    "display_url",
    "postgres_storage_error",
]

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: The URL schemes of PostgreSQL databases.
POSTGRES_SCHEMES = ("postgresql", "postgres")
# While the database is known to be unreachable, a call waits this long for a connection
# before answering UNAVAILABLE (a working pool hands one over in microseconds).
_DOWN_ACQUIRE_SECONDS = 1.0
# SQLSTATE classes and codes that pass by themselves: resources (53), operator intervention
# (57: shutdown, statement timeout), serialization failures and deadlocks (40), lock waits.
_TRANSIENT_SQLSTATES = {
    "40001": "database serialization conflict",
    "40P01": "database deadlock",
    "55P03": "database lock not available",
    "57014": "database statement timeout",
}


class DatabaseUnreachableError(StorageUnavailableError):
    """The database cannot be reached (at start: the server does not start). UNAVAILABLE."""

    def __init__(self, display: str, reason: str) -> None:
        StorageError.__init__(
            self,
            "the database is unreachable",
            f"cannot connect to the database at {display}: {reason}",
        )


class PostgresOptions:
    """How a server uses its PostgreSQL database (pool size and time limits)."""

    def __init__(
        self,
        *,
        min_connections: int = 2,
        max_connections: int = 16,
        connect_timeout: float = 5.0,
        acquire_timeout: float = 5.0,
        call_timeout: float = 30.0,
    ) -> None:
        self.min_connections = min_connections
        self.max_connections = max_connections
        self.connect_timeout = connect_timeout
        self.acquire_timeout = acquire_timeout
        self.call_timeout = call_timeout


def display_url(url: str) -> str:
    """``postgresql://host:port/database`` of ``url``: never its user's password."""
    try:
        from psycopg.conninfo import conninfo_to_dict

        parts = conninfo_to_dict(url)
    except Exception:
        return "postgresql://(unparsable URL)"
    host = str(parts.get("host") or "localhost")
    port = str(parts.get("port") or "5432")
    dbname = str(parts.get("dbname") or parts.get("user") or "")
    return f"postgresql://{host[:100]}:{port[:10]}/{dbname[:100]}"


def _first_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split("\n")[0].split())
    return text[:200] or type(exc).__name__


def postgres_storage_error(
    exc: BaseException, directory: Path | None = None
) -> StorageError | None:
    """The domain error for ``exc`` when it is a storage failure, else ``None``.

    Connection failures, a pool without a free connection in time, a server shutting down
    and transient conflicts are UNAVAILABLE; a full disk on the database server is
    RESOURCE_EXHAUSTED. Errors of the statements themselves (a bug) stay as they are.
    """
    import psycopg
    from psycopg_pool import PoolTimeout

    if isinstance(exc, StorageError):
        return exc
    if isinstance(exc, PoolTimeout):
        return StorageUnavailableError("no database connection available")
    if isinstance(exc, TimeoutError):
        return StorageUnavailableError("the database did not answer in time")
    if not isinstance(exc, psycopg.Error):
        return None
    sqlstate = getattr(exc, "sqlstate", None) or ""
    if sqlstate == "53100":
        return StorageFullError()
    if sqlstate in _TRANSIENT_SQLSTATES:
        return StorageUnavailableError(_TRANSIENT_SQLSTATES[sqlstate])
    if sqlstate.startswith(("08", "53", "57")) or isinstance(
        exc, psycopg.OperationalError | psycopg.InterfaceError
    ):
        return StorageUnavailableError("the database is unreachable")
    return None


def _nul_text(exc: BaseException) -> bool:
    # PostgreSQL text cannot hold NUL characters; psycopg refuses such a value before sending.
    return "NUL" in str(exc) and "0x00" in str(exc)


class PostgresDatabase:
    """One PostgreSQL database and the pool of connections to it, shared by the stores.

    Opened by every store that uses it and closed by each again (see ``SqliteDatabase``):
    the first :meth:`open` checks that the database can be reached, migrates its schema and
    starts the pool; the last :meth:`close` closes the pool.
    """

    def __init__(self, url: str, options: PostgresOptions | None = None) -> None:
        self._url = url
        self._options = options or PostgresOptions()
        self.display = display_url(url)
        self._users = 0
        self._lifecycle = asyncio.Lock()
        self._pool: Any = None
        # Set when a call found the database unreachable; cleared by the next success.
        self._down = False

    @property
    def url(self) -> str:
        """The database URL (it may carry a password: never log it)."""
        return self._url

    @property
    def options(self) -> PostgresOptions:
        """Pool size and time limits."""
        return self._options

    def channel(self, name: str) -> PostgresChannel:
        """A store's way to the database (``name``, what the store keeps, goes to the log)."""
        return PostgresChannel(self, name)

    async def open(self) -> None:
        """Take a reference; the first one connects, migrates the schema, starts the pool.

        Raises ``StorageUnavailableError`` naming the database and why it cannot be reached,
        and ``StoreSchemaError`` for a database a newer release wrote.
        """
        async with self._lifecycle:
            self._users += 1
            if self._users > 1:
                return
            try:
                await self._open()
            except BaseException:
                self._users -= 1
                await self._shut_down()
                raise

    async def _open(self) -> None:
        import psycopg
        from psycopg_pool import AsyncConnectionPool

        from synapse_server.stores._postgres_schema import migrate

        opts = self._options
        try:
            await asyncio.to_thread(migrate, self._url, self.display, opts.connect_timeout)
        except psycopg.OperationalError as exc:
            raise DatabaseUnreachableError(self.display, _first_line(exc)) from None
        self._pool = AsyncConnectionPool(
            self._url,
            min_size=opts.min_connections,
            max_size=max(opts.max_connections, opts.min_connections),
            kwargs={"autocommit": True, "connect_timeout": max(1, round(opts.connect_timeout))},
            timeout=opts.acquire_timeout,
            # A slot that cannot reconnect for this long is given up; the next call that
            # needs a connection grows the pool again (at once, not after a long backoff).
            reconnect_timeout=max(10.0, opts.connect_timeout * 2),
            name="synapse",
            open=False,
        )
        await self._pool.open(wait=False)

    async def close(self) -> None:
        """Drop a reference; the last one closes the pool."""
        async with self._lifecycle:
            if self._users == 0:
                return
            self._users -= 1
            if self._users == 0:
                await self._shut_down()

    async def _shut_down(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close(timeout=5.0)

    async def call(
        self,
        fn: Callable[[Any], Awaitable[T]],
        guard: StorageGuard,
        *,
        write: bool = True,
    ) -> T:
        """``await fn(connection)`` on a pooled connection (autocommit), bounded in time, with
        storage failures raised as ``StorageError``."""
        import psycopg

        pool = self._pool
        if pool is None:
            raise RuntimeError(f"the database {self.display} is not open")
        opts = self._options
        acquire = min(opts.acquire_timeout, _DOWN_ACQUIRE_SECONDS) if self._down else None
        try:
            with guard.guarded(write=write):
                async with asyncio.timeout(opts.call_timeout):
                    async with pool.connection(timeout=acquire) as conn:
                        result = await fn(conn)
        except StorageUnavailableError:
            if not self._down:
                self._down = True
                # Idle connections may be as broken as the one that failed: have the pool
                # check and replace them, so calls after the database is back succeed.
                with contextlib.suppress(Exception):
                    asyncio.get_running_loop().create_task(self._check_pool(pool))
            raise
        except psycopg.DataError as exc:
            if _nul_text(exc):
                raise InvalidArgumentError(
                    "text values cannot contain NUL characters (U+0000)"
                ) from None
            raise
        self._down = False
        return result

    @staticmethod
    async def _check_pool(pool: Any) -> None:
        with contextlib.suppress(Exception):
            await pool.check()


class PostgresChannel:
    """One store's calls to a :class:`PostgresDatabase` (see :meth:`PostgresDatabase.channel`)."""

    def __init__(self, database: PostgresDatabase, name: str) -> None:
        self._db = database
        self._guard = StorageGuard(name, database.display, translate=postgres_storage_error)

    async def write(self, fn: Callable[[Any], Awaitable[T]]) -> T:
        """``await fn(connection)``; a write of several statements opens a transaction."""
        return await self._db.call(fn, self._guard)

    async def read(self, fn: Callable[[Any], Awaitable[T]]) -> T:
        """``await fn(connection)`` for a read (it does not end a failure period)."""
        return await self._db.call(fn, self._guard, write=False)
