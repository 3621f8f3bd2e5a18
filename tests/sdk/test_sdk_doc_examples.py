"""The reference document's inference examples run unchanged against the SDK."""

from __future__ import annotations

import json
from typing import Any

import pytest
import torch
from conftest import MODEL_ID
from synapse_sdk.errors import ActionFailedError
from synapse_sdk.events import ProgressEvent, StepFinishedEvent, StepStartedEvent, StepStatus
from synapse_sdk.plugins import LocalModelBackend, Plugin
from synapse_sdk.testing import ActionEnvironment


def _expected(model: Any, values: list[int]) -> list[float]:
    with torch.no_grad():
        return model(torch.tensor(values).float()).tolist()


def _assert_close(actual: list[float], expected: list[float]) -> None:
    assert actual == pytest.approx(expected, rel=1e-6, abs=1e-6)


def test_simple_mode_example(
    doc_plugin: Plugin, model_backend: LocalModelBackend, reference_model: Any
) -> None:
    env = ActionEnvironment(model_backend=model_backend)
    inputs = [{"tensor": [1, 2, 3]}, {"tensor": [4, 5, 6]}]
    result = env.run(
        doc_plugin.get_action_class("inference"), {"model_id": MODEL_ID, "inputs": inputs}
    )
    json.dumps(result)
    assert len(result["results"]) == 2
    for item, inp in zip(result["results"], inputs, strict=True):
        _assert_close(item["prediction"], _expected(reference_model, inp["tensor"]))
    progress = env.progress_events()
    assert [(p.category, p.current, p.total) for p in progress] == [
        ("model_load", 1, 3),
        ("inference", 2, 3),
        ("postprocess", 3, 3),
    ]
    assert [p.overall for p in progress] == pytest.approx([100 / 3, 200 / 3, 100.0])


def test_step_based_example(
    doc_plugin: Plugin, model_backend: LocalModelBackend, reference_model: Any
) -> None:
    env = ActionEnvironment(model_backend=model_backend)
    inputs = [{"input": [1, 2, 3]}, {"input": [0, -1, 7]}, {"input": [2, 2, 2]}]
    result = env.run(
        doc_plugin.get_action_class("inference_steps"), {"model_id": MODEL_ID, "inputs": inputs}
    )
    json.dumps(result)
    assert result["processed_count"] == 3
    assert [step["name"] for step in result["steps"]] == ["load_model", "inference"]
    assert all(step["status"] == "succeeded" for step in result["steps"])
    for item, inp in zip(result["results"], inputs, strict=True):
        # The step appends the raw tensor; the runner converts it to a list.
        _assert_close(item["prediction"], _expected(reference_model, inp["input"]))

    started = [e for e in env.events if isinstance(e, StepStartedEvent)]
    assert [(e.name, e.weight) for e in started] == [
        ("load_model", pytest.approx(0.3)),
        ("inference", pytest.approx(0.7)),
    ]
    finished = [e for e in env.events if isinstance(e, StepFinishedEvent)]
    assert [(e.name, e.status) for e in finished] == [
        ("load_model", StepStatus.SUCCEEDED),
        ("inference", StepStatus.SUCCEEDED),
    ]
    overall = [e.overall for e in env.events if isinstance(e, ProgressEvent)]
    assert overall == sorted(overall)
    # Model resolution happens before the first step and does not move the bar.
    model_load = [e for e in env.progress_events() if e.category == "model_load"]
    assert [e.overall for e in model_load] == [0.0, 0.0]
    assert pytest.approx(30.0) in overall
    assert overall[-1] == 100.0


def test_batch_inference_example(
    doc_plugin: Plugin, model_backend: LocalModelBackend, reference_model: Any
) -> None:
    env = ActionEnvironment(model_backend=model_backend)
    inputs = [{"data": [i, i + 1, i + 2]} for i in range(5)]
    result = env.run(
        doc_plugin.get_action_class("batch_inference"),
        {"model_id": MODEL_ID, "inputs": inputs, "batch_size": 2},
    )
    assert result["processed_count"] == 5
    for item, inp in zip(result["results"], inputs, strict=True):
        _assert_close(item["prediction"], _expected(reference_model, inp["data"]))
    assert env.progress_events()[-1].overall == 100.0


def test_step_example_without_model_fails_with_original_error(doc_plugin: Plugin) -> None:
    # No model backend: the context's model_path stays None (a warning is logged), and the
    # doc's LoadModelStep fails on its torch.load; the failure keeps type and traceback.
    env = ActionEnvironment()
    with pytest.raises(ActionFailedError) as info:
        env.run(
            doc_plugin.get_action_class("inference_steps"),
            {"model_id": MODEL_ID, "inputs": [{"input": [1, 2, 3]}]},
        )
    assert info.value.step == "load_model"
    assert info.value.error.type == "FileNotFoundError"
    assert "torch.load(f'{model_path}/model.pt')" in info.value.error.traceback
    assert next(e.event for e in env.log_events()) == "model_backend_unavailable"
