"""The direct endpoint's message encoding (synapse_sdk.serving._direct): what a replica and
the server exchange, and what a replica makes of bytes from any peer."""

from __future__ import annotations

import contextlib
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from synapse_sdk.serving._direct import (
    DirectMessageError,
    pack_direct_message,
    registry_key,
    unpack_direct_message,
)

_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


def test_messages_round_trip_with_integers_of_any_size() -> None:
    message = {
        "v": [1, 2],
        "json": {"ids": [1, 2**60 + 1, -(2**70), 2**64], "f": 0.5, "n": None, "t": True},
        "tensors": [["x", "FP32", [2], b"\x00" * 8]],
    }
    assert unpack_direct_message(pack_direct_message(message)) == message


@given(_json)
def test_any_json_value_round_trips(value: Any) -> None:
    assert unpack_direct_message(pack_direct_message({"json": value})) == {"json": value}


@given(st.binary(max_size=512))
def test_bytes_from_any_peer_are_a_value_or_one_error_type(data: bytes) -> None:
    with contextlib.suppress(DirectMessageError):
        unpack_direct_message(data)


@pytest.mark.parametrize("data", [b"", b"\xc1", b"\x92\x01", b"\xd4\x07\x00", b"\xd5\x01\xff\xfe"])
def test_truncated_reserved_and_unknown_ext_bytes_are_refused(data: bytes) -> None:
    with pytest.raises(DirectMessageError):
        unpack_direct_message(data)


def test_one_application_s_keys_never_share_another_s_prefix() -> None:
    assert not registry_key("a/b", "r1").startswith(registry_key("a", ""))
    assert not registry_key("a%2Fb", "r1").startswith(registry_key("a/b", ""))
    assert registry_key("a", "r1").startswith(registry_key("a", ""))
