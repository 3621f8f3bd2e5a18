"""The server's interceptor chain: one handler re-wrap for every RPC shape, hooks per interceptor.

grpc.aio lets a ``ServerInterceptor`` replace a method's handler, and a handler comes in four
shapes (a unary or streamed request, a unary or streamed response) that each need their own
wrapper. :func:`wrap_handler` is the one place that writes those wrappers. An interceptor of
the chain (:class:`CallInterceptor`) only says what it does for one call, through hooks:

* **before the call** — :meth:`CallInterceptor.start_call` sees the method and the request
  metadata once per RPC; raising a domain error refuses the call with that error's status.
  :meth:`CallScope.check` sees the decoded request of a unary-request RPC (``None`` when the
  requests are streamed) and may refuse it the same way;
* **around the call** — :meth:`CallScope.enter` runs in the call's task right before the
  handler, :meth:`CallScope.exit` when the call is over (answered, refused, failed or
  cancelled), in reverse order.

:class:`InterceptorChain` is the single grpc.aio interceptor on the server: it asks each
interceptor in order for its :class:`CallScope` and re-wraps the handler once, whatever the
number of interceptors. Every request also passes the :class:`RequestGuard`'s checks (size,
decoding, string lengths) through the deserializer the re-wrap puts in place, so no servicer
ever sees bytes that are not a valid, bounded request.

Refusals end the call with :func:`end_with_status` (no AbortError: see there). The order of
the answers is fixed: an interceptor's refusal of the call comes first (an unauthenticated
caller learns nothing about what the server makes of its request bytes), then the guard's
refusal of the request, then the interceptors' checks of the decoded request.

Hooks are plain functions, not coroutines: they run on every RPC, and nothing they need to do
(authentication, timing, a trace span, a log line) waits for I/O.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import grpc

from synapse_server.core import InvalidArgumentError, ResourceExhaustedError
from synapse_server.grpc._errors import end_with_status, status_for
from synapse_server.grpc._requests import RejectedRequest, RequestGuard

__all__ = ["CallInterceptor", "CallScope", "InterceptorChain", "wrap_handler"]

logger = logging.getLogger(__name__)

Metadata = tuple[tuple[str, str | bytes], ...] | None
Deserializer = Callable[[bytes], Any]


class CallScope:
    """What one interceptor does around one call; override the hooks it needs.

    A new scope is made for every call (by :meth:`CallInterceptor.start_call`), so it may keep
    the call's state (a start time, a span) in its attributes.
    """

    __slots__ = ()

    def check(self, request: Any) -> None:
        """Before the handler: the decoded request of a unary-request RPC, ``None`` when the
        requests are streamed (each of those messages passes the guard as it is read).

        Raise the domain error the caller gets to refuse the call; it is mapped by
        ``_errors.status_for``.
        """

    def enter(self) -> None:
        """In the call's own task, before the request is checked and the handler runs.

        grpc.aio runs every RPC in a task of its own (a copy of the context), so a ContextVar
        set here is seen by the handler and by nothing else.
        """

    def exit(self, context: grpc.aio.ServicerContext, error: BaseException | None) -> None:
        """When the call is over: answered, refused (``context`` holds the status) or ended by
        ``error`` escaping the handler (a cancellation included). Must not raise."""


class CallInterceptor:
    """One entry of the server's interceptor chain (see the module docstring)."""

    def start_call(self, method: str, metadata: Metadata) -> CallScope | None:
        """Before the call: its scope, or ``None`` to stay out of it.

        ``method`` is the full method path (``/package.Service/Method``). Raise a domain error
        to refuse the call; interceptors later in the chain then do not see it, those before
        it still enter and exit around the refusal.
        """
        return None


class InterceptorChain(grpc.aio.ServerInterceptor):
    """The one grpc.aio interceptor of a server: runs ``interceptors`` in order on every RPC.

    ``guard`` checks every request message (default: a :class:`RequestGuard` with its default
    message limit).
    """

    def __init__(
        self, interceptors: Sequence[CallInterceptor] = (), guard: RequestGuard | None = None
    ) -> None:
        self.interceptors = tuple(interceptors)
        self.guard = guard or RequestGuard()
        # method → (the handler's deserializer, the guarded one). Only methods the server
        # has reach this (unknown ones have no handler), so it stays as small as the API.
        self._deserializers: dict[str, tuple[Deserializer | None, Deserializer]] = {}

    def _guarded(self, method: str, inner: Deserializer | None) -> Deserializer:
        cached = self._deserializers.get(method)
        if cached is not None and cached[0] is inner:
            return cached[1]
        guarded = self.guard.deserializer(method, inner)
        self._deserializers[method] = (inner, guarded)
        return guarded

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        """The method's handler, re-wrapped with the scopes of this call."""
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method = handler_call_details.method
        metadata = handler_call_details.invocation_metadata
        scopes: list[CallScope] = []
        refusal: grpc.Status | None = None
        for interceptor in self.interceptors:
            try:
                scope = interceptor.start_call(method, metadata)
            except Exception as exc:
                refusal = status_for(exc)
                break
            if scope is not None:
                scopes.append(scope)
        return wrap_handler(
            handler,
            deserializer=self._guarded(method, handler.request_deserializer),
            refusal=refusal,
            scopes=scopes,
        )


def _request_refusal(scopes: Sequence[CallScope], request: Any) -> grpc.Status | None:
    """The status refusing ``request`` (the guard's, then the scopes' checks), or None."""
    if isinstance(request, RejectedRequest):
        return status_for(request.error)
    for scope in scopes:
        try:
            scope.check(request)
        except Exception as exc:
            # Mapped inside the except block: the error (whose traceback holds the request) is
            # released as soon as the status is made.
            return status_for(exc)
    return None


def _exit(scopes: Sequence[CallScope], context: Any, error: BaseException | None) -> None:
    for scope in reversed(scopes):
        scope.exit(context, error)


def wrap_handler(
    handler: grpc.RpcMethodHandler,
    *,
    deserializer: Deserializer | None,
    refusal: grpc.Status | None = None,
    scopes: Sequence[CallScope] = (),
) -> grpc.RpcMethodHandler:
    """``handler`` in the same shape, run inside ``scopes`` or answered with ``refusal``.

    ``deserializer`` replaces the handler's (the response serializer is kept): a
    :class:`RequestGuard` deserializer, whose :class:`RejectedRequest` answers are turned into
    their status here. ``refusal`` (a status decided before the call) answers the call instead
    of the handler. The scopes enter in order, their checks run on the request, and they exit
    in reverse order when the call is over.
    """
    scopes = tuple(scopes)
    serializer = handler.response_serializer
    if handler.unary_unary is not None:
        inner_uu = handler.unary_unary

        async def unary_unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
            for scope in scopes:
                scope.enter()
            try:
                status = refusal if refusal is not None else _request_refusal(scopes, request)
                if status is not None:
                    end_with_status(context, status)
                    response = None
                else:
                    response = await inner_uu(request, context)
            except BaseException as exc:
                _exit(scopes, context, exc)
                raise
            _exit(scopes, context, None)
            return response

        return grpc.unary_unary_rpc_method_handler(unary_unary, deserializer, serializer)

    if handler.unary_stream is not None:
        inner_us = handler.unary_stream

        async def unary_stream(
            request: Any, context: grpc.aio.ServicerContext
        ) -> AsyncIterator[Any]:
            for scope in scopes:
                scope.enter()
            try:
                status = refusal if refusal is not None else _request_refusal(scopes, request)
                if status is not None:
                    end_with_status(context, status)
                else:
                    async for item in inner_us(request, context):
                        yield item
            except BaseException as exc:
                _exit(scopes, context, exc)
                raise
            _exit(scopes, context, None)

        return grpc.unary_stream_rpc_method_handler(unary_stream, deserializer, serializer)

    # Streamed requests: a refused message raises its domain error from the request
    # iterator (RequestGuard.checked). Our servicers map it like any other error; a handler
    # that lets it escape (reflection) is answered here, from the handler's own task: an
    # abort from another task can collide with the handler's pending send.
    if handler.stream_stream is not None:
        inner_ss = handler.stream_stream

        async def stream_stream(
            request_iterator: Any, context: grpc.aio.ServicerContext
        ) -> AsyncIterator[Any]:
            for scope in scopes:
                scope.enter()
            try:
                status = refusal if refusal is not None else _request_refusal(scopes, None)
                if status is None:
                    try:
                        async for item in inner_ss(RequestGuard.checked(request_iterator), context):
                            yield item
                    except (InvalidArgumentError, ResourceExhaustedError) as exc:
                        status = status_for(exc)
                if status is not None:
                    end_with_status(context, status)
            except BaseException as exc:
                _exit(scopes, context, exc)
                raise
            _exit(scopes, context, None)

        return grpc.stream_stream_rpc_method_handler(stream_stream, deserializer, serializer)

    inner_su = handler.stream_unary

    async def stream_unary(request_iterator: Any, context: grpc.aio.ServicerContext) -> Any:
        for scope in scopes:
            scope.enter()
        try:
            response = None
            status = refusal if refusal is not None else _request_refusal(scopes, None)
            if status is None:
                try:
                    response = await inner_su(RequestGuard.checked(request_iterator), context)
                except (InvalidArgumentError, ResourceExhaustedError) as exc:
                    status = status_for(exc)
            if status is not None:
                end_with_status(context, status)
        except BaseException as exc:
            _exit(scopes, context, exc)
            raise
        _exit(scopes, context, None)
        return response

    return grpc.stream_unary_rpc_method_handler(stream_unary, deserializer, serializer)
