"""StreamProgress's messages, encoded once per event whatever the number of subscribers.

Every subscriber of a job receives the same ``StreamProgressResponse`` for each event. Building
the protobuf message and serializing it per subscriber made the conversion the largest Python
cost of a stream with many subscribers (bench/bench_progress.py, 100 subscribers: about a
fifth of the server's samples). :class:`EncodedEvents` keeps the wire bytes of recent events
by ``(job_id, seq)``, which names one stored event for good (an event becomes visible only once
stored, and a stored event never changes), and the ActionService is registered with a
StreamProgress response serializer that passes those bytes to grpc as they are
(:func:`add_action_service`).

A subscriber that reads batches (``max_events_per_message`` above 1) gets the events that are
ready at once in one ``JobEventBatch`` message (:meth:`EncodedEvents.batches`): its repeated
``events`` field is number 1 like ``StreamProgressResponse.event``, so each event's cached
bytes are already its entry in the batch, and a batch is those bytes joined behind one field
header. The per-message cost of a stream (grpc's write, the loop's wake-ups) is most of what
a delivered event costs; a burst of a hundred events becomes one message.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import grpc
from synapse.plugin.v1 import action_service_pb2, action_service_pb2_grpc

from synapse_server.core import JobEvent
from synapse_server.grpc import _converters as conv

__all__ = [
    "MAX_BATCH_BYTES",
    "MAX_EVENTS_PER_MESSAGE",
    "EncodedEvents",
    "add_action_service",
    "pass_bytes",
]

# Enough for the recent events of many live jobs: subscribers of a live job read within the
# hub's in-memory tail (1,024 events) of the newest one. An event that fell out is encoded
# again, which costs time only.
_CAPACITY = 8192
# At most this many events in one batch message, whatever the request asks for.
MAX_EVENTS_PER_MESSAGE = 1024
# At most this many bytes of events in one batch message: every client receives 4 MiB by
# default. An event larger than that goes alone, as `event`.
MAX_BATCH_BYTES = 1 << 20
# StreamProgressResponse field 3 (events), length-delimited.
_EVENTS_TAG = b"\x1a"


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


class EncodedEvents:
    """The serialized ``StreamProgressResponse`` of recent events, first in first out."""

    __slots__ = ("_capacity", "_encoded")

    def __init__(self, capacity: int = _CAPACITY) -> None:
        self._capacity = capacity
        self._encoded: dict[tuple[str, int], bytes] = {}

    def __len__(self) -> int:
        return len(self._encoded)

    def get(self, event: JobEvent) -> bytes:
        """The wire bytes of ``event``'s response, encoded at its first request."""
        key = (event.job_id, event.seq)
        data = self._encoded.get(key)
        if data is None:
            data = action_service_pb2.StreamProgressResponse(
                event=conv.event_to_pb(event)
            ).SerializeToString()
            encoded = self._encoded
            if len(encoded) >= self._capacity:
                # dicts keep insertion order: the oldest entry goes first.
                del encoded[next(iter(encoded))]
            encoded[key] = data
        return data

    def batches(
        self, events: Sequence[JobEvent], max_events: int, max_bytes: int = MAX_BATCH_BYTES
    ) -> Iterator[bytes]:
        """The wire bytes of ``events`` as few messages as the limits allow, in order: runs
        of up to ``max_events`` events and ``max_bytes`` bytes in one ``events`` message each
        (a run of one event as its plain ``event`` message)."""
        run: list[bytes] = []
        size = 0
        for event in events:
            data = self.get(event)
            if run and (len(run) >= max_events or size + len(data) > max_bytes):
                yield _batch(run)
                run, size = [], 0
            run.append(data)
            size += len(data)
        if run:
            yield _batch(run)


def _batch(encoded: list[bytes]) -> bytes:
    if len(encoded) == 1:
        return encoded[0]
    # Each event's `StreamProgressResponse{event}` bytes are its JobEventBatch.events entry.
    body = b"".join(encoded)
    return _EVENTS_TAG + _varint(len(body)) + body


def pass_bytes(message: Any) -> bytes:
    """StreamProgress's response serializer: encoded bytes pass as they are."""
    if isinstance(message, bytes):
        return message
    return bytes(message.SerializeToString())


class _HandlersOf:
    """Stands in for the server to read the generated registration's method handlers."""

    handlers: dict[str, grpc.RpcMethodHandler]

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        pass

    def add_registered_method_handlers(
        self, service: str, handlers: dict[str, grpc.RpcMethodHandler]
    ) -> None:
        self.handlers = dict(handlers)


def add_action_service(servicer: Any, server: grpc.aio.Server) -> None:
    """``add_ActionServiceServicer_to_server`` with StreamProgress sending bytes as they are."""
    probe = _HandlersOf()
    action_service_pb2_grpc.add_ActionServiceServicer_to_server(servicer, probe)
    handlers = probe.handlers
    handlers["StreamProgress"] = grpc.unary_stream_rpc_method_handler(
        servicer.StreamProgress,
        request_deserializer=action_service_pb2.StreamProgressRequest.FromString,
        response_serializer=pass_bytes,
    )
    name = "synapse.plugin.v1.ActionService"
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(name, handlers),))
    server.add_registered_method_handlers(name, handlers)
