"""The serve suite leaves torch's safe loading on in the test process.

The reference document's deployment example needs ``torch.load`` of a pickled module; its
replicas alone get the permission (see test_doc_deployment.py). Turning it off in this
process instead (``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` set by a conftest) changed every later
``torch.load`` of the pytest run, in every suite, and made torch print a warning on each.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest


def test_torch_load_refuses_a_pickled_module_here(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    path = tmp_path / "module.pt"
    torch.save(torch.nn.Sequential(torch.nn.Linear(3, 2)), path)
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        torch.load(path)
