"""Build a small deterministic MLP and save it as a TorchScript model directory.

Run ``python -m examples.models.build OUT_DIR [--in-features 3 --hidden 64 --out-features 2
--seed 0]``; the directory then holds ``model.pt`` and ``config.json`` and can be registered
with ``synapse model register OUT_DIR --name NAME``.
"""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

__all__ = ["MLPConfig", "build_mlp", "build_model_dir", "main", "reference_outputs"]


@dataclass(frozen=True)
class MLPConfig:
    """Shape and seed of the example MLP."""

    in_features: int = 3
    hidden: int = 64
    out_features: int = 2
    seed: int = 0


def build_mlp(config: MLPConfig | None = None) -> Any:
    """The MLP as a TorchScript module (deterministic weights from ``config.seed``).

    ``forward`` casts its input to float32, so integer inputs such as ``[1, 2, 3]`` work, and
    accepts a single sample ``[in_features]`` or a batch ``[n, in_features]``.
    """
    import torch
    from torch import nn

    cfg = config or MLPConfig()

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

    generator_state = torch.random.get_rng_state()
    torch.manual_seed(cfg.seed)
    try:
        model = MLP().eval()
    finally:
        torch.random.set_rng_state(generator_state)
    return torch.jit.script(model)


def build_model_dir(out_dir: str | Path, config: MLPConfig | None = None) -> Path:
    """Write ``model.pt`` (TorchScript) and ``config.json`` into ``out_dir``; returns it."""
    import torch

    cfg = config or MLPConfig()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.jit.save(build_mlp(cfg), str(out / "model.pt"))
    (out / "config.json").write_text(json.dumps({"architecture": "mlp", **asdict(cfg)}, indent=2))
    logger.info("built %s in %s", cfg, out)
    return out


def reference_outputs(model_dir: str | Path, inputs: list[list[float]]) -> list[list[float]]:
    """Outputs of the saved model for ``inputs`` (what any correct inference must return)."""
    import torch

    model = torch.jit.load(str(Path(model_dir) / "model.pt"))
    with torch.no_grad():
        return model(torch.tensor(inputs)).tolist()  # type: ignore[no-any-return]


def main(argv: list[str] | None = None) -> int:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--in-features", type=int, default=3)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--out-features", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    cfg = MLPConfig(args.in_features, args.hidden, args.out_features, args.seed)
    print(build_model_dir(args.out_dir, cfg))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
