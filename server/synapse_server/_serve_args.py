"""Flags of ``synapse serve`` / ``python -m synapse_server`` (they override ``SYNAPSE_*``).

Kept outside ``synapse_server.cli`` so that starting the server never imports the other CLI
command modules.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
from pathlib import Path
from typing import Any

from pydantic import ValidationError

logger = logging.getLogger(__name__)

__all__ = ["add_arguments", "run_serve", "settings_from_args"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The server flags; each is optional and falls back to its SYNAPSE_* variable."""
    parser.add_argument(
        "--listen", dest="listen_address", help="host:port (default 127.0.0.1:50051)"
    )
    parser.add_argument("--data-dir", type=Path, help="SQLite database, logs and the server secret")
    parser.add_argument(
        "--plugin-dir", dest="plugin_dirs", action="append", type=Path, help="repeatable"
    )
    parser.add_argument(
        "--tokens", help="'token=tenant,token2=tenant2' or a file with one token=tenant per line"
    )
    parser.add_argument("--tls-cert", dest="tls_cert_file", type=Path)
    parser.add_argument("--tls-key", dest="tls_key_file", type=Path)
    parser.add_argument(
        "--tls-client-ca", dest="tls_client_ca_file", type=Path, help="require client certs"
    )
    parser.add_argument(
        "--allow-public-bind",
        action="store_true",
        default=None,
        help="allow a non-loopback address without tokens",
    )
    parser.add_argument("--cancel-grace", dest="cancel_grace_seconds", type=float)
    parser.add_argument("--shutdown-grace", dest="shutdown_grace_seconds", type=float)
    parser.add_argument("--worker-memory-limit-mb", type=int)
    parser.add_argument("--max-concurrent-jobs", type=int)
    parser.add_argument("--ray-address")
    parser.add_argument(
        "--serve-transport",
        choices=("grpc", "ray"),
        help="how Infer reaches Serve replicas: grpc (default) or ray actor calls",
    )
    parser.add_argument(
        "--max-message-bytes",
        type=int,
        help="largest RunAction/Infer/worker message and answer (default 64 MiB)",
    )
    parser.add_argument("--log-level", default="INFO")


def settings_from_args(args: argparse.Namespace) -> Any:
    """ServerSettings from the flags that were given (the rest from the environment)."""
    from synapse_server.settings import ServerSettings

    # Every flag whose dest names a settings field; unset flags (None) leave the env/default.
    given = {
        name: value
        for name, value in vars(args).items()
        if name in ServerSettings.model_fields and value is not None
    }
    return ServerSettings(**given)


def run_serve(args: argparse.Namespace) -> int:
    """Handler: build settings, run the server until SIGTERM/SIGINT."""
    from synapse_server.app import serve

    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        settings = settings_from_args(args)
        settings.check()
    except (ValidationError, ValueError) as exc:
        print(f"synapse serve: invalid settings: {exc}")
        return 2
    asyncio.run(serve(settings))
    return 0
