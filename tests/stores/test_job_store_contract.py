"""The JobStore contract, run against every store backend (see conftest.py).

Only the protocol's methods are used here; what a backend does on disk is tested beside it
(test_sqlite_*.py).
"""

from __future__ import annotations

import asyncio
import json

import pytest
from synapse_sdk.models import ArchiveFormat
from synapse_server.core import (
    ErrorOrigin,
    EventKind,
    InvalidArgumentError,
    Job,
    JobError,
    JobEvent,
    JobFilter,
    JobState,
    JobStore,
    RequestIdConflictError,
)
from synapse_server.core.models import ModelRecord
from synapse_server.stores import Stores

from tests.stores.conftest import StoreBackend

pytestmark = pytest.mark.timeout(60)


def _model(i: int) -> ModelRecord:
    return ModelRecord(0, "t1", f"m{i}", "", "", {}, f"{i:064x}", 1, ArchiveFormat.ZIP, 1.0)


def _job(
    job_id: str,
    tenant: str = "t1",
    plugin: str = "p",
    action: str = "a",
    request_id: str | None = None,
    params_json: str = '{"x": 1}',
    created_at: float = 1.0,
) -> Job:
    return Job(
        id=job_id,
        tenant=tenant,
        plugin=plugin,
        action=action,
        params_json=params_json,
        request_id=request_id,
        created_at=created_at,
    )


@pytest.fixture
def jobs(stores: Stores) -> JobStore:
    return stores.jobs


async def test_a_job_reads_back_with_every_field(jobs: JobStore) -> None:
    job, created = await jobs.create_job(
        _job("j1", request_id="r1").evolve(
            plugin_version="1.2.0",
            plugin_sha256="a" * 64,
            mode="task",
            pending_reason="queued",
            warnings=("unknown params key 'batchsize' (ignored)", "ü '\\n'"),
        )
    )
    assert created
    assert await jobs.get_job("j1", with_params=True) == job
    # Listings and summaries carry the warnings too.
    assert (await jobs.get_job("j1")).warnings == job.warnings  # type: ignore[union-attr]
    error = JobError(
        type="ValueError",
        message="bad ü",
        origin=ErrorOrigin.PLUGIN,
        traceback="tb",
        step="s1",
        correlation_id="c1",
    )
    done = job.evolve(
        state=JobState.FAILED,
        error=error,
        reason="it failed",
        started_at=1.5,
        finished_at=2.0,
        progress=40.0,
        last_seq=7,
        pending_reason="",
        cancel_requested=True,
    )
    await jobs.update_job(done)
    assert await jobs.get_job("j1", with_params=True) == done
    # Without with_params: the same job, less its params text.
    assert await jobs.get_job("j1") == done.evolve(params_json="")
    assert await jobs.get_job("missing") is None
    assert await jobs.get_job("missing", with_params=True) is None


async def test_update_changes_only_the_mutable_fields(jobs: JobStore) -> None:
    job, _ = await jobs.create_job(_job("j1", request_id="r1"))
    changed = job.evolve(
        tenant="other", plugin="q", action="b", mode="job", request_id="r2", created_at=9.0
    )
    await jobs.update_job(changed.evolve(state=JobState.RUNNING))
    assert await jobs.get_job("j1", with_params=True) == job.evolve(state=JobState.RUNNING)


async def test_params_text_is_kept_byte_for_byte(jobs: JobStore) -> None:
    # Spacing, key order, big integers, escapes and non-ASCII survive: the store never parses
    # and re-serialises the text.
    text = '{"b" :  [1,2.50,  100000000000000000000000], "a": "\\u00e9 é \\n", "c": {}}'
    await jobs.create_job(_job("j1", params_json=text))
    loaded = await jobs.get_job("j1", with_params=True)
    assert loaded is not None and loaded.params_json == text
    assert loaded.params["b"][2] == 10**23
    (pending,) = await jobs.jobs_in_states([JobState.PENDING])
    assert pending.params_json == text


async def test_result_text_is_kept_and_read_apart_from_the_job(jobs: JobStore) -> None:
    job, _ = await jobs.create_job(_job("j1"))
    assert await jobs.get_result("j1") == ("t1", JobState.PENDING, None)
    text = '{"results":[{"prediction":[0.5,-1]}],"big":100000000000000000000000,"é":"\\u00e9"}'
    size = len(text.encode())
    finished = job.evolve(state=JobState.SUCCEEDED, result_json=text, result_size=size)
    await jobs.update_job(finished)
    assert await jobs.get_result("j1") == ("t1", JobState.SUCCEEDED, text)
    # A job read back carries the result's size, not its text (only get_result reads that).
    for loaded in (await jobs.get_job("j1"), await jobs.get_job("j1", with_params=True)):
        assert loaded is not None and loaded.result_json == "" and loaded.result is None
        assert loaded.result_size == size
    # Writing such a job back (it has no text) keeps the stored text.
    loaded = await jobs.get_job("j1", with_params=True)
    assert loaded is not None
    await jobs.update_job(loaded.evolve(progress=100.0))
    assert await jobs.get_result("j1") == ("t1", JobState.SUCCEEDED, text)
    assert await jobs.get_result("missing") is None


async def test_a_result_given_as_a_value_is_stored_as_its_json(jobs: JobStore) -> None:
    job, _ = await jobs.create_job(_job("j1"))
    await jobs.update_job(job.evolve(state=JobState.SUCCEEDED, result={"answer": [1, 2]}))
    row = await jobs.get_result("j1")
    assert row is not None and json.loads(row[2] or "") == {"answer": [1, 2]}


async def test_request_ids_are_idempotent_per_tenant(jobs: JobStore) -> None:
    first, created = await jobs.create_job(_job("j1", request_id="r1"))
    again, created_again = await jobs.create_job(_job("j2", request_id="r1"))
    assert created and not created_again
    assert again == first
    assert await jobs.get_job("j2") is None
    # The same params in other spacing and key order are the same request.
    _, created_same = await jobs.create_job(
        _job("j3", request_id="r2", params_json='{"x": 1, "y": [1, 2]}')
    )
    assert created_same
    spaced, created_spaced = await jobs.create_job(
        _job("j4", request_id="r2", params_json='{ "y":[1,2],"x":1 }')
    )
    assert not created_spaced and spaced.id == "j3"
    # Same request id, another tenant: a separate job.
    other, created_other = await jobs.create_job(_job("j5", tenant="t2", request_id="r1"))
    assert created_other and other.id == "j5"
    # Same id, another request: refused, and nothing stored.
    for different in (
        _job("j6", request_id="r1", params_json='{"x": 2}'),
        _job("j6", request_id="r1", plugin="q"),
        _job("j6", request_id="r1", action="b"),
        _job("j6", request_id="r1").evolve(mode="task"),
    ):
        with pytest.raises(RequestIdConflictError):
            await jobs.create_job(different)
    assert await jobs.get_job("j6") is None
    # Jobs without a request id never collide.
    assert (await jobs.create_job(_job("j7")))[1] and (await jobs.create_job(_job("j8")))[1]


async def test_concurrent_submissions_with_one_request_id_create_one_job(
    backend: StoreBackend, jobs: JobStore
) -> None:
    # Two servers on one database, each with many requests in flight.
    second = await backend.open()
    try:
        results = await asyncio.gather(
            *(
                store.create_job(_job(f"j{i}", request_id="same"))
                for i in range(20)
                for store in (jobs, second.jobs)
            )
        )
    finally:
        await second.close()
    assert sum(created for _, created in results) == 1
    assert len({job.id for job, _ in results}) == 1
    page = await jobs.list_jobs(JobFilter(), 100, "")
    assert len(page.jobs) == 1


async def test_listings_are_newest_first_filtered_and_paged(jobs: JobStore) -> None:
    for i in range(7):
        job = _job(f"j{i}", tenant="t1" if i % 2 == 0 else "t2", plugin="p" if i < 5 else "q")
        await jobs.create_job(job.evolve(action="b" if i == 4 else "a"))
    await jobs.update_job(_job("j2").evolve(state=JobState.SUCCEEDED))
    await jobs.update_job(_job("j3", tenant="t2").evolve(state=JobState.RUNNING))
    page = await jobs.list_jobs(JobFilter(tenant="t1"), 2, "")
    assert [j.id for j in page.jobs] == ["j6", "j4"] and page.next_page_token
    page2 = await jobs.list_jobs(JobFilter(tenant="t1"), 2, page.next_page_token)
    assert [j.id for j in page2.jobs] == ["j2", "j0"]
    assert page2.next_page_token == ""
    everyone = await jobs.list_jobs(JobFilter(), 10, "")
    assert [j.id for j in everyone.jobs] == [f"j{i}" for i in reversed(range(7))]
    # Summaries: neither params nor result texts.
    assert {j.params_json for j in everyone.jobs} == {""}
    assert {j.result_json for j in everyone.jobs} == {""}
    done = await jobs.list_jobs(JobFilter(states=frozenset({JobState.SUCCEEDED})), 10, "")
    assert [j.id for j in done.jobs] == ["j2"]
    live = frozenset({JobState.SUCCEEDED, JobState.RUNNING})
    assert [j.id for j in (await jobs.list_jobs(JobFilter(states=live), 10, "")).jobs] == [
        "j3",
        "j2",
    ]
    assert [j.id for j in (await jobs.list_jobs(JobFilter(plugin="q"), 10, "")).jobs] == [
        "j6",
        "j5",
    ]
    by_action = await jobs.list_jobs(JobFilter(tenant="t1", action="b"), 10, "")
    assert [j.id for j in by_action.jobs] == ["j4"]
    assert (await jobs.list_jobs(JobFilter(tenant="nobody"), 10, "")).jobs == []
    # A page exactly as long as what is left has no next page.
    exact = await jobs.list_jobs(JobFilter(tenant="t2"), 3, "")
    assert [j.id for j in exact.jobs] == ["j5", "j3", "j1"] and exact.next_page_token == ""


async def test_listing_pages_stay_stable_while_jobs_are_added(jobs: JobStore) -> None:
    for i in range(4):
        await jobs.create_job(_job(f"j{i}"))
    first = await jobs.list_jobs(JobFilter(), 2, "")
    await jobs.create_job(_job("j9"))
    rest = await jobs.list_jobs(JobFilter(), 2, first.next_page_token)
    assert [j.id for j in first.jobs + rest.jobs] == ["j3", "j2", "j1", "j0"]


async def test_a_bad_page_token_or_size_is_invalid_argument(stores: Stores) -> None:
    jobs = stores.jobs
    for i in range(3):
        await jobs.create_job(_job(f"j{i}"))
        await stores.models.insert(_model(i))
    # Another listing's token is not one of this listing's.
    model_token = (await stores.models.list("t1", "", 1, "")).next_page_token
    assert model_token
    for token in ("not-a-token", "b2s=", model_token, "é"):
        with pytest.raises(InvalidArgumentError):
            await jobs.list_jobs(JobFilter(), 10, token)
    for size in (0, -1):
        with pytest.raises(InvalidArgumentError):
            await jobs.list_jobs(JobFilter(), size, "")


async def test_jobs_in_states_are_oldest_first_with_params(jobs: JobStore) -> None:
    for i in range(4):
        await jobs.create_job(_job(f"j{i}", params_json=f'{{"i": {i}}}'))
    await jobs.update_job(_job("j1").evolve(state=JobState.RUNNING))
    await jobs.update_job(_job("j2").evolve(state=JobState.CANCELLED))
    found = await jobs.jobs_in_states([JobState.PENDING, JobState.RUNNING])
    assert [(j.id, j.params["i"]) for j in found] == [("j0", 0), ("j1", 1), ("j3", 3)]
    assert await jobs.jobs_in_states([JobState.FAILED]) == []
    assert await jobs.jobs_in_states([]) == []


async def test_unfinished_jobs_keep_their_plugin_code_in_use(jobs: JobStore) -> None:
    running, _ = await jobs.create_job(_job("run").evolve(plugin_sha256="a" * 64))
    await jobs.update_job(running.evolve(state=JobState.RUNNING))
    await jobs.create_job(_job("wait").evolve(plugin_sha256="b" * 64))
    await jobs.create_job(_job("wait2").evolve(plugin_sha256="b" * 64))
    done, _ = await jobs.create_job(_job("done").evolve(plugin_sha256="c" * 64))
    await jobs.update_job(done.evolve(state=JobState.SUCCEEDED))
    await jobs.create_job(_job("older"))  # no digest: nothing to keep for it
    assert await jobs.plugin_code_in_use() == {"a" * 64, "b" * 64}
    page = await jobs.list_jobs(JobFilter(), 10, "")
    assert {j.id: j.plugin_sha256 for j in page.jobs}["done"] == "c" * 64


def _events(job_id: str, seqs: range) -> list[JobEvent]:
    return [
        JobEvent(job_id, seq, EventKind.LOG, {"event": f"e{seq}", "n": [seq, 0.5]}, 100.0 + seq)
        for seq in seqs
    ]


async def test_events_read_back_in_order_with_their_job_row(jobs: JobStore) -> None:
    job, _ = await jobs.create_job(_job("j1"))
    other, _ = await jobs.create_job(_job("j2"))
    assert await jobs.last_event("j1") is None
    assert await jobs.list_events("j1", 0, 10) == []
    await jobs.append_events(_events("j1", range(1, 4)))
    await jobs.append_events(_events("j2", range(1, 3)))
    await jobs.append_events(
        _events("j1", range(4, 6)), job.evolve(state=JobState.RUNNING, last_seq=5)
    )
    assert await jobs.list_events("j1", 0, 100) == _events("j1", range(1, 6))
    assert [e.data["event"] for e in await jobs.list_events("j1", 2, 2)] == ["e3", "e4"]
    assert await jobs.list_events("j1", 5, 10) == []
    assert await jobs.last_event("j1") == _events("j1", range(5, 6))[0]
    assert await jobs.last_event("j2") == _events("j2", range(2, 3))[0]
    loaded = await jobs.get_job("j1")
    assert loaded is not None and (loaded.state, loaded.last_seq) == (JobState.RUNNING, 5)
    assert await jobs.get_job("j2") == other.evolve(params_json="")


async def test_event_data_round_trips(jobs: JobStore) -> None:
    await jobs.create_job(_job("j1"))
    data = {
        "event": "ü",
        "level": "info",
        "data": {"nested": [1, 2.5, None, True, "x"], "empty": {}, "big": 10**20},
    }
    kinds = list(EventKind)
    await jobs.append_events(
        [JobEvent("j1", i + 1, kind, data, 5.25) for i, kind in enumerate(kinds)]
    )
    events = await jobs.list_events("j1", 0, 100)
    assert [e.kind for e in events] == kinds
    assert all(e.data == data and e.timestamp == 5.25 for e in events)


async def test_a_batch_with_a_stored_seq_is_refused_whole(jobs: JobStore) -> None:
    job, _ = await jobs.create_job(_job("j1"))
    await jobs.append_events(_events("j1", range(1, 6)), job.evolve(last_seq=5))
    with pytest.raises(Exception):  # noqa: B017 - the backend's integrity error
        await jobs.append_events(
            [JobEvent("j1", 6, EventKind.LOG, {}), JobEvent("j1", 5, EventKind.LOG, {})],
            job.evolve(state=JobState.SUCCEEDED, last_seq=6),
        )
    assert [e.seq for e in await jobs.list_events("j1", 0, 100)] == [1, 2, 3, 4, 5]
    loaded = await jobs.get_job("j1")
    assert loaded is not None and (loaded.state, loaded.last_seq) == (JobState.PENDING, 5)
    # The store goes on working after the refusal.
    await jobs.append_events(_events("j1", range(6, 7)))
    assert (await jobs.last_event("j1")).seq == 6  # type: ignore[union-attr]


async def test_an_inline_result_reads_back_with_its_terminal_event(jobs: JobStore) -> None:
    job, _ = await jobs.create_job(_job("j1"))
    text = '{"z": [1, 2.50], "marker": "inline-result-text"}'
    data = {"state": "SUCCEEDED", "result_json": text, "result_inline": True}
    done = job.evolve(state=JobState.SUCCEEDED, result_json=text, last_seq=1)
    await jobs.append_events([JobEvent("j1", 1, EventKind.TERMINAL, data)], done)
    for read in (await jobs.list_events("j1", 0, 10))[0], await jobs.last_event("j1"):
        assert read is not None and read.data == data
    assert await jobs.get_result("j1") == ("t1", JobState.SUCCEEDED, text)
    # An event whose text differs from its job row's keeps its own.
    other, _ = await jobs.create_job(_job("j2"))
    await jobs.append_events(
        [JobEvent("j2", 1, EventKind.TERMINAL, {**data, "result_json": "[1]"})],
        other.evolve(state=JobState.SUCCEEDED, result_json="[2]"),
    )
    assert (await jobs.list_events("j2", 0, 10))[0].data["result_json"] == "[1]"
    assert await jobs.get_result("j2") == ("t1", JobState.SUCCEEDED, "[2]")


async def test_concurrent_batches_of_many_jobs_all_land(jobs: JobStore) -> None:
    created = [(await jobs.create_job(_job(f"j{i}")))[0] for i in range(8)]

    async def feed(job: Job) -> None:
        for start in range(1, 41, 4):
            await jobs.append_events(
                _events(job.id, range(start, start + 4)), job.evolve(last_seq=start + 3)
            )

    async def read(job: Job) -> None:
        for _ in range(10):
            seqs = [e.seq for e in await jobs.list_events(job.id, 0, 1000)]
            assert seqs == list(range(1, len(seqs) + 1))  # a prefix, never a gap
            await asyncio.sleep(0)

    await asyncio.gather(*(feed(j) for j in created), *(read(j) for j in created))
    for job in created:
        assert [e.seq for e in await jobs.list_events(job.id, 0, 1000)] == list(range(1, 41))
        assert (await jobs.get_job(job.id)).last_seq == 40  # type: ignore[union-attr]


async def test_everything_survives_a_reopen(backend: StoreBackend) -> None:
    first = await backend.open()
    try:
        job, _ = await first.jobs.create_job(_job("j1", request_id="r1"))
        await first.jobs.append_events(_events("j1", range(1, 3)), job.evolve(last_seq=2))
        await first.jobs.update_job(
            job.evolve(state=JobState.SUCCEEDED, result_json="[1]", result_size=3, last_seq=2)
        )
    finally:
        await first.close()
    second = await backend.open()
    try:
        loaded = await second.jobs.get_job("j1", with_params=True)
        assert loaded is not None and loaded.state is JobState.SUCCEEDED
        assert loaded.params_json == '{"x": 1}' and loaded.result_size == 3
        assert await second.jobs.get_result("j1") == ("t1", JobState.SUCCEEDED, "[1]")
        assert await second.jobs.list_events("j1", 0, 10) == _events("j1", range(1, 3))
        again, created = await second.jobs.create_job(_job("j2", request_id="r1"))
        assert not created and again.id == "j1"
    finally:
        await second.close()
