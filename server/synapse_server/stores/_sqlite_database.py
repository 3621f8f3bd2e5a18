"""One SQLite database file and the threads that use it, shared by the stores kept in it.

SQLite in WAL mode lets one connection write while others read. A database has one writer
thread, shared by every store on the file, and one reader thread per store, each owning one
connection for its life: the event loop never blocks on disk; writes of different stores never
wait for each other's lock inside one server (SQLite takes one writer at a time anyway: two
writer connections of one process only add lock waits and the busy handler's sleeps); a long
replay of job events does not hold up a write, nor the deployment look-up of an Infer call.
Measured with bench/bench_stores.py (8 jobs appending, replays and look-ups at a fixed pace):
the same append rate as a writer and reader per store (within +-5 %), while one reader for
all stores made the look-up's p99 three times longer (about 5 -> 17 ms).
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from synapse_server.core._storage import StorageGuard
from synapse_server.stores._sqlite import connect, release_transaction, sqlite_storage_error
from synapse_server.stores._sqlite_schema import migrate

__all__ = ["SqliteChannel", "SqliteDatabase"]

logger = logging.getLogger(__name__)

T = TypeVar("T")


class SqliteDatabase:
    """The SQLite file at ``path``: its connections, I/O threads and schema.

    Stores share one instance (see ``open_stores``) or each makes its own from a path; each
    reaches it through its :meth:`channel`. It is opened by every store that uses it and
    closed by each again: the first :meth:`open` creates the file and migrates its schema,
    the last :meth:`close` closes the connections and stops the threads.
    """

    def __init__(self, path: Path) -> None:
        self._path = path
        self._users = 0
        self._lifecycle = asyncio.Lock()
        self._writer: ThreadPoolExecutor | None = None
        # One per channel, started at its first read while the database is open.
        self._readers: dict[str, ThreadPoolExecutor] = {}
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._connections_lock = threading.Lock()
        self._schema = self.channel("database")

    @property
    def path(self) -> Path:
        """The database file."""
        return self._path

    def channel(self, name: str) -> SqliteChannel:
        """A store's way to the database: the shared writer, a reader of its own, and a guard
        that turns storage failures into ``StorageError`` (``name``, what the store keeps,
        goes to the server log)."""
        return SqliteChannel(self, name)

    async def open(self) -> None:
        """Take a reference; the first one creates the file and brings its schema up to date."""
        async with self._lifecycle:
            self._users += 1
            if self._users > 1:
                return
            try:
                self._path.parent.mkdir(parents=True, exist_ok=True)
                self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-writer")
                await self._schema.write(lambda conn: migrate(conn, self._path))
            except BaseException:
                self._users -= 1
                await self._shut_down()
                raise

    async def close(self) -> None:
        """Drop a reference; the last one closes every connection and stops the threads."""
        async with self._lifecycle:
            if self._users == 0:
                return
            self._users -= 1
            if self._users == 0:
                await self._shut_down()

    async def _shut_down(self) -> None:
        pools = [*self._readers.values(), *([self._writer] if self._writer else [])]
        self._writer = None
        self._readers = {}
        loop = asyncio.get_running_loop()
        # Drain every thread first so no query is mid-flight when the connections close.
        for pool in pools:
            await loop.run_in_executor(pool, lambda: None)
        with self._connections_lock:
            for conn in self._connections:
                try:
                    conn.close()
                except sqlite3.Error as exc:
                    # Closing must not fail a shutdown (e.g. on a full disk).
                    logger.warning("database %s: closing a connection failed: %s", self._path, exc)
            self._connections.clear()
        for pool in pools:
            pool.shutdown(wait=True)

    def _connection(self) -> sqlite3.Connection:
        # Each I/O thread owns one connection for its whole life.
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = connect(self._path)
            self._local.conn = conn
            with self._connections_lock:
                self._connections.append(conn)
        return conn

    def _call(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        conn = self._connection()
        try:
            return fn(conn)
        except BaseException:
            if not release_transaction(conn):
                # Closed, stuck in a transaction: this thread's next call opens a fresh one.
                self._local.conn = None
                with self._connections_lock:
                    if conn in self._connections:
                        self._connections.remove(conn)
            raise

    def _writer_pool(self) -> ThreadPoolExecutor:
        if self._writer is None:
            raise RuntimeError(f"the database {self._path} is not open")
        return self._writer

    def _reader_pool(self, name: str) -> ThreadPoolExecutor:
        pool = self._readers.get(name)
        if pool is None:
            self._writer_pool()  # not open: no thread is started
            pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-reader")
            self._readers[name] = pool
        return pool


class SqliteChannel:
    """One store's calls to a :class:`SqliteDatabase` (see :meth:`SqliteDatabase.channel`)."""

    def __init__(self, database: SqliteDatabase, name: str) -> None:
        self._db = database
        self._name = name
        # Disk full, I/O errors and long locks leave its calls as StorageError (see _storage).
        self._guard = StorageGuard(name, database.path, translate=sqlite_storage_error)

    async def write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """``fn(connection)`` on the database's writer thread.

        ``fn`` runs in autocommit mode: a write of several statements uses ``transaction``.
        """
        return await self.submit(fn)

    def submit(self, fn: Callable[[sqlite3.Connection], T]) -> asyncio.Future[T]:
        """:meth:`write`, handed to the writer thread now; its future (RuntimeError at once
        when the database is not open)."""
        pool = self._db._writer_pool()
        return asyncio.get_running_loop().run_in_executor(
            pool, lambda: self._guard.call(lambda: self._db._call(fn))
        )

    async def read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """``fn(connection)`` on this store's reader thread (it must not write)."""
        pool = self._db._reader_pool(self._name)
        return await asyncio.get_running_loop().run_in_executor(
            pool, lambda: self._guard.call(lambda: self._db._call(fn), write=False)
        )
