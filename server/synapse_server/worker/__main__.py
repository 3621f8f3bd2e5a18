"""``python -m synapse_server.worker``: run one job; the credential comes from the environment.

``SYNAPSE_WORKER_CREDENTIAL`` holds the job-scoped credential (kept out of argv so that process
listings do not show it). With ``--fork-server`` (and no ``--job-id``) the process imports the
``--preload`` plugins once and forks one worker per job requested on stdin (see ``_zygote``).
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

from synapse_server.telemetry import LOG_FORMATS, configure_logging
from synapse_server.worker._exit import exit_process
from synapse_server.worker._runner import run_worker
from synapse_server.worker._zygote import run_zygote

__all__ = ["exit_process", "main"]

logger = logging.getLogger(__name__)


def main() -> int:
    """Parse arguments and run the worker."""
    parser = argparse.ArgumentParser(prog="python -m synapse_server.worker")
    parser.add_argument("--address", required=True, help="server WorkerService address")
    parser.add_argument("--job-id")
    parser.add_argument(
        "--fork-server", action="store_true", help="fork one worker per job requested on stdin"
    )
    parser.add_argument("--preload", action="append", default=[], help="plugin code to import")
    parser.add_argument("--plugin-dir", action="append", default=[], type=Path)
    parser.add_argument("--memory-limit-mb", type=int)
    parser.add_argument("--parent-pid", type=int)
    parser.add_argument("--root-cert-file", type=Path)
    parser.add_argument("--server-name")
    parser.add_argument(
        "--worker-id",
        help="how the worker names itself to the server (--fork-server: each child <id>-<pid>)",
    )
    args = parser.parse_args()
    # The server's log format (SYNAPSE_LOG_FORMAT); JSON lines carry the job id.
    log_format = os.environ.get("SYNAPSE_LOG_FORMAT", "text")
    configure_logging(
        "INFO",
        log_format if log_format in LOG_FORMATS else "text",
        text_format="%(asctime)s worker %(levelname)s %(message)s",
    )
    root = args.root_cert_file.read_bytes() if args.root_cert_file else None
    if args.fork_server:
        if args.job_id:
            parser.error("--fork-server takes its jobs from stdin, not --job-id")
        return run_zygote(
            args.address,
            plugin_dirs=args.plugin_dir,
            preload=args.preload,
            memory_limit_mb=args.memory_limit_mb,
            parent_pid=args.parent_pid,
            root_certificates=root,
            server_name=args.server_name,
            worker_id=args.worker_id,
        )
    if not args.job_id:
        parser.error("--job-id is required (or --fork-server)")
    credential = os.environ.pop("SYNAPSE_WORKER_CREDENTIAL", "")
    if not credential:
        parser.error("SYNAPSE_WORKER_CREDENTIAL is not set")
    return run_worker(
        args.address,
        args.job_id,
        credential,
        plugin_dirs=args.plugin_dir,
        root_certificates=root,
        server_name=args.server_name,
        memory_limit_mb=args.memory_limit_mb,
        parent_pid=args.parent_pid,
        worker_id=args.worker_id,
    )


if __name__ == "__main__":
    exit_process(main())
