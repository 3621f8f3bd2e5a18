"""The batched forward pass both actions share (and the benchmark's plain loop reuses)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any


def iter_batches(inputs: list[dict[str, Any]], batch_size: int) -> Iterator[list[dict[str, Any]]]:
    """Consecutive slices of ``inputs`` of at most ``batch_size`` items."""
    for start in range(0, len(inputs), batch_size):
        yield inputs[start : start + batch_size]


def infer_batch(model: Any, batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One forward pass over a batch of ``{'data': [...]}`` inputs."""
    import torch

    batch_tensors = torch.stack([torch.tensor(inp["data"]) for inp in batch])
    # optimized_execution(False), for TorchScript models: its profiling executor otherwise
    # spends ~25 ms on the first calls of every freshly loaded module (a job loads its model
    # anew) optimising a graph of matmuls that then runs no faster (measured for the example
    # MLPs). Other modules run as they are.
    scripted = isinstance(model, torch.jit.ScriptModule)
    executor = torch.jit.optimized_execution(False) if scripted else contextlib.nullcontext()
    with torch.no_grad(), executor:
        predictions = model(batch_tensors)
    # One tolist() per batch instead of one per row: same values, far fewer Python calls.
    return [{"prediction": row} for row in predictions.tolist()]


def run_batches(
    model: Any,
    inputs: list[dict[str, Any]],
    batch_size: int,
    on_batch: Callable[[int, int], None] | None = None,
) -> list[dict[str, Any]]:
    """Infer all ``inputs`` in batches; ``on_batch(done, total)`` after each batch."""
    total = max(1, -(-len(inputs) // batch_size))
    results: list[dict[str, Any]] = []
    for index, batch in enumerate(iter_batches(inputs, batch_size), start=1):
        results.extend(infer_batch(model, batch))
        if on_batch is not None:
            on_batch(index, total)
    return results
