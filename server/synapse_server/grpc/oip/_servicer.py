"""``inference.GRPCInferenceService`` over the platform's inference core.

A thin translator, like the platform's own ``InferenceServicer``: convert the request
(``_converters``), await the core (:class:`InferenceService` for inference,
:class:`ServedModelService` for readiness and metadata) with the caller's tenant, convert the
answer back. Errors go through the one error mapping (``map_errors``), so an OIP caller gets
the same status codes and messages as an ``Infer`` caller.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from importlib import metadata

import grpc

from synapse_server.core._errors import ResourceExhaustedError
from synapse_server.core._served_models import ServedModelService
from synapse_server.core.inference import InferenceService
from synapse_server.grpc._auth import current_principal
from synapse_server.grpc._errors import map_errors, status_for
from synapse_server.grpc._requests import DEFAULT_MAX_MESSAGE_BYTES, format_bytes
from synapse_server.grpc.oip._converters import (
    model_infer_request,
    model_infer_response,
    model_metadata_response,
)
from synapse_server.grpc.oip._proto import grpc_predict_v2_pb2 as pb
from synapse_server.grpc.oip._proto import grpc_predict_v2_pb2_grpc as pb_grpc

__all__ = ["SERVER_NAME", "OpenInferenceServicer", "platform_version"]

logger = logging.getLogger(__name__)

#: The server's name in ``ServerMetadata``.
SERVER_NAME = "synapse"
#: The protocol extensions the server supports: request parameters (passed to the endpoint).
EXTENSIONS = ("parameters",)


def platform_version() -> str:
    """The installed platform's version (``unknown`` when it is not installed as a package)."""
    try:
        return metadata.version("synapse-server")
    except metadata.PackageNotFoundError:
        return "unknown"


class OpenInferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    """The Open Inference Protocol v2 face of the inference core (see the module docstring).

    ``ready`` says whether the server takes requests (False once it is shutting down);
    ``max_message_bytes`` bounds the answers, as it bounds ``Infer``'s.
    """

    def __init__(
        self,
        inference: InferenceService,
        models: ServedModelService,
        *,
        ready: Callable[[], bool] = lambda: True,
        version: str | None = None,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    ) -> None:
        self._inference = inference
        self._models = models
        self._ready = ready
        self._version = version if version is not None else platform_version()
        self._max_message_bytes = max_message_bytes

    @map_errors
    async def ServerLive(  # type: ignore[override]  # noqa: N802
        self, request: pb.ServerLiveRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerLiveResponse:
        """Live whenever it answers."""
        return pb.ServerLiveResponse(live=True)

    @map_errors
    async def ServerReady(  # type: ignore[override]  # noqa: N802
        self, request: pb.ServerReadyRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerReadyResponse:
        """Ready until the server starts shutting down."""
        return pb.ServerReadyResponse(ready=self._ready())

    @map_errors
    async def ServerMetadata(  # type: ignore[override]  # noqa: N802
        self, request: pb.ServerMetadataRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerMetadataResponse:
        """The platform's name, version and the protocol extensions it supports."""
        return pb.ServerMetadataResponse(
            name=SERVER_NAME, version=self._version, extensions=list(EXTENSIONS)
        )

    @map_errors
    async def ModelReady(  # type: ignore[override]  # noqa: N802
        self, request: pb.ModelReadyRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelReadyResponse:
        """Whether the serve application runs and the version names a visible model."""
        ready = await self._models.ready(current_principal().tenant, request.name, request.version)
        return pb.ModelReadyResponse(ready=ready)

    @map_errors
    async def ModelMetadata(  # type: ignore[override]  # noqa: N802
        self, request: pb.ModelMetadataRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelMetadataResponse:
        """What the platform knows of the serve application as a model."""
        model = await self._models.describe(
            current_principal().tenant, request.name, request.version
        )
        return model_metadata_response(model)

    @map_errors
    async def ModelInfer(  # type: ignore[override]  # noqa: N802
        self, request: pb.ModelInferRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelInferResponse:
        """Run one inference request on the serve application named ``model_name``."""
        return await self._infer(current_principal().tenant, request, context.time_remaining())

    @map_errors
    async def ModelStreamInfer(  # type: ignore[override]  # noqa: N802
        self,
        request_iterator: AsyncIterator[pb.ModelInferRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        """Answer each request of the stream in order: its response, or its error's text.

        A failed request does not end the stream (the protocol reports it in
        ``error_message``); a message that is not a valid request does, with its status.
        """
        tenant = current_principal().tenant
        async for request in request_iterator:
            try:
                response = await self._infer(tenant, request, context.time_remaining())
            except Exception as exc:
                status = status_for(exc)
                yield pb.ModelStreamInferResponse(
                    error_message=f"{status.code.name}: {status.details}"
                )
                continue
            yield pb.ModelStreamInferResponse(infer_response=response)

    async def _infer(
        self, tenant: str, request: pb.ModelInferRequest, deadline_s: float | None
    ) -> pb.ModelInferResponse:
        call = model_infer_request(request, deadline_s)
        result = await self._inference.infer(tenant, call.request)
        response = model_infer_response(request.id, result, call.outputs)
        size = response.ByteSize()
        if size > self._max_message_bytes:
            # Said here, with the limit, rather than left to gRPC's send to fail.
            raise ResourceExhaustedError(
                f"the answer of {result.application!r} is {size} bytes; this server sends at "
                f"most {format_bytes(self._max_message_bytes)}"
            )
        return response
