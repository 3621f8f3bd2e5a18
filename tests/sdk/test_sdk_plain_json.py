"""The plain-JSON fast path of run_action's result conversion."""

from __future__ import annotations

import enum
from typing import Any

import pytest
from synapse_sdk._json import is_plain_json, to_jsonable


class _Color(int, enum.Enum):
    RED = 1


@pytest.mark.parametrize(
    "value",
    [{"a": [1, 2.5, None, True, "x", {"b": []}]}, [], "s", 0, None],
)
def test_plain_values_are_recognised_and_convert_to_themselves(value: Any) -> None:
    assert is_plain_json(value)
    assert to_jsonable(value) == value


@pytest.mark.parametrize(
    "value",
    [{"a": (1,)}, {1: 2}, {"a": float("nan")}, {"a": float("inf")}, {"a": _Color.RED}, {"a": {1}}],
)
def test_values_needing_conversion_or_rejection_are_not_plain(value: Any) -> None:
    assert not is_plain_json(value)
