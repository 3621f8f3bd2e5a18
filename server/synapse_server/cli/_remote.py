"""Talking to a running server from the CLI: connection options, error reporting, remote run.

``synapse plugin run --server ADDR`` submits through :mod:`synapse_client` and renders the
job's event stream with the same console renderer as an in-process run, so both look alike.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from synapse_client import (
    ENV_SERVER,
    ENV_TLS,
    ENV_TLS_CA,
    ENV_TLS_CERT,
    ENV_TLS_KEY,
    ENV_TLS_SERVER_NAME,
    ENV_TOKEN,
    ActionKind,
    Client,
    ClientConfigError,
    FailedPreconditionError,
    InvalidArgumentError,
    JobCancelledError,
    JobEvent,
    JobFailedError,
    NotFoundError,
    OutputNotFoundError,
    SynapseClientError,
    TransportSecurityError,
    TransportSecurityProblem,
    UnauthenticatedError,
    UnavailableError,
    normalize_address,
)
from synapse_client import LogEvent as ClientLogEvent
from synapse_client import MetricEvent as ClientMetricEvent
from synapse_client import ProgressEvent as ClientProgressEvent
from synapse_client import StepFinishedEvent as ClientStepFinishedEvent
from synapse_client import StepStartedEvent as ClientStepStartedEvent
from synapse_sdk.events import (
    ErrorInfo,
    Event,
    LogEvent,
    LogLevel,
    MetricEvent,
    ProgressEvent,
    StepFinishedEvent,
    StepStartedEvent,
    StepStatus,
)

from synapse_server.cli._exit import EXIT_CANCELLED, EXIT_FAILED, EXIT_OK, EXIT_USAGE
from synapse_server.cli._progress import ConsoleProgressSink, console_text

logger = logging.getLogger(__name__)

__all__ = [
    "add_connection_arguments",
    "ascii_count",
    "ascii_id",
    "add_remote_command",
    "connect",
    "exit_code_for",
    "print_line",
    "print_warnings",
    "print_table",
    "report_failure",
    "run_remote",
    "to_json",
]


_CANCEL_REASON = "cancelled from the command line"
_MAX_INT64 = (1 << 63) - 1


def _ascii_int(text: str, what: str, minimum: int) -> int:
    # int() alone reads any Unicode digits ("١٢" is 12) and argparse's type=int with it.
    if not (text.isascii() and text.isdigit()) or len(text) > 19:
        raise argparse.ArgumentTypeError(f"{what} must be written in ASCII digits: {text[:32]!r}")
    value = int(text)
    if not minimum <= value <= _MAX_INT64:
        raise argparse.ArgumentTypeError(f"{what} must be between {minimum} and {_MAX_INT64}")
    return value


def ascii_id(text: str) -> int:
    """argparse type of a model or deployment id: a positive integer in ASCII digits."""
    return _ascii_int(text, "an id", 1)


def ascii_count(text: str) -> int:
    """argparse type of a count or sequence number: ASCII digits, 0 or more."""
    return _ascii_int(text, "a count", 0)


def add_connection_arguments(parser: argparse.ArgumentParser, required: bool) -> None:
    """Adds --server, --token, TLS and --timeout; each falls back to its ``SYNAPSE_*`` variable
    (the ones ``Client.from_env`` reads)."""
    group = parser.add_argument_group(
        "server connection",
        f"each option falls back to its variable: ${ENV_SERVER}, ${ENV_TOKEN}, ${ENV_TLS}=1, "
        f"${ENV_TLS_CA}, ${ENV_TLS_CERT}, ${ENV_TLS_KEY}, ${ENV_TLS_SERVER_NAME}",
    )
    group.add_argument(
        "--server",
        metavar="ADDR",
        default=os.environ.get(ENV_SERVER) or None,
        help=f"server address host:port, port 50051 if left out (default: ${ENV_SERVER})"
        + ("" if required else "; without one the action runs in this process"),
    )
    group.add_argument(
        "--token",
        help=f"bearer token (default: ${ENV_TOKEN}; prefer the variable: "
        "arguments are visible to other local users)",
    )
    group.add_argument(
        "--tls", action="store_true", help=f"connect with TLS (system roots; ${ENV_TLS}=1)"
    )
    group.add_argument(
        "--tls-ca", metavar="FILE", help=f"PEM root certificates (implies --tls; ${ENV_TLS_CA})"
    )
    group.add_argument(
        "--tls-cert", metavar="FILE", help=f"PEM client certificate for mTLS (${ENV_TLS_CERT})"
    )
    group.add_argument(
        "--tls-key", metavar="FILE", help=f"PEM client private key for mTLS (${ENV_TLS_KEY})"
    )
    group.add_argument(
        "--tls-server-name",
        metavar="NAME",
        help=f"name to verify in the server certificate (${ENV_TLS_SERVER_NAME})",
    )
    group.add_argument(
        "--timeout",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="deadline of each request (streams excepted; default 30)",
    )


def connection_environ(args: argparse.Namespace) -> dict[str, str]:
    """The environment with the connection flags given on the command line written over
    their variables: what :meth:`Client.from_env` reads for this command."""
    environ = dict(os.environ)
    flags = {
        ENV_SERVER: args.server,
        ENV_TOKEN: args.token,
        ENV_TLS_CA: args.tls_ca,
        ENV_TLS_CERT: args.tls_cert,
        ENV_TLS_KEY: args.tls_key,
        ENV_TLS_SERVER_NAME: args.tls_server_name,
    }
    environ.update({name: value for name, value in flags.items() if value})
    if args.tls:
        environ[ENV_TLS] = "1"
    return environ


def connect(args: argparse.Namespace) -> Client:
    """A client for the parsed connection options and ``SYNAPSE_*`` variables (flags win);
    raises ClientConfigError on bad ones."""
    if not args.server:
        raise ClientConfigError(f"no server address: pass --server or set ${ENV_SERVER}")
    return Client.from_env(connection_environ(args), timeout=args.timeout)


# What to change on this command line for each failed TLS set-up.
_TLS_ADVICE = {
    TransportSecurityProblem.TLS_REQUIRED: (
        "connect with --tls (system roots) or --tls-ca FILE (the CA that issued the server's "
        "certificate)"
    ),
    TransportSecurityProblem.CLIENT_CERTIFICATE_REQUIRED: (
        "pass a client certificate issued by the server's client CA: --tls-cert FILE --tls-key FILE"
    ),
    TransportSecurityProblem.CLIENT_CERTIFICATE_REJECTED: (
        "pass a --tls-cert/--tls-key pair issued by the server's client CA"
    ),
    TransportSecurityProblem.CONNECTION_REJECTED: (
        "connect with --tls or --tls-ca FILE, and --tls-cert/--tls-key if it requires "
        "client certificates"
    ),
    TransportSecurityProblem.SERVER_NOT_TLS: "leave out --tls, --tls-ca, --tls-cert and --tls-key",
    TransportSecurityProblem.SERVER_CERTIFICATE_UNTRUSTED: (
        "pass the CA that issued the server's certificate with --tls-ca FILE"
    ),
    TransportSecurityProblem.SERVER_NAME_MISMATCH: (
        "connect by a name the certificate lists, or pass --tls-server-name NAME"
    ),
    TransportSecurityProblem.HANDSHAKE_FAILED: "check the --tls options against the server's",
}


def exit_code_for(error: BaseException) -> int:
    """The CLI exit code for an error: 2 for bad input (TLS options included), 130 cancelled,
    1 otherwise."""
    if isinstance(
        error,
        ClientConfigError
        | InvalidArgumentError
        | NotFoundError
        | OutputNotFoundError
        | TransportSecurityError,
    ):
        return EXIT_USAGE
    if isinstance(error, JobCancelledError):
        return EXIT_CANCELLED
    return EXIT_FAILED


def print_warnings(warnings: Sequence[str]) -> None:
    """Each of a job's warnings as ``warning: ...`` on stderr."""
    for warning in warnings:
        sys.stderr.write(console_text(f"warning: {' '.join(warning.split())}", sys.stderr))
    sys.stderr.flush()


def print_line(line: str) -> None:
    """One line to stdout, flushed (listings are often piped into ``head`` or ``grep``)."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def print_table(rows: list[tuple[str, ...]]) -> None:
    """Rows (the first one the header) as left-aligned columns two spaces apart."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        cells = (cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        print_line("  ".join(cells).rstrip())


def add_remote_command(
    parser: argparse.ArgumentParser, command: Callable[[Client, argparse.Namespace], int]
) -> None:
    """Connection flags for ``parser``, and a handler that runs ``command`` with a client.

    Client and server errors become the command's exit code and message (``report_failure``).
    """
    add_connection_arguments(parser, required=True)

    def handler(args: argparse.Namespace) -> int:
        try:
            client = connect(args)
        except ClientConfigError as error:
            return report_failure(error)
        try:
            with client:
                return command(client, args)
        except SynapseClientError as error:
            return report_failure(error, args.server)
        except KeyboardInterrupt:
            return 130

    parser.set_defaults(handler=handler)


def report_failure(error: BaseException, server: str | None = None) -> int:
    """Writes a one-line reason to stderr and returns the exit code for ``error``."""
    if server:
        # The address as dialled (``host`` alone means port 50051).
        with contextlib.suppress(ClientConfigError):
            server = normalize_address(server)
    if isinstance(error, TransportSecurityError):
        where = f" at {server}" if server else ""
        message = (
            f"cannot connect to the server{where}: {error.explanation}; "
            f"{_TLS_ADVICE.get(error.problem, '')}"
        )
    elif isinstance(error, UnavailableError) and server:
        message = f"cannot reach the server at {server}: {error.message}"
    elif isinstance(error, UnauthenticatedError):
        message = f"not authenticated ({error.message}); set --token or ${ENV_TOKEN}"
    elif isinstance(error, JobFailedError) and error.traceback:
        message = f"{error} (plugin traceback: synapse jobs get {error.job_id})"
    else:
        message = str(error)
    sys.stderr.write("error: " + " ".join(message.split()) + "\n")
    sys.stderr.flush()
    return exit_code_for(error)


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    raise TypeError(f"not JSON-serialisable: {type(value).__name__}")


def to_json(value: Any, indent: int | None = None) -> str:
    """JSON text of a client dataclass (jobs, events), enums as their values."""
    is_instance = dataclasses.is_dataclass(value) and not isinstance(value, type)
    data = dataclasses.asdict(value) if is_instance else value
    return json.dumps(data, default=_json_default, indent=indent)


def to_sdk_event(event: JobEvent) -> Event | None:
    """The SDK event the console renderer draws for a job event (None: not rendered)."""
    p = event.payload
    if isinstance(p, ClientProgressEvent):
        return ProgressEvent(p.category or None, p.current, p.total, p.overall_percent)
    if isinstance(p, ClientLogEvent):
        return LogEvent(p.event, p.data, LogLevel(p.level.value))
    if isinstance(p, ClientMetricEvent):
        return MetricEvent(p.category or None, p.values)
    if isinstance(p, ClientStepStartedEvent):
        return StepStartedEvent(p.name, p.index, p.count, p.weight)
    if isinstance(p, ClientStepFinishedEvent):
        error = (
            ErrorInfo(p.error.type, p.error.message, p.error.plugin_traceback)
            if p.error is not None
            else None
        )
        return StepFinishedEvent(p.name, p.index, StepStatus(p.status.value), error, p.data)
    return None


def _is_serve_action(client: Client, plugin: str, action: str) -> bool:
    for info in client.list_actions(plugin):
        for candidate in info.actions:
            if candidate.name == action:
                return candidate.kind == ActionKind.SERVE
    return False


def _infer_serve_action(
    client: Client, args: argparse.Namespace, params: dict[str, Any]
) -> dict[str, Any] | list[Any] | Any:
    # A serve action is deployed, not run: its reference params (model, method, json, path)
    # become one Infer call to the deployment of this plugin + action.
    if "json" not in params:
        raise ClientConfigError(
            f"{args.plugin}/{args.action} is a serve action: params need 'json'"
        )
    answer = client.infer(
        plugin=args.plugin,
        action=args.action,
        model=params.get("model"),
        json=params["json"],
        method=str(params.get("method") or "post"),
        path=str(params.get("path") or "/"),
        timeout=params.get("timeout"),
    )
    return answer.json


def run_remote(args: argparse.Namespace, params: dict[str, Any]) -> int:
    """``synapse plugin run --server``: submit, follow progress, print the result JSON.

    The first Ctrl-C cancels the job and keeps following it to its end; a second one stops
    waiting (the server still finishes the cancellation).
    """
    if getattr(args, "models_dir", None) is not None:
        return report_failure(
            ClientConfigError("--models-dir applies to in-process runs only, not with --server")
        )
    try:
        client = connect(args)
    except ClientConfigError as error:
        return report_failure(error)
    sink = ConsoleProgressSink(sys.stderr) if not args.no_progress else None
    with client:
        try:
            try:
                handle = client.run_action(args.plugin, args.action, params, mode=args.mode)
            except (FailedPreconditionError, InvalidArgumentError):
                # The contract answers FAILED_PRECONDITION for a serve action; servers that
                # answer INVALID_ARGUMENT are recognised by the action's kind as well.
                if not _is_serve_action(client, args.plugin, args.action):
                    raise
                answer = _infer_serve_action(client, args, params)
                if sink is not None:
                    sink.close()
                sys.stdout.write(json.dumps(answer) + "\n")
                sys.stdout.flush()
                return EXIT_OK
            job = handle.job
            mode = job.mode.value if job is not None and job.mode is not None else "default"
            sys.stderr.write(
                console_text(
                    f"job {handle.id} submitted ({args.plugin}/{args.action}, {mode})", sys.stderr
                )
            )
            print_warnings(job.warnings if job is not None else ())
            last_seq = 0
            cancelling = False
            while True:
                try:
                    for event in handle.events(after_seq=last_seq):
                        last_seq = event.seq
                        rendered = to_sdk_event(event)
                        if sink is not None and rendered is not None:
                            sink.emit(rendered)
                    break
                except KeyboardInterrupt:
                    if cancelling:
                        if sink is not None:
                            sink.close()
                        sys.stderr.write(f"stopped waiting; job {handle.id} is cancelling\n")
                        return EXIT_CANCELLED
                    cancelling = True
                    sys.stderr.write("\ncancelling the job (press Ctrl-C again to stop waiting)\n")
                    handle.cancel(_CANCEL_REASON)
            if sink is not None:
                sink.close()
            result = handle.result()
        except SynapseClientError as error:
            if sink is not None:
                sink.close()
            return report_failure(error, args.server)
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()
    return EXIT_OK
