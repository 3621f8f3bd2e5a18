"""Dependency directions of the stores: the core defines the store protocols and knows no
backend; the stores implement them and know nothing of the transport."""

from __future__ import annotations

import ast
from pathlib import Path

import synapse_server

SERVER = Path(synapse_server.__file__).parent


def _imports(package: str) -> dict[str, set[str]]:
    """Every module of ``package`` with the modules it imports (at any depth in the file)."""
    found: dict[str, set[str]] = {}
    for path in sorted((SERVER / package).rglob("*.py")):
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names.add(node.module)
        found[str(path.relative_to(SERVER))] = names
    return found


def _offending(imports: dict[str, set[str]], prefixes: tuple[str, ...]) -> dict[str, set[str]]:
    return {
        module: bad
        for module, names in imports.items()
        if (bad := {n for n in names if n.split(".")[0] in prefixes or n.startswith(prefixes)})
    }


def test_the_core_imports_no_store_backend() -> None:
    core = _imports("core")
    assert core, "no core modules found"
    assert _offending(core, ("sqlite3", "synapse_server.stores")) == {}


def test_the_stores_import_no_transport() -> None:
    stores = _imports("stores")
    assert stores, "no store modules found"
    assert _offending(stores, ("grpc", "synapse.plugin", "synapse_server.grpc", "ray")) == {}
