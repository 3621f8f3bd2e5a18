"""Flags of ``synapse serve`` / ``python -m synapse_server`` (they override ``SYNAPSE_*``).

Kept outside ``synapse_server.cli`` so that starting the server never imports the other CLI
command modules.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
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
        "--database-url", help="where the stores live (default sqlite:///<data-dir>/synapse.db)"
    )
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
        "--tls-allow-invalid-dates",
        dest="tls_allow_invalid_dates",
        action="store_true",
        default=None,
        help="serve a certificate that has expired or is not yet valid (refused by default)",
    )
    parser.add_argument(
        "--allow-public-bind",
        action="store_true",
        default=None,
        help="allow a non-loopback address without tokens",
    )
    parser.add_argument("--cancel-grace", dest="cancel_grace_seconds", type=float)
    parser.add_argument("--shutdown-grace", dest="shutdown_grace_seconds", type=float)
    parser.add_argument(
        "--worker-memory-limit-mb",
        type=int,
        help="memory limit of each local job worker in MiB (default 4096; 0: none)",
    )
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
    parser.add_argument(
        "--metrics-listen",
        help="host:port to serve Prometheus metrics at /metrics on (default: off)",
    )
    parser.add_argument("--log-format", help="text (default) or json: one JSON object per line")
    parser.add_argument(
        "--access-log",
        help="level of the access log line per RPC: debug (default), info or off",
    )
    parser.add_argument(
        "--health-check-interval",
        dest="health_check_seconds",
        type=float,
        help="seconds between checks that Ray can be reached (InferenceService health)",
    )
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO (default), WARNING…")


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


def _fail(message: str, code: int) -> int:
    # One line on stderr, never a traceback: these are the operator's mistakes to fix.
    print(f"synapse serve: {' '.join(message.split())}", file=sys.stderr, flush=True)
    return code


def _describe(exc: ValidationError) -> str:
    """Each invalid setting with what is wrong with it; never the value (it may be a token)."""
    return "; ".join(
        f"{'.'.join(str(part) for part in error['loc']) or 'settings'}: {error['msg']}"
        for error in exc.errors()
    )


def run_serve(args: argparse.Namespace) -> int:
    """Handler: build settings, run the server until SIGTERM/SIGINT.

    Exit codes: 2 for settings that cannot work (bad values, unusable TLS files), 1 when the
    server cannot start (the address cannot be bound, another server holds the data
    directory, the data directory cannot be written), 0 after a normal stop.
    """
    from synapse_server._data_dir_lock import DataDirectoryLockError
    from synapse_server.app import ServerStartError, serve
    from synapse_server.core import StorageError
    from synapse_server.settings import SettingsError
    from synapse_server.telemetry import configure_logging

    try:
        settings = settings_from_args(args)
    except ValidationError as exc:
        return _fail(f"invalid settings: {_describe(exc)}", 2)
    except ValueError as exc:
        return _fail(f"invalid settings: {exc}", 2)
    try:
        configure_logging(args.log_level, settings.log_format)
    except ValueError as exc:
        return _fail(f"invalid settings: {exc}", 2)
    try:
        # The server checks its settings first (TLS files included), before opening anything.
        asyncio.run(serve(settings))
    except SettingsError as exc:
        return _fail(f"invalid settings: {exc}", 2)
    except (ServerStartError, DataDirectoryLockError) as exc:
        # One line, no traceback: the address is taken, another server has the data
        # directory, or it cannot be written.
        return _fail(str(exc), 1)
    except StorageError as exc:
        # A full or unwritable data directory at start-up: one line, not a traceback.
        return _fail(f"cannot start: {exc}", 1)
    return 0
