"""A real PostgreSQL server for tests and benchmarks, in a temporary directory.

Debian's ``postgresql`` package provides the server binaries (``initdb``, ``pg_ctl``) under
``/usr/lib/postgresql/<version>/bin``; ``.ci/run`` installs it when they are missing. The
cluster is created with trust authentication for one superuser (``synapse``), listens on
127.0.0.1 at a free port and keeps its socket in its own directory, so it never touches a
system cluster. ``initdb`` refuses to run as root: as root every server command runs as the
``postgres`` user (the directory is made traversable for it).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path
from typing import Any

__all__ = ["PostgresCluster", "postgres_bin_dir"]

_SUPERUSER = "synapse"
_counter = itertools.count()


def postgres_bin_dir() -> Path | None:
    """Where ``initdb`` and ``pg_ctl`` are, or ``None`` when PostgreSQL is not installed."""
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    candidates = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"),
        key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0,
    )
    return candidates[-1].parent if candidates else None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PostgresCluster:
    """One throw-away PostgreSQL server: :meth:`start`, :meth:`database`, :meth:`stop`."""

    def __init__(self, bin_dir: Path, root: Path | None = None) -> None:
        self._bin = bin_dir
        self.root = Path(root or tempfile.mkdtemp(prefix="synapse-pg-"))
        self.data = self.root / "data"
        self.port = _free_port()
        self._as_postgres = os.geteuid() == 0
        if self._as_postgres:
            # The postgres user must reach its data directory through this one.
            self.root.chmod(0o777)

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        command = [str(self._bin / args[0]), *args[1:]]
        if self._as_postgres:
            command = ["runuser", "-u", "postgres", "--", *command]
        return subprocess.run(
            command, capture_output=True, text=True, check=check, timeout=120, cwd=self.root
        )

    def init(self) -> None:
        """Create the cluster's files (once)."""
        if not self.data.exists():
            self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", _SUPERUSER, "-E", "UTF8")

    def start(self, *, durable: bool = False) -> None:
        """Start the server (creating the cluster first if needed) and wait until it accepts.

        Tests run it without durability (no fsync: faster, and nothing outlives them);
        ``durable`` keeps PostgreSQL's defaults (benchmarks).
        """
        self.init()
        options = f"-p {self.port} -k {self.data} -c listen_addresses=127.0.0.1 "
        options += "-c max_connections=300"
        if not durable:
            options += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        self._run(
            "pg_ctl", "-D", str(self.data), "-l", str(self.data / "server.log"),
            "-o", options, "-w", "-t", "60", "start",
        )  # fmt: skip

    def stop(self, mode: str = "fast") -> None:
        """Stop the server: ``fast`` (disconnect clients, clean shutdown) or ``immediate``."""
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop", check=False)

    @property
    def running(self) -> bool:
        """True while the server's postmaster runs."""
        return self._run("pg_ctl", "-D", str(self.data), "status", check=False).returncode == 0

    def url(self, database: str = "postgres") -> str:
        """The database URL of ``database`` on this server."""
        return f"postgresql://{_SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def database(self, prefix: str = "t") -> str:
        """A new, empty database; returns its URL."""
        name = f"{prefix}_{os.getpid()}_{next(_counter)}"
        self.sql(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def drop(self, url: str) -> None:
        """Drop the database of ``url`` (made by :meth:`database`), even while connected."""
        name = url.rsplit("/", 1)[1]
        self.sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def sql(self, statement: str, database: str = "postgres") -> list[tuple[Any, ...]]:
        """Run one statement (autocommit); its rows, if it returns any."""
        import psycopg

        with psycopg.connect(self.url(database), autocommit=True, connect_timeout=10) as conn:
            cursor = conn.execute(statement.encode())
            return cursor.fetchall() if cursor.description else []

    def log_tail(self, lines: int = 40) -> str:
        """The end of the server's log (for a failing test's message)."""
        with contextlib.suppress(OSError):
            return "\n".join(
                (self.data / "server.log").read_text(errors="replace").splitlines()[-lines:]
            )
        return ""

    def remove(self) -> None:
        """Stop the server and delete its files."""
        self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)
