"""Fixtures for the SDK tests: the reference document's plugin and a real saved torch model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from synapse_sdk.plugins import LocalModelBackend, Plugin, load_plugin

SDK_TESTS = Path(__file__).parent
DOC_PLUGIN_DIR = SDK_TESTS / "plugins" / "doc_inference"
MODEL_ID = 42


@pytest.fixture(scope="session")
def doc_plugin() -> Plugin:
    """The reference document's examples loaded as a plugin directory."""
    return load_plugin(DOC_PLUGIN_DIR)


@pytest.fixture(scope="session")
def models_root(tmp_path_factory: pytest.TempPathFactory, doc_plugin: Plugin) -> Path:
    """A models directory holding model ``42``: a TinyRegressor saved with torch.save."""
    root = tmp_path_factory.mktemp("models")
    network = doc_plugin.import_module("doc_plugin.network")
    network.save_model(root / str(MODEL_ID))
    return root


@pytest.fixture(scope="session")
def model_backend(models_root: Path) -> LocalModelBackend:
    """Local model backend over ``models_root``."""
    return LocalModelBackend(root=models_root)


@pytest.fixture(scope="session")
def reference_model(models_root: Path) -> Any:
    """The saved model, loaded independently to compute expected predictions."""
    import torch

    return torch.load(models_root / str(MODEL_ID) / "model.pt")
