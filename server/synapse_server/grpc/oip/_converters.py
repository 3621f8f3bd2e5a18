"""Open Inference Protocol messages ↔ the inference core's requests and results.

A ``ModelInferRequest`` is checked whole before anything is converted (names, datatypes,
shapes against the bytes, where the data is, parameters), in the spirit of KServe's
``validate_grpc_request``: a bad request is refused with INVALID_ARGUMENT naming the tensor
(``inputs[1]``, its name and what is wrong) and nothing is sent to a replica.

Datatypes come from the platform's one dtype table (``synapse_client.codec.DTYPES``, each
with its OIP name). The serve replicas take the types of the platform's own tensors (BOOL,
UINT8, INT8, INT16, INT32, INT64, FP16, FP32, FP64, BF16); UINT16, UINT32, UINT64 and BYTES
inputs are refused naming the tensor and the datatype.

Tensor data is never unpacked into Python objects where the wire already holds the bytes:
``raw_input_contents`` become the core's tensor payloads as they are (both are little-endian
row-major), and FP32/FP64 ``contents`` are taken from their packed wire encoding, which is
exactly those bytes. Only the varint-encoded typed contents (integers, booleans) are read
element by element, into an ``array`` of the datatype's width (its range checked on the way).

Outputs are always answered in ``raw_output_contents``. An endpoint that answers JSON rather
than tensors is answered as one BYTES output named ``json`` holding the JSON text.
"""

from __future__ import annotations

import json
import math
import struct
import sys
from array import array
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from synapse_client.codec import DTYPES, DType, TensorPayload, dtype_by_oip

from synapse_server.core._errors import InvalidArgumentError, quoted
from synapse_server.core._limits import parse_id
from synapse_server.core._served_models import ServedModel
from synapse_server.core.inference import InferRequestData, InferResult
from synapse_server.grpc.oip._proto import grpc_predict_v2_pb2 as pb

__all__ = [
    "JSON_OUTPUT",
    "SUPPORTED_DATATYPES",
    "OipInferCall",
    "model_infer_request",
    "model_infer_response",
    "model_metadata_response",
]

#: The output that carries an endpoint's JSON answer (a BYTES tensor of one element).
JSON_OUTPUT = "json"
#: The OIP datatypes a request may carry: those the platform's tensors have.
SUPPORTED_DATATYPES: tuple[str, ...] = tuple(d.oip for d in DTYPES if d.wire is not None)
#: Each supported OIP datatype's entry of the dtype table.
_SUPPORTED: Mapping[str, DType] = {d.oip: d for d in DTYPES if d.wire is not None}
#: Each tensor dtype's OIP datatype name, for the answers.
_OIP_NAMES: Mapping[str, str] = {d.name: d.oip for d in DTYPES}
_ALL_DATATYPES = tuple(d.oip for d in DTYPES)

#: Typed ``contents`` field of each datatype, and the ``array`` type code that holds it.
#: FP16 and BF16 have no typed field: the protocol sends them raw only.
_CONTENTS: Mapping[str, tuple[str, str]] = {
    "BOOL": ("bool_contents", "B"),
    "UINT8": ("uint_contents", "B"),
    "INT8": ("int_contents", "b"),
    "INT16": ("int_contents", "h"),
    "INT32": ("int_contents", "i"),
    "INT64": ("int64_contents", "q"),
    "FP32": ("fp32_contents", "f"),
    "FP64": ("fp64_contents", "d"),
}
#: Fields whose packed encoding is the little-endian element bytes themselves.
_FIXED_WIDTH = frozenset({"fp32_contents", "fp64_contents"})
_CONTENTS_FIELDS = tuple(pb.InferTensorContents.DESCRIPTOR.fields_by_name)
_SHARED_MEMORY = ("shared_memory_region", "shared_memory_byte_size", "shared_memory_offset")
#: Request parameters of the protocol's clients that ask for what the platform has not.
_UNSUPPORTED_PARAMETERS = {
    "priority": "request priorities are not supported",
    "sequence_id": "stateful sequences are not supported",
    "sequence_start": "stateful sequences are not supported",
    "sequence_end": "stateful sequences are not supported",
}
#: The request parameter that bounds the request's time in the server, in microseconds
#: (tritonclient's ``timeout``).
_TIMEOUT_PARAMETER = "timeout"
#: More elements than any message can hold; a shape is not multiplied out past this.
_MAX_ELEMENTS = 1 << 63
#: At most this many dimensions are written into an error message.
_SHAPE_IN_MESSAGE = 8
_BIG_ENDIAN = sys.byteorder == "big"
# INT32 elements are read into array("i"): C's int, 32 bits on every platform Python supports.
assert array("i").itemsize == 4


@dataclass(frozen=True, slots=True)
class OipInferCall:
    """A checked ``ModelInferRequest``: the core's request and the outputs asked for."""

    request: InferRequestData
    #: The names of the outputs to answer, in the order asked; empty for all.
    outputs: tuple[str, ...]


def _tensor_label(kind: str, index: int, name: str) -> str:
    return f"{kind} {quoted(name)} ({kind}s[{index}])"


def _shape_text(shape: Sequence[int]) -> str:
    if len(shape) <= _SHAPE_IN_MESSAGE:
        return str(list(shape))
    return f"of {len(shape)} dimensions"


def _elements(shape: Sequence[int], bound: int) -> int | None:
    """The number of elements of ``shape``, or None once it is past ``bound``.

    Stops early, so that a long shape of huge dimensions never builds a huge number.
    """
    if 0 in shape:
        return 0
    count = 1
    for dim in shape:
        count *= dim
        if count > bound:
            return None
    return count


def _parameter_value(key: str, value: pb.InferParameter, where: str) -> Any:
    kind = value.WhichOneof("parameter_choice")
    if kind is None:
        raise InvalidArgumentError(f"{where} {quoted(key)} has no value", field=where)
    result = getattr(value, kind)
    if kind == "double_param" and not math.isfinite(result):
        raise InvalidArgumentError(
            f"{where} {quoted(key)} is {result}; NaN and infinities are not allowed", field=where
        )
    return result


def _check_input_parameters(tensor: pb.ModelInferRequest.InferInputTensor, label: str) -> None:
    # Other input parameters (content_type, binary_data_size...) describe how a client
    # encoded the data; the datatype and shape say all the platform needs.
    for key in _SHARED_MEMORY:
        if key in tensor.parameters:
            raise InvalidArgumentError(
                f"{label}: shared memory is not supported by this server; send the data in "
                "raw_input_contents or contents"
            )


def _raw_payload(
    index: int, tensor: pb.ModelInferRequest.InferInputTensor, dtype: DType, raw: bytes
) -> TensorPayload:
    assert dtype.itemsize is not None
    shape = tuple(tensor.shape)
    count = _elements(shape, _MAX_ELEMENTS)
    if count is None or count * dtype.itemsize != len(raw):
        needed = "more" if count is None else str(count * dtype.itemsize)
        raise InvalidArgumentError(
            f"{_tensor_label('input', index, tensor.name)}: shape {_shape_text(shape)} of "
            f"{tensor.datatype} needs {needed} bytes; raw_input_contents[{index}] has "
            f"{len(raw)}",
            field=f"inputs[{index}].shape",
        )
    return TensorPayload(tensor.name, dtype.name, shape, raw)


def _typed_payload(
    index: int, tensor: pb.ModelInferRequest.InferInputTensor, dtype: DType
) -> TensorPayload:
    label = _tensor_label("input", index, tensor.name)
    contents = tensor.contents
    typed = _CONTENTS.get(tensor.datatype)
    used = [f for f in _CONTENTS_FIELDS if len(getattr(contents, f))]
    field_name = typed[0] if typed is not None else ""
    stray = [f for f in used if f != field_name]
    if stray:
        expected = f"its data belongs in contents.{field_name}" if typed else "send it raw"
        raise InvalidArgumentError(
            f"{label}: a {tensor.datatype} tensor has no contents.{stray[0]} ({expected})",
            field=f"inputs[{index}].contents",
        )
    shape = tuple(tensor.shape)
    values = getattr(contents, field_name) if typed is not None else ()
    count = _elements(shape, _MAX_ELEMENTS)
    if count != len(values):
        if typed is None:
            detail = f"{tensor.datatype} data is sent in raw_input_contents only"
        else:
            detail = f"contents.{field_name} has {len(values)} elements"
        raise InvalidArgumentError(
            f"{label}: shape {_shape_text(shape)} needs "
            f"{'more' if count is None else count} elements; {detail}",
            field=f"inputs[{index}].shape",
        )
    if typed is None or not values:
        return TensorPayload(tensor.name, dtype.name, shape, b"")
    if field_name in _FIXED_WIDTH:
        data = _packed_bytes(contents)
    else:
        data = _varint_bytes(values, typed[1], label, tensor.datatype, index)
    return TensorPayload(tensor.name, dtype.name, shape, data)


def _packed_bytes(contents: pb.InferTensorContents) -> bytes:
    """The elements of the one packed float/double field ``contents`` holds, as their
    little-endian bytes.

    Such a message serialises as the field's tag, a varint length and the packed elements,
    which are the little-endian element bytes (unknown fields, if any, come after them): one
    copy of the bytes instead of a Python float per element.
    """
    encoded = contents.SerializeToString()
    offset, length, shift = 1, 0, 0  # fields 6 and 7 have one-byte tags
    while True:
        byte = encoded[offset]
        length |= (byte & 0x7F) << shift
        offset += 1
        if not byte & 0x80:
            break
        shift += 7
    return encoded[offset : offset + length]


def _varint_bytes(values: Any, code: str, label: str, datatype: str, index: int) -> bytes:
    """Varint-encoded elements as little-endian bytes of the datatype's width."""
    try:
        items = array(code, values)
    except OverflowError:
        raise InvalidArgumentError(
            f"{label}: a value is out of the range of {datatype}",
            field=f"inputs[{index}].contents",
        ) from None
    if _BIG_ENDIAN:
        items.byteswap()
    return items.tobytes()


def _request_parameters(
    request: pb.ModelInferRequest, inputs: set[str]
) -> tuple[dict[str, Any], float | None]:
    """The endpoint's keyword arguments and the request's own time bound in seconds."""
    arguments: dict[str, Any] = {}
    timeout_s: float | None = None
    for key, value in request.parameters.items():
        if not key:
            raise InvalidArgumentError("a request parameter has an empty name", field="parameters")
        reason = _UNSUPPORTED_PARAMETERS.get(key)
        if reason is not None:
            raise InvalidArgumentError(
                f"parameter {quoted(key)}: {reason} by this server", field="parameters"
            )
        given = _parameter_value(key, value, "parameter")
        if key == _TIMEOUT_PARAMETER:
            if isinstance(given, bool) or not isinstance(given, int) or given <= 0:
                raise InvalidArgumentError(
                    "parameter 'timeout' must be a positive integer (microseconds)",
                    field="parameters",
                )
            timeout_s = given / 1e6
            continue
        if key in inputs:
            raise InvalidArgumentError(
                f"parameter {quoted(key)} has the name of an input; the endpoint takes each "
                "name once",
                field="parameters",
            )
        arguments[key] = given
    return arguments, timeout_s


def _requested_outputs(request: pb.ModelInferRequest) -> tuple[str, ...]:
    names: list[str] = []
    for index, output in enumerate(request.outputs):
        label = _tensor_label("output", index, output.name)
        if not output.name:
            raise InvalidArgumentError(
                f"outputs[{index}] has no name", field=f"outputs[{index}].name"
            )
        if output.name in names:
            raise InvalidArgumentError(
                f"{label} is asked for twice", field=f"outputs[{index}].name"
            )
        if "classification" in output.parameters:
            raise InvalidArgumentError(
                f"{label}: classification outputs are not supported by this server",
                field=f"outputs[{index}].parameters",
            )
        for key in _SHARED_MEMORY:
            if key in output.parameters:
                raise InvalidArgumentError(
                    f"{label}: shared memory is not supported by this server",
                    field=f"outputs[{index}].parameters",
                )
        names.append(output.name)
    return tuple(names)


def _datatype_refusal(
    index: int, tensor: pb.ModelInferRequest.InferInputTensor
) -> InvalidArgumentError:
    """The error for an input whose datatype the protocol or the platform lacks."""
    label = _tensor_label("input", index, tensor.name)
    if dtype_by_oip(tensor.datatype) is None:
        return InvalidArgumentError(
            f"{label}: unknown datatype {quoted(tensor.datatype)}; the protocol's are "
            f"{', '.join(_ALL_DATATYPES)}",
            field=f"inputs[{index}].datatype",
        )
    return InvalidArgumentError(
        f"{label}: datatype {tensor.datatype} is not supported by this server; "
        f"supported: {', '.join(SUPPORTED_DATATYPES)}",
        field=f"inputs[{index}].datatype",
    )


def model_infer_request(request: pb.ModelInferRequest, deadline_s: float | None) -> OipInferCall:
    """The core's request for a ``ModelInferRequest``, checked whole first.

    ``deadline_s``: the time the call has left (None without a deadline); the request's
    ``timeout`` parameter can only shorten it. Raises ``InvalidArgumentError`` naming the
    field (and the tensor) for anything the platform cannot run as asked.
    """
    if not request.model_name:
        raise InvalidArgumentError(
            "model_name is required (the serve application's name)", field="model_name"
        )
    model_id = (
        str(parse_id(request.model_version, "model_version")) if request.model_version else ""
    )
    inputs = request.inputs
    raws = request.raw_input_contents
    if raws and len(raws) != len(inputs):
        raise InvalidArgumentError(
            f"raw_input_contents has {len(raws)} entries for {len(inputs)} inputs; send one "
            "per input, in the order of inputs",
            field="raw_input_contents",
        )
    # Every tensor is checked before any is converted. The labels naming a tensor are only
    # formatted for an error: this runs for every call.
    names: set[str] = set()
    dtypes: list[DType] = []
    for index, tensor in enumerate(inputs):
        name = tensor.name
        if not name:
            raise InvalidArgumentError(
                f"inputs[{index}] has no name", field=f"inputs[{index}].name"
            )
        if name in names:
            raise InvalidArgumentError(
                f"{_tensor_label('input', index, name)}: the name is used by an earlier input",
                field=f"inputs[{index}].name",
            )
        names.add(name)
        dtype = _SUPPORTED.get(tensor.datatype)
        if dtype is None:
            raise _datatype_refusal(index, tensor)
        shape = tensor.shape
        if shape and min(shape) < 0:
            raise InvalidArgumentError(
                f"{_tensor_label('input', index, name)}: shape {_shape_text(shape)} has a "
                "negative dimension",
                field=f"inputs[{index}].shape",
            )
        if raws and tensor.HasField("contents") and tensor.contents.ByteSize():
            raise InvalidArgumentError(
                f"{_tensor_label('input', index, name)}: has contents while the request sends "
                "raw_input_contents; send each input's data one way",
                field=f"inputs[{index}].contents",
            )
        if len(tensor.parameters):
            _check_input_parameters(tensor, _tensor_label("input", index, name))
        dtypes.append(dtype)
    arguments, timeout_s = (
        _request_parameters(request, names) if len(request.parameters) else ({}, None)
    )
    outputs = _requested_outputs(request) if len(request.outputs) else ()
    if raws:
        tensors = tuple(_raw_payload(i, t, dtypes[i], raws[i]) for i, t in enumerate(inputs))
    else:
        tensors = tuple(_typed_payload(i, t, dtypes[i]) for i, t in enumerate(inputs))
    if timeout_s is not None and (deadline_s is None or timeout_s < deadline_s):
        deadline_s = timeout_s
    return OipInferCall(
        InferRequestData(
            application=request.model_name,
            model_id=model_id,
            json=arguments if arguments else None,
            has_json=bool(arguments),
            tensors=tensors,
            method="POST",
            path="/",
            request_id=request.id,
            timeout_s=deadline_s,
        ),
        outputs,
    )


def _bytes_element(data: bytes) -> bytes:
    """One BYTES element as the protocol's raw encoding: a 4-byte little-endian length first."""
    return struct.pack("<I", len(data)) + data


def model_infer_response(
    request_id: str, result: InferResult, outputs: Sequence[str] = ()
) -> pb.ModelInferResponse:
    """The ``ModelInferResponse`` of a result: its tensors (or its JSON as ``json``), only
    those named in ``outputs`` when given, in that order.

    Raises ``InvalidArgumentError`` when an output asked for is not in the answer.
    """
    response = pb.ModelInferResponse(
        model_name=result.application, model_version=result.model_id, id=request_id
    )
    if result.tensors:
        # The reply's tensors were checked by the serve protocol: their dtypes are known.
        answered = {t.name: (_OIP_NAMES[t.dtype], t.shape, t.data) for t in result.tensors}
    else:
        text = json.dumps(result.json, separators=(",", ":"), allow_nan=False).encode()
        answered = {JSON_OUTPUT: ("BYTES", (1,), _bytes_element(text))}
    for name in outputs:
        if name not in answered:
            known = ", ".join(quoted(n) for n in list(answered)[:8])
            raise InvalidArgumentError(
                f"the model answered no output named {quoted(name)} (its outputs: {known})",
                field="outputs",
            )
    add_output = response.outputs.add
    raw_contents = response.raw_output_contents
    for name in outputs or answered:
        datatype, shape, data = answered[name]
        add_output(name=name, datatype=datatype, shape=shape)
        raw_contents.append(data)
    return response


def model_metadata_response(model: ServedModel) -> pb.ModelMetadataResponse:
    """What the platform knows of a served model.

    The endpoint's inputs and outputs are its Python parameters and return value, which the
    platform does not know: both lists are empty. ``platform`` is the framework the model
    at the version was registered with, or ``synapse`` when there is none.
    """
    response = pb.ModelMetadataResponse(
        name=model.name,
        versions=list(model.versions),
        platform=model.framework or "synapse",
    )
    properties = response.properties
    properties["status"] = model.status.value.upper()
    properties["deployment_id"] = str(model.deployment_id)
    properties["plugin"] = model.plugin
    if model.endpoint_action:
        properties["endpoint_action"] = model.endpoint_action
    if model.version:
        properties["version"] = model.version
    return response
