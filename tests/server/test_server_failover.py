"""Two server processes on one PostgreSQL database, one of them SIGKILLed while its jobs run.

100 jobs are submitted across both servers; subscribers on the survivor follow jobs of the
server that is killed. After its lease expires, the survivor fails the jobs that were
running there (naming that server) and runs the ones that were pending: every job ends
exactly once, every job's history is gap-free with one terminal event, and the subscribers
on the survivor see the failures live. A separate test stops and restarts PostgreSQL under
load: RPCs answer UNAVAILABLE meanwhile (within the caller's deadline), the server recovers
by itself, and nothing it had acknowledged is lost.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from synapse.plugin.v1 import action_service_pb2 as pb
from synapse.plugin.v1 import action_service_pb2_grpc
from synapse_client import Client, JobState, LogEvent, TerminalEvent

from tests._postgres import PostgresCluster

TOY = Path(__file__).parent.parent / "plugins"
SECRET = "failover-test-secret-0123456789"
LEASE_SECONDS = 2.0

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]


class ServerProcess:
    """``python -m synapse_server`` on port 0 against a shared database; its log in a file."""

    def __init__(self, data_dir: Path, url: str, artifacts: Path, *extra: str) -> None:
        data_dir.mkdir(parents=True, exist_ok=True)
        self.data_dir = data_dir
        self.log = data_dir.parent / f"{data_dir.name}.log"
        env = {**os.environ, "SYNAPSE_SERVER_SECRET": SECRET}
        self.process = subprocess.Popen(
            [
                sys.executable, "-m", "synapse_server", "--listen", "127.0.0.1:0",
                "--data-dir", str(data_dir), "--plugin-dir", str(TOY), "--database", url,
                "--artifacts-dir", str(artifacts), "--job-lease", str(LEASE_SECONDS),
                "--shutdown-grace", "2", "--log-level", "WARNING", *extra,
            ],
            stdout=subprocess.PIPE,
            stderr=self.log.open("w"),
            text=True,
            env=env,
        )  # fmt: skip
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line.startswith("synapse server listening on "):
            self.process.kill()
            raise AssertionError(f"server did not start: {self.log.read_text()[-3000:]}")
        self.address = line.rsplit(" ", 1)[1].strip()

    @property
    def server_id(self) -> str:
        return (self.data_dir / "server.id").read_text().strip()

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self.process.wait(10)


@pytest.fixture
def spawn(tmp_path: Path, postgres_cluster: PostgresCluster) -> Iterator[Callable[..., Any]]:
    url = postgres_cluster.database("failover")
    started: list[ServerProcess] = []

    def start(name: str, *extra: str) -> ServerProcess:
        server = ServerProcess(tmp_path / name, url, tmp_path / "artifacts", *extra)
        started.append(server)
        return server

    yield start
    for server in started:
        server.close()


def _follow(client: Client, job_id: str, into: dict[str, list[Any]]) -> None:
    into[job_id] = list(client.job(job_id).events())


def test_a_killed_servers_jobs_end_once_on_the_survivor(spawn: Callable[..., Any]) -> None:
    a, b = spawn("a"), spawn("b")
    with Client(a.address, timeout=60) as on_a, Client(b.address, timeout=60) as on_b:
        ids: dict[str, str] = {}
        for i in range(100):
            client, where = (on_a, "a") if i % 2 == 0 else (on_b, "b")
            seconds = 1.5 if where == "a" else 0.2
            ids[client.run_action("toy", "nap", {"seconds": seconds}).id] = where
        a_jobs = [job_id for job_id, where in ids.items() if where == "a"]
        # Subscribers on the survivor follow the first jobs of the server that will die.
        followed: dict[str, list[Any]] = {}
        readers = [
            threading.Thread(target=_follow, args=(on_b, job_id, followed), daemon=True)
            for job_id in a_jobs[:6]
        ]
        for reader in readers:
            reader.start()
        deadline = time.monotonic() + 60
        while not any(on_b.get_job(j).state is JobState.RUNNING for j in a_jobs[:4]):
            assert time.monotonic() < deadline, "no job of server a started"
            time.sleep(0.05)
        a_id = a.server_id
        a.process.kill()  # SIGKILL: no shutdown, no lease given up
        a.process.wait(10)

        deadline = time.monotonic() + 180
        while True:
            jobs = {j: on_b.get_job(j) for j in ids}
            if all(job.state.is_terminal for job in jobs.values()):
                break
            assert time.monotonic() < deadline, "jobs still unfinished on the survivor"
            time.sleep(0.5)
        for reader in readers:
            reader.join(60)

        lost = f"server {a_id} stopped while the job was running"
        failed = [j for j, job in jobs.items() if job.state is JobState.FAILED]
        assert failed, "no job was running on the killed server"
        for job_id, job in jobs.items():
            events = list(on_b.job(job_id).events())
            seqs = [e.seq for e in events]
            assert seqs == list(range(1, len(seqs) + 1)), job_id
            terminals = [e for e in events if isinstance(e.payload, TerminalEvent)]
            assert len(terminals) == 1 and terminals[0] is events[-1], job_id
            assert terminals[0].payload.state is job.state
            runs = [e for e in events if isinstance(e.payload, LogEvent)]
            if job.state is JobState.FAILED:
                assert ids[job_id] == "a" and job.error is not None
                assert job.error.message == lost
                assert len(runs) <= 1  # it ran once at most, on a (killed maybe before its log)
            else:
                assert job.state is JobState.SUCCEEDED, (job_id, job)
                assert len(runs) == 1  # run once: pending jobs of a ran on b only
        # The subscribers on b followed the jobs live to their end, failures included.
        assert set(followed) == set(a_jobs[:6])
        for job_id, events in followed.items():
            assert [e.seq for e in events] == [e.seq for e in on_b.job(job_id).events()]
            assert events[-1].payload.state is jobs[job_id].state
        assert any(jobs[j].state is JobState.FAILED for j in followed)


def test_two_servers_never_share_a_sqlite_data_directory(tmp_path: Path) -> None:
    first = subprocess.Popen(
        [
            sys.executable, "-m", "synapse_server", "--listen", "127.0.0.1:0",
            "--data-dir", str(tmp_path / "data"), "--plugin-dir", str(TOY),
            "--log-level", "WARNING",
        ],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    try:
        assert first.stdout is not None and first.stdout.readline().startswith("synapse server")
        # Another data directory, the same SQLite database: refused too.
        second = subprocess.run(
            [
                sys.executable, "-m", "synapse_server", "--listen", "127.0.0.1:0",
                "--data-dir", str(tmp_path / "other"), "--plugin-dir", str(TOY),
                "--database", f"sqlite:///{tmp_path / 'data' / 'synapse.db'}",
            ],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert second.returncode == 1, second.stderr
        assert "in use by another synapse server" in second.stderr
    finally:
        first.terminate()
        first.wait(30)


def test_an_unreachable_database_at_start_is_one_line(tmp_path: Path) -> None:
    done = subprocess.run(
        [
            sys.executable, "-m", "synapse_server", "--listen", "127.0.0.1:0",
            "--data-dir", str(tmp_path / "data"), "--log-level", "WARNING",
            "--database", "postgresql://synapse:hunter2@127.0.0.1:1/synapse",
        ],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(
        "synapse serve: cannot start: cannot connect to the database at "
        "postgresql://127.0.0.1:1/synapse: connection failed"
    ), lines[0]
    assert "hunter2" not in done.stderr + done.stdout


def test_a_database_restart_under_load_loses_nothing_acknowledged(
    spawn: Callable[..., Any], postgres_cluster: PostgresCluster
) -> None:
    server = spawn("a")
    acknowledged: list[str] = []
    refused: list[str] = []
    held: list[float] = []
    stop = threading.Event()

    def submit() -> None:
        # The raw stub: the Python client would retry UNAVAILABLE by itself.
        with grpc.insecure_channel(server.address) as channel:
            stub = action_service_pb2_grpc.ActionServiceStub(channel)
            while not stop.is_set():
                request = pb.RunActionRequest(plugin="toy", action="quick")
                request.params.update({"count": 2, "label": "x"})
                started = time.monotonic()
                try:
                    acknowledged.append(stub.RunAction(request, timeout=5).job.id)
                except grpc.RpcError as exc:
                    refused.append(exc.code().name)
                # Answered within the caller's deadline, never DEADLINE_EXCEEDED.
                held.append(time.monotonic() - started)
                time.sleep(0.05)

    submitter = threading.Thread(target=submit, daemon=True)
    submitter.start()
    try:
        time.sleep(2)
        postgres_cluster.stop("fast")
        time.sleep(3)
        postgres_cluster.start()
        time.sleep(6)
    finally:
        stop.set()
        submitter.join(30)
        if not postgres_cluster.running:
            postgres_cluster.start()
    assert refused and set(refused) == {"UNAVAILABLE"}, refused
    assert max(held) < 5.0 and len(acknowledged) > 5
    with Client(server.address, timeout=60) as client:
        # Recovered by itself: new jobs run, and every acknowledged job ends successfully.
        client.run_action("toy", "quick", {"count": 1, "label": "after"}).result(timeout=60)
        for job_id in acknowledged:
            assert client.job(job_id).result(timeout=120) is not None, job_id
            assert client.get_job(job_id).state is JobState.SUCCEEDED


def test_a_database_outage_longer_than_the_lease_fails_no_job(
    spawn: Callable[..., Any], postgres_cluster: PostgresCluster
) -> None:
    a, b = spawn("a"), spawn("b")
    with Client(a.address, timeout=60) as on_a, Client(b.address, timeout=60) as on_b:
        handles = [
            client.run_action("toy", "nap", {"seconds": 8}) for client in (on_a, on_b, on_a, on_b)
        ]
        deadline = time.monotonic() + 60
        while not all(on_a.get_job(h.id).state is JobState.RUNNING for h in handles):
            assert time.monotonic() < deadline, "the jobs did not start"
            time.sleep(0.1)
        postgres_cluster.stop("fast")
        try:
            time.sleep(LEASE_SECONDS * 2.5)  # every lease has expired meanwhile
        finally:
            postgres_cluster.start()
        # Neither server takes the other's jobs for a stopped server's: all of them finish.
        for handle in handles:
            assert handle.result(timeout=120) == {"slept": 8}
            history = list(on_a.job(handle.id).events())
            assert [e.seq for e in history] == list(range(1, len(history) + 1))
