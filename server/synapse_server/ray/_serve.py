"""Ray Serve adapters: the Infer router (handles) and the deployment backend (status, delete).

The router keeps one ``DeploymentHandle`` per application and one per (application, signed
model id), so the steady state of an Infer call is a single handle call with the
multiplexed model id set: Ray routes it to a replica that already has the model loaded.

Requests reach replicas over Serve's gRPC channel to each replica (``_by_reference=False``)
with plain pickle, by default: measured against Ray actor calls (Serve's default), it halves
the server's CPU per Infer call and so doubles the calls per second one server core can
route. ``transport="ray"`` keeps actor calls, for clusters where the server cannot open TCP
connections to the replicas' nodes. Requests and replies cross as the plain dicts of the
versioned serve protocol (``synapse_sdk.serving.wire``), so plain pickle is enough (it is
faster than cloudpickle) and the replica's SDK may be another version than the server's.

The router's handles route on the event loop that calls them (the gRPC server's), not on
Serve's shared router thread: a call then costs no hop to that thread and back, which was
a measurable share of an Infer call's latency. Serve's own proxies run their handles the
same way. Every call of a :class:`ServeRouter` must therefore come from one event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
from collections.abc import AsyncGenerator, Sequence
from typing import Any

from synapse_sdk.serving import (
    INFER_GROUP_METHOD,
    INFER_METHOD,
    INFER_STREAM_METHOD,
    REPLICA_INFO_METHOD,
    ProtocolVersionError,
    ReplicaInfo,
    ServeReply,
    ServeRequest,
    WireFormatError,
    format_version,
)

from synapse_server.core._errors import ResourceExhaustedError, ServiceUnavailableError
from synapse_server.core.batching import GroupNotSupportedError
from synapse_server.core.deployments import (
    AppObservation,
    DeploymentNotFoundError,
    DeploymentStatus,
    ReplicaRecord,
    ReplicaState,
)
from synapse_server.core.inference import InferDeadlineExceededError, ServeProtocolMismatchError
from synapse_server.ray._direct import (
    NOT_ROUTED,
    DirectReplicas,
    DirectTooLargeError,
    remove_registrations,
    serve_replica_states,
)
from synapse_server.ray._runtime import RayRuntime

logger = logging.getLogger(__name__)

__all__ = ["ServeDeploymentBackend", "ServeRouter"]

_STATUS = {
    "NOT_STARTED": DeploymentStatus.DEPLOYING,
    "DEPLOYING": DeploymentStatus.DEPLOYING,
    "RUNNING": DeploymentStatus.RUNNING,
    "UNHEALTHY": DeploymentStatus.UNHEALTHY,
    "DEPLOY_FAILED": DeploymentStatus.FAILED,
    "DELETING": DeploymentStatus.DELETING,
}
_MAX_CACHED_HANDLES = 4096
#: Ray Serve's limit on a message between a handle and a replica over its gRPC channel
#: (default 4 MiB), read from the environment when Ray Serve is imported.
REPLICA_MESSAGE_LIMIT_ENV = "RAY_SERVE_REPLICA_GRPC_MAX_MESSAGE_LENGTH"
#: What a request or answer gains over its payload on the way to a replica (the pickled
#: serve protocol message and Serve's own envelope).
_REPLICA_FRAMING_BYTES = 1 << 20
# A new handle's router is set up from one first poll of Serve's controller, answered in
# milliseconds; see ServeRouter._set_up_handle for why one may never be.
_ROUTER_SETUP_S = 3.0
_ROUTER_SETUP_TRIES = 3


def _allow_replica_messages(limit: int) -> None:
    """Let this process's gRPC channels to Serve replicas carry ``limit`` bytes.

    Serve reads the limit from the environment once, when it is imported: the server builds
    its router before it first imports Ray (and a local Ray head it starts inherits the
    variable). In a process that imported Serve earlier, the variable must have been set
    before that import.
    """
    if int(os.environ.get(REPLICA_MESSAGE_LIMIT_ENV) or 0) < limit:
        os.environ[REPLICA_MESSAGE_LIMIT_ENV] = str(limit)
    constants = sys.modules.get("ray.serve._private.constants")
    read = getattr(constants, REPLICA_MESSAGE_LIMIT_ENV, limit)
    if isinstance(read, int) and read < limit:
        logger.warning(
            "Ray Serve was imported before the Infer router was set up: Infer messages over "
            "%d bytes may be refused on the way to a replica (set %s before importing Ray)",
            read,
            REPLICA_MESSAGE_LIMIT_ENV,
        )


class ServeRouter:
    """Sends Infer requests to Ray Serve replicas through cached handles."""

    def __init__(
        self,
        runtime: RayRuntime,
        *,
        transport: str = "direct",
        max_message_bytes: int = 64 << 20,
    ) -> None:
        if transport not in ("direct", "grpc", "ray"):
            raise ValueError(f"transport must be 'direct', 'grpc' or 'ray', got {transport!r}")
        self._runtime = runtime
        # An Infer request or answer of up to max_message_bytes must pass Serve's channel to
        # the replica too (the replicas get the same limit from deploy()).
        self.replica_message_bytes = max_message_bytes + _REPLICA_FRAMING_BYTES
        if transport != "ray":
            _allow_replica_messages(self.replica_message_bytes)
        self._transport_options: dict[str, Any] = (
            {
                "_by_reference": False,
                "request_serialization": "pickle",
                "response_serialization": "pickle",
            }
            if transport != "ray"
            else {}
        )
        #: The direct path (transport "direct"): unary calls go to the replicas' own
        #: endpoints when they can, through the handles above when not.
        self.direct: DirectReplicas | None = (
            DirectReplicas(runtime, max_message_bytes=self.replica_message_bytes)
            if transport == "direct"
            else None
        )
        self._apps: dict[str, Any] = {}
        # (app, model id, replica method) -> (the app's handle, the handle bound to the id)
        self._bound: dict[tuple[str, str, str], tuple[Any, Any]] = {}
        # Calls in flight per app handle (by id), and forgotten app handles that still have
        # some: their routers are shut down when the last of those calls ends.
        self._in_flight: dict[int, int] = {}
        self._retired: dict[int, Any] = {}
        self._closing: set[asyncio.Task[None]] = set()
        # Held while an application's handle is made (rare: once per application).
        self._making = asyncio.Lock()

    def forget(self, app_name: str) -> None:
        """Drop what is known of an application (after it was deleted or redeployed): its
        handles and its replicas' direct endpoints."""
        if self.direct is not None:
            self.direct.forget(app_name)
        self._forget_handles(app_name)

    def _forget_handles(self, app_name: str) -> None:
        """Drop the handles of an application (a handle call failed: new ones are made)."""
        app = self._apps.pop(app_name, None)
        for key in [k for k in self._bound if k[0] == app_name]:
            del self._bound[key]
        if app is None:
            return
        if self._in_flight.get(id(app)):
            # Shutting its router down now would fail calls it could still answer or retry.
            self._retired[id(app)] = app
        else:
            self._shut_down(app)

    def _shut_down(self, app: Any) -> None:
        # A handle's router runs tasks on this loop (metrics, replica updates) until then.
        task = asyncio.get_running_loop().create_task(_shutdown_handle(app))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def close(self) -> None:
        """Shut down every handle's router (their tasks run on this loop) and close the
        direct path's channels."""
        if self.direct is not None:
            await self.direct.close()
        for app_name in list(self._apps):
            self.forget(app_name)
        # The server has drained its RPCs before this: calls still in flight are abandoned.
        for app in self._retired.values():
            self._shut_down(app)
        self._retired.clear()
        if self._closing:
            await asyncio.gather(*self._closing)

    async def _handle(
        self, app_name: str, multiplexed_model_id: str, method: str = INFER_METHOD
    ) -> tuple[Any, Any]:
        key = (app_name, multiplexed_model_id, method)
        found = self._bound.get(key)
        if found is not None:
            return found
        app = self._apps.get(app_name)
        if app is None:
            app = await self._app(app_name)
            found = self._bound.get(key)  # a concurrent call bound it meanwhile
            if found is not None:
                return found
        if len(self._bound) >= _MAX_CACHED_HANDLES:
            self._bound.clear()
        bound = app.options(
            method_name=method,
            multiplexed_model_id=multiplexed_model_id,
            stream=method == INFER_STREAM_METHOD,
            **self._transport_options,
        )
        self._bound[key] = (app, bound)
        return app, bound

    async def _app(self, app_name: str) -> Any:
        """The application's handle, made once however many calls ask for it at once.

        Each handle has a router of its own that must learn the replica set from Serve's
        controller before it routes; concurrent first calls that each made one left routers
        behind that were never shut down, and a request queued in a router that had not yet
        heard of the replicas could wait until its deadline.
        """
        async with self._making:
            app = self._apps.get(app_name)
            if app is None:
                await self._runtime.ensure_started()
                shared = await asyncio.to_thread(_app_handle, app_name)
                app = self._apps[app_name] = await self._set_up_handle(app_name, shared)
            return app

    async def _set_up_handle(self, app_name: str, shared: Any) -> Any:
        """A loop handle of the deployment whose router has heard from Serve's controller.

        Serve's router learns the deployment's config and replicas from a first poll of its
        own, which Serve stops as soon as the process's shared poller (per event loop) sends
        it an update. When that poller already follows the deployment (an earlier handle of
        it on this loop) and a replica-set update reaches it while the new router's poll is
        in flight, the poll's answer is dropped: the router may get the replicas but never
        the config, and every request on it waits until its deadline (seen in CI with Ray
        2.60, after a model load had just changed the replicas' model ids). A router not set
        up within ``_ROUTER_SETUP_S`` is shut down and replaced; the last try is kept
        whatever its state, and the calls on it wait within their own deadlines.
        """
        handle = _loop_handle(shared)
        for _ in range(_ROUTER_SETUP_TRIES - 1):
            if await _router_set_up(handle, _ROUTER_SETUP_S):
                break
            logger.warning(
                "Serve's router for %r got no deployment config within %.0f s: replacing it",
                app_name,
                _ROUTER_SETUP_S,
            )
            self._shut_down(handle)
            handle = _loop_handle(shared)
        return handle

    def _enter(self, app: Any) -> None:
        key = id(app)
        self._in_flight[key] = self._in_flight.get(key, 0) + 1

    def _leave(self, app: Any) -> None:
        key = id(app)
        left = self._in_flight.pop(key) - 1
        if left:
            self._in_flight[key] = left
        elif key in self._retired:
            self._shut_down(self._retired.pop(key))

    async def call(
        self,
        app_name: str,
        multiplexed_model_id: str,
        request: ServeRequest,
        timeout_s: float | None,
    ) -> ServeReply:
        """One request; cancels it in Ray when the deadline passes or the caller goes away."""
        answer = await self._call(
            app_name, multiplexed_model_id, INFER_METHOD, (request.to_wire(),), timeout_s
        )
        return _reply(app_name, answer)

    async def call_group(
        self,
        app_name: str,
        multiplexed_model_id: str,
        requests: Sequence[ServeRequest],
        timeout_s: float | None,
        waited_s: float = 0.0,
    ) -> list[ServeReply]:
        """Several requests for one model as one replica call (protocol 1.2), gathered for
        ``waited_s``; a reply per request, in order. Raises as :meth:`call` does, and
        :class:`GroupNotSupportedError` when the replicas have no group method or the group
        is over the channel's limit."""
        answer = await self._call(
            app_name,
            multiplexed_model_id,
            INFER_GROUP_METHOD,
            ([request.to_wire() for request in requests], waited_s),
            timeout_s,
        )
        if not isinstance(answer, list) or len(answer) != len(requests):
            raise ServiceUnavailableError(
                f"{app_name!r} did not answer a reply per request of a group of {len(requests)}"
            )
        return [_reply(app_name, item) for item in answer]

    async def _call(
        self,
        app_name: str,
        multiplexed_model_id: str,
        method: str,
        args: tuple[Any, ...],
        timeout_s: float | None,
    ) -> Any:
        if self.direct is not None:
            group = method == INFER_GROUP_METHOD
            loop = asyncio.get_running_loop()
            started = loop.time()
            try:
                answer = await self.direct.call(
                    app_name,
                    multiplexed_model_id,
                    list(args) if group else args[0],
                    timeout_s,
                    group=group,
                )
            except DirectTooLargeError as exc:
                if group and not exc.sent:
                    # Nothing ran: the group's requests are sent one by one instead.
                    raise GroupNotSupportedError(
                        f"{app_name!r} cannot take this group (over the message limit)"
                    ) from None
                raise
            if answer is not NOT_ROUTED:
                return answer
            if timeout_s is not None:
                timeout_s -= loop.time() - started
                if timeout_s <= 0:
                    raise InferDeadlineExceededError(
                        f"no answer from {app_name!r} within the deadline"
                    )
        app, handle = await self._handle(app_name, multiplexed_model_id, method)
        self._enter(app)
        try:
            response = handle.remote(*args)
            try:
                # asyncio.timeout, unlike wait_for, wraps the await in no extra task.
                async with asyncio.timeout(timeout_s):
                    answer = await response
            except TimeoutError:
                _cancel(response)
                raise InferDeadlineExceededError(
                    f"no answer from {app_name!r} within the deadline ({timeout_s:.3f}s)"
                ) from None
            except asyncio.CancelledError:
                _cancel(response)
                raise
            except Exception as exc:
                if method == INFER_GROUP_METHOD and (
                    _is_missing_method(exc, INFER_GROUP_METHOD) or _is_message_too_large(exc)
                ):
                    raise GroupNotSupportedError(
                        f"{app_name!r} cannot take this group ({type(exc).__name__})"
                    ) from exc
                raise self._translate(app_name, exc, streaming=False) from exc
        finally:
            self._leave(app)
        return answer

    async def stream(
        self,
        app_name: str,
        multiplexed_model_id: str,
        request: ServeRequest,
        timeout_s: float | None,
    ) -> AsyncGenerator[ServeReply, None]:
        """The replies of one streamed request, as the replica yields them.

        ``timeout_s`` bounds the whole stream. The request is cancelled in Ray (which
        cancels the replica's generator) when the deadline passes, the caller goes away or
        the generator is closed before the replica's stream ended. Over Serve's gRPC channel
        (the default transport) the replica's generator advances only as fast as the caller
        reads (gRPC flow control); over Ray actor calls Ray buffers the items it produced.
        """
        app, handle = await self._handle(app_name, multiplexed_model_id, INFER_STREAM_METHOD)
        loop = asyncio.get_running_loop()
        deadline = None if timeout_s is None else loop.time() + timeout_s
        self._enter(app)
        response = None
        finished = False
        try:
            response = handle.remote(request.to_wire())
            while True:
                try:
                    # Each wait, never a yield, inside the timeout: it applies to this task.
                    async with asyncio.timeout_at(deadline):
                        answer = await response.__anext__()
                except StopAsyncIteration:
                    finished = True
                    return
                except TimeoutError:
                    raise InferDeadlineExceededError(
                        f"{app_name!r} did not finish its stream within the deadline "
                        f"({timeout_s:.3f}s)"
                    ) from None
                except Exception as exc:
                    finished = True
                    raise self._translate(app_name, exc, streaming=True) from exc
                reply = _reply(app_name, answer)
                if reply.error_kind is not None:
                    # The replica's last message: its generator has ended.
                    finished = True
                yield reply
                if finished:
                    return
        finally:
            if response is not None and not finished:
                _cancel(response)
            self._leave(app)

    def _translate(self, app_name: str, exc: Exception, *, streaming: bool) -> Exception:
        """The domain error for what a Serve handle raised (unary and streamed calls alike)."""
        from ray import exceptions as ray_exceptions
        from ray.serve.exceptions import BackPressureError, RayServeException

        if isinstance(exc, BackPressureError):
            # Serve's max_queued_requests: the application's replicas and this server's queue
            # for them are full. Retrying at once would only add to it.
            return ResourceExhaustedError(
                f"{app_name!r} is overloaded: its replicas are busy and its queue is full "
                "(the deployment's max_queued_requests); retry later"
            )
        if streaming and _is_missing_method(exc, INFER_STREAM_METHOD):
            return ServeProtocolMismatchError(
                f"application {app_name!r}: its replicas cannot stream (their synapse-sdk "
                f"speaks a serve protocol older than {format_version((1, 1))}): redeploy it "
                "with a newer synapse-sdk"
            )
        if isinstance(
            exc,
            ray_exceptions.RayActorError
            | ray_exceptions.ActorUnavailableError
            | ray_exceptions.ObjectLostError
            | RayServeException,
        ):
            self._forget_handles(app_name)
            return ServiceUnavailableError(
                f"no replica of {app_name!r} is available ({type(exc).__name__})"
            )
        if isinstance(exc, ray_exceptions.RayTaskError):
            # The replica answers failures as values; an exception here is Serve's own.
            self._forget_handles(app_name)
            return ServiceUnavailableError(
                f"the replica of {app_name!r} failed ({type(exc).__name__})"
            )
        if _is_message_too_large(exc):
            return ResourceExhaustedError(
                f"the request to or the answer of {app_name!r} is over the "
                f"{self.replica_message_bytes} bytes a Serve replica's channel carries"
            )
        return exc


def _reply(app_name: str, answer: Any) -> ServeReply:
    """A replica's answer as a reply, or the error for an answer this server cannot read."""
    try:
        return ServeReply.from_wire(answer)
    except ProtocolVersionError as exc:
        raise ServeProtocolMismatchError(f"application {app_name!r}: {exc}") from None
    except WireFormatError as exc:
        raise ServiceUnavailableError(
            f"{app_name!r} answered something that is not a serve reply ({exc}): is its "
            "entrypoint a BaseServeDeployment deployed by deploy()?"
        ) from None


def _is_missing_method(exc: BaseException, method: str) -> bool:
    """True for a replica that has no ``method`` (an older SDK)."""
    cause = getattr(exc, "cause", None)
    for error in (exc, cause):
        if isinstance(error, AttributeError) or method in str(error or ""):
            return True
    return False


def _is_message_too_large(exc: BaseException) -> bool:
    """True for Serve's gRPC channel refusing a message over its size limit."""
    code = getattr(exc, "code", None)
    if callable(code):
        try:
            return str(code()) == "StatusCode.RESOURCE_EXHAUSTED"
        except Exception:
            return False
    return False


async def _router_set_up(handle: Any, timeout_s: float) -> bool:
    """Whether the handle's router received its deployment config within ``timeout_s``."""
    router = getattr(getattr(handle, "_router", None), "_asyncio_router", None)
    ready = getattr(router, "_request_router_initialized", None)
    if not isinstance(ready, asyncio.Event):
        return True  # a Serve without this state: nothing to check, the call's deadline holds
    try:
        async with asyncio.timeout(timeout_s):
            await ready.wait()
    except TimeoutError:
        return False
    return True


async def _shutdown_handle(handle: Any) -> None:
    try:
        async with asyncio.timeout(5):
            await handle.shutdown_async()
    except Exception:
        logger.warning("a Serve handle's router did not shut down cleanly", exc_info=True)


def _cancel(response: Any) -> None:
    """Cancel a handle call, in the replica too once it was assigned to one.

    With the router on the caller's loop, Ray's ``cancel()`` reaches the replica only when
    the awaiting coroutine had already taken the assigned replica's result. A deadline (or a
    caller going away) that lands in the same loop turn as the assignment misses it, and the
    request would go on in the replica: cancel the assigned result here in that case.
    """
    response.cancel()
    if getattr(response, "_replica_result", None) is not None:
        return
    assigned = getattr(response, "_replica_result_future", None)
    if (
        isinstance(assigned, asyncio.Future)
        and assigned.done()
        and not assigned.cancelled()
        and assigned.exception() is None
    ):
        assigned.result().cancel()


async def _await(response: Any) -> Any:
    return await response


def _loop_handle(shared: Any) -> Any:
    """A handle of the same deployment whose router runs on the calling event loop.

    ``serve.get_app_handle`` returns a process-wide cached handle whose router lives on
    Serve's own thread (and may already be initialised by other code in this process), so a
    new handle is made for the deployment and initialised here, on the loop that will use it.
    """
    from ray.serve.handle import DeploymentHandle

    handle: Any = DeploymentHandle(shared.deployment_name, shared.app_name)
    handle._init(_run_router_in_separate_loop=False)
    return handle


def _app_handle(app_name: str) -> Any:
    from ray import serve
    from ray.serve.exceptions import RayServeException

    try:
        return serve.get_app_handle(app_name)
    except RayServeException as exc:
        raise DeploymentNotFoundError(f"named {app_name!r} (not in Ray Serve)") from exc
    except ValueError as exc:
        raise DeploymentNotFoundError(f"named {app_name!r} (not in Ray Serve)") from exc


class ServeDeploymentBackend:
    """Observes and deletes Serve applications (the deployment service's ``ServeBackend``)."""

    def __init__(self, runtime: RayRuntime, router: ServeRouter | None = None) -> None:
        self._runtime = runtime
        self._router = router

    async def observe(
        self, app_name: str, *, start: bool = True, replica_timeout_s: float = 5.0
    ) -> AppObservation | None:
        """Status, message and replicas (with the models each has loaded, and whom each was
        deployed for) of an application; None when Serve has none of that name.

        ``start=False`` answers None rather than start or connect to Ray: no application can
        be in a Ray this server has not started or connected to.
        """
        if not start and not self._runtime.started:
            return None
        await self._runtime.ensure_started()
        observed = await asyncio.to_thread(_observe, app_name)
        if observed is None:
            return None
        status, message, replicas = observed
        deployed_for: set[tuple[str, str]] = set()
        if status in (DeploymentStatus.RUNNING, DeploymentStatus.UNHEALTHY) and replicas:
            infos = await self._replica_infos(app_name, len(replicas), replica_timeout_s)
            replicas = tuple(
                ReplicaRecord(
                    r.replica_id,
                    r.state,
                    tuple(infos[r.replica_id].loaded_model_ids if r.replica_id in infos else ()),
                    loaded_models_known=r.replica_id in infos,
                )
                for r in replicas
            )
            deployed_for = {d for i in infos.values() if (d := _deployed_for(i)) is not None}
        return AppObservation(status, message, replicas, frozenset(deployed_for))

    async def _replica_infos(
        self, app_name: str, count: int, timeout_s: float
    ) -> dict[str, ReplicaInfo]:
        """Replica id -> what it says (loaded models, tenant, application), for the replicas
        that answered within ``timeout_s``.

        A replica missing from the answer is reported with ``loaded_models_known=False``.
        """
        # Serve cannot address a replica by id through a handle; asking a few more times than
        # there are replicas reaches each one with high probability (power-of-two routing).
        try:
            handle = await asyncio.to_thread(_app_handle, app_name)
        except Exception:
            logger.info("could not ask %s for its loaded models", app_name, exc_info=True)
            return {}
        tasks = [
            asyncio.ensure_future(_await(handle.options(method_name=REPLICA_INFO_METHOD).remote()))
            for _ in range(count * 3)
        ]
        done, pending = await asyncio.wait(tasks, timeout=timeout_s)
        for task in pending:
            task.cancel()
        infos: dict[str, ReplicaInfo] = {}
        for task in done:
            answer = None if task.cancelled() or task.exception() is not None else task.result()
            info = ReplicaInfo.from_wire(answer)
            if info is not None:
                infos[info.replica_id] = info
        if pending or len(infos) < count:
            logger.info(
                "%s: %d of %d replicas told their loaded models in time",
                app_name,
                len(infos),
                count,
            )
        return infos

    async def delete(self, app_name: str) -> None:
        """Delete the application and wait until Serve has removed it."""
        await self._runtime.ensure_started()

        def _delete() -> None:
            from ray import serve

            serve.delete(app_name)

        try:
            await asyncio.to_thread(_delete)
        except Exception as exc:
            raise ServiceUnavailableError(f"could not delete {app_name!r}: {exc}") from exc
        with contextlib.suppress(Exception):
            await asyncio.to_thread(remove_registrations, app_name)
        if self._router is not None:
            self._router.forget(app_name)


def _deployed_for(info: ReplicaInfo) -> tuple[str, str] | None:
    """(tenant, application name) the replica was deployed for; None from a replica of an
    SDK that did not say (still running after an upgrade): its owner is unknown."""
    if info.tenant is None or info.app_name is None:
        return None
    return (info.tenant, info.app_name)


def _observe(app_name: str) -> tuple[DeploymentStatus, str, tuple[ReplicaRecord, ...]] | None:
    from ray import serve

    status = serve.status().applications.get(app_name)
    if status is None:
        return None
    mapped = _STATUS.get(str(status.status.value), DeploymentStatus.DEPLOYING)
    message = status.message or "; ".join(
        d.message for d in status.deployments.values() if d.message
    )
    replicas = [
        # Ray's state is an enum whose str() is "ReplicaState.RUNNING", not "RUNNING".
        ReplicaRecord(replica_id, ReplicaState.parse(state))
        for replica_id, state in serve_replica_states(app_name) or ()
    ]
    return mapped, message, tuple(replicas)
