"""``python -m synapse_server.worker``: run one job; the credential comes from the environment.

``SYNAPSE_WORKER_CREDENTIAL`` holds the job-scoped credential (kept out of argv so that process
listings do not show it).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from synapse_server.worker._runner import run_worker

logger = logging.getLogger(__name__)


def main() -> int:
    """Parse arguments and run the worker."""
    parser = argparse.ArgumentParser(prog="python -m synapse_server.worker")
    parser.add_argument("--address", required=True, help="server WorkerService address")
    parser.add_argument("--job-id", required=True)
    parser.add_argument("--plugin-dir", action="append", default=[], type=Path)
    parser.add_argument("--memory-limit-mb", type=int)
    parser.add_argument("--parent-pid", type=int)
    parser.add_argument("--root-cert-file", type=Path)
    parser.add_argument("--server-name")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s worker %(levelname)s %(message)s")
    credential = os.environ.pop("SYNAPSE_WORKER_CREDENTIAL", "")
    if not credential:
        parser.error("SYNAPSE_WORKER_CREDENTIAL is not set")
    root = args.root_cert_file.read_bytes() if args.root_cert_file else None
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
