"""The client against the real platform server (in-process, port 0, toy plugins)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from synapse_client import (
    AsyncClient,
    Client,
    InvalidArgumentError,
    JobCancelledError,
    JobEvent,
    JobFailedError,
    JobState,
    LogEvent,
    NotFoundError,
    ProgressEvent,
    StateChangedEvent,
    TerminalEvent,
    UnauthenticatedError,
)

RESULT_TIMEOUT = 60


@pytest.fixture
def client(platform_server: Any) -> Iterator[Client]:
    with Client(platform_server.address) as c:
        yield c


def test_list_actions_describes_the_toy_plugin(client: Client) -> None:
    plugins = {p.code: p for p in client.list_actions()}
    toy = plugins["toy"]
    quick = next(a for a in toy.actions if a.name == "quick")
    assert quick.params_schema is not None
    assert set(quick.params_schema["properties"]) >= {"count", "label"}
    assert [p.code for p in client.list_actions(plugin="toy")] == ["toy"]


def test_run_follow_progress_to_terminal_and_result(client: Client) -> None:
    handle = client.run_action("toy", "quick", {"count": 4, "label": "e2e"})
    assert handle.created is True
    events = list(handle.events())
    seqs = [e.seq for e in events]
    assert seqs == list(range(1, len(events) + 1))  # one subscriber keeping up: no gaps
    kinds = [type(e.payload) for e in events]
    assert kinds[0] is StateChangedEvent and kinds[-1] is TerminalEvent
    progress = [e.payload for e in events if isinstance(e.payload, ProgressEvent)]
    assert [p.current for p in progress] == [1, 2, 3, 4]
    assert progress[-1].overall_percent == pytest.approx(100.0)
    assert any(isinstance(e.payload, LogEvent) and e.payload.event == "done" for e in events)
    assert handle.result(timeout=RESULT_TIMEOUT) == {"label": "e2e", "count": 4}
    job = handle.refresh()
    assert job.state is JobState.SUCCEEDED and job.last_seq == seqs[-1]


def test_large_result_is_fetched_with_get_job_result(client: Client) -> None:
    size = (1 << 20) + 1000  # over the server's 1 MiB inline limit
    handle = client.run_action("toy", "quick", {"count": 1, "label": "big", "big": size})
    result = handle.result(timeout=RESULT_TIMEOUT)
    assert result["blob"] == "x" * size
    terminal = list(handle.events())[-1].payload
    assert isinstance(terminal, TerminalEvent) and terminal.result_inline is False


def test_failure_is_typed_with_plugin_traceback(client: Client) -> None:
    handle = client.run_action("toy", "fail")
    with pytest.raises(JobFailedError) as info:
        handle.result(timeout=RESULT_TIMEOUT)
    assert info.value.error_type == "ValueError"
    assert info.value.message == "toy failure"
    assert "toy failure" in info.value.traceback and "Traceback" in info.value.traceback
    assert info.value.job_id == handle.id


def test_cancel_running_job(client: Client) -> None:
    handle = client.run_action("toy", "slow")
    # Wait until the waiting step runs, so the cancel reaches a running action.
    for event in handle.events():
        if isinstance(event.payload, LogEvent | ProgressEvent) or event.seq >= 3:
            break
    handle.cancel("test says stop")
    with pytest.raises(JobCancelledError) as info:
        handle.result(timeout=RESULT_TIMEOUT)
    assert "test says stop" in info.value.reason
    assert client.get_job(handle.id).state is JobState.CANCELLED


def test_retry_with_same_request_id_is_idempotent(client: Client) -> None:
    request_id = uuid.uuid4().hex
    first = client.run_action("toy", "quick", {"count": 1, "label": "a"}, request_id=request_id)
    again = client.run_action("toy", "quick", {"count": 1, "label": "a"}, request_id=request_id)
    assert again.id == first.id and first.created is True and again.created is False
    assert again.job is not None and again.job.request_id == request_id


def _ticks(events: list[JobEvent]) -> list[int]:
    return [e.payload.data["i"] for e in events if isinstance(e.payload, LogEvent)]


def test_resume_from_a_seq_sees_the_rest_exactly_once(client: Client) -> None:
    handle = client.run_action("toy", "chatty", {"events": 300})
    seen: list[JobEvent] = []
    for event in handle.events():
        seen.append(event)
        if len(seen) == 50:
            break  # drop the stream, as a crashed or disconnected follower would
    rest = list(handle.events(after_seq=seen[-1].seq))
    combined = [e.seq for e in seen + rest]
    assert combined == sorted(set(combined))  # no duplicates, in order
    # Progress may be coalesced for a lagging reader; logs never are, and none repeats.
    assert _ticks(seen + rest) == list(range(10, 301, 10))
    assert rest[-1].is_terminal
    assert handle.result(timeout=RESULT_TIMEOUT) == {"events": 300}
    replay = list(handle.events(follow=False))
    assert _ticks(replay) == list(range(10, 301, 10)) and replay[-1].is_terminal


def test_bad_requests_are_typed(client: Client) -> None:
    with pytest.raises(InvalidArgumentError) as info:
        client.run_action("toy", "quick", {"count": -1, "label": "x"})
    assert any("count" in v.field for v in info.value.field_violations)
    with pytest.raises(NotFoundError):
        client.run_action("no-such-plugin", "quick", {})
    with pytest.raises(NotFoundError):
        client.get_job("no-such-job")


def test_list_jobs_filters_and_pages(client: Client) -> None:
    label = uuid.uuid4().hex
    ids = {client.run_action("toy", "quick", {"count": 1, "label": label}).id for _ in range(3)}
    for job_id in ids:
        client.job(job_id).result(timeout=RESULT_TIMEOUT)
    listed = list(client.list_jobs(plugin="toy", action="quick", page_size=2))
    assert ids <= {j.id for j in listed}
    assert len({j.id for j in listed}) == len(listed)  # pages do not repeat jobs
    succeeded = {j.id for j in client.list_jobs(state="succeeded", plugin="toy", page_size=2)}
    assert ids <= succeeded
    assert not ids & {j.id for j in client.list_jobs(state=[JobState.FAILED], plugin="toy")}


async def test_async_client_same_surface(platform_server: Any) -> None:
    async with AsyncClient(platform_server.address) as client:
        plugins = await client.list_actions()
        assert "toy" in {p.code for p in plugins}
        handle = await client.run_action("toy", "quick", {"count": 2, "label": "aio"})
        progress = [e.payload.current async for e in handle.progress()]  # type: ignore[union-attr]
        assert progress == [1, 2]
        assert await handle.result(timeout=RESULT_TIMEOUT) == {"label": "aio", "count": 2}
        failing = await client.run_action("toy", "fail")
        with pytest.raises(JobFailedError):
            await failing.result(timeout=RESULT_TIMEOUT)
        slow = await client.run_action("toy", "slow")
        await slow.cancel("async stop")
        with pytest.raises(JobCancelledError):
            await slow.result(timeout=RESULT_TIMEOUT)
        jobs = [j async for j in client.list_jobs(plugin="toy", page_size=2)]
        assert handle.id in {j.id for j in jobs}


def test_token_auth(server_factory: Callable[..., Any]) -> None:
    server = server_factory(tokens={"tok-1": "tenant-a"})
    with Client(server.address) as anonymous, pytest.raises(UnauthenticatedError):
        anonymous.list_actions()
    with Client(server.address, token="wrong") as wrong, pytest.raises(UnauthenticatedError):
        wrong.list_actions()
    with Client(server.address, token="tok-1") as client:
        handle = client.run_action("toy", "quick", {"count": 1, "label": "auth"})
        assert handle.result(timeout=RESULT_TIMEOUT)["label"] == "auth"
