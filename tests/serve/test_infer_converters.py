"""The Infer JSON converters (server and client): the Struct form gives exactly what
``json_format`` gives; the JSON text form keeps every value exactly (integers as integers)."""

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
from synapse_server.core.inference import InferenceFailedError, InferResult
from synapse_server.grpc._inference_converters import (
    answers_json_text,
    infer_request_from_pb,
    infer_response_to_pb,
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
def test_client_sends_and_reads_json_text_exactly(value: Any) -> None:
    request = build_infer_request("app", model=1, json=value)
    assert not request.HasField("json")
    assert request.response_json_format == inference_service_pb2.JSON_FORMAT_TEXT
    # What json.dumps gives (tuples become lists), with 1 and 1.0 told apart.
    expected = _typed(json.loads(json.dumps(value)))
    data = infer_request_from_pb(request, None)
    assert data.has_json and _typed(data.json) == expected
    result = InferResult(json=data.json, tensors=(), model_id="1", request_id="r", application="a")
    assert answers_json_text(request)
    response = infer_response_to_pb(result, answers_json_text(request))
    assert not response.HasField("json")
    assert _typed(_result(response).json) == expected


@pytest.mark.parametrize("value", CASES)
def test_client_reads_a_struct_answer_as_json_format_gives_it(value: Any) -> None:
    # A server that predates JSON text answers a google.protobuf.Value.
    response = inference_service_pb2.InferResponse()
    response.json.CopyFrom(json_format.ParseDict(value, struct_pb2.Value()))
    assert _typed(_result(response).json) == _typed(json_format.MessageToDict(response.json))


def test_integers_survive_json_text_both_ways() -> None:
    payload = {"ids": [1, 2, 3], "big": 2**60 + 1, "huge": 2**70 + 3, "f": 1.0, "neg": -(2**63)}
    request = build_infer_request("app", model=1, json=payload)
    data = infer_request_from_pb(request, None)
    assert data.json == payload
    assert [type(i) for i in data.json["ids"]] == [int, int, int]
    assert type(data.json["f"]) is float
    result = InferResult(json=data.json, tensors=(), model_id="1", request_id="r", application="a")
    answer = _result(infer_response_to_pb(result, json_text=True)).json
    assert answer == payload and type(answer["big"]) is int and type(answer["f"]) is float
    # The Struct form, still accepted, carries doubles: 2**60 + 1 is not a double.
    struct = inference_service_pb2.InferRequest(application="app")
    python_to_value(payload, struct.json)
    assert infer_request_from_pb(struct, None).json["big"] != 2**60 + 1
    assert not answers_json_text(struct)


def test_client_json_text_is_sent_as_given() -> None:
    text = '{"ids": [1, 2, 3]}'
    for given in (text, text.encode()):
        request = build_infer_request("app", json_text=given)
        assert request.json_text == text.encode()
        assert infer_request_from_pb(request, None).json == {"ids": [1, 2, 3]}
    with pytest.raises(ClientConfigError, match="not both"):
        build_infer_request("app", json={}, json_text="{}")
    with pytest.raises(ClientConfigError, match="empty"):
        build_infer_request("app", json_text="")


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        (b"\xff\xfe", "not UTF-8 JSON"),
        (b'{"a": NaN}', "not UTF-8 JSON"),
        (b"[1, Infinity]", "not UTF-8 JSON"),
        (b"[1,", "not UTF-8 JSON"),
        (b"[1e999]", "beyond the range"),
        (b'{"x": -1.5E+400}', "beyond the range"),
        (b"[" + b"9" * 400 + b".5]", "beyond the range"),
    ],
)
def test_bad_json_text_is_an_invalid_argument_naming_the_field(text: bytes, reason: str) -> None:
    request = inference_service_pb2.InferRequest(application="app", json_text=text)
    with pytest.raises(InvalidArgumentError, match=reason) as raised:
        infer_request_from_pb(request, None)
    assert raised.value.field == "json_text"
    with pytest.raises(InvalidArgumentError) as prefixed:
        infer_request_from_pb(request, None, prefix="request.")
    assert prefixed.value.field == "request.json_text"


def test_numbers_that_are_not_huge_pass_the_range_check() -> None:
    text = b'{"e": 1e300, "big": ' + b"9" * 400 + b', "s": "e999"}'
    data = infer_request_from_pb(
        inference_service_pb2.InferRequest(application="app", json_text=text), None
    )
    assert data.json["e"] == 1e300 and data.json["big"] == int("9" * 400)


def test_json_and_json_text_together_are_refused() -> None:
    request = inference_service_pb2.InferRequest(application="app", json_text=b"{}")
    request.json.string_value = "x"
    with pytest.raises(InvalidArgumentError, match="not both") as raised:
        infer_request_from_pb(request, None)
    assert raised.value.field == "json_text"


def test_answer_format_follows_the_request() -> None:
    fmt = inference_service_pb2
    cases = [
        ({}, False),
        ({"json_text": b"1"}, True),
        ({"json_text": b"1", "response_json_format": fmt.JSON_FORMAT_STRUCT}, False),
        ({"response_json_format": fmt.JSON_FORMAT_TEXT}, True),
    ]
    for fields, text in cases:
        assert answers_json_text(fmt.InferRequest(application="a", **fields)) is text, fields


def test_a_non_finite_answer_cannot_be_json_text() -> None:
    result = InferResult(
        json=[1.0, math.nan], tensors=(), model_id="1", request_id="corr-9", application="a"
    )
    with pytest.raises(InferenceFailedError, match="NaN or Infinity") as raised:
        infer_response_to_pb(result, json_text=True)
    assert raised.value.correlation_id == "corr-9"
    # As a Struct it travels (a Value holds NaN), as before.
    assert math.isnan(infer_response_to_pb(result).json.list_value.values[1].number_value)


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
    assert not request.HasField("json") and not request.json_text
    assert infer_request_from_pb(request, None).has_json is False
    assert value_to_python(struct_pb2.Value()) is None
