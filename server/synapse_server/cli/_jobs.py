"""``synapse jobs list|get|logs|cancel|output``: inspect and control jobs on a running
server, and fetch what they wrote."""

from __future__ import annotations

import argparse
import logging
from itertools import islice
from pathlib import Path
from typing import Any

from synapse_client import (
    Client,
    ClientConfigError,
    Job,
    JobEvent,
    JobState,
    ProgressEvent,
    StateChangedEvent,
    TerminalEvent,
)

from synapse_server.cli._exit import EXIT_OK
from synapse_server.cli._progress import describe_event
from synapse_server.cli._remote import (
    add_remote_command,
    ascii_count,
    print_line,
    print_table,
    to_json,
    to_sdk_event,
)

logger = logging.getLogger(__name__)

__all__ = ["register"]


def register(subparsers: Any) -> None:
    """Adds the ``jobs`` command group to the top-level parser."""
    jobs = subparsers.add_parser("jobs", help="list, inspect, follow and cancel jobs on a server")
    commands = jobs.add_subparsers(dest="jobs_command", metavar="SUBCOMMAND", required=True)

    listing = commands.add_parser("list", help="list jobs, newest first")
    listing.add_argument(
        "--state",
        action="append",
        choices=[s.value for s in JobState],
        help="only jobs in this state (repeatable)",
    )
    listing.add_argument("--plugin", help="only jobs of this plugin code")
    listing.add_argument("--action", help="only jobs of this action")
    listing.add_argument(
        "--limit", type=ascii_count, default=50, help="at most this many jobs (default 50, 0 = all)"
    )
    listing.add_argument("--json", action="store_true", help="one JSON object per line")
    add_remote_command(listing, _list)

    get = commands.add_parser("get", help="show one job as JSON (with the plugin traceback)")
    get.add_argument("job_id", metavar="JOB_ID")
    add_remote_command(get, _get)

    logs = commands.add_parser("logs", help="replay a job's events")
    logs.add_argument("job_id", metavar="JOB_ID")
    logs.add_argument(
        "-f", "--follow", action="store_true", help="keep following until the job ends"
    )
    logs.add_argument(
        "--after-seq", type=ascii_count, default=0, metavar="SEQ", help="start after this event seq"
    )
    logs.add_argument("--json", action="store_true", help="one JSON object per event")
    add_remote_command(logs, _logs)

    cancel = commands.add_parser("cancel", help="ask the server to cancel a job")
    cancel.add_argument("job_id", metavar="JOB_ID")
    cancel.add_argument("--reason", default="", help="why; recorded in the job's last event")
    add_remote_command(cancel, _cancel)

    output = commands.add_parser(
        "output", help="download a job's output (a Parquet file); kept only if the job succeeded"
    )
    output.add_argument("job_id", metavar="JOB_ID")
    output.add_argument(
        "name", metavar="NAME", nargs="?", default=None, help="the output (default: the only one)"
    )
    output.add_argument(
        "-o", "--output", type=Path, metavar="FILE", help="the file to write (required)"
    )
    output.add_argument(
        "--list", action="store_true", help="list the job's outputs instead (JSON lines)"
    )
    add_remote_command(output, _output)


def _list(client: Client, args: argparse.Namespace) -> int:
    if args.limit < 0:
        raise ClientConfigError("--limit must be >= 0")
    jobs = client.list_jobs(state=args.state, plugin=args.plugin, action=args.action)
    selected = list(islice(jobs, args.limit)) if args.limit else list(jobs)
    if args.json:
        for job in selected:
            print_line(to_json(job))
        return EXIT_OK
    rows: list[tuple[str, ...]] = [
        ("ID", "STATE", "PLUGIN", "ACTION", "MODE", "PROGRESS", "CREATED")
    ]
    rows.extend(_row(job) for job in selected)
    print_table(rows)
    return EXIT_OK


def _row(job: Job) -> tuple[str, str, str, str, str, str, str]:
    created = job.create_time.strftime("%Y-%m-%d %H:%M:%S") if job.create_time else ""
    mode = job.mode.value if job.mode is not None else ""
    return (
        job.id,
        job.state.value,
        job.plugin,
        job.action,
        mode,
        f"{job.progress_percent:.0f}%",
        created,
    )


def _get(client: Client, args: argparse.Namespace) -> int:
    print_line(to_json(client.get_job(args.job_id), indent=2))
    return EXIT_OK


def _logs(client: Client, args: argparse.Namespace) -> int:
    if args.after_seq < 0:
        raise ClientConfigError("--after-seq must be >= 0")
    handle = client.job(args.job_id)
    for event in handle.events(after_seq=args.after_seq, follow=args.follow):
        print_line(to_json(event) if args.json else describe(event))
    return EXIT_OK


def _cancel(client: Client, args: argparse.Namespace) -> int:
    job = client.cancel_job(args.job_id, args.reason)
    note = "" if job.state.is_terminal else " (cancel requested; the job is stopping)"
    print_line(f"job {job.id}: {job.state.value}{note}")
    return EXIT_OK


def _output(client: Client, args: argparse.Namespace) -> int:
    handle = client.job(args.job_id)
    if args.list:
        for dataset in handle.outputs():
            print_line(to_json(dataset.to_dict()))
        return EXIT_OK
    out: Path | None = args.output
    if out is None:
        raise ClientConfigError("-o/--output FILE is required (or --list the outputs)")
    if out.is_dir():
        raise ClientConfigError(f"{out} is a directory: give the file to write")
    dataset = handle.download_output(out, args.name)
    print_line(
        f"{out} (output {dataset.name!r}: {dataset.num_rows} rows, {dataset.size_bytes} bytes)"
    )
    return EXIT_OK


def describe(event: JobEvent) -> str:
    """One human-readable line for a job event: seq, time, kind and details."""
    stamp = event.time.strftime("%H:%M:%S.%f")[:-3] if event.time else "-"
    p = event.payload
    if isinstance(p, StateChangedEvent):
        text = f"state {p.state.value}" + (f": {p.reason}" if p.reason else "")
    elif isinstance(p, ProgressEvent):
        where = f" {p.category}" if p.category else ""
        text = f"progress{where} {p.current}/{p.total} (overall {p.overall_percent:.1f}%)"
    elif isinstance(p, TerminalEvent):
        text = _describe_terminal(p)
    else:
        # Logs, metrics and steps read the same as in the live console of `plugin run`.
        sdk_event = to_sdk_event(event)
        text = describe_event(sdk_event) if sdk_event is not None else repr(p)
    return f"{event.seq:>6} {stamp} {text}"


def _describe_terminal(p: TerminalEvent) -> str:
    text = f"finished {p.state.value}"
    if p.error is not None:
        text += f": {p.error.type}: {p.error.message}"
    elif p.reason:
        text += f": {p.reason}"
    if p.state is JobState.SUCCEEDED:
        text += f" (result {p.result_size_bytes} bytes)"
    return text
