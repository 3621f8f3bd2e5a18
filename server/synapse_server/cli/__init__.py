"""The ``synapse`` command line: one argparse subcommand group per module.

Each ``_<group>.py`` module exposes ``register(subparsers)``, which adds its parser and sets
``handler`` (a function taking the parsed namespace and returning the exit code). Exit codes:
0 success, 1 failure, 2 usage or invalid input, 130 cancelled.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from synapse_server.cli import _deployments, _jobs, _model, _plugin, _serve
from synapse_server.cli._exit import EXIT_USAGE

logger = logging.getLogger(__name__)

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every subcommand group registered."""
    parser = argparse.ArgumentParser(prog="synapse", description="Synapse plugin platform.")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    _plugin.register(subparsers)
    _jobs.register(subparsers)
    _model.register(subparsers)
    _deployments.register(subparsers)
    _serve.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``synapse`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    code: int = handler(args)
    return code
