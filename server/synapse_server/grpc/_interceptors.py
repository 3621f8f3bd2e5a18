"""The server's interceptor chain: one handler re-wrap for every RPC shape, hooks per interceptor.

grpc.aio lets a ``ServerInterceptor`` replace a method's handler, and a handler comes in four
shapes (a unary or streamed request, a unary or streamed response) that each need their own
wrapper. :func:`wrap_handler` is the one place that writes those wrappers. An interceptor of
the chain is one :class:`CallInterceptor` subclass that overrides the hooks it needs:

* **before the call** — :meth:`~CallInterceptor.start_call` sees the method and the request
  metadata once per RPC and returns the call's state for the other hooks (a principal, a start
  time, a span), or ``None`` to stay out of the call; raising a domain error refuses the call
  with that error's status. :meth:`~CallInterceptor.check` sees the decoded request of a
  unary-request RPC (``None`` when the requests are streamed) and may refuse it the same way;
* **around the call** — :meth:`~CallInterceptor.enter` runs in the call's task right before
  the handler, :meth:`~CallInterceptor.exit` when the call is over (answered, refused, failed
  or cancelled), in reverse order.

:class:`InterceptorChain` is the single grpc.aio interceptor on the server: it starts the call
with each interceptor in order and re-wraps the handler once, whatever the number of
interceptors. Every request also passes the :class:`RequestGuard`'s checks (size,
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
from typing import Any, Generic, TypeVar, cast

import grpc

from synapse_server.core import InvalidArgumentError, ResourceExhaustedError
from synapse_server.grpc._errors import end_with_status, status_for
from synapse_server.grpc._requests import RejectedRequest, RequestGuard

__all__ = ["CallInterceptor", "InterceptorChain", "Metadata", "wrap_handler"]

logger = logging.getLogger(__name__)

Metadata = tuple[tuple[str, str | bytes], ...] | None
Deserializer = Callable[[bytes], Any]
S = TypeVar("S")


class CallInterceptor(Generic[S]):
    """One entry of the server's interceptor chain (see the module docstring).

    ``S`` is the type of the per-call state that :meth:`start_call` returns and every other
    hook receives; a new state per call keeps calls apart.
    """

    def start_call(self, method: str, metadata: Metadata) -> S | None:
        """Before the call: its state, or ``None`` to stay out of it (no other hook runs).

        ``method`` is the full method path (``/package.Service/Method``). Raise a domain error
        to refuse the call (mapped by ``_errors.status_for``); interceptors later in the chain
        then do not see it, those before it still enter and exit around the refusal. The
        default state is the method.
        """
        return cast(S, method)

    def check(self, call: S, request: Any) -> None:
        """Before the handler: the decoded request of a unary-request RPC, ``None`` when the
        requests are streamed (each of those messages passes the guard as it is read).

        Raise the domain error the caller gets to refuse the call.
        """

    def enter(self, call: S) -> None:
        """In the call's own task, before the request is checked and the handler runs.

        grpc.aio runs every RPC in a task of its own (a copy of the context), so a ContextVar
        set here is seen by the handler and by nothing else.
        """

    def exit(self, call: S, context: grpc.aio.ServicerContext, error: BaseException | None) -> None:
        """When the call is over: answered, refused (``context`` holds the status) or ended by
        ``error`` escaping the handler (a cancellation included). Must not raise."""


#: The interceptors taking part in one call, each with its state for the call.
Calls = Sequence[tuple[CallInterceptor[Any], Any]]


class InterceptorChain(grpc.aio.ServerInterceptor):
    """The one grpc.aio interceptor of a server: runs ``interceptors`` in order on every RPC.

    ``guard`` checks every request message (default: a :class:`RequestGuard` with its default
    message limit).
    """

    def __init__(
        self,
        interceptors: Sequence[CallInterceptor[Any]] = (),
        guard: RequestGuard | None = None,
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
        """The method's handler, re-wrapped with the interceptors taking part in this call."""
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method = handler_call_details.method
        metadata = handler_call_details.invocation_metadata
        calls: list[tuple[CallInterceptor[Any], Any]] = []
        refusal: grpc.Status | None = None
        for interceptor in self.interceptors:
            try:
                state = interceptor.start_call(method, metadata)
            except Exception as exc:
                refusal = status_for(exc)
                break
            if state is not None:
                calls.append((interceptor, state))
        return wrap_handler(
            handler,
            deserializer=self._guarded(method, handler.request_deserializer),
            refusal=refusal,
            calls=calls,
        )


def _request_refusal(calls: Calls, request: Any) -> grpc.Status | None:
    """The status refusing ``request`` (the guard's, then the interceptors' checks), or None."""
    if isinstance(request, RejectedRequest):
        return status_for(request.error)
    for interceptor, state in calls:
        try:
            interceptor.check(state, request)
        except Exception as exc:
            # Mapped inside the except block: the error (whose traceback holds the request) is
            # released as soon as the status is made.
            return status_for(exc)
    return None


def _enter(calls: Calls) -> None:
    for interceptor, state in calls:
        interceptor.enter(state)


def _exit(calls: Calls, context: Any, error: BaseException | None) -> None:
    for interceptor, state in reversed(calls):
        interceptor.exit(state, context, error)


def wrap_handler(
    handler: grpc.RpcMethodHandler,
    *,
    deserializer: Deserializer | None,
    refusal: grpc.Status | None = None,
    calls: Calls = (),
) -> grpc.RpcMethodHandler:
    """``handler`` in the same shape, run inside ``calls`` or answered with ``refusal``.

    ``deserializer`` replaces the handler's (the response serializer is kept): a
    :class:`RequestGuard` deserializer, whose :class:`RejectedRequest` answers are turned into
    their status here. ``refusal`` (a status decided before the call) answers the call instead
    of the handler. ``calls`` are the interceptors taking part, each with its state for this
    call: they enter in order, check the request, and exit in reverse order when the call is
    over.
    """
    calls = tuple(calls)
    serializer = handler.response_serializer
    if handler.unary_unary is not None:
        inner_uu = handler.unary_unary

        async def unary_unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
            _enter(calls)
            try:
                status = refusal if refusal is not None else _request_refusal(calls, request)
                if status is not None:
                    end_with_status(context, status)
                    response = None
                else:
                    response = await inner_uu(request, context)
            except BaseException as exc:
                _exit(calls, context, exc)
                raise
            _exit(calls, context, None)
            return response

        return grpc.unary_unary_rpc_method_handler(unary_unary, deserializer, serializer)

    if handler.unary_stream is not None:
        inner_us = handler.unary_stream

        async def unary_stream(
            request: Any, context: grpc.aio.ServicerContext
        ) -> AsyncIterator[Any]:
            _enter(calls)
            try:
                status = refusal if refusal is not None else _request_refusal(calls, request)
                if status is not None:
                    end_with_status(context, status)
                else:
                    async for item in inner_us(request, context):
                        yield item
            except BaseException as exc:
                _exit(calls, context, exc)
                raise
            _exit(calls, context, None)

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
            _enter(calls)
            try:
                status = refusal if refusal is not None else _request_refusal(calls, None)
                if status is None:
                    try:
                        async for item in inner_ss(RequestGuard.checked(request_iterator), context):
                            yield item
                    except (InvalidArgumentError, ResourceExhaustedError) as exc:
                        status = status_for(exc)
                if status is not None:
                    end_with_status(context, status)
            except BaseException as exc:
                _exit(calls, context, exc)
                raise
            _exit(calls, context, None)

        return grpc.stream_stream_rpc_method_handler(stream_stream, deserializer, serializer)

    inner_su = handler.stream_unary

    async def stream_unary(request_iterator: Any, context: grpc.aio.ServicerContext) -> Any:
        _enter(calls)
        try:
            response = None
            status = refusal if refusal is not None else _request_refusal(calls, None)
            if status is None:
                try:
                    response = await inner_su(RequestGuard.checked(request_iterator), context)
                except (InvalidArgumentError, ResourceExhaustedError) as exc:
                    status = status_for(exc)
            if status is not None:
                end_with_status(context, status)
        except BaseException as exc:
            _exit(calls, context, exc)
            raise
        _exit(calls, context, None)
        return response

    return grpc.stream_unary_rpc_method_handler(stream_unary, deserializer, serializer)
