"""Plugin loading: config validation, isolation between plugins, module plugins, discovery."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest
from conftest import DOC_PLUGIN_DIR
from synapse_sdk.errors import ActionNotFoundError, PluginConfigError, PluginNotFoundError
from synapse_sdk.plugins import PluginCategory, discover_plugins, load_plugin
from synapse_sdk.testing import ActionEnvironment

ACTION_SOURCE = '''
from pydantic import BaseModel
from synapse_sdk.plugins import BaseAction

from .helper import VALUE


class Params(BaseModel):
    x: int = 0


class EchoAction(BaseAction[Params]):
    """Echoes its package's VALUE."""

    action_name = "echo"

    def execute(self):
        return {"value": VALUE, "x": self.params.x}
'''


def make_plugin(root: Path, code: str, value: str, config: str | None = None) -> Path:
    directory = root / code
    package = directory / "plugin"  # every plugin uses the same package name on purpose
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "helper.py").write_text(f"VALUE = {value!r}\n")
    (package / "actions.py").write_text(ACTION_SOURCE)
    (directory / "config.yaml").write_text(
        config
        if config is not None
        else textwrap.dedent(f"""\
            code: {code}
            name: Plugin {code}
            version: 1.0
            category: custom
            actions:
              echo:
                entrypoint: plugin.actions.EchoAction
                description: echo
            """)
    )
    return directory


def test_doc_plugin_config() -> None:
    plugin = load_plugin(DOC_PLUGIN_DIR)
    assert (plugin.code, plugin.version, plugin.category) == (
        "doc-inference",
        "1.0.0",
        PluginCategory.NEURAL_NET,
    )
    assert set(plugin.actions) == {"inference", "inference_steps", "batch_inference"}
    assert plugin.actions["batch_inference"].method == "local"
    assert plugin.actions["inference"].method == "local"
    with pytest.raises(ActionNotFoundError, match="available: batch_inference, inference"):
        plugin.action("nope")


def test_same_package_name_in_two_plugins_does_not_leak(tmp_path: Path) -> None:
    first = load_plugin(make_plugin(tmp_path, "first", "one"))
    second = load_plugin(make_plugin(tmp_path, "second", "two"))
    env = ActionEnvironment()
    assert env.run(first.get_action_class("echo"), {"x": 1}) == {"value": "one", "x": 1}
    assert env.run(second.get_action_class("echo"), {}) == {"value": "two", "x": 0}
    assert "plugin" not in sys.modules
    assert str(tmp_path) not in sys.path
    assert first.version == "1.0"  # YAML float read as the string it looks like
    # Loading again gives the same classes (deterministic module names).
    assert load_plugin(tmp_path / "first").get_action_class("echo") is first.get_action_class(
        "echo"
    )


@pytest.mark.parametrize(
    ("config", "field", "fragment"),
    [
        ("name: x\nversion: '1'\ncategory: custom\nactions: {a: {entrypoint: m:C}}", "code", ""),
        (
            "code: x\nname: x\nversion: '1'\ncategory: bogus\nactions: {a: {entrypoint: m:C}}",
            "category",
            "neural_net",
        ),
        ("code: x\nname: x\nversion: '1'\ncategory: custom\nactions: {}", "actions", ""),
        (
            "code: x\nname: x\nversion: '1'\ncategory: custom\nactions: {a: {entrypoint: 'no'}}",
            "actions.a.entrypoint",
            "module:Class",
        ),
        (
            "code: x\nname: x\nversion: '1'\ncategory: custom\nactions: {a: {method: job}}",
            "actions.a.entrypoint",
            "",
        ),
        (
            "code: x\nname: x\nversion: '1'\ncategory: custom\n"
            "actions: {a: {entrypoint: plugin.missing:C}}",
            "actions.a.entrypoint",
            "cannot import module 'plugin.missing'",
        ),
        (
            "code: x\nname: x\nversion: '1'\ncategory: custom\n"
            "actions: {a: {entrypoint: plugin.actions:Nope}}",
            "actions.a.entrypoint",
            "has no attribute 'Nope'",
        ),
        (
            "code: x\nname: x\nversion: '1'\ncategory: custom\n"
            "actions: {a: {entrypoint: plugin.actions:Params}}",
            "actions.a.entrypoint",
            "not a BaseAction subclass",
        ),
        ("code: [unclosed", "(document)", "invalid YAML"),
        ("- a\n- b\n", "(document)", "mapping"),
    ],
)
def test_malformed_config_names_file_and_field(
    tmp_path: Path, config: str, field: str, fragment: str
) -> None:
    directory = make_plugin(tmp_path, "bad", "v", config=config)
    with pytest.raises(PluginConfigError) as info:
        load_plugin(directory)
    assert info.value.path == directory / "config.yaml"
    assert info.value.field == field
    assert str(directory / "config.yaml") in str(info.value)
    assert f"field '{field}'" in str(info.value)
    assert fragment in str(info.value)


def test_module_and_file_plugins(tmp_path: Path) -> None:
    file = tmp_path / "single_file_plugin.py"
    file.write_text(
        textwrap.dedent('''\
            """A one-file plugin."""
            from pydantic import BaseModel
            from synapse_sdk.plugins import BaseAction, PluginCategory

            class P(BaseModel):
                n: int

            class Double(BaseAction[P]):
                action_name = "double"
                category = PluginCategory.CUSTOM

                def execute(self):
                    return {"n": self.params.n * 2}
            ''')
    )
    plugin = load_plugin(file)
    assert plugin.code == "single_file_plugin"
    assert plugin.category is PluginCategory.CUSTOM
    assert ActionEnvironment().run(plugin.get_action_class("double"), {"n": 4}) == {"n": 8}


def test_importable_module_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "sdk_test_module_plugin.py").write_text(
        textwrap.dedent("""\
            from synapse_sdk.plugins import BaseAction

            __version__ = "2.1"

            class Hello(BaseAction):
                action_name = "hello"

                def execute(self):
                    return {"params": self.params.model_dump()}
            """)
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    plugin = load_plugin("sdk_test_module_plugin")
    assert (plugin.code, plugin.version) == ("sdk_test_module_plugin", "2.1")
    result = ActionEnvironment().run(plugin.get_action_class("hello"), {"free": [1]})
    assert result == {"params": {"free": [1]}}
    monkeypatch.delitem(sys.modules, "sdk_test_module_plugin")


def test_module_without_actions_and_missing_paths(tmp_path: Path) -> None:
    with pytest.raises(PluginNotFoundError, match="defines no BaseAction subclass"):
        load_plugin("json")
    with pytest.raises(PluginNotFoundError, match="no such directory"):
        load_plugin(tmp_path / "missing")
    with pytest.raises(PluginNotFoundError, match=r"no config\.yaml"):
        load_plugin(tmp_path)
    with pytest.raises(PluginNotFoundError, match=r"not a directory, \.py file or importable"):
        load_plugin("no_such_module_anywhere")


def test_discover_plugins(tmp_path: Path) -> None:
    make_plugin(tmp_path, "alpha", "a")
    make_plugin(tmp_path, "beta", "b")
    (tmp_path / "not-a-plugin").mkdir()
    plugins = discover_plugins([tmp_path, DOC_PLUGIN_DIR])
    assert sorted(plugins) == ["alpha", "beta", "doc-inference"]
    other = tmp_path / "other"
    other.mkdir()
    make_plugin(other, "alpha", "again")
    with pytest.raises(PluginConfigError, match="already used by"):
        discover_plugins([tmp_path, other])
