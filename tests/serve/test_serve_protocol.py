"""The Infer router speaks the serve protocol: plain messages out, replies checked back.

The handle here is a stand-in answering set messages (what a replica of another SDK version
would answer); real replicas answer the router in test_serve_core.py.
"""

from __future__ import annotations

import io
import pickle
from typing import Any

import pytest
from synapse_sdk.serving import (
    INFER_GROUP_METHOD,
    INFER_METHOD,
    PROTOCOL_VERSION,
    ServeReply,
    ServeRequest,
)
from synapse_server.core import ServiceUnavailableError
from synapse_server.core.inference import ServeProtocolMismatchError
from synapse_server.ray import RayRuntime, ServeRouter

pytestmark = pytest.mark.asyncio(loop_scope="session")


class _Response:
    def __init__(self, answer: Any) -> None:
        self._answer = answer

    def __await__(self) -> Any:
        if False:
            yield
        return self._answer

    def cancel(self) -> None:
        pass


class _Handle:
    def __init__(self, answer: Any) -> None:
        self.answer = answer
        self.sent: list[bytes] = []
        #: The replica method of each call.
        self.methods: list[str] = []
        self.method = ""

    def remote(self, message: Any, *more: Any) -> _Response:
        self.sent.append(pickle.dumps(message))
        self.methods.append(self.method)
        return _Response(self.answer)


def _router(answer: Any) -> tuple[ServeRouter, _Handle]:
    router = ServeRouter(RayRuntime())
    handle = _Handle(answer)

    async def _handle(app_name: str, token: str, method: str = INFER_METHOD) -> tuple[Any, Any]:
        handle.method = method
        return object(), handle

    router._handle = _handle  # type: ignore[method-assign]
    return router, handle


class _BuiltinsOnly(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        raise AssertionError(f"the request needs {module}.{name} to be read")


async def test_the_router_sends_plain_messages_and_reads_replies() -> None:
    router, handle = _router(ServeReply(json={"y": 1}).to_wire())
    request = ServeRequest(json=[1], has_json=True, headers={"traceparent": "t"})
    reply = await router.call("app", "token", request, timeout_s=5)
    assert reply == ServeReply(json={"y": 1})
    (sent,) = handle.sent
    assert ServeRequest.from_wire(_BuiltinsOnly(io.BytesIO(sent)).load()) == request


async def test_a_reply_of_another_major_is_a_protocol_mismatch() -> None:
    newer = (PROTOCOL_VERSION[0] + 1, 0)
    router, _ = _router({"v": newer, "json": {"y": 1}})
    with pytest.raises(ServeProtocolMismatchError) as raised:
        await router.call("app", "token", ServeRequest(), timeout_s=5)
    assert "'app'" in str(raised.value) and f"{newer[0]}.0" in str(raised.value)


@pytest.mark.parametrize(
    "answer", [None, "text", ["list"], {"v": (PROTOCOL_VERSION[0], 0), "tensors": 5}]
)
async def test_an_answer_that_is_not_a_reply_is_unavailable(answer: Any) -> None:
    router, _ = _router(answer)
    with pytest.raises(ServiceUnavailableError, match="not a serve reply"):
        await router.call("app", "token", ServeRequest(), timeout_s=5)


async def test_a_group_is_sent_as_one_call_of_plain_messages() -> None:
    replies = [ServeReply(json={"y": i}).to_wire() for i in range(3)]
    router, handle = _router(replies)
    requests = [ServeRequest(json=[i], has_json=True) for i in range(3)]
    answered = await router.call_group("app", "token", requests, timeout_s=5, waited_s=0.01)
    assert answered == [ServeReply(json={"y": i}) for i in range(3)]
    assert handle.methods == [INFER_GROUP_METHOD]
    (sent,) = handle.sent
    messages = _BuiltinsOnly(io.BytesIO(sent)).load()
    assert [ServeRequest.from_wire(m) for m in messages] == requests


@pytest.mark.parametrize("answer", [None, {"v": PROTOCOL_VERSION}, [], ["x", "y", "z"]])
async def test_a_group_answer_without_a_reply_per_request_is_unavailable(answer: Any) -> None:
    """A replica is the tenant's code: an answer of the wrong shape, or a reply short, fails
    the group as unavailable rather than leaving a caller without an answer."""
    router, _ = _router(answer)
    requests = [ServeRequest(json=[i], has_json=True) for i in range(2)]
    with pytest.raises(ServiceUnavailableError):
        await router.call_group("app", "token", requests, timeout_s=5)
