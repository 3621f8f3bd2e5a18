"""Where an Infer call's time goes: client → server → router → replica, stage by stage.

One run: the bench starts a local Ray with Serve's gRPC proxy, starts ``synapse serve`` (a
subprocess) connected to it, deploys the torch-serve example through its ``deployment``
action (as ``bench_infer.py`` does), and a plain gRPC echo server in a subprocess. It then
calls, with the paths taking turns call by call (so that each sees the same load on a shared
machine):

- ``client``: ``synapse_client.Client.infer`` (what a user calls);
- ``stub``: ``InferenceService/Infer`` with the same request through the generated stub: the
  server's whole path without the Python client's own work;
- ``router``: from this driver, the call the server's router makes for each Infer: a Serve
  handle bound as the server binds it (the replica's internal method, the signed model id,
  Serve's gRPC transport with pickle) with the same ``ServeRequest``; router and replica
  without our server;
- ``echo``: the same ``InferRequest`` to a bare grpc.aio server in another process that
  answers a fixed ``InferResponse``: one Python gRPC hop on loopback, nothing else;
- ``serve_proxy``: Serve's gRPC proxy to a plain deployment of the same model
  (``bench_infer.py``'s ``grpc`` path), the issue's baseline for ``Infer``.

Stages (p50 differences, same run): the client library = client - stub; the server's own
work beyond one gRPC hop and the router = stub - echo - router. The ratio stub/serve_proxy
is ``Infer``'s against Serve's proxy; router/serve_proxy is the least any design that calls
the replica through a Serve handle can reach.

Usage::

    nice -n 5 .venv/bin/python bench/bench_infer_stages.py [--calls 1000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

from bench_infer import (  # noqa: E402
    GRPC_APP,
    PAYLOAD_ROWS,
    SECRET,
    TENANT,
    Call,
    _check,
    _free_port,
    deploy_grpc_app,
    paired_latency,
    start_ray,
    start_server,
    stop_server,
)

ECHO_SERVER = """
import asyncio, sys
import grpc
from synapse.plugin.v1 import inference_service_pb2 as pb

ANSWER = pb.InferResponse.FromString(bytes.fromhex(sys.argv[2])).SerializeToString()

async def infer(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    pb.InferRequest.FromString(request)  # parsed, as a server does
    return ANSWER

async def main() -> None:
    server = grpc.aio.server()
    handler = grpc.method_handlers_generic_handler(
        "synapse.plugin.v1.InferenceService",
        {"Infer": grpc.unary_unary_rpc_method_handler(infer)},
    )
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port("127.0.0.1:" + sys.argv[1])
    await server.start()
    print("ready", flush=True)
    await server.wait_for_termination()

asyncio.run(main())
"""


def main() -> int:
    """Run the benchmark; prints the table and writes JSON to bench/results/."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=1000, help="calls of each path per round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds; figures are medians")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    import grpc
    import ray
    from ray import serve
    from synapse.plugin.v1 import inference_service_pb2, inference_service_pb2_grpc
    from synapse_client import Client
    from synapse_client.codec import value_to_python
    from synapse_sdk.serving import INFER_METHOD, ServeReply, ServeRequest
    from synapse_server.core.inference import ServeKeyring

    from examples.models import MLPConfig, build_model_dir, load_model_dir, reference_outputs

    tmp = Path(tempfile.mkdtemp(prefix="bench-stages-"))
    grpc_port = _free_port()
    proc: subprocess.Popen[bytes] | None = None
    echo: subprocess.Popen[bytes] | None = None
    try:
        gcs = start_ray(_free_port(), grpc_port)
        proc, address = start_server(tmp, gcs)
        client = Client(address, timeout=120)
        model_dir = build_model_dir(tmp / "model", MLPConfig(hidden=8, seed=7))
        archive = shutil.make_archive(str(tmp / "model"), "zip", model_dir)
        model_id = client.register_model(archive, "bench-mlp", framework="torch").id
        deployed = client.run_action(
            "torch-serve", "deployment", {"model": model_id, "num_cpus": 0}, mode="local"
        ).result(timeout=300)
        app_name = client.get_deployment(deployed["serve_application"]).name
        token = ServeKeyring(SECRET.encode()).model_id_for(TENANT, app_name, str(model_id))
        expected = reference_outputs(model_dir, [PAYLOAD_ROWS[0]["data"]])[0]

        def client_call() -> None:
            answer = client.infer(app_name, model=model_id, json={"inputs": PAYLOAD_ROWS})
            _check(answer.json, expected)

        channel = grpc.insecure_channel(address)
        stub = inference_service_pb2_grpc.InferenceServiceStub(channel)
        request = inference_service_pb2.InferRequest(application=app_name, model_id=str(model_id))
        request.json.struct_value.update({"inputs": PAYLOAD_ROWS})

        def stub_call() -> None:
            reply = stub.Infer(request, timeout=60)
            _check(value_to_python(reply.json), expected)

        # The handle as the server's router binds it (synapse_server.ray._serve).
        handle = serve.get_app_handle(app_name).options(
            method_name=INFER_METHOD,
            multiplexed_model_id=token,
            stream=False,
            _by_reference=False,
            request_serialization="pickle",
            response_serialization="pickle",
        )
        serve_request = ServeRequest(
            method="POST",
            path="/",
            json={"inputs": PAYLOAD_ROWS},
            has_json=True,
            request_id="bench",
        )

        def router_call() -> None:
            reply = ServeReply.from_wire(handle.remote(serve_request.to_wire()).result())
            _check(reply.json, expected)

        answer = stub.Infer(request, timeout=60)
        echo_port = _free_port()
        echo = subprocess.Popen(
            [sys.executable, "-c", ECHO_SERVER, str(echo_port), answer.SerializeToString().hex()],
            stdout=subprocess.PIPE,
        )
        assert echo.stdout is not None
        if echo.stdout.readline().strip() != b"ready":
            raise RuntimeError("the echo server did not start")
        echo_channel = grpc.insecure_channel(f"127.0.0.1:{echo_port}")
        echo_stub = inference_service_pb2_grpc.InferenceServiceStub(echo_channel)

        def echo_call() -> None:
            reply = echo_stub.Infer(request, timeout=60)
            _check(value_to_python(reply.json), expected)

        deploy_grpc_app(load_model_dir(model_dir))
        proxy_channel = grpc.insecure_channel(f"127.0.0.1:{grpc_port}")
        proxy_stub = inference_service_pb2_grpc.InferenceServiceStub(proxy_channel)
        proxy_request = inference_service_pb2.InferRequest()
        proxy_request.json.struct_value.update({"inputs": PAYLOAD_ROWS})

        def proxy_call() -> None:
            reply = proxy_stub.Infer(
                proxy_request, metadata=(("application", GRPC_APP),), timeout=60
            )
            _check(value_to_python(reply.json), expected)

        paths: dict[str, Call] = {
            "client": client_call,
            "stub": stub_call,
            "router": router_call,
            "echo": echo_call,
            "serve_proxy": proxy_call,
        }
        for call in paths.values():
            for _ in range(50):  # model loaded, connections and handles warm
                call()
        per_round = []
        for round_index in range(max(1, args.rounds)):
            per_round.append(paired_latency(paths, args.calls))
            print(f"round {round_index + 1} done", file=sys.stderr, flush=True)
        client.close()
        for open_channel in (channel, echo_channel, proxy_channel):
            open_channel.close()
    finally:
        if echo is not None:
            echo.kill()
            echo.wait(timeout=10)
        if proc is not None:
            stop_server(proc)
        if ray.is_initialized():
            try:
                serve.shutdown()
            finally:
                ray.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)

    p50 = {name: statistics.median(r[name]["p50_ms"] for r in per_round) for name in paths}
    p99 = {name: statistics.median(r[name]["p99_ms"] for r in per_round) for name in paths}
    stages = {
        "client library (client - stub)": p50["client"] - p50["stub"],
        "one gRPC hop (echo)": p50["echo"],
        "server's own work (stub - echo - router)": p50["stub"] - p50["echo"] - p50["router"],
        "router and replica (router)": p50["router"],
    }
    ratios = {
        "stub/serve_proxy": p50["stub"] / p50["serve_proxy"],
        "client/serve_proxy": p50["client"] / p50["serve_proxy"],
        "router/serve_proxy": p50["router"] / p50["serve_proxy"],
        "echo/serve_proxy": p50["echo"] / p50["serve_proxy"],
    }
    print(f"{'path':12} {'p50 ms':>8} {'p99 ms':>8}")
    for name in paths:
        print(f"{name:12} {p50[name]:8.3f} {p99[name]:8.3f}")
    print("stages of an Infer call (p50, ms):")
    for key, value in stages.items():
        print(f"  {key}: {value:.3f}")
    print("ratios of p50 against Serve's gRPC proxy:")
    for key, value in ratios.items():
        print(f"  {key}: {value:.2f}")
    report = {
        "bench": "infer_stages",
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "cpus": os.cpu_count(),
        "load_average": os.getloadavg(),
        "calls": args.calls,
        "per_round": per_round,
        "p50_ms": p50,
        "p99_ms": p99,
        "stages_ms": stages,
        "ratios": ratios,
    }
    out_dir = ROOT / "bench" / "results"
    out_dir.mkdir(exist_ok=True)
    out = out_dir / f"bench_infer_stages-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.json"
    out.write_text(json.dumps(report, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
