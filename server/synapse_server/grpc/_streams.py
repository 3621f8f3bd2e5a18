"""Server-streaming handlers whose writes survive the client cancelling the call.

grpc.aio (through at least 1.85) frees the native memory of a write (its ``grpc_op`` array and
what it holds) only when the coroutine awaiting that write consumes its completion. When a
client cancels a stream, grpc.aio cancels the handler's task; if that task is awaiting a write
at that moment (typical for a client that reads a few events and then cancels while the rest
of a replay is being sent) the write's memory is never freed, about 280 bytes each (upstream:
grpc/grpc#43360). Python-level allocations do not grow, which is why tracemalloc shows
nothing; the C heap does (``mallinfo2``).

:func:`writes_through` therefore writes a handler's messages itself and shields each write
from the cancellation: the handler stops at once, but the write in flight runs on in a task of
its own (grpc core completes or fails a write on a cancelled call at once), its completion is
consumed and its memory freed. Measured with bench/bench_stream_churn.py (a client reads the
first event of a running job's stream and cancels): the C heap grew 180-270 bytes per
cancelled stream before, 36-75 after.

What is left is a write that grpc core fails because the client's cancellation reached core
while the write was in flight or just before it started (Python learns of it a moment later):
grpc.aio leaks a failed write's memory as well, and nothing above grpc can see the
cancellation in time to avoid it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import grpc

__all__ = ["write_through", "writes_through"]

logger = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., AsyncIterator[Any]])


def _consume(write: asyncio.Future[None]) -> None:
    # A write that fails (the call was cancelled) must not log "exception never retrieved".
    if not write.cancelled() and write.exception() is not None:
        logger.debug("stream write failed, the call is over: %r", write.exception())


async def write_through(context: grpc.aio.ServicerContext, message: Any) -> None:
    """Write ``message`` and wait for it; a cancellation meanwhile lets the write finish.

    The CancelledError still reaches the caller as soon as it arrives; only the write runs on
    to its completion. A write that fails means the call is over (cancelled by the client,
    server stopping): that too ends the handler as a cancellation, never as an error of its
    own, just as when grpc writes what a generator yields.
    """
    write = asyncio.ensure_future(context.write(message))
    write.add_done_callback(_consume)
    try:
        await asyncio.shield(write)
    except (asyncio.CancelledError, grpc.aio.AbortError):
        raise
    except Exception as exc:
        raise asyncio.CancelledError("the stream's call is over") from exc


def writes_through(method: F) -> F:
    """Decorate an async-generator servicer method: its messages go out by :func:`write_through`.

    The decorated method is still an async generator (the error mapping and the interceptor
    chain's handler re-wrap treat it as a stream) but yields nothing to grpc: it writes every
    message of the original generator itself, each once the previous one is written, as grpc
    would. Put it under ``map_errors``.
    """

    @functools.wraps(method)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
        async with contextlib.aclosing(method(self, request, context)) as messages:  # type: ignore[type-var]
            async for message in messages:
                await write_through(context, message)
        return
        yield  # an async generator that yields nothing: the messages were written above

    return wrapper  # type: ignore[return-value]
