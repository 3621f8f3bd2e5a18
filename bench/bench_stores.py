"""Store layer benchmark: the stores' hot paths under the load progress streaming puts on them.

One event loop, as in the server. While ``--jobs`` jobs append their events in batches (each
batch with its job row, as the event hub writes them), subscribers replay histories and check
jobs (``list_events``, ``get_job``), deployment records are refreshed now and then, and an
Infer resolver looks its deployment up (``find_by_name``), each at a fixed pace. Reported: events
appended per second and the slowest appends (a batch that waited for another store's write),
and the resolver's and ``get_job``'s latencies under that load.

Two layouts of the SQLite stores are compared in the same run, in alternating rounds:
``shared`` (what the server uses: the three stores share one writer and one reader thread
and connection, ``open_stores``) and ``per-store`` (each store its own threads and
connections on the same file, as before the stores shared them).

    .venv/bin/python bench/bench_stores.py [--jobs 8] [--events 4000] [--rounds 3]

Prints a table and writes JSON to bench/results/.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from synapse_server.core import EventKind, Job, JobEvent
from synapse_server.core.deployments import DeploymentRecord
from synapse_server.stores import (
    SqliteDeploymentStore,
    SqliteJobStore,
    SqliteModelStore,
    Stores,
    open_stores,
    sqlite_url,
)

RESULTS_DIR = Path(__file__).resolve().parent / "results"
BATCH = 10


async def _per_store(path: Path) -> Stores:
    stores = Stores(SqliteJobStore(path), SqliteModelStore(path), SqliteDeploymentStore(path))
    for store in (stores.jobs, stores.models, stores.deployments):
        await store.open()
    return stores


LAYOUTS: dict[str, Callable[[Path], Awaitable[Stores]]] = {
    "shared": lambda path: open_stores(sqlite_url(path)),
    "per-store": _per_store,
}


def _percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


async def run_round(layout: str, jobs: int, events: int) -> dict[str, float]:
    """One measurement of ``layout`` on a fresh database."""
    with tempfile.TemporaryDirectory(prefix="bench-stores-") as tmp:
        stores = await LAYOUTS[layout](Path(tmp) / "synapse.db")
        try:
            return await _measure(stores, jobs, events)
        finally:
            await stores.close()


async def _measure(stores: Stores, jobs: int, events: int) -> dict[str, float]:
    created = [
        (await stores.jobs.create_job(Job(id=f"j{i}", tenant="t", plugin="p", action="a")))[0]
        for i in range(jobs)
    ]
    record, _ = await stores.deployments.upsert(
        DeploymentRecord(0, "t", "app", "p", "a", endpoint_action="infer")
    )
    done = asyncio.Event()
    resolve: list[float] = []
    get_job: list[float] = []
    append: list[float] = []
    payload = {"event": "tick", "level": "info", "data": {"pad": "x" * 64}}

    async def feed(job: Job) -> None:
        for start in range(1, events // jobs + 1, BATCH):
            batch = [
                JobEvent(job.id, seq, EventKind.LOG, payload) for seq in range(start, start + BATCH)
            ]
            started = time.perf_counter()
            await stores.jobs.append_events(batch, job.evolve(last_seq=start + BATCH - 1))
            append.append(time.perf_counter() - started)

    # The readers run at a fixed pace, so every layout carries the same load (a reader that
    # is answered faster must not take more of the CPU from the writers).
    async def subscribe(job: Job) -> None:
        while not done.is_set():
            await stores.jobs.list_events(job.id, 0, 1000)
            started = time.perf_counter()
            await stores.jobs.get_job(job.id)
            get_job.append(time.perf_counter() - started)
            await asyncio.sleep(0.005)

    async def resolver() -> None:
        while not done.is_set():
            started = time.perf_counter()
            await stores.deployments.find_by_name("t", "app")
            resolve.append(time.perf_counter() - started)
            await asyncio.sleep(0.002)

    async def refresher() -> None:
        while not done.is_set():
            await stores.deployments.update(record)
            await asyncio.sleep(0.01)

    background = [
        asyncio.create_task(c)
        for c in (resolver(), refresher(), *(subscribe(j) for j in created[:2]))
    ]
    started = time.perf_counter()
    await asyncio.gather(*(feed(j) for j in created))
    elapsed = time.perf_counter() - started
    done.set()
    await asyncio.gather(*background)
    appended = (events // jobs // BATCH) * BATCH * jobs
    return {
        "events_per_s": appended / elapsed,
        "append_p99_ms": _percentile(append, 0.99) * 1e3,
        "resolve_p50_ms": statistics.median(resolve) * 1e3,
        "resolve_p99_ms": _percentile(resolve, 0.99) * 1e3,
        "get_job_p50_ms": statistics.median(get_job) * 1e3,
    }


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    rounds: dict[str, list[dict[str, float]]] = {name: [] for name in LAYOUTS}
    for _ in range(args.rounds):
        for layout in LAYOUTS:
            rounds[layout].append(await run_round(layout, args.jobs, args.events))
    return {
        layout: {key: statistics.median(r[key] for r in results) for key in results[0]}
        for layout, results in rounds.items()
    } | {"rounds": rounds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=8, help="jobs appending at once")
    parser.add_argument("--events", type=int, default=4000, help="events over all jobs")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per layout (median)")
    parser.add_argument("--output", type=Path, help="JSON report path")
    args = parser.parse_args()
    report = asyncio.run(main_async(args))
    keys = ("events_per_s", "append_p99_ms", "resolve_p50_ms", "resolve_p99_ms", "get_job_p50_ms")
    print(f"{'layout':<10}" + "".join(f"{k:>16}" for k in keys))
    for layout in LAYOUTS:
        print(f"{layout:<10}" + "".join(f"{report[layout][k]:>16.2f}" for k in keys))
    shared, per_store = report["shared"], report["per-store"]
    print(
        f"shared / per-store: events/s {shared['events_per_s'] / per_store['events_per_s']:.2f}x, "
        f"resolve p50 {shared['resolve_p50_ms'] / per_store['resolve_p50_ms']:.2f}x"
    )
    output = args.output or RESULTS_DIR / f"stores-{datetime.now(UTC):%Y%m%dT%H%M%S}.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    document = {"args": vars(args) | {"output": str(output)}, **report}
    output.write_text(json.dumps(document, indent=2))
    print(f"wrote {output}")


if __name__ == "__main__":
    main()
