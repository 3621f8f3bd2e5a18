"""``synapse serve``: start the platform server (flags override ``SYNAPSE_*`` variables)."""

from __future__ import annotations

import logging
from typing import Any

from synapse_server._serve_args import add_arguments, run_serve

logger = logging.getLogger(__name__)

__all__ = ["register"]


def register(subparsers: Any) -> None:
    """Add the ``serve`` subcommand."""
    parser = subparsers.add_parser("serve", help="run the platform server")
    add_arguments(parser)
    parser.set_defaults(handler=run_serve)
