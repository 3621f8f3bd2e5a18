"""Open Inference Protocol ``ModelInfer`` against the platform's own ``Infer``, same replica.

One run: the bench starts a local Ray, starts ``synapse serve`` (a subprocess) connected to
it, registers the example MLP, deploys the tensor-serve example (an endpoint on binary
tensors) through its ``deployment`` action, and then calls that one replica and model two ways
over the same server port:

- ``infer``: ``synapse_client.Client.infer`` with the input as a binary tensor (one shared
  channel; threads for concurrency);
- ``oip``: ``inference.GRPCInferenceService/ModelInfer`` through the third-party
  ``open-inference-grpc`` stubs, the input as ``raw_input_contents`` (FP32, as tritonclient
  sends it), model name = the serve application, version = the model id; one shared channel;
- ``infer_stub``: ``InferenceService/Infer`` with the same tensor through the generated stub
  on that same channel, so that the Python client's own work is not counted as the
  protocol's (``oip/infer_stub`` compares the two server paths alone).

Every answer is checked against the model's reference outputs. Figures: p50/p99 latency at
concurrency 1 (the three paths take turns call by call, so that each sees the same load: on a
shared machine, paths measured one after the other compared the load more than the paths)
and calls per second at 8 and 32, and the ratios of oip to each native path
(latency: above 1 means OIP is slower; throughput: native/oip, above 1 means OIP is
slower). The goal for the OIP translation is a p50 ratio of at most 1.1. ``--rounds N``
interleaves the paths in a rotated order each round and reports each figure's median over
the rounds.

Usage::

    .venv/bin/python bench/bench_oip.py [--calls 1000] [--seconds 5] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

# The same server start, timing and medians as the Infer bench, so the figures compare.
from bench_infer import (  # noqa: E402
    Call,
    _free_port,
    _median_figures,
    paired_latency,
    start_ray,
    start_server,
    stop_server,
    throughput,
)

ROWS = [[1.0, 2.0, 3.0]]
#: A p50 ratio oip/infer at or below this meets the goal.
P50_GOAL = 1.1


def _check(got: list[float], expected: list[float]) -> None:
    same = len(got) == len(expected) and all(
        abs(a - b) <= 1e-5 for a, b in zip(got, expected, strict=True)
    )
    if not same:
        raise RuntimeError(f"wrong answer {got} (expected {expected})")


def main() -> int:
    """Run the benchmark; prints the table and writes JSON to bench/results/."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=1000, help="sequential calls for latency")
    parser.add_argument("--seconds", type=float, default=5.0, help="per throughput figure")
    parser.add_argument("--max-calls", type=int, default=2000, help="cap per throughput figure")
    parser.add_argument(
        "--rounds", type=int, default=1, help="interleaved rounds; figures are their medians"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    import grpc
    import numpy as np
    import ray
    from open_inference.grpc import protocol
    from open_inference.grpc.service import GRPCInferenceServiceStub
    from ray import serve
    from synapse_client import Client

    from examples.models import MLPConfig, build_model_dir, reference_outputs

    tmp = Path(tempfile.mkdtemp(prefix="bench-oip-"))
    proc: subprocess.Popen[bytes] | None = None
    try:
        gcs = start_ray(_free_port(), _free_port())
        proc, address = start_server(tmp, gcs)
        client = Client(address, timeout=120)
        model_dir = build_model_dir(tmp / "model", MLPConfig(hidden=8, seed=7))
        archive = shutil.make_archive(str(tmp / "model"), "zip", model_dir)
        model_id = client.register_model(archive, "bench-mlp", framework="torch").id
        deployed = client.run_action(
            "tensor-serve", "deployment", {"model": model_id, "num_cpus": 0}, mode="local"
        ).result(timeout=300)
        app_name = client.get_deployment(deployed["serve_application"]).name
        expected = [float(v) for v in reference_outputs(model_dir, ROWS)[0]]
        tensor = np.asarray(ROWS, dtype=np.float32)

        def infer_call() -> None:
            answer = client.infer(app_name, model=model_id, tensors={"input": tensor}, timeout=60)
            _check([float(v) for v in np.asarray(answer.tensors["output"]).ravel()], expected)

        channel = grpc.insecure_channel(address)
        stub = GRPCInferenceServiceStub(channel)
        oip_request = protocol.ModelInferRequest(
            model_name=app_name,
            model_version=str(model_id),
            inputs=[
                protocol.ModelInferRequest.InferInputTensor(
                    name="input", datatype="FP32", shape=list(tensor.shape)
                )
            ],
            raw_input_contents=[tensor.tobytes()],
        )

        def oip_call() -> None:
            reply = stub.ModelInfer(oip_request, timeout=60)
            data = reply.raw_output_contents[0]
            _check(list(struct.unpack(f"<{len(data) // 4}f", data)), expected)

        from synapse.plugin.v1 import inference_service_pb2, inference_service_pb2_grpc, tensor_pb2

        native_stub = inference_service_pb2_grpc.InferenceServiceStub(channel)
        native_request = inference_service_pb2.InferRequest(
            application=app_name, model_id=str(model_id)
        )
        native_request.inputs.add(
            name="input",
            dtype=tensor_pb2.DATA_TYPE_FLOAT32,
            shape=list(tensor.shape),
            data=tensor.tobytes(),
        )

        def infer_stub_call() -> None:
            reply = native_stub.Infer(native_request, timeout=60)
            data = reply.outputs[0].data
            _check(list(struct.unpack(f"<{len(data) // 4}f", data)), expected)

        paths: dict[str, Call] = {
            "infer": infer_call,
            "infer_stub": infer_stub_call,
            "oip": oip_call,
        }
        names = list(paths)
        per_round: list[dict[str, dict[str, Any]]] = []
        for round_index in range(max(1, args.rounds)):
            shift = round_index % len(names)
            measured: dict[str, dict[str, Any]] = {}
            for call in paths.values():
                for _ in range(20):  # model loaded, connections warm
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

    oip = results["oip"]
    ratios = {}
    for baseline in ("infer", "infer_stub"):
        ours = results[baseline]
        ratios[f"oip/{baseline}"] = {
            "p50": oip["latency_c1"]["p50_ms"] / ours["latency_c1"]["p50_ms"],
            "p99": oip["latency_c1"]["p99_ms"] / ours["latency_c1"]["p99_ms"],
            "c8_slowdown": ours["throughput_c8"]["calls_per_s"]
            / oip["throughput_c8"]["calls_per_s"],
            "c32_slowdown": ours["throughput_c32"]["calls_per_s"]
            / oip["throughput_c32"]["calls_per_s"],
        }
    print(f"{'path':10} {'p50 ms':>8} {'p99 ms':>8} {'c8 /s':>8} {'c32 /s':>8}")
    for name, fig in results.items():
        c1, c8, c32 = fig["latency_c1"], fig["throughput_c8"], fig["throughput_c32"]
        print(
            f"{name:10} {c1['p50_ms']:8.2f} {c1['p99_ms']:8.2f} "
            f"{c8['calls_per_s']:8.1f} {c32['calls_per_s']:8.1f}"
        )
    print("ratios (>1 means OIP is slower on that figure):")
    for key, values in ratios.items():
        verdict = "meets" if values["p50"] <= P50_GOAL else "misses"
        print(
            f"  {key}: "
            + ", ".join(f"{k} {v:.2f}" for k, v in values.items())
            + f"; p50 {verdict} the goal of <= {P50_GOAL}"
        )
    report = {
        "bench": "oip",
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "cpus": os.cpu_count(),
        "calls": args.calls,
        "seconds": args.seconds,
        "rounds": len(per_round),
        "per_round": per_round,
        "results": results,
        "ratios": ratios,
        "p50_goal": P50_GOAL,
    }
    out_dir = ROOT / "bench" / "results"
    out_dir.mkdir(exist_ok=True)
    out = out_dir / f"bench_oip-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.json"
    out.write_text(json.dumps(report, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
