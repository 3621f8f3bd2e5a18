"""Local vs task (and job) mode: 200 short jobs each through one real server, in one run.

Starts a one-node Ray (``ray.cluster_utils.Cluster``, not connected to this process) and the
test server process (``tests/ray_modes/_server.py``: the real job service, executors and gRPC
servicers), submits N short jobs (``ray-probe/where``, one progress step, ``num_cpus: 0``) in
each mode and reads the server's own timestamps back with GetJob:

- jobs per second: N / (last end_time - first create_time)
- submit → RUNNING latency under that load: start_time - create_time per job (p50, p95;
  jobs beyond ``--concurrency`` wait for a free slot, so this includes queueing)
- submit → RUNNING latency of a lone job on an idle server (p50 of 10 sequential jobs)

and prints each mode and its ratios over local mode (the same run's baseline) as JSON (also
written to bench/results/). Job mode starts a Ray actor per job, so it gets its own, smaller
job count (``--job-mode-jobs``; 0 leaves it out). Usage::

    .venv/bin/python bench/bench_modes.py [--jobs 200] [--concurrency 8] [--job-mode-jobs 40]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "ray_modes"))
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

from ray_modes_support import events, get_job, run_action, start_server, stop_server  # noqa: E402
from synapse.plugin.v1 import job_pb2  # noqa: E402


def _seconds(ts: Any) -> float:
    return float(ts.seconds) + ts.nanos / 1e9


def bench_mode(server: Any, mode: str, jobs: int) -> dict[str, float]:
    """Submit ``jobs`` jobs in ``mode``, wait for all, return the server-side figures."""
    warm = run_action(server, "where", {"steps": 1}, mode=mode)
    events(server, warm.id)
    started = time.perf_counter()
    submitted = [run_action(server, "where", {"steps": 1}, mode=mode) for _ in range(jobs)]
    submit_wall = time.perf_counter() - started
    with ThreadPoolExecutor(16) as pool:
        terminals = list(pool.map(lambda j: events(server, j.id, timeout=600)[-1], submitted))
    failed = [t for t in terminals if t.terminal.state != job_pb2.JOB_STATE_SUCCEEDED]
    if failed:
        raise RuntimeError(f"{len(failed)} {mode} job(s) did not succeed: {failed[0]}")
    finished = [get_job(server, j.id) for j in submitted]
    created = [_seconds(j.create_time) for j in finished]
    running = [_seconds(j.start_time) - _seconds(j.create_time) for j in finished]
    span = max(_seconds(j.end_time) for j in finished) - min(created)
    running.sort()
    idle = []
    for _ in range(10):
        job = run_action(server, "where", {"steps": 1}, mode=mode)
        events(server, job.id)
        done = get_job(server, job.id)
        idle.append(_seconds(done.start_time) - _seconds(done.create_time))
    return {
        "idle_submit_to_running_p50_ms": statistics.median(idle) * 1000,
        "jobs": float(jobs),
        "jobs_per_second": jobs / span,
        "submit_to_running_p50_ms": statistics.median(running) * 1000,
        "submit_to_running_p95_ms": running[int(0.95 * (len(running) - 1))] * 1000,
        "submit_seconds": submit_wall,
        "total_seconds": span,
    }


_RATIOS = {
    "idle_submit_to_running_p50": "idle_submit_to_running_p50_ms",
    "jobs_per_second": "jobs_per_second",
    "submit_to_running_p50": "submit_to_running_p50_ms",
    "submit_to_running_p95": "submit_to_running_p95_ms",
}


def _ratios(figures: dict[str, float], local: dict[str, float]) -> dict[str, float]:
    """A mode's figures over local mode's in the same run (the machine's load cancels out)."""
    return {name: figures[key] / local[key] for name, key in _RATIOS.items()}


def main() -> int:
    """Run both modes against one server and print the figures and ratios."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--job-mode-jobs", type=int, default=40)
    args = parser.parse_args()
    from ray.cluster_utils import Cluster

    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 2, "include_dashboard": False},
    )
    try:
        with TemporaryDirectory() as tmp:
            server = start_server(
                cluster.address,
                Path(tmp),
                extra=("--max-concurrent-jobs", str(args.concurrency)),
            )
            try:
                local = bench_mode(server, "local", args.jobs)
                task = bench_mode(server, "task", args.jobs)
                job = bench_mode(server, "job", args.job_mode_jobs) if args.job_mode_jobs else None
            finally:
                stop_server(server)
    finally:
        cluster.shutdown()
    modes = {"task": task} | ({"job": job} if job else {})
    report: dict[str, Any] = {
        "machine": f"{os.cpu_count()} CPUs",
        "concurrency": args.concurrency,
        "local": local,
        **modes,
    }
    for name, figures in modes.items():
        report[f"{name}_over_local"] = _ratios(figures, local)
    text = json.dumps(report, indent=2)
    print(text)
    out = (
        ROOT
        / "bench"
        / "results"
        / f"bench_modes-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.json"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
