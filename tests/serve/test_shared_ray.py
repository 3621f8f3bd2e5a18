"""Two server processes on one PostgreSQL database and one Ray cluster (``--ray-address``).

The deployment registry is shared: an application deployed through one server is listed by
the other, answers ``Infer`` calls reaching the other, and a delete through either server
removes it for both.

The cluster is a Ray head on loopback started by the test (the head the server embeds,
started here on its own, so neither server owns it); the servers are real
``python -m synapse_server`` processes, each with its own data directory.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from synapse_client import Client, FailedPreconditionError, NotFoundError, SynapseClientError
from synapse_server.ray._head import LOOPBACK_ENVIRONMENT, LocalRayHead

from tests._postgres import PostgresCluster

pytestmark = [pytest.mark.ray, pytest.mark.e2e, pytest.mark.timeout(600)]

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "plugins"
SECRET = "shared-ray-test-secret-0123456789"


@pytest.fixture(scope="session")
def shared_ray_address() -> Iterator[str]:
    """A Ray head on loopback that no server owns; every process of it is killed at the end."""
    head = LocalRayHead(num_cpus=2)
    try:
        yield head.start(timeout_s=180)
    finally:
        head.stop()


class ServerProcess:
    """``python -m synapse_server`` on port 0 in a session of its own, against the shared
    database, artifacts directory and Ray cluster; its log in a file."""

    def __init__(self, data_dir: Path, url: str, artifacts: Path, ray_address: str) -> None:
        data_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = data_dir.parent / f"{data_dir.name}.log"
        self._log = self.log_path.open("w")
        # The head listens on loopback only: without this, Ray (in the server and in the
        # workers it starts) would swap 127.0.0.1 for the node's IP, where nothing listens.
        env = {**os.environ, **LOOPBACK_ENVIRONMENT, "SYNAPSE_SERVER_SECRET": SECRET}
        self.process = subprocess.Popen(
            [
                sys.executable, "-m", "synapse_server", "--listen", "127.0.0.1:0",
                "--data-dir", str(data_dir), "--plugin-dir", str(EXAMPLES), "--database", url,
                "--artifacts-dir", str(artifacts), "--ray-address", ray_address,
                "--shutdown-grace", "2", "--log-level", "WARNING",
            ],
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
            env=env,
            start_new_session=True,
        )  # fmt: skip
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        while line and not line.startswith("synapse server listening on "):
            line = self.process.stdout.readline()
        if not line:
            self.kill()
            raise AssertionError(f"server did not start: {self.log_path.read_text()[-3000:]}")
        self.address = line.rsplit(" ", 1)[1].strip()

    def kill(self) -> None:
        """SIGKILL to the server's process group (its local workers included)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(30)
        self._log.close()


@pytest.fixture
def spawn(
    tmp_path: Path, postgres_cluster: PostgresCluster, shared_ray_address: str
) -> Iterator[Callable[[str], ServerProcess]]:
    url = postgres_cluster.database("shared_ray")
    started: list[ServerProcess] = []

    def start(name: str) -> ServerProcess:
        server = ServerProcess(tmp_path / name, url, tmp_path / "artifacts", shared_ray_address)
        started.append(server)
        return server

    yield start
    for server in started:
        server.kill()


def test_a_deployment_made_through_one_server_is_served_and_deleted_through_the_other(
    spawn: Callable[[str], ServerProcess], tmp_path: Path
) -> None:
    pytest.importorskip("torch")
    from examples.models import MLPConfig, build_model_dir

    a, b = spawn("a"), spawn("b")
    model_dir = build_model_dir(tmp_path / "model", MLPConfig(hidden=8, seed=3))
    archive = shutil.make_archive(str(tmp_path / "model"), "zip", model_dir)
    request = {"inputs": [{"data": [1.0, 2.0, 3.0]}, {"data": [-1.0, 0.5, 4.0]}]}
    with Client(a.address, timeout=120) as on_a, Client(b.address, timeout=120) as on_b:
        model_id = on_a.register_model(archive, "mlp", framework="torch").id
        job = on_a.run_action(
            "torch-serve",
            "deployment",
            {"model": model_id, "num_gpus": 0, "num_cpus": 0},
            mode="local",
        )
        job.result(timeout=420)

        # B lists and reads the deployment A's job registered, with the application's state
        # as the shared cluster reports it.
        listed = on_b.list_deployments(plugin="torch-serve")
        assert len(listed) == 1, listed
        deployment = listed[0]
        assert deployment.job_id == job.id and deployment.model_ids == [model_id]
        seen_b = on_b.get_deployment(deployment.id)
        assert seen_b.status == "RUNNING", seen_b
        assert seen_b.replicas and all(r["state"] == "RUNNING" for r in seen_b.replicas)
        assert on_a.get_deployment(deployment.id).name == seen_b.name

        # B serves Infer calls on the application A deployed, as A does.
        through_b = on_b.infer(
            plugin="torch-serve", action="inference", model=model_id, json=request, timeout=180
        )
        through_a = on_a.infer(
            plugin="torch-serve", action="inference", model=model_id, json=request, timeout=180
        )
        assert len(through_b.json) == 2
        assert all(len(item["prediction"]) == 2 for item in through_b.json)
        assert through_b.json == through_a.json

        # Deleted through B: gone for A as well, whose Infer target was resolved before.
        assert on_b.delete_deployment(deployment.id).status == "DELETED"
        # A reuses a resolved target for a bounded time only (another server's write does
        # not reach its cache), then finds no live deployment of the endpoint; by name, the
        # application is reported deleted. The same on B.
        for client in (on_a, on_b):
            before = _until_refused(
                functools.partial(
                    client.infer,
                    plugin="torch-serve",
                    action="inference",
                    model=model_id,
                    json=request,
                    timeout=60,
                ),
                NotFoundError,
            )
            # Meanwhile (A's cached target), the application is already gone from Ray:
            # never an answer, and no error that blames the server or hides the cause.
            assert all(
                answer.startswith(("NotFoundError", "UnavailableError", "FailedPreconditionError"))
                for answer in before
            ), before
            with pytest.raises(FailedPreconditionError, match="is deleted"):
                client.infer(deployment.name, model=model_id, json=request, timeout=60)

        seen_a = on_a.get_deployment(deployment.id)
        assert seen_a.status == "DELETED" and seen_a.replicas == []
        assert [d.status for d in on_a.list_deployments(plugin="torch-serve")] == ["DELETED"]


def _until_refused(call: Callable[[], object], error: type[Exception]) -> list[str]:
    """Call until ``error`` is raised (within a minute); what the calls before it gave."""
    before: list[str] = []
    deadline = time.monotonic() + 60
    while True:
        try:
            call()
            before.append("answered")
        except error:
            return before
        except SynapseClientError as exc:
            before.append(f"{type(exc).__name__}: {exc}")
        assert time.monotonic() < deadline, before
        time.sleep(0.2)
