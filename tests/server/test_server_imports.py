"""The server uses the SDK and the client through their public modules only: a replica or
worker may run another SDK version, and only public names are kept stable across versions."""

from __future__ import annotations

from pathlib import Path

import synapse_server

from tests._imports import imported_modules, offending

SERVER = Path(synapse_server.__file__).parent


def test_the_server_imports_no_private_module_of_the_sdk_or_the_client() -> None:
    imports = imported_modules(SERVER)
    assert len(imports) > 20, "no server modules found"
    assert offending(imports, packages=("synapse_sdk", "synapse_client"), private_only=True) == {}


def test_the_check_sees_private_imports(tmp_path: Path) -> None:
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "a.py").write_text(
        "def f():\n    from synapse_sdk.serving import _replica\n", encoding="utf-8"
    )
    (package / "b.py").write_text("import synapse_client._inference\n", encoding="utf-8")
    (package / "c.py").write_text("from synapse_client.codec import TensorPayload\n")
    assert offending(
        imported_modules(package), packages=("synapse_sdk", "synapse_client"), private_only=True
    ) == {
        "pkg/a.py": ["synapse_sdk.serving._replica"],
        "pkg/b.py": ["synapse_client._inference"],
    }
