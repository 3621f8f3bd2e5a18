"""Client parity: AsyncClient and AsyncJobHandle offer exactly what Client and JobHandle do.

Same public names; for each method the same parameters (names, kinds, defaults and
annotations) and the same return type, awaited: a coroutine for a call, an async iterator
for a listing or a stream. Adding a method to one client without the other fails here.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable
from typing import Any

import pytest
from synapse_client import AsyncClient, AsyncJobHandle, Client, JobHandle

PAIRS = [(Client, AsyncClient), (JobHandle, AsyncJobHandle)]

#: Sync type names whose asyncio counterparts are the same names prefixed with "Async".
_SYNC_NAMES = re.compile(r"\b(Client|JobHandle|Iterator)\b")

#: Methods that make no call: plain functions in both clients.
_NO_IO = {"job", "from_env"}


def _public(cls: type) -> set[str]:
    return {name for name in dir(cls) if not name.startswith("_")}


def _as_async(annotation: Any) -> Any:
    if not isinstance(annotation, str):
        return annotation
    return _SYNC_NAMES.sub(r"Async\1", annotation)


def _params(fn: Callable[..., Any], *, asyncio_names: bool = False) -> list[tuple[Any, ...]]:
    convert = _as_async if asyncio_names else (lambda a: a)
    return [
        (p.name, p.kind, p.default, convert(p.annotation))
        for p in inspect.signature(fn).parameters.values()
    ]


def _returns(fn: Callable[..., Any]) -> Any:
    return fn.__annotations__.get("return")


def _is_iteration(fn: Callable[..., Any]) -> bool:
    returns = _returns(fn)
    return inspect.isgeneratorfunction(fn) or (
        isinstance(returns, str) and returns.startswith("Iterator[")
    )


@pytest.mark.parametrize(("sync_cls", "async_cls"), PAIRS, ids=lambda c: c.__name__)
def test_same_public_names(sync_cls: type, async_cls: type) -> None:
    assert _public(sync_cls) == _public(async_cls)


@pytest.mark.parametrize(("sync_cls", "async_cls"), PAIRS, ids=lambda c: c.__name__)
def test_same_constructor(sync_cls: type, async_cls: type) -> None:
    assert _params(async_cls) == _params(sync_cls, asyncio_names=True)


@pytest.mark.parametrize(("sync_cls", "async_cls"), PAIRS, ids=lambda c: c.__name__)
def test_same_parameters_and_awaited_returns(sync_cls: type, async_cls: type) -> None:
    checked = []
    for name in sorted(_public(sync_cls)):
        sync_attr = inspect.getattr_static(sync_cls, name)
        async_attr = inspect.getattr_static(async_cls, name)
        if isinstance(sync_attr, property):
            assert isinstance(async_attr, property), name
            continue
        sync_fn, async_fn = getattr(sync_cls, name), getattr(async_cls, name)
        assert callable(sync_fn) and callable(async_fn), name
        assert _params(async_fn) == _params(sync_fn, asyncio_names=True), name
        assert _returns(async_fn) == _as_async(_returns(sync_fn)), name
        assert not inspect.iscoroutinefunction(sync_fn), name
        if name in _NO_IO:
            assert not inspect.iscoroutinefunction(async_fn), name
        elif _is_iteration(sync_fn):
            # An async generator, or a plain method that returns an async iterator.
            assert not inspect.iscoroutinefunction(async_fn), name
            assert inspect.isasyncgenfunction(async_fn) or str(_returns(async_fn)).startswith(
                "AsyncIterator["
            ), name
        else:
            assert inspect.iscoroutinefunction(async_fn), name
        checked.append(name)
    assert checked  # the comparison saw the methods


def test_context_managers() -> None:
    assert inspect.iscoroutinefunction(AsyncClient.__aenter__)
    assert inspect.iscoroutinefunction(AsyncClient.__aexit__)
    assert _params(AsyncClient.__aexit__) == _params(Client.__exit__)
    assert not hasattr(AsyncClient, "__enter__") and not hasattr(Client, "__aenter__")


def test_the_clients_cover_the_same_calls() -> None:
    # The method groups of the wire services, on both clients (a guard against a
    # refactoring that drops a group from the comparison above).
    expected = {
        "list_actions",
        "run_action",
        "job",
        "get_job",
        "list_jobs",
        "cancel_job",
        "register_model",
        "get_model",
        "list_models",
        "download_model",
        "delete_model",
        "upload_dataset",
        "get_dataset",
        "list_datasets",
        "download_dataset",
        "delete_dataset",
        "list_job_outputs",
        "infer",
        "infer_stream",
        "list_deployments",
        "get_deployment",
        "delete_deployment",
        "register_deployment",
        "close",
        "address",
        "from_env",
    }
    assert _public(Client) == expected
