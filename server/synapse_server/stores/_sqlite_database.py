"""One SQLite database file and the threads that use it, shared by the stores kept in it.

SQLite in WAL mode lets one connection write while others read. Each database has one writer
thread and one reader thread, each owning one connection for its life, used by every store on
the file: the event loop never blocks on disk, long replays (reads) do not stall writes, and
writes of different stores never wait for each other's lock inside one server (SQLite takes
one writer at a time anyway; two writer connections of one process only add lock waits).
Measured with bench/bench_progress.py against one writer and reader per store: see the
commit that made the stores share them.
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

__all__ = ["SqliteDatabase"]

logger = logging.getLogger(__name__)

T = TypeVar("T")


class SqliteDatabase:
    """The SQLite file at ``path``: its connections, I/O threads and schema.

    Stores share one instance (see ``open_stores``) or each makes its own from a path. It is
    opened by every store that uses it and closed by each again: the first :meth:`open`
    creates the file and migrates its schema, the last :meth:`close` closes the connections
    and stops the threads.
    """

    def __init__(self, path: Path) -> None:
        self._path = path
        self._users = 0
        self._lifecycle = asyncio.Lock()
        self._writer: ThreadPoolExecutor | None = None
        self._reader: ThreadPoolExecutor | None = None
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._connections_lock = threading.Lock()
        self._guard = self.guard("database")

    @property
    def path(self) -> Path:
        """The database file."""
        return self._path

    def guard(self, name: str) -> StorageGuard:
        """A guard for one store's calls (``name`` is what the store keeps, for the log).

        Disk full, I/O errors and long locks leave its calls as ``StorageError``.
        """
        return StorageGuard(name, self._path, translate=sqlite_storage_error)

    async def open(self) -> None:
        """Take a reference; the first one creates the file and brings its schema up to date."""
        async with self._lifecycle:
            self._users += 1
            if self._users > 1:
                return
            self._path.parent.mkdir(parents=True, exist_ok=True)
            self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-writer")
            self._reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-reader")
            try:
                await self.write(lambda conn: migrate(conn, self._path), self._guard)
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
        writer, reader = self._writer, self._reader
        self._writer = self._reader = None
        loop = asyncio.get_running_loop()
        # Drain both threads first so no query is mid-flight when the connections close.
        for pool in (reader, writer):
            if pool is not None:
                await loop.run_in_executor(pool, lambda: None)
        with self._connections_lock:
            for conn in self._connections:
                try:
                    conn.close()
                except sqlite3.Error as exc:
                    # Closing must not fail a shutdown (e.g. on a full disk).
                    logger.warning("database %s: closing a connection failed: %s", self._path, exc)
            self._connections.clear()
        for pool in (writer, reader):
            if pool is not None:
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

    async def write(self, fn: Callable[[sqlite3.Connection], T], guard: StorageGuard) -> T:
        """``fn(connection)`` on the writer thread; storage failures raised through ``guard``.

        ``fn`` runs in autocommit mode: a write of several statements uses ``transaction``.
        """
        pool = self._pool(self._writer)
        return await asyncio.get_running_loop().run_in_executor(
            pool, lambda: guard.call(lambda: self._call(fn))
        )

    async def read(self, fn: Callable[[sqlite3.Connection], T], guard: StorageGuard) -> T:
        """``fn(connection)`` on the reader thread (it must not write)."""
        pool = self._pool(self._reader)
        return await asyncio.get_running_loop().run_in_executor(
            pool, lambda: guard.call(lambda: self._call(fn), write=False)
        )

    def _pool(self, pool: ThreadPoolExecutor | None) -> ThreadPoolExecutor:
        if pool is None:
            raise RuntimeError(f"the database {self._path} is not open")
        return pool
