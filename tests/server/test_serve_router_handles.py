"""The Serve router makes one handle per application, however many first calls race for it.

Each handle owns a router that must hear the replica set from Serve's controller before it
routes; one made per concurrent first call left routers behind (never shut down) and let a
request wait in a router that had not heard of the replicas yet. Ray is faked here: the real
path is covered by tests/serve.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from synapse_server.core.inference import DeploymentNotFoundError
from synapse_server.ray import _serve
from synapse_server.ray._serve import ServeRouter


class _Runtime:
    async def ensure_started(self) -> None:
        await asyncio.sleep(0)


class _Handle:
    def __init__(self, app_name: str) -> None:
        self.app_name = app_name
        self.shut_down = False

    def options(self, **options: Any) -> tuple[_Handle, dict[str, Any]]:
        return self, options

    async def shutdown_async(self) -> None:
        self.shut_down = True


@pytest.fixture
def made(monkeypatch: pytest.MonkeyPatch) -> list[_Handle]:
    """The handles the router made, in order."""
    handles: list[_Handle] = []

    def app_handle(app_name: str) -> str:
        if app_name == "missing":
            raise DeploymentNotFoundError(f"named {app_name!r} (not in Ray Serve)")
        return app_name

    def loop_handle(shared: str) -> _Handle:
        handles.append(_Handle(shared))
        return handles[-1]

    monkeypatch.setattr(_serve, "_app_handle", app_handle)
    monkeypatch.setattr(_serve, "_loop_handle", loop_handle)
    return handles


async def test_concurrent_first_calls_share_one_handle(made: list[_Handle]) -> None:
    router = ServeRouter(_Runtime(), transport="ray")  # type: ignore[arg-type]
    models = [str(i % 3) for i in range(24)]
    found = await asyncio.gather(*(router._handle("app", model) for model in models))
    assert len(made) == 1
    assert all(app is made[0] for app, _ in found)
    # One bound handle per model id, each reused.
    assert len({id(bound) for _, bound in found}) == 3
    await router.close()
    assert made[0].shut_down


async def test_each_application_gets_its_own_handle(made: list[_Handle]) -> None:
    router = ServeRouter(_Runtime(), transport="ray")  # type: ignore[arg-type]
    names = ["a", "b", "a", "b", "c"] * 4
    await asyncio.gather(*(router._handle(name, "1") for name in names))
    assert sorted(h.app_name for h in made) == ["a", "b", "c"]
    await router.close()
    assert all(h.shut_down for h in made)


async def test_a_missing_application_leaves_nothing_behind(made: list[_Handle]) -> None:
    router = ServeRouter(_Runtime(), transport="ray")  # type: ignore[arg-type]
    results = await asyncio.gather(
        *(router._handle("missing", "1") for _ in range(5)), return_exceptions=True
    )
    assert all(isinstance(r, DeploymentNotFoundError) for r in results)
    # The lock is free again: a later application is made at once.
    await router._handle("later", "1")
    assert [h.app_name for h in made] == ["later"]
    await router.close()


class _SetUp:
    """Stands for Serve's router state: set once the router got its deployment config."""

    def __init__(self, ready: bool) -> None:
        self._request_router_initialized = asyncio.Event()
        if ready:
            self._request_router_initialized.set()


async def test_a_router_without_its_config_is_replaced(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    readiness = iter([False, True])
    handles: list[_Handle] = []

    def loop_handle(shared: str) -> _Handle:
        handle = _Handle(shared)
        handle._router = type("R", (), {"_asyncio_router": _SetUp(next(readiness))})()  # type: ignore[attr-defined]
        handles.append(handle)
        return handle

    monkeypatch.setattr(_serve, "_app_handle", lambda name: name)
    monkeypatch.setattr(_serve, "_loop_handle", loop_handle)
    monkeypatch.setattr(_serve, "_ROUTER_SETUP_S", 0.05)
    router = ServeRouter(_Runtime(), transport="ray")  # type: ignore[arg-type]
    app, _ = await router._handle("app", "1")
    assert app is handles[1] and len(handles) == 2
    await asyncio.sleep(0)  # the stuck one's shutdown task runs
    assert handles[0].shut_down and not handles[1].shut_down
    await router.close()


async def test_the_last_try_is_kept_whatever_its_state(monkeypatch: pytest.MonkeyPatch) -> None:
    handles: list[_Handle] = []

    def loop_handle(shared: str) -> _Handle:
        handle = _Handle(shared)
        handle._router = type("R", (), {"_asyncio_router": _SetUp(False)})()  # type: ignore[attr-defined]
        handles.append(handle)
        return handle

    monkeypatch.setattr(_serve, "_app_handle", lambda name: name)
    monkeypatch.setattr(_serve, "_loop_handle", loop_handle)
    monkeypatch.setattr(_serve, "_ROUTER_SETUP_S", 0.05)
    router = ServeRouter(_Runtime(), transport="ray")  # type: ignore[arg-type]
    app, _ = await router._handle("app", "1")
    assert len(handles) == _serve._ROUTER_SETUP_TRIES and app is handles[-1]
    await router.close()
    assert all(h.shut_down for h in handles)
