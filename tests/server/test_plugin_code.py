"""Plugin code snapshots: the digest, the copy, its limits and collection; the catalog on them."""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

import pytest
from synapse_sdk.errors import PluginConfigError
from synapse_server.core._catalog import PluginCatalog
from synapse_server.core._plugin_code import (
    PluginCodeStore,
    PluginCodeTooLargeError,
    PluginCodeUnavailableError,
    code_digest,
)

pytestmark = pytest.mark.timeout(60)

CONFIG = """\
code: snap
name: Snapshot probe
version: "1.0.0"
category: custom
actions:
  hello:
    entrypoint: actions:HelloAction
"""

ACTIONS = """\
from pydantic import BaseModel
from synapse_sdk.plugins import BaseAction

VERSION = {version}


class Params(BaseModel):
    name: str


class HelloAction(BaseAction[Params]):
    action_name = "hello"

    def execute(self):
        return {{"version": VERSION}}
"""


def _plugin(root: Path, version: int = 1) -> Path:
    directory = root / "plugins" / "snap"
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.yaml").write_text(CONFIG)
    (directory / "actions.py").write_text(ACTIONS.format(version=version))
    return directory


def _expected_digest(files: dict[str, bytes]) -> str:
    """The documented layout, written out independently of the implementation."""
    digest = hashlib.sha256()
    for name in sorted(files):
        data = files[name]
        digest.update(name.encode() + b"\0" + len(data).to_bytes(8, "big") + data)
    return digest.hexdigest()


def test_the_digest_covers_relative_paths_and_bytes_and_skips_caches(tmp_path: Path) -> None:
    directory = tmp_path / "p"
    (directory / "pkg").mkdir(parents=True)
    files = {"config.yaml": b"code: p\n", "pkg/__init__.py": b"", "pkg/mod.py": b"X = 1\n"}
    for name, data in files.items():
        (directory / name).write_bytes(data)
    # Caches are not code: written by imports and tools, they must not change the digest.
    (directory / "pkg" / "__pycache__").mkdir()
    (directory / "pkg" / "__pycache__" / "mod.cpython-311.pyc").write_bytes(b"\x00junk")
    (directory / ".git").mkdir()
    (directory / ".git" / "HEAD").write_text("ref: main\n")
    (directory / "stale.pyc").write_bytes(b"junk")
    digest = code_digest(directory)
    assert digest == _expected_digest(files)
    os.utime(directory / "pkg" / "mod.py", (1, 1))
    assert code_digest(directory) == digest  # times are not content
    (directory / "pkg" / "mod.py").write_bytes(b"X = 2\n")
    assert code_digest(directory) != digest
    (directory / "pkg" / "mod.py").write_bytes(b"X = 1\n")
    (directory / "pkg" / "mod.py").rename(directory / "pkg" / "other.py")
    assert code_digest(directory) != digest  # a renamed file is other code


def test_a_snapshot_is_a_read_only_copy_named_by_its_digest(tmp_path: Path) -> None:
    source = _plugin(tmp_path)
    store = PluginCodeStore(tmp_path / "store")
    code = store.take(source)
    assert code.path == tmp_path / "store" / code.sha256
    assert code.sha256 == code_digest(source) == code_digest(code.path)
    copied = code.path / "actions.py"
    assert copied.read_text() == (source / "actions.py").read_text()
    assert copied.stat().st_mode & 0o222 == 0
    # Editing the source later leaves the snapshot as it was.
    (source / "actions.py").write_text(ACTIONS.format(version=2))
    assert "VERSION = 1" in copied.read_text()
    assert store.take(source).sha256 != code.sha256
    # Unchanged content finds its snapshot in place; no staging is left behind.
    (source / "actions.py").write_text(ACTIONS.format(version=1))
    assert store.take(source) == code
    assert sorted(p.name for p in store.root.iterdir()) == sorted(store.digests())
    assert len(store.digests()) == 2


def test_an_altered_snapshot_is_replaced_when_its_code_is_taken_again(tmp_path: Path) -> None:
    source = _plugin(tmp_path)
    store = PluginCodeStore(tmp_path / "store")
    code = store.take(source)
    copied = code.path / "actions.py"
    copied.chmod(0o644)
    copied.write_text(ACTIONS.format(version=666))
    (code.path / "__pycache__").mkdir()  # written by imports: not an alteration
    assert store.take(source) == code
    assert copied.read_text() == (source / "actions.py").read_text()
    assert code_digest(code.path) == code.sha256


def test_a_plugin_over_the_limits_is_refused_with_a_clear_error(tmp_path: Path) -> None:
    source = _plugin(tmp_path)
    (source / "weights.bin").write_bytes(b"\0" * 4096)
    store = PluginCodeStore(tmp_path / "store", max_bytes=1024)
    with pytest.raises(PluginCodeTooLargeError, match="more than 1024 bytes") as info:
        store.take(source)
    assert str(source) in str(info.value) and "model registry" in str(info.value)
    (source / "weights.bin").unlink()
    for index in range(5):
        (source / f"extra{index}.txt").write_text("x")
    with pytest.raises(PluginCodeTooLargeError, match="more than 4 files"):
        PluginCodeStore(tmp_path / "store", max_files=4).take(source)
    assert list((tmp_path / "store").iterdir()) == []  # nothing half-made is left


def test_links_are_followed_and_a_link_cycle_is_walked_once(tmp_path: Path) -> None:
    source = _plugin(tmp_path)
    shared = tmp_path / "shared.py"
    shared.write_text("SHARED = True\n")
    (source / "shared.py").symlink_to(shared)
    (source / "loop").symlink_to(source, target_is_directory=True)
    code = PluginCodeStore(tmp_path / "store").take(source)
    assert (code.path / "shared.py").read_text() == "SHARED = True\n"
    assert not (code.path / "shared.py").is_symlink()
    assert not (code.path / "loop").exists()


def test_collect_removes_what_is_not_kept_and_leftover_staging(tmp_path: Path) -> None:
    source = _plugin(tmp_path)
    store = PluginCodeStore(tmp_path / "store")
    first = store.take(source)
    (source / "actions.py").write_text(ACTIONS.format(version=2))
    second = store.take(source)
    (store.root / ".staging-crashed").mkdir()
    (store.root / "README").write_text("not a snapshot")
    assert store.collect({second.sha256}) == [first.sha256]
    assert sorted(p.name for p in store.root.iterdir()) == sorted(["README", second.sha256])
    assert store.get(first.sha256) is None and store.get(second.sha256) == second
    assert store.get("../../etc") is None  # only digests name snapshots


def _imported_from(directory: Path) -> list[str]:
    """Names of the modules in sys.modules whose code (or package path) is in ``directory``."""
    found = []
    for name, module in list(sys.modules.items()):
        path = getattr(module, "__path__", None)
        # Some modules (torch.ops namespaces) have a __path__ that is not a list of paths.
        entries = list(path) if isinstance(path, list) else []
        where = [getattr(module, "__file__", None) or "", *entries]
        if any(str(place).startswith(str(directory)) for place in where):
            found.append(name)
    return found


def _catalog(tmp_path: Path) -> PluginCatalog:
    return PluginCatalog(
        [tmp_path / "plugins"],
        supported_modes=["local"],
        code_store=PluginCodeStore(tmp_path / "data" / "plugins"),
    )


def test_the_catalog_loads_each_plugin_from_its_snapshot(tmp_path: Path) -> None:
    source = _plugin(tmp_path)
    catalog = _catalog(tmp_path)
    catalog.reload()
    code = catalog.code("snap")
    assert code.sha256 == code_digest(source)
    plugin = catalog.plugin("snap")
    assert plugin.path == code.path
    module = sys.modules[plugin.get_action_class("hello").__module__]
    assert Path(str(module.__file__)).parent == code.path
    # The digest of the code whose model checked the params: the code the job must run.
    assert catalog.check_params_json("snap", "hello", '{"name": "x"}').sha256 == code.sha256


def test_a_broken_edit_keeps_the_catalog_and_names_the_edited_file(tmp_path: Path) -> None:
    source = _plugin(tmp_path)
    catalog = _catalog(tmp_path)
    catalog.reload()
    loaded = catalog.code("snap")
    (source / "actions.py").write_text("this is not python (\n")
    with pytest.raises(PluginConfigError) as info:
        catalog.reload()
    assert info.value.path == source / "config.yaml"
    assert str(catalog.code_store.root) not in str(info.value)
    assert "SyntaxError" in str(info.value)
    assert catalog.code("snap") == loaded
    # Nothing of the broken code stays imported.
    broken = catalog.code_store.take(source)
    assert _imported_from(broken.path) == []
    assert catalog.collect(set()) == [broken.sha256]


def test_a_job_keeps_its_code_across_reloads_until_it_is_collected(tmp_path: Path) -> None:
    source = _plugin(tmp_path)
    catalog = _catalog(tmp_path)
    catalog.reload()
    first = catalog.code("snap")
    for version in (2, 3):
        (source / "actions.py").write_text(ACTIONS.format(version=version))
        catalog.reload()
    third = catalog.code("snap")
    # The replaced plugins' modules are no longer imported (reloads do not accumulate them).
    assert _imported_from(first.path) == []
    assert _imported_from(third.path) != []
    # A job submitted with the first code still gets it while the snapshot is kept ...
    assert catalog.code("snap", first.sha256) == first
    assert catalog.code("snap", third.sha256) == third
    # ... which a collection does while an unfinished job refers to it.
    assert first.sha256 not in catalog.collect({first.sha256})
    removed = catalog.collect(set())
    assert first.sha256 in removed and third.sha256 not in removed
    with pytest.raises(PluginCodeUnavailableError, match="no longer kept; submit the job again"):
        catalog.code("snap", first.sha256)
    with pytest.raises(PluginCodeUnavailableError, match="not loaded"):
        catalog.code("nope")
