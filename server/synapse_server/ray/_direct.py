"""Direct calls to Serve replicas: the Infer router's fast path beside Serve's handles.

Each replica of a deployment made by ``deploy()`` serves the platform's requests on a gRPC
endpoint of its own and registers it in Ray's internal KV (``synapse_sdk.serving._direct``).
This module follows those registrations per application (read again at most every
``refresh_s`` while calls come, and at once after a failed call), picks a replica for each
call and sends the serve protocol message to it as msgpack.

Routing: a replica takes at most its deployment's ``max_ongoing_requests`` direct calls at
once; among those with room, a call for a model goes to a replica this server already sent
that model to (it has the model loaded), else to the less loaded of two picked at random.
Ray Serve still places, scales, health-checks and restarts the replicas.

A call is *not routed* (the caller sends it through Serve's handle instead) when the
application has no registered replica, when its deployment autoscales (Serve's autoscaler
counts only the requests it routes), when every replica is full (Serve's handle then queues
the call, or refuses it past ``max_queued_requests``), when the message does not fit msgpack,
and when the replica cannot be reached or no longer serves the application. A replica that
dies in the middle of a call may have begun it: the call is then run again through Serve.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from synapse_sdk.serving import (
    DIRECT_APP_METADATA,
    DIRECT_INFER,
    DIRECT_INFER_GROUP,
    DIRECT_KV_NAMESPACE,
    DIRECT_MODEL_METADATA,
    DIRECT_REGISTRY_VERSION,
    DirectMessageError,
    pack_direct_message,
    registry_key,
    registry_prefix,
    unpack_direct_message,
)

from synapse_server.core._errors import ResourceExhaustedError, ServiceUnavailableError
from synapse_server.core.deployments import ReplicaState
from synapse_server.core.inference import InferDeadlineExceededError
from synapse_server.ray._runtime import RayRuntime

logger = logging.getLogger(__name__)

__all__ = ["NOT_ROUTED", "DirectReplicas", "DirectTooLargeError", "remove_registrations"]

#: What :meth:`DirectReplicas.call` answers when the call must go through Serve's handle.
NOT_ROUTED: Any = object()
# A replica that could not be reached is left out for this long (its registration may stay
# behind when it was killed).
_QUARANTINE_S = 5.0
# Pings on a direct channel while calls are open (the replica allows them this often).
_KEEPALIVE_MS = 30_000
_KEEPALIVE_TIMEOUT_MS = 10_000
# Models remembered per replica set (the replica that has each loaded).
_MAX_MODELS = 4096


class DirectTooLargeError(ResourceExhaustedError):
    """The request or its answer is over the direct channel's message limit. ``sent`` is
    False when the request was refused before it left this server (nothing ran)."""

    def __init__(self, message: str, *, sent: bool) -> None:
        super().__init__(message)
        self.sent = sent


@dataclass
class _Replica:
    replica_id: str
    address: str
    max_ongoing: int
    channel: Any
    infer: Any
    infer_group: Any
    in_flight: int = 0
    # Dropped from the replica set: its channel closes once its last call ends.
    retired: bool = False


@dataclass
class _App:
    replicas: dict[str, _Replica] = field(default_factory=dict)
    # False while the deployment autoscales or no replica registered.
    direct: bool = False
    fetched_at: float = -1e9
    refreshing: asyncio.Task[None] | None = None
    # signed model id -> the replica id this server last sent it to
    holders: dict[str, str] = field(default_factory=dict)
    # replica id -> loop time until which it is left out
    quarantined: dict[str, float] = field(default_factory=dict)
    # Replicas a call could not reach and that have not answered since.
    suspects: set[str] = field(default_factory=set)


class DirectReplicas:
    """The direct path of one server's Infer router (all calls from one event loop)."""

    def __init__(
        self,
        runtime: RayRuntime,
        *,
        max_message_bytes: int,
        refresh_s: float = 1.0,
        registry: Callable[[str, set[str], set[str]], list[dict[str, Any]]] | None = None,
    ) -> None:
        self._runtime = runtime
        self._max_message_bytes = max_message_bytes
        self._refresh_s = refresh_s
        # (application, suspect replica ids, known replica ids) -> its registrations of
        # replicas that may be called (run in a thread).
        self._registry = registry or read_registrations
        self._apps: dict[str, _App] = {}
        self._closing: set[asyncio.Task[None]] = set()
        #: Calls answered over the direct path, and calls handed back to Serve's handle.
        self.direct_calls = 0
        self.not_routed = 0

    def route_counts(self) -> dict[str, int]:
        """Unary calls so far by route: ``direct`` answered by a replica's endpoint, ``serve``
        handed to Serve's handle (read by the metrics at scrape time)."""
        return {"direct": self.direct_calls, "serve": self.not_routed}

    # Calls -----------------------------------------------------------------------------------

    async def call(
        self,
        app_name: str,
        model_token: str,
        body: Any,
        timeout_s: float | None,
        *,
        group: bool,
    ) -> Any:
        """The replica's answer (unpacked), or :data:`NOT_ROUTED`.

        Raises :class:`InferDeadlineExceededError` when ``timeout_s`` passes,
        :class:`DirectTooLargeError` for a message over the limit, and
        :class:`ServiceUnavailableError` for a replica that failed in the call.
        """
        loop = asyncio.get_running_loop()
        app = self._apps.get(app_name)
        if app is None:
            app = self._apps[app_name] = _App()
        if loop.time() - app.fetched_at >= self._refresh_s:
            self._refresh_soon(app_name, app)
        replica = self._pick(app, model_token, loop.time()) if app.direct else None
        if replica is None:
            self.not_routed += 1
            return NOT_ROUTED
        try:
            data = pack_direct_message(body)
        except (TypeError, ValueError, OverflowError):
            self.not_routed += 1
            return NOT_ROUTED
        if len(data) > self._max_message_bytes:
            # Refused before anything ran (a group may then be split and sent again).
            raise DirectTooLargeError(
                f"the request to {app_name!r} is over the {self._max_message_bytes} bytes a "
                "replica's channel carries",
                sent=False,
            )
        method = replica.infer_group if group else replica.infer
        replica.in_flight += 1
        try:
            raw = await method(
                data,
                timeout=timeout_s,
                metadata=((DIRECT_APP_METADATA, app_name), (DIRECT_MODEL_METADATA, model_token)),
            )
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is None or task.cancelling():
                raise  # the caller's own cancel (its deadline, or it went away)
            # The channel was closed under the call (this server is shutting down).
            raise ServiceUnavailableError(
                f"the channel to a replica of {app_name!r} closed during the call"
            ) from None
        except Exception as exc:
            return self._failed(app_name, app, replica, exc, timeout_s)
        finally:
            replica.in_flight -= 1
            if replica.retired and not replica.in_flight:
                self._close_channel(replica)
        app.suspects.discard(replica.replica_id)
        try:
            answer = unpack_direct_message(raw)
        except DirectMessageError as exc:
            raise ServiceUnavailableError(
                f"a replica of {app_name!r} answered an unreadable message ({exc})"
            ) from None
        self.direct_calls += 1
        return answer

    def _failed(
        self, app_name: str, app: _App, replica: _Replica, exc: Exception, timeout_s: float | None
    ) -> Any:
        import grpc

        code = exc.code() if isinstance(exc, grpc.aio.AioRpcError) else None
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            raise InferDeadlineExceededError(
                f"no answer from {app_name!r} within the deadline ({timeout_s or 0:.3f}s)"
            ) from None
        if code == grpc.StatusCode.UNAUTHENTICATED:
            # The replica could not verify the model id (e.g. deployed with another key):
            # Serve's handle path answers with the replica's typed error.
            self.not_routed += 1
            return NOT_ROUTED
        if code == grpc.StatusCode.RESOURCE_EXHAUSTED and "concurrent rpc" in _details(exc):
            # The replica holds as many direct calls as it takes (several servers): Serve's
            # handle queues this one, or refuses it past max_queued_requests.
            self.not_routed += 1
            return NOT_ROUTED
        if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
            raise DirectTooLargeError(
                f"the request to or the answer of {app_name!r} is over the "
                f"{self._max_message_bytes} bytes a replica's channel carries",
                sent=True,
            ) from None
        if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.FAILED_PRECONDITION):
            # Not reachable, stopping, or another application's replica on a reused port.
            logger.info(
                "replica %s of %s not reached directly (%s); through Serve instead",
                replica.replica_id,
                app_name,
                code.name,
            )
            self._leave_out(app, replica)
            app.suspects.add(replica.replica_id)
            app.fetched_at = -1e9
            self._refresh_soon(app_name, app)
            self.not_routed += 1
            return NOT_ROUTED
        name = code.name if code is not None else type(exc).__name__
        raise ServiceUnavailableError(f"the replica of {app_name!r} failed ({name})") from None

    def _pick(self, app: _App, model_token: str, now: float) -> _Replica | None:
        replicas = [
            r
            for r in app.replicas.values()
            if r.in_flight < r.max_ongoing and app.quarantined.get(r.replica_id, 0.0) <= now
        ]
        if not replicas:
            return None
        held = app.holders.get(model_token)
        if held is not None:
            for replica in replicas:
                if replica.replica_id == held:
                    return replica
        if len(replicas) == 1:
            chosen = replicas[0]
        else:
            a, b = random.sample(replicas, 2)
            chosen = a if a.in_flight <= b.in_flight else b
        if len(app.holders) >= _MAX_MODELS:
            app.holders.clear()
        app.holders[model_token] = chosen.replica_id
        return chosen

    def _leave_out(self, app: _App, replica: _Replica) -> None:
        loop = asyncio.get_running_loop()
        app.quarantined[replica.replica_id] = loop.time() + _QUARANTINE_S
        for token in [t for t, r in app.holders.items() if r == replica.replica_id]:
            del app.holders[token]

    # The replica set -------------------------------------------------------------------------

    def _refresh_soon(self, app_name: str, app: _App) -> None:
        if app.refreshing is not None and not app.refreshing.done():
            return
        app.refreshing = asyncio.get_running_loop().create_task(self._refresh(app_name, app))

    async def _refresh(self, app_name: str, app: _App) -> None:
        try:
            await self._runtime.ensure_started()
            entries = await asyncio.to_thread(
                self._registry, app_name, set(app.suspects), set(app.replicas)
            )
        except Exception:
            # Keep what is known: its calls go on, and fail over one by one if they must.
            logger.debug("could not read the direct endpoints of %s", app_name, exc_info=True)
            entries = None
        app.fetched_at = asyncio.get_running_loop().time()
        if entries is None or self._apps.get(app_name) is not app:
            return  # unread, or forgotten meanwhile
        self._apply(app, entries)

    def _apply(self, app: _App, entries: Sequence[dict[str, Any]]) -> None:
        import grpc

        seen: dict[str, dict[str, Any]] = {e["replica"]: e for e in entries}
        for replica_id in [r for r in app.replicas if r not in seen]:
            self._drop(app, replica_id)
        for replica_id, entry in seen.items():
            known = app.replicas.get(replica_id)
            if known is not None and known.address == entry["address"]:
                known.max_ongoing = entry["max_ongoing"]
                continue
            if known is not None:
                self._drop(app, replica_id)
            channel = grpc.aio.insecure_channel(
                entry["address"],
                options=[
                    ("grpc.max_receive_message_length", self._max_message_bytes),
                    ("grpc.max_send_message_length", self._max_message_bytes),
                    # A call without a deadline to a node that vanished (no reset) fails
                    # within about 40 s instead of hanging until TCP gives up.
                    ("grpc.keepalive_time_ms", _KEEPALIVE_MS),
                    ("grpc.keepalive_timeout_ms", _KEEPALIVE_TIMEOUT_MS),
                ],
            )
            app.replicas[replica_id] = _Replica(
                replica_id=replica_id,
                address=entry["address"],
                max_ongoing=entry["max_ongoing"],
                channel=channel,
                infer=channel.unary_unary(DIRECT_INFER),
                infer_group=channel.unary_unary(DIRECT_INFER_GROUP),
            )
        now = asyncio.get_running_loop().time()
        app.quarantined = {r: t for r, t in app.quarantined.items() if t > now and r in seen}
        app.suspects &= seen.keys()
        app.direct = bool(app.replicas) and not any(e["autoscaling"] for e in entries)

    def _drop(self, app: _App, replica_id: str) -> None:
        replica = app.replicas.pop(replica_id, None)
        if replica is not None:
            # Its calls in flight go on; the channel closes after the last of them.
            replica.retired = True
            if not replica.in_flight:
                self._close_channel(replica)
        app.quarantined.pop(replica_id, None)

    def _close_channel(self, replica: _Replica) -> None:
        task = asyncio.get_running_loop().create_task(_close_quietly(replica.channel))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    def forget(self, app_name: str) -> None:
        """Drop what is known of ``app_name`` (deleted or redeployed)."""
        app = self._apps.pop(app_name, None)
        if app is None:
            return
        if app.refreshing is not None:
            app.refreshing.cancel()
        for replica_id in list(app.replicas):
            self._drop(app, replica_id)

    async def close(self) -> None:
        """Close every channel (the server has drained its calls before this)."""
        for app_name in list(self._apps):
            self.forget(app_name)
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)


def _details(exc: Exception) -> str:
    details = getattr(exc, "details", None)
    try:
        return str(details() if callable(details) else "").lower()
    except Exception:
        return ""


async def _close_quietly(channel: Any) -> None:
    with contextlib.suppress(Exception):
        await channel.close(None)


def _read_registry(app_name: str) -> list[dict[str, Any]]:
    """The registered direct endpoints of ``app_name`` (entries of other layouts skipped)."""
    from ray.experimental.internal_kv import _internal_kv_get, _internal_kv_list

    entries = []
    for key in _internal_kv_list(registry_prefix(app_name), namespace=DIRECT_KV_NAMESPACE):
        raw = _internal_kv_get(key, namespace=DIRECT_KV_NAMESPACE)
        if raw is None:
            continue
        try:
            entry = unpack_direct_message(raw)
        except DirectMessageError:
            continue
        if (
            isinstance(entry, dict)
            and entry.get("v") == DIRECT_REGISTRY_VERSION
            and entry.get("app") == app_name
            and isinstance(entry.get("replica"), str)
            and isinstance(entry.get("address"), str)
            and type(entry.get("max_ongoing")) is int
            and entry["max_ongoing"] > 0
            and isinstance(entry.get("autoscaling"), bool)
        ):
            entries.append(entry)
    return entries


def read_registrations(app_name: str, suspects: set[str], known: set[str]) -> list[dict[str, Any]]:
    """The registered direct endpoints of ``app_name`` that may be called.

    A replica registers as its constructor returns, before Serve has finished starting it
    (``reconfigure``) and counts it RUNNING: one not in ``known`` is taken only once Serve
    lists it RUNNING. Registrations of replicas Serve no longer lists are removed (a killed
    replica cannot remove its own): checked for new entries and for ``suspects``, replicas a
    call could not reach. Serve's controller is asked only when there is one of those.
    """
    entries = _read_registry(app_name)
    if not suspects and all(e["replica"] in known for e in entries):
        return entries
    states = serve_replica_states(app_name)
    if states is None:
        return [e for e in entries if e["replica"] in known]
    listed = dict(states)
    # Serve lists a replica from before its constructor runs: one it does not list is gone.
    for replica_id in (suspects | {e["replica"] for e in entries}) - listed.keys():
        _unregister(app_name, replica_id)
    running = {
        replica_id
        for replica_id, state in listed.items()
        if ReplicaState.parse(state) is ReplicaState.RUNNING
    }
    return [e for e in entries if e["replica"] in known or e["replica"] in running]


def serve_replica_states(app_name: str) -> list[tuple[str, str]] | None:
    """``(replica id, state)`` of every replica Serve's controller lists for ``app_name``;
    None when the controller did not answer."""
    try:
        import ray
        from ray.serve.context import _get_global_client

        client: Any = _get_global_client()
        details: Any = ray.get(client._controller.get_serve_instance_details.remote(), timeout=10)
        app = (details.get("applications") or {}).get(app_name) or {}
        return [
            (str(replica["replica_id"]), str(replica["state"]))
            for deployment in (app.get("deployments") or {}).values()
            for replica in deployment.get("replicas") or ()
        ]
    except Exception:
        logger.debug("replica details of %s unavailable", app_name, exc_info=True)
        return None


def _unregister(app_name: str, replica_id: str) -> None:
    from ray.experimental.internal_kv import _internal_kv_del

    _internal_kv_del(registry_key(app_name, replica_id), namespace=DIRECT_KV_NAMESPACE)
    logger.info("removed the endpoint of replica %s of %s (gone from Serve)", replica_id, app_name)


def remove_registrations(app_name: str) -> None:
    """Delete every registration of ``app_name`` (the application was deleted; entries of
    replicas that were killed would otherwise stay behind)."""
    from ray.experimental.internal_kv import _internal_kv_del

    _internal_kv_del(registry_prefix(app_name), del_by_prefix=True, namespace=DIRECT_KV_NAMESPACE)
