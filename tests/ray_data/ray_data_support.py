"""Support for the Ray Data runner tests: a multi-node Ray cluster with this process as driver.

A head and two worker nodes (``ray.cluster_utils.Cluster``), one CPU each, each with its own
plugin cache (so a pool actor on another node really loads the plugin from the shipped code).
This directory runs in its own pytest process (``scripts/test``): the cluster's processes are
forked from this one.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

PLUGINS = Path(__file__).resolve().parent / "plugins"
PROBE = PLUGINS / "ray_data_probe"
NODES = ("head", "node_a", "node_b")
#: CPUs of the cluster (one per node).
CPUS = 3.0


@dataclass
class DataCluster:
    """The running cluster: its address and node id per name."""

    cluster: Any
    address: str
    node_ids: dict[str, str]
    cache_dirs: dict[str, Path]


@pytest.fixture(scope="session")
def data_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DataCluster]:
    """Head + node_a + node_b (1 CPU each), this process connected as the driver."""
    ray = pytest.importorskip("ray")
    cluster_utils = pytest.importorskip("ray.cluster_utils")
    base = tmp_path_factory.mktemp("ray-data-nodes")
    caches = {name: base / f"plugins-{name}" for name in NODES}
    common = {"num_cpus": 1, "include_dashboard": False, "object_store_memory": 80 * 1024 * 1024}
    cluster = cluster_utils.Cluster(
        initialize_head=True,
        head_node_args={"env_vars": {"SYNAPSE_PLUGIN_CACHE": str(caches["head"])}, **common},
    )
    nodes = {"head": cluster.head_node}
    for name in NODES[1:]:
        nodes[name] = cluster.add_node(
            env_vars={"SYNAPSE_PLUGIN_CACHE": str(caches[name])}, **common
        )
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False)
    try:
        yield DataCluster(
            cluster=cluster,
            address=cluster.address,
            node_ids={name: node.node_id for name, node in nodes.items()},
            cache_dirs=caches,
        )
    finally:
        ray.shutdown()
        cluster.shutdown()


def alive(pid: int) -> bool:
    """Whether process ``pid`` (on this machine, as every node of the test cluster) runs."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie has ended; only its parent has not reaped it yet.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


@pytest.fixture
def idle(data_cluster: DataCluster) -> DataCluster:
    """The cluster once every CPU is free again (the last run's pool actors are gone)."""
    wait_for(lambda: free_cpus() == CPUS, 30, "the cluster's CPUs to be released")
    return data_cluster


def free_cpus() -> float:
    """The cluster's CPUs no task or actor holds."""
    import ray

    return float(ray.available_resources().get("CPU", 0.0))


def wait_for(condition: Callable[[], bool], seconds: float, what: str) -> None:
    """Poll ``condition`` until true; fail naming ``what`` after ``seconds``."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)
