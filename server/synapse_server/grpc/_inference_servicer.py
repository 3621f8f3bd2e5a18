"""InferenceService over the core :class:`InferenceService`: convert, await, convert back.

The call's deadline becomes the core's timeout (and the Ray request is cancelled when it
passes or the caller cancels); conversions are ``_inference_converters``'. ``InferStream``
goes through the same error mapping as every RPC: an error before the first item is the
call's status, one after some items ends the stream with that status.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

import grpc
from synapse.plugin.v1 import inference_service_pb2, inference_service_pb2_grpc

from synapse_server.core._errors import InvalidArgumentError, ResourceExhaustedError
from synapse_server.core.inference import InferenceService, InferResult
from synapse_server.grpc._auth import current_principal
from synapse_server.grpc._errors import map_errors
from synapse_server.grpc._inference_converters import (
    answers_json_text,
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
        return self._answer(result, answers_json_text(request))

    @map_errors
    async def InferStream(  # type: ignore[override]  # noqa: N802
        self,
        request: inference_service_pb2.InferStreamRequest,
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[inference_service_pb2.InferStreamResponse]:
        """Run one request on an endpoint that yields; one message per item."""
        inner = request.request
        data = infer_request_from_pb(inner, context.time_remaining(), prefix="request.")
        json_text = answers_json_text(inner)
        results = self._service.stream(current_principal().tenant, data)
        index = 0
        # Closed however the call ends (cancelled, deadline, error): the replica's generator
        # is then cancelled at once, not when the garbage collector finds this one.
        async with contextlib.aclosing(results):
            try:
                async for result in results:
                    item = self._answer(result, json_text)
                    yield inference_service_pb2.InferStreamResponse(item=item, index=index)
                    index += 1
            except InvalidArgumentError as exc:
                # The core names fields of an InferRequest; here it is the request's field.
                if exc.field and not exc.field.startswith("request."):
                    exc.field = f"request.{exc.field}"
                raise

    def _answer(self, result: InferResult, json_text: bool) -> inference_service_pb2.InferResponse:
        response = infer_response_to_pb(result, json_text)
        size = response.ByteSize()
        if size > self._max_message_bytes:
            # Said here, with the limit, rather than left to gRPC's send to fail.
            raise ResourceExhaustedError(
                f"the answer of {result.application!r} is {size} bytes; this server sends at "
                f"most {format_bytes(self._max_message_bytes)}"
            )
        return response
