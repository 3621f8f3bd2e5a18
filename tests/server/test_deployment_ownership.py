"""Who may register a serve application, and which tenant owns a name (no Ray needed here).

Ray Serve application names are global to the cluster, so a name has one owner: the tenant
of the record that holds it. A client token never registers; a worker registers for its own
job only; a name another tenant holds is answered like an application Ray Serve does not
have; and none of these refusals starts Ray. tests/serve/test_deployment_tenants.py runs
the same rules against real Ray Serve deployments.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import synapse_client as sc
from synapse_client import Client
from synapse_server.core.deployments import (
    DeploymentRecord,
    DeploymentStatus,
)

from tests.conftest import RunningServer

SERVE_PLUGINS = Path(__file__).resolve().parents[1] / "serve" / "plugins"
PLUGINS = [SERVE_PLUGINS / "registrar", SERVE_PLUGINS / "serve_probe"]
TOKENS = {"tok-a": "team-a", "tok-b": "team-b"}
A_APP = "team-a-serve-probe-deploy_probe"


def _server(server_factory: Callable[..., RunningServer]) -> RunningServer:
    return server_factory(plugin_dirs=PLUGINS, tokens=TOKENS, worker_memory_limit_mb=None)


def _record(tenant: str, name: str, status: DeploymentStatus) -> DeploymentRecord:
    return DeploymentRecord(
        id=0, tenant=tenant, name=name, plugin="serve-probe", action="deploy_probe", status=status
    )


def _ray_started(server: RunningServer) -> bool:
    return bool(server.server._ray is not None and server.server._ray.started)


def test_a_client_token_cannot_register_and_starts_no_ray(
    server_factory: Callable[..., RunningServer],
) -> None:
    server = _server(server_factory)
    with Client(server.address, token="tok-b", timeout=60) as client:
        # Another tenant's predictable name, a name nobody has, and no name at all: one answer.
        for name in (A_APP, "no-such-app", ""):
            with pytest.raises(sc.PermissionDeniedError) as refused:
                client.register_deployment(name, "serve-probe", "deploy_probe")
            assert "deployment job" in refused.value.message
            assert name not in refused.value.message or not name
    assert not _ray_started(server), "a refused registration started Ray"


def _register_from_a_job(client: Client, **params: Any) -> dict[str, Any]:
    result = client.run_action("registrar", "register", params, mode="local").result(timeout=120)
    assert isinstance(result, dict)
    return result


def test_a_worker_registers_for_its_own_job_only_and_starts_no_ray(
    server_factory: Callable[..., RunningServer],
) -> None:
    server = _server(server_factory)
    with Client(server.address, token="tok-b", timeout=60) as client:
        other_plugin = _register_from_a_job(
            client, name="anything", plugin="serve-probe", action="deploy_probe"
        )
        assert other_plugin["code"] == "PERMISSION_DENIED", other_plugin
        assert "its own job" in other_plugin["message"]
        other_action = _register_from_a_job(client, name="anything", action="deploy_probe")
        assert other_action["code"] == "PERMISSION_DENIED", other_action
        too_long = _register_from_a_job(client, name="x" * 100_000)
        assert too_long["code"] == "INVALID_ARGUMENT", too_long["code"]
        assert len(too_long["message"]) < 200, "the refusal echoes the name"
        # Its own plugin and action, but no application: refused without starting Ray.
        missing = _register_from_a_job(client, name="no-such-app")
        assert missing["code"] == "FAILED_PRECONDITION", missing
        assert "no application named 'no-such-app'" in missing["message"]
    assert not _ray_started(server), "a registration of an application Ray cannot have started Ray"


def test_a_name_another_tenant_holds_is_refused_like_a_missing_one(
    server_factory: Callable[..., RunningServer],
) -> None:
    server = _server(server_factory)
    store = server.server._deployment_store
    assert store is not None
    server.call(store.upsert(_record("team-a", A_APP, DeploymentStatus.RUNNING)))
    with Client(server.address, token="tok-b", timeout=60) as client:
        held = _register_from_a_job(client, name=A_APP)
        missing = _register_from_a_job(client, name="no-such-app")
        # Same code, same words: the answer does not tell that team-a uses the name.
        assert held["code"] == missing["code"] == "FAILED_PRECONDITION"
        assert held["message"].replace(A_APP, "X") == missing["message"].replace("no-such-app", "X")
        # team-b sees nothing of team-a's deployment either.
        assert client.list_deployments() == []
        with pytest.raises(sc.NotFoundError):
            client.get_deployment(1)
        with pytest.raises(sc.NotFoundError):
            client.delete_deployment(1)
    assert not _ray_started(server)


def test_a_deployment_job_whose_name_another_tenant_holds_fails_before_ray_starts(
    server_factory: Callable[..., RunningServer],
) -> None:
    server = _server(server_factory)
    store = server.server._deployment_store
    assert store is not None
    # The name team-a's deploy_probe job deploys under, held by another tenant's record (a
    # custom-named deployment, or tenant and plugin names that meet at a '-').
    server.call(store.upsert(_record("team-b", A_APP, DeploymentStatus.RUNNING)))
    with Client(server.address, token="tok-a", timeout=60) as client:
        job = client.run_action("serve-probe", "deploy_probe", {"model": 1}, mode="local")
        with pytest.raises(sc.JobFailedError) as failed:
            job.result(timeout=120)
    assert failed.value.error_type == "PreconditionFailed", failed.value
    assert "not available to this tenant" in failed.value.message
    assert not _ray_started(server), "the deployment job started Ray before its name was checked"
