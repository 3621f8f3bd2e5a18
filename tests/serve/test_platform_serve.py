"""Deployments and Infer through a real ``SynapseServer``: the torch-serve example, end to end.

The server owns Ray (started on the first deployment job); the deployment action runs as a
job in a worker process, deploys with the tenant's serve key, and registers the application;
the replica downloads its model from the server with the signed model id as its credential.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from synapse.plugin.v1 import model_service_pb2, model_service_pb2_grpc
from synapse_client import ActionKind, Client
from synapse_client._types import ProgressEvent
from synapse_sdk.serving import ServeModelIdSigner, derive_app_key
from synapse_server.core.inference import ServeKeyring

RunningServer = Any  # tests/conftest.py's RunningServer (conftest modules are not importable)

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "plugins"
SECRET = "platform-serve-tests-secret-0123456789"


def _register_model(
    client: Client, tmp_path: Path, seed: int, model_format: str = "safetensors"
) -> tuple[int, Path]:
    pytest.importorskip("torch")
    from examples.models import MLPConfig, build_model_dir

    model_dir = tmp_path / f"model-{seed}"
    build_model_dir(model_dir, MLPConfig(hidden=8, seed=seed), model_format=model_format)
    archive = shutil.make_archive(str(tmp_path / f"model-{seed}"), "zip", model_dir)
    info = client.register_model(archive, f"mlp-{seed}", framework="torch")
    return info.id, model_dir


def _start(server_factory: Callable[..., RunningServer], **overrides: Any) -> RunningServer:
    values: dict[str, Any] = {
        "plugin_dirs": [EXAMPLES],
        "server_secret": SECRET,
        "worker_memory_limit_mb": None,
    }
    return server_factory(**{**values, **overrides})


@pytest.mark.ray
@pytest.mark.timeout(420)
def test_deploy_infer_undeploy_through_the_server(
    server_factory: Callable[..., RunningServer], tmp_path: Path
) -> None:
    from examples.models import reference_outputs

    server = _start(server_factory)
    with Client(server.address, timeout=60) as client:
        model_id, model_dir = _register_model(client, tmp_path, seed=3)
        kinds = {a.name: a.kind for p in client.list_actions("torch-serve") for a in p.actions}
        assert kinds["deployment"] == ActionKind.JOB

        # Local mode: the worker process gets the server's Ray address and serve key from the
        # executor's job environment hook.
        job = client.run_action(
            "torch-serve",
            "deployment",
            {"model": model_id, "num_gpus": 0, "num_cpus": 0},
            mode="local",
        )
        categories = [
            e.payload.category for e in job.events() if isinstance(e.payload, ProgressEvent)
        ]
        result = job.result(timeout=300)
        assert categories == ["initialize", "deploy", "register"], categories
        deployment_id = result["serve_application"]
        assert isinstance(deployment_id, int) and deployment_id > 0

        inputs = [[1.0, 2.0, 3.0], [0.5, 0.0, -1.0]]
        answer = client.infer(
            plugin="torch-serve",
            action="inference",
            model=model_id,
            json={"inputs": [{"data": row} for row in inputs]},
            timeout=120,
        )
        expected = reference_outputs(model_dir, inputs)
        got = [row["prediction"] for row in answer.json]
        assert len(got) == len(expected)
        for row, want in zip(got, expected, strict=True):
            assert row == pytest.approx(want, rel=1e-5)
        assert answer.model_id == str(model_id)

        listed = client.list_deployments(plugin="torch-serve")
        assert [d.id for d in listed] == [deployment_id]
        # The replicas' loaded models are asked for with a short deadline and marked unknown
        # when the answer is late (a loaded machine): ask again until the replica's answer is in.
        deadline = time.monotonic() + 60
        got_deployment = client.get_deployment(deployment_id)
        while not any(r["loaded_models_known"] for r in got_deployment.replicas):
            assert time.monotonic() < deadline, got_deployment
            time.sleep(0.5)
            got_deployment = client.get_deployment(deployment_id)
        assert got_deployment.status == "RUNNING"
        assert got_deployment.model_ids == [model_id]
        assert got_deployment.job_id == job.id
        assert answer.application == got_deployment.name
        loaded = [m for r in got_deployment.replicas for m in r["loaded_model_ids"]]
        assert loaded == [model_id]

        # The inference action run as a job calls Infer with its worker credential.
        via_job = client.run_action(
            "torch-serve",
            "inference",
            {"model": model_id, "method": "post", "json": {"inputs": [{"data": inputs[0]}]}},
            mode="local",
        ).result(timeout=120)
        # A list result is wrapped as {"result": ...} by the action runner.
        assert via_job["result"][0]["prediction"] == pytest.approx(expected[0], rel=1e-5)

        deleted = client.delete_deployment(deployment_id)
        assert deleted.status in ("DELETED", "DELETING")
        deadline = time.monotonic() + 60
        while client.get_deployment(deployment_id).status != "DELETED":
            assert time.monotonic() < deadline, "the application was not undeployed"
            time.sleep(0.5)
        with pytest.raises(Exception) as caught:
            client.infer(plugin="torch-serve", action="inference", model=model_id, json={})
        assert "not found" in str(caught.value).lower()


def _model_call(
    server: RunningServer, token: str, model_id: int, method: str = "GetModel"
) -> grpc.RpcError | None:
    with server.channel() as channel:
        stub = model_service_pb2_grpc.ModelServiceStub(channel)
        metadata = (("authorization", f"Bearer {token}"),)
        try:
            if method == "GetModel":
                stub.GetModel(
                    model_service_pb2.GetModelRequest(model_id=model_id),
                    metadata=metadata,
                    timeout=10,
                )
            elif method == "DownloadModel":
                for _ in stub.DownloadModel(
                    model_service_pb2.DownloadModelRequest(model_id=model_id),
                    metadata=metadata,
                    timeout=10,
                ):
                    pass
            else:
                stub.ListModels(
                    model_service_pb2.ListModelsRequest(), metadata=metadata, timeout=10
                )
        except grpc.RpcError as exc:
            return exc
    return None


@pytest.mark.timeout(120)
def test_signed_serve_model_id_fetches_only_its_model(
    server_factory: Callable[..., RunningServer], tmp_path: Path
) -> None:
    server = _start(server_factory, tokens={"client-token": "acme"})
    with Client(server.address, token="client-token", timeout=60) as client:
        first, _ = _register_model(client, tmp_path, seed=1)
        second, _ = _register_model(client, tmp_path, seed=2)
    keyring = ServeKeyring(SECRET.encode())
    token = keyring.model_id_for("acme", "acme-torch-serve-deployment", str(first))

    assert _model_call(server, token, first) is None
    assert _model_call(server, token, first, "DownloadModel") is None
    for model, method in ((second, "GetModel"), (second, "DownloadModel"), (first, "List")):
        error = _model_call(server, token, model, method)
        assert error is not None and error.code() == grpc.StatusCode.PERMISSION_DENIED, method

    # Another tenant's id names another tenant's models: the first model is not visible.
    other = keyring.model_id_for("other", "other-app", str(first))
    error = _model_call(server, other, first)
    assert error is not None and error.code() == grpc.StatusCode.NOT_FOUND

    forged = ServeKeyring(b"not-the-server-secret-0123456789").model_id_for(
        "acme", "acme-torch-serve-deployment", str(first)
    )
    error = _model_call(server, forged, first)
    assert error is not None and error.code() == grpc.StatusCode.UNAUTHENTICATED
    signer = ServeModelIdSigner(
        derive_app_key(keyring.tenant_key("acme"), "app-x"), "app-x", "acme"
    )
    expired = signer.mint(str(first), ttl_s=1, now=time.time() - 60)
    error = _model_call(server, expired, first)
    assert error is not None and error.code() == grpc.StatusCode.UNAUTHENTICATED


@pytest.mark.ray
@pytest.mark.timeout(300)
def test_cli_runs_a_serve_action_through_infer(
    server_factory: Callable[..., RunningServer],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import json

    from synapse_server.cli import main

    from examples.models import reference_outputs

    plugins = Path(__file__).resolve().parent / "plugins" / "torch_endpoint"
    server = _start(server_factory, plugin_dirs=[plugins])
    with Client(server.address, timeout=60) as client:
        model_id, model_dir = _register_model(client, tmp_path, seed=5, model_format="pt2")
        kinds = {a.name: a.kind for p in client.list_actions("torch-endpoint") for a in p.actions}
        assert kinds["inference"] == ActionKind.SERVE
        client.run_action("torch-endpoint", "deployment", {"model": model_id}, mode="local").result(
            timeout=240
        )

    params = {"model": model_id, "method": "post", "json": {"inputs": [{"data": [1, 2, 3]}]}}
    base = ["plugin", "run", "inference", "--plugin", "torch-endpoint", "--server", server.address]
    capsys.readouterr()
    code = main([*base, "--mode", "job", "--no-progress", "--params", json.dumps(params)])
    out, err = capsys.readouterr()
    assert code == 0, err
    got = json.loads(out)
    expected = reference_outputs(model_dir, [[1.0, 2.0, 3.0]])
    assert got[0]["prediction"] == pytest.approx(expected[0], rel=1e-5)

    code = main([*base, "--no-progress", "--params", json.dumps({"model": model_id})])
    _, err = capsys.readouterr()
    assert code == 2 and "params need 'json'" in err

    # synapse deployments list | get | delete, on the same real deployment.
    remote = ["--server", server.address]
    assert main(["deployments", "list", *remote]) == 0
    header, *lines = capsys.readouterr().out.splitlines()
    assert header.split() == ["ID", "STATUS", "NAME", "PLUGIN", "ENDPOINT", "MODELS", "REPLICAS"]
    (line,) = lines
    deployment_id, status, _, plugin, endpoint, models, replicas = line.split()
    assert (status, plugin, endpoint, models, replicas) == (
        "RUNNING",
        "torch-endpoint",
        "inference",
        str(model_id),
        "1",
    )
    assert main(["deployments", "get", deployment_id, *remote]) == 0
    got_deployment = json.loads(capsys.readouterr().out)
    assert got_deployment["status"] == "RUNNING" and len(got_deployment["replicas"]) == 1
    assert main(["deployments", "delete", deployment_id, *remote]) == 0
    assert json.loads(capsys.readouterr().out)["status"] == "DELETED"
    assert main(["deployments", "list", "--json", "--plugin", "torch-endpoint", *remote]) == 0
    (listed,) = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert listed["status"] == "DELETED"
    assert main(["deployments", "get", "999999", *remote]) != 0
    assert "not found" in capsys.readouterr().err.lower()


async def test_job_environment_is_only_for_deployment_actions(tmp_path: Path) -> None:
    from synapse_server.core._catalog import PluginCatalog
    from synapse_server.core._models import Job
    from synapse_server.core._plugin_code import PluginCodeStore
    from synapse_server.ray import RayRuntime
    from synapse_server.ray._environment import ServeJobEnvironment

    catalog = PluginCatalog(
        [EXAMPLES], supported_modes=["local"], code_store=PluginCodeStore(tmp_path / "plugins")
    )
    catalog.reload()
    runtime = RayRuntime()
    hook = ServeJobEnvironment(
        catalog, runtime, ServeKeyring(SECRET.encode()), replica_address=lambda: "10.0.0.5:50051"
    )

    def job(plugin: str, action: str) -> Job:
        return Job(id="j1", tenant="acme", plugin=plugin, action=action)

    assert hook.needs_ray(job("torch-serve", "deployment"))
    for plugin, action in (("torch-serve", "inference"), ("batch-inference", "batch_inference")):
        assert not hook.needs_ray(job(plugin, action))
        assert await hook.environment(job(plugin, action)) == {}
    assert not runtime.started  # nothing above needed Ray
