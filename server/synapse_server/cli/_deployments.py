"""``synapse deployments list|get|delete``: the serve applications deployed on a server."""

from __future__ import annotations

import argparse
import logging
from itertools import islice
from typing import Any

from synapse_client import Client, ClientConfigError, DeploymentInfo

from synapse_server.cli._exit import EXIT_OK
from synapse_server.cli._remote import (
    add_remote_command,
    ascii_count,
    ascii_id,
    print_line,
    print_table,
    to_json,
)

logger = logging.getLogger(__name__)

__all__ = ["register"]


def register(subparsers: Any) -> None:
    """Adds the ``deployments`` command group to the top-level parser."""
    group = subparsers.add_parser(
        "deployments", help="list, inspect and undeploy serve applications on a server"
    )
    commands = group.add_subparsers(dest="deployments_command", metavar="SUBCOMMAND", required=True)

    listing = commands.add_parser("list", help="list deployments, newest first, as last seen")
    listing.add_argument("--plugin", help="only deployments of this plugin code")
    listing.add_argument("--name", help="only the serve application with this name")
    listing.add_argument(
        "--limit", type=ascii_count, default=50, help="at most this many (default 50, 0 = all)"
    )
    listing.add_argument("--json", action="store_true", help="one JSON object per line")
    add_remote_command(listing, _list)

    get = commands.add_parser(
        "get", help="show one deployment as JSON, refreshed from Ray Serve (replicas, models)"
    )
    get.add_argument("deployment_id", type=ascii_id, metavar="ID")
    add_remote_command(get, _get)

    delete = commands.add_parser("delete", help="undeploy a serve application")
    delete.add_argument("deployment_id", type=ascii_id, metavar="ID")
    add_remote_command(delete, _delete)


def _list(client: Client, args: argparse.Namespace) -> int:
    if args.limit < 0:
        raise ClientConfigError("--limit must be >= 0")
    found = client.list_deployments(plugin=args.plugin, name=args.name)
    selected = list(islice(found, args.limit)) if args.limit else found
    if args.json:
        for deployment in selected:
            print_line(to_json(deployment))
        return EXIT_OK
    rows: list[tuple[str, ...]] = [
        ("ID", "STATUS", "NAME", "PLUGIN", "ENDPOINT", "MODELS", "REPLICAS")
    ]
    rows.extend(_row(d) for d in selected)
    print_table(rows)
    return EXIT_OK


def _row(deployment: DeploymentInfo) -> tuple[str, str, str, str, str, str, str]:
    return (
        str(deployment.id),
        deployment.status,
        deployment.name,
        deployment.plugin,
        deployment.endpoint_action,
        ",".join(str(m) for m in deployment.model_ids),
        str(len(deployment.replicas)),
    )


def _get(client: Client, args: argparse.Namespace) -> int:
    print_line(to_json(client.get_deployment(args.deployment_id), indent=2))
    return EXIT_OK


def _delete(client: Client, args: argparse.Namespace) -> int:
    print_line(to_json(client.delete_deployment(args.deployment_id), indent=2))
    return EXIT_OK
