"""Protobuf ↔ domain conversion for the InferenceService.

Tensors and JSON payloads go through ``synapse_client.codec`` (the one dtype table and value
converter, shared with the client and the replicas); this module turns the codec's errors
into the core's ``InvalidArgumentError``. The JSON payload is read by the codec rather than
``json_format``: same results, several times faster (``json_format`` formats a field path
string for every element it visits), and it runs twice per Infer call.

JSON also travels as text (``json_text``): parsed and written by the SDK's JSON functions
(pydantic-core's Rust parser), integers stay integers, exactly. The response carries the form
the request asked for (``response_json_format``; by default the form of its payload).
"""

from __future__ import annotations

import math
import re
from typing import Any

from synapse.plugin.v1 import inference_service_pb2, tensor_pb2
from synapse_client import codec
from synapse_client.codec import TensorCodecError, TensorPayload, python_to_value
from synapse_sdk.jsonutil import dump_json_checked, load_json

from synapse_server.core._errors import InvalidArgumentError
from synapse_server.core.inference import InferenceFailedError, InferRequestData, InferResult
from synapse_server.grpc._converters import value_to_python

__all__ = [
    "answers_json_text",
    "infer_request_from_pb",
    "infer_response_to_pb",
    "python_to_value",
    "tensor_from_pb",
    "tensor_to_pb",
    "value_to_python",
]


def tensor_from_pb(message: tensor_pb2.Tensor) -> TensorPayload:
    """A wire tensor as the core's payload; checks dtype, shape and byte length."""
    try:
        return codec.tensor_from_pb(message)
    except TensorCodecError as exc:
        raise InvalidArgumentError(str(exc)) from None


def tensor_to_pb(tensor: TensorPayload) -> tensor_pb2.Tensor:
    """The wire form of an output tensor."""
    return codec.tensor_to_pb(tensor)


def _json_text_from_pb(data: bytes, field: str) -> Any:
    """The value of a request's JSON text; InvalidArgumentError naming ``field`` if it is not
    UTF-8 strict JSON (NaN and Infinity are not JSON)."""
    try:
        value = load_json(data)
    except ValueError as exc:
        # The parser's message is short and positional ("... at line 1 column 9"); it quotes
        # nothing of the caller's text.
        reason = str(exc).splitlines()[0][:200] if str(exc) else "invalid"
        raise InvalidArgumentError(f"{field} is not UTF-8 JSON: {reason}", field=field) from None
    # A literal beyond a double's range (1e999) parses as infinity, which JSON has not: only
    # text with a 3-digit exponent or a 309-digit number can hold one, so most is not walked.
    if _HUGE_NUMBER.search(data) and _holds_non_finite(value):
        raise InvalidArgumentError(
            f"{field} holds a number beyond the range of a double", field=field
        )
    return value


_HUGE_NUMBER = re.compile(rb"[eE]\+?\d{3}|\d{309}")


def _holds_non_finite(value: Any) -> bool:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, float):
            if not math.isfinite(item):
                return True
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


_JSON_FORMATS = frozenset(inference_service_pb2.JsonFormat.values())


def infer_request_from_pb(
    request: inference_service_pb2.InferRequest, timeout_s: float | None, prefix: str = ""
) -> InferRequestData:
    """The core's request for a wire request; ``prefix`` is the request's path in the RPC's
    message (``request.`` for InferStream), for field violations."""
    target = request.WhichOneof("target")
    if request.response_json_format not in _JSON_FORMATS:
        # Protobuf enums are open: a number this server does not know arrives as is.
        raise InvalidArgumentError(
            f"response_json_format {request.response_json_format} is not a JsonFormat "
            "(JSON_FORMAT_UNSPECIFIED, JSON_FORMAT_STRUCT or JSON_FORMAT_TEXT)",
            field=f"{prefix}response_json_format",
        )
    has_struct = request.HasField("json")
    if has_struct and request.json_text:
        raise InvalidArgumentError("set json or json_text, not both", field=f"{prefix}json_text")
    if request.json_text:
        has_json, body = True, _json_text_from_pb(request.json_text, f"{prefix}json_text")
    else:
        has_json = has_struct
        body = value_to_python(request.json, f"{prefix}json") if has_struct else None
    return InferRequestData(
        application=request.application if target == "application" else None,
        plugin=request.action.plugin if target == "action" else None,
        action=request.action.action if target == "action" else None,
        model_id=request.model_id,
        json=body,
        has_json=has_json,
        tensors=tuple(tensor_from_pb(t) for t in request.inputs),
        method=request.method,
        path=request.path,
        request_id=request.request_id,
        timeout_s=timeout_s,
    )


def answers_json_text(request: inference_service_pb2.InferRequest) -> bool:
    """Whether the answer to ``request`` carries its JSON as text: asked for, or by default
    when the request sent its payload as text."""
    wanted = request.response_json_format
    if wanted == inference_service_pb2.JSON_FORMAT_TEXT:
        return True
    return wanted == inference_service_pb2.JSON_FORMAT_UNSPECIFIED and bool(request.json_text)


def infer_response_to_pb(
    result: InferResult, json_text: bool = False
) -> inference_service_pb2.InferResponse:
    """The wire answer of a result: its tensors, and its JSON (as text when ``json_text``)
    unless it answered only tensors (an answer of neither is a JSON null).

    Raises :class:`InferenceFailedError` when the answer holds a NaN or infinity, which JSON
    text cannot carry.
    """
    response = inference_service_pb2.InferResponse(
        model_id=result.model_id,
        request_id=result.request_id,
        application=result.application,
        outputs=[tensor_to_pb(t) for t in result.tensors],
    )
    if result.json is not None or not result.tensors:
        if json_text:
            try:
                response.json_text = dump_json_checked(result.json)
            except ValueError:
                raise InferenceFailedError(
                    f"the answer of {result.application!r} holds NaN or Infinity, which JSON "
                    "text cannot carry (ask for JSON_FORMAT_STRUCT, or answer tensors) "
                    f"(correlation id {result.request_id})",
                    result.request_id,
                ) from None
        else:
            python_to_value(result.json, response.json)
    return response
