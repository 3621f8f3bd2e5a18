"""An action that registers whatever its params name, and returns how the platform answered."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel
from synapse_sdk.plugins import BaseAction
from synapse_sdk.runtime import current_context


class RegisterParams(BaseModel):
    name: str
    plugin: str = ""
    action: str = ""


class RegisterAction(BaseAction[RegisterParams]):
    """Calls RegisterDeployment with this job's worker credential."""

    action_name = "register"

    def execute(self) -> dict[str, Any]:
        from synapse_client import RpcFailedError

        platform = current_context().platform
        assert platform is not None, "run this action through a synapse server"
        with platform.client(timeout=120) as client:
            try:
                info, created = client.register_deployment(
                    self.params.name, self.params.plugin, self.params.action
                )
            except RpcFailedError as exc:
                return {"code": exc.code.name if exc.code else "", "message": exc.message}
        return {"code": "OK", "id": info.id, "created": created, "plugin": info.plugin}
