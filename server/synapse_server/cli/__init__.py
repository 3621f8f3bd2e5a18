"""The ``synapse`` command line: one argparse subcommand group per module.

Each ``_<group>.py`` module exposes ``register(subparsers)``, which adds its parser and sets
``handler`` (a function taking the parsed namespace and returning the exit code). Exit codes:
0 success, 1 failure, 2 usage or invalid input, 130 cancelled.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import logging
import os
import sys
from collections.abc import Sequence

# Before the command modules import grpc: gRPC's own error log lines (a refused handshake, a
# port in use) would come on top of the one-line reason each command prints. GRPC_VERBOSITY
# set by the user (e.g. ERROR, DEBUG) still wins.
os.environ.setdefault("GRPC_VERBOSITY", "NONE")

from synapse_server.cli import _dataset, _deployments, _jobs, _model, _plugin, _serve
from synapse_server.cli._exit import EXIT_CANCELLED, EXIT_USAGE

logger = logging.getLogger(__name__)

__all__ = ["build_parser", "main"]

#: The installed distribution whose version ``synapse --version`` prints.
_DISTRIBUTION = "synapse-server"


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every subcommand group registered."""
    parser = argparse.ArgumentParser(prog="synapse", description="Synapse plugin platform.")
    parser.add_argument(
        "--version", action="version", version=f"synapse {_version()}", help="print the version"
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    _plugin.register(subparsers)
    _jobs.register(subparsers)
    _model.register(subparsers)
    _dataset.register(subparsers)
    _deployments.register(subparsers)
    _serve.register(subparsers)
    return parser


def _version() -> str:
    try:
        return importlib.metadata.version(_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:  # run from a source tree, not installed
        return "unknown (not installed)"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``synapse`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        code: int = handler(args)
    except KeyboardInterrupt:
        # Ctrl-C anywhere a command does not handle it itself: no traceback, the shell's code.
        sys.stderr.write("\ninterrupted\n")
        return EXIT_CANCELLED
    return code
