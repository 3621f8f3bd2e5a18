"""A replica's direct endpoint: the platform's Infer router calls the replica over a gRPC
service of the replica's own, instead of through a Serve handle.

A Serve handle call costs the caller Serve's router (replica choice, queueing, metrics) and
the replica Serve's request wrapping, about half an Infer call's latency on a small model.
The direct endpoint carries the same serve protocol messages
(:mod:`synapse_sdk.serving.wire`) as msgpack, which any peer may send without risk (no
pickle), and answers them with the same :class:`~synapse_sdk.serving._replica.ReplicaRuntime`
calls Serve's path makes. Ray Serve keeps placement, scaling, health and restarts; the
server keeps its own routing for the direct calls (see ``synapse_server.ray._direct``).

Discovery: each replica registers ``{address, max_ongoing_requests, autoscaling}`` in Ray's
internal key-value store under its application and replica id, and removes the entry when
Serve stops it, after the direct calls in flight have finished. A request names the
application in its metadata and carries the application's signed model id, which the
replica checks before it decodes the message: a call that reaches another application's
replica (a port reused after a crash) or carries no valid id is refused, never answered.

``SYNAPSE_SERVE_DIRECT=0`` in a replica's environment (a plugin's ``runtime_env``) keeps its
endpoint closed; the server then reaches it through Serve's handle only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from typing import TYPE_CHECKING, Any

import msgpack

if TYPE_CHECKING:
    from synapse_sdk.serving._replica import ReplicaRuntime

logger = logging.getLogger(__name__)

__all__ = [
    "DIRECT_APP_METADATA",
    "DIRECT_ENV",
    "DIRECT_INFER",
    "DIRECT_INFER_GROUP",
    "DIRECT_KV_NAMESPACE",
    "DIRECT_REGISTRY_VERSION",
    "DirectEndpoint",
    "DirectMessageError",
    "DIRECT_MODEL_METADATA",
    "direct_enabled",
    "pack_direct_message",
    "registry_key",
    "registry_prefix",
    "unpack_direct_message",
]

#: Set to ``0`` in a replica's environment to keep its direct endpoint closed.
DIRECT_ENV = "SYNAPSE_SERVE_DIRECT"
#: The Ray internal KV namespace replicas register their direct endpoints in.
DIRECT_KV_NAMESPACE = "synapse-serve-direct"
#: The version of a registry entry's layout (a server ignores entries of another).
DIRECT_REGISTRY_VERSION = 1
_SERVICE = "synapse.serve.direct.v1.Replica"
#: One request message, answered by one reply message.
DIRECT_INFER = f"/{_SERVICE}/Infer"
#: ``[messages, waited_s]``, answered by a list of reply messages (protocol 1.2 groups).
DIRECT_INFER_GROUP = f"/{_SERVICE}/InferGroup"
#: Metadata: the application the caller means (the replica refuses another's calls).
DIRECT_APP_METADATA = "synapse-app"
#: Metadata: the request's signed model id (Serve's multiplexed model id on the handle path).
DIRECT_MODEL_METADATA = "synapse-model-id"
# msgpack ext type of an integer outside 64 bits (JSON integers have no bound).
_BIG_INT_EXT = 1
# Direct calls a replica holds at once: max_ongoing_requests for each of a few servers.
_SERVERS_SHARING = 4
_MIN_CONCURRENT_RPCS = 16
# How long a stopping replica lets its direct calls in flight finish.
_STOP_GRACE_S = 30.0


class DirectMessageError(ValueError):
    """Bytes that are not a msgpack serve message."""


def direct_enabled() -> bool:
    """Whether this process may open a direct endpoint (``SYNAPSE_SERVE_DIRECT`` != ``0``)."""
    return os.environ.get(DIRECT_ENV, "1").strip() != "0"


def registry_prefix(app_name: str) -> bytes:
    """The KV key prefix of an application's entries (no other application's keys share it:
    ``/`` and ``%`` in the name are escaped)."""
    return (app_name.replace("%", "%25").replace("/", "%2F") + "/").encode()


def registry_key(app_name: str, replica_id: str) -> bytes:
    """The KV key of one replica's entry."""
    return registry_prefix(app_name) + replica_id.encode()


def _widen(value: Any) -> Any:
    """``value`` with every integer outside 64 bits as an ext type (a slow path: only after
    msgpack refused the plain form)."""
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int):
        if -(1 << 63) <= value < (1 << 64):
            return value
        return msgpack.ExtType(_BIG_INT_EXT, str(value).encode())
    if isinstance(value, dict):
        return {k: _widen(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_widen(v) for v in value]
    return value


def _ext(code: int, data: bytes) -> Any:
    if code == _BIG_INT_EXT:
        try:
            return int(data.decode("ascii"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise DirectMessageError("an integer ext value is not a decimal integer") from exc
    raise DirectMessageError(f"unknown msgpack ext type {code}")


def pack_direct_message(value: Any) -> bytes:
    """``value`` (a serve protocol message, JSON values and bytes) as msgpack.

    Raises ``TypeError`` for a value msgpack cannot carry.
    """
    try:
        return msgpack.packb(value, use_bin_type=True)
    except OverflowError:
        return msgpack.packb(_widen(value), use_bin_type=True)


def unpack_direct_message(data: bytes) -> Any:
    """The message in ``data``; :class:`DirectMessageError` for anything else."""
    try:
        return msgpack.unpackb(data, raw=False, ext_hook=_ext)
    except DirectMessageError:
        raise
    except Exception as exc:  # msgpack raises several types for malformed input
        raise DirectMessageError(f"not a msgpack message ({type(exc).__name__})") from exc


class DirectEndpoint:
    """The gRPC server of one replica (started on the replica's event loop)."""

    def __init__(self, runtime: ReplicaRuntime, app_name: str, max_message_bytes: int) -> None:
        self._runtime = runtime
        self._app_name = app_name
        self._max_message_bytes = max_message_bytes
        self._server: Any = None
        self._key: bytes | None = None
        self.address: str | None = None
        self._grace_s = _STOP_GRACE_S

    async def start(self) -> None:
        """Serve on an ephemeral port of this node and register the address.

        Raises what failed; the replica runtime logs it and stops what was started, and the
        replica is then reached through Serve's handle only.
        """
        import grpc
        from ray import serve
        from ray.util import get_node_ip_address

        context = serve.get_replica_context()
        config = context._deployment_config
        host = get_node_ip_address()
        max_ongoing = int(config.max_ongoing_requests)
        # Leave Serve's force-kill a second after the calls in flight had their chance.
        self._grace_s = max(0.0, min(_STOP_GRACE_S, config.graceful_shutdown_timeout_s - 1.0))
        server = grpc.aio.server(
            # Each platform server sends at most max_ongoing_requests at once; a few servers
            # share a replica. Beyond this bound a call is refused (RESOURCE_EXHAUSTED) and
            # the server sends it through Serve's handle.
            maximum_concurrent_rpcs=max(_MIN_CONCURRENT_RPCS, _SERVERS_SHARING * max_ongoing),
            options=[
                ("grpc.max_receive_message_length", self._max_message_bytes),
                ("grpc.max_send_message_length", self._max_message_bytes),
                ("grpc.so_reuseport", 0),
                # The server pings every 30 s while a call is open (a vanished node).
                ("grpc.http2.min_recv_ping_interval_without_data_ms", 10_000),
            ],
        )
        server.add_generic_rpc_handlers(
            (
                grpc.method_handlers_generic_handler(
                    _SERVICE,
                    {
                        "Infer": grpc.unary_unary_rpc_method_handler(self._infer),
                        "InferGroup": grpc.unary_unary_rpc_method_handler(self._infer_group),
                    },
                ),
            )
        )
        bracketed = f"[{host}]" if ":" in host else host
        port = server.add_insecure_port(f"{bracketed}:0")
        await server.start()
        self._server = server
        self.address = f"{bracketed}:{port}"
        entry = {
            "v": DIRECT_REGISTRY_VERSION,
            "app": self._app_name,
            "replica": context.replica_id.unique_id,
            "address": self.address,
            "max_ongoing": max_ongoing,
            "autoscaling": config.autoscaling_config is not None,
        }
        self._key = registry_key(self._app_name, context.replica_id.unique_id)
        await asyncio.to_thread(_kv_put, self._key, pack_direct_message(entry))
        logger.info("direct endpoint of %s at %s", self._app_name, self.address)

    async def stop(self, grace_s: float | None = None) -> None:
        """Unregister, then stop once the calls in flight have finished (new ones are
        refused, and the server sends them through Serve's handle); those still running
        after ``grace_s`` (default: the deployment's ``graceful_shutdown_timeout_s`` less a
        second, at most 30 s) are cancelled."""
        server, self._server = self._server, None
        key, self._key = self._key, None
        if key is not None:
            with contextlib.suppress(Exception):
                await asyncio.to_thread(_kv_del, key)
        if server is not None:
            await server.stop(self._grace_s if grace_s is None else grace_s)

    async def _serve(self, request: bytes, context: Any, group: bool) -> bytes:
        import grpc
        from ray.serve import context as serve_context

        model_id = app = ""
        for key, value in context.invocation_metadata() or ():
            if key == DIRECT_MODEL_METADATA:
                model_id = value
            elif key == DIRECT_APP_METADATA:
                app = value
        if app != self._app_name:
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION, "this replica serves another application"
            )
        # Only a holder of this application's signed model id (the platform's server) gets
        # its message decoded. The server sends a call refused here through Serve's handle,
        # whose answer is then the replica's usual typed error.
        try:
            self._runtime.claims(model_id)
        except Exception:
            await context.abort(
                grpc.StatusCode.UNAUTHENTICATED,
                "the call carries no valid model id of this application",
            )
        # Serve's request context: what serve.get_multiplexed_model_id() answers on the
        # handle path (this RPC runs in a task of its own, the context is the task's).
        request_context: Any = serve_context._serve_request_context
        token = request_context.set(
            serve_context._RequestContext(app_name=app, multiplexed_model_id=model_id)
        )
        try:
            try:
                message = unpack_direct_message(request)
            except DirectMessageError as exc:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
            if group:
                if not (isinstance(message, list) and len(message) == 2):
                    await context.abort(
                        grpc.StatusCode.INVALID_ARGUMENT, "a group is [messages, waited_s]"
                    )
                answer: Any = await self._runtime.infer_group(message[0], message[1])
            else:
                answer = await self._runtime.infer(message)
            return pack_direct_message(answer)
        finally:
            request_context.reset(token)

    async def _infer(self, request: bytes, context: Any) -> bytes:
        return await self._serve(request, context, group=False)

    async def _infer_group(self, request: bytes, context: Any) -> bytes:
        return await self._serve(request, context, group=True)


def _kv_put(key: bytes, value: bytes) -> None:
    from ray.experimental.internal_kv import _internal_kv_put

    _internal_kv_put(key, value, overwrite=True, namespace=DIRECT_KV_NAMESPACE)


def _kv_del(key: bytes) -> None:
    from ray.experimental.internal_kv import _internal_kv_del

    _internal_kv_del(key, namespace=DIRECT_KV_NAMESPACE)
