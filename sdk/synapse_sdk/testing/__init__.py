"""Test helpers for plugin authors: run an action in-process and inspect what it reported."""

from synapse_sdk.plugins._models import LocalModelBackend
from synapse_sdk.testing._environment import ActionEnvironment, RecordingSink

__all__ = ["ActionEnvironment", "LocalModelBackend", "RecordingSink"]
