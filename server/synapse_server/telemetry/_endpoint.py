"""The ``/metrics`` HTTP endpoint: Prometheus text of one registry, on threads of its own.

A scrape never runs on the server's event loop: the HTTP server answers on its own threads,
and the registry's scrape-time gauges read plain counters of the services (see ``_metrics``).
Only ``GET /metrics`` (and ``/``, which Prometheus' own exporters also answer) is served.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable, Iterable
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

__all__ = ["MetricsEndpoint", "MetricsEndpointError"]

logger = logging.getLogger(__name__)


class MetricsEndpointError(OSError):
    """The metrics endpoint could not listen; the message says where and why."""


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        # Every scrape would otherwise print a line on stderr.
        logger.debug("metrics endpoint: " + format, *args)


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True
    allow_reuse_address = True


class _IPv6ThreadingServer(_ThreadingServer):
    address_family = socket.AF_INET6


def _split(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


class MetricsEndpoint:
    """Serves ``registry`` as Prometheus text at ``http://<address>/metrics``."""

    def __init__(self, registry: Any, address: str) -> None:
        self._registry = registry
        self._address = address
        self._server: _ThreadingServer | None = None
        self._thread: threading.Thread | None = None
        self.address = ""

    def _app(self) -> Callable[..., Iterable[bytes]]:
        from prometheus_client import make_wsgi_app

        metrics = make_wsgi_app(self._registry)

        def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
            if environ.get("PATH_INFO", "/") in ("/metrics", "/"):
                return metrics(environ, start_response)  # type: ignore[no-any-return]
            start_response("404 Not Found", [("Content-Type", "text/plain; charset=utf-8")])
            return [b"not found: the metrics are at /metrics\n"]

        return app

    def start(self) -> str:
        """Listen and serve in a background thread; the bound ``host:port``.

        Raises :class:`MetricsEndpointError` when the address cannot be bound.
        """
        host, port = _split(self._address)
        server_class = _IPv6ThreadingServer if ":" in host else _ThreadingServer
        try:
            server = make_server(
                host, port, self._app(), server_class=server_class, handler_class=_QuietHandler
            )
        except OSError as exc:
            reason = exc.strerror or type(exc).__name__
            raise MetricsEndpointError(
                f"cannot serve metrics on {self._address}: {reason}"
            ) from exc
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, name="metrics-endpoint", daemon=True
        )
        self._thread.start()
        bound = server.server_address[1]
        shown = f"[{host}]" if ":" in host else host
        self.address = f"{shown}:{bound}"
        logger.info("serving metrics on http://%s/metrics", self.address)
        return self.address

    def stop(self) -> None:
        """Stop serving and close the socket (no-op when not started)."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None
