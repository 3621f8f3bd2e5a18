"""SQLite plumbing of every SQLite store: opening connections, transactions, storage errors.

The one place that says how the server talks to SQLite: every connection is opened by
:func:`connect` (WAL, its durability level, the busy timeout), every multi-statement write
runs in :func:`transaction` (rolled back safely on any failure), and :func:`sqlite_storage_error`
turns SQLite's failures into the core's storage errors. Threads and connection lifetimes are
:class:`~synapse_server.stores._sqlite_database.SqliteDatabase`'s.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

from synapse_server.core._errors import StorageError, StorageFullError
from synapse_server.core._storage import as_storage_error, transient_storage_error

__all__ = [
    "BUSY_TIMEOUT_MS",
    "connect",
    "release_transaction",
    "sqlite_storage_error",
    "transaction",
]

logger = logging.getLogger(__name__)

#: How long a statement waits for another connection's write lock before failing with
#: "database is locked" (answered UNAVAILABLE).
BUSY_TIMEOUT_MS = 5000

_PRAGMAS = (
    f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}",
    # NORMAL in WAL mode survives a process kill (only an OS crash may lose the last
    # transactions), which is the failure the server must tolerate.
    "PRAGMA synchronous=NORMAL",
)
# How often switching a new file to WAL is tried again while another connection holds it.
_WAL_RETRY_SECONDS = 0.01

# Primary result codes (the low byte of an extended code). SQLite reports a write that hit
# ENOSPC as SQLITE_FULL; the others are conditions that go away (a lock holder finishes, a
# device comes back) without anything in the request being wrong.
_SQLITE_TRANSIENT = {
    sqlite3.SQLITE_BUSY: "database is locked",
    sqlite3.SQLITE_LOCKED: "database is locked",
    sqlite3.SQLITE_IOERR: "disk I/O error",
    sqlite3.SQLITE_READONLY: "database is read-only",
    sqlite3.SQLITE_CANTOPEN: "cannot open the database file",
    sqlite3.SQLITE_PROTOCOL: "database lock protocol error",
}


def connect(path: Path) -> sqlite3.Connection:
    """A connection to the database file at ``path`` in autocommit mode, ready for WAL.

    Transactions are explicit (:func:`transaction`); the connection may be used from another
    thread than the one that opened it, but by one thread at a time.
    """
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        for pragma in _PRAGMAS:
            conn.execute(pragma)
        _enable_wal(conn)
    except BaseException:
        conn.close()
        raise
    return conn


def _enable_wal(conn: sqlite3.Connection) -> None:
    # Switching a new file to WAL needs it to itself, and SQLite answers "database is locked"
    # at once, without waiting for the busy timeout, while another connection (another
    # server starting on the same new file) has it: wait as long as the busy timeout would.
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            code = getattr(exc, "sqlite_errorcode", 0)
            if code & 0xFF != sqlite3.SQLITE_BUSY or time.monotonic() >= deadline:
                raise
        time.sleep(_WAL_RETRY_SECONDS)


def release_transaction(conn: sqlite3.Connection) -> bool:
    """Roll back ``conn``'s open transaction, if any, after a failed statement.

    SQLite has often rolled back already (a failed COMMIT on a full disk does); a ROLLBACK
    then would raise "no transaction is active" over the real error, so it is only issued
    when one is open, and its own failure is logged, never raised. A connection still inside
    a transaction after that would fail every later BEGIN: it is closed, and False returned
    so that the caller drops it and opens a fresh one.
    """
    try:
        if not conn.in_transaction:
            return True
    except sqlite3.ProgrammingError:  # closed already, by an earlier call for this failure
        return False
    try:
        conn.execute("ROLLBACK")
    except sqlite3.Error as exc:
        logger.warning("rollback after a failed write failed too: %s", exc)
    if not conn.in_transaction:
        return True
    with contextlib.suppress(sqlite3.Error):
        conn.close()
    return False


@contextlib.contextmanager
def transaction(conn: sqlite3.Connection, *, immediate: bool = False) -> Iterator[None]:
    """The block as one transaction: committed when it ends, rolled back when it raises.

    ``immediate`` takes the write lock at the start (``BEGIN IMMEDIATE``): for a block that
    reads before it writes and must not see the data change in between (another connection
    waits for the lock, up to the busy timeout). A failed COMMIT is rolled back too.
    """
    conn.execute("BEGIN IMMEDIATE" if immediate else "BEGIN")
    try:
        yield
        conn.execute("COMMIT")
    except BaseException:
        release_transaction(conn)
        raise


def sqlite_storage_error(exc: BaseException, directory: Path | None = None) -> StorageError | None:
    """The domain error for ``exc`` when it is a storage failure, else ``None``.

    SQLite's full-disk and transient result codes, and file system errors (see
    ``core._storage.as_storage_error``); ``directory`` (where the database file lives) lets an
    ambiguous I/O error be recognised as a full disk.
    """
    if not isinstance(exc, sqlite3.Error):
        return as_storage_error(exc, directory)
    code = getattr(exc, "sqlite_errorcode", None)
    if not isinstance(code, int):
        return None
    if code & 0xFF == sqlite3.SQLITE_FULL:
        return StorageFullError()
    cause = _SQLITE_TRANSIENT.get(code & 0xFF)
    return None if cause is None else transient_storage_error(cause, directory)
