"""The server's Ray: started in-process on first need, or connected to a configured cluster.

Deployment actions run in short-lived worker processes; a Ray started by a worker would die
with it and take its Serve applications along. So the server owns Ray: the first time
something needs it (a deployment action is about to run, or ``Infer`` is called) it starts a
local Ray head as a child process tree (``_head``) and connects to it (or connects to
``ray_address``), starts Serve with the platform's proxy choices, and tells workers the
cluster address through ``RAY_ADDRESS``. The local head listens on loopback only and stops
with the server, even a killed one; a head left behind by a killed server is removed when
the next server starts (:meth:`RayRuntime.remove_stale_head`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from synapse_server.core._errors import ServiceUnavailableError
from synapse_server.ray._head import (
    LOOPBACK_ENVIRONMENT,
    LocalRayHead,
    LocalRayHeadError,
    remove_stale_head,
)

logger = logging.getLogger(__name__)

__all__ = ["RayRuntime", "RayRuntimeConfig"]


@dataclass(frozen=True)
class RayRuntimeConfig:
    """How the server gets its Ray.

    ``address``: an existing cluster (``ray://`` or ``host:port``); None starts a local Ray
    with ``num_cpus`` CPUs (None: all). ``http_port``/``grpc_port``: Serve's own proxies,
    None keeps them off (the platform reaches replicas through handles, not proxies).
    ``head_record``: where the local head is recorded (in the server's data directory), so
    that a server started after a killed one removes a head left behind; None records nothing.
    """

    address: str | None = None
    num_cpus: int | None = None
    http_host: str = "127.0.0.1"
    http_port: int | None = None
    grpc_port: int | None = None
    grpc_servicer_functions: tuple[str, ...] = ()
    start_timeout_s: float = 120.0
    head_record: Path | None = None


def _host_port(address: str) -> tuple[str, int] | None:
    """``(host, port)`` of a Ray address (``host:port``, ``ray://host:port``), else None."""
    rest = address.split("://", 1)[1] if "://" in address else address
    host, sep, port = rest.rpartition(":")
    if not sep or not port.isdigit() or not host:
        return None
    return host.strip("[]"), int(port)


def _connect(ray: Any, kwargs: dict[str, Any], timeout_s: float) -> None:
    """Connect to our own head, whose GCS may accept connections before its raylet joins."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            ray.init(**kwargs)
            return
        except ConnectionError:
            ray.shutdown()
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


class RayRuntime:
    """Starts or connects to Ray once, off the event loop; see the module docstring."""

    def __init__(self, config: RayRuntimeConfig | None = None) -> None:
        self._config = config or RayRuntimeConfig()
        self._lock = threading.Lock()
        self._started = False
        self._owns_ray = False
        self._gcs_address: str | None = None
        self._head: LocalRayHead | None = None
        # Ray's ENABLE_RAY_CLUSTER before this runtime turned it off (None: untouched).
        self._cluster_constant: bool | None = None

    @property
    def started(self) -> bool:
        """True once Ray and Serve are up for this server."""
        return self._started

    @property
    def gcs_address(self) -> str | None:
        """The cluster address workers connect to (None before the first start)."""
        return self._gcs_address

    async def ensure_started(self) -> str:
        """Start (or connect to) Ray and Serve if not done yet; returns the cluster address.

        Raises :class:`ServiceUnavailableError` when Ray cannot be started or reached.
        """
        if self._started and self._gcs_address is not None:
            return self._gcs_address
        try:
            return await asyncio.wait_for(
                asyncio.to_thread(self._start), timeout=self._config.start_timeout_s
            )
        except TimeoutError as exc:
            raise ServiceUnavailableError("Ray did not start in time") from exc

    def ensure_started_sync(self) -> str:
        """Blocking variant of :meth:`ensure_started`, for code already off the event loop."""
        return self._start()

    def worker_environment(self) -> dict[str, str]:
        """Environment a worker needs to reach this Ray (empty before the first start)."""
        if self._gcs_address is None:
            return {}
        env = {"RAY_ADDRESS": self._gcs_address, "RAY_USAGE_STATS_ENABLED": "0"}
        if self._owns_ray:
            env.update(LOOPBACK_ENVIRONMENT)
        return env

    async def reachable(self, timeout_s: float = 2.0) -> bool:
        """Whether Ray can be reached now (the health of ``InferenceService``).

        A Ray in use: its GCS accepts a connection. A configured cluster not yet connected
        to: its address accepts one. The local Ray before its first start: True, since it
        starts on the first call that needs it. A connection attempt, nothing of Ray's API:
        a probe must answer within ``timeout_s`` even when the cluster is gone.
        """
        target = self._gcs_address if self._started else self._config.address
        if not target:
            return True
        endpoint = _host_port(target)
        if endpoint is None:
            # An address Ray resolves itself ("auto"): nothing to probe from here.
            return True
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(*endpoint), timeout_s)
        except (OSError, TimeoutError):
            return False
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return True

    async def remove_stale_head(self) -> None:
        """Kill a local head that a killed server left running (see ``_head``).

        Nothing to do with ``address`` set or without ``head_record``.
        """
        record = self._config.head_record
        if self._config.address is None and record is not None:
            try:
                await asyncio.to_thread(remove_stale_head, record)
            except LocalRayHeadError:
                # Jobs in local mode need no Ray: the server starts all the same, and starting
                # its own head (which checks again first) fails until the old one is gone.
                logger.exception("a Ray head left by a previous server could not be stopped")

    def _start(self) -> str:
        with self._lock:
            if self._started and self._gcs_address is not None:
                return self._gcs_address
            os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
            # Ray's driver otherwise installs a native handler for SIGTERM that, after our
            # asyncio handler has started the graceful drain, aborts the process mid-drain.
            # Read when Ray is first imported, which in the server happens here.
            os.environ.setdefault("RAY_DISABLE_FAILURE_SIGNAL_HANDLER", "1")
            try:
                import ray
                from ray import serve

                if not ray.is_initialized():
                    kwargs: dict[str, Any] = {
                        "include_dashboard": False,
                        "log_to_driver": False,
                        "ignore_reinit_error": True,
                    }
                    if self._config.address:
                        kwargs["address"] = self._config.address
                        ray.init(**kwargs)
                    else:
                        # A head of our own (never attaching to a stray one), started as its
                        # own process tree: see _head.py for why not in this process.
                        self._owns_ray = True
                        self._head = LocalRayHead(
                            self._config.num_cpus, record_path=self._config.head_record
                        )
                        kwargs["address"] = self._head.start(self._config.start_timeout_s)
                        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
                        # LOOPBACK_ENVIRONMENT for this driver: Ray keeps the head's
                        # 127.0.0.1 address and this process's ports on loopback. Ray reads
                        # the variable once, at import, which happened above. The previous
                        # value comes back in close(), so a process that goes on to use Ray
                        # otherwise (a test session) gets Ray's own behaviour again.
                        constants = ray._private.ray_constants
                        self._cluster_constant = constants.ENABLE_RAY_CLUSTER
                        constants.ENABLE_RAY_CLUSTER = False
                        _connect(ray, kwargs, self._config.start_timeout_s)
                    logger.info(
                        "%s Ray", "connected to" if self._config.address else "started a local"
                    )
                serve.start(**self._serve_options())
                self._gcs_address = ray.get_runtime_context().gcs_address
            except ServiceUnavailableError:
                raise
            except Exception as exc:
                logger.exception("Ray could not be started")
                if self._head is not None:
                    self._head.stop()
                    self._head = None
                raise ServiceUnavailableError(
                    f"Ray is unavailable: {type(exc).__name__}: {exc}"
                ) from exc
            self._started = True
            return self._gcs_address

    def _serve_options(self) -> dict[str, Any]:
        config = self._config
        options: dict[str, Any] = {"logging_config": {"enable_access_log": False}}
        if config.http_port is None and config.grpc_port is None:
            # serve.run would otherwise open an HTTP proxy on port 8000.
            options["proxy_location"] = "Disabled"
            return options
        options["proxy_location"] = "HeadOnly"
        options["http_options"] = {
            "host": config.http_host,
            "port": config.http_port if config.http_port is not None else 0,
        }
        if config.grpc_port is not None:
            options["grpc_options"] = {
                "port": config.grpc_port,
                "grpc_servicer_functions": list(config.grpc_servicer_functions),
            }
        return options

    async def close(self) -> None:
        """Shut down the Ray this server started (a connected cluster is left running)."""
        if not self._started:
            return

        def _stop() -> None:
            import ray

            if self._owns_ray and ray.is_initialized():
                ray.shutdown()
            if self._head is not None:
                self._head.stop()
                self._head = None
            if self._cluster_constant is not None:
                ray._private.ray_constants.ENABLE_RAY_CLUSTER = self._cluster_constant
                self._cluster_constant = None

        await asyncio.to_thread(_stop)
        self._started = False
        self._gcs_address = None
