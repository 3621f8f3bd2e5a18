"""Actions of the Ray Data probe plugin."""

from synapse_sdk.plugins import BaseAction


class NoopAction(BaseAction):
    """Does nothing (a plugin needs one action; the tests use the predictor)."""

    def start(self) -> dict[str, str]:
        return {}
