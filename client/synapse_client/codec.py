"""The one tensor and value codec of the platform: dtype table, tensors, JSON-like values.

Used by the client, the server's gRPC converters and the serve replicas (through the SDK),
so the three can never disagree on what a dtype is called, how large its elements are, or
how a ``google.protobuf.Value`` reads as Python.

**Data types.** :data:`DTYPES` lists every element type the platform knows, each as a
:class:`DType`: its numpy name (``"float32"``, the key everywhere in Python), its number in
the wire enum ``synapse.plugin.v1.DataType`` (None where our wire has none yet), its size in
bytes (None for variable-length ``bytes``) and its Open Inference Protocol v2 name
(``"FP32"``). Look one up with :func:`dtype_by_name`, :func:`dtype_by_wire` or
:func:`dtype_by_oip`.

**Tensors.** A :class:`TensorPayload` is a dense tensor as bytes: numpy dtype name, shape,
little-endian row-major data. :func:`tensor_from_pb` checks a wire ``Tensor`` and makes one,
:func:`tensor_to_pb` goes back; :meth:`TensorPayload.from_array` and
:meth:`TensorPayload.to_array` convert numpy arrays and torch tensors. numpy is imported only
by the calls that need it (a missing numpy raises :class:`MissingExtraError`, which names
the extra to install), so the client stays importable without it.

**JSON-like values.** :func:`value_to_python` / :func:`struct_to_python` read a ``Value`` /
``Struct`` as plain Python exactly as ``json_format.MessageToDict`` does (numbers are floats),
several times faster (``json_format`` formats a field path for every element it visits).
NaN and infinities, which a Struct can carry and JSON cannot, are refused when *reading*
(:class:`NonFiniteNumberError`, naming the path, e.g. ``json.inputs[2]``); writing with
:func:`python_to_value` / :func:`python_to_struct` mirrors ``json_format.ParseDict`` and
checks nothing but types, so the reader's rule is the one rule.

Every error is a :class:`CodecError` (a ``ValueError``) whose message quotes at most a short
prefix of any name it was given; callers map it to their own error (the server to
INVALID_ARGUMENT, the client to ``ClientConfigError``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from google.protobuf import struct_pb2
from synapse.plugin.v1 import tensor_pb2

__all__ = [
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
]

#: How many characters of a caller's name an error message quotes at most.
_QUOTE_CHARS = 64
#: The longest field path an error names (deeper paths are cut).
_MAX_PATH_CHARS = 256


# Data types ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DType:
    """One element type.

    ``name``: the numpy name (``"float32"``; ``"bfloat16"`` although numpy itself has no
    such type; ``"bytes"`` for variable-length byte strings). ``wire``: the number of
    ``synapse.plugin.v1.DataType`` (None where that enum has no value for it: such a tensor
    cannot travel over the platform's own API). ``itemsize``: bytes per element (None for
    ``bytes``). ``oip``: the Open Inference Protocol v2 ``datatype`` name.
    """

    name: str
    wire: int | None
    itemsize: int | None
    oip: str


#: Every element type, in the Open Inference Protocol's order.
DTYPES: tuple[DType, ...] = (
    DType("bool", tensor_pb2.DATA_TYPE_BOOL, 1, "BOOL"),
    DType("uint8", tensor_pb2.DATA_TYPE_UINT8, 1, "UINT8"),
    DType("uint16", None, 2, "UINT16"),
    DType("uint32", None, 4, "UINT32"),
    DType("uint64", None, 8, "UINT64"),
    DType("int8", tensor_pb2.DATA_TYPE_INT8, 1, "INT8"),
    DType("int16", tensor_pb2.DATA_TYPE_INT16, 2, "INT16"),
    DType("int32", tensor_pb2.DATA_TYPE_INT32, 4, "INT32"),
    DType("int64", tensor_pb2.DATA_TYPE_INT64, 8, "INT64"),
    DType("float16", tensor_pb2.DATA_TYPE_FLOAT16, 2, "FP16"),
    DType("float32", tensor_pb2.DATA_TYPE_FLOAT32, 4, "FP32"),
    DType("float64", tensor_pb2.DATA_TYPE_FLOAT64, 8, "FP64"),
    DType("bfloat16", tensor_pb2.DATA_TYPE_BFLOAT16, 2, "BF16"),
    DType("bytes", None, None, "BYTES"),
)

_BY_NAME = {d.name: d for d in DTYPES}
_BY_WIRE = {d.wire: d for d in DTYPES if d.wire is not None}
_BY_OIP = {d.oip: d for d in DTYPES}

#: The numpy names a :class:`TensorPayload` may carry: those the platform's wire has.
TENSOR_DTYPES: frozenset[str] = frozenset(d.name for d in DTYPES if d.wire is not None)


def dtype_by_name(name: str) -> DType | None:
    """The type of numpy name ``name`` (``"float32"``); None for one the table lacks."""
    return _BY_NAME.get(name)


def dtype_by_wire(value: int) -> DType | None:
    """The type of a ``synapse.plugin.v1.DataType`` number; None for UNSPECIFIED or unknown."""
    return _BY_WIRE.get(value)


def dtype_by_oip(name: str) -> DType | None:
    """The type of an Open Inference Protocol ``datatype`` (``"FP32"``); None if unknown."""
    return _BY_OIP.get(name)


# Errors --------------------------------------------------------------------------------------


class CodecError(ValueError):
    """A value cannot be converted; ``field`` names where (empty when not known)."""

    def __init__(self, message: str, field: str = "") -> None:
        super().__init__(message)
        self.field = field


class TensorCodecError(CodecError):
    """A tensor's dtype, shape or data is invalid, or its dtype cannot be sent."""


class NonFiniteNumberError(CodecError):
    """A Value holds NaN or an infinity, which JSON cannot; ``field`` is the path to it."""

    def __init__(self, number: float, path: str) -> None:
        super().__init__(
            f"{path}: {number} is not a JSON number (NaN and Infinity are not allowed)", path
        )
        self.number = number


class MissingExtraError(ModuleNotFoundError):
    """A tensor conversion needs a package that is not installed (numpy, or torch)."""


def _quoted(value: str) -> str:
    if len(value) <= _QUOTE_CHARS:
        return repr(value)
    return f"{value[:_QUOTE_CHARS]!r}... ({len(value)} characters)"


_numpy_module: ModuleType | None = None


def _numpy() -> Any:
    global _numpy_module
    if _numpy_module is None:
        try:
            import numpy
        except ImportError as exc:
            raise MissingExtraError(
                "tensors need numpy, which is not installed: pip install "
                "'synapse-client[tensors]' (or numpy)",
                name="numpy",
            ) from exc
        _numpy_module = numpy
    return _numpy_module


def _torch() -> Any:
    try:
        import torch
    except ImportError as exc:
        raise MissingExtraError(
            "bfloat16 tensors need torch (numpy has no bfloat16), which is not installed: "
            "pip install torch",
            name="torch",
        ) from exc
    return torch


# Tensors -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TensorPayload:
    """A dense tensor: numpy dtype name, shape and little-endian row-major bytes.

    ``dtype`` is one of :data:`TENSOR_DTYPES`. Build one from an array with
    :meth:`from_array` or from the wire with :func:`tensor_from_pb`; both check it.
    """

    name: str
    dtype: str
    shape: tuple[int, ...]
    data: bytes

    def check(self) -> None:
        """Raise :class:`TensorCodecError` unless dtype, shape and data length agree."""
        dtype = _BY_NAME.get(self.dtype)
        if dtype is None or dtype.wire is None or dtype.itemsize is None:
            raise TensorCodecError(
                f"tensor {_quoted(self.name)}: unsupported dtype {_quoted(str(self.dtype))}"
            )
        shape = self.shape
        if any(dim < 0 for dim in shape):
            raise TensorCodecError(f"tensor {_quoted(self.name)}: negative dimension")
        size = len(self.data)
        expected = 0 if 0 in shape else dtype.itemsize
        for dim in shape if expected else ():
            expected *= dim
            if expected > size:
                # Cannot match any more: stop before a long shape builds a huge number.
                break
        if size != expected:
            described = list(shape) if len(shape) <= 8 else f"of {len(shape)} dimensions"
            raise TensorCodecError(
                f"tensor {_quoted(self.name)}: {size} bytes do not fit shape {described} "
                f"and dtype {dtype.name}"
            )

    def to_array(self) -> Any:
        """The tensor as a read-only numpy array without copying; ``bfloat16`` as a torch
        tensor (numpy has no such type). Checks the payload first."""
        self.check()
        if self.dtype == "bfloat16":
            torch = _torch()
            if not self.data:
                return torch.empty(self.shape, dtype=torch.bfloat16)
            flat = torch.frombuffer(bytearray(self.data), dtype=torch.bfloat16)
            return flat.reshape(self.shape)
        return self.to_numpy()

    def to_numpy(self) -> Any:
        """The tensor as a read-only numpy array without copying; ``bfloat16`` as its raw
        ``uint16`` bit patterns (for code without torch). Checks the payload first."""
        self.check()
        np = _numpy()
        dtype = np.dtype("<u2") if self.dtype == "bfloat16" else np.dtype(self.dtype)
        return np.frombuffer(self.data, dtype=dtype.newbyteorder("<")).reshape(self.shape)

    @classmethod
    def from_array(cls, name: str, value: Any) -> TensorPayload:
        """Encode a numpy array, a torch tensor, or anything ``numpy.asarray`` takes.

        Big-endian arrays are converted to little-endian. Raises :class:`TensorCodecError`
        for a dtype the wire cannot carry (see :data:`TENSOR_DTYPES`).
        """
        detach = getattr(value, "detach", None)
        if callable(detach):
            torch = _torch()
            tensor = value.detach().cpu().contiguous()
            if tensor.dtype == torch.bfloat16:
                raw = tensor.view(torch.int16).numpy().astype("<i2").tobytes()
                return cls(name, "bfloat16", tuple(int(d) for d in tensor.shape), raw)
            value = tensor.numpy()
        np = _numpy()
        # Not ascontiguousarray: it turns a 0-d array into shape (1,). tobytes() writes
        # row-major order whatever the array's layout.
        array = np.asarray(value)
        dtype_name = array.dtype.name
        if dtype_name not in TENSOR_DTYPES:
            raise TensorCodecError(
                f"tensor {_quoted(name)}: dtype {array.dtype} cannot be sent as a tensor"
            )
        little = array.astype(array.dtype.newbyteorder("<"), copy=False)
        return cls(name, dtype_name, tuple(int(d) for d in array.shape), little.tobytes())


def tensor_from_pb(message: tensor_pb2.Tensor) -> TensorPayload:
    """A wire ``Tensor`` as a payload; checks dtype, shape and byte length.

    Raises :class:`TensorCodecError` (``field`` ``"dtype"``, ``"shape"`` or ``"data"``).
    """
    dtype = _BY_WIRE.get(message.dtype)
    if dtype is None:
        raise TensorCodecError(f"tensor {_quoted(message.name)}: dtype must be set", "dtype")
    payload = TensorPayload(message.name, dtype.name, tuple(message.shape), message.data)
    payload.check()
    return payload


def tensor_to_pb(tensor: TensorPayload) -> tensor_pb2.Tensor:
    """The wire ``Tensor`` of a payload (which is trusted: built by this module)."""
    wire: Any = _BY_NAME[tensor.dtype].wire
    return tensor_pb2.Tensor(
        name=tensor.name, dtype=wire, shape=list(tensor.shape), data=tensor.data
    )


# JSON-like values ----------------------------------------------------------------------------


class _NotJsonNumber(Exception):
    """A NaN or infinite number, with the path to it, collected while the stack unwinds."""

    def __init__(self, number: float) -> None:
        self.number = number
        self.path: list[str] = []


def _python(message: struct_pb2.Value) -> Any:
    # try/except costs nothing in Python 3.11 until something raises: the path to a bad
    # number is built only then, never for the values that convert.
    kind = message.WhichOneof("kind")
    if kind == "struct_value":
        return _struct_python(message.struct_value)
    if kind == "list_value":
        items = []
        for index, item in enumerate(message.list_value.values):
            try:
                items.append(_python(item))
            except _NotJsonNumber as exc:
                exc.path.append(f"[{index}]")
                raise
        return items
    if kind == "number_value":
        number = message.number_value
        if math.isinf(number) or math.isnan(number):
            raise _NotJsonNumber(number)
        return number
    if kind == "string_value":
        return message.string_value
    if kind == "bool_value":
        return message.bool_value
    return None


def _struct_python(message: struct_pb2.Struct) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, item in message.fields.items():
        try:
            out[key] = _python(item)
        except _NotJsonNumber as exc:
            exc.path.append(f".{key[:64]}" if len(key) <= 64 else f".{key[:64]}...")
            raise
    return out


def _not_json_number(exc: _NotJsonNumber, field: str) -> NonFiniteNumberError:
    path = field + "".join(reversed(exc.path))
    if len(path) > _MAX_PATH_CHARS:
        path = path[: _MAX_PATH_CHARS - 3] + "..."
    return NonFiniteNumberError(exc.number, path)


def value_to_python(message: struct_pb2.Value, field: str = "json") -> Any:
    """A ``google.protobuf.Value`` as plain Python, as ``json_format.MessageToDict`` gives it.

    Numbers are floats; an unset value is None. A NaN or infinite number raises
    :class:`NonFiniteNumberError` naming its path under ``field`` (``json.inputs[2]``).
    """
    try:
        return _python(message)
    except _NotJsonNumber as exc:
        raise _not_json_number(exc, field) from None


def struct_to_python(message: struct_pb2.Struct, field: str = "") -> dict[str, Any]:
    """A ``google.protobuf.Struct`` as a dict; see :func:`value_to_python`."""
    try:
        return _struct_python(message)
    except _NotJsonNumber as exc:
        raise _not_json_number(exc, field) from None


def python_to_value(value: Any, message: struct_pb2.Value | None = None) -> struct_pb2.Value:
    """Plain Python (JSON-like) as a ``google.protobuf.Value``, as ``json_format.ParseDict``.

    Fills ``message`` when given. Raises ``TypeError`` for anything JSON cannot represent
    (a non-string key, an object of another type).
    """
    target = struct_pb2.Value() if message is None else message
    _fill_value(target, value)
    return target


def python_to_struct(
    value: Mapping[str, Any], message: struct_pb2.Struct | None = None
) -> struct_pb2.Struct:
    """A JSON-like mapping as a ``google.protobuf.Struct`` (fills ``message`` when given).

    Raises ``TypeError`` as :func:`python_to_value` does.
    """
    target = struct_pb2.Struct() if message is None else message
    fields = target.fields
    for key, item in value.items():
        if not isinstance(key, str):
            raise TypeError(f"JSON object keys must be strings, got {type(key).__name__}")
        _fill_value(fields[key], item)
    return target


def _fill_value(message: struct_pb2.Value, value: Any) -> None:
    if value is None:
        message.null_value = struct_pb2.NULL_VALUE
    elif isinstance(value, bool):
        message.bool_value = value
    elif isinstance(value, str):
        message.string_value = value
    elif isinstance(value, int | float):
        message.number_value = value
    elif isinstance(value, dict | Mapping):
        struct = message.struct_value
        struct.SetInParent()
        fields = struct.fields
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"JSON object keys must be strings, got {type(key).__name__}")
            _fill_value(fields[key], item)
    elif isinstance(value, list | tuple):
        values = message.list_value
        values.SetInParent()
        for item in value:
            _fill_value(values.values.add(), item)
    else:
        raise TypeError(f"{type(value).__name__} is not JSON-like")
