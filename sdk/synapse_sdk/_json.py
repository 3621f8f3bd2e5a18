"""Conversion of plugin values (results, step data, logs, metrics) to JSON-ready data."""

from __future__ import annotations

import dataclasses
import enum
import logging
import math
from collections.abc import Mapping
from pathlib import PurePath
from typing import Any

from pydantic import BaseModel

from synapse_sdk.errors import ResultNotSerializableError

logger = logging.getLogger(__name__)

__all__ = ["is_plain_json", "to_jsonable"]


def is_plain_json(value: Any) -> bool:
    """True when ``value`` is already plain JSON data that ``to_jsonable`` would only copy.

    Plain means exactly dict (str keys) / list / str / int / bool / None / finite float. The
    check allocates nothing, so a large result that is already plain (the common case) skips
    the conversion, which builds a key path string for every element.
    """
    kind = type(value)
    if kind is str or kind is int or kind is bool or value is None:
        return True
    if kind is float:
        return math.isfinite(value)
    if kind is list:
        return all(map(is_plain_json, value))
    if kind is dict:
        return all(type(k) is str for k in value) and all(map(is_plain_json, value.values()))
    return False


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
