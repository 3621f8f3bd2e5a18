"""The composition root: settings → store → hub → catalog → executor → services → gRPC server.

Every component takes its dependencies in ``__init__``; this module is the only place that
decides which implementations are used.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path

from synapse.plugin.v1 import (
    action_service_pb2,
    dataset_service_pb2,
    dataset_service_pb2_grpc,
    deployment_service_pb2,
    deployment_service_pb2_grpc,
    inference_service_pb2,
    inference_service_pb2_grpc,
    model_service_pb2,
    model_service_pb2_grpc,
    worker_service_pb2,
    worker_service_pb2_grpc,
)

from synapse_server._data_dir_lock import DataDirectoryLock
from synapse_server.core import EventHub, JobStore
from synapse_server.core._catalog import PluginCatalog
from synapse_server.core._cluster import JobCluster
from synapse_server.core._credentials import WorkerCredentialIssuer
from synapse_server.core._executor import Executor, LocalProcessExecutor
from synapse_server.core._jobs import JobService
from synapse_server.core._plugin_code import PluginCodeStore
from synapse_server.core._served_models import ServedModelService
from synapse_server.core.datasets import DatasetRegistryService, DatasetStore
from synapse_server.core.deployments import DeploymentService, DeploymentStore
from synapse_server.core.inference import InferenceService, ServeKeyring
from synapse_server.core.models import ModelRegistryService, ModelStore
from synapse_server.grpc._dataset_servicer import DatasetServicer
from synapse_server.grpc._deployment_servicer import DeploymentServicer
from synapse_server.grpc._inference_servicer import InferenceServicer
from synapse_server.grpc._model_servicer import ModelServicer
from synapse_server.grpc._progress_wire import add_action_service
from synapse_server.grpc._server import (
    GrpcServer,
    ServiceRegistration,
    build_grpc_server,
    server_credentials,
    service_name,
)
from synapse_server.grpc._servicers import ActionServicer, WorkerServicer
from synapse_server.grpc.oip import OpenInferenceServicer
from synapse_server.grpc.oip import registration as oip_registration
from synapse_server.ray import RayRuntime, RayRuntimeConfig, ServeDeploymentBackend, ServeRouter
from synapse_server.ray._environment import ServeJobEnvironment
from synapse_server.ray._executors import RayJobExecutor, RayTaskExecutor, ray_worker_address
from synapse_server.settings import ServerSettings, SettingsError
from synapse_server.stores import StoreSchemaError, open_stores, sqlite_database_path
from synapse_server.telemetry import MetricsEndpointError, Telemetry, TelemetryConfigError

__all__ = ["ServerStartError", "SynapseServer", "serve"]

logger = logging.getLogger(__name__)

# The least time in-flight RPCs get once the jobs are shut down (at most the grace period).
_STREAM_DRAIN_SECONDS = 1.0
# Servers sharing a database: how often the store-bytes gauges re-read the registries' records.
_STORE_SIZES_REFRESH_SECONDS = 30.0


class ServerStartError(RuntimeError):
    """The server could not start listening; the message says where and the likely cause."""


class SynapseServer:
    """A running platform server; build with settings, then :meth:`start` and :meth:`stop`.

    ``environ`` holds the ``OTEL_*`` variables that configure tracing (default: this
    process's environment).
    """

    def __init__(self, settings: ServerSettings, environ: Mapping[str, str] | None = None) -> None:
        self.settings = settings
        self._environ = os.environ if environ is None else environ
        self.telemetry: Telemetry | None = None
        self.address = ""
        self.worker_address = ""
        self.ray_worker_address = ""
        self._grpc: GrpcServer | None = None
        self._store: JobStore | None = None
        self._jobs: JobService | None = None
        self._model_store: ModelStore | None = None
        self._deployment_store: DeploymentStore | None = None
        self._dataset_store: DatasetStore | None = None
        self._ray: RayRuntime | None = None
        self._router: ServeRouter | None = None
        self._socket_dir: Path | None = None
        self._catalog: PluginCatalog | None = None
        self._local_executor: LocalProcessExecutor | None = None
        self._data_lock = DataDirectoryLock(settings.data_dir)
        # One server per SQLite database and per artifacts directory it alone cleans up: when
        # either lies outside the data directory, its directory is locked too. Servers
        # sharing a PostgreSQL database share the artifacts directory instead.
        self._extra_locks: list[DataDirectoryLock] = []
        self._cluster: JobCluster | None = None
        # Servers sharing a database: re-reads which artifact files each registry uses.
        self._store_sizes: asyncio.Task[None] | None = None
        # One reload at a time: a second SIGHUP waits for the first instead of interleaving.
        self._reload_lock = asyncio.Lock()

    @property
    def jobs(self) -> JobService:
        """The job service (for in-process use and tests)."""
        assert self._jobs is not None, "server not started"
        return self._jobs

    async def start(self) -> str:
        """Build everything, bind, start serving; returns the bound ``host:port``.

        Takes the data directory's lock first: DataDirectoryInUseError at once when another
        server holds it (see ``_data_dir_lock``). The lock is held until :meth:`stop`.
        """
        self.settings.check()
        self._data_lock.acquire()
        try:
            for lock in self._single_server_locks():
                lock.acquire()
                self._extra_locks.append(lock)
            address = await self._start()
        except BaseException:
            self._release_locks()
            raise
        for lock in (self._data_lock, *self._extra_locks):
            lock.record(address)
        return address

    def _single_server_locks(self) -> list[DataDirectoryLock]:
        s = self.settings
        database = sqlite_database_path(s.resolved_database_url())
        if database is None:
            return []
        home = s.data_dir.resolve()
        dirs = {database.parent.resolve(), s.artifacts_root.resolve()} - {home}
        return [DataDirectoryLock(d) for d in sorted(dirs)]

    def _release_locks(self) -> None:
        for lock in reversed(self._extra_locks):
            lock.release()
        self._extra_locks.clear()
        self._data_lock.release()

    async def _start(self) -> str:
        s = self.settings
        s.check()
        try:
            self.telemetry = telemetry = Telemetry.from_settings(s, self._environ)
        except TelemetryConfigError as exc:
            raise SettingsError(str(exc)) from None
        s.data_dir.mkdir(parents=True, exist_ok=True)
        secret = s.resolve_secret()
        issuer = WorkerCredentialIssuer(secret)
        try:
            stores = await open_stores(s.resolved_database_url())
        except StoreSchemaError as exc:
            raise ServerStartError(str(exc)) from exc
        self._store, self._model_store = stores.jobs, stores.models
        self._deployment_store = stores.deployments
        self._dataset_store = stores.datasets
        # Several servers may share a PostgreSQL database: jobs are owned by leases, and
        # subscribers follow jobs other servers run through the store.
        server_id = s.resolve_server_id() if stores.shared else ""
        hub = EventHub(
            self._store,
            remote_poll_seconds=s.remote_poll_seconds if stores.shared else None,
            metrics=telemetry.metrics,
        )
        models = ModelRegistryService.for_data_dir(
            self._model_store, s.artifacts_root, shared_by=server_id
        )
        # Datasets and job outputs share the models' artifact files: the registry joins them
        # before their orphan sweep (models.open) so that its files count as referenced.
        datasets = (
            DatasetRegistryService(stores.datasets, models.artifacts)
            if stores.datasets is not None
            else None
        )
        await models.open()
        if datasets is not None:
            # Outputs staged by a process that stopped before its job ended are dropped: with
            # one server (SQLite) all of them, none of its jobs runs on; on a shared database
            # those of jobs that have ended (the others' running jobs keep theirs).
            await datasets.open(_job_over(self._store) if stores.shared else None)
        # Local workers reach the server over a private Unix socket: no TLS or port needed,
        # and the directory is readable only by this user.
        self._socket_dir = Path(tempfile.mkdtemp(prefix="synapse-"))
        self.worker_address = f"unix:{self._socket_dir / 'worker.sock'}"
        # Ray modes (task, job) exist when Ray is installed; Ray itself starts on first need.
        modes = ["local", "task", "job"] if importlib.util.find_spec("ray") else ["local"]
        # Plugins run from snapshots of their code in the data directory (see _plugin_code).
        catalog = PluginCatalog(
            s.plugin_dirs, supported_modes=modes, code_store=PluginCodeStore(s.data_dir / "plugins")
        )
        await asyncio.to_thread(catalog.reload)
        await self._collect_plugin_code(catalog)
        # Serve: Ray starts lazily (first deployment job or Infer), owned by this server.
        self._ray = RayRuntime(
            RayRuntimeConfig(address=s.ray_address, head_record=s.data_dir / "ray-head.json")
        )
        self._router = router = ServeRouter(
            self._ray, transport=s.serve_transport, max_message_bytes=s.max_message_bytes
        )
        deployments = DeploymentService(
            self._deployment_store, ServeDeploymentBackend(self._ray, router)
        )
        if s.ray_address is None:
            await self._ray.remove_stale_head()
            others = (
                [r for r in await self._store.live_servers() if r.id != server_id]
                if stores.shared
                else []
            )
            # Other live servers' embedded Rays still serve their applications.
            if not others:
                await deployments.forget_embedded_ray_applications()
        keyring = ServeKeyring(secret)
        inference = InferenceService(deployments, router, keyring, metrics=telemetry.metrics)
        # Deployment jobs learn the Ray address and their tenant's signing key from this; the
        # replicas they start reach the platform at the address Ray workers use.
        serve_environment = ServeJobEnvironment(
            catalog,
            self._ray,
            keyring,
            replica_address=lambda: self.ray_worker_address,
            deployments=deployments,
            replica_message_bytes=router.replica_message_bytes,
        )
        # Workers trace and log as the server does (OTEL_*, the log format).
        job_environment = telemetry.job_environment(serve_environment)
        executor = LocalProcessExecutor(
            self.worker_address,
            catalog,
            memory_limit_mb=s.worker_memory_limit_mb,
            python=s.worker_python,
            log_dir=s.data_dir / "logs" / "jobs",
            environment=job_environment,
            warm_workers=s.warm_workers,
            preload_plugins=s.preload_plugins,
            local_artifacts=models.artifacts.files.blob_dir,
        )
        await executor.prewarm()
        self._catalog, self._local_executor = catalog, executor
        executors: dict[str, Executor] = {"local": executor}
        if "task" in modes:
            roots = s.tls_cert_file.read_bytes() if s.tls_cert_file and s.ray_address else None
            for ray_executor in (
                RayTaskExecutor(
                    self._ray,
                    lambda: self.ray_worker_address,
                    catalog,
                    root_certificates=roots,
                    environment=job_environment,
                    memory_limit_mb=s.worker_memory_limit_mb,
                    warm_workers=s.warm_workers > 0,
                ),
                RayJobExecutor(
                    self._ray,
                    lambda: self.ray_worker_address,
                    catalog,
                    root_certificates=roots,
                    environment=job_environment,
                    memory_limit_mb=s.worker_memory_limit_mb,
                ),
            ):
                executors[ray_executor.mode] = ray_executor
        self._jobs = JobService(
            self._store,
            hub,
            catalog,
            executors,
            issuer,
            cancel_grace_seconds=s.cancel_grace_seconds,
            max_concurrent_jobs=s.max_concurrent_jobs,
            server_id=server_id,
            metrics=telemetry.metrics,
            tracer=telemetry.tracer,
            outputs=datasets,
        )
        if stores.shared:
            self._cluster = JobCluster(
                self._jobs,
                self._store,
                hub,
                stores.notifications,
                server_id=server_id,
                host=socket.gethostname(),
                lease_seconds=s.job_lease_seconds,
            )
        _watch_gauges(telemetry, self._jobs, hub, executor, models, datasets, modes)
        if router.direct is not None and telemetry.metrics.enabled:
            telemetry.metrics.watch_infer_routes(router.direct.route_counts)
        if stores.shared and telemetry.metrics.enabled:
            # The other servers store models and datasets too: the store-bytes gauges count
            # their files from the database's records, read again now and then.
            self._store_sizes = asyncio.create_task(
                _refresh_store_sizes(models, datasets, _STORE_SIZES_REFRESH_SECONDS),
                name="store-sizes",
            )
        grpc_server = build_grpc_server(
            s,
            _grpc_services(
                s,
                self._jobs,
                models,
                datasets,
                deployments,
                inference,
                self._serving,
                executor.job_scratch,
            ),
            issuer,
            serve_keys=keyring,
            telemetry=telemetry,
        )
        # InferenceService serves only while Ray can be reached.
        grpc_server.watch_service(
            service_name(inference_service_pb2, "InferenceService"),
            self._ray.reachable,
            s.health_check_seconds,
        )
        try:
            port = grpc_server.add_port(s.listen_address, server_credentials(s))
        except RuntimeError as exc:
            # grpc says only "Failed to bind"; the TLS files passed s.check() already, so the
            # address is the likely cause.
            await self.stop(0)
            raise ServerStartError(
                f"cannot listen on {s.listen_address}: the address is in use or not available "
                "on this machine"
                + (" (or grpc refused the TLS certificate and key)" if s.tls_enabled else "")
            ) from exc
        grpc_server.add_port(self.worker_address)
        try:
            telemetry.start()
        except MetricsEndpointError as exc:
            await self.stop(0)
            raise ServerStartError(str(exc)) from exc
        host = s.listen_address.rpartition(":")[0]
        self.address = f"{host}:{port}"
        self.ray_worker_address = ray_worker_address(
            self.address, self.worker_address, external_cluster=bool(s.ray_address)
        )
        self._grpc = grpc_server
        if self._cluster is not None:
            await self._cluster.register(self.address)
        await grpc_server.start()
        if self._cluster is not None:
            # Listens to the other servers, recovers this server's own jobs.
            await self._cluster.start()
        else:
            await self._jobs.recover()
        await grpc_server.set_serving()
        logger.info(
            "listening on %s (tls=%s, auth=%s)", self.address, s.tls_enabled, bool(s.tokens)
        )
        return self.address

    def _serving(self) -> bool:
        """Whether the server takes requests: started and not shutting down."""
        return self._grpc is not None and self._grpc.serving

    async def _collect_plugin_code(self, catalog: PluginCatalog) -> None:
        """Remove plugin code snapshots that neither the catalog nor an unfinished job uses."""
        assert self._store is not None
        in_use = await self._store.plugin_code_in_use()
        await asyncio.to_thread(catalog.collect, in_use)

    async def reload_plugins(self) -> None:
        """Load the plugins again from disk, for later jobs (``synapse serve``: SIGHUP).

        The plugin directories are snapshotted and loaded in a thread first; a plugin that
        no longer loads raises its error and leaves everything as it was. Then the catalog
        (actions, params models, schemas, code snapshots) and the fork servers of local jobs
        are switched together. This is the only switch: every mode runs a job from the
        snapshot it was validated against, so jobs already submitted finish on the code they
        were submitted with, and running deployments keep theirs until they are deployed
        again. Snapshots no longer used are removed afterwards.
        """
        if self._catalog is None or self._local_executor is None:
            raise RuntimeError("the server is not started")
        async with self._reload_lock:
            try:
                snapshot = await asyncio.to_thread(self._catalog.scan)
                # One step on the event loop, no await between: a job submitted from here on
                # is validated against the new params models and runs on a new fork server;
                # none gets one without the other.
                self._catalog.install(snapshot)
                self._local_executor.reload_plugins()
            finally:
                # Also after a failed reload: its snapshots (the broken code) are unused.
                await self._collect_plugin_code(self._catalog)

    async def stop(self, grace: float | None = None) -> None:
        """Drain within ``grace`` seconds (default ``shutdown_grace_seconds``), then close.

        Health turns NOT_SERVING and new jobs are refused; jobs not yet running stay PENDING
        for the next start; running jobs get the grace period to finish while the gRPC server
        keeps serving their workers (and everyone else); then in-flight RPCs get what is left
        of the grace period.
        """
        grace = self.settings.shutdown_grace_seconds if grace is None else grace
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        if self._grpc is not None:
            await self._grpc.enter_graceful_shutdown()
        if self._jobs is not None:
            await self._jobs.close(grace)
        if self._cluster is not None:
            # After the jobs: the pending ones this server leaves go to the others at once.
            await self._cluster.stop()
        if self._store_sizes is not None:
            self._store_sizes.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._store_sizes
        if self._grpc is not None:
            # Streams following a job the drain has just ended still deliver its terminal
            # event, even when the jobs took the whole grace period.
            floor = min(grace, _STREAM_DRAIN_SECONDS)
            await self._grpc.stop(max(deadline - loop.time(), floor))
        if self._store is not None:
            await self._store.close()
        if self._model_store is not None:
            await self._model_store.close()
        if self._deployment_store is not None:
            await self._deployment_store.close()
        if self._dataset_store is not None:
            await self._dataset_store.close()
        if self._router is not None:
            await self._router.close()
        if self._ray is not None:
            await self._ray.close()
        if self._socket_dir is not None:
            shutil.rmtree(self._socket_dir, ignore_errors=True)
        if self.telemetry is not None:
            # Last: the spans of the jobs the drain ended are exported too.
            await self.telemetry.close()
        self._release_locks()

    async def wait_for_termination(self) -> None:
        """Until the gRPC server stops."""
        if self._grpc is not None:
            await self._grpc.wait_for_termination()


def _job_over(store: JobStore) -> Callable[[str], Awaitable[bool]]:
    """Whether a job has ended (or is unknown), from the store."""

    async def over(job_id: str) -> bool:
        job = await store.get_job(job_id)
        return job is None or job.state.is_terminal

    return over


async def _refresh_store_sizes(
    models: ModelRegistryService, datasets: DatasetRegistryService | None, every_s: float
) -> None:
    """Every ``every_s`` seconds, re-read which artifact files the registries use."""
    while True:
        await asyncio.sleep(every_s)
        try:
            await models.refresh_stored()
            if datasets is not None:
                await datasets.refresh_stored()
        except Exception:
            # The database is unreachable for now: the gauges keep the last known files.
            logger.warning("could not re-read the stored artifacts' records", exc_info=True)


def _watch_gauges(
    telemetry: Telemetry,
    jobs: JobService,
    hub: EventHub,
    executor: LocalProcessExecutor,
    models: ModelRegistryService,
    datasets: DatasetRegistryService | None,
    modes: list[str],
) -> None:
    """The gauges read at scrape time, from the services that know the values."""
    metrics = telemetry.metrics
    if not metrics.enabled:
        return
    metrics.watch_jobs(jobs, modes)
    metrics.watch_subscribers(lambda: hub.subscribers)
    metrics.watch_worker_processes(executor.process_counts)
    metrics.watch_store_bytes("models", models.stored_bytes)
    if datasets is not None:
        metrics.watch_store_bytes("datasets", datasets.stored_bytes)


def _grpc_services(
    s: ServerSettings,
    jobs: JobService,
    models: ModelRegistryService,
    datasets: DatasetRegistryService | None,
    deployments: DeploymentService,
    inference: InferenceService,
    serving: Callable[[], bool],
    job_scratch: Callable[[str], Path | None],
) -> list[ServiceRegistration]:
    """The services on the platform's port, each a servicer over its core service.

    ``job_scratch``: the local executor's scratch directory of a running job's worker.
    """
    services = [
        ServiceRegistration(
            ActionServicer(jobs, s.keepalive_seconds, s.max_message_bytes),
            add_action_service,
            service_name(action_service_pb2, "ActionService"),
        ),
        ServiceRegistration(
            WorkerServicer(jobs, datasets, job_scratch),
            worker_service_pb2_grpc.add_WorkerServiceServicer_to_server,
            service_name(worker_service_pb2, "WorkerService"),
        ),
        ServiceRegistration(
            ModelServicer(models),
            model_service_pb2_grpc.add_ModelServiceServicer_to_server,
            service_name(model_service_pb2, "ModelService"),
        ),
        ServiceRegistration(
            DeploymentServicer(deployments, jobs.get),
            deployment_service_pb2_grpc.add_DeploymentServiceServicer_to_server,
            service_name(deployment_service_pb2, "DeploymentService"),
        ),
        ServiceRegistration(
            InferenceServicer(inference, s.max_message_bytes),
            inference_service_pb2_grpc.add_InferenceServiceServicer_to_server,
            service_name(inference_service_pb2, "InferenceService"),
        ),
        # The Open Inference Protocol v2 over the same inference core.
        oip_registration(
            OpenInferenceServicer(
                inference,
                ServedModelService(deployments, models),
                ready=serving,
                max_message_bytes=s.max_message_bytes,
            )
        ),
    ]
    if datasets is not None:
        services.append(
            ServiceRegistration(
                DatasetServicer(datasets, jobs.get),
                dataset_service_pb2_grpc.add_DatasetServiceServicer_to_server,
                service_name(dataset_service_pb2, "DatasetService"),
            )
        )
    return services


async def serve(settings: ServerSettings) -> None:
    """Run a server until SIGTERM/SIGINT, then drain gracefully."""
    server = SynapseServer(settings)
    address = await server.start()
    print(f"synapse server listening on {address}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    reloads: set[asyncio.Task[None]] = set()

    async def reload() -> None:
        try:
            await server.reload_plugins()
        except Exception:
            logger.exception("plugin reload failed; the plugins loaded before stay in use")
        else:
            codes = [info.code for info in server.jobs.catalog.plugins()]
            logger.info("plugins reloaded: %s", ", ".join(codes))

    def on_hangup() -> None:
        task = loop.create_task(reload(), name="reload-plugins")
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    with contextlib.suppress(NotImplementedError):
        loop.add_signal_handler(signal.SIGHUP, on_hangup)
    await stop.wait()
    if settings.log_format == "json":
        logger.info("synapse server stopping")  # stderr carries JSON lines only
    else:
        print("synapse server stopping", file=sys.stderr, flush=True)
    await server.stop()
