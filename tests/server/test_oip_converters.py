"""Open Inference Protocol messages ↔ the inference core: decoding, checks, answers.

The end-to-end behaviour (third-party clients, a real replica) is in
tests/serve/test_oip_clients.py; these pin each rule of the converter, including the cases no
client library sends.
"""

from __future__ import annotations

import json
import math
import struct
from typing import Any

import numpy as np
import pytest
from synapse_client.codec import DTYPES, TensorPayload
from synapse_server.core import InvalidArgumentError
from synapse_server.core._served_models import ServedModel
from synapse_server.core.deployments import DeploymentStatus
from synapse_server.core.inference import InferResult
from synapse_server.grpc.oip._converters import (
    SUPPORTED_DATATYPES,
    model_infer_request,
    model_infer_response,
    model_metadata_response,
)
from synapse_server.grpc.oip._proto import grpc_predict_v2_pb2 as pb

#: numpy type of each supported OIP datatype (BF16 travels as its bit pattern here).
NUMPY = {d.oip: ("<u2" if d.name == "bfloat16" else d.name) for d in DTYPES if d.wire is not None}
#: (datatype, typed contents field) of every datatype that has one.
TYPED = {
    "BOOL": "bool_contents",
    "UINT8": "uint_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
}


def _sample(datatype: str) -> np.ndarray:
    dtype = np.dtype(NUMPY[datatype])
    if dtype.kind == "b":
        return np.array([[True, False, True], [False, False, True]])
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        return np.array([[info.min, 0, 1], [info.max, 2, 3]], dtype=dtype)
    return np.array([[1.5, -0.0, math.inf], [-2.25, 1e-3, 3.0]], dtype=dtype)


def _raw_request(*arrays: tuple[str, str, np.ndarray], **fields: Any) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="app", **fields)
    for name, datatype, array in arrays:
        request.inputs.add(name=name, datatype=datatype, shape=array.shape)
        request.raw_input_contents.append(array.astype(array.dtype.newbyteorder("<")).tobytes())
    return request


def _refusal(request: pb.ModelInferRequest, *words: str, field: str | None = None) -> str:
    with pytest.raises(InvalidArgumentError) as raised:
        model_infer_request(request, None)
    message = str(raised.value)
    for word in words:
        assert word in message, (word, message)
    if field is not None:
        assert raised.value.field == field, raised.value.field
    return message


# Decoding ------------------------------------------------------------------------------------


@pytest.mark.parametrize("datatype", SUPPORTED_DATATYPES)
def test_raw_contents_become_the_cores_tensors_as_they_are(datatype: str) -> None:
    array = _sample(datatype)
    call = model_infer_request(_raw_request(("x", datatype, array)), None)
    (tensor,) = call.request.tensors
    assert tensor == TensorPayload("x", _numpy_name(datatype), (2, 3), array.tobytes())
    assert call.request.path == "/" and call.request.method == "POST"


def _numpy_name(datatype: str) -> str:
    return next(d.name for d in DTYPES if d.oip == datatype)


@pytest.mark.parametrize("datatype", sorted(TYPED))
def test_typed_contents_decode_to_the_same_bytes_as_raw(datatype: str) -> None:
    array = _sample(datatype)
    request = pb.ModelInferRequest(model_name="app")
    tensor = request.inputs.add(name="x", datatype=datatype, shape=array.shape)
    getattr(tensor.contents, TYPED[datatype]).extend(array.ravel().tolist())
    (payload,) = model_infer_request(request, None).request.tensors
    assert payload.data == array.astype(array.dtype.newbyteorder("<")).tobytes()
    assert payload.shape == (2, 3)


def test_packed_floats_are_read_past_long_lengths_and_unknown_fields() -> None:
    values = np.array([math.nan, -0.0, 1e-45, *range(2000)], dtype="<f4")
    contents = pb.InferTensorContents(fp32_contents=values.tolist())
    # An unknown field after the elements (a newer client's), which a parser keeps.
    wire = contents.SerializeToString() + b"\x78\x05"
    request = pb.ModelInferRequest(model_name="app")
    tensor = request.inputs.add(name="x", datatype="FP32", shape=[len(values)])
    tensor.contents.ParseFromString(wire)
    (payload,) = model_infer_request(request, None).request.tensors
    assert payload.data == values.tobytes()


def test_empty_and_scalar_tensors_keep_their_shapes() -> None:
    request = pb.ModelInferRequest(model_name="app")
    request.inputs.add(name="empty", datatype="FP32", shape=[2, 0])
    scalar = request.inputs.add(name="scalar", datatype="INT64", shape=[])
    scalar.contents.int64_contents.append(-5)
    empty, one = model_infer_request(request, None).request.tensors
    assert (empty.shape, empty.data) == ((2, 0), b"")
    assert (one.shape, one.data) == ((), struct.pack("<q", -5))


# Checks --------------------------------------------------------------------------------------


def test_the_model_name_is_required_and_the_version_is_a_model_id() -> None:
    _refusal(pb.ModelInferRequest(), "model_name", field="model_name")
    for version in ("latest", "1.0", "\u0661", "0", "9" * 30):
        request = pb.ModelInferRequest(model_name="app", model_version=version)
        _refusal(request, "model_version", field="model_version")
    call = model_infer_request(pb.ModelInferRequest(model_name="app", model_version="12"), None)
    assert (call.request.application, call.request.model_id) == ("app", "12")


@pytest.mark.parametrize("datatype", ["UINT16", "UINT32", "UINT64", "BYTES"])
def test_datatypes_the_replicas_cannot_take_are_refused_naming_the_tensor(datatype: str) -> None:
    request = pb.ModelInferRequest(model_name="app")
    request.inputs.add(name="ok", datatype="FP32", shape=[0])
    request.inputs.add(name="odd", datatype=datatype, shape=[1])
    message = _refusal(request, "'odd'", "inputs[1]", datatype, "FP32", field="inputs[1].datatype")
    assert "not supported" in message


def test_unknown_datatypes_are_refused_and_quoted_briefly() -> None:
    request = pb.ModelInferRequest(model_name="app")
    request.inputs.add(name="x", datatype="F" * 200, shape=[1])
    message = _refusal(request, "'x'", "unknown datatype", field="inputs[0].datatype")
    assert "(200 characters)" in message and len(message) < 400


def test_input_names_must_be_present_and_unique() -> None:
    request = pb.ModelInferRequest(model_name="app")
    request.inputs.add(datatype="FP32", shape=[0])
    _refusal(request, "inputs[0] has no name", field="inputs[0].name")
    request = pb.ModelInferRequest(model_name="app")
    request.inputs.add(name="x", datatype="FP32", shape=[0])
    request.inputs.add(name="x", datatype="FP32", shape=[0])
    _refusal(request, "'x'", "inputs[1]", field="inputs[1].name")


def test_shapes_must_match_the_data() -> None:
    array = np.zeros((2, 3), dtype=np.float32)
    request = _raw_request(("x", "FP32", array))
    request.inputs[0].shape[:] = [3, 3]
    _refusal(request, "'x'", "[3, 3]", "36 bytes", "has 24", field="inputs[0].shape")
    request.inputs[0].shape[:] = [2, -3]
    _refusal(request, "negative", field="inputs[0].shape")
    # A huge shape is answered without multiplying it out.
    request.inputs[0].shape[:] = [2**62] * 1000
    message = _refusal(request, "of 1000 dimensions", "needs more bytes")
    assert len(message) < 300
    typed = pb.ModelInferRequest(model_name="app")
    tensor = typed.inputs.add(name="y", datatype="INT32", shape=[4])
    tensor.contents.int_contents.extend([1, 2, 3])
    _refusal(typed, "'y'", "needs 4 elements", "has 3 elements", field="inputs[0].shape")


def test_the_data_must_be_sent_one_way_in_the_datatypes_field() -> None:
    request = _raw_request(("x", "FP32", np.zeros(2, dtype=np.float32)))
    request.inputs[0].contents.fp32_contents.extend([1.0, 2.0])
    _refusal(request, "'x'", "has contents while", field="inputs[0].contents")
    request = _raw_request(
        ("x", "FP32", np.zeros(2, dtype=np.float32)), ("y", "FP32", np.zeros(1, np.float32))
    )
    del request.raw_input_contents[1]
    _refusal(request, "1 entries for 2 inputs", field="raw_input_contents")
    request = pb.ModelInferRequest(model_name="app")
    request.inputs.add(name="x", datatype="FP32", shape=[1]).contents.fp64_contents.append(1.0)
    _refusal(request, "'x'", "contents.fp64_contents", "contents.fp32_contents")
    request = pb.ModelInferRequest(model_name="app")
    request.inputs.add(name="h", datatype="FP16", shape=[1]).contents.fp32_contents.append(1.0)
    _refusal(request, "'h'", "send it raw")
    request = pb.ModelInferRequest(model_name="app")
    request.inputs.add(name="h", datatype="BF16", shape=[2])
    _refusal(request, "'h'", "raw_input_contents only")


@pytest.mark.parametrize(
    ("datatype", "field", "value"),
    [
        ("INT8", "int_contents", 128),
        ("INT8", "int_contents", -129),
        ("INT16", "int_contents", 40_000),
        ("UINT8", "uint_contents", 256),
    ],
)
def test_typed_values_out_of_the_datatypes_range_are_refused(
    datatype: str, field: str, value: int
) -> None:
    request = pb.ModelInferRequest(model_name="app")
    getattr(request.inputs.add(name="v", datatype=datatype, shape=[1]).contents, field).append(
        value
    )
    _refusal(request, "'v'", f"out of the range of {datatype}", field="inputs[0].contents")


def test_shared_memory_and_classification_are_refused() -> None:
    request = pb.ModelInferRequest(model_name="app")
    request.inputs.add(name="x", datatype="FP32", shape=[0]).parameters[
        "shared_memory_region"
    ].string_param = "r"
    _refusal(request, "'x'", "shared memory")
    request = pb.ModelInferRequest(model_name="app")
    request.outputs.add(name="y").parameters["classification"].int64_param = 3
    _refusal(request, "'y'", "classification", field="outputs[0].parameters")
    request = pb.ModelInferRequest(model_name="app")
    request.outputs.add(name="y").parameters["shared_memory_byte_size"].int64_param = 3
    _refusal(request, "'y'", "shared memory")
    request = pb.ModelInferRequest(model_name="app")
    request.outputs.add(name="y")
    request.outputs.add(name="y")
    _refusal(request, "'y'", "twice", field="outputs[1].name")


def test_parameters_are_the_endpoints_arguments() -> None:
    request = _raw_request(("x", "FP32", np.zeros(1, dtype=np.float32)), id="r-1")
    request.parameters["scale"].double_param = 2.5
    request.parameters["label"].string_param = "cat"
    request.parameters["top"].int64_param = -3
    request.parameters["big"].uint64_param = 2**64 - 1
    request.parameters["verbose"].bool_param = True
    call = model_infer_request(request, 30.0)
    assert call.request.has_json
    assert call.request.json == {
        "scale": 2.5,
        "label": "cat",
        "top": -3,
        "big": 2**64 - 1,
        "verbose": True,
    }
    assert (call.request.request_id, call.request.timeout_s) == ("r-1", 30.0)
    plain = model_infer_request(_raw_request(("x", "FP32", np.zeros(1, np.float32))), None)
    assert (plain.request.json, plain.request.has_json) == (None, False)


def test_the_timeout_parameter_can_only_shorten_the_deadline() -> None:
    request = pb.ModelInferRequest(model_name="app")
    request.parameters["timeout"].int64_param = 250_000
    assert model_infer_request(request, 30.0).request.timeout_s == 0.25
    assert model_infer_request(request, None).request.timeout_s == 0.25
    assert model_infer_request(request, 0.1).request.timeout_s == 0.1
    assert "timeout" not in (model_infer_request(request, None).request.json or {})
    for bad in (0, -5):
        request.parameters["timeout"].int64_param = bad
        _refusal(request, "'timeout'", "positive")
    request.parameters["timeout"].string_param = "1s"
    _refusal(request, "'timeout'")


@pytest.mark.parametrize("key", ["priority", "sequence_id", "sequence_start", "sequence_end"])
def test_scheduling_parameters_the_platform_has_not_are_refused(key: str) -> None:
    request = pb.ModelInferRequest(model_name="app")
    request.parameters[key].uint64_param = 1
    _refusal(request, f"'{key}'", "not supported", field="parameters")


def test_parameters_need_a_value_a_finite_number_and_their_own_name() -> None:
    request = pb.ModelInferRequest(model_name="app")
    request.parameters["empty"].SetInParent()
    _refusal(request, "'empty'", "no value")
    request = pb.ModelInferRequest(model_name="app")
    request.parameters["x"].double_param = math.nan
    _refusal(request, "'x'", "nan")
    request = _raw_request(("x", "FP32", np.zeros(1, dtype=np.float32)))
    request.parameters["x"].bool_param = True
    _refusal(request, "'x'", "name of an input")


def test_every_input_is_checked_before_any_is_converted() -> None:
    # inputs[0]'s data does not fit its shape, inputs[1]'s datatype is refused: the request
    # is refused for the datatype, a check that needs no conversion.
    request = _raw_request(
        ("a", "FP32", np.zeros(3, dtype=np.float32)), ("b", "FP32", np.zeros(1, np.float32))
    )
    request.inputs[0].shape[:] = [5]
    request.inputs[1].datatype = "UINT32"
    _refusal(request, "'b'", "UINT32")


# Answers -------------------------------------------------------------------------------------


def _result(*tensors: TensorPayload, answer: Any = None) -> InferResult:
    return InferResult(
        json=answer, tensors=tensors, model_id="7", request_id="gen", application="app"
    )


def test_tensors_are_answered_raw_with_their_oip_datatypes() -> None:
    floats = TensorPayload.from_array("scores", np.array([[1.0, 2.0]], dtype=np.float32))
    halves = TensorPayload("h", "bfloat16", (2,), b"\x80\x3f\x00\x40")
    response = model_infer_response("r-1", _result(floats, halves))
    assert (response.model_name, response.model_version, response.id) == ("app", "7", "r-1")
    assert [(o.name, o.datatype, list(o.shape)) for o in response.outputs] == [
        ("scores", "FP32", [1, 2]),
        ("h", "BF16", [2]),
    ]
    assert list(response.raw_output_contents) == [floats.data, halves.data]
    assert not any(o.HasField("contents") for o in response.outputs)


def test_outputs_asked_for_are_answered_in_that_order_only() -> None:
    a = TensorPayload.from_array("a", np.zeros(1, dtype=np.int8))
    b = TensorPayload.from_array("b", np.ones(2, dtype=np.int8))
    response = model_infer_response("", _result(a, b), ["b", "a"])
    assert [o.name for o in response.outputs] == ["b", "a"]
    assert list(response.raw_output_contents) == [b.data, a.data]
    with pytest.raises(
        InvalidArgumentError, match=r"no output named 'c' \(its outputs: 'a', 'b'\)"
    ):
        model_infer_response("", _result(a, b), ["c"])


@pytest.mark.parametrize("answer", [{"label": "cat", "p": [0.5, 1]}, None, "text"])
def test_a_json_answer_is_one_bytes_output_named_json(answer: Any) -> None:
    response = model_infer_response("", _result(answer=answer))
    (output,) = response.outputs
    assert (output.name, output.datatype, list(output.shape)) == ("json", "BYTES", [1])
    (raw,) = response.raw_output_contents
    (length,) = struct.unpack("<I", raw[:4])
    assert length == len(raw) - 4 and json.loads(raw[4:]) == answer


def test_model_metadata_says_what_the_platform_knows() -> None:
    model = ServedModel(
        name="app",
        versions=("3",),
        version="3",
        status=DeploymentStatus.RUNNING,
        ready=True,
        framework="torch",
        deployment_id=9,
        plugin="tensor-serve",
        endpoint_action="inference",
    )
    response = model_metadata_response(model)
    assert (response.name, list(response.versions), response.platform) == ("app", ["3"], "torch")
    assert not response.inputs and not response.outputs
    assert dict(response.properties) == {
        "status": "RUNNING",
        "deployment_id": "9",
        "plugin": "tensor-serve",
        "endpoint_action": "inference",
        "version": "3",
    }
    unknown = model_metadata_response(
        ServedModel("app", (), "", DeploymentStatus.FAILED, False, "", 1, "p", "")
    )
    assert unknown.platform == "synapse" and dict(unknown.properties)["status"] == "FAILED"
