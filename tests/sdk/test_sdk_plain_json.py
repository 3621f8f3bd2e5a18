"""The plain-JSON fast path of run_action's result conversion."""

from __future__ import annotations

import enum
import gc
import json
from typing import Any

import pytest
from synapse_sdk.jsonutil import (
    dump_json,
    dump_json_checked,
    gc_paused,
    is_plain_json,
    load_json,
    to_jsonable,
)


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


def test_nested_non_finite_float_and_tuple_deep_inside_are_found() -> None:
    assert not is_plain_json({"a": [1, {"b": [2.0, float("nan")]}]})
    assert not is_plain_json({"a": [{"b": (1,)}]})
    assert is_plain_json({"a": [{"b": [1, "x", None, True, 2.5]}]})


def test_json_text_round_trip_is_strict_and_exact() -> None:
    value = {"big": 10**30, "f": [0.1, -2.5e-7], "s": 'é"\\\n', "n": None, "b": True}
    assert load_json(dump_json(value)) == value
    assert json.loads(dump_json(value)) == value
    with pytest.raises(ValueError):
        load_json(b"[NaN]")
    with pytest.raises(ValueError):
        load_json(b'{"a": 1')


def test_gc_paused_restores_the_collector_state() -> None:
    assert gc.isenabled()
    with gc_paused():
        assert not gc.isenabled()
    assert gc.isenabled()
    gc.disable()
    try:
        with gc_paused():
            assert not gc.isenabled()
        assert not gc.isenabled()
    finally:
        gc.enable()
    with pytest.raises(RuntimeError), gc_paused():
        raise RuntimeError("boom")
    assert gc.isenabled()


def test_checked_dump_refuses_non_finite_floats_like_json_dumps() -> None:
    for bad in ({"a": float("nan")}, [1.0, float("inf")], {"x": [{"y": -float("inf")}]}):
        with pytest.raises(ValueError):
            dump_json_checked(bad)
        with pytest.raises(ValueError):
            json.dumps(bad, allow_nan=False)
    value = {"s": "NaN or Infinity", "f": [1e300, -0.0], 3: None}
    assert json.loads(dump_json_checked(value)) == json.loads(json.dumps(value))
