"""The example MLP and its model directory, in the formats the example plugins load.

A model directory holds ``config.json`` (``"architecture": "mlp"`` and the layer sizes) and the
model in one of two formats:

* ``model.safetensors`` (the default): the weights as a safetensors ``state_dict``. Loading
  reads tensors only, so a file from anywhere is safe to open, and any framework can read it;
  the loading side needs the architecture's class (the example plugins define ``mlp``).
* ``model.pt2``: a ``torch.export`` program, which keeps the graph with the weights, so the
  loading side needs no Python class; ``torch.export.load`` pulls in torch's compiler stack
  (seconds of imports in every fresh process, such as a job's worker; 50-150 ms per load).
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

__all__ = [
    "CONFIG_FILE",
    "EXPORTED_FILE",
    "MODEL_FORMATS",
    "MLPConfig",
    "WEIGHTS_FILE",
    "build_mlp",
    "build_model_dir",
    "load_model_dir",
    "reference_outputs",
]

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
EXPORTED_FILE = "model.pt2"
#: ``build_model_dir`` formats, the default first.
MODEL_FORMATS = ("safetensors", "pt2")


@dataclass(frozen=True)
class MLPConfig:
    """Shape and seed of the example MLP."""

    in_features: int = 3
    hidden: int = 64
    out_features: int = 2
    seed: int = 0


def _mlp_module(cfg: MLPConfig) -> Any:
    """An untrained MLP of ``cfg``'s shape (weights from torch's current random state)."""
    import torch
    from torch import nn

    class MLP(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Sequential(
                nn.Linear(cfg.in_features, cfg.hidden),
                nn.ReLU(),
                nn.Linear(cfg.hidden, cfg.hidden),
                nn.ReLU(),
                nn.Linear(cfg.hidden, cfg.out_features),
            )

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x.to(torch.float32))

    return MLP().eval()


def build_mlp(config: MLPConfig | None = None) -> Any:
    """The MLP as an eager ``nn.Module`` in eval mode (deterministic weights from the seed).

    ``forward`` casts its input to float32, so integer inputs such as ``[1, 2, 3]`` work, and
    accepts a single sample ``[in_features]`` or a batch ``[n, in_features]``.
    """
    import torch

    cfg = config or MLPConfig()
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(cfg.seed)
    try:
        return _mlp_module(cfg)
    finally:
        torch.random.set_rng_state(generator_state)


def build_model_dir(
    out_dir: str | Path, config: MLPConfig | None = None, *, model_format: str = "safetensors"
) -> Path:
    """Write ``config.json`` and the model (``model_format``: ``safetensors`` or ``pt2``)."""
    import torch

    if model_format not in MODEL_FORMATS:
        raise ValueError(f"model_format must be one of {', '.join(MODEL_FORMATS)}")
    cfg = config or MLPConfig()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = build_mlp(cfg)
    if model_format == "safetensors":
        from safetensors.torch import save_file

        save_file(model.state_dict(), str(out / WEIGHTS_FILE), metadata={"format": "pt"})
    else:
        # The batch size is dynamic; one sample is a batch of one (the loaders add the dim).
        batch = torch.export.Dim("batch", min=1)
        example = torch.zeros(2, cfg.in_features)
        program = torch.export.export(model, (example,), dynamic_shapes=({0: batch},))
        torch.export.save(program, str(out / EXPORTED_FILE))
    config_json = {"architecture": "mlp", **asdict(cfg)}
    (out / CONFIG_FILE).write_text(json.dumps(config_json, indent=2))
    logger.info("built %s as %s in %s", cfg, model_format, out)
    return out


def load_model_dir(model_dir: str | Path) -> Any:
    """The model a directory written by :func:`build_model_dir` holds, in eval mode.

    Independent of the example plugins' loader, so tests can check one against the other.
    """
    import torch

    directory = Path(model_dir)
    if (directory / WEIGHTS_FILE).is_file():
        from safetensors.torch import load_file

        config = json.loads((directory / CONFIG_FILE).read_text())
        fields = {k: config[k] for k in ("in_features", "hidden", "out_features")}
        model = _mlp_module(MLPConfig(**fields))
        model.load_state_dict(load_file(str(directory / WEIGHTS_FILE)))
        return model
    if (directory / EXPORTED_FILE).is_file():
        return torch.export.load(str(directory / EXPORTED_FILE)).module()
    raise FileNotFoundError(f"{directory} holds neither {WEIGHTS_FILE} nor {EXPORTED_FILE}")


def reference_outputs(model_dir: str | Path, inputs: list[list[float]]) -> list[list[float]]:
    """Outputs of the saved model for ``inputs`` (what any correct inference must return)."""
    import torch

    model = load_model_dir(model_dir)
    with torch.no_grad():
        return model(torch.tensor(inputs, dtype=torch.float32)).tolist()  # type: ignore[no-any-return]
