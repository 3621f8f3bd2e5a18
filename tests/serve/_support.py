"""Helpers of the serve tests: deploy a plugin's deployment action on the session's Ray,
as a deployment job on the platform would, with local model directories."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from synapse_sdk.plugins import load_plugin, run_action
from synapse_sdk.plugins._models import LocalModelBackend
from synapse_sdk.runtime import RunContext
from synapse_server.core.inference import ServeKeyring

PLUGINS = Path(__file__).resolve().parent / "plugins"
SECRET = b"serve-tests-secret-0123456789abcdef"
TENANT = "acme"


def deploy_plugin(
    plugin_dir: Path, action: str, params: dict[str, Any], app: str, models_root: Path
) -> dict[str, Any]:
    """Run ``plugin_dir``'s deployment ``action`` with the serve signing key of ``TENANT``,
    deploying the application ``app`` whose replicas read models from ``models_root``."""
    keyring = ServeKeyring(SECRET)
    plugin = load_plugin(plugin_dir)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SYNAPSE_SERVE_SIGNING_KEY", keyring.tenant_key(TENANT).hex())
        patch.setenv("SYNAPSE_TENANT", TENANT)
        patch.setenv("SYNAPSE_PLUGIN_RELEASE_CODE", app)
        ctx = RunContext(
            plugin_code=plugin.code,
            action_name=action,
            model_backend=LocalModelBackend(root=models_root),
        )
        return run_action(plugin.get_action_class(action), params, ctx)


def scale_models(root: Path, names: tuple[str, ...]) -> Path:
    """Empty model directories named by their scale (what the probe plugins load)."""
    for name in names:
        (root / name).mkdir(parents=True, exist_ok=True)
    return root
