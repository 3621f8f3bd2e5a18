"""BaseAction reporting, params validation, results and the inference helpers."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pytest
import synapse_sdk
import synapse_sdk.plugins
import synapse_sdk.plugins.actions.inference
import synapse_sdk.plugins.steps
import synapse_sdk.testing
import torch
from pydantic import BaseModel, Field
from synapse_sdk.errors import (
    ActionCancelledError,
    ActionFailedError,
    ModelBackendUnavailableError,
    ModelNotFoundError,
    ParamsValidationError,
    ProgressError,
)
from synapse_sdk.events import LogEvent, LogLevel, MetricEvent
from synapse_sdk.plugins import BaseAction, LocalModelBackend, params_json_schema, run_action
from synapse_sdk.plugins.actions.inference import (
    BaseDeploymentAction,
    BaseInferenceAction,
    DeploymentContext,
    InferenceContext,
    ModelPath,
)
from synapse_sdk.runtime import RunContext
from synapse_sdk.testing import ActionEnvironment, RecordingSink


class Item(BaseModel):
    data: list[int]


class Params(BaseModel):
    count: int = Field(ge=1)
    items: list[Item] = []
    mode: str = "ok"


class ReportingAction(BaseAction[Params]):
    action_name = "report"

    def execute(self) -> dict[str, Any]:
        if self.params.mode == "raise":
            helper_that_fails()
        if self.params.mode == "progress":
            self.set_progress(5, 3, "x")
        if self.params.mode == "object":
            return {"nested": {"thing": object()}}
        if self.params.mode == "cancel":
            self.run_context.cancel_event.set()
            self.raise_if_cancelled()
        self.log("started", {"count": self.params.count}, level="warning")
        for i in range(1, self.params.count + 1):
            self.set_progress(i, self.params.count, "work")
        self.set_metrics({"loss": torch.tensor(0.5)}, category="train", epoch=1)
        return {"tensor": torch.tensor([[1, 2], [3, 4]]), "path": Path("/x"), "n": 1}


def helper_that_fails() -> None:
    raise ZeroDivisionError("division by zero in helper")


def test_reporting_goes_to_the_run_sink() -> None:
    env = ActionEnvironment()
    result = env.run(ReportingAction, {"count": 4})
    assert result == {"tensor": [[1, 2], [3, 4]], "path": "/x", "n": 1}
    assert [e.overall for e in env.progress_events()] == [25, 50, 75, 100]
    assert env.log_events() == [LogEvent("started", {"count": 4}, LogLevel.WARNING)]
    assert env.metric_events() == [MetricEvent("train", {"loss": 0.5, "epoch": 1})]


def test_run_action_with_explicit_context_and_threads() -> None:
    sinks = [RecordingSink(), RecordingSink()]
    results: list[dict[str, Any]] = []

    def worker(sink: RecordingSink, count: int) -> None:
        results.append(run_action(ReportingAction, {"count": count}, RunContext(sink=sink)))

    threads = [
        threading.Thread(target=worker, args=(s, n)) for s, n in zip(sinks, (2, 5), strict=True)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert len(results) == 2
    assert len([e for e in sinks[0].events if type(e).__name__ == "ProgressEvent"]) == 2
    assert len([e for e in sinks[1].events if type(e).__name__ == "ProgressEvent"]) == 5


def test_bad_params_list_every_field() -> None:
    with pytest.raises(ParamsValidationError) as info:
        run_action(ReportingAction, {"count": 0, "items": [{"data": [1]}, {"data": ["x"]}]})
    fields = [v.field for v in info.value.violations]
    assert fields == ["count", "items.1.data.0"]
    assert "count: Input should be greater than or equal to 1" in str(info.value)
    with pytest.raises(ParamsValidationError, match=r"\(params\)"):
        run_action(ReportingAction, [1, 2])  # type: ignore[arg-type]


def test_failure_keeps_type_message_and_traceback() -> None:
    with pytest.raises(ActionFailedError) as info:
        ActionEnvironment().run(ReportingAction, {"count": 1, "mode": "raise"})
    err = info.value.error
    assert err.type == "ZeroDivisionError"
    assert err.message == "division by zero in helper"
    assert "helper_that_fails" in err.traceback
    assert info.value.step is None
    json.dumps(err.to_dict())


def test_bad_progress_is_a_clear_error() -> None:
    with pytest.raises(ActionFailedError) as info:
        ActionEnvironment().run(ReportingAction, {"count": 1, "mode": "progress"})
    assert info.value.error.type == "synapse_sdk.errors.ProgressError"
    assert "between 0 and total (3), got 5" in info.value.error.message
    action = ReportingAction({"count": 1})
    with pytest.raises(ProgressError, match="total must be a positive integer"):
        action.set_progress(0, 0)
    with pytest.raises(ValueError, match="got -1"):
        action.set_progress(-1, 3)


def test_non_serialisable_result_names_the_key() -> None:
    with pytest.raises(ActionFailedError, match=r"result\.nested\.thing"):
        ActionEnvironment().run(ReportingAction, {"count": 1, "mode": "object"})


def test_plugin_code_can_see_cancellation() -> None:
    with pytest.raises(ActionCancelledError):
        ActionEnvironment().run(ReportingAction, {"count": 1, "mode": "cancel"})


def test_params_json_schema() -> None:
    schema = params_json_schema(ReportingAction)
    assert schema["required"] == ["count"]
    assert schema["properties"]["count"]["minimum"] == 1


class ModelParams(BaseModel):
    model_id: int | str


class ModelAction(BaseInferenceAction[ModelParams]):
    action_name = "model"

    def execute(self) -> dict[str, Any]:
        info = self.load_model(self.params.model_id)
        downloaded = self.download_model(self.params.model_id)
        path = info["path"]
        return {
            "is_str": isinstance(path, str),
            "joined": str(path / "model.pt"),
            "concat": path + "/model.pt",
            "downloaded": sorted(p.name for p in downloaded.iterdir()),
            "name": self.get_model(self.params.model_id)["name"],
        }


def test_model_helpers_with_local_backend(models_root: Path) -> None:
    env = ActionEnvironment(model_backend=LocalModelBackend(root=models_root))
    result = env.run(ModelAction, {"model_id": 42})
    assert result["is_str"] is True
    assert result["joined"] == result["concat"] == str(models_root / "42" / "model.pt")
    assert result["downloaded"] == ["model.pt"]
    assert result["name"] == "42"


def test_model_helpers_errors(models_root: Path) -> None:
    with pytest.raises(ActionFailedError) as info:
        ActionEnvironment().run(ModelAction, {"model_id": 42})
    assert isinstance(info.value.__cause__, ModelBackendUnavailableError)
    with pytest.raises(ActionFailedError) as info:
        ActionEnvironment(model_backend=LocalModelBackend(root=models_root)).run(
            ModelAction, {"model_id": "../etc"}
        )
    assert isinstance(info.value.__cause__, ModelNotFoundError)
    assert isinstance(info.value.__cause__, ValueError)


def test_model_path_behaves_as_str_and_path(tmp_path: Path) -> None:
    path = ModelPath(str(tmp_path))
    assert path + "/m.pt" == f"{tmp_path}/m.pt"
    assert path / "m.pt" == tmp_path / "m.pt"
    assert Path(path) == tmp_path
    assert json.dumps({"p": path}) == json.dumps({"p": str(tmp_path)})


def test_context_fields_and_defaults_match_the_document() -> None:
    ctx = InferenceContext()
    assert (ctx.params, ctx.model_id, ctx.model, ctx.model_path) == ({}, None, None, None)
    assert (ctx.requests, ctx.results, ctx.batch_size, ctx.processed_count) == ([], [], 1, 0)
    positional = InferenceContext({"a": 1}, 5)
    assert positional.model_id == 5
    dep = DeploymentContext()
    assert (dep.serve_app_name, dep.serve_app_id, dep.route_prefix) == (None, None, None)
    assert (dep.ray_actor_options, dep.deployed) == ({}, False)
    assert BaseInferenceAction.progress.MODEL_LOAD == "model_load"
    assert BaseInferenceAction.progress.INFERENCE == "inference"
    assert BaseInferenceAction.progress.POSTPROCESS == "postprocess"
    assert BaseDeploymentAction.progress.INITIALIZE == "initialize"
    assert BaseDeploymentAction.progress.DEPLOY == "deploy"
    assert BaseDeploymentAction.progress.REGISTER == "register"


class DeployParams(BaseModel):
    model: int
    num_gpus: int = 1
    num_cpus: float | None = None
    memory: int = 0


class DeployAction(BaseDeploymentAction[DeployParams]):
    action_name = "deployment"


def test_deployment_configuration(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SYNAPSE_PLUGIN_RELEASE_CODE", raising=False)
    monkeypatch.delenv("SYNAPSE_PLUGIN_RELEASE_CHECKSUM", raising=False)
    action = DeployAction({"model": 1, "num_gpus": 0})
    assert action.get_ray_actor_options() == {"num_gpus": 0, "memory": 0}
    assert action.get_runtime_env() == {}
    assert action.get_route_prefix() is None
    assert action.get_serve_app_name() == "deployment"
    monkeypatch.setenv("SYNAPSE_PLUGIN_RELEASE_CODE", "release-7")
    monkeypatch.setenv("SYNAPSE_PLUGIN_RELEASE_CHECKSUM", "abc123")
    assert action.get_serve_app_name() == "release-7"
    assert action.get_route_prefix() == "abc123"


def test_public_exports_are_pinned() -> None:
    assert set(synapse_sdk.plugins.actions.inference.__all__) >= {
        "BaseInferenceAction",
        "BaseDeploymentAction",
        "InferenceContext",
        "DeploymentContext",
        "DeploymentProgressCategories",
    }
    assert set(synapse_sdk.plugins.steps.__all__) >= {
        "BaseStep",
        "BaseStepContext",
        "StepRegistry",
        "StepResult",
    }
    assert set(synapse_sdk.plugins.__all__) >= {
        "ActionSpec",
        "BaseAction",
        "Plugin",
        "PluginCategory",
        "discover_plugins",
        "load_plugin",
        "params_json_schema",
        "params_model",
        "plugin_directories",
        "run_action",
        "unload_plugin",
    }
    assert set(synapse_sdk.testing.__all__) >= {"ActionEnvironment", "LocalModelBackend"}
    for module in (synapse_sdk, synapse_sdk.plugins, synapse_sdk.testing):
        for name in module.__all__:
            assert hasattr(module, name), f"{module.__name__}.{name}"
