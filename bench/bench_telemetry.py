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
telemetry itself costs the server where the latency ratios are within their noise.

    nice -n 5 .venv/bin/python bench/bench_telemetry.py [--calls 300] [--block 10]
        [--events 5000] [--jobs 3] [--rounds 5]

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
        metrics = ["--metrics-listen", "127.0.0.1:0"]
        flags: dict[str, tuple[list[str], dict[str, str]]] = {
            "off": ([], {}),
            "off_control": ([], {}),
            "metrics": (metrics, {}),
            "tracing": ([], tracing),
            "on": (metrics, tracing),
        }
        servers: dict[str, list[tuple[Any, int]]] = {name: [] for name in flags}
        pids: dict[str, list[int]] = {name: [] for name in flags}
        for instance in range(args.instances):
            # Odd instances start in the reverse order: a server started earlier ran faster
            # (off, started first, beat the others by 3-14% of p50, tracing whose CPU per
            # call equals off's included), so every kind sits at every position once.
            kinds = list(flags.items())
            for name, (extra_args, extra_env) in kinds[:: -1 if instance % 2 else 1]:
                label = f"{name}-{instance}"
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
    paired = report["paired_ratios"]["metrics+sampler_off"]
    within = paired["infer_p50"] <= 1.05 and paired["events_per_s"] >= 0.95
    print(f"metrics with the sampler off within 5% of off: {'yes' if within else 'NO'}")
    return 0


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
    print("load average at the end: " + ", ".join(f"{x:.2f}" for x in report["load_average"]))


if __name__ == "__main__":
    raise SystemExit(main())
