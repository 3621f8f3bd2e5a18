"""The one tensor and value codec: dtype table, tensor round trips, Struct ↔ Python."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from typing import Any

import numpy as np
import pytest
from google.protobuf import json_format, struct_pb2
from hypothesis import given, settings
from hypothesis import strategies as st
from synapse.plugin.v1 import tensor_pb2
from synapse_client import codec
from synapse_client.codec import (
    DTYPES,
    TENSOR_DTYPES,
    MissingExtraError,
    NonFiniteNumberError,
    TensorCodecError,
    TensorPayload,
)

EXPECTED_EXPORTS = {
    "DTYPES",
    "TENSOR_DTYPES",
    "CodecError",
    "DType",
    "MissingExtraError",
    "NonFiniteNumberError",
    "TensorCodecError",
    "TensorPayload",
    "dtype_by_name",
    "dtype_by_oip",
    "dtype_by_wire",
    "python_to_struct",
    "python_to_value",
    "struct_to_python",
    "tensor_from_pb",
    "tensor_to_pb",
    "value_to_python",
}

#: The numpy dtypes the platform's wire carries (bfloat16 is torch's, tested apart).
NUMPY_DTYPES = sorted(TENSOR_DTYPES - {"bfloat16"})


def test_exports_are_pinned() -> None:
    assert set(codec.__all__) == EXPECTED_EXPORTS
    for name in codec.__all__:
        assert getattr(codec, name) is not None, name


# The dtype table ------------------------------------------------------------------------------


def test_every_wire_data_type_is_in_the_table_once() -> None:
    wire = {v.number for v in tensor_pb2.DataType.DESCRIPTOR.values if v.number != 0}
    assert {d.wire for d in DTYPES if d.wire is not None} == wire
    assert len([d for d in DTYPES if d.wire is not None]) == len(wire)
    for number in wire:
        dtype = codec.dtype_by_wire(number)
        assert dtype is not None
        # The enum value's name says the same type as the table's numpy name.
        name = tensor_pb2.DataType.Name(number).removeprefix("DATA_TYPE_").lower()
        assert dtype.name == name
    assert codec.dtype_by_wire(tensor_pb2.DATA_TYPE_UNSPECIFIED) is None
    assert codec.dtype_by_wire(999) is None


def test_the_table_has_every_open_inference_protocol_type() -> None:
    oip = [d.oip for d in DTYPES]
    integers = ["UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64"]
    assert sorted(oip) == sorted(["BOOL", *integers, "FP16", "FP32", "FP64", "BF16", "BYTES"])
    assert len(set(oip)) == len(oip) and len({d.name for d in DTYPES}) == len(DTYPES)
    for dtype in DTYPES:
        assert codec.dtype_by_oip(dtype.oip) is dtype
        assert codec.dtype_by_name(dtype.name) is dtype
    assert codec.dtype_by_oip("FP8") is None and codec.dtype_by_name("complex64") is None


@pytest.mark.parametrize("dtype", [d for d in DTYPES if d.name not in ("bfloat16", "bytes")])
def test_item_sizes_are_numpys(dtype: codec.DType) -> None:
    assert dtype.itemsize == np.dtype(dtype.name).itemsize


def test_special_sizes() -> None:
    assert codec.dtype_by_name("bfloat16").itemsize == 2  # type: ignore[union-attr]
    assert codec.dtype_by_name("bytes").itemsize is None  # type: ignore[union-attr]


# Tensors --------------------------------------------------------------------------------------

SHAPES = [(), (0,), (3,), (2, 3), (2, 0, 4), (1, 1, 1, 5)]


def _sample(dtype: str, shape: tuple[int, ...]) -> Any:
    count = math.prod(shape)
    if dtype == "bool":
        return (np.arange(count) % 3 == 0).reshape(shape)
    if np.dtype(dtype).kind in "iu":
        info = np.iinfo(dtype)
        values = np.linspace(float(info.min) / 2, float(info.max) / 2, num=count)
    else:
        values = np.linspace(-1e3, 1e3, num=count) / 7
    return values.astype(dtype).reshape(shape)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", NUMPY_DTYPES)
def test_numpy_round_trip_through_the_wire(dtype: str, shape: tuple[int, ...]) -> None:
    array = _sample(dtype, shape)
    payload = TensorPayload.from_array("x", array)
    assert (payload.dtype, payload.shape) == (dtype, shape)
    message = codec.tensor_to_pb(payload)
    assert message.dtype == codec.dtype_by_name(dtype).wire  # type: ignore[union-attr]
    back = codec.tensor_from_pb(tensor_pb2.Tensor.FromString(message.SerializeToString()))
    assert back == payload
    for decoded in (back.to_array(), back.to_numpy()):
        assert decoded.dtype == np.dtype(dtype) and decoded.shape == shape
        assert np.array_equal(decoded, array)


@settings(max_examples=60, deadline=None)
@given(
    dtype=st.sampled_from(NUMPY_DTYPES),
    shape=st.lists(st.integers(min_value=0, max_value=4), max_size=4).map(tuple),
    big_endian=st.booleans(),
)
def test_any_shape_round_trips(dtype: str, shape: tuple[int, ...], big_endian: bool) -> None:
    array = _sample(dtype, shape)
    if big_endian:
        array = array.astype(array.dtype.newbyteorder(">"))
    payload = TensorPayload.from_array("t", array)
    assert len(payload.data) == array.size * array.dtype.itemsize
    decoded = codec.tensor_from_pb(codec.tensor_to_pb(payload)).to_array()
    assert decoded.dtype.byteorder in ("<", "=", "|")
    assert decoded.shape == shape and np.array_equal(decoded, array)


def test_big_endian_input_is_sent_little_endian() -> None:
    array = np.array([1, 2, 256], dtype=">i4")
    payload = TensorPayload.from_array("x", array)
    assert payload.data == np.array([1, 2, 256], dtype="<i4").tobytes()


def test_non_contiguous_and_list_inputs() -> None:
    array = np.arange(12, dtype=np.float64).reshape(3, 4)[:, ::2]
    payload = TensorPayload.from_array("x", array)
    assert np.array_equal(payload.to_array(), array)
    from_list = TensorPayload.from_array("y", [[1, 2], [3, 4]])
    assert from_list.shape == (2, 2) and np.array_equal(from_list.to_array(), [[1, 2], [3, 4]])


def test_decoding_does_not_copy() -> None:
    payload = TensorPayload.from_array("x", np.arange(4, dtype=np.int32))
    array = payload.to_array()
    assert not array.flags.writeable
    assert array.base is not None


@pytest.mark.parametrize(
    "value",
    [
        np.array(["text"]),
        np.array([1 + 2j]),
        np.array([1, 2], dtype=np.uint16),
        np.array([1, 2], dtype=np.uint64),
        np.array([object()], dtype=object),
    ],
)
def test_dtypes_the_wire_cannot_carry_are_refused(value: Any) -> None:
    with pytest.raises(TensorCodecError, match="cannot be sent"):
        TensorPayload.from_array("x", value)


def test_bfloat16_via_torch_round_trips() -> None:
    torch = pytest.importorskip("torch")
    for shape in [(), (0,), (3,), (2, 3)]:
        tensor = torch.arange(math.prod(shape), dtype=torch.float32).reshape(shape) / 3
        tensor = tensor.to(torch.bfloat16).requires_grad_(True)
        payload = TensorPayload.from_array("x", tensor)
        assert (payload.dtype, payload.shape, len(payload.data)) == (
            "bfloat16",
            shape,
            2 * math.prod(shape),
        )
        back = codec.tensor_from_pb(codec.tensor_to_pb(payload))
        decoded = back.to_array()
        assert decoded.dtype == torch.bfloat16 and tuple(decoded.shape) == shape
        assert torch.equal(decoded, tensor.detach())
        # Without torch: the raw bits, as uint16.
        bits = back.to_numpy()
        assert bits.dtype == np.dtype("<u2") and bits.shape == shape
        assert np.array_equal(bits, tensor.detach().view(torch.int16).numpy().view(np.uint16))


def test_torch_tensors_of_other_dtypes_encode_as_numpy() -> None:
    torch = pytest.importorskip("torch")
    tensor = torch.ones(2, 2, requires_grad=True) * 3
    payload = TensorPayload.from_array("x", tensor)
    assert payload.dtype == "float32" and np.array_equal(payload.to_array(), np.full((2, 2), 3.0))


@pytest.mark.parametrize(
    ("message", "match"),
    [
        (tensor_pb2.Tensor(name="x", shape=[1], data=b"\0" * 4), "dtype must be set"),
        (tensor_pb2.Tensor(name="x", dtype=77, shape=[1], data=b"\0"), "dtype must be set"),
        (
            tensor_pb2.Tensor(name="x", dtype=tensor_pb2.DATA_TYPE_FLOAT32, shape=[-1]),
            "negative dimension",
        ),
        (
            tensor_pb2.Tensor(name="x", dtype=tensor_pb2.DATA_TYPE_FLOAT32, shape=[2], data=b"1"),
            r"1 bytes do not fit shape \[2\] and dtype float32",
        ),
        (
            tensor_pb2.Tensor(name="x", dtype=tensor_pb2.DATA_TYPE_INT8, shape=[0], data=b"1"),
            "do not fit",
        ),
        (
            tensor_pb2.Tensor(name="x", dtype=tensor_pb2.DATA_TYPE_INT8, data=b""),
            r"0 bytes do not fit shape \[\]",
        ),
        (
            tensor_pb2.Tensor(
                name="x", dtype=tensor_pb2.DATA_TYPE_INT64, shape=[1 << 40] * 20, data=b"1"
            ),
            "of 20 dimensions",
        ),
    ],
)
def test_bad_wire_tensors_are_refused(message: tensor_pb2.Tensor, match: str) -> None:
    with pytest.raises(TensorCodecError, match=match):
        codec.tensor_from_pb(message)


def test_errors_quote_a_short_prefix_of_a_long_name() -> None:
    name = "n" * 100_000
    with pytest.raises(TensorCodecError) as raised:
        codec.tensor_from_pb(tensor_pb2.Tensor(name=name, shape=[1]))
    assert len(str(raised.value)) < 200 and "100000 characters" in str(raised.value)
    with pytest.raises(TensorCodecError) as raised:
        TensorPayload.from_array(name, np.array(["s"]))
    assert len(str(raised.value)) < 200


def test_payloads_are_checked_before_decoding() -> None:
    with pytest.raises(TensorCodecError, match="unsupported dtype"):
        TensorPayload("x", "complex64", (1,), b"\0" * 8).to_array()
    with pytest.raises(TensorCodecError, match="unsupported dtype"):
        TensorPayload("x", "uint16", (1,), b"\0" * 2).to_numpy()
    with pytest.raises(TensorCodecError, match="do not fit"):
        TensorPayload("x", "float64", (2,), b"\0" * 8).to_array()


def test_without_numpy_a_tensor_call_names_the_extra() -> None:
    code = (
        "import sys; sys.modules['numpy'] = None\n"
        "from synapse_client.codec import TensorPayload, MissingExtraError\n"
        "import synapse_client\n"  # the client itself imports without numpy
        "try:\n"
        "    TensorPayload('x', 'float32', (1,), bytes(4)).to_array()\n"
        "except MissingExtraError as exc:\n"
        "    assert isinstance(exc, ModuleNotFoundError) and exc.name == 'numpy'\n"
        "    print(exc)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "synapse-client[tensors]" in done.stdout


def test_missing_extra_error_is_a_module_not_found_error() -> None:
    assert issubclass(MissingExtraError, ModuleNotFoundError)


# JSON-like values -----------------------------------------------------------------------------

JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.text(max_size=8)
    | st.integers(min_value=-(2**53), max_value=2**53)
    | st.floats(allow_nan=False, allow_infinity=False),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4)
    ),
    max_leaves=20,
)


def _typed(value: Any) -> str:
    # Tells 1 from 1.0 and True from 1; a Struct's key order is not defined.
    return json.dumps(value, sort_keys=True)


@settings(max_examples=150, deadline=None)
@given(JSON)
def test_values_match_json_format_both_ways(value: Any) -> None:
    ours = codec.python_to_value(value)
    assert ours == json_format.ParseDict(value, struct_pb2.Value())
    assert _typed(codec.value_to_python(ours)) == _typed(json_format.MessageToDict(ours))


@settings(max_examples=80, deadline=None)
@given(st.dictionaries(st.text(max_size=6), JSON, max_size=5))
def test_structs_match_json_format_both_ways(value: dict[str, Any]) -> None:
    ours = codec.python_to_struct(value)
    reference = struct_pb2.Struct()
    reference.update(value)
    assert ours == reference
    assert _typed(codec.struct_to_python(ours)) == _typed(json_format.MessageToDict(reference))


def test_python_to_struct_fills_a_given_message() -> None:
    message = struct_pb2.Struct()
    assert codec.python_to_struct({"a": [1, {"b": None}]}, message) is message
    assert json_format.MessageToDict(message) == {"a": [1.0, {"b": None}]}


def test_non_finite_numbers_are_refused_when_read_with_their_path() -> None:
    for number in (math.nan, math.inf, -math.inf):
        value = codec.python_to_value({"inputs": [1.0, {"x": number}]})  # writing checks nothing
        with pytest.raises(NonFiniteNumberError) as raised:
            codec.value_to_python(value, "json")
        assert raised.value.field == "json.inputs[1].x"
        assert "not a JSON number" in str(raised.value)
        assert isinstance(raised.value, ValueError)
        struct = codec.python_to_struct({"deep": {"list": [number]}})
        with pytest.raises(NonFiniteNumberError) as raised:
            codec.struct_to_python(struct, "params")
        assert raised.value.field == "params.deep.list[0]"


def test_the_path_to_a_bad_number_is_bounded() -> None:
    key = "k" * 10_000
    value = {key: {key: [math.nan]}}
    with pytest.raises(NonFiniteNumberError) as raised:
        codec.value_to_python(codec.python_to_value(value), "json")
    assert len(raised.value.field) <= 256 and raised.value.field.startswith("json.kkk")


@pytest.mark.parametrize("bad", [{1: "x"}, {"a": object()}, [b"bytes"], {"s": {1, 2}}])
def test_values_that_are_not_json_like_are_type_errors(bad: Any) -> None:
    with pytest.raises(TypeError):
        codec.python_to_value(bad)


def test_unset_value_reads_as_none() -> None:
    assert codec.value_to_python(struct_pb2.Value()) is None
    assert codec.struct_to_python(struct_pb2.Struct()) == {}
