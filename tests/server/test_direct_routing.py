"""The direct path's routing (synapse_server.ray._direct) over fake replica channels: which
replica a call goes to, when it is handed back to Serve's handle, and how a replica's
failures map onto the platform's errors. The real replicas are in tests/serve/test_direct.py.
"""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest
from synapse_sdk.serving import pack_direct_message, unpack_direct_message
from synapse_server.core._errors import ServiceUnavailableError
from synapse_server.core.inference import InferDeadlineExceededError
from synapse_server.ray._direct import (
    NOT_ROUTED,
    DirectReplicas,
    DirectTooLargeError,
    _App,
    _Replica,
)

pytestmark = pytest.mark.asyncio

APP = "app"


class _Runtime:
    async def ensure_started(self) -> None:
        return None


class _Channel:
    def __init__(self) -> None:
        self.closed = False

    async def close(self, grace: float | None = None) -> None:
        self.closed = True


class _Method:
    """A replica method: answers the request back, or raises ``fail``; holds ``gate``."""

    def __init__(self, name: str, fail: Exception | None = None) -> None:
        self.name = name
        self.fail = fail
        self.calls: list[tuple[Any, float | None, Any]] = []
        self.gate: asyncio.Event | None = None

    async def __call__(self, data: bytes, **options: Any) -> bytes:
        self.calls.append((unpack_direct_message(data), options["timeout"], options["metadata"]))
        if self.gate is not None:
            await self.gate.wait()
        if self.fail is not None:
            raise self.fail
        return pack_direct_message({"by": self.name})


def _replica(name: str, max_ongoing: int = 2, fail: Exception | None = None) -> _Replica:
    method = _Method(name, fail)
    return _Replica(
        replica_id=name,
        address=f"{name}:1",
        max_ongoing=max_ongoing,
        channel=_Channel(),
        infer=method,
        infer_group=method,
    )


def _router(*replicas: _Replica, direct: bool = True, registry: Any = None) -> DirectReplicas:
    entries = [
        {"replica": r.replica_id, "address": r.address, "max_ongoing": r.max_ongoing}
        for r in replicas
    ]

    def read(app_name: str, suspects: set[str], known: set[str]) -> list[dict[str, Any]]:
        return [{**e, "autoscaling": not direct} for e in entries]

    router = DirectReplicas(
        _Runtime(),  # type: ignore[arg-type]
        max_message_bytes=1 << 20,
        refresh_s=3600,
        registry=registry or read,
    )
    app = _App(replicas={r.replica_id: r for r in replicas}, direct=direct)
    app.fetched_at = asyncio.get_running_loop().time()  # no registry read in these tests
    router._apps[APP] = app
    return router


def _error(code: grpc.StatusCode, details: str = "") -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details=details)


async def _call(router: DirectReplicas, token: str = "m1", deadline_s: float = 5) -> Any:
    return await router.call(APP, token, {"v": [1, 2]}, deadline_s, group=False)


async def test_a_model_s_calls_stay_on_the_replica_that_has_it() -> None:
    router = _router(_replica("a"), _replica("b"))
    first = (await _call(router, "m1"))["by"]
    assert [(await _call(router, "m1"))["by"] for _ in range(10)] == [first] * 10
    assert router.direct_calls == 11
    method = router._apps[APP].replicas[first].infer
    _, timeout, metadata = method.calls[0]
    assert timeout == 5
    assert dict(metadata) == {"synapse-app": APP, "synapse-model-id": "m1"}


async def test_full_replicas_hand_the_call_to_serve() -> None:
    a = _replica("a", max_ongoing=1)
    a.infer.gate = asyncio.Event()
    router = _router(a)
    held = asyncio.ensure_future(_call(router))
    await asyncio.sleep(0)
    assert a.in_flight == 1
    assert await _call(router) is NOT_ROUTED
    a.infer.gate.set()
    assert (await held)["by"] == "a"
    assert a.in_flight == 0
    assert router.not_routed == 1


async def test_a_busy_holder_gives_way_to_a_replica_with_room() -> None:
    a, b = _replica("a", max_ongoing=1), _replica("b", max_ongoing=1)
    router = _router(a, b)
    router._apps[APP].holders["m1"] = "a"
    a.in_flight = 1
    assert (await _call(router, "m1"))["by"] == "b"


async def test_no_replicas_or_an_autoscaling_deployment_is_not_routed() -> None:
    assert await _call(_router()) is NOT_ROUTED
    assert await _call(_router(_replica("a"), direct=False)) is NOT_ROUTED


async def test_a_message_msgpack_cannot_carry_is_not_routed() -> None:
    router = _router(_replica("a"))
    answer = await router.call(APP, "m1", {"json": object()}, 5, group=False)
    assert answer is NOT_ROUTED


@pytest.mark.parametrize(
    "error",
    [
        _error(grpc.StatusCode.UNAVAILABLE, "failed to connect"),
        _error(grpc.StatusCode.FAILED_PRECONDITION, "this replica serves another application"),
    ],
)
async def test_an_unreachable_or_foreign_replica_is_left_out(error: Exception) -> None:
    dead, alive = _replica("dead", fail=error), _replica("alive")
    router = _router(dead, alive)
    router._apps[APP].holders["m1"] = "dead"
    assert await _call(router, "m1") is NOT_ROUTED
    # The next calls go to the other replica while the failed one is left out.
    assert [(await _call(router, "m1"))["by"] for _ in range(5)] == ["alive"] * 5


async def test_a_replica_full_of_other_servers_calls_hands_the_call_to_serve() -> None:
    full = _replica("a", fail=_error(grpc.StatusCode.RESOURCE_EXHAUSTED, "Concurrent RPC limit"))
    router = _router(full)
    assert await _call(router) is NOT_ROUTED
    assert not router._apps[APP].quarantined  # busy, not gone


async def test_a_replica_s_failures_map_onto_the_platform_s_errors() -> None:
    router = _router(_replica("a", fail=_error(grpc.StatusCode.DEADLINE_EXCEEDED)))
    with pytest.raises(InferDeadlineExceededError):
        await _call(router)
    router = _router(_replica("a", fail=_error(grpc.StatusCode.RESOURCE_EXHAUSTED, "too big")))
    with pytest.raises(DirectTooLargeError) as too_large:
        await _call(router)
    assert too_large.value.sent  # the answer was too large: the call ran
    router = _router(_replica("a", fail=_error(grpc.StatusCode.INTERNAL, "x" * 10_000)))
    with pytest.raises(ServiceUnavailableError) as caught:
        await _call(router)
    assert len(str(caught.value)) < 200  # the replica's text is not echoed


async def test_an_unreadable_answer_is_unavailable() -> None:
    a = _replica("a")

    async def garbage(data: bytes, **options: Any) -> bytes:
        return b"\xc1"

    a.infer = garbage
    with pytest.raises(ServiceUnavailableError):
        await _call(_router(a))


async def test_a_cancelled_caller_leaves_no_call_counted() -> None:
    a = _replica("a")
    a.infer.gate = asyncio.Event()
    router = _router(a)
    task = asyncio.ensure_future(_call(router))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert a.in_flight == 0


async def test_registrations_replace_the_replica_set() -> None:
    router = _router(_replica("a"), _replica("b"))
    app = router._apps[APP]
    entry = {"replica": "c", "address": "127.0.0.1:1", "max_ongoing": 3, "autoscaling": False}
    router._apply(app, [entry])
    assert list(app.replicas) == ["c"] and app.direct
    router._apply(app, [{**entry, "autoscaling": True}])
    assert not app.direct
    router._apply(app, [])
    assert not app.replicas and not app.direct
    await router.close()


async def test_a_request_over_the_limit_is_refused_before_it_is_sent() -> None:
    a = _replica("a")
    router = _router(a)
    with pytest.raises(DirectTooLargeError) as caught:
        await router.call(APP, "m1", {"json": "x" * (2 << 20)}, 5, group=True)
    assert not caught.value.sent
    assert a.infer.calls == []


async def test_a_refused_model_id_goes_through_serve_and_leaves_the_replica_in() -> None:
    a = _replica("a", fail=_error(grpc.StatusCode.UNAUTHENTICATED, "no valid model id"))
    router = _router(a)
    assert await _call(router) is NOT_ROUTED
    assert not router._apps[APP].quarantined and not router._apps[APP].suspects


async def test_a_dropped_replica_s_channel_closes_after_its_last_call() -> None:
    a = _replica("a")
    a.infer.gate = asyncio.Event()
    router = _router(a)
    held = asyncio.ensure_future(_call(router))
    await asyncio.sleep(0)
    router._apply(router._apps[APP], [])  # the replica unregistered
    await asyncio.sleep(0)
    assert not a.channel.closed  # its call goes on
    a.infer.gate.set()
    assert (await held)["by"] == "a"
    await asyncio.sleep(0)
    assert a.channel.closed
    await router.close()


async def test_a_failed_registry_read_keeps_the_replica_set() -> None:
    def broken(app_name: str, suspects: set[str], known: set[str]) -> list[dict[str, Any]]:
        raise RuntimeError("GCS unavailable")

    a = _replica("a")
    router = _router(a, registry=broken)
    app = router._apps[APP]
    await router._refresh(APP, app)
    assert list(app.replicas) == ["a"] and app.direct
    assert (await _call(router))["by"] == "a"


async def test_a_channel_closed_under_a_call_is_unavailable_not_a_cancel() -> None:
    a = _replica("a")

    async def closed(data: bytes, **options: Any) -> bytes:
        raise asyncio.CancelledError  # what grpc.aio raises when the channel closes

    a.infer = closed
    with pytest.raises(ServiceUnavailableError):
        await _call(_router(a))


async def test_close_closes_every_channel() -> None:
    a, b = _replica("a"), _replica("b")
    router = _router(a, b)
    await router.close()
    assert a.channel.closed and b.channel.closed
