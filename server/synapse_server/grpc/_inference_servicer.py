"""InferenceService over the core :class:`InferenceService`: convert, await, convert back.

The call's deadline becomes the core's timeout (and the Ray request is cancelled when it
passes or the caller cancels); conversions are ``_inference_converters``'.
"""

from __future__ import annotations

import logging

import grpc
from synapse.plugin.v1 import inference_service_pb2, inference_service_pb2_grpc

from synapse_server.core._errors import ResourceExhaustedError
from synapse_server.core.inference import InferenceService
from synapse_server.grpc._auth import current_principal
from synapse_server.grpc._errors import map_errors
from synapse_server.grpc._inference_converters import (
    infer_request_from_pb,
    infer_response_to_pb,
)
from synapse_server.grpc._requests import DEFAULT_MAX_MESSAGE_BYTES, format_bytes

__all__ = ["InferenceServicer"]

logger = logging.getLogger(__name__)


class InferenceServicer(inference_service_pb2_grpc.InferenceServiceServicer):
    """Thin gRPC face of the core :class:`InferenceService`."""

    def __init__(
        self, service: InferenceService, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    ) -> None:
        self._service = service
        self._max_message_bytes = max_message_bytes

    @map_errors
    async def Infer(  # type: ignore[override]  # noqa: N802
        self, request: inference_service_pb2.InferRequest, context: grpc.aio.ServicerContext
    ) -> inference_service_pb2.InferResponse:
        """Run one inference request."""
        data = infer_request_from_pb(request, context.time_remaining())
        result = await self._service.infer(current_principal().tenant, data)
        response = infer_response_to_pb(result)
        size = response.ByteSize()
        if size > self._max_message_bytes:
            # Said here, with the limit, rather than left to gRPC's send to fail.
            raise ResourceExhaustedError(
                f"the answer of {result.application!r} is {size} bytes; this server sends at "
                f"most {format_bytes(self._max_message_bytes)}"
            )
        return response
