"""DatasetService over the dataset registry: convert the request, await the core, convert back.

Domain errors become status codes in the gRPC layer's single mapping (``map_errors``). The
caller's tenant comes from the auth interceptor (``current_principal``); a job's worker may
read its tenant's datasets (the credential's tenant) but not change them.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable

import grpc
from synapse.plugin.v1 import dataset_service_pb2, dataset_service_pb2_grpc

from synapse_server.core import InvalidArgumentError
from synapse_server.core.datasets import DatasetRegistryService
from synapse_server.grpc._auth import current_principal
from synapse_server.grpc._dataset_converters import (
    dataset_to_pb,
    list_datasets_response,
    upload_spec_from_pb,
)
from synapse_server.grpc._errors import map_errors
from synapse_server.grpc._streams import writes_through

__all__ = ["DatasetServicer", "upload_chunks"]

logger = logging.getLogger(__name__)

TenantResolver = Callable[[grpc.aio.ServicerContext], str]
#: Raises JobNotFoundError unless the job exists and is the tenant's: ``(tenant, job_id)``.
JobCheck = Callable[[str, str], Awaitable[object]]


async def upload_chunks(stream: AsyncIterator[object], rpc: str) -> AsyncIterator[bytes]:
    """The ``chunk`` bytes of an upload stream's messages after the first (info) one."""
    async for message in stream:
        if message.WhichOneof("kind") != "chunk":  # type: ignore[attr-defined]
            raise InvalidArgumentError(f"only the first {rpc} message carries info")
        yield message.chunk  # type: ignore[attr-defined]


class DatasetServicer(dataset_service_pb2_grpc.DatasetServiceServicer):
    """Thin gRPC face of :class:`DatasetRegistryService`.

    ``job_check``: how ListJobOutputs checks the job is the caller's (JobService.get).
    """

    def __init__(
        self,
        registry: DatasetRegistryService,
        job_check: JobCheck,
        tenant_of: TenantResolver | None = None,
    ) -> None:
        self._registry = registry
        self._job_check = job_check
        self._tenant_of = tenant_of or (lambda _context: current_principal().tenant)

    @map_errors
    async def UploadDataset(  # type: ignore[override]  # noqa: N802
        self,
        request_iterator: AsyncIterator[dataset_service_pb2.UploadDatasetRequest],
        context: grpc.aio.ServicerContext,
    ) -> dataset_service_pb2.UploadDatasetResponse:
        """Info first, then file chunks; the file is checked and stored."""
        tenant = self._tenant_of(context)
        stream = aiter(request_iterator)
        first = await anext(stream, None)
        if first is None or first.WhichOneof("kind") != "info":
            raise InvalidArgumentError("the first UploadDataset message must carry info")
        spec = upload_spec_from_pb(first.info)
        record = await self._registry.upload(tenant, spec, upload_chunks(stream, "UploadDataset"))
        return dataset_service_pb2.UploadDatasetResponse(dataset=dataset_to_pb(record))

    @map_errors
    async def GetDataset(  # type: ignore[override]  # noqa: N802
        self, request: dataset_service_pb2.GetDatasetRequest, context: grpc.aio.ServicerContext
    ) -> dataset_service_pb2.GetDatasetResponse:
        """One dataset's metadata."""
        record = await self._registry.get(self._tenant_of(context), request.dataset_id)
        return dataset_service_pb2.GetDatasetResponse(dataset=dataset_to_pb(record))

    @map_errors
    async def ListDatasets(  # type: ignore[override]  # noqa: N802
        self, request: dataset_service_pb2.ListDatasetsRequest, context: grpc.aio.ServicerContext
    ) -> dataset_service_pb2.ListDatasetsResponse:
        """The caller's datasets, newest first."""
        page = await self._registry.list(
            self._tenant_of(context),
            name=request.name,
            page_size=request.page_size,
            page_token=request.page_token,
        )
        return list_datasets_response(page)

    @map_errors
    @writes_through
    async def DownloadDataset(  # type: ignore[override]  # noqa: N802
        self,
        request: dataset_service_pb2.DownloadDatasetRequest,
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[dataset_service_pb2.DownloadDatasetResponse]:
        """The dataset, then its file in chunks."""
        record, chunks = await self._registry.download(
            self._tenant_of(context), request.dataset_id, request.chunk_size_bytes
        )
        yield dataset_service_pb2.DownloadDatasetResponse(dataset=dataset_to_pb(record))
        async for chunk in chunks:
            yield dataset_service_pb2.DownloadDatasetResponse(chunk=chunk)

    @map_errors
    async def DeleteDataset(  # type: ignore[override]  # noqa: N802
        self, request: dataset_service_pb2.DeleteDatasetRequest, context: grpc.aio.ServicerContext
    ) -> dataset_service_pb2.DeleteDatasetResponse:
        """Delete a dataset (and its file once unshared)."""
        await self._registry.delete(self._tenant_of(context), request.dataset_id)
        return dataset_service_pb2.DeleteDatasetResponse()

    @map_errors
    async def ListJobOutputs(  # type: ignore[override]  # noqa: N802
        self,
        request: dataset_service_pb2.ListJobOutputsRequest,
        context: grpc.aio.ServicerContext,
    ) -> dataset_service_pb2.ListJobOutputsResponse:
        """The outputs a job stored (it succeeded)."""
        tenant = self._tenant_of(context)
        if not request.job_id:
            raise InvalidArgumentError("job_id is required", field="job_id")
        await self._job_check(tenant, request.job_id)
        outputs = await self._registry.job_outputs(tenant, request.job_id)
        return dataset_service_pb2.ListJobOutputsResponse(
            outputs=[dataset_to_pb(r) for r in outputs]
        )
