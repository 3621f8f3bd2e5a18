"""The worker program of the embedded Ray head: Ray's default worker, with no wildcard gRPC port.

The head runs on loopback (see ``_head``): Ray binds its ports to the node IP, 127.0.0.1.
One exception is hard-coded in Ray: a Serve replica opens the gRPC port that Infer requests
reach it on at ``[::]:0``, every interface, with ``ray._common.tls_utils.
add_port_to_grpc_server``. The head's ``worker_path`` is this file, so every Python worker
runs it: it wraps that helper to bind wildcard addresses to 127.0.0.1 instead, before the
replica code imports it, then runs Ray's default worker unchanged.

Run by path (``python _loopback_worker.py ARGS``), not imported: it must not import the
platform, which would cost every Ray worker half a second.
"""

from __future__ import annotations

import importlib.util
import os
import runpy
import sys
from collections.abc import Callable
from typing import Any

_WILDCARD_HOSTS = frozenset({"", "[::]", "::", "0.0.0.0"})
_LOOPBACK = "127.0.0.1"


def loopback_only(add_port: Callable[[Any, str], int]) -> Callable[[Any, str], int]:
    """Wrap a ``(server, "host:port") -> port`` binder: a wildcard host becomes loopback."""

    def add_port_on_loopback(server: Any, address: str) -> int:
        host, _, port = address.rpartition(":")
        if host in _WILDCARD_HOSTS:
            address = f"{_LOOPBACK}:{port}"
        return add_port(server, address)

    return add_port_on_loopback


def _main() -> None:
    import ray._common.tls_utils as tls_utils

    tls_utils.add_port_to_grpc_server = loopback_only(tls_utils.add_port_to_grpc_server)  # type: ignore[assignment]
    spec = importlib.util.find_spec("ray._private.workers.default_worker")
    if spec is None or spec.origin is None:
        raise SystemExit("Ray's default worker is not installed")
    # As if Ray had started default_worker.py itself.
    sys.argv[0] = spec.origin
    sys.path[0] = os.path.dirname(spec.origin)
    runpy.run_path(spec.origin, run_name="__main__")


if __name__ == "__main__":
    _main()
