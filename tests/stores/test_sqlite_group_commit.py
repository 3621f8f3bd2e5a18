"""Group commit in the SQLite job store: batches of many jobs arriving together share one
transaction, and still nothing is lost, reordered or half-stored (also across a SIGKILL)."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from synapse_server.core import EventKind, Job, JobEvent, JobOwnershipLostError
from synapse_server.stores import SqliteJobStore, _sqlite_jobs

pytestmark = pytest.mark.timeout(120)


def _job(job_id: str, owner: str = "") -> Job:
    return Job(id=job_id, tenant="t1", plugin="p", action="a", params_json="{}", owner=owner)


def _events(job_id: str, first: int, count: int) -> list[JobEvent]:
    return [
        JobEvent(
            job_id=job_id,
            seq=seq,
            kind=EventKind.LOG,
            data={"event": "tick", "data": {"job": job_id, "seq": seq}},
            timestamp=float(seq),
        )
        for seq in range(first, first + count)
    ]


@pytest.fixture
def groups(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The size of every group the store writes, in order."""
    sizes: list[int] = []
    original = _sqlite_jobs._write_group

    def recording(conn: sqlite3.Connection, *, group: Sequence[Any]) -> Any:
        sizes.append(len(group))
        return original(conn, group=group)

    monkeypatch.setattr(_sqlite_jobs, "_write_group", recording)
    return sizes


async def _stored(store: SqliteJobStore, job_id: str) -> list[JobEvent]:
    return await store.list_events(job_id, 0, 100_000)


async def test_concurrent_batches_of_many_jobs_are_stored_whole_and_in_order(
    tmp_path: Path, groups: list[int]
) -> None:
    store = SqliteJobStore(tmp_path / "jobs.db")
    await store.open()
    try:
        jobs = [f"job{i:02d}" for i in range(40)]
        for job_id in jobs:
            await store.create_job(_job(job_id))

        async def appender(job_id: str) -> None:
            # As the hub does: a job's next batch once its previous one is stored.
            for batch in range(30):
                events = _events(job_id, batch * 5 + 1, 5)
                await store.append_events(events, _job(job_id).evolve(last_seq=events[-1].seq))

        await asyncio.gather(*(appender(job_id) for job_id in jobs))
        assert sum(groups) == 40 * 30
        assert max(groups) > 1, "no batches were grouped: the test did not test group commit"
        for job_id in jobs:
            stored = await _stored(store, job_id)
            assert [e.seq for e in stored] == list(range(1, 151))
            assert [e.data["data"] for e in stored] == [
                {"job": job_id, "seq": seq} for seq in range(1, 151)
            ]
            job = await store.get_job(job_id)
            assert job is not None and job.last_seq == 150
    finally:
        await store.close()


async def test_a_refused_batch_in_a_group_is_undone_alone(
    tmp_path: Path, groups: list[int]
) -> None:
    store = SqliteJobStore(tmp_path / "jobs.db")
    await store.open()
    try:
        for job_id in ("first", "dup", "fine", "taken"):
            await store.create_job(_job(job_id, owner="me" if job_id == "taken" else ""))
        await store.append_events(_events("dup", 1, 3))
        # Taken over by another server: this server's writes into it are refused.
        await store.claim_jobs("other", previous_owner="me")
        groups.clear()
        # The first write goes to the writer thread at once; the three after it arrive
        # while it is in flight and are written together, in one transaction.
        first = asyncio.ensure_future(store.append_events(_events("first", 1, 500)))
        # Seqs 4 and 5 go in before seq 3 (stored already) is refused: all three are undone.
        refused = _events("dup", 4, 2) + _events("dup", 3, 1)
        dup = asyncio.ensure_future(store.append_events(refused))
        fine = asyncio.ensure_future(
            store.append_events(_events("fine", 1, 4), _job("fine").evolve(last_seq=4))
        )
        taken = asyncio.ensure_future(
            store.append_events(
                _events("taken", 1, 2), _job("taken", owner="me").evolve(last_seq=2)
            )
        )
        results = await asyncio.gather(first, dup, fine, taken, return_exceptions=True)
        assert groups == [1, 3]
        assert results[0] is None and results[2] is None
        assert isinstance(results[1], sqlite3.IntegrityError)
        assert isinstance(results[3], JobOwnershipLostError)
        assert [e.seq for e in await _stored(store, "dup")] == [1, 2, 3]
        assert [e.seq for e in await _stored(store, "fine")] == [1, 2, 3, 4]
        assert await _stored(store, "taken") == []
        assert len(await _stored(store, "first")) == 500
        fine_job = await store.get_job("fine")
        assert fine_job is not None and fine_job.last_seq == 4
    finally:
        await store.close()


async def test_a_caller_cancelled_before_its_group_is_written_stores_nothing(
    tmp_path: Path, groups: list[int]
) -> None:
    store = SqliteJobStore(tmp_path / "jobs.db")
    await store.open()
    try:
        for job_id in ("first", "gone", "kept"):
            await store.create_job(_job(job_id))
        groups.clear()
        first = asyncio.ensure_future(store.append_events(_events("first", 1, 500)))
        gone = asyncio.ensure_future(store.append_events(_events("gone", 1, 2)))
        kept = asyncio.ensure_future(store.append_events(_events("kept", 1, 2)))
        await asyncio.sleep(0)  # both wait behind the first write now
        gone.cancel()
        await first
        await kept
        assert gone.cancelled()
        assert groups == [1, 1]
        assert await _stored(store, "gone") == []
        assert [e.seq for e in await _stored(store, "kept")] == [1, 2]
    finally:
        await store.close()


# The child appends batches of many jobs as fast as it can and prints "job seq" once the
# store has answered for a batch ending at seq; it is killed at some point mid-way.
_APPENDER = textwrap.dedent(
    """
    import asyncio, sys
    from pathlib import Path
    from synapse_server.core import EventKind, Job, JobEvent
    from synapse_server.stores import SqliteJobStore

    async def main(path):
        store = SqliteJobStore(Path(path))
        await store.open()
        jobs = [f"job{i:02d}" for i in range(30)]
        for job_id in jobs:
            await store.create_job(
                Job(id=job_id, tenant="t1", plugin="p", action="a", params_json="{}")
            )
        print("ready", flush=True)

        async def appender(job_id):
            seq = 0
            while True:
                events = [
                    JobEvent(job_id=job_id, seq=s, kind=EventKind.LOG,
                             data={"event": "tick", "data": {"seq": s}}, timestamp=float(s))
                    for s in range(seq + 1, seq + 4)
                ]
                job = Job(id=job_id, tenant="t1", plugin="p", action="a", params_json="{}",
                          last_seq=events[-1].seq)
                await store.append_events(events, job)
                seq = events[-1].seq
                sys.stdout.write(f"{job_id} {seq}\\n")
                sys.stdout.flush()

        await asyncio.gather(*(appender(job_id) for job_id in jobs))

    asyncio.run(main(sys.argv[1]))
    """
)


def test_sigkill_loses_no_acknowledged_batch_and_leaves_no_gap(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    child = subprocess.Popen(
        [sys.executable, "-c", _APPENDER, str(path)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    acked: dict[str, int] = {}
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "ready"
        lines = 0
        while lines < 3000:  # batches stored while the child goes on appending
            job_id, seq = child.stdout.readline().split()
            acked[job_id] = max(acked.get(job_id, 0), int(seq))
            lines += 1
        child.send_signal(signal.SIGKILL)
        # Acknowledgements already written before the kill count too.
        for line in child.stdout:
            job_id, seq = line.split()
            acked[job_id] = max(acked.get(job_id, 0), int(seq))
    finally:
        child.kill()
        child.wait(10)
    assert child.returncode == -signal.SIGKILL

    assert len(acked) == 30  # every job had batches stored before the kill
    asyncio.run(_check_after_kill(path, acked))


async def _check_after_kill(path: Path, acked: dict[str, int]) -> None:
    store = SqliteJobStore(path)
    await store.open()
    try:
        for job_id, seq in acked.items():
            stored = await _stored(store, job_id)
            seqs = [e.seq for e in stored]
            # Everything acknowledged is there, and what is there has no gap and is whole:
            # a batch is stored entirely or not at all, with its job row.
            assert seqs == list(range(1, len(seqs) + 1)), f"{job_id}: gap or disorder"
            assert len(seqs) >= seq, f"{job_id}: acknowledged seq {seq} was lost"
            assert len(seqs) % 3 == 0, f"{job_id}: a batch was half stored"
            assert [e.data["data"]["seq"] for e in stored] == seqs
            job = await store.get_job(job_id)
            assert job is not None and job.last_seq == len(seqs)
    finally:
        await store.close()
