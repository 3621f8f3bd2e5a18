"""The SDK's dependency directions: it may use the client (public modules only), never the
server."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import synapse_sdk

from tests._imports import imported_modules, offending

SDK = Path(synapse_sdk.__file__).parent


def test_the_sdk_never_imports_the_server() -> None:
    imports = imported_modules(SDK)
    assert len(imports) > 20, "no SDK modules found"
    assert offending(imports, packages=("synapse_server",), private_only=False) == {}


def test_the_sdk_imports_no_private_module_of_the_client() -> None:
    imports = imported_modules(SDK)
    assert offending(imports, packages=("synapse_client",), private_only=True) == {}


def test_importing_every_sdk_module_loads_no_server_module() -> None:
    code = (
        "import importlib, pkgutil, sys, synapse_sdk\n"
        "for info in pkgutil.walk_packages(synapse_sdk.__path__, 'synapse_sdk.'):\n"
        "    importlib.import_module(info.name)\n"
        "bad = [m for m in sys.modules if m.split('.')[0] == 'synapse_server']\n"
        "print(bad); sys.exit(1 if bad else 0)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
