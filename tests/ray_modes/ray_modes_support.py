"""Support for the Ray-mode tests and benchmark: a multi-node Ray cluster, a server process.

The cluster (``ray.cluster_utils.Cluster``: a head and two worker nodes, each a separate
raylet with its own custom resource, its own plugin cache and its own model cache directory,
so a model a worker loads really comes from the platform) is started without connecting this
process as a driver; the server runs in its own process (``_server.py``) and is the cluster's
only driver. Workers reach the server through a TCP proxy owned by the test,
so a test can cut every worker connection and let it come back.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import json_format, struct_pb2
from synapse.plugin.v1 import (
    action_service_pb2,
    action_service_pb2_grpc,
    job_event_pb2,
    job_pb2,
)

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

HERE = Path(__file__).resolve().parent
PLUGINS = HERE / "plugins"
ROOT = HERE.parents[1]
PYTHON = sys.executable

MODES = {
    "local": job_pb2.RUN_MODE_LOCAL,
    "task": job_pb2.RUN_MODE_TASK,
    "job": job_pb2.RUN_MODE_JOB,
}


class TcpProxy:
    """Forwards 127.0.0.1:<port> to a target port; ``cut()`` drops every connection for a while.

    Stands between remote workers and the server so a test can break the worker's stream the
    way a network partition would, without touching the server.
    """

    def __init__(self) -> None:
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(128)
        self.port: int = self._listener.getsockname()[1]
        self.target: int | None = None
        self._refuse_until = 0.0
        self._lock = threading.Lock()
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self.cuts = 0
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if time.monotonic() < self._refuse_until or self.target is None:
                client.close()
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target), timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._pairs.append((client, upstream))
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()

    def _pump(self, a: socket.socket, b: socket.socket) -> None:
        sockets = [a, b]
        try:
            while True:
                readable, _, _ = select.select(sockets, [], [], 0.5)
                for sock in readable:
                    data = sock.recv(65536)
                    if not data:
                        return
                    (b if sock is a else a).sendall(data)
        except OSError:
            return
        finally:
            # A connection that ended is no longer one that cut() breaks.
            with self._lock, contextlib.suppress(ValueError):
                self._pairs.remove((a, b))
            for sock in sockets:
                with contextlib.suppress(OSError):
                    sock.close()

    def cut(self, refuse_seconds: float) -> int:
        """Close every open connection and refuse new ones for ``refuse_seconds``.

        Returns how many connections were open (ended ones are not counted).
        """
        self._refuse_until = time.monotonic() + refuse_seconds
        with self._lock:
            pairs, self._pairs = self._pairs, []
        for pair in pairs:
            for sock in pair:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                    sock.close()
                except OSError:
                    pass
        self.cuts += len(pairs)
        return len(pairs)

    def close(self) -> None:
        """Stop accepting."""
        self._closed = True
        self._listener.close()


@dataclass
class RayCluster:
    """The running cluster and which node id carries which custom resource."""

    cluster: Any
    address: str
    node_ids: dict[str, str]
    cache_dirs: dict[str, Path]
    model_cache_dirs: dict[str, Path]


@pytest.fixture(scope="session")
def ray_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RayCluster]:
    """Head + node_a + node_b, 1 CPU each; plugin and model caches per node (nothing shared)."""
    cluster_utils = pytest.importorskip("ray.cluster_utils")
    base = tmp_path_factory.mktemp("ray-nodes")
    caches = {name: base / f"cache-{name}" for name in ("head", "node_a", "node_b")}
    model_caches = {name: base / f"models-{name}" for name in ("head", "node_a", "node_b")}
    common = {"include_dashboard": False, "object_store_memory": 80 * 1024 * 1024}

    def env(name: str) -> dict[str, str]:
        return {
            "SYNAPSE_PLUGIN_CACHE": str(caches[name]),
            "SYNAPSE_MODEL_CACHE": str(model_caches[name]),
        }

    cluster = cluster_utils.Cluster(
        initialize_head=True,
        head_node_args={
            "num_cpus": 1,
            "resources": {"head": 1},
            "env_vars": env("head"),
            **common,
        },
    )
    nodes = {"head": cluster.head_node}
    for name in ("node_a", "node_b"):
        nodes[name] = cluster.add_node(
            num_cpus=1, resources={name: 1}, env_vars=env(name), **common
        )
    cluster.wait_for_nodes()
    try:
        yield RayCluster(
            cluster=cluster,
            address=cluster.address,
            node_ids={name: node.node_id for name, node in nodes.items()},
            cache_dirs=caches,
            model_cache_dirs=model_caches,
        )
    finally:
        cluster.shutdown()


@dataclass
class PlatformServer:
    """The server process, its gRPC stub and the proxy its workers dial."""

    process: subprocess.Popen[str]
    port: int
    proxy: TcpProxy
    channel: grpc.Channel
    actions: action_service_pb2_grpc.ActionServiceStub
    log_path: Path


def start_server(
    ray_address: str, data_dir: Path, *, extra: tuple[str, ...] = (), warm_ray: bool = True
) -> PlatformServer:
    """Start ``_server.py`` against ``ray_address`` with workers dialing through a proxy.

    ``warm_ray=False``: the server connects to Ray only when a job first needs it.
    """
    proxy = TcpProxy()
    log_path = data_dir / "server.log"
    data_dir.mkdir(parents=True, exist_ok=True)
    log = log_path.open("w")
    process = subprocess.Popen(
        [
            PYTHON,
            str(HERE / "_server.py"),
            "--plugin-dir",
            str(PLUGINS),
            "--data-dir",
            str(data_dir),
            "--ray-address",
            ray_address,
            "--worker-address",
            f"127.0.0.1:{proxy.port}",
            *(["--warm-ray"] if warm_ray else []),
            *extra,
        ],
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
        cwd=ROOT,
    )
    assert process.stdout is not None
    ready, _, _ = select.select([process.stdout], [], [], 120)
    line = process.stdout.readline() if ready else ""
    if not line:
        process.kill()
        raise RuntimeError(f"server did not start; log:\n{log_path.read_text()[-4000:]}")
    port = int(json.loads(line)["port"])
    proxy.target = port
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    grpc.channel_ready_future(channel).result(timeout=30)
    return PlatformServer(
        process=process,
        port=port,
        proxy=proxy,
        channel=channel,
        actions=action_service_pb2_grpc.ActionServiceStub(channel),
        log_path=log_path,
    )


def stop_server(server: PlatformServer) -> None:
    """SIGTERM, then SIGKILL after 30 s."""
    server.channel.close()
    server.process.terminate()
    try:
        server.process.wait(30)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait(10)
    server.proxy.close()


@pytest.fixture(scope="session")
def platform(
    ray_cluster: RayCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[PlatformServer]:
    """One server process for the whole Ray-modes suite."""
    server = start_server(ray_cluster.address, tmp_path_factory.mktemp("server"))
    try:
        yield server
    finally:
        stop_server(server)


# Client helpers -----------------------------------------------------------------------------


def run_action(
    server: PlatformServer,
    action: str,
    params: dict[str, Any] | None = None,
    mode: str = "",
    plugin: str = "ray-probe",
) -> job_pb2.Job:
    """RunAction (on the probe plugin unless ``plugin`` names another); the created job."""
    struct = struct_pb2.Struct()
    struct.update(params or {})
    response = server.actions.RunAction(
        action_service_pb2.RunActionRequest(
            plugin=plugin,
            action=action,
            params=struct,
            mode=MODES[mode] if mode else job_pb2.RUN_MODE_UNSPECIFIED,
        ),
        timeout=60,
    )
    return response.job


def events(
    server: PlatformServer, job_id: str, timeout: float = 90
) -> list[job_event_pb2.JobEvent]:
    """Every event of the job until its terminal one."""
    stream = server.actions.StreamProgress(
        action_service_pb2.StreamProgressRequest(job_id=job_id), timeout=timeout
    )
    return [r.event for r in stream if r.WhichOneof("kind") == "event"]


def get_job(server: PlatformServer, job_id: str) -> job_pb2.Job:
    """GetJob."""
    return server.actions.GetJob(action_service_pb2.GetJobRequest(job_id=job_id), timeout=10).job


def result_of(terminal: job_event_pb2.JobEvent) -> dict[str, Any]:
    """The inline result of a terminal event."""
    assert terminal.terminal.state == job_pb2.JOB_STATE_SUCCEEDED, terminal
    return dict(json.loads(terminal.terminal.result_json))


def wait_for(predicate: Any, timeout: float, what: str) -> Any:
    """Poll ``predicate`` until truthy; fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def struct_dict(struct: struct_pb2.Struct) -> dict[str, Any]:
    """A Struct as a dict."""
    return dict(json_format.MessageToDict(struct))
