"""ModelService over the model registry: convert the request, await the core, convert back.

Domain errors are turned into status codes by the gRPC layer's single mapping
(``map_errors``). The caller's tenant comes from the auth interceptor (``current_principal``)
unless a ``tenant_of`` resolver is given.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable

import grpc
from synapse.plugin.v1 import model_service_pb2, model_service_pb2_grpc

from synapse_server.core import InvalidArgumentError
from synapse_server.core.models import ModelRegistryService
from synapse_server.grpc._auth import current_principal
from synapse_server.grpc._errors import map_errors
from synapse_server.grpc._model_converters import (
    list_models_response,
    model_to_pb,
    upload_spec_from_pb,
)
from synapse_server.grpc._streams import writes_through

__all__ = ["ModelServicer"]

logger = logging.getLogger(__name__)

TenantResolver = Callable[[grpc.aio.ServicerContext], str]


def _model_id(value: int) -> int:
    if value <= 0:
        raise InvalidArgumentError("model_id is required (a positive integer)", field="model_id")
    return value


class ModelServicer(model_service_pb2_grpc.ModelServiceServicer):
    """Thin gRPC face of :class:`ModelRegistryService`."""

    def __init__(
        self, registry: ModelRegistryService, tenant_of: TenantResolver | None = None
    ) -> None:
        self._registry = registry
        self._tenant_of = tenant_of or (lambda _context: current_principal().tenant)

    @map_errors
    async def RegisterModel(  # type: ignore[override]  # noqa: N802
        self,
        request_iterator: AsyncIterator[model_service_pb2.RegisterModelRequest],
        context: grpc.aio.ServicerContext,
    ) -> model_service_pb2.RegisterModelResponse:
        """Metadata first, then archive chunks; the archive is stored and validated."""
        tenant = self._tenant_of(context)
        stream = aiter(request_iterator)
        first = await anext(stream, None)
        if first is None or first.WhichOneof("kind") != "info":
            raise InvalidArgumentError("the first RegisterModel message must carry info")
        spec = upload_spec_from_pb(first.info)

        async def chunks() -> AsyncIterator[bytes]:
            async for message in stream:
                if message.WhichOneof("kind") != "chunk":
                    raise InvalidArgumentError("only the first RegisterModel message carries info")
                yield message.chunk

        record = await self._registry.register(tenant, spec, chunks())
        return model_service_pb2.RegisterModelResponse(model=model_to_pb(record))

    @map_errors
    async def GetModel(  # type: ignore[override]  # noqa: N802
        self, request: model_service_pb2.GetModelRequest, context: grpc.aio.ServicerContext
    ) -> model_service_pb2.GetModelResponse:
        """One model's metadata."""
        record = await self._registry.get(self._tenant_of(context), _model_id(request.model_id))
        return model_service_pb2.GetModelResponse(model=model_to_pb(record))

    @map_errors
    async def ListModels(  # type: ignore[override]  # noqa: N802
        self, request: model_service_pb2.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> model_service_pb2.ListModelsResponse:
        """The caller's models, newest first."""
        page = await self._registry.list(
            self._tenant_of(context),
            name=request.name,
            page_size=request.page_size,
            page_token=request.page_token,
        )
        return list_models_response(page)

    @map_errors
    @writes_through
    async def DownloadModel(  # type: ignore[override]  # noqa: N802
        self, request: model_service_pb2.DownloadModelRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[model_service_pb2.DownloadModelResponse]:
        """The model, then its archive in chunks."""
        record, chunks = await self._registry.download(
            self._tenant_of(context), _model_id(request.model_id), request.chunk_size_bytes
        )
        yield model_service_pb2.DownloadModelResponse(model=model_to_pb(record))
        async for chunk in chunks:
            yield model_service_pb2.DownloadModelResponse(chunk=chunk)

    @map_errors
    async def DeleteModel(  # type: ignore[override]  # noqa: N802
        self, request: model_service_pb2.DeleteModelRequest, context: grpc.aio.ServicerContext
    ) -> model_service_pb2.DeleteModelResponse:
        """Delete a model (and its artifact once unshared)."""
        await self._registry.delete(self._tenant_of(context), _model_id(request.model_id))
        return model_service_pb2.DeleteModelResponse()
