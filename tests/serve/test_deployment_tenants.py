"""Two tenants, one Ray Serve: each application has one owner, through a real server.

Ray Serve application names are global to the cluster and predictable
(``<tenant>-<plugin>-<action>``). Tenant B must not be able to take tenant A's application
over: not with its client token, not from one of its jobs, not by reading or deleting it;
and when another deployment has replaced A's application under A's name, A's record must
not show, delete or route to it.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import synapse_client as sc
from synapse_client import Client
from synapse_sdk.plugins import load_plugin, run_action
from synapse_sdk.plugins._models import LocalModelBackend
from synapse_sdk.runtime import RunContext
from synapse_server.core.inference import ServeKeyring

RunningServer = Any  # tests/conftest.py's RunningServer (conftest modules are not importable)

pytestmark = [pytest.mark.ray]

PLUGINS = Path(__file__).resolve().parent / "plugins"
SECRET = "deployment-tenants-secret-0123456789abcdef"
TOKENS = {"tok-a": "team-a", "tok-b": "team-b"}
A_APP = "team-a-serve-probe-deploy_probe"
B_APP = "team-b-serve-probe-deploy_probe"


@pytest.fixture
def server(server_factory: Callable[..., RunningServer]) -> Iterator[RunningServer]:
    running = server_factory(
        plugin_dirs=[PLUGINS / "serve_probe", PLUGINS / "registrar"],
        tokens=TOKENS,
        server_secret=SECRET,
        worker_memory_limit_mb=None,
    )
    yield running
    # The server leaves a Ray it did not start (the serve tests' session Ray) running.
    from ray import serve

    for name in (A_APP, B_APP):
        with contextlib.suppress(Exception):
            serve.delete(name)


def _deploy_probe(client: Client) -> int:
    result = client.run_action("serve-probe", "deploy_probe", {"model": 1}, mode="local")
    deployment_id = result.result(timeout=300)["serve_application"]
    assert isinstance(deployment_id, int) and deployment_id > 0
    return deployment_id


def _register_from_a_job(client: Client, name: str) -> dict[str, Any]:
    job = client.run_action("registrar", "register", {"name": name}, mode="local")
    result = job.result(timeout=120)
    assert isinstance(result, dict)
    return result


def _running_replicas(client: Client, deployment_id: int) -> list[dict[str, Any]]:
    """The deployment's replicas once every one is RUNNING (a fresh one may be STARTING)."""
    deadline = time.monotonic() + 120
    while True:
        deployment = client.get_deployment(deployment_id)
        states = {r["state"] for r in deployment.replicas}
        if deployment.replicas and states == {"RUNNING"}:
            return deployment.replicas
        # Never UNSPECIFIED: each replica's state is one the contract names.
        assert states <= {"STARTING", "RUNNING", "UPDATING", "RECOVERING", "STOPPING"}, states
        assert time.monotonic() < deadline, deployment
        time.sleep(0.5)


def _redeploy_as(tenant: str, app_name: str, tmp_path: Path) -> None:
    """Another tenant's deployment replaces ``app_name`` (a plugin that picks its own names).

    This process is a Ray driver: the server under test runs in it and started Ray.
    """
    plugin = load_plugin(PLUGINS / "serve_probe")
    with pytest.MonkeyPatch.context() as patch:
        key = ServeKeyring(SECRET.encode()).tenant_key(tenant)
        patch.setenv("SYNAPSE_SERVE_SIGNING_KEY", key.hex())
        patch.setenv("SYNAPSE_TENANT", tenant)
        patch.setenv("SYNAPSE_PLUGIN_RELEASE_CODE", app_name)
        ctx = RunContext(
            plugin_code=plugin.code,
            action_name="deploy_probe",
            model_backend=LocalModelBackend(root=tmp_path),
        )
        run_action(plugin.get_action_class("deploy_probe"), {"model": 1}, ctx)


def _wait_until_serving_for(tenant: str, app_name: str) -> None:
    """Until the application's replicas say they serve ``tenant`` (asked straight through Ray)."""
    from ray import serve

    handle = serve.get_app_handle(app_name).options(method_name="_synapse_replica_info")
    deadline = time.monotonic() + 120
    while handle.remote().result(timeout_s=60)["tenant"] != tenant:
        assert time.monotonic() < deadline, f"{app_name} never served {tenant}"
        time.sleep(0.2)


@pytest.mark.timeout(900)
def test_another_tenant_cannot_take_an_application_over(
    server: RunningServer, tmp_path: Path
) -> None:
    from ray import serve

    with (
        Client(server.address, token="tok-a", timeout=120) as a,
        Client(server.address, token="tok-b", timeout=120) as b,
    ):
        a_id = _deploy_probe(a)
        a_deployment = a.get_deployment(a_id)
        assert (a_deployment.name, a_deployment.status) == (A_APP, "RUNNING")
        a_replicas = _running_replicas(a, a_id)

        # B's client token: registering is for deployment jobs, whatever the name.
        for name in (A_APP, "no-such-app"):
            with pytest.raises(sc.PermissionDeniedError):
                b.register_deployment(name, "serve-probe", "deploy_probe")
        # B's job: A's name is answered exactly like a name Ray Serve does not have.
        held = _register_from_a_job(b, A_APP)
        missing = _register_from_a_job(b, "no-such-app")
        assert held["code"] == missing["code"] == "FAILED_PRECONDITION", (held, missing)
        assert held["message"].replace(A_APP, "X") == missing["message"].replace("no-such-app", "X")

        # B deploys the same plugin under its own name; each sees its own deployment only.
        b_id = _deploy_probe(b)
        assert b.get_deployment(b_id).name == B_APP
        assert [d.id for d in b.list_deployments()] == [b_id]
        assert [d.id for d in a.list_deployments()] == [a_id]
        for call in (b.get_deployment, b.delete_deployment):
            with pytest.raises(sc.NotFoundError):
                call(a_id)
        # A's application is A's, unchanged, and still answers A.
        assert a.get_deployment(a_id).replicas[0]["replica_id"] == a_replicas[0]["replica_id"]
        assert a.infer(A_APP, path="/started", timeout=60).application == A_APP
        assert A_APP in serve.status().applications

        # A deployment of team-b replaces A's application under A's name.
        _redeploy_as("team-b", A_APP, tmp_path)
        _wait_until_serving_for("team-b", A_APP)
        # Until A's record learns of it, A's Infer still goes to that name: the replicas,
        # which now serve team-b, refuse A's request before any endpoint code runs.
        with pytest.raises(sc.PermissionDeniedError):
            a.infer(A_APP, path="/started", timeout=60)
        # Deleting A's record leaves the application that is no longer A's alone.
        deleted = a.delete_deployment(a_id)
        assert deleted.status == "DELETED", deleted
        assert "replaced by another deployment" in deleted.status_message
        assert A_APP in serve.status().applications
        # Nor does A's record show it any more.
        replaced = a.get_deployment(a_id)
        assert (replaced.status, replaced.replicas) == ("DELETED", [])
        with pytest.raises(sc.FailedPreconditionError):
            a.infer(A_APP, path="/started", timeout=60)
        # No record holds the name now, but its replicas serve team-b: team-a cannot have it.
        assert _register_from_a_job(a, A_APP)["code"] == "FAILED_PRECONDITION"
        # The name gets its new owner: team-b's job registers it, team-a's cannot get it back.
        taken = _register_from_a_job(b, A_APP)
        assert taken["code"] == "OK" and taken["created"], taken
        assert _register_from_a_job(a, A_APP)["code"] == "FAILED_PRECONDITION"
        # B's own deployment was never touched by any of this.
        assert b.get_deployment(b_id).status == "RUNNING"
