"""Dynamic batching in the replica: concurrent requests for one endpoint and one model become
one call of the endpoint.

An endpoint takes batches when it is marked with :func:`batched`. It is then written for a
list of requests: each parameter receives a list with one value per request (in request
order), and it returns a list with one output per request, exactly like a method decorated
with Ray Serve's ``@serve.batch``::

    @app.post("/")
    @batched
    async def infer(self, inputs: list[list[dict]]) -> list[list[dict]]:
        ...

Each request is validated on its own against the element type of the annotation
(``list[dict]`` above) before it joins a batch, so a malformed request fails alone.

The sizes come from the deployment's settings (:class:`BatchSettings`: ``max_batch_size``,
``batch_wait_timeout_s``, ``max_concurrent_batches``, from the ``serve:`` mapping of the
plugin's ``config.yaml`` or ``deploy(...)``). Without them a batched endpoint is called once
per request with batches of one, and no queue exists. With them, :class:`EndpointBatcher`
keeps one queue per (endpoint, verified model id), created on the first request and dropped
once empty:

* a batch runs when ``max_batch_size`` requests wait, or ``batch_wait_timeout_s`` after the
  oldest waiting one arrived; requests never wait for a batch of another model;
* at most ``max_concurrent_batches`` calls of an endpoint run at once (all models together);
  requests that arrive meanwhile join the next batch;
* a request cancelled (its caller's deadline passed, or the caller went away) before its
  batch ran is left out of it;
* the endpoint must return one output per request, else every request of the batch gets an
  error saying so; an output that is an ``Exception`` instance fails only its request; when
  the call raises, each request of the batch is run again alone, so a request that makes
  the endpoint raise fails alone and the others get their answers (batched endpoints must
  therefore be safe to call again with the same inputs, as inference is).

How many requests a replica holds at once (and so how long a queue can grow) is bounded by
the deployment's ``max_ongoing_requests``; Serve's ``max_queued_requests`` bounds what waits
in each caller (the platform sets it by default).
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import functools
import inspect
import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from synapse_sdk.errors import SynapseError

logger = logging.getLogger(__name__)

__all__ = [
    "BATCH_OPTION_KEYS",
    "BatchOutputError",
    "BatchSettings",
    "EndpointBatcher",
    "batched",
    "call_endpoint",
    "is_batched",
    "is_serve_batch",
    "run_unqueued",
]

F = TypeVar("F", bound=Callable[..., Any])

#: Keys of a deployment's ``serve:`` options that configure dynamic batching.
BATCH_OPTION_KEYS = frozenset({"max_batch_size", "batch_wait_timeout_s", "max_concurrent_batches"})

_BATCHED_ATTR = "_synapse_batched"


def batched(func: F) -> F:
    """Mark an endpoint method as taking batches (see the module docstring).

    Only a marker: nothing is queued unless the deployment configures ``max_batch_size``.
    """
    setattr(func, _BATCHED_ATTR, True)
    return func


def is_batched(func: Any) -> bool:
    """True for a method marked with :func:`batched` (bound or not)."""
    return bool(getattr(getattr(func, "__func__", func), _BATCHED_ATTR, False))


def is_serve_batch(func: Any) -> bool:
    """True for a method wrapped by Ray Serve's ``@serve.batch`` (which queues by itself)."""
    return callable(getattr(getattr(func, "__func__", func), "_get_max_batch_size", None))


class BatchOutputError(SynapseError, RuntimeError):
    """A batched endpoint did not return one output per request of its batch."""


def _positive_int(options: Mapping[str, Any], key: str, default: int | None) -> int | None:
    value = options.get(key, default)
    if value is None:
        return None
    if type(value) is not int or value < 1:
        raise ValueError(f"serve option {key} must be a positive integer, got {value!r}")
    return value


@dataclass(frozen=True)
class BatchSettings:
    """How a deployment batches (see the module docstring)."""

    max_batch_size: int
    batch_wait_timeout_s: float = 0.01
    max_concurrent_batches: int = 1

    def __post_init__(self) -> None:
        for key in ("max_batch_size", "max_concurrent_batches"):
            _positive_int({key: getattr(self, key)}, key, None)
        wait = self.batch_wait_timeout_s
        if (
            isinstance(wait, bool)
            or not isinstance(wait, int | float)
            or not math.isfinite(wait)
            or wait < 0
        ):
            raise ValueError(
                f"serve option batch_wait_timeout_s must be a number of seconds >= 0, got {wait!r}"
            )

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> BatchSettings | None:
        """The settings in a ``serve:`` mapping; None when it sets no ``max_batch_size``.

        Raises ``ValueError`` naming the option for a value of the wrong type or range, and
        for a wait or concurrency given without ``max_batch_size``.
        """
        size = _positive_int(options, "max_batch_size", None)
        if size is None:
            extra = sorted(BATCH_OPTION_KEYS & set(options) - {"max_batch_size"})
            if extra:
                raise ValueError(f"serve option(s) {', '.join(extra)} need max_batch_size")
            return None
        concurrency = _positive_int(options, "max_concurrent_batches", 1)
        assert concurrency is not None
        return cls(
            max_batch_size=size,
            batch_wait_timeout_s=options.get("batch_wait_timeout_s", 0.01),
            max_concurrent_batches=concurrency,
        )


@dataclass(eq=False)
class _Waiter:
    """One request in a queue: its bound arguments and the future its caller awaits."""

    kwargs: dict[str, Any]
    future: asyncio.Future[tuple[Any, int]]
    #: The request's context: a batch runs in its first request's (the multiplexed model id).
    context: contextvars.Context
    arrived: float


@dataclass(eq=False)
class _Queue:
    """The requests waiting for one endpoint and one model."""

    endpoint: Callable[..., Any]
    label: str
    waiting: collections.deque[_Waiter] = field(default_factory=collections.deque)
    #: Set when a request arrives, so a queue waiting to fill looks again.
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    def live(self) -> int:
        return sum(1 for waiter in self.waiting if not waiter.future.done())


def _outputs(result: Any, count: int, label: str) -> list[Any]:
    """The outputs of a batch call, one per request; a list, a tuple, or an array or tensor
    with one row per request."""
    indexable = hasattr(result, "__len__") and hasattr(result, "__getitem__")
    if isinstance(result, str | bytes | Mapping) or not indexable:
        raise BatchOutputError(
            f"the batched endpoint {label} returned a {type(result).__name__}, not a list "
            f"with one output per request ({count})"
        )
    if len(result) != count:
        raise BatchOutputError(
            f"the batched endpoint {label} returned {len(result)} outputs for a batch of "
            f"{count} requests; it must return one output per request"
        )
    return [result[i] for i in range(count)]


async def call_endpoint(
    endpoint: Callable[..., Any], is_coroutine: bool, kwargs: dict[str, Any]
) -> Any:
    """Call an endpoint method with keyword arguments; a blocking one in a worker thread."""
    if is_coroutine:
        return await endpoint(**kwargs)
    # A blocking endpoint must not stall the replica's event loop.
    result = await asyncio.to_thread(functools.partial(endpoint, **kwargs))
    if inspect.isawaitable(result):
        result = await result
    return result


async def _run_batch(
    endpoint: Callable[..., Any], label: str, batch: list[_Waiter], split_on_error: bool
) -> None:
    """Call the endpoint once for ``batch`` and settle each request's future."""
    count = len(batch)
    names = list(batch[0].kwargs)
    kwargs = {name: [waiter.kwargs[name] for waiter in batch] for name in names}
    is_coroutine = inspect.iscoroutinefunction(endpoint)
    try:
        outputs = _outputs(await call_endpoint(endpoint, is_coroutine, kwargs), count, label)
    except BatchOutputError as exc:
        for waiter in batch:
            if not waiter.future.done():
                waiter.future.set_exception(exc)
        return
    except Exception as exc:
        if split_on_error and count > 1:
            # Which request made it raise is unknown: run each alone, so only that one fails.
            logger.warning(
                "the batched endpoint %s raised %s for a batch of %d; running each request alone",
                label,
                type(exc).__name__,
                count,
            )
            for waiter in batch:
                if not waiter.future.done():
                    await _run_batch(endpoint, label, [waiter], split_on_error=False)
            return
        for waiter in batch:
            if not waiter.future.done():
                waiter.future.set_exception(exc)
        return
    for waiter, output in zip(batch, outputs, strict=True):
        if waiter.future.done():
            continue
        if isinstance(output, Exception):
            waiter.future.set_exception(output)
        else:
            waiter.future.set_result((output, count))


async def run_unqueued(endpoint: Callable[..., Any], label: str, kwargs: dict[str, Any]) -> Any:
    """Call a batched endpoint for one request as a batch of one (no batching configured)."""
    loop = asyncio.get_running_loop()
    waiter = _Waiter(kwargs, loop.create_future(), contextvars.copy_context(), loop.time())
    await _run_batch(endpoint, label, [waiter], split_on_error=False)
    output, _ = waiter.future.result()
    return output


class EndpointBatcher:
    """The batch queues of one replica (see the module docstring).

    Lives on the replica's event loop; every call comes from it.
    """

    def __init__(self, settings: BatchSettings) -> None:
        self.settings = settings
        self._queues: dict[tuple[Any, str], _Queue] = {}
        self._slots: dict[Any, asyncio.Semaphore] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def queued(self) -> int:
        """Requests waiting for a batch in any queue (cancelled ones left out)."""
        return sum(queue.live() for queue in self._queues.values())

    async def submit(
        self,
        endpoint: Callable[..., Any],
        label: str,
        model_id: str,
        kwargs: dict[str, Any],
        *,
        waited_s: float = 0.0,
    ) -> tuple[Any, int]:
        """Queue one request; its output and the size of the batch it ran in.

        ``waited_s``: how long the request already waited for others (the server gathered it
        in a group); a batch it heads forms that much sooner.
        Raises what the endpoint raised for it (or :class:`BatchOutputError`). Cancelling the
        awaiting task leaves the request out of a batch that has not run yet.
        """
        loop = asyncio.get_running_loop()
        arrived = loop.time() - min(waited_s, self.settings.batch_wait_timeout_s)
        key = (getattr(endpoint, "__func__", endpoint), model_id)
        queue = self._queues.get(key)
        if queue is None:
            queue = self._queues[key] = _Queue(endpoint, label)
            waiter = _Waiter(kwargs, loop.create_future(), contextvars.copy_context(), arrived)
            queue.waiting.append(waiter)
            task = loop.create_task(self._drain(key, queue), context=waiter.context)
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        else:
            waiter = _Waiter(kwargs, loop.create_future(), contextvars.copy_context(), arrived)
            queue.waiting.append(waiter)
            queue.arrived.set()
        # Cancelling this await cancels the future: the drain loop then skips the request.
        return await waiter.future

    def _slot(self, endpoint: Callable[..., Any]) -> asyncio.Semaphore:
        func = getattr(endpoint, "__func__", endpoint)
        slot = self._slots.get(func)
        if slot is None:
            slot = self._slots[func] = asyncio.Semaphore(self.settings.max_concurrent_batches)
        return slot

    async def _drain(self, key: tuple[Any, str], queue: _Queue) -> None:
        """Form and start batches of ``queue`` until it is empty, then drop it."""
        loop = asyncio.get_running_loop()
        size = self.settings.max_batch_size
        wait_s = self.settings.batch_wait_timeout_s
        slot = self._slot(queue.endpoint)
        try:
            while True:
                while queue.waiting and queue.waiting[0].future.done():
                    queue.waiting.popleft()
                if not queue.waiting:
                    return
                fill_by = queue.waiting[0].arrived + wait_s
                while queue.live() < size:
                    left = fill_by - loop.time()
                    if left <= 0:
                        break
                    queue.arrived.clear()
                    try:
                        async with asyncio.timeout(left):
                            await queue.arrived.wait()
                    except TimeoutError:
                        break
                await slot.acquire()
                # Requests that arrived while an earlier batch held the slot join this one.
                batch: list[_Waiter] = []
                while queue.waiting and len(batch) < size:
                    waiter = queue.waiting.popleft()
                    if not waiter.future.done():
                        batch.append(waiter)
                if not batch:
                    slot.release()
                    continue
                # Its first request's context: get_model() then loads that request's model.
                task = loop.create_task(
                    _run_batch(queue.endpoint, queue.label, batch, split_on_error=True),
                    context=batch[0].context,
                )
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
                task.add_done_callback(lambda _: slot.release())
        finally:
            if self._queues.get(key) is queue:
                del self._queues[key]
            # A drain cancelled with the replica: its requests must not wait forever.
            for waiter in queue.waiting:
                if not waiter.future.done():
                    waiter.future.cancel()
