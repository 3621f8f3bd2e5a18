"""load_plugin(fresh=True) imports a plugin's edited code again; a plain load reuses it."""

from __future__ import annotations

from pathlib import Path

import pytest
from synapse_sdk.errors import PluginConfigError
from synapse_sdk.plugins import discover_plugins, load_plugin

CONFIG = """\
code: hot
name: Hot plugin
version: "1.0.0"
category: custom
actions:
  greet:
    entrypoint: actions:GreetAction
"""

ACTIONS = """\
from synapse_sdk.plugins import BaseAction


class GreetAction(BaseAction):
    action_name = "greet"

    def execute(self):
        from .{module} import VALUE

        return VALUE
"""


def _write(directory: Path, module: str, value: str) -> None:
    (directory / "config.yaml").write_text(CONFIG)
    (directory / "actions.py").write_text(ACTIONS.format(module=module))
    (directory / f"{module}.py").write_text(f"VALUE = {value!r}\n")


def _run(directory: Path, *, fresh: bool) -> object:
    action_cls = load_plugin(directory, fresh=fresh).get_action_class("greet")
    return action_cls().execute()


def test_fresh_load_sees_edits_and_new_files(tmp_path: Path) -> None:
    plugin = tmp_path / "hot"
    plugin.mkdir()
    _write(plugin, "values", "first")
    assert _run(plugin, fresh=False) == "first"
    # A different length: the bytecode cache keys on source size and mtime (in seconds).
    _write(plugin, "values", "second edit")
    assert _run(plugin, fresh=False) == "first"  # modules imported once are reused
    assert _run(plugin, fresh=True) == "second edit"
    # A module that did not exist at the first import is found too.
    _write(plugin, "added_later", "from a new file")
    assert _run(plugin, fresh=True) == "from a new file"
    assert discover_plugins([tmp_path], fresh=True)["hot"].path == plugin.resolve()


def test_a_broken_edit_raises_and_the_earlier_classes_keep_working(tmp_path: Path) -> None:
    plugin = tmp_path / "hot"
    plugin.mkdir()
    _write(plugin, "values", "good")
    earlier = load_plugin(plugin).get_action_class("greet")
    (plugin / "actions.py").write_text("this is not python (\n")
    with pytest.raises(PluginConfigError, match="raised SyntaxError"):
        load_plugin(plugin, fresh=True)
    (plugin / "config.yaml").write_text("code: [unclosed\n")
    with pytest.raises(PluginConfigError, match="invalid YAML"):
        load_plugin(plugin, fresh=True)
    assert earlier().execute() == "good"
