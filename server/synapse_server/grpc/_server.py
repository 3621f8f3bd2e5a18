"""The gRPC server assembly: the registered services, health, reflection, options, interceptors.

Everything served on the platform's port is listed once, as :class:`ServiceRegistration`
entries (servicer, the generated ``add_*_to_server`` function, the service's full name);
``grpc.health.v1`` health checking (a status per service) and server reflection are derived
from that list, so adding a service is one entry. Every RPC of every service, health and
reflection included, passes the same interceptor chain (``_interceptors``): the request
guard, the telemetry interceptors that are configured (RPC metrics, tracing, access log) and
authentication, built from the settings by :func:`server_interceptors`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from synapse_server.core._credentials import WorkerCredentialIssuer
from synapse_server.core.inference import ServeKeyring
from synapse_server.grpc._auth import AuthInterceptor
from synapse_server.grpc._interceptors import CallInterceptor, InterceptorChain
from synapse_server.grpc._requests import RequestGuard
from synapse_server.grpc._telemetry import (
    AccessLogInterceptor,
    RpcMetricsInterceptor,
    TracingInterceptor,
)
from synapse_server.settings import ServerSettings
from synapse_server.telemetry import Telemetry

__all__ = [
    "HEALTH_SERVICE",
    "GrpcServer",
    "ServiceRegistration",
    "build_grpc_server",
    "server_credentials",
    "server_interceptors",
    "server_options",
    "service_name",
]

logger = logging.getLogger(__name__)

#: The health checking service's full name (it has no status of its own).
HEALTH_SERVICE = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name


@dataclass(frozen=True, slots=True)
class ServiceRegistration:
    """One service on the port: its servicer, the generated function that adds it, its name.

    ``name`` is the service's full protobuf name (``package.Service``), as health checks and
    reflection know it; ``add_to_server`` is the generated ``add_<Service>Servicer_to_server``.
    """

    servicer: Any
    add_to_server: Callable[[Any, grpc.aio.Server], None]
    name: str


def service_name(pb2_module: Any, service: str) -> str:
    """The full name of ``service`` as a generated ``*_pb2`` module defines it."""
    return str(pb2_module.DESCRIPTOR.services_by_name[service].full_name)


def server_options(settings: ServerSettings) -> list[tuple[str, Any]]:
    """The grpc channel arguments of the platform's server."""
    return [
        # grpcio binds with SO_REUSEPORT by default: a second server on the same port would
        # bind silently and share the connections.
        ("grpc.so_reuseport", 0),
        # Each RPC's own, smaller request limit is the guard's; gRPC refuses anything over
        # the largest before it is read.
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        ("grpc.max_send_message_length", settings.max_message_bytes),
    ]


def server_interceptors(
    settings: ServerSettings,
    credentials: WorkerCredentialIssuer,
    serve_keys: ServeKeyring | None = None,
    telemetry: Telemetry | None = None,
) -> list[CallInterceptor[Any]]:
    """The interceptor chain of the platform's server, in the order they run on every RPC.

    Telemetry first, each only when configured (metrics with ``metrics_listen``, spans with
    ``OTEL_*`` tracing, access lines when the access logger writes at its level), so that
    calls authentication refuses are counted, traced and logged too; then authentication.
    """
    chain: list[CallInterceptor[Any]] = []
    if telemetry is not None:
        if telemetry.metrics.enabled:
            chain.append(RpcMetricsInterceptor(telemetry.metrics))
        if telemetry.tracer is not None:
            chain.append(TracingInterceptor(telemetry.tracer, telemetry.tracing))
        if telemetry.access_log_active():
            assert telemetry.access_log_level is not None
            chain.append(AccessLogInterceptor(telemetry.access_log_level))
    chain.append(AuthInterceptor(settings.tokens, credentials, serve_keys=serve_keys))
    return chain


def server_credentials(settings: ServerSettings) -> grpc.ServerCredentials | None:
    """TLS (mutual TLS with a client CA) credentials from the settings; None without TLS."""
    if not settings.tls_enabled:
        return None
    assert settings.tls_cert_file is not None and settings.tls_key_file is not None
    client_ca = settings.tls_client_ca_file
    root_certificates = client_ca.read_bytes() if client_ca is not None else None
    return grpc.ssl_server_credentials(
        [(settings.tls_key_file.read_bytes(), settings.tls_cert_file.read_bytes())],
        root_certificates=root_certificates,
        require_client_auth=root_certificates is not None,
    )


class GrpcServer:
    """A grpc.aio server with ``services``, health checking and reflection, and one chain.

    ``interceptors`` run in order on every RPC (see ``_interceptors``) and ``guard`` checks
    every request message; ``options`` are the server's channel arguments. Health knows the
    registered services only from :meth:`set_serving` on (NOT_FOUND before).
    """

    def __init__(
        self,
        services: Sequence[ServiceRegistration] = (),
        *,
        interceptors: Sequence[CallInterceptor[Any]] = (),
        guard: RequestGuard | None = None,
        options: Sequence[tuple[str, Any]] = (("grpc.so_reuseport", 0),),
    ) -> None:
        self.health = health.aio.HealthServicer()
        # Services whose health a probe decides (see watch_service), and the tasks probing.
        self._watched: dict[str, tuple[Callable[[], Awaitable[bool]], float]] = {}
        self._watchers: list[asyncio.Task[None]] = []
        self.server = grpc.aio.server(
            interceptors=[InterceptorChain(interceptors, guard)], options=list(options)
        )
        self._services: list[ServiceRegistration] = []
        self._started = False
        self._serving = False
        for service in services:
            self.add_service(service)

    @property
    def service_names(self) -> tuple[str, ...]:
        """The full names of the registered services, in registration order."""
        return tuple(service.name for service in self._services)

    @property
    def serving(self) -> bool:
        """True from :meth:`set_serving` until :meth:`enter_graceful_shutdown`."""
        return self._serving

    def add_service(self, service: ServiceRegistration) -> None:
        """Register one more service (before :meth:`start`; a name at most once)."""
        if self._started:
            raise RuntimeError("services are registered before the server starts")
        if service.name in self.service_names:
            raise ValueError(f"service {service.name} is registered twice")
        self._services.append(service)

    def add_port(self, address: str, credentials: grpc.ServerCredentials | None = None) -> int:
        """Listen on ``address`` (with TLS when ``credentials``); the bound port.

        grpc raises RuntimeError when it cannot bind.
        """
        if credentials is not None:
            return self.server.add_secure_port(address, credentials)
        return self.server.add_insecure_port(address)

    async def start(self) -> None:
        """Add the services, health checking and reflection to the server and start serving.

        The services' health statuses come with :meth:`set_serving`.
        """
        self._started = True
        for service in self._services:
            service.add_to_server(service.servicer, self.server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            (*self.service_names, HEALTH_SERVICE, reflection.SERVICE_NAME), self.server
        )
        await self.server.start()

    def watch_service(
        self, name: str, probe: Callable[[], Awaitable[bool]], interval_s: float
    ) -> None:
        """Let ``probe`` decide the health of service ``name``, asked every ``interval_s``.

        From :meth:`set_serving` on, the service is SERVING while the probe answers True and
        NOT_SERVING while it answers False (or fails), until the graceful shutdown.
        """
        if name not in self.service_names:
            raise ValueError(f"service {name} is not registered")
        self._watched[name] = (probe, interval_s)

    async def set_serving(self) -> None:
        """Health: the server (``""``) and every registered service SERVING, a watched
        service as its probe says (and from now on watched)."""
        for name in ("", *self.service_names):
            watched = self._watched.get(name)
            serving = await _probe(name, watched[0]) if watched is not None else True
            await self._set_health(name, serving)
        for name, (probe, interval_s) in self._watched.items():
            self._watchers.append(
                asyncio.create_task(self._watch(name, probe, interval_s), name=f"health-{name}")
            )
        self._serving = True

    async def _set_health(self, name: str, serving: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        await self.health.set(name, status)

    async def _watch(
        self, name: str, probe: Callable[[], Awaitable[bool]], interval_s: float
    ) -> None:
        last: bool | None = None
        while True:
            await asyncio.sleep(interval_s)
            serving = await _probe(name, probe)
            if serving != last:
                if last is not None:
                    logger.warning(
                        "health: %s is %s", name, "SERVING" if serving else "NOT_SERVING"
                    )
                last = serving
            await self._set_health(name, serving)

    async def _stop_watching(self) -> None:
        watchers, self._watchers = self._watchers, []
        for task in watchers:
            task.cancel()
        for task in watchers:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def enter_graceful_shutdown(self) -> None:
        """Health: everything NOT_SERVING from now on (the server keeps answering calls)."""
        self._serving = False
        await self._stop_watching()
        await self.health.enter_graceful_shutdown()

    async def stop(self, grace: float | None) -> None:
        """Refuse new RPCs, give those in flight ``grace`` seconds, then cancel them."""
        await self._stop_watching()
        await self.server.stop(grace)

    async def wait_for_termination(self) -> None:
        """Until the server stops."""
        await self.server.wait_for_termination()


async def _probe(name: str, probe: Callable[[], Awaitable[bool]]) -> bool:
    try:
        return bool(await probe())
    except Exception:
        logger.exception("health probe of %s failed", name)
        return False


def build_grpc_server(
    settings: ServerSettings,
    services: Sequence[ServiceRegistration],
    credentials: WorkerCredentialIssuer,
    serve_keys: ServeKeyring | None = None,
    telemetry: Telemetry | None = None,
) -> GrpcServer:
    """The platform's server for ``services``: interceptors, guard and options from settings."""
    return GrpcServer(
        services,
        interceptors=server_interceptors(settings, credentials, serve_keys, telemetry),
        guard=RequestGuard(settings.max_message_bytes),
        options=server_options(settings),
    )
