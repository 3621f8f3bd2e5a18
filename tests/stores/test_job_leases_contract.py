"""The JobStore contract for several servers on one database: server leases, claiming jobs,
fenced writes and cancel requests, run against every store backend (see conftest.py).

SQLite keeps one server per database (the data directory lock), but its store keeps the same
contract, so one job service works on both.
"""

from __future__ import annotations

import asyncio

import pytest
from synapse_server.core import (
    EventKind,
    Job,
    JobEvent,
    JobFilter,
    JobOwnershipLostError,
    JobState,
    JobStore,
)
from synapse_server.stores import Stores

from tests.stores.conftest import StoreBackend

pytestmark = pytest.mark.timeout(60)


def _job(job_id: str, owner: str, state: JobState = JobState.PENDING) -> Job:
    return Job(
        id=job_id, tenant="t1", plugin="p", action="a", params_json='{"i": 1}', owner=owner
    ).evolve(state=state)


@pytest.fixture
def jobs(stores: Stores) -> JobStore:
    return stores.jobs


async def test_servers_register_renew_and_release_their_leases(jobs: JobStore) -> None:
    assert await jobs.live_servers() == []
    await jobs.register_server("a", "10.0.0.1:50051", "host-a", 30.0)
    await jobs.register_server("b", "10.0.0.2:50051", "host-b", 30.0)
    live = await jobs.live_servers()
    assert [(s.id, s.address, s.host) for s in live] == [
        ("a", "10.0.0.1:50051", "host-a"),
        ("b", "10.0.0.2:50051", "host-b"),
    ]
    assert all(s.expires_at > s.started_at for s in live)
    # A lease renewed for a moment only runs out; registering again gives a fresh one.
    await jobs.renew_server("a", 0.0)
    assert [s.id for s in await jobs.live_servers()] == ["b"]
    await jobs.register_server("a", "10.0.0.1:50052", "host-a", 30.0)
    assert {s.id: s.address for s in await jobs.live_servers()}["a"] == "10.0.0.1:50052"
    await jobs.release_server("b")
    assert [s.id for s in await jobs.live_servers()] == ["a"]


async def test_a_job_keeps_the_owner_it_was_created_with(jobs: JobStore) -> None:
    job, _ = await jobs.create_job(_job("j1", "a"))
    assert job.owner == "a"
    loaded = await jobs.get_job("j1", with_params=True)
    assert loaded is not None and loaded.owner == "a"
    assert (await jobs.list_jobs(JobFilter(), 10, "")).jobs[0].owner == "a"


async def test_the_jobs_of_an_expired_server_are_claimed_once_and_oldest_first(
    jobs: JobStore,
) -> None:
    await jobs.register_server("a", "", "h", 30.0)
    await jobs.register_server("b", "", "h", 30.0)
    for i, state in enumerate([JobState.RUNNING, JobState.PENDING, JobState.SUCCEEDED]):
        await jobs.create_job(_job(f"a{i}", "a", state))
    await jobs.create_job(_job("b0", "b", JobState.RUNNING))
    await jobs.create_job(_job("orphan", "", JobState.PENDING))
    # Nothing of a live server is claimed; a job without a recorded owner is.
    claimed = await jobs.claim_jobs("b")
    assert [(c.job.id, c.previous_owner, c.job.owner) for c in claimed] == [("orphan", "", "b")]
    # Only the jobs of servers that gave their lease up, when asked for those.
    await jobs.renew_server("b", 0.0)  # b's lease runs out: expired, not released
    await jobs.create_job(_job("b1", "b", JobState.PENDING))
    assert await jobs.claim_jobs("c", released_only=True) == []
    await jobs.register_server("b", "", "h", 30.0)
    await jobs.release_server("a")
    assert [s.id for s in await jobs.live_servers()] == ["b"]
    claimed = await jobs.claim_jobs("b", released_only=True, limit=1)
    assert [(c.job.id, c.previous_owner) for c in claimed] == [("a0", "a")]
    assert claimed[0].job.state is JobState.RUNNING and claimed[0].job.params == {"i": 1}
    rest = await jobs.claim_jobs("b")
    assert [(c.job.id, c.job.state) for c in rest] == [("a1", JobState.PENDING)]
    # A claimed job is the claimer's now: nobody claims it again, the claimer keeps its own.
    assert await jobs.claim_jobs("b") == []
    assert await jobs.claim_jobs("c") == []
    for job_id in ("a0", "a1", "orphan", "b0", "b1"):
        loaded = await jobs.get_job(job_id)
        assert loaded is not None and loaded.owner == "b"
    finished = await jobs.get_job("a2")
    assert finished is not None and finished.owner == "a"


async def test_a_restarted_server_claims_its_own_jobs_at_once(jobs: JobStore) -> None:
    await jobs.register_server("a", "", "h", 30.0)
    await jobs.create_job(_job("a0", "a", JobState.RUNNING))
    await jobs.create_job(_job("b0", "b", JobState.RUNNING))
    # Its lease still holds (the previous process died a moment ago): claimed by name.
    claimed = await jobs.claim_jobs("a", previous_owner="a")
    assert [(c.job.id, c.previous_owner) for c in claimed] == [("a0", "a")]


async def test_concurrent_claimers_never_take_one_job_twice(
    backend: StoreBackend, jobs: JobStore
) -> None:
    for i in range(30):
        await jobs.create_job(_job(f"j{i:02}", "dead", JobState.PENDING))
    # Both claimers are live: what one took is not the other's to take.
    await jobs.register_server("x", "", "h", 30.0)
    await jobs.register_server("y", "", "h", 30.0)
    second = await backend.open()
    try:
        rounds = await asyncio.gather(
            *(
                store.claim_jobs(name, limit=4)
                for _ in range(6)
                for store, name in ((jobs, "x"), (second.jobs, "y"))
            )
        )
    finally:
        await second.close()
    taken = [c.job.id for claims in rounds for c in claims]
    assert sorted(taken) == [f"j{i:02}" for i in range(30)]
    for claims, name in zip(rounds, ["x", "y"] * 6, strict=True):
        for claim in claims:
            loaded = await jobs.get_job(claim.job.id)
            assert loaded is not None and loaded.owner == name


async def test_writes_of_a_server_that_lost_the_job_are_refused_whole(jobs: JobStore) -> None:
    job, _ = await jobs.create_job(_job("j1", "a"))
    await jobs.append_events([JobEvent("j1", 1, EventKind.STATE, {})], job.evolve(last_seq=1))
    (claim,) = await jobs.claim_jobs("b")
    # Server a still believes it owns the job: its batch and row are refused, nothing stored.
    with pytest.raises(JobOwnershipLostError):
        await jobs.append_events(
            [JobEvent("j1", 2, EventKind.LOG, {"event": "late"})],
            job.evolve(state=JobState.RUNNING, last_seq=2),
        )
    await jobs.update_job(job.evolve(progress=50.0))
    assert [e.seq for e in await jobs.list_events("j1", 0, 10)] == [1]
    loaded = await jobs.get_job("j1")
    assert loaded is not None and (loaded.state, loaded.progress) == (JobState.PENDING, 0.0)
    # The new owner writes.
    await jobs.append_events(
        [JobEvent("j1", 2, EventKind.TERMINAL, {"state": "FAILED"})],
        claim.job.evolve(state=JobState.FAILED, last_seq=2),
    )
    loaded = await jobs.get_job("j1")
    assert loaded is not None and (loaded.state, loaded.last_seq) == (JobState.FAILED, 2)


async def test_a_cancel_request_reaches_the_owner_and_stays(jobs: JobStore) -> None:
    await jobs.register_server("a", "", "h", 30.0)
    job, _ = await jobs.create_job(_job("j1", "a", JobState.RUNNING))
    await jobs.create_job(_job("j2", "a", JobState.SUCCEEDED))
    assert await jobs.renew_server("a", 30.0) == []
    requested = await jobs.request_cancel("j1", "stop it")
    assert requested is not None and requested.cancel_requested
    # The first reason stays; a finished job and an unknown one are left alone.
    await jobs.request_cancel("j1", "another reason")
    finished = await jobs.request_cancel("j2", "too late")
    assert finished is not None and not finished.cancel_requested
    assert await jobs.request_cancel("missing", "x") is None
    assert await jobs.renew_server("a", 30.0) == [("j1", "stop it")]
    # The owner writing its row as it knew it (no request yet) does not clear the request.
    await jobs.update_job(job.evolve(progress=10.0))
    loaded = await jobs.get_job("j1")
    assert loaded is not None and loaded.cancel_requested and loaded.progress == 10.0
    # A server claiming the job learns why it was to be cancelled.
    await jobs.release_server("a")
    (claim,) = await jobs.claim_jobs("b")
    assert claim.job.cancel_requested and claim.cancel_reason == "stop it"
    await jobs.update_job(claim.job.evolve(state=JobState.CANCELLED))
    assert await jobs.renew_server("b", 30.0) == []
