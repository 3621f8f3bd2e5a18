"""Small real models built by our own code (no model hub), for the examples, tests and benches.

::

    python -m examples.models.build /tmp/mlp          # writes /tmp/mlp/model.pt + config.json
    synapse model register /tmp/mlp --name mlp --server localhost:50051

``model.pt`` is TorchScript: load it with ``torch.jit.load(path)``, which needs no Python class
on the loading side (a worker, a Ray Serve replica). The reference document's plain
``torch.load(path)`` does not work for it: torch 2.13 defaults to ``weights_only=True`` and
refuses TorchScript archives rather than dispatching them to ``torch.jit.load``.
"""

from examples.models.build import MLPConfig, build_mlp, build_model_dir, reference_outputs

__all__ = ["MLPConfig", "build_mlp", "build_model_dir", "reference_outputs"]
