"""Conversion of plugin values (results, step data, logs, metrics) to JSON-ready data."""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import gc
import logging
import math
from collections.abc import Iterable, Iterator, Mapping
from pathlib import PurePath
from typing import Any

import pydantic_core
from pydantic import BaseModel

from synapse_sdk.errors import ResultNotSerializableError

logger = logging.getLogger(__name__)

_isfinite = math.isfinite

__all__ = [
    "dump_json",
    "dump_json_checked",
    "gc_paused",
    "is_plain_json",
    "load_json",
    "to_jsonable",
]


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Suspend automatic cyclic garbage collection for the block.

    Decoding or validating a large JSON document allocates hundreds of thousands of dicts and
    lists, which triggers many collections, each traversing every tracked object in the
    process (a server holding other jobs' params, a client holding its inputs): measured at
    3-5x the cost of the parse itself. JSON data cannot form reference cycles, so those
    collections find nothing; pausing them only defers one pass to after the block.
    """
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def load_json(data: bytes | bytearray | str) -> Any:
    """Parse JSON text (Rust parser of pydantic-core: exact big ints, no NaN/Infinity).

    Raises ``ValueError`` for text that is not strict JSON.
    """
    with gc_paused():
        return pydantic_core.from_json(data, allow_inf_nan=False)


def dump_json(value: Any) -> bytes:
    """Compact UTF-8 JSON of plain JSON data (see :func:`is_plain_json`).

    About 10x faster than ``json.dumps`` for large results. Callers pass data that is already
    plain JSON (finite floats, str keys), which serialises exactly as ``json.dumps`` would.
    """
    return pydantic_core.to_json(value)


def dump_json_checked(value: Any) -> bytes:
    """Like :func:`dump_json` for data that may hold non-finite floats: those raise
    ``ValueError`` (as ``json.dumps(allow_nan=False)`` does) instead of being written."""
    text = pydantic_core.to_json(value, inf_nan_mode="constants")
    # NaN/Infinity come out as bare tokens, which JSON does not have; only text containing
    # those words (maybe inside strings) needs the strict re-parse to tell.
    if b"NaN" in text or b"Infinity" in text:
        load_json(text)
    return text


def is_plain_json(value: Any) -> bool:
    """True when ``value`` is already plain JSON data that ``to_jsonable`` would only copy.

    Plain means exactly dict (str keys) / list / str / int / bool / None / finite float. The
    check allocates nothing, so a large result that is already plain (the common case) skips
    the conversion, which builds a key path string for every element.
    """
    return _plain_items((value,))


def _plain_items(values: Iterable[Any]) -> bool:
    # Leaves are checked inline and only containers recurse: a large result is mostly
    # leaves, and a call per leaf tripled the cost of this check.
    for value in values:
        kind = type(value)
        if kind is float:
            if not _isfinite(value):
                return False
        elif kind is dict:
            for key in value:
                if type(key) is not str:
                    return False
            if not _plain_items(value.values()):
                return False
        elif kind is list:
            if not _plain_items(value):
                return False
        elif not (kind is str or kind is int or kind is bool or value is None):
            return False
    return True


def to_jsonable(value: Any, key: str = "result") -> Any:
    """Return ``value`` as plain JSON data (dict/list/str/int/float/bool/None).

    Tensors and numpy arrays become (nested) lists via ``tolist()``, numpy scalars their Python
    value, pydantic models and dataclasses dicts, paths and enums their string/value. Anything
    else raises :class:`ResultNotSerializableError` naming the key path, so a bad value is
    reported where it was produced rather than when the platform tries to store it.
    """
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            raise ResultNotSerializableError(key, f"float {value}")
        return value
    if isinstance(value, enum.Enum):
        return to_jsonable(value.value, key)
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for k, v in value.items():
            if not isinstance(k, str | int | float | bool):
                raise ResultNotSerializableError(f"{key}.{k!r}", f"dict key {type(k).__name__}")
            out[str(k)] = to_jsonable(v, f"{key}.{k}")
        return out
    if isinstance(value, list | tuple | set | frozenset):
        return [to_jsonable(v, f"{key}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, BaseModel):
        return to_jsonable(value.model_dump(mode="python"), key)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return to_jsonable(dataclasses.asdict(value), key)
    # Tensors (torch) and arrays/scalars (numpy) without importing either library.
    detach = getattr(value, "detach", None)
    if callable(detach):
        value = detach()
        cpu = getattr(value, "cpu", None)
        if callable(cpu):
            value = cpu()
    tolist = getattr(value, "tolist", None)
    if callable(tolist):
        return to_jsonable(tolist(), key)
    item = getattr(value, "item", None)
    if callable(item):
        return to_jsonable(item(), key)
    raise ResultNotSerializableError(key, type(value).__qualname__)
