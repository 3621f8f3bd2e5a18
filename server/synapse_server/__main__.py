"""``python -m synapse_server``: the same as ``synapse serve``."""

from __future__ import annotations

import argparse
import os
import sys

# As in synapse_server.cli: no gRPC log lines on top of the one-line start-up errors.
os.environ.setdefault("GRPC_VERBOSITY", "NONE")

from synapse_server._serve_args import add_arguments, run_serve


def main() -> int:
    """Parse the serve flags and run the server."""
    parser = argparse.ArgumentParser(prog="python -m synapse_server")
    add_arguments(parser)
    return run_serve(parser.parse_args())


if __name__ == "__main__":
    sys.exit(main())
