"""Shared fixtures: a real in-process platform server on port 0, and channels to it."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import grpc
import pytest
from synapse_server.app import SynapseServer
from synapse_server.settings import ServerSettings

from tests._postgres import PostgresCluster, postgres_bin_dir

TESTS_DIR = Path(__file__).parent
TOY_PLUGINS_DIR = TESTS_DIR / "plugins"


class RunningServer:
    """A SynapseServer running on its own event loop in a background thread."""

    def __init__(self, settings: ServerSettings, environ: Mapping[str, str] | None = None) -> None:
        self.settings = settings
        self.server = SynapseServer(settings, environ)
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self.address = self.call(self.server.start(), timeout=60)

    def call(self, coro: Any, timeout: float = 30) -> Any:
        """Run a coroutine on the server's loop and return its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def channel(self, **kwargs: Any) -> grpc.Channel:
        """An insecure channel to the server."""
        return grpc.insecure_channel(self.address, **kwargs)

    def stop(self, grace: float = 1.0) -> None:
        """Stop the server and its loop."""
        try:
            self.call(self.server.stop(grace), timeout=60)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10)
            self.loop.close()


def make_settings(data_dir: Path, **overrides: Any) -> ServerSettings:
    """Test settings: port 0 on loopback, the toy plugins, short grace periods."""
    values: dict[str, Any] = {
        "listen_address": "127.0.0.1:0",
        "data_dir": data_dir,
        "plugin_dirs": [TOY_PLUGINS_DIR],
        "cancel_grace_seconds": 2.0,
        "shutdown_grace_seconds": 1.0,
        "keepalive_seconds": 0.5,
        "worker_memory_limit_mb": 2048,
    }
    values.update(overrides)
    return ServerSettings(**values)


@pytest.fixture(scope="session")
def platform_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """One server for the session: no auth, toy plugins, its own data dir."""
    running = RunningServer(make_settings(tmp_path_factory.mktemp("platform")))
    yield running
    running.stop()


@pytest.fixture
def server_factory(tmp_path: Path) -> Iterator[Callable[..., RunningServer]]:
    """Start extra servers with overridden settings; all are stopped after the test."""
    started: list[RunningServer] = []

    def start(**overrides: Any) -> RunningServer:
        data_dir = overrides.pop("data_dir", tmp_path / f"data{len(started)}")
        # The OTEL_* variables the server reads instead of this process's (none: its own).
        environ = overrides.pop("environ", None)
        running = RunningServer(make_settings(data_dir, **overrides), environ)
        started.append(running)
        return running

    yield start
    for running in started:
        running.stop()


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[PostgresCluster]:
    """A real PostgreSQL server for the session, in a temporary directory, on a free port.

    Skipped, saying why, only where PostgreSQL's server binaries are not installed; with
    ``SYNAPSE_TESTS_REQUIRE_POSTGRES=1`` (set by ``.ci/run``, which installs Debian's
    ``postgresql`` package) a missing PostgreSQL fails the tests instead, so CI never passes
    without having run them.
    """
    bin_dir = postgres_bin_dir()
    if bin_dir is None:
        why = "PostgreSQL is not installed (initdb not found): apt-get install postgresql"
        if os.environ.get("SYNAPSE_TESTS_REQUIRE_POSTGRES") == "1":
            pytest.fail(f"{why} (SYNAPSE_TESTS_REQUIRE_POSTGRES=1)", pytrace=False)
        pytest.skip(why)
    cluster = PostgresCluster(bin_dir)
    try:
        cluster.start()
    except BaseException:
        print(cluster.log_tail())
        cluster.remove()
        raise
    yield cluster
    cluster.remove()


@pytest.fixture
def platform_channel(platform_server: RunningServer) -> Iterator[grpc.Channel]:
    """An insecure channel to the session server."""
    with platform_server.channel() as channel:
        yield channel
