"""``synapse model register|list|get|download|delete``: the model registry of a server."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
from pathlib import Path
from typing import Any

from synapse_client import SynapseClientError
from synapse_sdk.models import ArchiveError, extract_archive, pack_path

from synapse_server.cli._exit import EXIT_OK, EXIT_USAGE
from synapse_server.cli._remote import (
    add_connection_arguments,
    ascii_count,
    ascii_id,
    connect,
    report_failure,
)

logger = logging.getLogger(__name__)

__all__ = ["register"]


def register(subparsers: Any) -> None:
    """Adds ``synapse model ...``."""
    parser = subparsers.add_parser("model", help="register, list, get, download, delete models")
    actions = parser.add_subparsers(dest="model_command", metavar="ACTION", required=True)

    reg = actions.add_parser("register", help="upload a model directory or archive")
    reg.add_argument("path", type=Path, help="a directory (packed for you) or .zip/.tar/.tar.gz")
    reg.add_argument("--name", required=True)
    reg.add_argument("--description", default="")
    reg.add_argument("--framework", default="")
    reg.add_argument("--metadata", default=None, help="a JSON object")
    add_connection_arguments(reg, required=True)
    reg.set_defaults(handler=_register)

    lst = actions.add_parser("list", help="list models, newest first")
    lst.add_argument("--name", default=None, help="only models with this name")
    lst.add_argument("--limit", type=ascii_count, default=None, help="print at most this many")
    add_connection_arguments(lst, required=True)
    lst.set_defaults(handler=_list)

    get = actions.add_parser("get", help="print one model's metadata")
    get.add_argument("model_id", type=ascii_id)
    add_connection_arguments(get, required=True)
    get.set_defaults(handler=_get)

    dl = actions.add_parser("download", help="download (and extract) a model")
    dl.add_argument("model_id", type=ascii_id)
    dl.add_argument("-o", "--output", type=Path, required=True, help="target directory")
    dl.add_argument("--archive", action="store_true", help="keep the archive, do not extract")
    add_connection_arguments(dl, required=True)
    dl.set_defaults(handler=_download)

    rm = actions.add_parser("delete", help="delete a model")
    rm.add_argument("model_id", type=ascii_id)
    add_connection_arguments(rm, required=True)
    rm.set_defaults(handler=_delete)


def _usage(message: str) -> int:
    sys.stderr.write(f"error: {message}\n")
    return EXIT_USAGE


def _print(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2) + "\n")


def _register(args: argparse.Namespace) -> int:
    metadata: Any = None
    if args.metadata is not None:
        try:
            metadata = json.loads(args.metadata)
        except json.JSONDecodeError as exc:
            return _usage(f"--metadata is not valid JSON: {exc}")
        if not isinstance(metadata, dict):
            return _usage("--metadata must be a JSON object")
    with tempfile.TemporaryDirectory(prefix="synapse-pack-") as workdir:
        try:
            archive, fmt = pack_path(args.path, workdir)
        except (ArchiveError, FileNotFoundError) as exc:
            return _usage(str(exc))
        try:
            with connect(args) as client:
                model = client.register_model(
                    archive,
                    args.name,
                    description=args.description,
                    framework=args.framework,
                    metadata=metadata,
                    archive_format=fmt.value,
                )
        except SynapseClientError as exc:
            return report_failure(exc, args.server)
    _print(model.to_dict())
    return EXIT_OK


def _list(args: argparse.Namespace) -> int:
    try:
        with connect(args) as client:
            for count, model in enumerate(client.list_models(name=args.name)):
                if args.limit is not None and count >= args.limit:
                    break
                sys.stdout.write(json.dumps(model.to_dict()) + "\n")
    except SynapseClientError as exc:
        return report_failure(exc, args.server)
    return EXIT_OK


def _get(args: argparse.Namespace) -> int:
    try:
        with connect(args) as client:
            _print(client.get_model(args.model_id).to_dict())
    except SynapseClientError as exc:
        return report_failure(exc, args.server)
    return EXIT_OK


def _download(args: argparse.Namespace) -> int:
    out: Path = args.output
    out.mkdir(parents=True, exist_ok=True)
    try:
        with connect(args) as client, tempfile.TemporaryDirectory(dir=out) as tmp:
            archive = Path(tmp) / "archive"
            model = client.download_model(args.model_id, archive)
            if args.archive:
                suffix = {"zip": ".zip", "tar": ".tar"}.get(model.archive_format, ".tar.gz")
                target = out / f"model-{model.id}{suffix}"
                archive.replace(target)
            else:
                # Extract beside the output first so a bad archive leaves it untouched.
                tree = extract_archive(archive, Path(tmp) / "tree", model.archive_format)
                for entry in tree.iterdir():
                    entry.replace(out / entry.name)
                target = out
    except SynapseClientError as exc:
        return report_failure(exc, args.server)
    except ArchiveError as exc:
        return report_failure(exc)
    sys.stdout.write(f"{target}\n")
    return EXIT_OK


def _delete(args: argparse.Namespace) -> int:
    try:
        with connect(args) as client:
            client.delete_model(args.model_id)
    except SynapseClientError as exc:
        return report_failure(exc, args.server)
    sys.stdout.write(f"deleted model {args.model_id}\n")
    return EXIT_OK
