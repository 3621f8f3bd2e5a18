"""The Infer JSON converters (server and client) give exactly what ``json_format`` gives."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from google.protobuf import json_format, struct_pb2
from synapse.plugin.v1 import inference_service_pb2
from synapse_client import ClientConfigError
from synapse_client._inference import _result, build_infer_request
from synapse_server.core._errors import InvalidArgumentError
from synapse_server.grpc._inference_converters import (
    infer_request_from_pb,
    python_to_value,
    value_to_python,
)

CASES: list[Any] = [
    None,
    True,
    False,
    0,
    -7,
    2.5,
    2**60,
    "",
    "text ü",
    [],
    {},
    [None, 1, "a", [], {}],
    {"inputs": [{"data": [1.0, 2.0, 3.0]}, {"data": [0.5, 0.0, -1.0]}]},
    {"a": {"b": {"c": [True, {"d": None}]}}, "e": (1, 2)},
]


def _typed(value: Any) -> str:
    """A form that tells 1 from 1.0 and True from 1, but not one key order from another.

    A Struct's fields are a protobuf map, whose iteration order is not defined, so two
    converters may walk the same message's keys in different orders.
    """
    return json.dumps(value, sort_keys=True)


@pytest.mark.parametrize("value", CASES)
def test_server_converters_match_json_format(value: Any) -> None:
    ours = python_to_value(value)
    reference = json_format.ParseDict(value, struct_pb2.Value())
    assert ours == reference
    assert value_to_python(reference) == json_format.MessageToDict(reference)
    # Numbers come back as floats, as json_format gives them.
    assert _typed(value_to_python(ours)) == _typed(json_format.MessageToDict(reference))


@pytest.mark.parametrize("value", CASES)
def test_client_request_and_answer_match_json_format(value: Any) -> None:
    request = build_infer_request("app", model=1, json=value)
    assert request.json == json_format.ParseDict(value, struct_pb2.Value())
    response = inference_service_pb2.InferResponse()
    response.json.CopyFrom(request.json)
    assert _typed(_result(response).json) == _typed(json_format.MessageToDict(request.json))


def test_not_json_like_values_are_rejected() -> None:
    for bad in ({1: "x"}, {"a": object()}, [b"bytes"]):
        with pytest.raises(TypeError):
            python_to_value(bad)
        with pytest.raises(ClientConfigError, match="not JSON-like"):
            build_infer_request("app", json=bad)


def test_non_finite_request_numbers_are_invalid_arguments() -> None:
    for number in (math.nan, math.inf, -math.inf):
        request = inference_service_pb2.InferRequest(application="app")
        request.json.list_value.values.add(number_value=number)
        with pytest.raises(InvalidArgumentError, match="not a JSON number"):
            infer_request_from_pb(request, None)
        response = inference_service_pb2.InferResponse()
        response.json.number_value = number
        with pytest.raises(ValueError, match="not a JSON number"):
            _result(response)


def test_unset_json_is_none_and_absent_json_is_not_sent() -> None:
    request = build_infer_request("app", model=1)
    assert not request.HasField("json")
    assert infer_request_from_pb(request, None).has_json is False
    assert value_to_python(struct_pb2.Value()) is None
