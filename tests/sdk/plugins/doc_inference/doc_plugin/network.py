"""The tiny torch network the examples' model files contain.

torch 2.13's ``torch.load`` defaults to ``weights_only=True`` and refuses TorchScript archives,
so the model is a pickled ``nn.Module`` and its classes are allow-listed for the safe loader:
the documents' plain ``torch.load(path)`` line then loads it without disabling the check.
"""

from pathlib import Path

import torch


class TinyRegressor(torch.nn.Module):
    """3 inputs -> 2 outputs; accepts a tensor or a (nested) list of numbers."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(3, 2)

    def forward(self, x: torch.Tensor | list) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            x = torch.tensor(x)
        return self.linear(x.float())


torch.serialization.add_safe_globals([TinyRegressor, torch.nn.Linear])


def save_model(directory: Path, seed: int = 0) -> Path:
    """Build a seeded TinyRegressor and save it as ``directory/model.pt``."""
    torch.manual_seed(seed)
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / "model.pt"
    torch.save(TinyRegressor(), target)
    return target
