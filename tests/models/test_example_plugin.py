"""The example batch inference plugin, in-process, over a real built and packed model."""

from __future__ import annotations

import hashlib
import random
from pathlib import Path
from typing import Any

import pytest
from synapse_sdk.events import Event, ProgressEvent
from synapse_sdk.models import ModelCache, PlatformModelBackend, WritableBytes, pack_path
from synapse_sdk.plugins import load_plugin, run_action
from synapse_sdk.runtime import RunContext

torch = pytest.importorskip("torch")
from examples.models import MODEL_FORMATS, MLPConfig, build_model_dir, reference_outputs  # noqa: E402

PLUGIN_DIR = Path(__file__).resolve().parents[2] / "examples" / "plugins" / "batch_inference"


class _Source:
    def __init__(self, archive: Path) -> None:
        self.data = archive.read_bytes()
        self.downloads = 0

    def get_model(self, model_id: int) -> dict[str, Any]:
        return {
            "id": model_id,
            "name": "mlp",
            "file": f"synapse://models/{model_id}",
            "sha256": hashlib.sha256(self.data).hexdigest(),
            "archive_format": "tar_gz",
        }

    def download_archive(self, model_id: int, out: WritableBytes) -> dict[str, Any]:
        self.downloads += 1
        out.write(self.data)
        return self.get_model(model_id)


class _Events:
    def __init__(self) -> None:
        self.events: list[Event] = []

    def emit(self, event: Event) -> None:
        self.events.append(event)


@pytest.fixture(scope="module", params=MODEL_FORMATS)
def model_dir(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Path:
    out = tmp_path_factory.mktemp("mlp") / "mlp"
    return build_model_dir(out, MLPConfig(hidden=16), model_format=request.param)


@pytest.mark.parametrize("action", ["batch_inference", "batch_inference_steps"])
def test_actions_match_the_model(tmp_path: Path, model_dir: Path, action: str) -> None:
    archive, _ = pack_path(model_dir, tmp_path)
    source = _Source(archive)
    backend = PlatformModelBackend(source, ModelCache(tmp_path / "cache"))
    rng = random.Random(1)
    inputs = [[rng.uniform(-1, 1) for _ in range(3)] for _ in range(50)]
    sink = _Events()
    plugin = load_plugin(PLUGIN_DIR)
    result = run_action(
        plugin.get_action_class(action),
        {"model_id": 7, "inputs": [{"data": x} for x in inputs], "batch_size": 8},
        RunContext(sink=sink, model_backend=backend),
    )
    assert result["processed_count"] == 50
    expected = reference_outputs(model_dir, inputs)
    got = [r["prediction"] for r in result["results"]]
    assert len(got) == len(expected)
    for row, want in zip(got, expected, strict=True):
        assert row == pytest.approx(want, abs=1e-6)
    inference = [
        e for e in sink.events if isinstance(e, ProgressEvent) and e.category == "inference"
    ]
    assert [(e.current, e.total) for e in inference][-7:] == [(i, 7) for i in range(1, 8)]
    overall = [e.overall for e in sink.events if isinstance(e, ProgressEvent)]
    assert overall == sorted(overall) and overall[-1] == pytest.approx(100.0)
    if action == "batch_inference_steps":
        assert all(r["label"] in (0, 1) for r in result["results"])
    # A second run on the same machine finds the model in the cache.
    run_action(
        plugin.get_action_class(action),
        {"model_id": 7, "inputs": [{"data": [1, 2, 3]}]},
        RunContext(model_backend=backend),
    )
    assert source.downloads == 1
