"""Progress streaming benchmark: the Synapse platform against a plain grpcio baseline.

Measures, in one run and on one machine:

* latency from submitting a job to receiving its first progress event, against a plain
  grpcio unary call followed by a server stream up to its first message;
* events per second delivered to 1, 10, 100 and 1,000 concurrent subscribers of one job whose
  action logs ``--events`` events back to back, and to 10 subscribers of each of 100 jobs at
  once (``--many-jobs``), against a minimal grpcio aio server that streams the same number of
  messages of the same size (real serialized ``StreamProgressResponse`` bytes of such an
  event) on as many streams;
* the server process's CPU time per 1,000 delivered events in each of those cases (the
  platform's: the whole case, from submitting its jobs to their results; its job workers are
  other processes and are not counted).

Both servers run in their own subprocess; the subscribers share one asyncio client process and
one channel per side. Log events are counted because the platform never coalesces them (it
may coalesce progress events for a lagging subscriber), so every subscriber must receive all.
The jobs wait after their first progress event until every subscriber holds it, so that the
burst is timed with everyone attached.

    .venv/bin/python bench/bench_progress.py [--events 1000] [--subscribers 1,10,100,1000]
        [--many-jobs 100x10x200] [--trace] [--events-per-message N]

The platform's subscribers follow jobs as the client does, which asks the server for batches
of the events ready at once (``max_events_per_message``; the baseline sends one message per
event, as it always did); ``--events-per-message 1`` makes them take one event per message,
the same messages as the baseline's.

``--trace`` also times each stage of submit -> first progress (see ``STAGES``): the server
subprocess records when each job passes each of its stages, and the table gives the median
time of each since the client's call.

Prints a table and writes JSON to bench/results/.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import struct_pb2
from synapse.plugin.v1 import action_service_pb2, job_event_pb2
from synapse_client import AsyncClient, LogEvent, ProgressEvent, UnavailableError
from synapse_client import _jobs as client_jobs

logger = logging.getLogger(__name__)

BENCH_DIR = Path(__file__).resolve().parent
PLUGIN_DIR = BENCH_DIR / "plugins" / "bench_events"
RESULTS_DIR = BENCH_DIR / "results"
PLUGIN, ACTION = "bench-events", "emit"
PAYLOAD_BYTES = 64
LATENCY_SAMPLES = 7

_BASELINE_SERVICE = "bench.Baseline"
# Both clients' channels: without BDP probing, a stream's receive window stays at its
# default. The baseline server has every message ready and pushes them as fast as the window
# lets it; with 1,000 streams on one channel and windows grown by BDP probing, grpc cancelled
# some of them (StatusCode.CANCELLED from grpc itself) on the shared 2-CPU machine under load.
CLIENT_CHANNEL_OPTIONS = (("grpc.http2.bdp_probe", 0),)


# --- servers (each runs in its own subprocess) -------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def tick_message(seq: int, i: int) -> bytes:
    """The serialized StreamProgressResponse of one ``tick`` log event, as the platform sends."""
    data = struct_pb2.Struct()
    data.update({"i": i, "pad": "x" * PAYLOAD_BYTES})
    event = job_event_pb2.JobEvent(
        seq=seq,
        job_id="0123456789abcdef0123456789abcdef",
        log=job_event_pb2.LogEvent(event="tick", level=job_event_pb2.LOG_LEVEL_INFO, data=data),
    )
    event.time.GetCurrentTime()
    return action_service_pb2.StreamProgressResponse(event=event).SerializeToString()


async def _run_baseline_server(port: int, events: int) -> None:
    messages = [tick_message(seq, seq) for seq in range(1, events + 1)]

    async def submit(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return b""

    async def follow(request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        # The request is the number of messages to send (all of them when empty).
        for message in messages[: int(request) if request else len(messages)]:
            yield message

    handler = grpc.method_handlers_generic_handler(
        _BASELINE_SERVICE,
        {
            "Submit": grpc.unary_unary_rpc_method_handler(submit),
            "Follow": grpc.unary_stream_rpc_method_handler(follow),
        },
    )
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


async def _run_synapse_server(
    port: int, data_dir: str, max_jobs: int = 2, trace_file: str | None = None
) -> None:
    from synapse_server.app import serve
    from synapse_server.settings import ServerSettings

    if trace_file:
        _install_stage_trace(Path(trace_file))

    settings = ServerSettings(
        listen_address=f"127.0.0.1:{port}",
        data_dir=Path(data_dir),
        plugin_dirs=[PLUGIN_DIR],
        max_concurrent_jobs=max_jobs,
    )
    await serve(settings)


# --- stage trace (--trace) ------------------------------------------------------------------

# Stages of submit -> first progress in the order a job passes them; "client" ones are timed by
# the benchmark, "worker" by the worker process (the progress event's own time), the others
# by the server process, whose methods :func:`_install_stage_trace` wraps. One clock for all
# (time.time(), one machine).
STAGES = (
    ("client_call", "client: run_action called"),
    ("submit_entered", "server: JobService.submit entered (RunAction decoded)"),
    ("job_row_stored", "server: job row stored (SQLite insert)"),
    ("pending_stored", "server: PENDING event stored"),
    ("submit_returned", "server: submit returns (RunAction answer next)"),
    ("client_submitted", "client: RunAction answer received"),
    ("subscribed", "server: StreamProgress subscribed to the job"),
    ("launch_started", "server: the job's launch task runs"),
    ("slot_taken", "server: worker slot taken, executor called"),
    ("fork_requested", "server: fork request written to the fork server"),
    ("fork_started", "server: fork server reports the worker started"),
    ("get_assignment", "server: worker's GetAssignment received"),
    ("stream_opened", "server: worker's ReportEvents open received"),
    ("running_stored", "server: RUNNING event stored"),
    ("worker_progress", "worker: action's first set_progress (event time)"),
    ("progress_received", "server: worker batch with the progress received"),
    ("progress_stored", "server: progress event stored"),
    ("progress_encoded", "server: progress encoded for its first subscriber"),
    ("client_progress", "client: first progress event received"),
)


def _install_stage_trace(path: Path) -> None:
    """In the server process: append ``{"job", "stage", "t"}`` lines to ``path`` the first
    time each job passes each server stage (wrapping the methods on the path)."""
    from synapse_server.core import EventKind, _executor, _hub, _jobs, _standby
    from synapse_server.grpc import _progress_wire
    from synapse_server.stores import _sqlite_jobs

    out = path.open("a", buffering=1, encoding="utf-8")
    seen: set[tuple[str, str]] = set()

    def mark(job_id: str, stage: str, at: float | None = None) -> None:
        if (job_id, stage) not in seen:
            seen.add((job_id, stage))
            t = time.time() if at is None else at
            out.write(json.dumps({"job": job_id, "stage": stage, "t": t}) + "\n")

    def wrap(cls: Any, name: str, before: Any = None, after: Any = None) -> None:
        original = getattr(cls, name)

        async def traced(self: Any, *args: Any, **kwargs: Any) -> Any:
            entered = time.time()
            if before is not None:
                before(entered, *args, **kwargs)
            result = await original(self, *args, **kwargs)
            if after is not None:
                after(entered, result, *args, **kwargs)
            return result

        setattr(cls, name, traced)

    def submitted(entered: float, result: Any, *args: Any, **kwargs: Any) -> None:
        mark(result[0].id, "submit_entered", entered)
        mark(result[0].id, "submit_returned")

    def stored(entered: float, result: Any, job_id: str, *args: Any, **kwargs: Any) -> None:
        for event in result:
            if event.kind is EventKind.STATE and event.data.get("state") == "PENDING":
                mark(job_id, "pending_stored")
            elif event.kind is EventKind.STATE and event.data.get("state") == "RUNNING":
                mark(job_id, "running_stored")
            elif event.kind is EventKind.PROGRESS:
                mark(job_id, "progress_stored")

    def reported(entered: float, claims: Any, job_id: str, reports: Any) -> None:
        if any(getattr(r.item, "kind", None) is EventKind.PROGRESS for r in reports):
            mark(job_id, "progress_received", entered)

    wrap(_jobs.JobService, "submit", after=submitted)
    wrap(
        _jobs.JobService,
        "_run",
        before=lambda entered, active: mark(active.job.id, "launch_started", entered),
    )
    wrap(
        _executor.LocalProcessExecutor,
        "run",
        before=lambda entered, job, *a, **k: mark(job.id, "slot_taken", entered),
    )
    wrap(
        _sqlite_jobs.SqliteJobStore,
        "create_job",
        after=lambda entered, result, job: mark(job.id, "job_row_stored"),
    )
    wrap(_hub.EventHub, "append", after=stored)
    wrap(
        _standby.ForkServer,
        "start",
        before=lambda entered, job_id, *a, **k: mark(job_id, "fork_requested", entered),
        after=lambda entered, result, job_id, *a, **k: mark(job_id, "fork_started"),
    )
    wrap(
        _jobs.JobService,
        "assignment",
        before=lambda entered, claims, job_id: mark(job_id, "get_assignment", entered),
    )
    wrap(
        _jobs.JobService,
        "open_worker_stream",
        before=lambda entered, claims, job_id, worker_id: mark(job_id, "stream_opened", entered),
    )
    wrap(_jobs.JobService, "report", before=reported)
    original_subscribe = _jobs.JobService.subscribe_batches

    async def subscribe(self: Any, tenant: Any, job_id: str, *args: Any, **kwargs: Any) -> Any:
        mark(job_id, "subscribed")
        return await original_subscribe(self, tenant, job_id, *args, **kwargs)

    _jobs.JobService.subscribe_batches = subscribe  # type: ignore[method-assign]
    original_get = _progress_wire.EncodedEvents.get

    def get(self: Any, event: Any) -> bytes:
        if event.kind is EventKind.PROGRESS:
            mark(event.job_id, "progress_encoded")
        return original_get(self, event)

    _progress_wire.EncodedEvents.get = get  # type: ignore[method-assign]


class ServerProcess:
    """A benchmark server in a subprocess of this script."""

    def __init__(self, *args: str) -> None:
        self.port = _free_port()
        self.address = f"127.0.0.1:{self.port}"
        self._proc = subprocess.Popen(
            [sys.executable, __file__, *args, "--port", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )

    def cpu_seconds(self) -> float:
        """User and system CPU time of the server process so far (all its threads; not its
        children, such as the platform's job workers)."""
        fields = Path(f"/proc/{self._proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def check_alive(self) -> None:
        if self._proc.poll() is not None:
            err = self._proc.stderr.read().decode() if self._proc.stderr else ""
            raise RuntimeError(f"benchmark server exited with {self._proc.returncode}:\n{err}")

    def stop(self) -> None:
        self._proc.terminate()
        try:
            self._proc.wait(15)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait(5)


# --- measurements ---------------------------------------------------------------------------


@dataclass
class Throughput:
    """Events delivered to ``subscribers`` followers of each of ``jobs`` streams of
    ``events`` events, and the server process's CPU time over the whole case."""

    jobs: int
    subscribers: int
    events: int
    delivered: int
    seconds: float
    server_cpu_seconds: float

    @property
    def events_per_second(self) -> float:
        return self.delivered / self.seconds if self.seconds > 0 else 0.0

    @property
    def cpu_ms_per_1000(self) -> float:
        """Server CPU milliseconds per 1,000 delivered events."""
        return self.server_cpu_seconds / self.delivered * 1e6 if self.delivered else 0.0


async def _wait_ready_synapse(server: ServerProcess, client: AsyncClient) -> None:
    deadline = time.monotonic() + 60
    while True:
        server.check_alive()
        try:
            await client.list_actions(plugin=PLUGIN)
            return
        except UnavailableError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


async def _wait_ready_baseline(server: ServerProcess, channel: grpc.aio.Channel) -> None:
    deadline = time.monotonic() + 30
    while True:
        server.check_alive()
        try:
            await asyncio.wait_for(channel.channel_ready(), 1)
            return
        except TimeoutError:
            if time.monotonic() > deadline:
                raise


async def synapse_latency(
    client: AsyncClient, marks: dict[str, dict[str, float]] | None = None
) -> float:
    """Seconds from calling RunAction to holding the job's first progress event.

    ``marks``: the client's and the worker's stage times go there, by job id (see STAGES).
    """
    called = time.time()
    start = time.perf_counter()
    handle = await client.run_action(PLUGIN, ACTION, {"count": 0})
    submitted = time.time()
    async for event in handle.events():
        if isinstance(event.payload, ProgressEvent):
            elapsed = time.perf_counter() - start
            received = time.time()
            break
    else:
        raise RuntimeError("job ended without a progress event")
    await handle.result(timeout=60)
    if marks is not None:
        marks[handle.id] = {
            "client_call": called,
            "client_submitted": submitted,
            "worker_progress": event.time.timestamp() if event.time is not None else received,
            "client_progress": received,
        }
    return elapsed


def stage_table(marks: dict[str, dict[str, float]], trace_file: Path) -> list[dict[str, Any]]:
    """Per stage, the median time since ``client_call`` over the traced jobs (ms)."""
    for line in trace_file.read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        if record["job"] in marks:
            marks[record["job"]].setdefault(record["stage"], record["t"])
    rows: list[dict[str, Any]] = []
    for stage, label in STAGES:
        offsets = [
            (job[stage] - job["client_call"]) * 1000 for job in marks.values() if stage in job
        ]
        if offsets:
            rows.append(
                {
                    "stage": stage,
                    "label": label,
                    "median_ms": statistics.median(offsets),
                    "min_ms": min(offsets),
                    "max_ms": max(offsets),
                }
            )
    rows.sort(key=lambda row: row["median_ms"])
    return rows


async def baseline_latency(channel: grpc.aio.Channel) -> float:
    """Seconds for a unary call plus a server stream up to its first message."""
    submit = channel.unary_unary(f"/{_BASELINE_SERVICE}/Submit")
    follow = channel.unary_stream(
        f"/{_BASELINE_SERVICE}/Follow",
        response_deserializer=action_service_pb2.StreamProgressResponse.FromString,
    )
    start = time.perf_counter()
    await submit(b"")
    call = follow(b"")
    async for _ in call:
        elapsed = time.perf_counter() - start
        break
    call.cancel()
    return elapsed


async def synapse_throughput(
    client: AsyncClient, server: ServerProcess, jobs: int, subscribers: int, events: int
) -> Throughput:
    """``subscribers`` follow each of ``jobs`` jobs from seq 0. Each job's action reports
    progress, then waits for a gate file that opens once every subscriber holds that event,
    then logs ``events`` events back to back; the log events are counted and timed."""
    gate = Path(tempfile.mkdtemp(prefix="synapse-bench-gate-")) / "open"
    cpu_before = server.cpu_seconds()
    params = {"count": events, "payload_bytes": PAYLOAD_BYTES, "gate": str(gate)}
    handles = [await client.run_action(PLUGIN, ACTION, params) for _ in range(jobs)]
    attached = 0
    all_attached = asyncio.Event()
    firsts: list[float] = []
    lasts: list[float] = []
    counts: list[int] = []

    async def subscriber(job_id: str) -> None:
        nonlocal attached
        n = 0
        first = 0.0
        waiting = True
        async for event in client.job(job_id).events():
            if waiting and isinstance(event.payload, ProgressEvent):
                waiting = False
                attached += 1
                if attached == jobs * subscribers:
                    all_attached.set()
            elif isinstance(event.payload, LogEvent):
                if n == 0:
                    first = time.perf_counter()
                n += 1
        firsts.append(first)
        lasts.append(time.perf_counter())
        counts.append(n)

    tasks = [
        asyncio.create_task(subscriber(handle.id)) for handle in handles for _ in range(subscribers)
    ]
    try:
        await asyncio.wait_for(all_attached.wait(), 120)
        gate.touch()
        await asyncio.gather(*tasks)
    finally:
        gate.touch()
        for task in tasks:
            task.cancel()
    for handle in handles:
        await handle.result(timeout=120)
    cpu = server.cpu_seconds() - cpu_before
    return Throughput(jobs, subscribers, events, sum(counts), max(lasts) - min(firsts), cpu)


async def baseline_throughput(
    channel: grpc.aio.Channel, server: ServerProcess, jobs: int, subscribers: int, events: int
) -> Throughput:
    """As many streams (``jobs`` x ``subscribers``), each of ``events`` same-size messages."""
    follow = channel.unary_stream(
        f"/{_BASELINE_SERVICE}/Follow",
        response_deserializer=action_service_pb2.StreamProgressResponse.FromString,
    )
    firsts: list[float] = []
    lasts: list[float] = []
    counts: list[int] = []
    cpu_before = server.cpu_seconds()

    async def subscriber() -> None:
        n = 0
        first = 0.0
        async for _ in follow(str(events).encode()):
            if n == 0:
                first = time.perf_counter()
            n += 1
        firsts.append(first)
        lasts.append(time.perf_counter())
        counts.append(n)

    await asyncio.gather(*(subscriber() for _ in range(jobs * subscribers)))
    cpu = server.cpu_seconds() - cpu_before
    return Throughput(jobs, subscribers, events, sum(counts), max(lasts) - min(firsts), cpu)


async def _baseline_throughput_retried(
    channel: grpc.aio.Channel,
    server: ServerProcess,
    jobs: int,
    subscribers: int,
    events: int,
    retries: list[str],
) -> Throughput | None:
    """:func:`baseline_throughput`, again (twice at most) when grpc cancels one of its
    streams; None when it did so every time. With 1,000 streams on one channel, plain grpcio
    cancels some (StatusCode.CANCELLED, from grpc itself): now and then under load, and on
    every try on the quiet 2-CPU machine, where the server runs further ahead of its reader.
    Each retry is noted in the report, and the platform's figures still stand alone."""
    for attempt in range(3):
        try:
            return await baseline_throughput(channel, server, jobs, subscribers, events)
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.CANCELLED:
                raise
            retries.append(f"{jobs} job(s) x {subscribers}: baseline stream cancelled by grpc")
            logger.warning("baseline: %s (attempt %d of 3)", exc.code(), attempt + 1)
    return None


async def run_bench(
    events: int,
    subscriber_counts: Sequence[int],
    trace: bool = False,
    latency_samples: int = LATENCY_SAMPLES,
    many_jobs: tuple[int, int, int] | None = None,
) -> dict[str, Any]:
    """Runs every measurement; returns the report as a dict.

    ``many_jobs``: ``(jobs, subscribers per job, events per job)`` of the many-jobs case.
    """
    cases = [(1, n, events) for n in subscriber_counts]
    if many_jobs is not None:
        cases.append(many_jobs)
    data_dir = tempfile.mkdtemp(prefix="synapse-bench-")
    trace_file = Path(data_dir) / "stages.jsonl"
    trace_args = ("--trace-file", str(trace_file)) if trace else ()
    concurrent = str(max(2, *(jobs for jobs, _, _ in cases)))
    synapse_server = ServerProcess(
        "--synapse-server", "--data-dir", data_dir, "--max-jobs", concurrent, *trace_args
    )
    marks: dict[str, dict[str, float]] = {}
    most = max(n for _, _, n in cases)
    baseline_server = ServerProcess("--baseline-server", "--events", str(most))
    try:
        async with AsyncClient(
            synapse_server.address, timeout=60, channel_options=CLIENT_CHANNEL_OPTIONS
        ) as client:
            channel = grpc.aio.insecure_channel(
                baseline_server.address, options=CLIENT_CHANNEL_OPTIONS
            )
            try:
                await _wait_ready_synapse(synapse_server, client)
                await _wait_ready_baseline(baseline_server, channel)
                await synapse_latency(client)  # warm-up: first worker start, imports
                await baseline_latency(channel)
                syn_lat = [
                    await synapse_latency(client, marks if trace else None)
                    for _ in range(latency_samples)
                ]
                base_lat = [await baseline_latency(channel) for _ in range(latency_samples)]
                rows = []
                retries: list[str] = []
                for jobs, n, count in cases:
                    syn = await synapse_throughput(client, synapse_server, jobs, n, count)
                    base = await _baseline_throughput_retried(
                        channel, baseline_server, jobs, n, count, retries
                    )
                    expected = jobs * n * count
                    if syn.delivered != expected or (base and base.delivered != expected):
                        raise RuntimeError(
                            f"{jobs} job(s) x {n} subscribers: delivered "
                            f"synapse={syn.delivered} "
                            f"baseline={base.delivered if base else '-'}, expected {expected}"
                        )
                    rows.append((syn, base))
            finally:
                await channel.close()
    finally:
        synapse_server.stop()
        baseline_server.stop()

    stages = stage_table(marks, trace_file) if trace else []

    def seconds(values: list[float]) -> dict[str, float]:
        return {"median": statistics.median(values), "min": min(values), "max": max(values)}

    return {
        "time": datetime.now(UTC).isoformat(),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "grpcio": grpc.__version__,
            "platform": platform.platform(),
        },
        "events": events,
        "events_per_message": client_jobs.EVENTS_PER_MESSAGE,
        "message_bytes": len(tick_message(events, events)),
        "latency_s": {
            "synapse": seconds(syn_lat),
            "baseline": seconds(base_lat),
            "ratio_median": statistics.median(syn_lat) / statistics.median(base_lat),
        },
        "stages": stages,
        "baseline_retries": retries,
        "throughput": [
            {
                "jobs": syn.jobs,
                "subscribers": syn.subscribers,
                "synapse": {
                    **asdict(syn),
                    "events_per_second": syn.events_per_second,
                    "server_cpu_ms_per_1000": syn.cpu_ms_per_1000,
                },
                "baseline": None
                if base is None
                else {
                    **asdict(base),
                    "events_per_second": base.events_per_second,
                    "server_cpu_ms_per_1000": base.cpu_ms_per_1000,
                },
                "ratio": None if base is None else syn.events_per_second / base.events_per_second,
                "cpu_ratio": syn.cpu_ms_per_1000 / base.cpu_ms_per_1000
                if base is not None and base.cpu_ms_per_1000
                else None,
            }
            for syn, base in rows
        ],
    }


def print_table(report: dict[str, Any]) -> None:
    """The report as a human-readable table."""
    lat = report["latency_s"]
    print(
        f"events per job: {report['events']} ({report['message_bytes']} B per message); "
        f"platform subscribers take up to {report['events_per_message']} events per message; "
        f"{report['machine']['cpus']} CPUs, grpcio {report['machine']['grpcio']}"
    )
    print()
    print(f"{'measure':<34}{'synapse':>14}{'baseline':>14}{'ratio':>10}")
    print(
        f"{'submit -> first progress (median)':<34}"
        f"{lat['synapse']['median'] * 1000:>11.2f} ms"
        f"{lat['baseline']['median'] * 1000:>11.2f} ms"
        f"{lat['ratio_median']:>9.1f}x"
    )
    for row in report["throughput"]:
        jobs = f"{row['jobs']} jobs x " if row["jobs"] > 1 else ""
        label = f"events/s, {jobs}{row['subscribers']} subscriber(s)"
        base = row["baseline"]
        print(
            f"{label:<34}{row['synapse']['events_per_second']:>14,.0f}"
            + (f"{'-':>14}{'-':>10}" if base is None else f"{base['events_per_second']:>14,.0f}")
            + ("" if base is None else f"{row['ratio']:>10.2f}")
        )
    print()
    print("server CPU per 1,000 delivered events (ms; the server process, not its workers)")
    for row in report["throughput"]:
        jobs = f"{row['jobs']} jobs x " if row["jobs"] > 1 else ""
        label = f"{jobs}{row['subscribers']} subscriber(s)"
        ratio = row["cpu_ratio"]
        base = row["baseline"]
        print(
            f"{label:<34}{row['synapse']['server_cpu_ms_per_1000']:>14.1f}"
            + (f"{'-':>14}" if base is None else f"{base['server_cpu_ms_per_1000']:>14.1f}")
            + f"{(f'{ratio:.2f}x' if ratio else '-'):>10}"
        )
    for retry in report["baseline_retries"]:
        print(f"(measured again: {retry})")
    if report["stages"]:
        print()
        print("submit -> first progress, stage by stage (median over the samples, ms)")
        print(f"{'stage':<60}{'since call':>12}{'step':>8}")
        previous = 0.0
        for stage in report["stages"]:
            print(
                f"{stage['label']:<60}{stage['median_ms']:>12.2f}"
                f"{stage['median_ms'] - previous:>8.2f}"
            )
            previous = stage["median_ms"]


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point (also the entry of the two server subprocesses)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=1000, help="events per job (default 1000)")
    parser.add_argument(
        "--subscribers",
        default="1,10,100,1000",
        help="comma-separated subscriber counts of one job (default 1,10,100,1000)",
    )
    parser.add_argument(
        "--many-jobs",
        default="100x10x200",
        help="JOBSxSUBSCRIBERSxEVENTS: the case of many jobs at once, each followed by "
        "SUBSCRIBERS and logging EVENTS (default 100x10x200; 'none' to skip)",
    )
    parser.add_argument(
        "--output", type=Path, help="JSON report path (default: bench/results/<timestamp>.json)"
    )
    parser.add_argument(
        "--trace",
        action="store_true",
        help="time submit -> first progress stage by stage and print the stages",
    )
    parser.add_argument(
        "--latency-samples",
        type=int,
        default=LATENCY_SAMPLES,
        help=f"submit -> first progress samples per side (default {LATENCY_SAMPLES})",
    )
    parser.add_argument(
        "--events-per-message",
        type=int,
        help="events the platform's subscribers take per StreamProgress message (default: "
        f"the client's, {client_jobs.EVENTS_PER_MESSAGE}; 1: one per message, as the baseline)",
    )
    parser.add_argument("--synapse-server", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--trace-file", help=argparse.SUPPRESS)
    parser.add_argument("--baseline-server", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--data-dir", help=argparse.SUPPRESS)
    parser.add_argument("--max-jobs", type=int, default=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.synapse_server:
        logging.basicConfig(level=logging.WARNING)
        asyncio.run(_run_synapse_server(args.port, args.data_dir, args.max_jobs, args.trace_file))
        return 0
    if args.baseline_server:
        asyncio.run(_run_baseline_server(args.port, args.events))
        return 0
    if args.events < 1:
        parser.error("--events must be at least 1")
    if args.events_per_message is not None:
        if args.events_per_message < 1:
            parser.error("--events-per-message must be at least 1")
        # What the client's StreamProgress requests ask for (read at each request).
        client_jobs.EVENTS_PER_MESSAGE = args.events_per_message
    counts = [int(n) for n in args.subscribers.split(",") if n.strip()]
    many: tuple[int, int, int] | None = None
    if args.many_jobs != "none":
        try:
            jobs, subscribers, events = (int(n) for n in args.many_jobs.split("x"))
        except ValueError:
            parser.error("--many-jobs must be JOBSxSUBSCRIBERSxEVENTS, e.g. 100x10x200")
        many = (jobs, subscribers, events)
    report = asyncio.run(
        run_bench(
            args.events,
            counts,
            trace=args.trace,
            many_jobs=many,
            latency_samples=args.latency_samples,
        )
    )
    print_table(report)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    path: Path = args.output or RESULTS_DIR / f"bench_progress-{stamp}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
