"""Params keys an action's model ignores are found (nested ones too) and warned about, bounded."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import AliasChoices, BaseModel, ConfigDict, Field, model_validator
from synapse_sdk.errors import ParamsValidationError
from synapse_sdk.plugins import (
    AnyParams,
    check_params_json,
    unknown_params_keys,
    unknown_params_warnings,
    validate_params,
)


class Item(BaseModel):
    data: list[float]
    label: str = ""


class Params(BaseModel):
    model_id: int
    batch_size: int = 8
    inputs: list[Item] = []
    by_name: dict[str, Item] = {}
    either: Item | int = 0
    extra_data: dict[str, Any] = {}
    renamed: str = Field(default="", alias="renamedKey")
    choice: str = Field(default="", validation_alias=AliasChoices("choice", "pick"))


def _unknown(model: type[BaseModel], params: dict[str, Any]) -> list[str]:
    return unknown_params_keys(validate_params(model, params), params)


def test_a_misspelled_key_is_found() -> None:
    assert _unknown(Params, {"model_id": 1, "batchsize": 4}) == ["batchsize"]
    assert _unknown(Params, {"model_id": 1, "batch_size": 4}) == []


def test_nested_models_are_followed_through_lists_dicts_and_unions() -> None:
    params = {
        "model_id": 1,
        "inputs": [{"data": [1]}, {"data": [2], "lable": "x"}],
        "by_name": {"a": {"data": [1], "dat": 1}},
        "either": {"data": [3], "colour": "red"},
        "extra_data": {"anything": 1},  # a dict field takes any keys
    }
    assert _unknown(Params, params) == ["inputs.1.lable", "by_name.a.dat", "either.colour"]


def test_aliases_are_known_keys() -> None:
    assert _unknown(Params, {"model_id": 1, "renamedKey": "a", "pick": "b"}) == []
    # Without populate_by_name the field name of an aliased field is ignored by pydantic.
    assert _unknown(Params, {"model_id": 1, "renamed": "a"}) == ["renamed"]


def test_models_that_take_or_refuse_extras_report_nothing() -> None:
    assert _unknown(AnyParams, {"whatever": 1}) == []

    class Strict(BaseModel):
        model_config = ConfigDict(extra="forbid")
        batch_size: int = 1

    with pytest.raises(ParamsValidationError) as info:
        validate_params(Strict, {"batchsize": 2})
    assert [v.field for v in info.value.violations] == ["batchsize"]
    assert "Extra inputs are not permitted" in str(info.value)


def test_a_model_validator_before_the_fields_may_read_any_key() -> None:
    class Legacy(BaseModel):
        size: int = 1

        @model_validator(mode="before")
        @classmethod
        def _rename(cls, data: Any) -> Any:
            if isinstance(data, dict) and "old_size" in data:
                data = {**data, "size": data["old_size"]}
            return data

    assert _unknown(Legacy, {"old_size": 3}) == []


def test_warnings_are_bounded() -> None:
    params: dict[str, Any] = {"model_id": 1, **{f"k{i}": i for i in range(25)}}
    params["x" * 500 + "\n\x1b[31m"] = 1
    validated = validate_params(Params, params)
    warnings = unknown_params_warnings(validated, params)
    assert warnings[0] == "unknown params key 'k0' (ignored)"
    assert len(warnings) == 11
    assert warnings[-1] == "16 more unknown params keys (ignored)"
    long_key = {"model_id": 1, "y" * 500 + "\n\x1b": 1}
    [warning] = unknown_params_warnings(validate_params(Params, long_key), long_key)
    assert len(warning) < 120 and "\n" not in warning and "\x1b" not in warning
    assert unknown_params_keys(validated, params, limit=3) == ["k0", "k1", "k2"]


def test_check_params_json_validates_and_warns() -> None:
    assert check_params_json(Params, '{"model_id": 1, "batchsize": 2}') == [
        "unknown params key 'batchsize' (ignored)"
    ]
    assert check_params_json(Params, b'{"model_id": 1}') == []
    with pytest.raises(ParamsValidationError):
        check_params_json(Params, '{"batchsize": 2}')
    with pytest.raises(ValueError, match="not a JSON object"):
        check_params_json(Params, "[1]")


def test_checking_keeps_no_model_class_alive() -> None:
    # A reloaded plugin's params models must be free to go.
    import gc
    import weakref

    def make() -> type[BaseModel]:
        class Temporary(BaseModel):
            inner: Item | None = None

        return Temporary

    model = make()
    params = {"inner": {"data": [1]}, "x": 1}
    assert _unknown(model, params) == ["x"]
    ref = weakref.ref(model)
    del model
    gc.collect()
    assert ref() is None


def test_lists_of_models_holding_models() -> None:
    class Wrapper(BaseModel):
        inner: Item
        tags: list[str] = []

    class Outer(BaseModel):
        items: list[Wrapper]
        pairs: tuple[Item, Item] | None = None

    params = {
        "items": [
            {"inner": {"data": [1]}},
            {"inner": {"data": [2], "dta": 1}, "tag": ["x"]},
            {"inner": {"data": [3]}, "tags": ["y"]},
        ],
        "pairs": [{"data": [1]}, {"data": [2], "extra": 0}],
    }
    assert _unknown(Outer, params) == ["items.1.tag", "items.1.inner.dta", "pairs.1.extra"]
