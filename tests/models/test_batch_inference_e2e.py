"""The example batch inference plugin run through the platform with a registered model."""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from synapse_client import Client, JobFailedError, ProgressEvent
from synapse_sdk.models import pack_path

torch = pytest.importorskip("torch")
from examples.models import MLPConfig, build_model_dir, reference_outputs  # noqa: E402

EXAMPLE_PLUGINS = Path(__file__).resolve().parents[2] / "examples" / "plugins"


@pytest.mark.timeout(240)
def test_batch_inference_through_the_server(
    server_factory: Callable[..., Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "model-cache"
    monkeypatch.setenv("SYNAPSE_MODEL_CACHE", str(cache))  # inherited by the worker processes
    server = server_factory(plugin_dirs=[EXAMPLE_PLUGINS])
    model_dir = build_model_dir(tmp_path / "mlp", MLPConfig(hidden=32))
    archive, fmt = pack_path(model_dir, tmp_path)
    rng = random.Random(3)
    inputs = [[rng.uniform(-2, 2) for _ in range(3)] for _ in range(5000)]
    expected = reference_outputs(model_dir, inputs)
    with Client(server.address, timeout=60) as client:
        model = client.register_model(archive, "mlp", framework="pytorch", archive_format=fmt.value)
        for action in ("batch_inference", "batch_inference_steps"):
            handle = client.run_action(
                "batch-inference",
                action,
                {"model_id": model.id, "inputs": [{"data": x} for x in inputs], "batch_size": 500},
            )
            events = list(handle.events())
            result = handle.result(timeout=120)
            assert result["processed_count"] == 5000
            for got, want in zip(result["results"], expected, strict=True):
                assert got["prediction"] == pytest.approx(want, abs=1e-5)
            inference = [
                e.payload
                for e in events
                if isinstance(e.payload, ProgressEvent) and e.payload.category == "inference"
            ]
            # One progress event per batch; the worker may coalesce a fast run of them
            # (progress may be coalesced, never reordered), but the first and the last arrive.
            currents = [p.current for p in inference]
            assert currents[0] == 1 and currents[-1] == 10, currents
            assert currents == sorted(set(currents)) and all(p.total == 10 for p in inference)
        # Both runs used one cached extraction of the archive.
        assert [p.name for p in cache.iterdir() if not p.name.startswith(".")] == [model.sha256]

        missing = client.run_action(
            "batch-inference", "batch_inference", {"model_id": 424242, "inputs": []}
        )
        with pytest.raises(JobFailedError) as info:
            missing.result(timeout=120)
        assert "ModelNotFoundError" in info.value.error_type
        assert "424242" in info.value.message
