"""``python -m synapse_server.worker``: run one job; the credential comes from the environment.

``SYNAPSE_WORKER_CREDENTIAL`` holds the job-scoped credential (kept out of argv so that process
listings do not show it). With ``--standby`` (and no ``--job-id``) the worker preloads the
``--preload`` plugins and waits for its job on stdin instead (see ``_standby``).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from synapse_server.worker._runner import run_worker
from synapse_server.worker._standby import run_standby

logger = logging.getLogger(__name__)


def main() -> int:
    """Parse arguments and run the worker."""
    parser = argparse.ArgumentParser(prog="python -m synapse_server.worker")
    parser.add_argument("--address", required=True, help="server WorkerService address")
    parser.add_argument("--job-id")
    parser.add_argument("--standby", action="store_true", help="wait for the job on stdin")
    parser.add_argument("--preload", action="append", default=[], help="plugin code to import")
    parser.add_argument("--plugin-dir", action="append", default=[], type=Path)
    parser.add_argument("--memory-limit-mb", type=int)
    parser.add_argument("--parent-pid", type=int)
    parser.add_argument("--root-cert-file", type=Path)
    parser.add_argument("--server-name")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s worker %(levelname)s %(message)s")
    root = args.root_cert_file.read_bytes() if args.root_cert_file else None
    if args.standby:
        if args.job_id:
            parser.error("--standby takes its job from stdin, not --job-id")
        return run_standby(
            args.address,
            plugin_dirs=args.plugin_dir,
            preload=args.preload,
            memory_limit_mb=args.memory_limit_mb,
            parent_pid=args.parent_pid,
            root_certificates=root,
            server_name=args.server_name,
        )
    if not args.job_id:
        parser.error("--job-id is required (or --standby)")
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


if __name__ == "__main__":
    sys.exit(main())
