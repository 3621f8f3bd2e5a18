"""The server's interceptor chain: what it adds to each RPC.

Two measurements, each against the same call without the chain, in the same run:

* **in process**, per call: the chain's interception (each interceptor's ``start_call``, the
  handler re-wrap), the guarded deserializer and the re-wrapped handler around a trivial
  handler, against deserializing and calling that handler directly; for a unary and a
  server-streaming (2 messages) handler, with the platform's chain (authentication with a
  bearer token, the request guard) and with one more interceptor whose scope enters and exits
  (what a metrics or access-log interceptor costs at least);
* **loopback**: sequential unary calls from a grpc.aio client to a grpc.aio server in the same
  process, through the platform's server assembly (``GrpcServer``: chain, health, reflection)
  and through a bare grpc.aio server with the same servicer. Rounds alternate the two.

    .venv/bin/python bench/bench_interceptors.py [--calls 20000] [--rpcs 2000] [--rounds 5]

Prints a table and writes JSON to bench/results/.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
from synapse.plugin.v1 import model_pb2, model_service_pb2, model_service_pb2_grpc

RESULTS_DIR = Path(__file__).resolve().parent / "results"
TOKEN = "bench-token-0123456789"
METADATA = (("authorization", f"Bearer {TOKEN}"),)
GET_MODEL = "/synapse.plugin.v1.ModelService/GetModel"
DOWNLOAD_MODEL = "/synapse.plugin.v1.ModelService/DownloadModel"


class _Details:
    __slots__ = ("invocation_metadata", "method")

    def __init__(self, method: str) -> None:
        self.method = method
        self.invocation_metadata = METADATA


class _Context:
    """Never used on the measured path (no call is refused); present for the handlers."""

    def set_code(self, code: Any) -> None:
        raise AssertionError("a measured call was refused")


async def _get_model(request: Any, context: Any) -> Any:
    return model_service_pb2.GetModelResponse(model=model_pb2.Model(id=request.model_id))


async def _download_model(request: Any, context: Any) -> AsyncIterator[Any]:
    yield model_service_pb2.DownloadModelResponse(chunk=b"x")
    yield model_service_pb2.DownloadModelResponse(chunk=b"y")


HANDLERS: dict[str, tuple[str, grpc.RpcMethodHandler]] = {
    "unary": (
        GET_MODEL,
        grpc.unary_unary_rpc_method_handler(
            _get_model,
            model_service_pb2.GetModelRequest.FromString,
            model_service_pb2.GetModelResponse.SerializeToString,
        ),
    ),
    "server-stream": (
        DOWNLOAD_MODEL,
        grpc.unary_stream_rpc_method_handler(
            _download_model,
            model_service_pb2.DownloadModelRequest.FromString,
            model_service_pb2.DownloadModelResponse.SerializeToString,
        ),
    ),
}


async def _call(handler: grpc.RpcMethodHandler, raw: bytes, context: Any) -> None:
    request = handler.request_deserializer(raw)
    if handler.unary_unary is not None:
        await handler.unary_unary(request, context)
    else:
        async for _ in handler.unary_stream(request, context):
            pass


async def per_call_seconds(
    interceptor: grpc.aio.ServerInterceptor | None, shape: str, calls: int
) -> float:
    """Seconds per call of the ``shape`` handler, intercepted by ``interceptor`` (or not)."""
    method, handler = HANDLERS[shape]
    raw = model_service_pb2.GetModelRequest(model_id=7).SerializeToString()
    details = _Details(method)
    context = _Context()

    async def continuation(_details: Any) -> grpc.RpcMethodHandler:
        return handler

    start = time.perf_counter()
    if interceptor is None:
        for _ in range(calls):
            await continuation(details)
            await _call(handler, raw, context)
    else:
        for _ in range(calls):
            wrapped = await interceptor.intercept_service(continuation, details)  # type: ignore[arg-type]
            await _call(wrapped, raw, context)
    return (time.perf_counter() - start) / calls


def _interceptors() -> dict[str, Callable[[], grpc.aio.ServerInterceptor | None]]:
    from synapse_server.core._credentials import WorkerCredentialIssuer
    from synapse_server.grpc._auth import AuthInterceptor
    from synapse_server.grpc._interceptors import CallInterceptor, InterceptorChain
    from synapse_server.grpc._requests import RequestGuard

    class _TimingInterceptor(CallInterceptor[float]):
        """What a metrics interceptor does at least: a clock read before and after."""

        def __init__(self) -> None:
            self.last = 0.0

        def start_call(self, method: str, metadata: Any) -> float:
            return time.perf_counter()

        def exit(self, call: float, context: Any, error: BaseException | None) -> None:
            self.last = time.perf_counter() - call

    def auth() -> AuthInterceptor:
        return AuthInterceptor({TOKEN: "bench"}, WorkerCredentialIssuer(b"bench-secret-0123456789"))

    return {
        "bare": lambda: None,
        "chain": lambda: InterceptorChain([auth()], RequestGuard()),
        "chain+1": lambda: InterceptorChain([_TimingInterceptor(), auth()], RequestGuard()),
    }


class _Models(model_service_pb2_grpc.ModelServiceServicer):
    async def GetModel(self, request: Any, context: Any) -> Any:  # noqa: N802 (generated name)
        return await _get_model(request, context)


async def _loopback_p50(server: Any, port: int, rpcs: int) -> float:
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = model_service_pb2_grpc.ModelServiceStub(channel)
            request = model_service_pb2.GetModelRequest(model_id=7)
            for _ in range(50):  # connection set-up and warm-up
                await stub.GetModel(request, metadata=METADATA)
            times = []
            for _ in range(rpcs):
                start = time.perf_counter()
                await stub.GetModel(request, metadata=METADATA)
                times.append(time.perf_counter() - start)
    finally:
        await server.stop(0)
    return statistics.median(times)


async def loopback_round(rpcs: int) -> dict[str, float]:
    """p50 seconds of a unary call: through the platform's assembly, and a bare server."""
    from synapse_server.core._credentials import WorkerCredentialIssuer
    from synapse_server.grpc._server import GrpcServer, ServiceRegistration, server_interceptors
    from synapse_server.settings import ServerSettings

    settings = ServerSettings(tokens={TOKEN: "bench"})
    registration = ServiceRegistration(
        _Models(),
        model_service_pb2_grpc.add_ModelServiceServicer_to_server,
        "synapse.plugin.v1.ModelService",
    )
    issuer = WorkerCredentialIssuer(b"bench-secret-0123456789")
    assembled = GrpcServer([registration], interceptors=server_interceptors(settings, issuer))
    assembled_port = assembled.add_port("127.0.0.1:0")
    bare = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(_Models(), bare)
    bare_port = bare.add_insecure_port("127.0.0.1:0")
    return {
        "assembly": await _loopback_p50(assembled, assembled_port, rpcs),
        "bare": await _loopback_p50(bare, bare_port, rpcs),
    }


async def run(calls: int, rpcs: int, rounds: int) -> dict[str, Any]:
    """Every figure, each the median over ``rounds`` rounds."""
    factories = _interceptors()
    in_process: dict[str, dict[str, list[float]]] = {
        shape: {name: [] for name in factories} for shape in HANDLERS
    }
    loopback: dict[str, list[float]] = {"assembly": [], "bare": []}
    for _ in range(rounds):
        for shape in HANDLERS:
            for name, factory in factories.items():
                seconds = await per_call_seconds(factory(), shape, calls)
                in_process[shape][name].append(seconds)
        for name, seconds in (await loopback_round(rpcs)).items():
            loopback[name].append(seconds)
    return {
        "calls": calls,
        "rpcs": rpcs,
        "rounds": rounds,
        "in_process_us": {
            shape: {name: statistics.median(v) * 1e6 for name, v in figures.items()}
            for shape, figures in in_process.items()
        },
        "in_process_us_spread": {
            shape: {name: (min(v) * 1e6, max(v) * 1e6) for name, v in figures.items()}
            for shape, figures in in_process.items()
        },
        "loopback_p50_ms": {name: statistics.median(v) * 1e3 for name, v in loopback.items()},
        "loopback_p50_ms_spread": {
            name: (min(v) * 1e3, max(v) * 1e3) for name, v in loopback.items()
        },
    }


def print_table(report: dict[str, Any]) -> None:
    """The figures as a table."""
    print(f"{'in process, us per call':<28}{'bare':>10}{'chain':>10}{'chain+1':>10}{'added':>10}")
    for shape, figures in report["in_process_us"].items():
        added = figures["chain"] - figures["bare"]
        print(
            f"{shape:<28}{figures['bare']:>10.2f}{figures['chain']:>10.2f}"
            f"{figures['chain+1']:>10.2f}{added:>10.2f}"
        )
    loop = report["loopback_p50_ms"]
    print(
        f"\nloopback unary p50: assembly {loop['assembly']:.3f} ms, bare grpc.aio "
        f"{loop['bare']:.3f} ms, ratio {loop['assembly'] / loop['bare']:.3f}"
    )


def main() -> int:
    """Run the benchmark; prints the table and writes JSON to bench/results/."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20000, help="in-process calls per figure")
    parser.add_argument("--rpcs", type=int, default=2000, help="loopback calls per figure")
    parser.add_argument("--rounds", type=int, default=5, help="rounds; figures are medians")
    parser.add_argument("--output", type=Path, help="JSON report path")
    args = parser.parse_args()
    report = asyncio.run(run(args.calls, args.rpcs, args.rounds))
    print_table(report)
    path: Path = args.output or RESULTS_DIR / f"interceptors-{datetime.now(UTC):%Y%m%dT%H%M%S}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
