"""Infer messages the server accepts reach a Serve replica and come back, end to end.

Ray Serve's own gRPC channel between a handle and a replica carries 4 MiB unless told
otherwise. The server raises it for its Infer router (before it first imports Ray) and
``deploy()`` raises it for the replicas (their runtime env), to the server's message limit:
an 8 MiB tensor, well within the server's 64 MiB default, must make the whole trip. Run
against ``python -m synapse_server`` in its own process, as operators run it, so that no Ray
imported earlier by the test process decides the outcome.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(900)

PLUGINS = Path(__file__).resolve().parent / "plugins"


class ServerProcess:
    """``python -m synapse_server`` on port 0 with the serve probe plugin only."""

    def __init__(self, root: Path) -> None:
        plugins = root / "plugins"
        shutil.copytree(PLUGINS / "serve_probe", plugins / "serve_probe")
        env = {
            **os.environ,
            "RAY_USAGE_STATS_ENABLED": "0",
            "RAY_AUTH_MODE": "disabled",
        }
        # The server must set Serve's limit itself.
        env.pop("RAY_SERVE_REPLICA_GRPC_MAX_MESSAGE_LENGTH", None)
        self.log = root / "server.log"
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [
                    sys.executable, "-m", "synapse_server", "--listen", "127.0.0.1:0",
                    "--data-dir", str(root / "data"), "--plugin-dir", str(plugins),
                    "--shutdown-grace", "3", "--log-level", "WARNING",
                ],
                stdout=subprocess.PIPE,
                stderr=log,
                env=env,
                text=True,
            )  # fmt: skip
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line.startswith("synapse server listening on "):
            self.process.kill()
            raise AssertionError(f"server did not start: {self.log.read_text()[-2000:]}")
        self.address = line.rsplit(" ", 1)[1].strip()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    running = ServerProcess(tmp_path)
    try:
        yield running
    finally:
        running.stop()


@pytest.mark.ray
@pytest.mark.e2e
def test_an_8_mib_tensor_reaches_a_replica_and_comes_back(
    server: ServerProcess, tmp_path: Path
) -> None:
    np = pytest.importorskip("numpy")
    from synapse_client import Client

    archive = tmp_path / "model.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("weights.txt", "1")
    with Client(server.address, timeout=120) as client:
        model = client.register_model(archive, "probe-model")
        job = client.run_action("serve-probe", "deploy_probe", {"model": model.id}, mode="local")
        assert job.result(timeout=600)["serve_application"] > 0, server.log.read_text()[-3000:]

        x = np.arange(2 << 20, dtype=np.float32)  # 8 MiB
        answer = client.infer(
            plugin="serve-probe",
            action="probe",
            model=model.id,
            path="/double",
            tensors={"x": x},
            timeout=300,
        )
        assert np.array_equal(answer.tensors["output"], x)


def test_deploy_gives_replicas_the_platform_message_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    # Replicas on a cluster the server did not start get the limit from their runtime env.
    from synapse_sdk.serving import DEFAULT_REPLICA_MESSAGE_BYTES, REPLICA_MESSAGE_BYTES_ENV
    from synapse_sdk.serving._deploy import replica_runtime_env

    serve_var = "RAY_SERVE_REPLICA_GRPC_MAX_MESSAGE_LENGTH"
    monkeypatch.delenv(REPLICA_MESSAGE_BYTES_ENV, raising=False)
    assert replica_runtime_env({}) == {"env_vars": {serve_var: str(DEFAULT_REPLICA_MESSAGE_BYTES)}}
    monkeypatch.setenv(REPLICA_MESSAGE_BYTES_ENV, "123456789")
    assert replica_runtime_env({"pip": ["x"], "env_vars": {"A": "1"}}) == {
        "pip": ["x"],
        "env_vars": {"A": "1", serve_var: "123456789"},
    }
    # A plugin that sets the variable itself keeps its value.
    assert replica_runtime_env({"env_vars": {serve_var: "5"}})["env_vars"][serve_var] == "5"


async def test_deployment_jobs_learn_the_replica_message_limit(tmp_path: Path) -> None:
    from synapse_server.core._catalog import PluginCatalog
    from synapse_server.core._models import Job
    from synapse_server.core._plugin_code import PluginCodeStore
    from synapse_server.core.inference import ServeKeyring
    from synapse_server.ray._environment import ServeJobEnvironment

    class StartedRuntime:
        async def ensure_started(self) -> str:
            return "127.0.0.1:1"

        def worker_environment(self) -> dict[str, str]:
            return {"RAY_ADDRESS": "127.0.0.1:1"}

    catalog = PluginCatalog(
        [PLUGINS], supported_modes=["local"], code_store=PluginCodeStore(tmp_path / "plugins")
    )
    catalog.reload()
    hook = ServeJobEnvironment(
        catalog,
        StartedRuntime(),  # type: ignore[arg-type]
        ServeKeyring(b"secret-0123456789"),
        replica_message_bytes=99 << 20,
    )
    job = Job(id="j1", tenant="acme", plugin="serve-probe", action="deploy_probe")
    env = await hook.environment(job)
    assert env["SYNAPSE_SERVE_REPLICA_MESSAGE_BYTES"] == str(99 << 20)
