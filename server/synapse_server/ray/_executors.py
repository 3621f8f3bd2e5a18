"""Run job workers on a Ray cluster: ``task`` mode (Ray tasks) and ``job`` mode (isolated actors).

In both, the Ray task or actor starts the job's worker as a child process: the same
``python -m synapse_server.worker`` the local executor starts, so plugin code is unchanged and
events travel the same way: the worker dials the server's ``WorkerService`` with the
job-scoped credential (a task argument, then the child's environment; never logged, never in
argv) and streams its events with its own sequence numbers, resending after a broken
connection. The executors never see events. The Ray side supervises the child
(``_supervisor``): it applies the per-job memory limit and returns how the child ended.

- ``task``: a Ray task per job. Ray reuses worker processes between tasks; a plugin that
  crashes ends only its child, never the Ray worker process.
- ``job``: a dedicated Ray actor per job, a fresh process with the plugin's own runtime
  environment (``requirements.txt`` → ``runtime_env.pip``; the child runs that environment's
  interpreter), killed when the job ends. The Ray Jobs API would need the dashboard (the
  server's Ray runs without it) and would store the credential in Ray's job record, so an
  isolated actor gives the same isolation without those.

Resources (``num_cpus``, ``num_gpus``, ``memory`` in bytes, ``resources`` for custom Ray
resources) come from the job's params, else from the action's entry in ``config.yaml``, else
one CPU. A request no node of the cluster can ever hold is refused at submit time
(:class:`ResourcesUnavailableError`, FAILED_PRECONDITION); one that fits but not right now
waits PENDING with a ``pending_reason`` naming what it waits for.

Faults: tasks are never retried and actors never restarted (an action may have side effects).
A worker that exits, crashes or is killed ends ``run`` with its exit code or signal, or as
over its memory limit, exactly as in local mode; a Ray worker process or node that dies under
it ends ``run`` with a :class:`WorkerExit` whose detail says what Ray reported. ``kill``
cancels the task (its supervisor kills the worker's process group; force after a grace) or
kills the actor (the worker dies with it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from synapse_sdk.jsonutil import gc_paused

from synapse_server.core._catalog import PluginCatalog
from synapse_server.core._errors import (
    FailedPreconditionError,
    InvalidArgumentError,
    ServiceUnavailableError,
)
from synapse_server.core._executor import JobEnvironment, WorkerExit
from synapse_server.core._models import Job
from synapse_server.ray._failures import describe_ray_failure
from synapse_server.ray._plugin_package import (
    PluginPackage,
    PluginPackager,
    materialize_plugin,
    plugin_cache_dir,
)
from synapse_server.ray._runtime import RayRuntime

__all__ = [
    "IsolatedWorkerActor",
    "PendingReporter",
    "RayJobExecutor",
    "RayResources",
    "RayTaskExecutor",
    "ResourcesUnavailableError",
    "STARTING_RAY_REASON",
    "WorkerTarget",
    "ray_worker_address",
]

logger = logging.getLogger(__name__)

#: ``async (job_id, reason) -> still pending``: tells the job service why a job waits.
PendingReporter = Callable[[str, str], Awaitable[bool]]

#: The pending reason of a job accepted while the server's Ray is still starting.
STARTING_RAY_REASON = "starting Ray"

_LABELS = {"CPU": "num_cpus", "GPU": "num_gpus", "memory": "memory"}
_NODE_CACHE_SECONDS = 2.0


class ResourcesUnavailableError(FailedPreconditionError):
    """The job asks for more than any node of the Ray cluster has: it could never start."""


def _label(resource: str) -> str:
    return _LABELS.get(resource, f"resources.{resource}")


def _amount(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def _number(source: str, key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidArgumentError(f"{source}.{key} must be a number >= 0, got {value!r}")
    if value < 0:
        raise InvalidArgumentError(f"{source}.{key} must be >= 0, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class RayResources:
    """What one worker asks Ray for. Zero means zero (not "the default")."""

    num_cpus: float = 1.0
    num_gpus: float = 0.0
    memory: float = 0.0
    custom: Mapping[str, float] = field(default_factory=dict)

    @classmethod
    def resolve(
        cls, params: Mapping[str, Any], config: Mapping[str, Any], default_num_cpus: float = 1.0
    ) -> RayResources:
        """Params override the action's config key by key; InvalidArgumentError if malformed."""
        values: dict[str, float] = {"num_cpus": default_num_cpus, "num_gpus": 0.0, "memory": 0.0}
        custom: dict[str, float] = {}
        for source, mapping in (("config", config), ("params", params)):
            for key in ("num_cpus", "num_gpus", "memory"):
                if mapping.get(key) is not None:
                    values[key] = _number(source, key, mapping[key])
            extra = mapping.get("resources")
            if extra is None:
                continue
            if not isinstance(extra, Mapping):
                raise InvalidArgumentError(
                    f"{source}.resources must map resource names to amounts, got {extra!r}"
                )
            for name, amount in extra.items():
                if not isinstance(name, str) or not name or name in _LABELS:
                    raise InvalidArgumentError(
                        f"{source}.resources: {name!r} is not a custom resource name "
                        "(use num_cpus, num_gpus and memory for CPU, GPU and memory)"
                    )
                custom[name] = _number(f"{source}.resources", name, amount)
        return cls(
            num_cpus=values["num_cpus"],
            num_gpus=values["num_gpus"],
            memory=values["memory"],
            custom=custom,
        )

    def demand(self) -> dict[str, float]:
        """The request in Ray's resource names, zero amounts left out."""
        wanted = {"CPU": self.num_cpus, "GPU": self.num_gpus, "memory": self.memory, **self.custom}
        return {name: amount for name, amount in wanted.items() if amount > 0}

    def ray_options(self) -> dict[str, Any]:
        """Options for ``.options()`` of a Ray task or actor."""
        options: dict[str, Any] = {"num_cpus": self.num_cpus, "num_gpus": self.num_gpus}
        if self.memory > 0:
            options["memory"] = int(self.memory)
        if self.custom:
            options["resources"] = dict(self.custom)
        return options

    def describe(self) -> str:
        """``num_cpus=1, resources.node_a=0.1``: for reasons and errors."""
        parts = [f"{_label(k)}={_amount(v)}" for k, v in self.demand().items()]
        return ", ".join(parts) or "num_cpus=0"


@dataclass(frozen=True)
class WorkerTarget:
    """How a remote worker reaches the server: address, and TLS roots / name override."""

    address: str
    root_certificates: bytes | None = None
    server_name: str | None = None


def _run_remote_worker(
    target: WorkerTarget,
    job_id: str,
    credential: str,
    package: PluginPackage,
    env: Mapping[str, str] | None = None,
    memory_limit_mb: int | None = None,
    plugin: str = "",
    warm: bool = False,
) -> WorkerExit:
    """Body of the Ray task / actor method: unpack the plugin, run the worker as a child.

    The worker is ``python -m synapse_server.worker`` in a process of its own, supervised here
    (see ``_supervisor``): the result says how it ended, exit code or signal, as in local
    mode. ``env`` (the job environment hook's variables) goes to the child only, so a task
    worker process reused by later jobs never holds it. ``warm`` (task mode): the worker is
    forked from a fork server this Ray worker process keeps for ``plugin``'s code, as local
    mode's fork servers do, instead of starting an interpreter per job.
    """
    import ray

    from synapse_server.ray._supervisor import (
        child_environment,
        root_certificates_file,
        supervise_forked_worker,
        supervise_worker,
        worker_command,
    )

    plugin_dir = materialize_plugin(package)
    context = ray.get_runtime_context()
    node = context.get_node_id()
    cert_file = None
    if target.root_certificates is not None:
        cert_file = root_certificates_file(plugin_cache_dir() / "tls", target.root_certificates)
    options: dict[str, Any] = {
        "worker_id": f"ray-{node[:12]}-{os.getpid()}",
        "memory_limit_mb": memory_limit_mb,
        "root_cert_file": cert_file,
        "server_name": target.server_name,
    }

    def cancelled() -> bool:
        return _is_canceled(context)

    def cold_start() -> WorkerExit:
        return supervise_worker(
            worker_command(
                sys.executable, target.address, plugin_dir, "--job-id", job_id, **options
            ),
            child_environment(
                os.environ, env or {}, credential, ray_address=context.gcs_address, node_id=node
            ),
            job_id=job_id,
            memory_limit_mb=memory_limit_mb,
            cancelled=cancelled,
        )

    if not warm:
        return cold_start()
    preload = ["--preload", plugin] if plugin else []
    return supervise_forked_worker(
        (package.sha256, plugin, memory_limit_mb, target, sys.executable),
        worker_command(
            sys.executable, target.address, plugin_dir, "--fork-server", *preload, **options
        ),
        child_environment(os.environ, {}, None, ray_address=context.gcs_address, node_id=node),
        job_id=job_id,
        credential=credential,
        environment=env or {},
        memory_limit_mb=memory_limit_mb,
        cold_start=cold_start,
        cancelled=cancelled,
    )


def _is_canceled(context: Any) -> bool:
    # An actor task's cancel only sets this flag (a task's raises KeyboardInterrupt instead).
    try:
        return bool(context.is_canceled())
    except RuntimeError:
        return False


class IsolatedWorkerActor:
    """Job mode: one actor (one process) per job, with the plugin's runtime environment."""

    def run(
        self,
        target: WorkerTarget,
        job_id: str,
        credential: str,
        package: PluginPackage,
        env: Mapping[str, str] | None = None,
        memory_limit_mb: int | None = None,
    ) -> WorkerExit:
        """Run the job's worker as a child of this actor's process (one job: no fork server)."""
        return _run_remote_worker(target, job_id, credential, package, env, memory_limit_mb)


def ray_worker_address(listen_address: str, local_address: str, external_cluster: bool) -> str:
    """The address Ray workers dial: ``local_address`` when Ray runs only on this machine.

    With an external cluster, workers on other machines need the server's TCP address; a
    wildcard listen host (``0.0.0.0``, ``[::]``) is replaced by this node's IP as Ray sees it.
    A loopback listen address only works for workers on this machine, which is logged.
    """
    if not external_cluster:
        return local_address
    host, _, port = listen_address.rpartition(":")
    bare = host.strip("[]")
    if bare in ("0.0.0.0", "::", ""):
        from ray.util import get_node_ip_address

        return f"{get_node_ip_address()}:{port}"
    if bare in ("127.0.0.1", "localhost", "::1"):
        logger.warning(
            "the server listens on %s: Ray workers on other machines cannot reach it; "
            "listen on an address the cluster can reach",
            listen_address,
        )
    return listen_address


@dataclass
class _Launch:
    ref: Any
    actor: Any = None
    killed: bool = False


class _RayExecutorBase:
    """Shared scheduling, waiting, fault mapping and cancellation of the two Ray modes."""

    mode = ""

    def __init__(
        self,
        runtime: RayRuntime,
        worker_address: str | Callable[[], str],
        catalog: PluginCatalog,
        *,
        root_certificates: bytes | None = None,
        server_name: str | None = None,
        environment: JobEnvironment | None = None,
        default_num_cpus: float = 1.0,
        pending_poll_seconds: float = 0.5,
        memory_limit_mb: int | None = None,
        stop_grace_seconds: float = 5.0,
    ) -> None:
        self._runtime = runtime
        self._memory_limit_mb = memory_limit_mb or None
        self._stop_grace = stop_grace_seconds
        self._address = worker_address
        self._root_certificates = root_certificates
        self._server_name = server_name
        self._environment = environment
        self._catalog = catalog
        self._default_num_cpus = default_num_cpus
        self._poll = pending_poll_seconds
        self._packager = PluginPackager()
        self._launches: dict[str, _Launch] = {}
        self._pending_reporter: PendingReporter | None = None
        self._configs: dict[Path, tuple[float, dict[str, Any]]] = {}
        self._nodes_lock = threading.Lock()
        self._nodes: tuple[float, list[dict[str, float]]] = (0.0, [])
        self._ray_start: asyncio.Task[None] | None = None

    @property
    def running(self) -> int:
        """Workers launched and not yet finished."""
        return len(self._launches)

    def bind_pending_reporter(self, reporter: PendingReporter) -> None:
        """Where to say why a job is still waiting (the job service binds itself)."""
        self._pending_reporter = reporter

    def _target(self) -> WorkerTarget:
        # A callable: the composition root knows the address only once the server is bound.
        address = self._address() if callable(self._address) else self._address
        if not address:
            raise FailedPreconditionError("the server has no address for Ray workers yet")
        return WorkerTarget(address, self._root_certificates, self._server_name)

    # Resources ------------------------------------------------------------------------------

    def _plugin_dir(self, job: Job) -> Path:
        # The snapshot the job was validated against, not the plugin directory on disk (see
        # core._plugin_code): every mode runs the same code, and only a reload changes it.
        return self._catalog.code(job.plugin, job.plugin_sha256).path

    def _action_config(self, plugin_dir: Path, action: str) -> dict[str, Any]:
        config_path = plugin_dir / "config.yaml"
        mtime = config_path.stat().st_mtime
        cached = self._configs.get(plugin_dir)
        if cached is None or cached[0] != mtime:
            raw = yaml.safe_load(config_path.read_text(encoding="utf-8")) or {}
            cached = (mtime, raw if isinstance(raw, dict) else {})
            self._configs[plugin_dir] = cached
        actions = cached[1].get("actions") or {}
        entry = actions.get(action) if isinstance(actions, dict) else None
        return entry if isinstance(entry, dict) else {}

    def resources(self, job: Job) -> RayResources:
        """The resources ``job`` asks for (params first, then the action's config)."""
        config = self._action_config(self._plugin_dir(job), job.action)
        # Only a few keys are read: the parsed params are dropped before collection resumes.
        with gc_paused():
            return RayResources.resolve(job.params, config, self._default_num_cpus)

    def memory_limit_mb(self, resources: RayResources) -> int | None:
        """The memory limit of a job's worker (None: none).

        The server's limit, raised to the job's Ray ``memory`` reservation when that is
        larger: Ray set that much aside for the job on its node, so the job may use it.
        """
        if not self._memory_limit_mb:
            return None
        reserved = math.ceil(resources.memory / (1 << 20)) if resources.memory > 0 else 0
        return max(self._memory_limit_mb, reserved)

    def _node_totals(self) -> list[dict[str, float]]:
        import ray

        with self._nodes_lock:
            stamp, nodes = self._nodes
            if time.monotonic() - stamp < _NODE_CACHE_SECONDS and nodes:
                return nodes
            nodes = [
                {k: float(v) for k, v in node.get("Resources", {}).items()}
                for node in ray.nodes()
                if node.get("Alive")
            ]
            self._nodes = (time.monotonic(), nodes)
            return nodes

    def check_fits(self, resources: RayResources) -> None:
        """Raise :class:`ResourcesUnavailableError` if no node could ever run the worker."""
        demand = resources.demand()
        nodes = self._node_totals()
        if any(all(node.get(k, 0.0) >= v for k, v in demand.items()) for node in nodes):
            return
        if not nodes:
            raise ResourcesUnavailableError("the Ray cluster has no live nodes")
        for name, amount in demand.items():
            largest = max(node.get(name, 0.0) for node in nodes)
            if largest < amount:
                have = (
                    f"the largest node has {_amount(largest)}"
                    if largest > 0
                    else "no node of the Ray cluster has it"
                )
                raise ResourcesUnavailableError(
                    f"the job asks for {_label(name)}={_amount(amount)} but {have}; "
                    f"it can never be scheduled on this cluster ({len(nodes)} node(s))"
                )
        raise ResourcesUnavailableError(
            f"no single node of the Ray cluster has all of {resources.describe()}; "
            "it can never be scheduled on this cluster"
        )

    def _waiting_reason(self, resources: RayResources) -> str:
        import ray

        available = ray.available_resources()
        short = [
            f"needs {_label(name)}={_amount(amount)}, available {_amount(available.get(name, 0))}"
            for name, amount in resources.demand().items()
            if available.get(name, 0.0) < amount
        ]
        if short:
            return "waiting for resources: " + "; ".join(short)
        return f"waiting for the Ray cluster to start the worker ({resources.describe()})"

    async def admit(self, job: Job) -> str:
        """Submit-time check that answers at once; returns a pending reason ("" for none).

        The job's plugin directory and resources are checked first (without Ray). With Ray up,
        a job no node could ever hold is refused here; while Ray is not up yet, starting it
        could outlast the caller's deadline, so the job is accepted as waiting for it ("starting
        Ray"), Ray is started in the background, and :meth:`run` fails the job if Ray does not
        come up or could never hold it.
        """
        resources = self.resources(job)
        if not self._runtime.started:
            self._start_ray_in_background()
            return STARTING_RAY_REASON
        await asyncio.to_thread(self.check_fits, resources)
        return ""

    def _start_ray_in_background(self) -> None:
        if self._ray_start is not None and not self._ray_start.done():
            return
        self._ray_start = asyncio.get_running_loop().create_task(
            self._start_ray(), name=f"start-ray-{self.mode}"
        )

    async def _start_ray(self) -> None:
        try:
            await self._runtime.ensure_started()
        except ServiceUnavailableError as exc:
            # Each job waiting for Ray fails with this in run(); the next submit tries again.
            logger.warning("Ray did not start: %s", exc)

    async def _ensure_ray(self) -> None:
        """Ray up, or :class:`ServiceUnavailableError` with a reason for the job's error."""
        try:
            await self._runtime.ensure_started()
        except ServiceUnavailableError as exc:
            first_line = (str(exc).strip().splitlines() or [""])[0][:300]
            raise ServiceUnavailableError(f"Ray could not be started: {first_line}") from exc

    # Running --------------------------------------------------------------------------------

    def _launch(
        self,
        job: Job,
        credential: str,
        resources: RayResources,
        package: PluginPackage,
        env: Mapping[str, str],
    ) -> _Launch:
        raise NotImplementedError

    def _stop(self, launch: _Launch, grace: float = 0.0) -> None:
        """Stop the launch's worker; blocks up to ``grace`` seconds (call off the event loop).

        A task is cancelled first without force: its supervisor kills the worker's process
        group and returns, and the Ray worker process lives on for later tasks; only a task
        still running after ``grace`` is force-cancelled, which ends its Ray worker process
        (and the worker with it). An actor is killed; its worker dies with it.
        """
        import ray

        launch.killed = True
        if launch.actor is not None:
            ray.kill(launch.actor, no_restart=True)
            return
        if grace > 0:
            ray.cancel(launch.ref, force=False, recursive=True)
            done, _ = ray.wait([launch.ref], timeout=grace)
            if done:
                return
        ray.cancel(launch.ref, force=True, recursive=True)

    def _release(self, launch: _Launch) -> None:
        """Drop what the launch holds once the worker is gone (actors are killed)."""
        import ray

        if launch.actor is not None and not launch.killed:
            with contextlib.suppress(Exception):
                ray.kill(launch.actor, no_restart=True)

    async def run(
        self, job: Job, credential: str, trace_context: Mapping[str, str] | None = None
    ) -> WorkerExit:
        """Launch the job's worker on Ray and wait until it is gone (the worker asks for its
        assignment, trace context included, with GetAssignment)."""
        await self._ensure_ray()
        from ray import exceptions as rex

        # A job admitted while Ray was starting meets the cluster here for the first time: one
        # no node could ever hold fails with that reason (ResourcesUnavailableError), as
        # does a plugin or config that changed since; the job service reports these errors
        # as the platform's, not as a worker crash.
        resources = self.resources(job)
        code = self._catalog.code(job.plugin, job.plugin_sha256)  # see _plugin_dir
        await asyncio.to_thread(self.check_fits, resources)
        package = await asyncio.to_thread(self._packager.package, code)
        env = dict(await self._environment.environment(job)) if self._environment else {}
        launch = self._launch(job, credential, resources, package, env)
        self._launches[job.id] = launch
        logger.info(
            "job %s: launched a %s-mode worker (%s)", job.id, self.mode, resources.describe()
        )
        future = asyncio.wrap_future(launch.ref.future())
        reporting = self._pending_reporter is not None
        try:
            while True:
                done, _ = await asyncio.wait({future}, timeout=self._poll)
                if done:
                    break
                if reporting and self._pending_reporter is not None:
                    reason = await asyncio.to_thread(self._waiting_reason, resources)
                    reporting = await self._pending_reporter(job.id, reason)
            try:
                outcome = future.result()
            except (rex.RayError, rex.RayTaskError) as exc:
                detail = describe_ray_failure(exc)
                # Ray's own text (pid, node address, exit detail) is for operators only.
                logger.warning(
                    "job %s: %s; Ray said: %s", job.id, detail, " ".join(str(exc).split())[:2000]
                )
                return WorkerExit(detail=detail)
            if not isinstance(outcome, WorkerExit):
                raise TypeError(f"a Ray worker returned {type(outcome).__name__}, not WorkerExit")
            if outcome.exit_code != 0:
                logger.warning("job %s: %s", job.id, outcome.describe())
            return outcome
        except asyncio.CancelledError:
            # The job ended without its worker (cancelled while queued, server closing).
            future.cancel()
            with contextlib.suppress(Exception):
                self._stop(launch)
            raise
        finally:
            self._launches.pop(job.id, None)
            self._release(launch)

    async def kill(self, job_id: str) -> None:
        """Force-stop the job's worker: cancel the task / kill the actor (no-op if gone)."""
        launch = self._launches.get(job_id)
        if launch is None or launch.killed:
            return
        logger.warning("job %s: stopping its Ray worker", job_id)
        await asyncio.to_thread(self._stop, launch, self._stop_grace)

    async def close(self) -> None:
        """Stop every worker still running (Ray itself belongs to the runtime)."""
        if self._ray_start is not None:
            self._ray_start.cancel()
        # Together: each kill may wait for its task's grace.
        await asyncio.gather(
            *(self.kill(job_id) for job_id in list(self._launches)), return_exceptions=True
        )


class RayTaskExecutor(_RayExecutorBase):
    """``task`` mode: each job's worker is a Ray task (never retried).

    ``warm_workers`` (the default): each Ray worker process keeps a fork server for the plugin
    code of its last job and forks each job's worker from it (see ``_supervisor``); False
    starts a fresh ``python -m synapse_server.worker`` for every job instead.
    """

    mode = "task"

    def __init__(self, *args: Any, warm_workers: bool = True, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._remote: Any = None
        self._warm = warm_workers

    def _launch(
        self,
        job: Job,
        credential: str,
        resources: RayResources,
        package: PluginPackage,
        env: Mapping[str, str],
    ) -> _Launch:
        import ray

        if self._remote is None:
            self._remote = ray.remote(_run_remote_worker)
        ref = self._remote.options(
            name=f"synapse-job-{job.id}",
            max_retries=0,
            retry_exceptions=False,
            **resources.ray_options(),
        ).remote(
            self._target(),
            job.id,
            credential,
            package,
            env,
            self.memory_limit_mb(resources),
            job.plugin,
            self._warm,
        )
        return _Launch(ref=ref)


class RayJobExecutor(_RayExecutorBase):
    """``job`` mode: each job gets its own actor process with the plugin's runtime environment.

    ``requirements.txt`` in the plugin directory becomes ``runtime_env.pip`` (Ray builds and
    caches a virtualenv per distinct list, on each node, from the package index).
    """

    mode = "job"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._actor_cls: Any = None

    @staticmethod
    def runtime_env(plugin_dir: Path) -> dict[str, Any]:
        """The plugin's own runtime environment."""
        env: dict[str, Any] = {}
        requirements = plugin_dir / "requirements.txt"
        if requirements.is_file():
            lines = [
                line.split("#", 1)[0].strip()
                for line in requirements.read_text(encoding="utf-8").splitlines()
            ]
            packages = [line for line in lines if line]
            if packages:
                env["pip"] = {"packages": packages, "pip_check": False}
        return env

    def _launch(
        self,
        job: Job,
        credential: str,
        resources: RayResources,
        package: PluginPackage,
        env: Mapping[str, str],
    ) -> _Launch:
        import ray

        if self._actor_cls is None:
            self._actor_cls = ray.remote(IsolatedWorkerActor)
        actor = self._actor_cls.options(
            name=f"synapse-job-{job.id}",
            max_restarts=0,
            max_task_retries=0,
            runtime_env=self.runtime_env(self._plugin_dir(job)),
            **resources.ray_options(),
        ).remote()
        ref = actor.run.remote(
            self._target(), job.id, credential, package, env, self.memory_limit_mb(resources)
        )
        return _Launch(ref=ref, actor=actor)
