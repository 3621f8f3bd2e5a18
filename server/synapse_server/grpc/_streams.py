"""Server-streaming handlers whose writes survive the client cancelling the call.

grpc.aio (through at least 1.85) frees the native memory of a write (its ``grpc_op`` array and
what it holds) only when the coroutine awaiting that write consumes its completion. When a
client cancels a stream, grpc.aio cancels the handler's task; if that task is awaiting a write
at that moment (typical for a client that reads a few events and then cancels while the rest
of a replay is being sent) the write's memory is never freed, about 280 bytes each (upstream:
grpc/grpc#43360). Python-level allocations do not grow, which is why tracemalloc shows
nothing; the C heap does (``mallinfo2``).

:func:`writes_through` therefore writes a handler's messages itself and keeps each write
going whatever happens to the handler: the handler stops at once when cancelled, but the
write in flight runs on (grpc core completes or fails a write on a cancelled call at once), its
completion is consumed and its memory freed. Measured with bench/bench_stream_churn.py (a
client reads the first event of a running job's stream and cancels): the C heap grew 180-270
bytes per cancelled stream before, 36-75 after.

The write's coroutine is driven by :class:`_Write` rather than a task of its own behind
``asyncio.shield``: a task, the shield's outer future and their callbacks cost a few event
loop turns per message (bench/bench_progress.py, 100 subscribers: about 4.5 % of the server's
samples), the driver one future. It starts the write at once, in the handler's turn of the
loop, as awaiting ``context.write`` directly would.

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
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any, TypeVar

import grpc

__all__ = ["write_through", "writes_through"]

logger = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., AsyncIterator[Any]])


class _Write:
    """Drives one write coroutine to its end, whether or not anyone still waits for it.

    It does for the coroutine what an asyncio task does (send into it; when it yields a
    future, go on once that future is done) without being one: :attr:`done` is the only
    future it adds, and cancelling ``done`` (the handler's task was cancelled while awaiting
    it) leaves the coroutine running to its completion, which is then consumed here.
    """

    __slots__ = ("_coro", "_loop", "done")

    def __init__(self, coro: Coroutine[Any, Any, None], loop: asyncio.AbstractEventLoop) -> None:
        self._coro = coro
        self._loop = loop
        self.done: asyncio.Future[None] = loop.create_future()
        self._step()

    def _step(self, _: object = None) -> None:
        try:
            waiting = self._coro.send(None)
        except StopIteration:
            if not self.done.done():
                self.done.set_result(None)
            return
        except (Exception, asyncio.CancelledError) as exc:
            if self.done.done():
                # Nobody waits any more (the handler was cancelled): the call is over.
                logger.debug("stream write failed, the call is over: %r", exc)
            elif isinstance(exc, asyncio.CancelledError):
                self.done.cancel()
            else:
                self.done.set_exception(exc)
            return
        if waiting is None:
            # A bare yield (asyncio.sleep(0)): go on at the loop's next turn.
            self._loop.call_soon(self._step)
            return
        # An asyncio future, marked as awaited by its __await__ (a task clears the mark).
        if not getattr(waiting, "_asyncio_future_blocking", False):
            error = RuntimeError(f"a stream write yielded {waiting!r}, not a future")
            self._coro.close()
            if not self.done.done():
                self.done.set_exception(error)
            return
        waiting._asyncio_future_blocking = False
        waiting.add_done_callback(self._step)


async def write_through(context: grpc.aio.ServicerContext, message: Any) -> None:
    """Write ``message`` and wait for it; a cancellation meanwhile lets the write finish.

    The CancelledError still reaches the caller as soon as it arrives; only the write runs on
    to its completion. A write that fails means the call is over (cancelled by the client,
    server stopping): that too ends the handler as a cancellation, never as an error of its
    own, just as when grpc writes what a generator yields.
    """
    write = _Write(context.write(message), asyncio.get_running_loop())
    try:
        await write.done
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
