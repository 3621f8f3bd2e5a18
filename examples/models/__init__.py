"""Small real models built by our own code (no model hub), for the examples, tests and benches.

::

    python -m examples.models.build /tmp/mlp    # writes /tmp/mlp/model.safetensors + config.json
    synapse model register /tmp/mlp --name mlp --server localhost:50051

The weights are a safetensors ``state_dict``, which the example plugins load into their own
``mlp`` class; ``--format pt2`` writes a ``torch.export`` program instead, which needs no class
to load. Neither is a pickle: see ``_mlp`` for the trade-offs, and the README ("Model files")
for why a pickled module (``torch.save(module)``) is not used.
"""

from examples.models._mlp import (
    CONFIG_FILE,
    EXPORTED_FILE,
    MODEL_FORMATS,
    WEIGHTS_FILE,
    MLPConfig,
    build_mlp,
    build_model_dir,
    load_model_dir,
    reference_outputs,
)

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
