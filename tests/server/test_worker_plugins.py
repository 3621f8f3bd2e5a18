"""A worker finds its job's plugin: preloaded by its fork server, or on disk."""

from __future__ import annotations

from pathlib import Path

import pytest
from synapse_sdk.errors import PluginNotFoundError
from synapse_server.worker import _runner

PLUGINS = Path(__file__).parent.parent / "plugins"


def test_a_preloaded_plugin_is_reused_and_a_version_mismatch_goes_to_disk(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_runner, "_preloaded", {})
    plugin = _runner.preload_plugin([PLUGINS], "toy")
    assert _runner._find_plugin([PLUGINS], "toy", "") is plugin
    assert _runner._find_plugin([PLUGINS], "toy", plugin.version) is plugin
    # Another version than the preloaded one is looked up on disk, which lacks it.
    with pytest.raises(PluginNotFoundError, match="version"):
        _runner._find_plugin([PLUGINS], "toy", "999.0.0")
    # Without a preload the plugin comes from disk, as a new object.
    monkeypatch.setattr(_runner, "_preloaded", {})
    fresh = _runner._find_plugin([PLUGINS], "toy", "")
    assert fresh is not plugin and fresh.version == plugin.version
    with pytest.raises(PluginNotFoundError, match="not installed"):
        _runner._find_plugin([PLUGINS], "nope", "")
