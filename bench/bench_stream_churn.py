"""Stream churn: does the server's memory grow with progress streams that clients cancel?

Starts ``synapse serve`` in a subprocess with the bench plugins, keeps one job running (it
reports a progress event, then pauses), and opens StreamProgress on it again and again:

* ``complete``: replay-only streams, which end normally after the job's history;
* ``cancel``: follow streams; the client reads the first event and cancels the call (the
  pattern that leaked native memory in grpc.aio, see server/synapse_server/grpc/_streams.py).

For each, the server's resident memory (VmRSS) after a warm-up and after ``--cycles`` streams,
the growth in percent and in bytes per stream. The goal for both is a growth under 2 %.

    .venv/bin/python bench/bench_stream_churn.py [--cycles 30000] [--modes complete,cancel]

Prints a table and writes JSON to bench/results/.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
from synapse.plugin.v1 import action_service_pb2 as pb
from synapse.plugin.v1 import action_service_pb2_grpc, job_pb2

logger = logging.getLogger(__name__)

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / "results"
GOAL_PERCENT = 2.0
WARMUP = 1000
# The job pauses this long (the plugin's maximum); the bench starts another when it ends.
PAUSE_S = 60.0


class Server:
    """``python -m synapse_server`` on port 0 with the bench plugins, in its own data dir."""

    def __init__(self, data_dir: Path) -> None:
        self.process = subprocess.Popen(
            [
                sys.executable, "-m", "synapse_server", "--listen", "127.0.0.1:0",
                "--data-dir", str(data_dir), "--plugin-dir", str(BENCH_DIR / "plugins"),
                "--log-level", "WARNING",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )  # fmt: skip
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line.startswith("synapse server listening on "):
            self.process.kill()
            raise RuntimeError("the server did not start")
        self.address = line.rsplit(" ", 1)[1].strip()

    def rss_kib(self) -> int:
        """The server process's resident memory."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise RuntimeError("no VmRSS")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)


class Churn:
    """Opens and ends streams on a job that is kept running."""

    def __init__(self, address: str) -> None:
        self.channel = grpc.insecure_channel(address)
        self.stub = action_service_pb2_grpc.ActionServiceStub(self.channel)
        self.job_id = ""

    def ensure_running_job(self) -> None:
        """Start the paused job again once it has ended, and wait until it runs."""
        if self.job_id:
            job = self.stub.GetJob(pb.GetJobRequest(job_id=self.job_id), timeout=30).job
            if job.state == job_pb2.JOB_STATE_RUNNING:
                return
        request = pb.RunActionRequest(plugin="bench-events", action="emit")
        request.params.update({"count": 0, "pause_s": PAUSE_S})
        self.job_id = self.stub.RunAction(request, timeout=30).job.id
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            job = self.stub.GetJob(pb.GetJobRequest(job_id=self.job_id), timeout=30).job
            if job.state == job_pb2.JOB_STATE_RUNNING and job.last_seq >= 3:
                return
            time.sleep(0.05)
        raise RuntimeError("the bench job did not start")

    def cycle(self, mode: str) -> None:
        if mode == "cancel":
            request = pb.StreamProgressRequest(job_id=self.job_id)
            call = self.stub.StreamProgress(request, timeout=30)
            next(call)
            call.cancel()
        else:
            request = pb.StreamProgressRequest(job_id=self.job_id, replay_only=True)
            for _ in self.stub.StreamProgress(request, timeout=30):
                pass

    def run(self, mode: str, cycles: int) -> float:
        """``cycles`` streams of ``mode``; returns streams per second."""
        started = time.perf_counter()
        done = 0
        while done < cycles:
            self.ensure_running_job()
            batch = min(1000, cycles - done)
            for _ in range(batch):
                self.cycle(mode)
            done += batch
        return cycles / (time.perf_counter() - started)

    def close(self) -> None:
        self.channel.close()


def _settled_rss(server: Server) -> int:
    # Streams cancelled last may still be unwinding on the server; let them finish.
    time.sleep(1.0)
    return server.rss_kib()


def run_bench(cycles: int, modes: Sequence[str]) -> dict[str, Any]:
    """Measure every mode on one fresh server."""
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-churn-") as tmp:
        server = Server(Path(tmp) / "data")
        churn = Churn(server.address)
        try:
            for mode in modes:
                churn.run(mode, WARMUP)
            for mode in modes:
                before = _settled_rss(server)
                rate = churn.run(mode, cycles)
                after = _settled_rss(server)
                growth = after - before
                rows.append(
                    {
                        "mode": mode,
                        "cycles": cycles,
                        "streams_per_second": rate,
                        "rss_before_kib": before,
                        "rss_after_kib": after,
                        "growth_kib": growth,
                        "growth_percent": 100.0 * growth / before,
                        "bytes_per_stream": growth * 1024 / cycles,
                    }
                )
        finally:
            churn.close()
            server.stop()
    return {
        "time": datetime.now(UTC).isoformat(),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "grpcio": grpc.__version__,
            "platform": platform.platform(),
        },
        "goal_percent": GOAL_PERCENT,
        "rows": rows,
    }


def print_table(report: dict[str, Any]) -> None:
    """The report as a human-readable table."""
    machine = report["machine"]
    print(f"{machine['cpus']} CPUs, grpcio {machine['grpcio']}; goal: growth < {GOAL_PERCENT} %")
    print()
    header = f"{'mode':<10}{'streams':>9}{'per s':>9}{'RSS before':>13}{'growth':>11}"
    print(f"{header}{'%':>8}{'B/stream':>10}")
    for row in report["rows"]:
        print(
            f"{row['mode']:<10}{row['cycles']:>9}{row['streams_per_second']:>9.0f}"
            f"{row['rss_before_kib']:>10} KiB{row['growth_kib']:>7} KiB"
            f"{row['growth_percent']:>8.2f}{row['bytes_per_stream']:>10.1f}"
        )


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cycles", type=int, default=30_000, help="streams per mode")
    parser.add_argument(
        "--modes", default="complete,cancel", help="comma-separated: complete, cancel"
    )
    parser.add_argument(
        "--output", type=Path, help="JSON report path (default: bench/results/<timestamp>.json)"
    )
    args = parser.parse_args(argv)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if args.cycles < 1 or not modes or set(modes) - {"complete", "cancel"}:
        parser.error("--cycles must be at least 1 and --modes a list of complete, cancel")
    report = run_bench(args.cycles, modes)
    print_table(report)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    path: Path = args.output or RESULTS_DIR / f"bench_stream_churn-{stamp}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
