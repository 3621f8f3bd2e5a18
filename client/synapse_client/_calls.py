"""The sans-IO half of both clients: what each RPC sends and how its answer is read.

A call is plain data: the stub and method to use, the request message, and the function that
turns the response into what the public method returns. Building one validates the caller's
arguments (raising :class:`ClientConfigError` before anything is sent). The two drivers in
``_core`` only perform calls, :class:`~synapse_client.Client` with a blocking stub call and
:class:`~synapse_client.AsyncClient` with an awaited grpc.aio one, so the request building
and result handling of the two clients cannot drift apart.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from synapse.plugin.v1 import (
    action_service_pb2,
    action_service_pb2_grpc,
    dataset_service_pb2,
    dataset_service_pb2_grpc,
    deployment_service_pb2,
    deployment_service_pb2_grpc,
    inference_service_pb2,
    inference_service_pb2_grpc,
    job_pb2,
    model_service_pb2,
    model_service_pb2_grpc,
)

from ._converters import job_from_proto, job_states_to_proto, plugin_from_proto
from ._datasets import DatasetInfo, dataset_from_proto
from ._inference import (
    UNSET_JSON,
    DeploymentInfo,
    InferResult,
    _deployment,
    _result,
    build_infer_request,
    build_infer_stream_request,
)
from ._jobs import run_action_request
from ._models import ModelInfo, model_from_proto
from ._types import Job, JobState, PluginInfo, RunMode

logger = logging.getLogger(__name__)

__all__ = [
    "PagedCall",
    "StreamCall",
    "UnaryCall",
    "UploadCall",
    "cancel_job",
    "delete_dataset",
    "delete_deployment",
    "delete_model",
    "download_dataset",
    "download_model",
    "get_dataset",
    "get_deployment",
    "get_job",
    "get_job_result",
    "get_model",
    "infer",
    "infer_stream",
    "infer_stream_item",
    "list_actions",
    "list_datasets",
    "list_deployments",
    "list_job_outputs",
    "list_jobs",
    "list_models",
    "register_deployment",
    "register_model",
    "run_action",
    "stream_progress",
    "upload_dataset",
]

T = TypeVar("T")

_ACTIONS = action_service_pb2_grpc.ActionServiceStub
_MODELS = model_service_pb2_grpc.ModelServiceStub
_INFERENCE = inference_service_pb2_grpc.InferenceServiceStub
_DEPLOYMENTS = deployment_service_pb2_grpc.DeploymentServiceStub
_DATASETS = dataset_service_pb2_grpc.DatasetServiceStub
#: ListDeployments answers one page of up to this many (the newest).
_DEPLOYMENTS_PAGE = 1000


@dataclass(frozen=True, slots=True)
class UnaryCall(Generic[T]):
    """One unary RPC. Drivers retry it on UNAVAILABLE: every request built here is idempotent
    (RunAction's carries a request_id)."""

    stub: Callable[[Any], Any]
    method: str
    request: Any
    parse: Callable[[Any], T]
    #: The call's deadline in seconds; None: the client's default deadline.
    timeout: float | None = None


@dataclass(frozen=True, slots=True)
class PagedCall(Generic[T]):
    """A listing RPC whose pages the drivers fetch as the caller's iteration reaches them."""

    stub: Callable[[Any], Any]
    method: str
    request: Any
    items: Callable[[Any], Iterable[T]]

    def next_request(self, request: Any, response: Any) -> Any | None:
        """The request for the page after ``response``, or None when it was the last one."""
        if not response.next_page_token:
            return None
        following = type(request)()
        following.CopyFrom(request)
        following.page_token = response.next_page_token
        return following


@dataclass(frozen=True, slots=True)
class StreamCall:
    """One server-streaming RPC; the caller feeds its messages to a sans-IO consumer."""

    stub: Callable[[Any], Any]
    method: str
    request: Any
    #: Seconds until the deadline; None: no deadline (streams have no default one).
    timeout: float | None = None


@dataclass(frozen=True, slots=True)
class UploadCall(Generic[T]):
    """One client-streaming RPC: the driver sends the request stream and parses the answer."""

    stub: Callable[[Any], Any]
    method: str
    parse: Callable[[Any], T]
    #: Seconds until the deadline; None: no deadline (an upload's length depends on its size).
    timeout: float | None = None


# --- ActionService -----------------------------------------------------------------------------


def _plugins(response: action_service_pb2.ListActionsResponse) -> list[PluginInfo]:
    return [plugin_from_proto(p) for p in response.plugins]


def _started_job(response: action_service_pb2.RunActionResponse) -> tuple[Job, bool]:
    return job_from_proto(response.job), response.created


def _job(response: Any) -> Job:
    return job_from_proto(response.job)


def _jobs(response: action_service_pb2.ListJobsResponse) -> Iterable[Job]:
    return (job_from_proto(message) for message in response.jobs)


def list_actions(plugin: str | None) -> UnaryCall[list[PluginInfo]]:
    """ListActions for every installed plugin, or just ``plugin``."""
    request = action_service_pb2.ListActionsRequest(plugin=plugin or "")
    return UnaryCall(_ACTIONS, "ListActions", request, _plugins)


def run_action(
    plugin: str,
    action: str,
    params: dict[str, Any] | None,
    mode: RunMode | str | None,
    request_id: str | None,
) -> UnaryCall[tuple[Job, bool]]:
    """RunAction; answers the job and whether this request created it."""
    request = run_action_request(plugin, action, params, mode, request_id)
    return UnaryCall(_ACTIONS, "RunAction", request, _started_job)


def get_job(job_id: str, timeout: float | None, with_params: bool) -> UnaryCall[Job]:
    """GetJob, with the job's params (FULL view) or without them (BASIC view)."""
    view = job_pb2.JOB_VIEW_FULL if with_params else job_pb2.JOB_VIEW_BASIC
    request = action_service_pb2.GetJobRequest(job_id=job_id, view=view)
    return UnaryCall(_ACTIONS, "GetJob", request, _job, timeout)


def list_jobs(
    state: JobState | str | list[JobState | str] | None,
    plugin: str | None,
    action: str | None,
    page_size: int,
) -> PagedCall[Job]:
    """ListJobs, filtered by state(s), plugin and action."""
    request = action_service_pb2.ListJobsRequest(
        states=job_states_to_proto(state),  # type: ignore[arg-type]
        plugin=plugin or "",
        action=action or "",
        page_size=page_size,
    )
    return PagedCall(_ACTIONS, "ListJobs", request, _jobs)


def cancel_job(job_id: str, reason: str) -> UnaryCall[Job]:
    """CancelJob; answers the job as it is right after."""
    request = action_service_pb2.CancelJobRequest(job_id=job_id, reason=reason)
    return UnaryCall(_ACTIONS, "CancelJob", request, _job)


def stream_progress(
    request: action_service_pb2.StreamProgressRequest, timeout: float | None
) -> StreamCall:
    """StreamProgress (the request comes from an ``EventSequencer``)."""
    return StreamCall(_ACTIONS, "StreamProgress", request, timeout)


def get_job_result(job_id: str, timeout: float | None) -> StreamCall:
    """GetJobResult: the result's JSON bytes in chunks, for a ``ResultAssembler``."""
    request = action_service_pb2.GetJobResultRequest(job_id=job_id)
    return StreamCall(_ACTIONS, "GetJobResult", request, timeout)


# --- ModelService ------------------------------------------------------------------------------


def _model(response: Any) -> ModelInfo:
    return model_from_proto(response.model)


def _models(response: model_service_pb2.ListModelsResponse) -> Iterable[ModelInfo]:
    return (model_from_proto(message) for message in response.models)


def _nothing(response: Any) -> None:
    return None


def register_model(timeout: float | None) -> UploadCall[ModelInfo]:
    """RegisterModel; its request stream comes from a ``ModelUpload``."""
    return UploadCall(_MODELS, "RegisterModel", _model, timeout)


def get_model(model_id: int, timeout: float | None) -> UnaryCall[ModelInfo]:
    """GetModel."""
    request = model_service_pb2.GetModelRequest(model_id=model_id)
    return UnaryCall(_MODELS, "GetModel", request, _model, timeout)


def list_models(name: str | None, page_size: int) -> PagedCall[ModelInfo]:
    """ListModels, optionally of one name."""
    request = model_service_pb2.ListModelsRequest(name=name or "", page_size=page_size)
    return PagedCall(_MODELS, "ListModels", request, _models)


def download_model(model_id: int, chunk_size: int, timeout: float | None) -> StreamCall:
    """DownloadModel: the model's header then its archive in chunks, for a ``ModelDownload``."""
    request = model_service_pb2.DownloadModelRequest(model_id=model_id, chunk_size_bytes=chunk_size)
    return StreamCall(_MODELS, "DownloadModel", request, timeout)


def delete_model(model_id: int, timeout: float | None) -> UnaryCall[None]:
    """DeleteModel."""
    request = model_service_pb2.DeleteModelRequest(model_id=model_id)
    return UnaryCall(_MODELS, "DeleteModel", request, _nothing, timeout)


# --- DatasetService ----------------------------------------------------------------------------


def _dataset(response: Any) -> DatasetInfo:
    return dataset_from_proto(response.dataset)


def _datasets(response: dataset_service_pb2.ListDatasetsResponse) -> Iterable[DatasetInfo]:
    return (dataset_from_proto(message) for message in response.datasets)


def _outputs(response: dataset_service_pb2.ListJobOutputsResponse) -> list[DatasetInfo]:
    return [dataset_from_proto(message) for message in response.outputs]


def upload_dataset(timeout: float | None) -> UploadCall[DatasetInfo]:
    """UploadDataset; its request stream comes from a ``DatasetUpload``."""
    return UploadCall(_DATASETS, "UploadDataset", _dataset, timeout)


def get_dataset(dataset_id: str, timeout: float | None) -> UnaryCall[DatasetInfo]:
    """GetDataset."""
    request = dataset_service_pb2.GetDatasetRequest(dataset_id=dataset_id)
    return UnaryCall(_DATASETS, "GetDataset", request, _dataset, timeout)


def list_datasets(name: str | None, page_size: int) -> PagedCall[DatasetInfo]:
    """ListDatasets, optionally of one name."""
    request = dataset_service_pb2.ListDatasetsRequest(name=name or "", page_size=page_size)
    return PagedCall(_DATASETS, "ListDatasets", request, _datasets)


def download_dataset(dataset_id: str, chunk_size: int, timeout: float | None) -> StreamCall:
    """DownloadDataset: the dataset's header then its file in chunks (``DatasetDownload``)."""
    request = dataset_service_pb2.DownloadDatasetRequest(
        dataset_id=dataset_id, chunk_size_bytes=chunk_size
    )
    return StreamCall(_DATASETS, "DownloadDataset", request, timeout)


def delete_dataset(dataset_id: str, timeout: float | None) -> UnaryCall[None]:
    """DeleteDataset."""
    request = dataset_service_pb2.DeleteDatasetRequest(dataset_id=dataset_id)
    return UnaryCall(_DATASETS, "DeleteDataset", request, _nothing, timeout)


def list_job_outputs(job_id: str, timeout: float | None) -> UnaryCall[list[DatasetInfo]]:
    """ListJobOutputs."""
    request = dataset_service_pb2.ListJobOutputsRequest(job_id=job_id)
    return UnaryCall(_DATASETS, "ListJobOutputs", request, _outputs, timeout)


# --- InferenceService and DeploymentService ----------------------------------------------------


def infer(
    application: str | None,
    *,
    plugin: str | None,
    action: str | None,
    model: int | str | None,
    json: Any = UNSET_JSON,
    json_text: str | bytes | None = None,
    tensors: Mapping[str, Any] | None,
    method: str,
    path: str,
    request_id: str | None,
    timeout: float | None,
) -> UnaryCall[InferResult]:
    """Infer: JSON payload and/or binary tensors in, an :class:`InferResult` out."""
    request = build_infer_request(
        application,
        plugin=plugin,
        action=action,
        model=model,
        json=json,
        json_text=json_text,
        tensors=tensors,
        method=method,
        path=path,
        request_id=request_id,
    )
    return UnaryCall(_INFERENCE, "Infer", request, _result, timeout)


def infer_stream(
    application: str | None,
    *,
    plugin: str | None,
    action: str | None,
    model: int | str | None,
    json: Any = UNSET_JSON,
    json_text: str | bytes | None = None,
    tensors: Mapping[str, Any] | None,
    method: str,
    path: str,
    request_id: str | None,
    timeout: float | None,
) -> StreamCall:
    """InferStream: the same request as Infer; each message is read by
    :func:`infer_stream_item`."""
    request = build_infer_stream_request(
        application,
        plugin=plugin,
        action=action,
        model=model,
        json=json,
        json_text=json_text,
        tensors=tensors,
        method=method,
        path=path,
        request_id=request_id,
    )
    return StreamCall(_INFERENCE, "InferStream", request, timeout)


def infer_stream_item(response: inference_service_pb2.InferStreamResponse) -> InferResult:
    """One InferStream message as the item's :class:`InferResult`."""
    return _result(response.item)


def _deployment_of(response: Any) -> DeploymentInfo:
    return _deployment(response.deployment)


def _deployments(response: deployment_service_pb2.ListDeploymentsResponse) -> list[DeploymentInfo]:
    return [_deployment(d) for d in response.deployments]


def _registered(
    response: deployment_service_pb2.RegisterDeploymentResponse,
) -> tuple[DeploymentInfo, bool]:
    return _deployment(response.deployment), response.created


def list_deployments(plugin: str | None, name: str | None) -> UnaryCall[list[DeploymentInfo]]:
    """ListDeployments: the first page (the newest), filtered by plugin and name."""
    request = deployment_service_pb2.ListDeploymentsRequest(
        plugin=plugin or "", name=name or "", page_size=_DEPLOYMENTS_PAGE
    )
    return UnaryCall(_DEPLOYMENTS, "ListDeployments", request, _deployments)


def get_deployment(deployment_id: int) -> UnaryCall[DeploymentInfo]:
    """GetDeployment."""
    request = deployment_service_pb2.GetDeploymentRequest(deployment_id=deployment_id)
    return UnaryCall(_DEPLOYMENTS, "GetDeployment", request, _deployment_of)


def delete_deployment(deployment_id: int) -> UnaryCall[DeploymentInfo]:
    """DeleteDeployment."""
    request = deployment_service_pb2.DeleteDeploymentRequest(deployment_id=deployment_id)
    return UnaryCall(_DEPLOYMENTS, "DeleteDeployment", request, _deployment_of)


def register_deployment(
    name: str,
    plugin: str,
    action: str,
    *,
    job_id: str,
    route_prefix: str,
    model_ids: list[int] | None,
    ray_actor_options: Mapping[str, Any] | None,
    endpoint_action: str,
) -> UnaryCall[tuple[DeploymentInfo, bool]]:
    """RegisterDeployment; answers the record and whether this call created it."""
    request = deployment_service_pb2.RegisterDeploymentRequest(
        name=name,
        plugin=plugin,
        action=action,
        job_id=job_id,
        route_prefix=route_prefix,
        model_ids=list(model_ids or ()),
        endpoint_action=endpoint_action,
    )
    if ray_actor_options:
        request.ray_actor_options.update(dict(ray_actor_options))
    return UnaryCall(_DEPLOYMENTS, "RegisterDeployment", request, _registered)
