"""Session-scoped real Ray + Serve for the serve tests (replicas ask for 0 CPUs)."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

PLUGINS = Path(__file__).resolve().parent / "plugins"
EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "plugins"

# The example models (examples/models) are built by the tests; the repository root is not on
# sys.path when pytest runs as a script.
_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)


@pytest.fixture(scope="session")
def ray_session() -> Iterator[str]:
    """A local Ray with Serve started (no proxies), shared by every Ray test."""
    ray = pytest.importorskip("ray")
    from ray import serve

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    serve.start(proxy_location="Disabled", logging_config={"enable_access_log": False})
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        serve.shutdown()
        ray.shutdown()
