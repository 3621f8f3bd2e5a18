"""Build the example MLP's model directory: ``config.json`` and ``model.safetensors``.

Run ``python -m examples.models.build OUT_DIR [--in-features 3 --hidden 64 --out-features 2
--seed 0] [--format safetensors|pt2]``; the directory can then be registered with
``synapse model register OUT_DIR --name NAME``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from examples.models._mlp import MODEL_FORMATS, MLPConfig, build_model_dir

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--in-features", type=int, default=3)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--out-features", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--format",
        choices=MODEL_FORMATS,
        default=MODEL_FORMATS[0],
        help="safetensors state_dict (default) or torch.export program (.pt2)",
    )
    args = parser.parse_args(argv)
    cfg = MLPConfig(args.in_features, args.hidden, args.out_features, args.seed)
    print(build_model_dir(args.out_dir, cfg, model_format=args.format))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
