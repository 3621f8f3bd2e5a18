"""Flags of ``synapse serve`` / ``python -m synapse_server``, generated from the settings.

Every :class:`~synapse_server.settings.ServerSettings` field is a flag (``max_concurrent_jobs``
is ``--max-concurrent-jobs``; a few keep shorter names, see ``_FLAG_NAMES``) whose help is the
field's description, its ``SYNAPSE_*`` variable and its default: a new setting is one field.
A flag overrides its variable. Secrets are read from the environment only (``_ENV_ONLY``): a
command line is visible to every user of the machine.

Invalid values are reported as one line naming the flag (or the variable they came from),
``synapse serve: --max-concurrent-jobs: must be greater than 0``, with exit code 2.

Kept outside ``synapse_server.cli`` so that starting the server never imports the other CLI
command modules.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import re
import sys
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, NoReturn

from pydantic import ValidationError
from pydantic.fields import FieldInfo

logger = logging.getLogger(__name__)

__all__ = [
    "SettingsArgumentError",
    "add_arguments",
    "env_name",
    "flag_name",
    "run_serve",
    "settings_from_args",
    "settings_from_flags",
]

#: Flags whose names are not simply the field's (kept from earlier releases, or singular
#: because they repeat).
_FLAG_NAMES = {
    "listen_address": "--listen",
    "plugin_dirs": "--plugin-dir",
    "preload_plugins": "--preload-plugin",
    "tls_cert_file": "--tls-cert",
    "tls_key_file": "--tls-key",
    "tls_client_ca_file": "--tls-client-ca",
    "cancel_grace_seconds": "--cancel-grace",
    "shutdown_grace_seconds": "--shutdown-grace",
    "job_lease_seconds": "--job-lease",
    "health_check_seconds": "--health-check-interval",
}
#: Further names of a flag (``--database`` reads better beside a postgresql:// URL).
_FLAG_ALIASES = {"database_url": ("--database",)}
#: Settings read from the environment only: a command line is visible to other local users.
_ENV_ONLY = frozenset({"server_secret"})
_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
#: The longest message line printed for a bad setting (values come from the user).
_MAX_MESSAGE = 300


class SettingsArgumentError(ValueError):
    """A setting given by flag or variable is invalid; the message names that flag or
    variable."""


def _settings_class() -> Any:
    from synapse_server.settings import ServerSettings

    return ServerSettings


def flag_name(field: str) -> str:
    """The ``synapse serve`` flag of a settings field."""
    return _FLAG_NAMES.get(field, "--" + field.replace("_", "-"))


def env_name(field: str) -> str:
    """The environment variable of a settings field (``SYNAPSE_`` + its name in capitals)."""
    prefix = _settings_class().model_config.get("env_prefix", "")
    return f"{prefix}{field}".upper()


def _unwrapped(annotation: Any) -> Any:
    """``X`` of ``X | None`` and of ``Annotated[X, ...]``."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _unwrapped(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return _unwrapped(args[0])
    return annotation


def _default_text(info: FieldInfo) -> str:
    factory = info.default_factory
    value = factory() if factory is not None else info.default  # type: ignore[call-arg]
    if value is None or value == [] or value == {}:
        return "none"
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value)


#: Metavars of text settings whose form a generic one would not tell.
_METAVARS = {
    "listen_address": "HOST:PORT",
    "ray_address": "HOST:PORT",
    "metrics_listen": "HOST:PORT",
    "database_url": "URL",
    "worker_python": "PATH",
    "preload_plugins": "CODE",
}


def _metavar(field: str, kind: Any) -> str:
    if field in _METAVARS:
        return _METAVARS[field]
    if typing.get_origin(kind) is Literal:
        return "{" + ",".join(str(c) for c in typing.get_args(kind)) + "}"
    if typing.get_origin(kind) is list:
        kind = typing.get_args(kind)[0]
    if kind is Path:
        return "FILE" if field.endswith("_file") else "DIR"
    if kind is int:
        return "N"
    if kind is float:
        return "SECONDS" if field.endswith("_seconds") else "X"
    return flag_name(field).lstrip("-").upper().replace("-", "_")


def _help(field: str, info: FieldInfo) -> str:
    text = f"{info.description or ''} [${env_name(field)}; default: {_default_text(info)}]"
    return text.strip().replace("%", "%%")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per settings field (see the module doc); each is optional and falls back to
    its ``SYNAPSE_*`` variable, then the default. Also ``--log-level``."""
    settings_class = _settings_class()
    for field, info in settings_class.model_fields.items():
        if field in _ENV_ONLY:
            continue
        flag = flag_name(field)
        kind = _unwrapped(info.annotation)
        origin = typing.get_origin(kind)
        if kind is bool:
            parser.add_argument(
                flag,
                dest=field,
                action=argparse.BooleanOptionalAction,
                default=None,
                help=_help(field, info),
            )
        elif origin is list:
            parser.add_argument(
                flag,
                dest=field,
                action="append",
                metavar=_metavar(field, kind),
                help=_help(field, info),
            )
        else:
            # Values go to the settings model as given, which parses and checks them the same
            # way as the variable's (and so reports them the same way).
            parser.add_argument(
                flag,
                *_FLAG_ALIASES.get(field, ()),
                dest=field,
                metavar=_metavar(field, kind),
                help=_help(field, info),
            )
    parser.add_argument(
        "--log-level",
        default="INFO",
        metavar="LEVEL",
        help=f"server log level: {', '.join(_LOG_LEVELS)} [default: INFO]",
    )
    env_only = [
        f"${env_name(f)}: {settings_class.model_fields[f].description}" for f in sorted(_ENV_ONLY)
    ]
    parser.epilog = (
        "Every flag overrides its variable. Read from the environment only (a command line is "
        "visible to other local users): " + "; ".join(env_only) + "."
    ).replace("%", "%%")
    _one_line_errors(parser)


def _one_line_errors(parser: argparse.ArgumentParser) -> None:
    """Usage mistakes as one line (no usage block), exit code 2."""

    def error(message: str) -> NoReturn:
        parser.exit(2, f"{parser.prog}: {message} (see {parser.prog} --help)\n")

    parser.error = error  # type: ignore[method-assign]


def settings_from_args(args: argparse.Namespace) -> Any:
    """ServerSettings from the flags that were given (the rest from the environment).

    Raises pydantic's ``ValidationError``; :func:`settings_from_flags` words it for people.
    """
    settings_class = _settings_class()
    # Every flag whose dest names a settings field; unset flags (None) leave the env/default.
    given = {
        name: value
        for name, value in vars(args).items()
        if name in settings_class.model_fields and value is not None
    }
    return settings_class(**given)


_INPUT_SHOULD = re.compile(r"^Input should (be )?")


def _reworded(message: str) -> str:
    message = message.removeprefix("Value error, ")
    message = _INPUT_SHOULD.sub(lambda m: "must " + (m.group(1) or ""), message)
    return message


def name_flags(message: str) -> str:
    """``message`` with each settings field name replaced by its flag (for messages of the
    settings' own checks, which name fields). Only names with an underscore: a one-word name
    (``tokens``) is also a plain word of those messages."""
    fields = sorted((f for f in _settings_class().model_fields if "_" in f), key=len, reverse=True)
    pattern = re.compile(r"\b(" + "|".join(re.escape(f) for f in fields) + r")\b")

    def flag(match: re.Match[str]) -> str:
        field = match.group(1)
        return env_name(field) if field in _ENV_ONLY else flag_name(field)

    return pattern.sub(flag, message)


def _bounded(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _MAX_MESSAGE else text[: _MAX_MESSAGE - 3] + "..."


def settings_from_flags(args: argparse.Namespace) -> Any:
    """Like :func:`settings_from_args`, raising :class:`SettingsArgumentError` whose message
    names the flag (or, for a value from the environment, the variable) of the first invalid
    setting: ``--max-concurrent-jobs: must be greater than 0``."""
    from pydantic_settings import SettingsError as SourceError

    try:
        return settings_from_args(args)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = first.get("loc") or ("",)
        field = str(loc[0])
        from_flag = getattr(args, field, None) is not None
        where = flag_name(field) if from_flag else env_name(field)
        more = exc.error_count() - 1
        also = f" (and {more} more invalid setting{'s' if more > 1 else ''})" if more else ""
        message = _reworded(str(first.get("msg", "invalid")))
        # A validator's message may start with the field's own name: said once, as the flag.
        message = name_flags(message.removeprefix(f"{field}: ").removeprefix(f"{field} "))
        raise SettingsArgumentError(_bounded(f"{where}: {message}{also}")) from None
    except SourceError as exc:  # a variable that cannot be read at all
        raise SettingsArgumentError(_bounded(name_flags(str(exc)))) from None


def _fail(message: str, code: int) -> int:
    # One line on stderr, never a traceback: these are the operator's mistakes to fix.
    print(f"synapse serve: {_bounded(message)}", file=sys.stderr, flush=True)
    return code


class EventLoopUnavailableError(RuntimeError):
    """``--event-loop uvloop`` where uvloop is not installed."""


def event_loop_factory(choice: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The loop factory for ``asyncio.Runner`` of an ``event_loop`` setting (None: asyncio's).

    uvloop runs the callbacks of grpc.aio and of the Serve handle's router with less
    overhead than asyncio's own loop: measured, about 15% less server CPU per Infer call
    (docs/benchmarks.md). ``auto`` takes it when installed (Ray Serve's ``uvicorn[standard]``
    brings it), and asyncio's loop otherwise.
    """
    if choice == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            raise EventLoopUnavailableError(
                "uvloop is not installed (pip install uvloop, or use --event-loop asyncio)"
            ) from None
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def run_serve(args: argparse.Namespace) -> int:
    """Handler: build settings, run the server until SIGTERM/SIGINT.

    Exit codes: 2 for settings that cannot work (bad values, unusable TLS files), 1 when the
    server cannot start (the address cannot be bound, another server holds the data
    directory, the data directory cannot be written), 0 after a normal stop.
    """
    from synapse_sdk.errors import PluginConfigError, PluginNotFoundError

    from synapse_server._data_dir_lock import DataDirectoryLockError
    from synapse_server.app import ServerStartError, serve
    from synapse_server.core import StorageError
    from synapse_server.settings import SettingsError
    from synapse_server.telemetry import configure_logging

    level = str(args.log_level).upper()
    if level not in _LOG_LEVELS:
        return _fail(f"--log-level: must be one of {', '.join(_LOG_LEVELS)}", 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        settings = settings_from_flags(args)
    except SettingsArgumentError as exc:
        return _fail(str(exc), 2)
    # The settings' log format from here on (the default one above covers their errors).
    configure_logging(level, settings.log_format)
    try:
        loop_factory = event_loop_factory(settings.event_loop)
    except EventLoopUnavailableError as exc:
        return _fail(f"--event-loop: {exc}", 2)
    logger.debug("event loop: %s", "asyncio" if loop_factory is None else "uvloop")
    try:
        # The server checks its settings first (TLS files included), before opening anything.
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            runner.run(serve(settings))
    except SettingsError as exc:
        return _fail(f"invalid settings: {name_flags(str(exc))}", 2)
    except (PluginNotFoundError, PluginConfigError) as exc:
        # A --plugin-dir that does not exist, or a plugin in it that does not load.
        return _fail(f"cannot load the plugins: {exc}", 2)
    except (ServerStartError, DataDirectoryLockError) as exc:
        # One line, no traceback: the address is taken, another server has the data
        # directory, or it cannot be written.
        return _fail(str(exc), 1)
    except StorageError as exc:
        # A full or unwritable data directory at start-up: one line, not a traceback.
        return _fail(f"cannot start: {exc}", 1)
    return 0
