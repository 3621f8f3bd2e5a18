"""The run context: what the code of one running action reports to and asks of.

Modelled on a ContextVar, so plugin code calls small functions (``set_progress`` on the action,
or :func:`is_cancelled` here) and never holds server objects. The runner that starts an action
(console, test harness, platform worker) builds a :class:`RunContext` and enters it with
:func:`run_context`; everything the action emits goes to that context's sink.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from synapse_sdk.events import Event, EventSink

if TYPE_CHECKING:
    from synapse_sdk.datasets import BatchRunner, DatasetResolver

__all__ = [
    "ModelBackend",
    "PlatformInfo",
    "RunContext",
    "current_context",
    "is_cancelled",
    "run_context",
]


@runtime_checkable
class ModelBackend(Protocol):
    """Where ``get_model`` / ``download_model`` / ``load_model`` of an action go.

    The platform's implementation fetches through the gRPC ``ModelService`` so it works in a
    worker on another machine; tests may pass any object with these methods.
    """

    def get_model(self, model_id: int | str) -> dict[str, Any]: ...

    def download_model(self, model_id: int | str, output_dir: str | Path | None = None) -> Path: ...

    def load_model(self, model_id: int | str) -> dict[str, Any]: ...


@dataclass(frozen=True)
class PlatformInfo:
    """How code inside a run reaches the platform (for model downloads, serve registration)."""

    address: str
    token: str | None = None
    tls: bool = False
    root_certificates: bytes | None = None
    tenant: str | None = None
    #: Name to verify in the server's certificate when it differs from the address host.
    server_name: str | None = None

    def client(self, **options: Any) -> Any:
        """A ``synapse_client.Client`` to this platform (``options`` go to ``Client``).

        The one place that turns these fields into a connection, so model downloads,
        serve registration and ``infer_remote`` all honour the same TLS settings.
        """
        from synapse_client import Client, TLSConfig

        tls: bool | TLSConfig = False
        if self.tls or self.root_certificates is not None:
            tls = TLSConfig(
                root_certificates=self.root_certificates, server_name_override=self.server_name
            )
        return Client(self.address, token=self.token, tls=tls, **options)


class _NullSink:
    def emit(self, event: Event) -> None:
        del event


@dataclass
class RunContext:
    """One run of one action.

    ``cancel_event`` is set by whoever runs the action when the user cancels; plugin code sees
    it through :func:`is_cancelled` / ``BaseAction.is_cancelled`` and the step orchestrator
    checks it between steps.
    """

    sink: EventSink = field(default_factory=_NullSink)
    cancel_event: threading.Event = field(default_factory=threading.Event)
    job_id: str | None = None
    plugin_code: str | None = None
    action_name: str | None = None
    model_backend: ModelBackend | None = None
    platform: PlatformInfo | None = None
    mode: str = "local"
    #: Resolves dataset references and opens output sinks; installed by the platform worker
    #: (or a test harness). ``None``: the action runs where datasets are unavailable.
    datasets: DatasetResolver | None = None
    #: Runs ``map_batches``; ``None`` means the SDK's ``LocalBatchRunner``.
    batch_runner: BatchRunner | None = None

    def emit(self, event: Event) -> None:
        self.sink.emit(event)


_current: ContextVar[RunContext | None] = ContextVar("synapse_run_context", default=None)


def current_context() -> RunContext:
    """The context of the run this code belongs to; a quiet default outside any run."""
    ctx = _current.get()
    if ctx is None:
        ctx = RunContext()
        _current.set(ctx)
    return ctx


@contextlib.contextmanager
def run_context(ctx: RunContext) -> Iterator[RunContext]:
    token = _current.set(ctx)
    try:
        yield ctx
    finally:
        _current.reset(token)


def is_cancelled() -> bool:
    """True once the user asked to cancel the current run. Long loops should check it."""
    return current_context().cancel_event.is_set()
