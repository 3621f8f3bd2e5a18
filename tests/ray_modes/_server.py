"""A real platform server for the Ray-mode tests and the modes benchmark, in its own process.

It composes the same pieces the server's composition root does (SQLite store, event hub,
plugin catalog, worker credentials, the local, task and job executors, the job service, the
model registry, and the Action/Worker/Model servicers in the gRPC server assembly with the
auth interceptor) on 127.0.0.1:0, connects to the given Ray cluster, prints ``{"port": N}``
on stdout and serves until SIGTERM/SIGINT.

Running it in its own process keeps Ray's process-global driver out of the test process, so
this suite's multi-node cluster and other suites' local Ray do not collide.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import secrets
import signal
import sys
from pathlib import Path

from synapse.plugin.v1 import (
    action_service_pb2,
    model_service_pb2,
    model_service_pb2_grpc,
    worker_service_pb2,
    worker_service_pb2_grpc,
)
from synapse_server.core import EventHub
from synapse_server.core._catalog import PluginCatalog
from synapse_server.core._credentials import WorkerCredentialIssuer
from synapse_server.core._executor import Executor, LocalProcessExecutor
from synapse_server.core._jobs import JobService
from synapse_server.core._plugin_code import PluginCodeStore
from synapse_server.core.models import ModelRegistryService
from synapse_server.grpc._auth import AuthInterceptor
from synapse_server.grpc._model_servicer import ModelServicer
from synapse_server.grpc._progress_wire import add_action_service
from synapse_server.grpc._server import GrpcServer, ServiceRegistration, service_name
from synapse_server.grpc._servicers import ActionServicer, WorkerServicer
from synapse_server.ray._executors import RayJobExecutor, RayTaskExecutor
from synapse_server.ray._runtime import RayRuntime, RayRuntimeConfig
from synapse_server.stores import SqliteJobStore, SqliteModelStore

logger = logging.getLogger("ray_modes.server")


async def serve(args: argparse.Namespace) -> None:
    """Build the server, print its port, serve until a signal."""
    data = Path(args.data_dir)
    store = SqliteJobStore(data / "jobs.db")
    await store.open()
    hub = EventHub(store)
    # Workers on any node download models through the platform, as with the full server.
    model_store = SqliteModelStore(data / "jobs.db")
    await model_store.open()
    models = ModelRegistryService.for_data_dir(model_store, data)
    await models.open()
    plugin_dirs = [Path(p) for p in args.plugin_dir]
    catalog = PluginCatalog(
        plugin_dirs, ("local", "task", "job"), code_store=PluginCodeStore(data / "plugins")
    )
    catalog.reload()
    issuer = WorkerCredentialIssuer(secrets.token_bytes(32))
    # The servicers need the job service, which needs the workers' address: bind first.
    server = GrpcServer(interceptors=[AuthInterceptor({}, issuer)])
    port = server.add_port("127.0.0.1:0")
    worker_address = args.worker_address or f"127.0.0.1:{port}"
    runtime = RayRuntime(RayRuntimeConfig(address=args.ray_address))
    limit = args.worker_memory_limit_mb
    executors: dict[str, Executor] = {
        "local": LocalProcessExecutor(
            worker_address,
            catalog,
            log_dir=data / "workers",
            memory_limit_mb=limit,
            warm_workers=int(args.warm_workers),
        ),
        "task": RayTaskExecutor(
            runtime, worker_address, catalog, memory_limit_mb=limit, warm_workers=args.warm_workers
        ),
        "job": RayJobExecutor(runtime, worker_address, catalog, memory_limit_mb=limit),
    }
    jobs = JobService(
        store,
        hub,
        catalog,
        executors,
        issuer,
        cancel_grace_seconds=args.cancel_grace,
        max_concurrent_jobs=args.max_concurrent_jobs,
    )
    for registration in (
        ServiceRegistration(
            ActionServicer(jobs, keepalive_seconds=5.0),
            add_action_service,
            service_name(action_service_pb2, "ActionService"),
        ),
        ServiceRegistration(
            WorkerServicer(jobs),
            worker_service_pb2_grpc.add_WorkerServiceServicer_to_server,
            service_name(worker_service_pb2, "WorkerService"),
        ),
        ServiceRegistration(
            ModelServicer(models),
            model_service_pb2_grpc.add_ModelServiceServicer_to_server,
            service_name(model_service_pb2, "ModelService"),
        ),
    ):
        server.add_service(registration)
    await server.start()
    await server.set_serving()
    if args.warm_ray:
        await runtime.ensure_started()
    print(json.dumps({"port": port}), flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await jobs.close()
    await server.stop(1.0)
    await runtime.close()
    await store.close()
    await model_store.close()


def main() -> int:
    """Parse arguments and serve."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--plugin-dir", action="append", required=True)
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--ray-address", required=True)
    parser.add_argument("--worker-address", default="")
    parser.add_argument("--cancel-grace", type=float, default=2.0)
    parser.add_argument("--max-concurrent-jobs", type=int, default=8)
    parser.add_argument("--warm-ray", action="store_true")
    # Each job worker's memory limit (none by default, as before the option existed).
    parser.add_argument("--worker-memory-limit-mb", type=int)
    # Fork servers for local and task-mode workers (the server's default), or none.
    parser.add_argument("--cold-workers", dest="warm_workers", action="store_false")
    args = parser.parse_args()
    logging.basicConfig(
        level=os.environ.get("SYNAPSE_TEST_LOG_LEVEL", "INFO"),
        format="%(asctime)s server %(name)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    asyncio.run(serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
