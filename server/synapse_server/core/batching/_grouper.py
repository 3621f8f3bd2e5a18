"""Server-side grouping of concurrent Infer calls to a batched endpoint.

A replica that batches an endpoint already groups the requests that reach it into one call
of the model. Each of them still travels alone from the server: its own Serve handle call,
its own message to the replica and its own reply, which on a small machine costs more than
the model call it shares. :class:`RequestGrouper` gathers them in the server first.

* The server learns that an endpoint batches from the replica's reply: a reply of a batched
  endpoint carries ``group`` (its deployment's ``max_batch_size`` and
  ``batch_wait_timeout_s``, serve protocol 1.2). Until such a reply arrives, and for
  endpoints that do not batch, calls go alone as before.
* Calls for the same application, signed model id (so the same tenant and model: a group
  never mixes models), method and path wait together for up to ``batch_wait_timeout_s``
  after the first one arrived, or until ``max_batch_size`` of them wait, and then go as one
  group: one handle call, a list of requests in and a list of replies out. The group says
  how long it was held, and the replica's batch queue counts that time as waited, so the
  batch wait is not paid twice.
* Each call keeps its own reply: a request that fails in the replica fails alone. A call
  cancelled (its caller went away, or its deadline passed) before its group left is left out
  of the group; a group whose callers have all gone is cancelled in Ray.
* What is held is bounded: a group leaves when it is full, so at most ``max_batch_size``
  calls wait per key, and groups in flight count against the application's Serve queue
  (``max_queued_requests``), which refuses more with RESOURCE_EXHAUSTED.
* A replica is the tenant's code: the server caps the size and the wait it advertises
  (:data:`MAX_GROUP_WAIT_S`), and a group the replicas cannot take (no group method, or a
  message over the channel's limit) is sent again one request at a time.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from synapse_sdk.serving import MAX_GROUP_SIZE, ServeReply, ServeRequest

from synapse_server.core._errors import ServerError

logger = logging.getLogger(__name__)

__all__ = [
    "MAX_GROUP_WAIT_S",
    "GroupBackend",
    "GroupNotSupportedError",
    "GroupSettings",
    "RequestGrouper",
]

#: The longest the server holds a call to gather a group, whatever a replica advertises.
MAX_GROUP_WAIT_S = 0.1
#: Endpoints whose grouping the server remembers (a route with path parameters has many
#: paths); the memory is dropped when full and learned again from the next replies.
_MAX_ENDPOINTS = 4096


class GroupNotSupportedError(ServerError):
    """The replicas cannot take this group (an SDK without the group method, or a group over
    the replica channel's message limit); its requests are sent one at a time instead."""


class GroupBackend(Protocol):
    """What the grouper sends through (the Infer router)."""

    async def call(
        self,
        app_name: str,
        multiplexed_model_id: str,
        request: ServeRequest,
        timeout_s: float | None,
    ) -> ServeReply:
        """One request's reply (sent alone; cancelled in the replicas when the deadline
        passes or the caller goes away)."""
        ...

    async def call_group(
        self,
        app_name: str,
        multiplexed_model_id: str,
        requests: Sequence[ServeRequest],
        timeout_s: float | None,
        waited_s: float = 0.0,
    ) -> list[ServeReply]:
        """A reply per request, in order, from one replica call (``waited_s``: how long the
        server held the group). Raises as :meth:`call` does, and
        :class:`GroupNotSupportedError` when the replicas cannot take the group (its
        requests are then sent one at a time)."""
        ...


@dataclass(frozen=True, slots=True)
class GroupSettings:
    """How long and how large a group of calls to one endpoint may grow."""

    max_size: int
    wait_s: float


@dataclass(eq=False, slots=True)
class _Member:
    request: ServeRequest
    #: Event-loop time by which the caller wants its answer (None: no deadline).
    deadline: float | None
    future: asyncio.Future[ServeReply]


@dataclass(eq=False, slots=True)
class _Group:
    #: Event-loop time the first member arrived.
    started: float
    members: list[_Member] = field(default_factory=list)
    timer: asyncio.TimerHandle | None = None
    #: The task that sends the group; set when it leaves.
    task: asyncio.Task[None] | None = None


class RequestGrouper:
    """Gathers concurrent calls to batched endpoints into groups (see the module docstring).

    Lives on the server's event loop; every call comes from it.
    """

    def __init__(self, backend: GroupBackend) -> None:
        self._backend = backend
        # (application, method, path) -> what its replicas advertised.
        self._settings: dict[tuple[str, str, str], GroupSettings] = {}
        # (application, signed model id, method, path) -> the group gathering now.
        self._open: dict[tuple[str, str, str, str], _Group] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def settings_for(self, app_name: str, request: ServeRequest) -> GroupSettings | None:
        """How calls like ``request`` are grouped; None: they go alone."""
        return self._settings.get((app_name, request.method, request.path))

    def learn(self, app_name: str, request: ServeRequest, reply: ServeReply) -> None:
        """Remember what a reply says of its endpoint's batching."""
        key = (app_name, request.method, request.path)
        if reply.group is None:
            if reply.error_kind is None:
                # A successful reply without it: the endpoint does not batch (any more).
                self._settings.pop(key, None)
            return
        size, wait = reply.group
        if size < 2:
            self._settings.pop(key, None)
            return
        settings = GroupSettings(min(size, MAX_GROUP_SIZE), min(wait, MAX_GROUP_WAIT_S))
        if self._settings.get(key) != settings:
            if len(self._settings) >= _MAX_ENDPOINTS:
                self._settings.clear()
            self._settings[key] = settings

    async def call(
        self,
        app_name: str,
        multiplexed_model_id: str,
        request: ServeRequest,
        timeout_s: float | None,
        settings: GroupSettings,
    ) -> ServeReply:
        """``request``'s reply, sent in a group with the concurrent calls like it.

        Raises what the backend raised for its group (or for it alone). Cancelling the
        awaiting task leaves the request out of a group that has not left yet.
        """
        loop = asyncio.get_running_loop()
        key = (app_name, multiplexed_model_id, request.method, request.path)
        group = self._open.get(key)
        if group is None:
            group = self._open[key] = _Group(loop.time())
            # A context of its own: no caller's log context or span follows the group.
            group.timer = loop.call_later(
                settings.wait_s, self._send, key, group, context=contextvars.Context()
            )
        deadline = None if timeout_s is None else loop.time() + timeout_s
        member = _Member(request, deadline, loop.create_future())
        group.members.append(member)
        if len(group.members) >= settings.max_size:
            self._send(key, group)
        try:
            # Cancelling this await cancels the future: the group then leaves it out.
            return await member.future
        finally:
            task = group.task
            if (
                member.future.cancelled()
                and task is not None
                and all(other.future.done() for other in group.members)
            ):
                # Every caller of the group has gone: stop its call in Ray too.
                task.cancel()

    def _send(self, key: tuple[str, str, str, str], group: _Group) -> None:
        """Start sending ``group`` (when its wait ends or it is full)."""
        if self._open.get(key) is group:
            del self._open[key]
        if group.timer is not None:
            group.timer.cancel()
        if group.task is not None:
            return
        group.members = [member for member in group.members if not member.future.done()]
        if not group.members:
            return
        loop = asyncio.get_running_loop()
        group.task = loop.create_task(
            self._run(key[0], key[1], group.members, loop.time() - group.started),
            context=contextvars.Context(),
        )
        self._tasks.add(group.task)
        group.task.add_done_callback(self._tasks.discard)

    async def _run(
        self, app_name: str, model_id: str, members: list[_Member], waited_s: float
    ) -> None:
        try:
            try:
                # A group of one too: the replica then knows it waited already.
                replies = await self._backend.call_group(
                    app_name,
                    model_id,
                    [member.request for member in members],
                    _timeout(members),
                    waited_s,
                )
            except GroupNotSupportedError as exc:
                logger.info("sending a group of %d alone: %s", len(members), exc)
                await asyncio.gather(
                    *(self._alone(app_name, model_id, member) for member in members)
                )
                return
            except Exception as exc:
                for member in members:
                    if not member.future.done():
                        member.future.set_exception(exc)
                return
            for member, reply in zip(members, replies, strict=True):
                if not member.future.done():
                    member.future.set_result(reply)
        finally:
            # Cancelled (every caller went away), or a bug: nobody may wait forever.
            for member in members:
                if not member.future.done():
                    member.future.cancel()

    async def _alone(self, app_name: str, model_id: str, member: _Member) -> None:
        if member.future.done():
            return
        try:
            reply = await self._backend.call(app_name, model_id, member.request, _timeout([member]))
        except Exception as exc:
            if not member.future.done():
                member.future.set_exception(exc)
            return
        if not member.future.done():
            member.future.set_result(reply)


def _timeout(members: Sequence[_Member]) -> float | None:
    """The time left to the latest deadline of ``members`` (None if one has none): a group
    call lasts as long as its most patient caller waits; each caller's own deadline ends its
    wait sooner. At least a millisecond, so that an expired one fails as a deadline."""
    if any(member.deadline is None for member in members):
        return None
    now = asyncio.get_running_loop().time()
    latest = max(member.deadline for member in members if member.deadline is not None)
    return max(latest - now, 0.001)
