"""A step-mode deployment action deploys for real and its steps see the DeploymentContext."""

from __future__ import annotations

from pathlib import Path

import pytest
from synapse_sdk.plugins import load_plugin, run_action
from synapse_sdk.runtime import RunContext
from synapse_server.core.inference import ServeKeyring

pytestmark = [pytest.mark.ray, pytest.mark.timeout(180)]

PLUGIN = Path(__file__).resolve().parent / "plugins" / "step_deploy"


def test_step_mode_deployment_fills_its_context(
    ray_session: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ray import serve

    keyring = ServeKeyring(b"step-deploy-secret-0123456789abcdef")
    monkeypatch.setenv("SYNAPSE_SERVE_SIGNING_KEY", keyring.tenant_key("acme").hex())
    monkeypatch.setenv("SYNAPSE_TENANT", "acme")
    monkeypatch.setenv("SYNAPSE_PLUGIN_RELEASE_CODE", "step-app")
    plugin = load_plugin(PLUGIN)
    ctx = RunContext(plugin_code=plugin.code, action_name="deploy_steps")
    try:
        result = run_action(plugin.get_action_class("deploy_steps"), {"num_cpus": 0}, ctx)
        steps = {step["name"]: step for step in result["steps"]}
        assert steps["configure"]["data"] == {"context": "DeploymentContext", "deployed": False}
        assert steps["deploy"]["data"] == {
            "deployed": True,
            "app": "step-app",
            "options": {"num_cpus": 0.0},
        }
        # No platform to register with: None, and the context keeps no id either.
        assert steps["register"]["data"] == {"id": None, "context_id": None}
        assert serve.status().applications["step-app"].status == "RUNNING"
    finally:
        serve.delete("step-app")
