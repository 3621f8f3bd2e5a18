"""``python -m synapse_server.worker``: run one job; the credential comes from the environment.

``SYNAPSE_WORKER_CREDENTIAL`` holds the job-scoped credential (kept out of argv so that process
listings do not show it). With ``--fork-server`` (and no ``--job-id``) the process imports the
``--preload`` plugins once and forks one worker per job requested on stdin (see ``_zygote``).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import threading
from pathlib import Path
from typing import NoReturn

from synapse_server.worker._runner import run_worker
from synapse_server.worker._zygote import run_zygote

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
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s worker %(levelname)s %(message)s")
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
    )


def exit_process(code: int) -> NoReturn:
    """End the worker process right away once its job is over.

    The job's outcome is already stored by the server; what an ordinary interpreter exit adds
    is tearing down every module (torch included) and object one by one: 0.1-0.45 s measured,
    during which the executor still counts the job's worker as running and its replacement
    standby worker has not started. As ``multiprocessing`` does for its child processes,
    non-daemon threads are joined and logs and standard streams flushed first.
    """
    current = threading.current_thread()
    for thread in threading.enumerate():
        if thread is not current and not thread.daemon:
            thread.join()
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        # A closed or broken stream has nothing left to flush.
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    os._exit(code)


if __name__ == "__main__":
    exit_process(main())
