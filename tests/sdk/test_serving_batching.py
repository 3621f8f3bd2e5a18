"""The replica's dynamic batching, on its own event loop (no Ray): grouping, model ids,
cancellation, concurrency, output checks and per-request errors.

Batches here wait long (``batch_wait_timeout_s=60``) unless a test needs the timeout, so a
batch runs exactly when it is full: the counts are exact, never a matter of timing. The same
behaviour through real replicas is tested in ``tests/serve/test_batching.py``.
"""

from __future__ import annotations

import asyncio
import contextvars
from typing import Any

import pytest
from synapse_sdk.plugins.actions.inference import batched
from synapse_sdk.serving._batching import (
    BatchOutputError,
    BatchSettings,
    EndpointBatcher,
    is_batched,
    run_unqueued,
)

pytestmark = pytest.mark.timeout(60)

REQUEST = contextvars.ContextVar("REQUEST", default="")


class Endpoint:
    """A batched endpoint that records each call: (model seen in its context, inputs)."""

    def __init__(self, gate: asyncio.Event | None = None) -> None:
        self.calls: list[tuple[str, list[Any]]] = []
        self.running = 0
        self.most_running = 0
        self._gate = gate
        self._called = asyncio.Event()

    async def called(self, count: int) -> None:
        """Return once the endpoint has been called ``count`` times."""
        while len(self.calls) < count:
            self._called.clear()
            await self._called.wait()

    async def __call__(self, x: list[Any]) -> list[Any]:
        self.calls.append((REQUEST.get(), list(x)))
        self._called.set()
        self.running += 1
        self.most_running = max(self.most_running, self.running)
        try:
            if self._gate is not None:
                await self._gate.wait()
            if any(v == "boom" for v in x):
                raise RuntimeError("the model failed")
            return [v * 2 for v in x]
        finally:
            self.running -= 1


def _batcher(size: int = 4, wait: float = 60.0, concurrent: int = 1) -> EndpointBatcher:
    return EndpointBatcher(BatchSettings(size, wait, concurrent))


async def _submit(
    batcher: EndpointBatcher, endpoint: Any, model: str, value: Any
) -> tuple[Any, int]:
    REQUEST.set(model)
    return await batcher.submit(endpoint, "infer(x)", model, {"x": value})


async def test_concurrent_requests_become_one_call_per_full_batch() -> None:
    batcher, endpoint = _batcher(size=4), Endpoint()
    results = await asyncio.gather(*(_submit(batcher, endpoint, "m", i) for i in range(8)))
    assert results == [(i * 2, 4) for i in range(8)]
    assert [inputs for _, inputs in endpoint.calls] == [[0, 1, 2, 3], [4, 5, 6, 7]]
    # The queue is dropped once empty: nothing is kept per model id.
    assert batcher._queues == {} and batcher.queued() == 0


async def test_a_batch_never_mixes_model_ids_and_runs_in_its_models_context() -> None:
    batcher, endpoint = _batcher(size=2), Endpoint()
    calls = [_submit(batcher, endpoint, model, i) for i in range(4) for model in ("a", "b")]
    results = await asyncio.gather(*calls)
    assert all(size == 2 for _, size in results)
    assert len(endpoint.calls) == 4
    for model, inputs in endpoint.calls:
        # Each call saw its own model (the context of its first request) and only its inputs.
        assert model in ("a", "b") and len(inputs) == 2
    for model in ("a", "b"):
        seen = sorted(v for m, inputs in endpoint.calls if m == model for v in inputs)
        assert seen == [0, 1, 2, 3], model


async def test_an_incomplete_batch_runs_after_the_wait() -> None:
    batcher, endpoint = _batcher(size=4, wait=0.05), Endpoint()
    assert await _submit(batcher, endpoint, "m", 21) == (42, 1)
    assert endpoint.calls == [("m", [21])]


async def test_a_cancelled_request_is_left_out_of_its_batch() -> None:
    batcher, endpoint = _batcher(size=4), Endpoint()
    gone = asyncio.ensure_future(_submit(batcher, endpoint, "m", "gone"))
    await asyncio.sleep(0)  # queued
    assert batcher.queued() == 1
    gone.cancel()
    with pytest.raises(asyncio.CancelledError):
        await gone
    assert batcher.queued() == 0
    results = await asyncio.gather(*(_submit(batcher, endpoint, "m", i) for i in range(4)))
    assert [r for r, _ in results] == [0, 2, 4, 6]
    assert [inputs for _, inputs in endpoint.calls] == [[0, 1, 2, 3]]


async def test_batches_of_an_endpoint_run_at_most_max_concurrent_batches_at_once() -> None:
    gate = asyncio.Event()
    batcher, endpoint = _batcher(size=2, concurrent=2), Endpoint(gate)
    calls = [
        asyncio.ensure_future(_submit(batcher, endpoint, model, i))
        for model in ("a", "b", "c")
        for i in range(2)
    ]
    await endpoint.called(2)
    await asyncio.sleep(0.05)
    # Two batches run, the third (full) one waits for a slot.
    assert endpoint.running == 2 and len(endpoint.calls) == 2
    gate.set()
    await asyncio.gather(*calls)
    assert len(endpoint.calls) == 3 and endpoint.most_running == 2


async def test_requests_arriving_while_a_batch_runs_form_the_next_one() -> None:
    gate = asyncio.Event()
    batcher, endpoint = _batcher(size=4, wait=0.0), Endpoint(gate)
    first = asyncio.ensure_future(_submit(batcher, endpoint, "m", 0))
    await endpoint.called(1)
    later = [asyncio.ensure_future(_submit(batcher, endpoint, "m", i)) for i in (1, 2, 3)]
    await asyncio.sleep(0.05)
    gate.set()
    await asyncio.gather(first, *later)
    assert [inputs for _, inputs in endpoint.calls] == [[0], [1, 2, 3]]


async def test_a_request_that_makes_the_call_raise_fails_alone() -> None:
    batcher, endpoint = _batcher(size=4), Endpoint()
    values = [1, "boom", 3, 4]
    results = await asyncio.gather(
        *(_submit(batcher, endpoint, "m", v) for v in values), return_exceptions=True
    )
    assert results[0] == (2, 1) and results[2] == (6, 1) and results[3] == (8, 1)
    assert isinstance(results[1], RuntimeError)
    # The batch, then each request alone.
    assert [inputs for _, inputs in endpoint.calls] == [values, [1], ["boom"], [3], [4]]


async def test_an_exception_as_an_output_fails_only_its_request() -> None:
    batcher = _batcher(size=3)

    async def endpoint(x: list[int]) -> list[Any]:
        return [ValueError("unlucky") if v == 13 else v for v in x]

    results = await asyncio.gather(
        *(batcher.submit(endpoint, "e(x)", "m", {"x": v}) for v in (12, 13, 14)),
        return_exceptions=True,
    )
    assert results[0] == (12, 3) and results[2] == (14, 3)
    assert isinstance(results[1], ValueError)


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        (lambda x: x[1:], "returned 1 outputs for a batch of 2"),
        (lambda x: {"a": 1, "b": 2}, "returned a dict, not a list"),
        (lambda x: "ab", "returned a str"),
        (lambda x: None, "returned a NoneType"),
    ],
)
async def test_an_endpoint_must_return_one_output_per_request(answer: Any, message: str) -> None:
    batcher = _batcher(size=2)

    async def endpoint(x: list[int]) -> Any:
        return answer(x)

    results = await asyncio.gather(
        *(batcher.submit(endpoint, "e(x)", "m", {"x": v}) for v in (1, 2)),
        return_exceptions=True,
    )
    for result in results:
        assert isinstance(result, BatchOutputError) and message in str(result), result


async def test_an_array_is_one_output_per_row() -> None:
    np = pytest.importorskip("numpy")
    batcher = _batcher(size=2)

    async def endpoint(x: list[Any]) -> Any:
        return np.stack(x) * 2

    results = await asyncio.gather(
        *(batcher.submit(endpoint, "e(x)", "m", {"x": np.full(3, v)}) for v in (1, 2))
    )
    assert [r.tolist() for r, _ in results] == [[2, 2, 2], [4, 4, 4]]


async def test_a_blocking_endpoint_runs_in_a_worker_thread() -> None:
    import threading

    batcher = _batcher(size=2)
    threads: list[str] = []

    def endpoint(x: list[int]) -> list[int]:
        threads.append(threading.current_thread().name)
        return [v + 1 for v in x]

    results = await asyncio.gather(
        *(batcher.submit(endpoint, "e(x)", "m", {"x": v}) for v in (1, 2))
    )
    assert results == [(2, 2), (3, 2)]
    assert threads and threads[0] != threading.main_thread().name


async def test_without_settings_a_batched_endpoint_gets_batches_of_one() -> None:
    endpoint = Endpoint()
    assert await run_unqueued(endpoint, "infer(x)", {"x": 5}) == 10
    assert [inputs for _, inputs in endpoint.calls] == [[5]]
    with pytest.raises(RuntimeError, match="the model failed"):
        await run_unqueued(endpoint, "infer(x)", {"x": "boom"})


def test_batched_marks_without_wrapping() -> None:
    async def infer(self: Any, x: list[int]) -> list[int]:
        return x

    assert batched(infer) is infer and is_batched(infer)
    assert not is_batched(lambda x: x)


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({}, None),
        ({"num_replicas": 2}, None),
        ({"max_batch_size": 8}, BatchSettings(8, 0.01, 1)),
        (
            {"max_batch_size": 8, "batch_wait_timeout_s": 0, "max_concurrent_batches": 2},
            BatchSettings(8, 0, 2),
        ),
        ({"max_batch_size": 1, "batch_wait_timeout_s": 0.5}, BatchSettings(1, 0.5, 1)),
    ],
)
def test_settings_from_serve_options(options: dict[str, Any], expected: Any) -> None:
    assert BatchSettings.from_options(options) == expected


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"max_batch_size": 0}, "max_batch_size"),
        ({"max_batch_size": "8"}, "max_batch_size"),
        ({"max_batch_size": True}, "max_batch_size"),
        ({"max_batch_size": 2.0}, "max_batch_size"),
        ({"max_batch_size": 4, "batch_wait_timeout_s": -1}, "batch_wait_timeout_s"),
        ({"max_batch_size": 4, "batch_wait_timeout_s": float("nan")}, "batch_wait_timeout_s"),
        ({"max_batch_size": 4, "batch_wait_timeout_s": "soon"}, "batch_wait_timeout_s"),
        ({"max_batch_size": 4, "max_concurrent_batches": 0}, "max_concurrent_batches"),
        ({"batch_wait_timeout_s": 0.1}, "need max_batch_size"),
    ],
)
def test_bad_settings_name_the_option(options: dict[str, Any], named: str) -> None:
    with pytest.raises(ValueError, match=named):
        BatchSettings.from_options(options)


def _by_value(func: Any) -> Any:
    """``func`` as cloudpickle rebuilds a function of a module pickled by value (how a
    plugin's code reaches its replicas): its globals hold only the names its code uses."""
    import builtins
    import types

    used = {n: func.__globals__[n] for n in func.__code__.co_names if n in func.__globals__}
    copy = types.FunctionType(func.__code__, {"__builtins__": builtins, **used})
    copy.__annotations__ = dict(func.__annotations__)
    return copy


def test_annotations_of_a_function_pickled_by_value_still_validate() -> None:
    from synapse_sdk.serving._replica import _resolve_hints

    @batched
    async def infer(x: list[float], tag: list[str], extra: Any = None) -> list[dict[str, Any]]:
        return []

    rebuilt = _by_value(infer)
    # Any is in no globals the rebuilt function kept: resolving everything at once fails.
    with pytest.raises(NameError):
        __import__("typing").get_type_hints(rebuilt)
    assert _resolve_hints(rebuilt) == {"x": list[float], "tag": list[str], "extra": Any}
