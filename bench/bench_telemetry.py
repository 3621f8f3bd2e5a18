"""What telemetry costs: Infer latency and job events per second with it on against off.

One run, one local Ray, ``--instances`` (2) ``synapse serve`` processes of each of five kinds
connected to it, each with the torch-serve example deployed (the same MLP):

- ``off`` and ``off_control``: no ``--metrics-listen``, no ``OTEL_*`` variables (the default);
- ``metrics``: ``--metrics-listen`` only;
- ``tracing``: tracing only, to an in-process OTLP collector with
  ``OTEL_TRACES_SAMPLER=parentbased_always_off``;
- ``on``: both.

Six configurations are measured:

- ``off``: calls to the ``off`` server;
- ``off_control``: calls to a second server with everything off, deployed the same way: its
  ratio against ``off`` is what two identical server processes (and their replicas) differ
  by in this run, the noise floor of the other ratios;
- ``metrics_only`` and ``tracing_sampler_off``: each part alone;
- ``metrics+sampler_off``: calls to the ``on`` server without a caller span (metrics
  recorded, every span unsampled: what an operator runs day to day);
- ``metrics+sampled``: calls to the ``on`` server inside a sampled caller span (the sampler
  follows the parent: every span of the call is recorded and exported, server, job, worker
  and replica; the always-on case).

Within a round the configurations take turns, in a shuffled order, each turn ``--block``
sequential Infer calls each (then one job each, ``--jobs`` turns): the machine's load moves
within seconds, and small interleaved blocks put every configuration under the same load.
Each turn goes to the next of the kind's instances: two processes started with the same flags
differ by a few percent in speed (where their memory and their replica landed), as much as
the goal; every figure is taken over all instances, so no configuration depends on one.

Figures per round: Infer p50/p99 over the round's ``--calls`` calls per configuration, and
events per second of a job that logs ``--events`` events (submission to result; the median of
``--jobs`` jobs); then the medians over ``--rounds``, their ratios against ``off``, and the
paired ratios (the median of each round's ratio against ``off``; latency: on/off, above 1 is
slower; events/s: on/off, below 1 is slower). The target: metrics with the sampler off costs
at most 5% (judged on the paired ratios). Last, the server process's CPU per Infer call of
each configuration (``--cpu-calls`` sequential calls, ``--cpu-passes`` passes, read from
``/proc``): unlike latency, it does not move with the machine's load, so it shows what the
telemetry itself costs the server where the latency ratios are within their noise. And the
CPU per 1,000 stored events of each configuration (``--cpu-jobs`` jobs of ``--cpu-events``
events per instance): the server process and its job workers together, the fork servers and
the workers they reaped included, so what events per second measures, without the load.

    nice -n 5 .venv/bin/python bench/bench_telemetry.py [--calls 300] [--block 10]
        [--events 5000] [--jobs 3] [--rounds 5] [--cpu-events 20000] [--cpu-jobs 3]

Prints a table and writes JSON to bench/results/.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

RESULTS_DIR = ROOT / "bench" / "results"
EVENTS_PLUGIN = ROOT / "bench" / "plugins" / "bench_events"
SECRET = "bench-telemetry-secret-0123456789abcdef"
PAYLOAD = {"inputs": [{"data": [1.0, 2.0, 3.0]}]}
# Configuration: (server kind, whether the caller's span is sampled).
CONFIGS: dict[str, tuple[str, bool]] = {
    "off": ("off", False),
    "off_control": ("off_control", False),
    "metrics_only": ("metrics", False),
    "tracing_sampler_off": ("tracing", False),
    "metrics+sampler_off": ("on", False),
    "metrics+sampled": ("on", True),
}


#: The client, model id and caller-span scope of a configuration, on the instance of its
#: server kind that a turn number picks.
Runner = Callable[[str, int], tuple[Any, int, Callable[[], Any]]]


def process_cpu_seconds(pid: int) -> float:
    """User plus system CPU seconds of process ``pid`` so far (Linux ``/proc``)."""
    # The fields after the command name's closing parenthesis start at the state (field 3);
    # utime and stime are fields 14 and 15.
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure_server_cpu(
    runner: Runner,
    pids: dict[str, list[int]],
    calls: int,
    passes: int,
) -> dict[str, float]:
    """Server CPU milliseconds per Infer call of each configuration (the median of
    ``passes`` passes over each of its server's instances).

    Calls are sequential, one configuration at a time: a process's CPU time counts its own
    work whatever else the machine runs, so this figure does not move with the load as
    latency does (the replica's CPU is not included).
    """
    samples: dict[str, list[float]] = {config: [] for config in CONFIGS}
    configs = list(CONFIGS)
    instances = len(next(iter(pids.values())))
    for index in range(passes * instances):
        for config in configs[index % len(configs) :] + configs[: index % len(configs)]:
            client, model, scope = runner(config, index)
            pid = pids[CONFIGS[config][0]][index % instances]
            with scope():
                before = process_cpu_seconds(pid)
                for _ in range(calls):
                    client.infer(
                        plugin="torch-serve", action="inference", model=model, json=PAYLOAD
                    )
                samples[config].append((process_cpu_seconds(pid) - before) * 1000 / calls)
    return {config: statistics.median(values) for config, values in samples.items()}


def tree_cpu_seconds(root: int) -> float:
    """CPU seconds of process ``root`` and every descendant, reaped children included.

    Each process counts its own user and system time plus that of the children it has
    reaped (``cutime``/``cstime``): a job worker that ran and exited between two readings is
    counted in its parent's reaped-children time, and one alive at both in its own, so the
    difference of two readings is what the whole tree spent in between (Linux ``/proc``).
    """
    parents: dict[int, int] = {}
    times: dict[int, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # exited while we looked
        # After the name: state (3), ppid (4), ..., utime (14), stime (15), cutime (16),
        # cstime (17).
        parents[int(entry.name)] = int(fields[1])
        times[int(entry.name)] = sum(int(value) for value in fields[11:15]) / tick
    total, frontier = 0.0, [root]
    while frontier:
        pid = frontier.pop()
        total += times.get(pid, 0.0)
        frontier.extend(child for child, parent in parents.items() if parent == pid)
    return total


def measure_events_cpu(
    runner: Runner,
    pids: dict[str, list[int]],
    events: int,
    passes: int,
) -> tuple[dict[str, float], dict[str, list[float]]]:
    """CPU milliseconds per 1,000 stored events of each configuration: the server process
    and its job workers together (the median of ``passes`` jobs over each instance), and
    every sample in the order taken.

    One job at a time; after its result the bench waits 0.5 s (the worker's exit and its
    reaping; CPU the tree spends later is not counted) before the second reading. CPU time counts
    the tree's own work whatever else the machine runs, so unlike events per second it does
    not move with the load.
    """
    samples: dict[str, list[float]] = {config: [] for config in CONFIGS}
    instances = len(next(iter(pids.values())))
    for index in range(passes * instances):
        for config in shuffled(10_000 + index):
            client, _, scope = runner(config, index)
            pid = pids[CONFIGS[config][0]][index % instances]
            with scope():
                before = tree_cpu_seconds(pid)
                events_rate(client, events)
                time.sleep(0.5)  # the worker's exit and reaping
                samples[config].append((tree_cpu_seconds(pid) - before) * 1e6 / events)
    return {config: statistics.median(values) for config, values in samples.items()}, samples


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (for a metrics endpoint whose address we must know)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def scrape_counters(url: str) -> dict[str, float]:
    """Every counter sample of a ``/metrics`` page, summed over labels, by sample name."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(url, timeout=30) as response:
        text = response.read().decode()
    totals: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        if family.type != "counter":
            continue
        for sample in family.samples:
            if sample.name.endswith("_total"):
                totals[sample.name] = totals.get(sample.name, 0.0) + sample.value
    return totals


def metrics_work_per_events(
    client: Any, url: str, events: int, repeats: int = 20_000
) -> dict[str, float]:
    """An upper bound of what the metrics code itself costs per 1,000 stored events: its
    calls counted on a real server, each timed in this process.

    One job of ``events`` events on a server with metrics on, its counters scraped before
    and after: the RPCs it took (the worker's event stream, its start and result, the
    client's submit and wait) and the events stored. Then the ``PrometheusMetrics`` calls
    the server makes for them, timed on a registry of their own: ``rpc_started`` and
    ``rpc_handled`` per RPC, the three job calls once, and ``events_stored`` once per event
    as if every event were a stored batch of its own (the worst case: the server makes one
    call per stored batch, and batches hold many events). No load moves this figure; against
    the CPU per event measured on the whole tree it bounds the metrics' share of it.
    """
    from prometheus_client import CollectorRegistry
    from synapse_server.telemetry import PrometheusMetrics

    before = scrape_counters(url)
    events_rate(client, events)
    after = scrape_counters(url)
    rpcs = after["grpc_server_handled_total"] - before["grpc_server_handled_total"]
    stored = after["synapse_job_events_stored_total"] - before["synapse_job_events_stored_total"]

    metrics = PrometheusMetrics(CollectorRegistry(), process_metrics=False)
    method = "/synapse.plugin.v1.WorkerService/ReportEvents"
    one = ("log",)

    def timed(call: Callable[[], None]) -> float:
        started = time.perf_counter()
        for _ in range(repeats):
            call()
        return (time.perf_counter() - started) / repeats

    def rpc() -> None:
        metrics.rpc_started(method)
        metrics.rpc_handled(method, "OK", 0.001)

    def job() -> None:
        metrics.job_submitted("bench-events", "emit", "local")
        metrics.job_started("bench-events", "emit", "local", 0.01)
        metrics.job_finished("bench-events", "emit", "local", "SUCCEEDED", 1.0)

    per_rpc, per_job, per_event = timed(rpc), timed(job), timed(lambda: metrics.events_stored(one))
    job_s = rpcs * per_rpc + per_job + stored * per_event
    return {
        "rpcs_per_job": rpcs,
        "events_stored_per_job": stored,
        "us_per_rpc": per_rpc * 1e6,
        "us_per_job": per_job * 1e6,
        "us_per_event_batch": per_event * 1e6,
        "ms_per_1000_events": job_s * 1e6 / max(stored, 1),
    }


def metrics_work_per_infer(repeats: int = 20_000) -> float:
    """Microseconds of metrics code one Infer call costs the server, timed in this process:
    the calls the server makes for it (``rpc_started``, ``rpc_handled`` and
    ``infer_finished``) on a registry of their own. Against the server CPU per call it
    bounds the metrics' share of it, whatever the load."""
    from prometheus_client import CollectorRegistry
    from synapse_server.telemetry import PrometheusMetrics

    metrics = PrometheusMetrics(CollectorRegistry(), process_metrics=False)
    method = "/synapse.plugin.v1.InferenceService/Infer"
    started = time.perf_counter()
    for _ in range(repeats):
        metrics.rpc_started(method)
        metrics.infer_finished("torch-serve", "7", "", 0.003)
        metrics.rpc_handled(method, "OK", 0.003)
    return (time.perf_counter() - started) / repeats * 1e6


def start_ray() -> str:
    """A local Ray owned by this process with Serve started; its GCS address."""
    import ray
    from ray import serve

    ray.init(address="local", include_dashboard=False, log_to_driver=False)
    serve.start(proxy_location="Disabled", logging_config={"enable_access_log": False})
    return str(ray.get_runtime_context().gcs_address)


def start_server(
    work: Path, name: str, gcs: str, extra_args: list[str], extra_env: dict[str, str]
) -> tuple[subprocess.Popen[bytes], str]:
    """``synapse serve`` on a free port with both plugin directories; (process, address)."""
    folder = work / name
    folder.mkdir()
    out, log = folder / "server.out", folder / "server.log"
    proc = subprocess.Popen(
        [
            str(ROOT / ".venv" / "bin" / "synapse"),
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            str(folder / "data"),
            "--plugin-dir",
            str(ROOT / "examples" / "plugins"),
            "--plugin-dir",
            str(EVENTS_PLUGIN),
            "--ray-address",
            gcs,
            "--log-level",
            "WARNING",
            *extra_args,
        ],
        stdout=out.open("wb"),
        stderr=log.open("wb"),
        env={**os.environ, "SYNAPSE_SERVER_SECRET": SECRET, **extra_env},
        cwd=ROOT,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        for line in out.read_text().splitlines():
            if line.startswith("synapse server listening on "):
                return proc, line.removeprefix("synapse server listening on ").strip()
        if proc.poll() is not None:
            raise RuntimeError(f"the {name} server exited: {log.read_text()[-2000:]}")
        time.sleep(0.1)
    stop_server(proc)
    raise RuntimeError(f"the {name} server did not start within 120 s")


def stop_server(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL after 30 s."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def deploy(client: Any, work: Path, name: str) -> int:
    """Register the example MLP and deploy torch-serve with it; the model id."""
    from examples.models import MLPConfig, build_model_dir

    model_dir = build_model_dir(work / f"model-{name}", MLPConfig(hidden=8, seed=7))
    archive = shutil.make_archive(str(work / f"model-{name}"), "zip", model_dir)
    model_id = int(client.register_model(archive, "bench-mlp", framework="torch").id)
    client.run_action(
        "torch-serve", "deployment", {"model": model_id, "num_cpus": 0}, mode="local"
    ).result(timeout=360)
    return model_id


def events_rate(client: Any, events: int, jobs: int = 1) -> float:
    """Events per second of a job logging ``events`` events, submission to result: the
    median of ``jobs`` jobs run one after the other."""
    rates = []
    for _ in range(jobs):
        started = time.perf_counter()
        result = client.run_action(
            "bench-events", "emit", {"count": events, "payload_bytes": 64}, mode="local"
        ).result(timeout=600)
        wall = time.perf_counter() - started
        if result.get("emitted") != events:
            raise RuntimeError(f"the job emitted {result!r}, expected {events}")
        rates.append(events / wall)
    return statistics.median(rates)


def shuffled(turn: int) -> tuple[str, ...]:
    """The configurations in the order of ``turn``: a shuffle seeded by the turn.

    Not a rotation: a rotation keeps the cycle, so each configuration always follows the same
    one, and the one after ``metrics+sampled`` (``off``) came out 4-6% faster than its
    identical control in two runs.
    """
    names = list(CONFIGS)
    random.Random(turn).shuffle(names)
    return tuple(names)


def measure_round(
    runner: Runner,
    args: argparse.Namespace,
    index: int,
) -> dict[str, dict[str, float]]:
    """One round's figures per configuration, measured in small interleaved blocks.

    The machine's load changes within seconds (other work shares it): blocks of
    ``--block`` calls and one job per configuration in turn, in a shuffled order, put every
    configuration under the same load, so the ratios compare like with like.
    """
    latencies: dict[str, list[float]] = {c: [] for c in CONFIGS}
    rates: dict[str, list[float]] = {c: [] for c in CONFIGS}
    blocks = max(1, -(-args.calls // args.block))
    for turn in range(blocks):
        for config in shuffled(index * 1000 + turn):
            client, model, scope = runner(config, turn)
            for _ in range(args.block):
                started = time.perf_counter()
                with scope():
                    client.infer(
                        plugin="torch-serve", action="inference", model=model, json=PAYLOAD
                    )
                latencies[config].append((time.perf_counter() - started) * 1000)
    for turn in range(args.jobs):
        for config in shuffled(index * 1000 + turn):
            client, _, scope = runner(config, turn)
            with scope():
                rates[config].append(events_rate(client, args.events))
    figures = {}
    for config in CONFIGS:
        samples = sorted(latencies[config])
        figures[config] = {
            "p50_ms": statistics.median(samples),
            "p99_ms": samples[min(len(samples) - 1, round(0.99 * len(samples)) - 1)],
            "events_per_s": statistics.median(rates[config]),
        }
    return figures


def main() -> int:
    """Run the benchmark; prints the table and writes JSON to bench/results/."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=300, help="sequential Infer calls")
    parser.add_argument(
        "--block", type=int, default=10, help="calls per configuration in each turn"
    )
    parser.add_argument("--events", type=int, default=5000, help="events of each job")
    parser.add_argument("--jobs", type=int, default=3, help="event jobs per configuration")
    parser.add_argument("--rounds", type=int, default=5, help="rounds; figures are medians")
    parser.add_argument(
        "--cpu-calls",
        type=int,
        default=500,
        help="sequential Infer calls per configuration and pass for the server CPU figure "
        "(0: skip it)",
    )
    parser.add_argument("--cpu-passes", type=int, default=3, help="passes of the CPU figure")
    parser.add_argument(
        "--cpu-events",
        type=int,
        default=20000,
        help="events of each job for the CPU per 1,000 events figure (0: skip it)",
    )
    parser.add_argument(
        "--cpu-jobs", type=int, default=3, help="jobs per configuration and instance for it"
    )
    parser.add_argument(
        "--instances", type=int, default=2, help="server processes of each kind (same flags)"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    import ray
    from opentelemetry.sdk.trace import TracerProvider
    from synapse_client import Client

    from tests._otlp import OtlpCollector

    work = Path(tempfile.mkdtemp(prefix="bench-telemetry-"))
    collector = OtlpCollector()
    procs: list[subprocess.Popen[bytes]] = []
    clients: list[Any] = []
    try:
        gcs = start_ray()
        tracing = {
            "OTEL_EXPORTER_OTLP_ENDPOINT": collector.endpoint,
            "OTEL_TRACES_SAMPLER": "parentbased_always_off",
            "OTEL_SERVICE_NAME": "synapse-bench",
        }
        flags: dict[str, tuple[list[str], dict[str, str]]] = {
            "off": ([], {}),
            "off_control": ([], {}),
            "metrics": (["--metrics-listen", "127.0.0.1:0"], {}),
            "tracing": ([], tracing),
            "on": (["--metrics-listen", "METRICS"], tracing),
        }
        # The ``on`` servers' metrics pages, scraped for the metrics-work figure.
        metrics_urls: list[str] = []
        servers: dict[str, list[tuple[Any, int]]] = {name: [] for name in flags}
        pids: dict[str, list[int]] = {name: [] for name in flags}
        for instance in range(args.instances):
            # Odd instances start in the reverse order: a server started earlier ran faster
            # (off, started first, beat the others by 3-14% of p50, tracing whose CPU per
            # call equals off's included), so every kind sits at every position once.
            kinds = list(flags.items())
            for name, (extra_args, extra_env) in kinds[:: -1 if instance % 2 else 1]:
                label = f"{name}-{instance}"
                if "METRICS" in extra_args:
                    port = free_port()
                    metrics_urls.append(f"http://127.0.0.1:{port}/metrics")
                    extra_args = [f"127.0.0.1:{port}" if a == "METRICS" else a for a in extra_args]
                proc, address = start_server(work, label, gcs, extra_args, extra_env)
                procs.append(proc)
                pids[name].append(proc.pid)
                client = Client(address, timeout=120)
                clients.append(client)
                servers[name].append((client, deploy(client, work, label)))
        # The caller's spans are sampled and never exported: only their context travels.
        caller = TracerProvider().get_tracer("bench")

        def sampled_span() -> Any:
            return caller.start_as_current_span("bench call")

        def runner(config: str, turn: int) -> tuple[Any, int, Callable[[], Any]]:
            server, sampled = CONFIGS[config]
            instances = servers[server]
            client, model = instances[turn % len(instances)]
            return client, model, sampled_span if sampled else contextlib.nullcontext

        # Warm every path of every instance (replica model load, channels, fork servers).
        for instance in range(args.instances):
            for config in CONFIGS:
                client, model, scope = runner(config, instance)
                with scope():
                    for _ in range(20):
                        client.infer(
                            plugin="torch-serve", action="inference", model=model, json=PAYLOAD
                        )
                    events_rate(client, 100)

        rounds: dict[str, list[dict[str, float]]] = {c: [] for c in CONFIGS}
        for index in range(args.rounds):
            rounds_figures = measure_round(runner, args, index)
            for config in CONFIGS:
                rounds[config].append(rounds_figures[config])
            collector.clear()
        report = _report(rounds, args)
        if args.cpu_calls > 0:
            cpu = measure_server_cpu(runner, pids, args.cpu_calls, args.cpu_passes)
            report["server_cpu_ms_per_call"] = cpu
            report["server_cpu_ratios"] = {c: cpu[c] / cpu["off"] for c in cpu if c != "off"}
            per_call_us = metrics_work_per_infer()
            report["metrics_work_per_infer"] = {
                "us": per_call_us,
                "share_of_off_server_cpu": per_call_us / 1000 / cpu["off"],
            }
        if args.cpu_events > 0:
            per_events, samples = measure_events_cpu(runner, pids, args.cpu_events, args.cpu_jobs)
            report["tree_cpu_ms_per_1000_events"] = per_events
            report["tree_cpu_ms_per_1000_events_samples"] = samples
            report["tree_cpu_events_ratios"] = {
                c: per_events[c] / per_events["off"] for c in per_events if c != "off"
            }
            work_figures = [
                metrics_work_per_events(client, url, args.cpu_events)
                for (client, _), url in zip(servers["on"], metrics_urls, strict=True)
            ]
            work_ms = statistics.median(f["ms_per_1000_events"] for f in work_figures)
            report["metrics_work_per_1000_events"] = {
                "instances": work_figures,
                "ms": work_ms,
                "share_of_off_tree_cpu": work_ms / per_events["off"],
            }
    finally:
        for client in clients:
            client.close()
        for proc in procs:
            stop_server(proc)
        with contextlib.suppress(Exception):
            ray.shutdown()
        collector.stop()
        shutil.rmtree(work, ignore_errors=True)
    _print(report)
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    (RESULTS_DIR / f"telemetry-{stamp}.json").write_text(json.dumps(report, indent=2))
    _verdict(report)
    return 0


def _verdict(report: dict[str, Any]) -> None:
    """The goal (metrics on, sampler off: at most 5% over off), measure by measure, each
    beside what two identical servers differed by in the same run."""
    paired = report["paired_ratios"]["metrics+sampler_off"]
    control = report["paired_ratios"]["off_control"]

    def line(measure: str, ratio: float, noise: float, within: bool) -> None:
        print(
            f"metrics + sampler off, {measure}: x{ratio:.3f} of off (identical control "
            f"x{noise:.3f}): within 5% {'yes' if within else 'NO'}"
        )

    line("Infer p50", paired["infer_p50"], control["infer_p50"], paired["infer_p50"] <= 1.05)
    line(
        "events/s (wall clock, load-bound)",
        paired["events_per_s"],
        control["events_per_s"],
        paired["events_per_s"] >= 0.95,
    )
    if "tree_cpu_events_ratios" in report:
        cpu = report["tree_cpu_events_ratios"]
        line(
            "CPU per event",
            cpu["metrics+sampler_off"],
            cpu["off_control"],
            cpu["metrics+sampler_off"] <= 1.05,
        )
    for key, share_key, what in (
        ("metrics_work_per_infer", "share_of_off_server_cpu", "per Infer call"),
        ("metrics_work_per_1000_events", "share_of_off_tree_cpu", "per event (upper bound)"),
    ):
        if key in report:
            share = report[key][share_key]
            print(
                f"metrics + sampler off, the metric calls' own cost {what}: {100 * share:.2f}% "
                f"of off's CPU for it: within 5% {'yes' if share <= 0.05 else 'NO'}"
            )


def _report(rounds: dict[str, list[dict[str, float]]], args: argparse.Namespace) -> dict[str, Any]:
    medians = {
        config: {key: statistics.median(r[key] for r in runs) for key in runs[0]}
        for config, runs in rounds.items()
    }
    off = medians["off"]
    ratios = {
        config: {
            "infer_p50": figures["p50_ms"] / off["p50_ms"],
            "infer_p99": figures["p99_ms"] / off["p99_ms"],
            "events_per_s": figures["events_per_s"] / off["events_per_s"],
        }
        for config, figures in medians.items()
        if config != "off"
    }
    # Each round's ratio against off measured beside it, then their median: the paired
    # figure, less moved by load that changed between rounds.
    paired = {
        config: {
            key: statistics.median(
                on[field] / base[field]
                for on, base in zip(rounds[config], rounds["off"], strict=True)
            )
            for key, field in (
                ("infer_p50", "p50_ms"),
                ("infer_p99", "p99_ms"),
                ("events_per_s", "events_per_s"),
            )
        }
        for config in rounds
        if config != "off"
    }
    return {
        "bench": "telemetry",
        "calls": args.calls,
        "events": args.events,
        "jobs": args.jobs,
        "rounds": args.rounds,
        "instances": args.instances,
        "cpus": os.cpu_count(),
        "medians": medians,
        "per_round": rounds,
        "ratios": ratios,
        "paired_ratios": paired,
        "load_average": os.getloadavg(),
    }


def _print(report: dict[str, Any]) -> None:
    print(f"{'config':<22}{'p50 ms':>10}{'p99 ms':>10}{'events/s':>12}{'p50 x':>9}{'ev/s x':>9}")
    for config, figures in report["medians"].items():
        ratio = report["ratios"].get(config, {"infer_p50": 1.0, "events_per_s": 1.0})
        print(
            f"{config:<22}{figures['p50_ms']:>10.2f}{figures['p99_ms']:>10.2f}"
            f"{figures['events_per_s']:>12.0f}{ratio['infer_p50']:>9.3f}"
            f"{ratio['events_per_s']:>9.3f}"
        )
    for config, paired in report["paired_ratios"].items():
        print(
            f"paired (median of per-round ratios) {config}: p50 x{paired['infer_p50']:.3f}, "
            f"p99 x{paired['infer_p99']:.3f}, events/s x{paired['events_per_s']:.3f}"
        )
    for config, ms in report.get("server_cpu_ms_per_call", {}).items():
        ratio = report["server_cpu_ratios"].get(config, 1.0)
        print(f"server CPU per Infer call {config}: {ms:.3f} ms (x{ratio:.3f} of off)")
    for config, ms in report.get("tree_cpu_ms_per_1000_events", {}).items():
        ratio = report["tree_cpu_events_ratios"].get(config, 1.0)
        print(f"server+worker CPU per 1,000 events {config}: {ms:.1f} ms (x{ratio:.3f} of off)")
    work = report.get("metrics_work_per_1000_events")
    if work is not None:
        first = work["instances"][0]
        print(
            f"metrics work per 1,000 events (timed in process): {work['ms']:.3f} ms, "
            f"{100 * work['share_of_off_tree_cpu']:.2f}% of off's CPU per 1,000 events "
            f"({first['rpcs_per_job']:.0f} RPCs and {first['events_stored_per_job']:.0f} "
            f"events per job; {first['us_per_rpc']:.1f} us per RPC, "
            f"{first['us_per_event_batch']:.1f} us per stored batch, counted once per event)"
        )
    print("load average at the end: " + ", ".join(f"{x:.2f}" for x in report["load_average"]))


if __name__ == "__main__":
    raise SystemExit(main())
