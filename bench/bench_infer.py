"""Infer latency and throughput against Ray Serve's own ways in, on one deployed model.

One run: the bench starts a local Ray with Serve's HTTP proxy on, starts ``synapse serve``
(a subprocess) connected to that Ray, registers the example MLP, deploys the torch-serve
example through the ``deployment`` action, and then calls the same replica four ways:

- ``synapse``: ``synapse_client.Client.infer`` (one shared channel; threads for concurrency);
- ``http``: Serve's HTTP proxy with a new connection per call (the reference SDK's
  ``infer_remote``), header ``serve_multiplexed_model_id`` set to a signed model id;
- ``grpc``: Serve's gRPC proxy with the platform's own ``InferenceService`` proto as the user
  service, to a plain Serve deployment of the same model doing the same
  computation (the proxy calls a method named after the RPC with the protobuf request, which
  the FastAPI ingress of the reference example does not have); one shared channel;
- ``handle``: a ``DeploymentHandle`` from this driver, ``.infer.remote(inputs=...)``, with
  Serve's default options (Ray actor calls to the replica): the issue's baseline (c);
- ``handle_grpc``: the same handle with the options our server's router uses by default
  (``_by_reference=False``, plain pickle: Serve's gRPC channel to the replica). Reported so
  that the gain of that transport is not mistaken for a gain of our own code.

Figures: p50/p99 latency at concurrency 1, calls per second at concurrency 8 and 32, and the
ratios synapse/other (latency: lower is better; throughput: higher is better). Latency is
measured with the paths taking turns call by call (``paired_latency``), so that every path
sees the same load: on a shared machine, paths measured one after the other compared the load
of the moment more than the paths.

With ``--rounds N`` every path is measured N times, the paths interleaved in a rotated order
each round, and each figure is the median over the rounds: on a machine shared with other
work, load that comes and goes then lands on all paths alike instead of on whichever path was
being measured at the time. ``--rounds 1`` (the default) is the single pass.
Usage::

    .venv/bin/python bench/bench_infer.py [--calls 1000] [--seconds 5] [--rounds 1]
"""

from __future__ import annotations

import argparse
import http.client
import json
import logging
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

logger = logging.getLogger(__name__)

SECRET = "bench-infer-secret-0123456789abcdef"
TENANT = "default"  # the tenant of a server without tokens
ROUTE = "bench-infer"
PAYLOAD_ROWS = [{"data": [1.0, 2.0, 3.0]}]
GRPC_APP = "bench-infer-grpc"
GRPC_SERVICER = (
    "synapse.plugin.v1.inference_service_pb2_grpc.add_InferenceServiceServicer_to_server"
)
GRPC_NOTE = (
    "Serve's gRPC proxy needs a deployment with a method named after the RPC taking the "
    "protobuf request; measured against a plain Serve deployment of the same torch model "
    "(same computation, no multiplexing), not the FastAPI ingress deployed by the platform"
)

Call = Callable[[], None]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_ray(http_port: int, grpc_port: int) -> str:
    """A local Ray owned by this process, Serve started with its HTTP proxy on ``http_port``
    and its gRPC proxy (serving ``InferenceService``) on ``grpc_port``."""
    import ray
    from ray import serve

    ray.init(address="local", include_dashboard=False, log_to_driver=False)
    serve.start(
        proxy_location="HeadOnly",
        http_options={"host": "127.0.0.1", "port": http_port},
        grpc_options={"port": grpc_port, "grpc_servicer_functions": [GRPC_SERVICER]},
        logging_config={"enable_access_log": False},
    )
    return str(ray.get_runtime_context().gcs_address)


def start_server(
    data_dir: Path,
    gcs_address: str | None,
    plugin_dir: Path = ROOT / "examples" / "plugins",
    serve_transport: str | None = None,
) -> tuple[subprocess.Popen[bytes], str]:
    """``synapse serve`` on a free port, connected to this bench's Ray (None: the server
    starts a local Ray only when something needs it), with the plugins of ``plugin_dir``
    (and ``--serve-transport`` when given); returns (proc, address)."""
    env = {
        **os.environ,
        "SYNAPSE_SERVER_SECRET": SECRET,
        # The deployment's HTTP route prefix (None would leave it off Serve's HTTP proxy).
        "SYNAPSE_PLUGIN_RELEASE_CHECKSUM": ROUTE,
    }
    out = data_dir / "server.out"
    log = data_dir / "server.log"
    proc = subprocess.Popen(
        [
            str(ROOT / ".venv" / "bin" / "synapse"),
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            str(data_dir / "data"),
            "--plugin-dir",
            str(plugin_dir),
            *(["--ray-address", gcs_address] if gcs_address else []),
            *(["--serve-transport", serve_transport] if serve_transport else []),
        ],
        stdout=out.open("wb"),
        stderr=log.open("wb"),
        env=env,
        cwd=ROOT,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        for line in out.read_text().splitlines():
            if line.startswith("synapse server listening on "):
                return proc, line.removeprefix("synapse server listening on ").strip()
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited: {log.read_text()[-2000:]}")
        time.sleep(0.1)
    stop_server(proc)
    raise RuntimeError("the server did not start within 120 s")


def deploy_grpc_app(model: Any) -> None:
    """A plain Serve deployment answering ``InferenceService.Infer`` with ``model``.

    ``model`` is the loaded torch module; Ray pickles it into the replica (its class, local to
    ``examples.models``' builder, travels by value), so the replica needs no model file.
    """
    from ray import serve

    # max_ongoing_requests as in the torch-serve example's config.yaml, so both replicas queue
    # the same way under load.
    @serve.deployment(
        name="GrpcTorchInference", ray_actor_options={"num_cpus": 0}, max_ongoing_requests=64
    )
    class GrpcTorchInference:
        def __init__(self, model: Any) -> None:
            self._model = model.eval()

        async def Infer(self, request: Any) -> Any:  # noqa: N802  (the RPC's name)
            import torch
            from google.protobuf import json_format
            from synapse.plugin.v1 import inference_service_pb2

            body = json_format.MessageToDict(request.json)
            rows = []
            for inp in body["inputs"]:
                with torch.no_grad():
                    rows.append({"prediction": self._model(torch.tensor(inp["data"])).tolist()})
            response = inference_service_pb2.InferResponse(application=GRPC_APP)
            response.json.list_value.extend(rows)
            return response

    deployment: Any = GrpcTorchInference  # a serve.Deployment (the decorator is untyped)
    serve.run(
        deployment.bind(model),
        name=GRPC_APP,
        route_prefix=f"/{GRPC_APP}",
    )


def stop_server(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL after 30 s."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def latency(call: Call, calls: int) -> dict[str, float]:
    """p50/p99/mean in milliseconds of ``calls`` sequential calls."""
    samples = []
    for _ in range(calls):
        started = time.perf_counter()
        call()
        samples.append((time.perf_counter() - started) * 1000)
    samples.sort()
    return {
        "p50_ms": statistics.median(samples),
        "p99_ms": samples[min(len(samples) - 1, round(0.99 * len(samples)) - 1)],
        "mean_ms": statistics.fmean(samples),
        "calls": float(calls),
    }


def paired_latency(calls: dict[str, Call], rounds: int) -> dict[str, dict[str, float]]:
    """p50/p99/mean in milliseconds of each path, the paths called in turn: ``rounds`` times
    one call of each, in a rotated order.

    On a shared machine, load comes and goes within seconds: measured one after the other,
    two paths see different load, and their ratio says more about the load than about them.
    Taking turns call by call, every path sees the same load, so the ratio of their p50s is
    steady even when the absolute figures are not.
    """
    names = list(calls)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for index in range(rounds):
        shift = index % len(names)
        for name in names[shift:] + names[:shift]:
            started = time.perf_counter()
            calls[name]()
            samples[name].append((time.perf_counter() - started) * 1000)
    figures = {}
    for name, values in samples.items():
        values.sort()
        figures[name] = {
            "p50_ms": statistics.median(values),
            "p99_ms": values[min(len(values) - 1, round(0.99 * len(values)) - 1)],
            "mean_ms": statistics.fmean(values),
            "calls": float(len(values)),
        }
    return figures


def throughput(call: Call, concurrency: int, seconds: float, max_calls: int) -> dict[str, float]:
    """Calls per second of ``concurrency`` threads calling for ``seconds`` (or ``max_calls``)."""
    done = [0] * concurrency
    errors: list[BaseException] = []
    stop_at = time.perf_counter() + seconds
    budget = threading.Semaphore(max_calls)

    def worker(index: int) -> None:
        try:
            while time.perf_counter() < stop_at and budget.acquire(blocking=False):
                call()
                done[index] += 1
        except BaseException as exc:  # reported after the join, never swallowed
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(concurrency)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    if errors:
        raise RuntimeError(f"{len(errors)} call(s) failed: {errors[0]!r}") from errors[0]
    return {"calls_per_s": sum(done) / wall, "calls": float(sum(done)), "wall_s": wall}


def _check(rows: Any, expected: list[float]) -> None:
    got = rows[0]["prediction"]
    same = len(got) == len(expected) and all(
        abs(a - b) <= 1e-5 for a, b in zip(got, expected, strict=True)
    )
    if not same:
        raise RuntimeError(f"wrong answer {got} (expected {expected})")


def _median_figures(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Each figure of one path as its median over the rounds."""
    return {
        figure: {
            key: statistics.median(r[figure][key] for r in rounds) for key in rounds[0][figure]
        }
        for figure in rounds[0]
    }


def main() -> int:
    """Run the benchmark; prints the table and writes JSON to bench/results/."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    # 1000: p99 is then the 10th-slowest call, not the 2nd, and one hiccup no longer sets it.
    parser.add_argument("--calls", type=int, default=1000, help="sequential calls for latency")
    parser.add_argument("--seconds", type=float, default=5.0, help="per throughput figure")
    parser.add_argument("--max-calls", type=int, default=2000, help="cap per throughput figure")
    parser.add_argument(
        "--rounds", type=int, default=1, help="interleaved rounds; figures are their medians"
    )
    parser.add_argument(
        "--serve-transport",
        choices=("direct", "grpc", "ray"),
        default=None,
        help="the server's --serve-transport (default: the server's default, direct)",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    import ray
    from ray import serve
    from synapse_client import Client
    from synapse_server.core.inference import ServeKeyring

    from examples.models import MLPConfig, build_model_dir, load_model_dir, reference_outputs

    tmp = Path(tempfile.mkdtemp(prefix="bench-infer-"))
    http_port, grpc_port = _free_port(), _free_port()
    proc: subprocess.Popen[bytes] | None = None
    try:
        gcs = start_ray(http_port, grpc_port)
        proc, address = start_server(tmp, gcs, serve_transport=args.serve_transport)
        client = Client(address, timeout=120)
        model_dir = build_model_dir(tmp / "model", MLPConfig(hidden=8, seed=7))
        archive = shutil.make_archive(str(tmp / "model"), "zip", model_dir)
        model_id = client.register_model(archive, "bench-mlp", framework="torch").id
        deployed = client.run_action(
            "torch-serve", "deployment", {"model": model_id, "num_cpus": 0}, mode="local"
        ).result(timeout=300)
        record = client.get_deployment(deployed["serve_application"])
        app_name, prefix = record.name, record.route_prefix
        if not prefix:
            raise RuntimeError("the deployment has no HTTP route prefix: path (a) cannot run")
        token = ServeKeyring(SECRET.encode()).model_id_for(TENANT, app_name, str(model_id))
        expected = reference_outputs(model_dir, [PAYLOAD_ROWS[0]["data"]])[0]
        body = json.dumps(PAYLOAD_ROWS).encode()

        def synapse_call() -> None:
            answer = client.infer(
                plugin="torch-serve",
                action="inference",
                model=model_id,
                json={"inputs": PAYLOAD_ROWS},
                timeout=60,
            )
            _check(answer.json, expected)

        def http_call() -> None:
            conn = http.client.HTTPConnection("127.0.0.1", http_port, timeout=60)
            try:
                conn.request(
                    "POST",
                    f"{prefix.rstrip('/')}/",
                    body=body,
                    headers={
                        "Content-Type": "application/json",
                        "serve_multiplexed_model_id": token,
                    },
                )
                response = conn.getresponse()
                data = response.read()
                if response.status != 200:
                    raise RuntimeError(f"HTTP {response.status}: {data[:300]!r}")
                _check(json.loads(data), expected)
            finally:
                conn.close()

        handle = serve.get_app_handle(app_name).options(multiplexed_model_id=token)

        def handle_call() -> None:
            _check(handle.infer.remote(inputs=PAYLOAD_ROWS).result(timeout_s=60), expected)

        handle_grpc = handle.options(
            _by_reference=False, request_serialization="pickle", response_serialization="pickle"
        )

        def handle_grpc_call() -> None:
            _check(handle_grpc.infer.remote(inputs=PAYLOAD_ROWS).result(timeout_s=60), expected)

        import grpc
        from google.protobuf import json_format
        from synapse.plugin.v1 import inference_service_pb2, inference_service_pb2_grpc

        deploy_grpc_app(load_model_dir(model_dir))
        channel = grpc.insecure_channel(f"127.0.0.1:{grpc_port}")
        stub = inference_service_pb2_grpc.InferenceServiceStub(channel)
        grpc_request = inference_service_pb2.InferRequest()
        grpc_request.json.struct_value.update({"inputs": PAYLOAD_ROWS})
        grpc_metadata = (("application", GRPC_APP),)

        def grpc_call() -> None:
            reply = stub.Infer(grpc_request, metadata=grpc_metadata, timeout=60)
            _check(json_format.MessageToDict(reply.json), expected)

        paths: dict[str, Call] = {
            "synapse": synapse_call,
            "http": http_call,
            "grpc": grpc_call,
            "handle": handle_call,
            "handle_grpc": handle_grpc_call,
        }
        names = list(paths)
        per_round: list[dict[str, dict[str, Any]]] = []
        for round_index in range(max(1, args.rounds)):
            shift = round_index % len(names)
            measured: dict[str, dict[str, Any]] = {}
            for call in paths.values():
                for _ in range(20):  # model loaded, connections and handles warm
                    call()
            # Latency with the paths taking turns call by call: the same load for each.
            paired = paired_latency(paths, args.calls)
            for name in names[shift:] + names[:shift]:
                call = paths[name]
                figures: dict[str, Any] = {"latency_c1": paired[name]}
                for concurrency in (8, 32):
                    figures[f"throughput_c{concurrency}"] = throughput(
                        call, concurrency, args.seconds, args.max_calls
                    )
                measured[name] = figures
                print(f"measured {name} (round {round_index + 1})", file=sys.stderr, flush=True)
            per_round.append(measured)
        results = {name: _median_figures([r[name] for r in per_round]) for name in names}
        client.close()
        channel.close()
    finally:
        if proc is not None:
            stop_server(proc)
        if ray.is_initialized():
            try:
                serve.shutdown()
            finally:
                ray.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)

    ratios: dict[str, dict[str, float]] = {}
    ours = results["synapse"]
    for other in ("http", "grpc", "handle", "handle_grpc"):
        theirs = results[other]
        ratios[f"synapse/{other}"] = {
            "p50": ours["latency_c1"]["p50_ms"] / theirs["latency_c1"]["p50_ms"],
            "p99": ours["latency_c1"]["p99_ms"] / theirs["latency_c1"]["p99_ms"],
            # Throughput ratio as other/ours so that, like latency, above 1 means we are slower.
            "c8_slowdown": theirs["throughput_c8"]["calls_per_s"]
            / ours["throughput_c8"]["calls_per_s"],
            "c32_slowdown": theirs["throughput_c32"]["calls_per_s"]
            / ours["throughput_c32"]["calls_per_s"],
        }
    print(f"{'path':11} {'p50 ms':>8} {'p99 ms':>8} {'c8 /s':>8} {'c32 /s':>8}")
    for name, fig in results.items():
        c1, c8, c32 = fig["latency_c1"], fig["throughput_c8"], fig["throughput_c32"]
        print(
            f"{name:11} {c1['p50_ms']:8.2f} {c1['p99_ms']:8.2f} "
            f"{c8['calls_per_s']:8.1f} {c32['calls_per_s']:8.1f}"
        )
    print("grpc: " + GRPC_NOTE)
    print("ratios (synapse vs other; >1 means synapse is slower on that figure):")
    for key, values in ratios.items():
        print(f"  {key}: " + ", ".join(f"{k} {v:.2f}" for k, v in values.items()))
    report = {
        "bench": "infer",
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "cpus": os.cpu_count(),
        "calls": args.calls,
        "seconds": args.seconds,
        "rounds": len(per_round),
        "per_round": per_round,
        "results": results,
        "ratios": ratios,
        "grpc": {"measured": True, "note": GRPC_NOTE},
    }
    out_dir = ROOT / "bench" / "results"
    out_dir.mkdir(exist_ok=True)
    out = out_dir / f"bench_infer-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.json"
    out.write_text(json.dumps(report, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
