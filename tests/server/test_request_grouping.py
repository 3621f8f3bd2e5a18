"""Server-side grouping of concurrent Infer calls (synapse_server.core.batching), over a
stand-in backend that records what it is sent; the real replicas taking groups are exercised
in tests/serve/test_batching.py."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import pytest
from synapse_sdk.serving import MAX_GROUP_SIZE, ErrorKind, ServeReply, ServeRequest
from synapse_server.core import ResourceExhaustedError
from synapse_server.core.batching import (
    MAX_GROUP_WAIT_S,
    GroupNotSupportedError,
    GroupSettings,
    RequestGrouper,
)
from synapse_server.core.deployments import DeploymentRecord
from synapse_server.core.inference import (
    InferDeadlineExceededError,
    InferenceService,
    InferRequestData,
    ServeKeyring,
)

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.timeout(30)]

HINT = (4, 0.05)
RECORD = DeploymentRecord(id=1, tenant="acme", name="app", plugin="p", action="a", model_ids=(3, 5))


class _Backend:
    """Answers each request with its own ``x`` doubled; records every call."""

    def __init__(self) -> None:
        self.alone: list[ServeRequest] = []
        self.groups: list[tuple[str, list[ServeRequest], float | None, float]] = []
        self.group_error: BaseException | None = None
        #: Set to hold group calls until released.
        self.hold: asyncio.Event | None = None
        self.cancelled = 0

    @staticmethod
    def _answer(request: ServeRequest) -> ServeReply:
        x = request.json["x"]
        if x < 0:
            return ServeReply(error_kind=ErrorKind.INVALID_ARGUMENT, error_message="x < 0")
        return ServeReply(json={"y": 2 * x}, batch_size=1, group=HINT)

    async def call(
        self, app_name: str, token: str, request: ServeRequest, timeout_s: float | None
    ) -> ServeReply:
        self.alone.append(request)
        return self._answer(request)

    async def call_group(
        self,
        app_name: str,
        token: str,
        requests: Sequence[ServeRequest],
        timeout_s: float | None,
        waited_s: float = 0.0,
    ) -> list[ServeReply]:
        self.groups.append((token, list(requests), timeout_s, waited_s))
        if self.hold is not None:
            try:
                await self.hold.wait()
            except asyncio.CancelledError:
                self.cancelled += 1
                raise
        if self.group_error is not None:
            raise self.group_error
        return [self._answer(request) for request in requests]


class _Deployments:
    async def resolve(self, tenant: str, application: Any, plugin: Any, action: Any) -> Any:
        return RECORD


def _request(x: float, path: str = "/") -> ServeRequest:
    return ServeRequest(path=path, json={"x": x}, has_json=True)


SETTINGS = GroupSettings(max_size=4, wait_s=0.05)


async def test_concurrent_calls_go_as_one_group_each_with_its_own_reply() -> None:
    backend = _Backend()
    grouper = RequestGrouper(backend)
    replies = await asyncio.gather(
        *(grouper.call("app", "m3", _request(i), 10.0, SETTINGS) for i in (1, 2, -1))
    )
    assert [r.json for r in replies[:2]] == [{"y": 2}, {"y": 4}]
    # A request that fails in the replica fails alone.
    assert replies[2].error_kind == ErrorKind.INVALID_ARGUMENT
    ((token, sent, timeout_s, waited_s),) = backend.groups
    assert token == "m3" and [r.json["x"] for r in sent] == [1, 2, -1]
    assert timeout_s is not None and 9.0 < timeout_s <= 10.0
    # Not full: the group left when its wait ended, and says how long it was held.
    assert 0.04 <= waited_s < 1.0
    assert backend.alone == []


async def test_a_full_group_leaves_at_once_and_the_next_call_starts_another() -> None:
    backend = _Backend()
    grouper = RequestGrouper(backend)
    slow = GroupSettings(max_size=3, wait_s=20.0)
    loop = asyncio.get_running_loop()
    started = loop.time()
    replies = await asyncio.gather(
        *(grouper.call("app", "m3", _request(i), None, slow) for i in range(3))
    )
    assert loop.time() - started < 5.0 and [r.json["y"] for r in replies] == [0, 2, 4]
    late = asyncio.ensure_future(grouper.call("app", "m3", _request(9), None, slow))
    await asyncio.sleep(0.05)
    assert not late.done() and len(backend.groups) == 1  # waiting for company
    late.cancel()
    with pytest.raises(asyncio.CancelledError):
        await late
    assert [len(g[1]) for g in backend.groups] == [3]
    assert backend.groups[0][2] is None  # no deadline: the group call has none either


async def test_groups_never_mix_models_or_endpoints() -> None:
    backend = _Backend()
    grouper = RequestGrouper(backend)
    calls = [
        grouper.call("app", "m3", _request(1), 10.0, SETTINGS),
        grouper.call("app", "m5", _request(2), 10.0, SETTINGS),
        grouper.call("app", "m3", _request(3, path="/other"), 10.0, SETTINGS),
        grouper.call("other-app", "m3", _request(4), 10.0, SETTINGS),
        grouper.call("app", "m3", _request(5), 10.0, SETTINGS),
    ]
    replies = await asyncio.gather(*calls)
    assert [r.json["y"] for r in replies] == [2, 4, 6, 8, 10]
    groups = sorted((token, [r.json["x"] for r in sent]) for token, sent, _, _ in backend.groups)
    assert groups == [("m3", [1, 5]), ("m3", [3]), ("m3", [4]), ("m5", [2])]


async def test_a_caller_gone_before_its_group_left_is_left_out() -> None:
    backend = _Backend()
    grouper = RequestGrouper(backend)
    staying = asyncio.ensure_future(grouper.call("app", "m3", _request(1), 10.0, SETTINGS))
    leaving = asyncio.ensure_future(grouper.call("app", "m3", _request(2), 10.0, SETTINGS))
    await asyncio.sleep(0)
    leaving.cancel()
    assert (await staying).json == {"y": 2}
    assert leaving.cancelled()
    ((_, sent, _, _),) = backend.groups
    assert [r.json["x"] for r in sent] == [1]


async def test_a_group_whose_callers_all_left_is_cancelled_in_the_backend() -> None:
    backend = _Backend()
    backend.hold = asyncio.Event()
    grouper = RequestGrouper(backend)
    full = GroupSettings(max_size=2, wait_s=10.0)
    first = asyncio.ensure_future(grouper.call("app", "m3", _request(1), None, full))
    second = asyncio.ensure_future(grouper.call("app", "m3", _request(2), None, full))
    for _ in range(100):
        if backend.groups:
            break
        await asyncio.sleep(0.01)
    first.cancel()
    await asyncio.sleep(0.01)
    assert backend.cancelled == 0  # one caller still waits for the group's answer
    second.cancel()
    for _ in range(100):
        if backend.cancelled:
            break
        await asyncio.sleep(0.01)
    assert backend.cancelled == 1


async def test_a_group_the_replicas_cannot_take_is_sent_one_call_at_a_time() -> None:
    backend = _Backend()
    backend.group_error = GroupNotSupportedError("no group method")
    grouper = RequestGrouper(backend)
    replies = await asyncio.gather(
        *(grouper.call("app", "m3", _request(i), 10.0, SETTINGS) for i in (1, 2))
    )
    assert [r.json["y"] for r in replies] == [2, 4]
    assert sorted(r.json["x"] for r in backend.alone) == [1, 2]


async def test_a_group_failure_fails_each_of_its_calls() -> None:
    backend = _Backend()
    backend.group_error = ResourceExhaustedError("'app' is overloaded")
    grouper = RequestGrouper(backend)
    results = await asyncio.gather(
        *(grouper.call("app", "m3", _request(i), 10.0, SETTINGS) for i in (1, 2)),
        return_exceptions=True,
    )
    assert all(isinstance(r, ResourceExhaustedError) for r in results), results


async def test_what_replies_say_of_an_endpoint_is_learned_and_capped() -> None:
    grouper = RequestGrouper(_Backend())
    request = _request(1)
    assert grouper.settings_for("app", request) is None
    grouper.learn("app", request, ServeReply(json=1, group=(8, 0.01)))
    assert grouper.settings_for("app", request) == GroupSettings(8, 0.01)
    assert grouper.settings_for("app", _request(1, path="/x")) is None
    # A replica is the tenant's code: its wait is capped by the server.
    grouper.learn("app", request, ServeReply(json=1, group=(MAX_GROUP_SIZE, 3600.0)))
    assert grouper.settings_for("app", request) == GroupSettings(MAX_GROUP_SIZE, MAX_GROUP_WAIT_S)
    # A failed reply says nothing of batching; a successful one without the hint does.
    grouper.learn("app", request, ServeReply(error_kind=ErrorKind.INTERNAL, error_message="x"))
    assert grouper.settings_for("app", request) is not None
    grouper.learn("app", request, ServeReply(json=1))
    assert grouper.settings_for("app", request) is None
    grouper.learn("app", request, ServeReply(json=1, group=(1, 0.01)))  # nothing to group
    assert grouper.settings_for("app", request) is None


def _service(backend: _Backend) -> InferenceService:
    return InferenceService(_Deployments(), backend, ServeKeyring(b"s" * 32))  # type: ignore[arg-type]


def _infer(x: float, timeout_s: float | None = 10.0) -> InferRequestData:
    return InferRequestData(
        application="app", model_id="3", json={"x": x}, has_json=True, timeout_s=timeout_s
    )


async def test_the_inference_core_groups_once_a_reply_says_the_endpoint_batches() -> None:
    backend = _Backend()
    service = _service(backend)
    first = await service.infer("acme", _infer(1))
    assert first.json == {"y": 2} and len(backend.alone) == 1 and not backend.groups
    results = await asyncio.gather(*(service.infer("acme", _infer(i)) for i in range(6)))
    assert [r.json["y"] for r in results] == [2 * i for i in range(6)]
    assert sorted(len(sent) for _, sent, _, _ in backend.groups) == [2, 4]
    assert len(backend.alone) == 1


async def test_a_grouped_call_past_its_deadline_is_deadline_exceeded() -> None:
    backend = _Backend()
    service = _service(backend)
    await service.infer("acme", _infer(1))  # learns the endpoint batches
    backend.hold = asyncio.Event()
    patient = asyncio.ensure_future(service.infer("acme", _infer(2, timeout_s=10.0)))
    with pytest.raises(InferDeadlineExceededError, match="deadline"):
        await service.infer("acme", _infer(3, timeout_s=0.2))
    # The other call of the group still gets its answer.
    backend.hold.set()
    assert (await patient).json == {"y": 4}
