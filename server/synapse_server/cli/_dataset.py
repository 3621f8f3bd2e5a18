"""``synapse dataset upload|list|get|download|delete``: the datasets of a server."""

from __future__ import annotations

import argparse
import logging
from itertools import islice
from pathlib import Path
from typing import Any

from synapse_client import Client, ClientConfigError, DatasetInfo

from synapse_server.cli._exit import EXIT_OK
from synapse_server.cli._remote import (
    add_remote_command,
    ascii_count,
    print_line,
    print_table,
    to_json,
)

logger = logging.getLogger(__name__)

__all__ = ["register"]

_FORMATS = ("parquet", "jsonl", "npy")


def register(subparsers: Any) -> None:
    """Adds ``synapse dataset ...``."""
    parser = subparsers.add_parser(
        "dataset", help="upload, list, get, download, delete datasets (batch inference inputs)"
    )
    actions = parser.add_subparsers(dest="dataset_command", metavar="ACTION", required=True)

    up = actions.add_parser(
        "upload", help="upload a Parquet, JSON Lines or .npy file; prints the stored dataset"
    )
    up.add_argument("path", type=Path, metavar="PATH", help="the file to upload")
    up.add_argument("--name", required=True, help="the dataset's name (jobs may use it)")
    up.add_argument(
        "--format",
        choices=_FORMATS,
        default=None,
        help="the file's format (default: from its extension, else parquet)",
    )
    add_remote_command(up, _upload)

    lst = actions.add_parser("list", help="list datasets (uploads and job outputs), newest first")
    lst.add_argument("--name", default=None, help="only datasets with this name")
    lst.add_argument(
        "--limit", type=ascii_count, default=50, help="at most this many (default 50, 0 = all)"
    )
    lst.add_argument("--json", action="store_true", help="one JSON object per line")
    add_remote_command(lst, _list)

    get = actions.add_parser("get", help="print one dataset's metadata and schema as JSON")
    get.add_argument("dataset_id", metavar="DATASET_ID")
    add_remote_command(get, _get)

    dl = actions.add_parser("download", help="download a dataset's file")
    dl.add_argument("dataset_id", metavar="DATASET_ID")
    dl.add_argument(
        "-o", "--output", type=Path, metavar="FILE", required=True, help="the file to write"
    )
    add_remote_command(dl, _download)

    rm = actions.add_parser("delete", help="delete a dataset")
    rm.add_argument("dataset_id", metavar="DATASET_ID")
    add_remote_command(rm, _delete)


def _upload(client: Client, args: argparse.Namespace) -> int:
    dataset = client.upload_dataset(args.path, args.name, format=args.format)
    print_line(to_json(dataset.to_dict(), indent=2))
    return EXIT_OK


def _list(client: Client, args: argparse.Namespace) -> int:
    datasets = client.list_datasets(name=args.name)
    selected = list(islice(datasets, args.limit)) if args.limit else list(datasets)
    if args.json:
        for dataset in selected:
            print_line(to_json(dataset.to_dict()))
        return EXIT_OK
    rows: list[tuple[str, ...]] = [("ID", "NAME", "FORMAT", "ROWS", "BYTES", "JOB", "CREATED")]
    rows.extend(_row(d) for d in selected)
    print_table(rows)
    return EXIT_OK


def _row(dataset: DatasetInfo) -> tuple[str, ...]:
    created = dataset.created_at.strftime("%Y-%m-%d %H:%M:%S") if dataset.created_at else ""
    return (
        dataset.id,
        dataset.name,
        dataset.format,
        str(dataset.num_rows),
        str(dataset.size_bytes),
        dataset.job_id or "-",
        created,
    )


def _get(client: Client, args: argparse.Namespace) -> int:
    print_line(to_json(client.get_dataset(args.dataset_id).to_dict(), indent=2))
    return EXIT_OK


def _download(client: Client, args: argparse.Namespace) -> int:
    out: Path = args.output
    if out.is_dir():
        raise ClientConfigError(f"{out} is a directory: give the file to write")
    dataset = client.download_dataset(args.dataset_id, out)
    print_line(f"{out} ({dataset.num_rows} rows, {dataset.size_bytes} bytes, {dataset.format})")
    return EXIT_OK


def _delete(client: Client, args: argparse.Namespace) -> int:
    client.delete_dataset(args.dataset_id)
    print_line(f"deleted dataset {args.dataset_id}")
    return EXIT_OK
