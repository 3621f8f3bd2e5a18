"""Load a model directory into a torch module, with loaders that never unpickle.

The same file is in both example plugins: a plugin is snapshotted, packed and shipped to its
workers and replicas on its own, so they cannot share a module (a test keeps the two equal).
torch is imported inside the functions: the deployment action that imports this module does
not need it, only the replicas do.

The directory's files decide the format; the first present wins:

* ``model.safetensors`` + ``config.json``: a ``state_dict`` in safetensors. Reading it reads
  tensors only, whoever wrote the file. The architecture's class is this plugin's own:
  ``config.json`` names it (``"architecture": "mlp"``, the only one defined here).
* ``model.pt2``: a ``torch.export`` program. It keeps the graph, so any architecture loads
  without a class; it takes the input dtype and rank it was exported with, which the module
  returned here adapts to (a cast, and a batch of one for a single sample).
* ``model.pt``: TorchScript, for models saved before; torch deprecates TorchScript, so each
  load warns.

A pickled module (``torch.save(module)``) is refused with :class:`ModelFormatError`: loading
one can run any code the file names, and torch only loads it with the module's classes
allow-listed (``torch.serialization.add_safe_globals``).
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

__all__ = ["ModelFormatError", "load_model_dir"]

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
EXPORTED_FILE = "model.pt2"
TORCHSCRIPT_FILE = "model.pt"
ARCHITECTURES = ("mlp",)


class ModelFormatError(ValueError):
    """The model directory holds no model in a format this plugin loads."""


def load_model_dir(model_dir: str | Path) -> Any:
    """The directory's model as a torch module in eval mode (format: see the module doc)."""
    directory = Path(model_dir)
    if (directory / WEIGHTS_FILE).is_file():
        return _load_state_dict(directory)
    if (directory / EXPORTED_FILE).is_file():
        return _load_exported(directory / EXPORTED_FILE)
    if (directory / TORCHSCRIPT_FILE).is_file():
        return _load_torchscript(directory / TORCHSCRIPT_FILE)
    raise ModelFormatError(
        f"the model directory holds none of {WEIGHTS_FILE} (with {CONFIG_FILE}), "
        f"{EXPORTED_FILE} or {TORCHSCRIPT_FILE}"
    )


def _load_state_dict(directory: Path) -> Any:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        config = json.loads((directory / CONFIG_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelFormatError(
            f"{WEIGHTS_FILE} needs a {CONFIG_FILE} naming its architecture"
        ) from None
    except ValueError as err:
        raise ModelFormatError(f"{CONFIG_FILE} is not valid JSON: {err}") from None
    architecture = config.get("architecture") if isinstance(config, dict) else None
    if architecture not in ARCHITECTURES:
        named = repr(architecture[:64]) if isinstance(architecture, str) else "no architecture"
        raise ModelFormatError(
            f"{CONFIG_FILE} names {named}, not an architecture this plugin defines "
            f"({', '.join(ARCHITECTURES)}); save the model as {EXPORTED_FILE} (torch.export) "
            "to load it without its class"
        )
    model = _mlp(config)
    try:
        model.load_state_dict(load_file(str(directory / WEIGHTS_FILE)))
    except (SafetensorError, RuntimeError) as err:
        # A truncated or foreign file, or weights of another shape than config.json says.
        raise ModelFormatError(
            f"{WEIGHTS_FILE} does not hold the mlp {CONFIG_FILE} describes: {str(err)[:300]}"
        ) from None
    return model.eval()


def _mlp(config: dict[str, Any]) -> Any:
    """The ``mlp`` architecture: in -> hidden -> hidden -> out, ReLU between, float32 input."""
    import torch
    from torch import nn

    try:
        sizes = [int(config[key]) for key in ("in_features", "hidden", "out_features")]
    except (KeyError, TypeError, ValueError):
        sizes = []
    if len(sizes) != 3 or min(sizes) < 1:
        raise ModelFormatError(
            f"{CONFIG_FILE} of an mlp needs positive integers in_features, hidden, out_features"
        )
    in_features, hidden, out_features = sizes

    class MLP(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Sequential(
                nn.Linear(in_features, hidden),
                nn.ReLU(),
                nn.Linear(hidden, hidden),
                nn.ReLU(),
                nn.Linear(hidden, out_features),
            )

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x.to(torch.float32))

    return MLP()


def _load_exported(path: Path) -> Any:
    import torch
    from torch import nn

    program = torch.export.load(str(path))
    user_inputs = set(program.graph_signature.user_inputs)
    specs = [
        node.meta.get("val")
        for node in program.graph.nodes
        if node.op == "placeholder" and node.name in user_inputs
    ]
    if len(specs) != 1 or not isinstance(specs[0], torch.Tensor):
        raise ModelFormatError(
            f"{EXPORTED_FILE} takes {len(specs)} inputs; the example actions pass one tensor"
        )
    dtype, rank = specs[0].dtype, specs[0].dim()

    class ExportedModel(nn.Module):
        """The program's module, taking a sample or a batch of any numeric dtype."""

        def __init__(self, module: nn.Module) -> None:
            super().__init__()
            self.module = module

        def train(self, mode: bool = True) -> ExportedModel:
            # The program keeps the mode it was exported in, and torch refuses train() and
            # eval() on its module: callers' usual model.eval() must still work.
            return self

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = x.to(dtype)
            if x.dim() == rank - 1:
                return self.module(x.unsqueeze(0)).squeeze(0)  # type: ignore[no-any-return]
            return self.module(x)  # type: ignore[no-any-return]

    return ExportedModel(program.module())


def _load_torchscript(path: Path) -> Any:
    import torch

    if not _is_torchscript_archive(path):
        raise ModelFormatError(
            f"{TORCHSCRIPT_FILE} is not TorchScript; a pickled module (torch.save(module)) is "
            f"not loaded, as unpickling can run code: save {WEIGHTS_FILE} (a state_dict) or "
            f"{EXPORTED_FILE} (torch.export) instead"
        )
    return torch.jit.load(str(path)).eval()


def _is_torchscript_archive(path: Path) -> bool:
    """A TorchScript archive is a zip with a ``constants.pkl``; ``torch.save`` writes none."""
    try:
        with zipfile.ZipFile(path) as archive:
            return any(name.rpartition("/")[2] == "constants.pkl" for name in archive.namelist())
    except (zipfile.BadZipFile, OSError):
        return False
