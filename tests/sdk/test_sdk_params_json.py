"""validate_params_json: params text parsed and validated in one pass, with clear errors."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel, Field
from synapse_sdk.errors import ParamsValidationError
from synapse_sdk.plugins import AnyParams, validate_params, validate_params_json


class Params(BaseModel):
    count: int = Field(ge=0)
    label: str = "x"
    extra: Any = None


def test_same_model_as_validating_the_parsed_dict() -> None:
    text = '{"count": 3, "label": "caf\\u00e9", "extra": {"big": 123456789012345678901234567890}}'
    got = validate_params_json(Params, text)
    assert got == validate_params(
        Params, {"count": 3, "label": "café", "extra": {"big": 123456789012345678901234567890}}
    )
    assert validate_params_json(Params, text.encode()) == got
    # A word NaN inside a string is text, not a number.
    assert validate_params_json(Params, '{"count": 1, "label": "NaN Infinity"}').label == (
        "NaN Infinity"
    )
    assert validate_params_json(AnyParams, '{"a": [1]}').model_dump() == {"a": [1]}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"count": ', "not valid JSON"),
        ('{"count": NaN}', "not valid JSON"),
        ('{"count": 1, "extra": [-Infinity]}', "not valid JSON"),
        ("[1, 2]", "not a JSON object"),
        ('"text"', "not a JSON object"),
    ],
)
def test_text_that_is_not_a_json_object_is_a_value_error(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as info:
        validate_params_json(Params, text)
    assert not isinstance(info.value, ParamsValidationError)


def test_bad_fields_are_params_validation_errors() -> None:
    with pytest.raises(ParamsValidationError) as info:
        validate_params_json(Params, '{"count": -1, "label": 5}', action="act")
    assert {v.field for v in info.value.violations} == {"count", "label"}
