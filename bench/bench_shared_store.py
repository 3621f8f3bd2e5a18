"""Store backends benchmark: SQLite against PostgreSQL, one server and two, in one run.

Every configuration runs real ``python -m synapse_server`` processes on this machine:

* ``sqlite x1``: the embedded default, one server;
* ``postgres x1``: one server on a PostgreSQL database (a server this benchmark starts in a
  temporary directory, like the tests do);
* ``postgres x2``: two servers on one PostgreSQL database, clients alternating between them.

Measured for each:

* submit -> first progress: a client submits a job (``bench-events/emit`` with no log
  events) and follows it on the same server; milliseconds until its first progress event;
* jobs/s: ``--jobs`` such jobs submitted by 8 client threads, until every result is in;
* (two servers) cross-server StreamProgress delay: jobs on server A emit ``--events`` log
  events 20 ms apart; one subscriber on A and one on B; for each event, the time B received
  it minus the time A did (p50/p99): what following a job from another server adds.

    .venv/bin/python bench/bench_shared_store.py [--jobs 120] [--events 100] [--delay-jobs 5]

Prints a table and writes JSON to bench/results/.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
sys.path.insert(0, str(ROOT))

from synapse_client import Client, LogEvent, ProgressEvent  # noqa: E402

from tests._postgres import PostgresCluster, postgres_bin_dir  # noqa: E402

PLUGIN_DIR = BENCH_DIR / "plugins" / "bench_events"
RESULTS_DIR = BENCH_DIR / "results"
PLUGIN, ACTION = "bench-events", "emit"
SECRET = "bench-shared-store-secret-0123456789"
LATENCY_SAMPLES = 15


class Server:
    """One server process; its log goes to a file."""

    def __init__(self, data_dir: Path, database: str | None) -> None:
        data_dir.mkdir(parents=True, exist_ok=True)
        command = [
            sys.executable, "-m", "synapse_server", "--listen", "127.0.0.1:0",
            "--data-dir", str(data_dir), "--plugin-dir", str(PLUGIN_DIR),
            "--log-level", "WARNING",
        ]  # fmt: skip
        if database:
            command += ["--database", database, "--artifacts-dir", str(data_dir.parent / "art")]
        self.log = (data_dir.parent / f"{data_dir.name}.log").open("w")
        self.process = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
            env={**os.environ, "SYNAPSE_SERVER_SECRET": SECRET},
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line.startswith("synapse server listening on "):
            self.process.kill()
            raise RuntimeError(f"server did not start (see {self.log.name})")
        self.address = line.rsplit(" ", 1)[1].strip()

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
        self.log.close()


def _first_progress_ms(client: Client) -> float:
    started = time.perf_counter()
    job = client.run_action(PLUGIN, ACTION, {"count": 0})
    for event in job.events():
        if isinstance(event.payload, ProgressEvent):
            elapsed = (time.perf_counter() - started) * 1000
            job.result(timeout=60)
            return elapsed
    raise RuntimeError("no progress event")


def _throughput(clients: list[Client], jobs: int) -> float:
    def one(i: int) -> None:
        client = clients[i % len(clients)]
        client.run_action(PLUGIN, ACTION, {"count": 0}).result(timeout=300)

    started = time.perf_counter()
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(one, range(jobs)))
    return jobs / (time.perf_counter() - started)


def _cross_server_delays(on_a: Client, on_b: Client, events: int, jobs: int) -> list[float]:
    delays: list[float] = []
    for _ in range(jobs):
        job = on_a.run_action(PLUGIN, ACTION, {"count": events, "pause_s": 0.5, "interval_s": 0.02})
        seen: dict[str, dict[int, float]] = {"a": {}, "b": {}}

        def follow(
            name: str, client: Client, job_id: str = job.id, into: dict[str, Any] = seen
        ) -> None:
            for event in client.job(job_id).events():
                if isinstance(event.payload, LogEvent):
                    into[name][event.seq] = time.perf_counter()

        readers = [
            threading.Thread(target=follow, args=("a", on_a)),
            threading.Thread(target=follow, args=("b", on_b)),
        ]
        for reader in readers:
            reader.start()
        for reader in readers:
            reader.join(120)
        assert seen["a"].keys() == seen["b"].keys() and len(seen["a"]) == events
        delays += [(seen["b"][s] - seen["a"][s]) * 1000 for s in seen["a"]]
    return delays


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def run_config(
    name: str, root: Path, database: str | None, servers: int, args: argparse.Namespace
) -> dict[str, Any]:
    started = [Server(root / f"{name}-{i}", database) for i in range(servers)]
    clients = [Client(s.address, timeout=120) for s in started]
    try:
        _first_progress_ms(clients[0])  # warm the fork server
        latencies = [_first_progress_ms(clients[i % len(clients)]) for i in range(LATENCY_SAMPLES)]
        rate = _throughput(clients, args.jobs)
        result: dict[str, Any] = {
            "config": name,
            "first_progress_ms_p50": statistics.median(latencies),
            "first_progress_ms_p90": _percentile(latencies, 0.9),
            "jobs_per_s": rate,
        }
        if servers == 2:
            delays = _cross_server_delays(clients[0], clients[1], args.events, args.delay_jobs)
            result["cross_server_delay_ms_p50"] = _percentile(delays, 0.5)
            result["cross_server_delay_ms_p99"] = _percentile(delays, 0.99)
            result["cross_server_delay_samples"] = len(delays)
        return result
    finally:
        for client in clients:
            client.close()
        for server in started:
            server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=120)
    parser.add_argument("--events", type=int, default=100)
    parser.add_argument("--delay-jobs", type=int, default=5)
    args = parser.parse_args()
    bin_dir = postgres_bin_dir()
    if bin_dir is None:
        raise SystemExit("PostgreSQL is not installed (apt-get install postgresql)")
    root = Path(tempfile.mkdtemp(prefix="bench-shared-"))
    cluster = PostgresCluster(bin_dir)
    # The benchmark's database keeps PostgreSQL's default durability (fsync on).
    cluster.start(durable=True)
    results = []
    try:
        results.append(run_config("sqlite x1", root, None, 1, args))
        results.append(run_config("postgres x1", root, cluster.database("bench"), 1, args))
        results.append(run_config("postgres x2", root, cluster.database("bench"), 2, args))
    finally:
        cluster.remove()
    header = f"{'config':<14}{'first progress p50/p90 ms':>28}{'jobs/s':>10}"
    print(f"{header}{'x-server p50/p99 ms':>24}")
    for r in results:
        cross = (
            f"{r['cross_server_delay_ms_p50']:.1f} / {r['cross_server_delay_ms_p99']:.1f}"
            if "cross_server_delay_ms_p50" in r
            else "-"
        )
        first = f"{r['first_progress_ms_p50']:.1f} / {r['first_progress_ms_p90']:.1f}"
        print(f"{r['config']:<14}{first:>28}{r['jobs_per_s']:>10.1f}{cross:>24}")
    RESULTS_DIR.mkdir(exist_ok=True)
    out = RESULTS_DIR / f"shared_store_{datetime.now(UTC):%Y%m%dT%H%M%SZ}.json"
    out.write_text(
        json.dumps(
            {"machine": platform.platform(), "cpus": os.cpu_count(), "results": results}, indent=2
        )
    )
    print(f"written to {out}")


if __name__ == "__main__":
    main()
