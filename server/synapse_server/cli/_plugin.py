"""``synapse plugin run|list|describe``: run a plugin's action; see what a server offers."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import os
import signal
import sys
from pathlib import Path
from types import FrameType
from typing import Any

import yaml
from synapse_client import Client, ClientConfigError
from synapse_sdk.errors import (
    ActionCancelledError,
    ActionFailedError,
    ActionNotFoundError,
    ParamsValidationError,
    SynapseError,
)
from synapse_sdk.plugins import (
    LocalModelBackend,
    load_plugin,
    params_model,
    run_action,
    unknown_params_warnings,
    validate_params,
)
from synapse_sdk.runtime import RunContext

from synapse_server.cli import _remote
from synapse_server.cli._exit import EXIT_CANCELLED, EXIT_FAILED, EXIT_OK, EXIT_USAGE
from synapse_server.cli._progress import ConsoleProgressSink

logger = logging.getLogger(__name__)

__all__ = ["register"]


class _UsageError(Exception):
    """Bad command-line input (exit code 2)."""


def register(subparsers: Any) -> None:
    """Add the ``plugin`` command group to the top-level parser."""
    plugin = subparsers.add_parser("plugin", help="work with plugins")
    commands = plugin.add_subparsers(dest="plugin_command", metavar="SUBCOMMAND", required=True)
    run = commands.add_parser(
        "run",
        help="run a plugin action",
        description="Run ACTION of the plugin at --plugin; the result JSON goes to stdout, "
        "progress and logs to stderr.",
    )
    run.add_argument("action", metavar="ACTION", help="action name from the plugin's config")
    run.add_argument(
        "--plugin",
        default=".",
        help="plugin directory (with config.yaml), .py file or module name (default: .); "
        "with --server, the plugin code",
    )
    run.add_argument(
        "--params", default="{}", help="params as JSON text, or @FILE to read JSON from a file"
    )
    run.add_argument(
        "--mode",
        default=None,
        choices=["local", "task", "job"],
        help="where to run: local (in this process, or a worker process with --server); "
        "task and job (Ray) need --server; default: local, or the action's default on a server",
    )
    run.add_argument(
        "--models-dir",
        type=Path,
        default=None,
        help="local model backend: model ID is the directory MODELS_DIR/ID",
    )
    run.add_argument("--no-progress", action="store_true", help="do not render progress on stderr")
    _remote.add_connection_arguments(run, required=False)
    run.set_defaults(handler=run_command)

    listing = commands.add_parser(
        "list",
        help="list the plugins a server offers",
        description="List the plugins a server offers, with their actions (ListActions).",
    )
    listing.add_argument("--json", action="store_true", help="one JSON object per plugin")
    _remote.add_remote_command(listing, _list)

    describe = commands.add_parser(
        "describe",
        help="show a plugin's actions: description, default mode, params JSON schema",
        description="Show PLUGIN's actions (or just ACTION) as the server describes them: "
        "kind, description, default and supported modes, progress categories and the params "
        "JSON schema.",
    )
    describe.add_argument("plugin_code", metavar="PLUGIN", help="the plugin's code")
    describe.add_argument("action", metavar="ACTION", nargs="?", help="only this action")
    describe.add_argument("--json", action="store_true", help="the plugin as one JSON object")
    _remote.add_remote_command(describe, _describe)


def _list(client: Client, args: argparse.Namespace) -> int:
    plugins = client.list_actions()
    if args.json:
        for info in plugins:
            _remote.print_line(_remote.to_json(info))
        return EXIT_OK
    # The action list last: it is the long column.
    rows: list[tuple[str, ...]] = [("CODE", "VERSION", "CATEGORY", "NAME", "ACTIONS")]
    rows.extend(
        (p.code, p.version, p.category, p.name, ",".join(a.name for a in p.actions))
        for p in plugins
    )
    _remote.print_table(rows)
    return EXIT_OK


def _describe(client: Client, args: argparse.Namespace) -> int:
    plugin = client.list_actions(args.plugin_code)[0]
    actions = plugin.actions
    if args.action is not None:
        actions = tuple(a for a in plugin.actions if a.name == args.action)
        if not actions:
            names = ", ".join(a.name for a in plugin.actions) or "none"
            raise ClientConfigError(
                f"plugin {plugin.code!r} has no action {args.action[:100]!r} (actions: {names})"
            )
    if args.json:
        _remote.print_line(_remote.to_json(dataclasses.replace(plugin, actions=actions), indent=2))
        return EXIT_OK
    title = f"{plugin.code} {plugin.version}".rstrip()
    details = ", ".join(x for x in (plugin.name, plugin.category) if x)
    _remote.print_line(f"plugin {title}" + (f" ({details})" if details else ""))
    if plugin.description:
        _remote.print_line(f"  {plugin.description}")
    for action in actions:
        _remote.print_line("")
        _remote.print_line(f"action {action.name} ({action.kind.value})")
        if action.description:
            _remote.print_line(f"  {action.description}")
        if action.default_mode is not None:
            modes = ", ".join(m.value for m in action.supported_modes)
            _remote.print_line(f"  default mode: {action.default_mode.value} (modes: {modes})")
        if action.progress_categories:
            _remote.print_line(f"  progress categories: {', '.join(action.progress_categories)}")
        schema = json.dumps(action.params_schema or {}, indent=2, ensure_ascii=False)
        _remote.print_line("  params (JSON schema):")
        for line in schema.splitlines():
            _remote.print_line(f"    {line}")
    return EXIT_OK


def run_command(args: argparse.Namespace) -> int:
    """Handle ``synapse plugin run``."""
    if args.server:
        try:
            args.plugin = _server_plugin_code(args.plugin)
            return _remote.run_remote(args, _read_params(args.params))
        except _UsageError as exc:
            return _fail(exc, EXIT_USAGE)
    if args.mode not in (None, "local"):
        return _fail(_UsageError(f"--mode {args.mode} needs --server"), EXIT_USAGE)
    args.mode = "local"
    try:
        params = _read_params(args.params)
        plugin = load_plugin(args.plugin)
        action_cls = plugin.get_action_class(args.action)
        # The same warnings a server records with the job (run_action validates again).
        checked = validate_params(params_model(action_cls), params, args.action)
        _remote.print_warnings(unknown_params_warnings(checked, params))
    except (_UsageError, ActionNotFoundError, ParamsValidationError) as exc:
        return _fail(exc, EXIT_USAGE)
    except SynapseError as exc:
        return _fail(exc, EXIT_FAILED)

    sink = ConsoleProgressSink(sys.stderr)
    backend = LocalModelBackend(root=args.models_dir) if args.models_dir is not None else None
    ctx = RunContext(
        sink=sink if not args.no_progress else RunContext().sink,
        plugin_code=plugin.code,
        action_name=args.action,
        model_backend=backend,
        mode=args.mode,
    )

    def _on_interrupt(signum: int, frame: FrameType | None) -> None:
        del signum, frame
        if ctx.cancel_event.is_set():
            raise KeyboardInterrupt
        ctx.cancel_event.set()
        _say_from_signal_handler("\ncancelling (press Ctrl-C again to abort)\n")

    previous = signal.signal(signal.SIGINT, _on_interrupt)
    try:
        result = run_action(action_cls, params, ctx)
    except ParamsValidationError as exc:
        return _fail(exc, EXIT_USAGE, sink)
    except ActionCancelledError as exc:
        return _fail(exc, EXIT_CANCELLED, sink)
    except ActionFailedError as exc:
        logger.debug("traceback of the failure:\n%s", exc.error.traceback)
        return _fail(exc, EXIT_FAILED, sink)
    except KeyboardInterrupt:
        # The second Ctrl-C: stop now, without waiting for the action to notice.
        sink.close()
        sys.stderr.write("aborted\n")
        return EXIT_CANCELLED
    finally:
        signal.signal(signal.SIGINT, previous)
    sink.close()
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()
    return EXIT_OK


def _say_from_signal_handler(text: str) -> None:
    """Write ``text`` to stderr from a signal handler.

    The handler may interrupt the main thread in the middle of a write to ``sys.stderr``;
    writing to it again then raises (a reentrant call), so the bytes go to the file
    descriptor directly.
    """
    try:
        os.write(sys.stderr.fileno(), text.encode("utf-8", "replace"))
    except (OSError, ValueError):  # no descriptor (a captured stream), or a closed one
        with contextlib.suppress(RuntimeError, OSError, ValueError):
            sys.stderr.write(text)


def _server_plugin_code(plugin: str) -> str:
    """``--plugin`` as the server names plugins: by code.

    A local plugin directory (such as the default ``.`` inside one) stands for the ``code``
    in its config.yaml, so the reference document's ``synapse plugin run ACTION ...`` works
    from a plugin's directory against a server too. Anything else is taken as the code.
    """
    config = Path(plugin) / "config.yaml"
    if not config.is_file():
        if plugin == ".":
            raise _UsageError(
                "this directory has no config.yaml: pass --plugin CODE (or run from a plugin "
                "directory) to run an action on the server"
            )
        return plugin
    try:
        raw = yaml.safe_load(config.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise _UsageError(f"cannot read {config}: {exc}") from exc
    code = raw.get("code") if isinstance(raw, dict) else None
    if not isinstance(code, str) or not code:
        raise _UsageError(f"{config}: field 'code' is missing; it names the plugin on the server")
    return code


def _read_params(raw: str) -> Any:
    text = raw
    source = "--params"
    if raw.startswith("@"):
        path = Path(raw[1:])
        source = f"params file '{path}'"
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise _UsageError(f"cannot read {source}: {exc.strerror}") from exc
        except UnicodeDecodeError as exc:
            raise _UsageError(f"{source} is not UTF-8 text: {exc.reason}") from exc
    try:
        params = json.loads(text)
    except json.JSONDecodeError as exc:
        raise _UsageError(f"{source} is not valid JSON: {exc}") from exc
    if not isinstance(params, dict):
        raise _UsageError(f"{source} must be a JSON object, got {type(params).__name__}")
    return params


def _fail(exc: BaseException, code: int, sink: ConsoleProgressSink | None = None) -> int:
    if sink is not None:
        sink.close()
    message = " ".join(str(exc).split())
    sys.stderr.write(f"error: {message}\n")
    sys.stderr.flush()
    return code
