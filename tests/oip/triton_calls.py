"""Calls a server with tritonclient's gRPC client; run by the OIP tests in .venv-triton.

Reads ``{"address": "host:port", "calls": [...]}`` as JSON on stdin and prints one JSON list:
a result per call, ``{"ok": true, "value": ...}`` or ``{"ok": false, "status": "NOT_FOUND",
"message": "..."}``. Imports nothing of the platform: this is a third-party client's view.

Calls (``token`` optional in each; it becomes ``authorization: Bearer <token>``):

* ``{"op": "server_live"}``, ``"server_ready"``, ``"server_metadata"``;
* ``{"op": "model_ready" | "model_metadata", "model": ..., "version": ""}``;
* ``{"op": "infer", "model": ..., "version": "", "inputs": [INPUT], "outputs": [names] | null,
  "parameters": {...}, "request_id": "", "timeout_us": null, "client_timeout": null}`` where
  INPUT is ``{"name", "datatype", "dtype" (numpy name, "bfloat16" for ml_dtypes'), "data"
  (nested lists), "shape" (optional: set after the data, to send a shape that does not match
  it)}``;
* ``{"op": "stream", "model": ..., "requests": [INFER...]}``: the requests on one
  ``ModelStreamInfer`` stream, a result per request.
"""

from __future__ import annotations

import json
import queue
import sys
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException


def _dtype(name: str) -> Any:
    if name == "bfloat16":
        import ml_dtypes

        return ml_dtypes.bfloat16
    return np.dtype(name)


def _inputs(specs: list[dict[str, Any]]) -> list[Any]:
    inputs = []
    for spec in specs:
        array = np.array(spec["data"], dtype=_dtype(spec["dtype"]))
        infer_input = grpcclient.InferInput(spec["name"], list(array.shape), spec["datatype"])
        infer_input.set_data_from_numpy(array)
        if "shape" in spec:
            infer_input.set_shape(spec["shape"])
        inputs.append(infer_input)
    return inputs


def _outputs(names: list[str] | None) -> list[Any] | None:
    if names is None:
        return None
    return [grpcclient.InferRequestedOutput(name) for name in names]


def _plain(array: Any) -> Any:
    if array.dtype == object:
        return [item.decode() if isinstance(item, bytes) else item for item in array.ravel()]
    if array.dtype.name == "bfloat16":
        return array.astype(np.float32).tolist()
    return array.tolist()


def _result(result: Any) -> dict[str, Any]:
    response = result.get_response()
    outputs = {}
    for output in response.outputs:
        array = result.as_numpy(output.name)
        outputs[output.name] = {
            "datatype": output.datatype,
            "shape": list(output.shape),
            "dtype": str(array.dtype),
            "data": _plain(array),
        }
    return {
        "model_name": response.model_name,
        "model_version": response.model_version,
        "id": response.id,
        "outputs": outputs,
        "output_order": [o.name for o in response.outputs],
    }


def _error(exc: InferenceServerException) -> dict[str, Any]:
    status = str(exc.status() or "")
    return {"ok": False, "status": status.rpartition(".")[2], "message": exc.message()}


def _infer_kwargs(call: dict[str, Any]) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "model_name": call["model"],
        "inputs": _inputs(call.get("inputs", [])),
        "model_version": call.get("version", ""),
        "outputs": _outputs(call.get("outputs")),
        "request_id": call.get("request_id", ""),
    }
    if call.get("parameters"):
        kwargs["parameters"] = call["parameters"]
    if call.get("priority"):
        kwargs["priority"] = call["priority"]
    if call.get("timeout_us") is not None:
        kwargs["timeout"] = call["timeout_us"]
    return kwargs


def _stream(client: Any, call: dict[str, Any], headers: dict[str, str]) -> list[Any]:
    answers: queue.Queue[Any] = queue.Queue()
    client.start_stream(
        callback=lambda result, error: answers.put((result, error)), headers=headers
    )
    try:
        for request in call["requests"]:
            client.async_stream_infer(**_infer_kwargs({"model": call["model"], **request}))
        results = []
        for _ in call["requests"]:
            result, error = answers.get(timeout=120)
            if error is not None:
                results.append(_error(error))
            else:
                results.append({"ok": True, "value": _result(result)})
        return results
    finally:
        client.stop_stream()


def run(client: Any, call: dict[str, Any]) -> Any:
    token = call.get("token")
    headers = {"authorization": f"Bearer {token}"} if token else {}
    op = call["op"]
    if op == "server_live":
        return client.is_server_live(headers=headers)
    if op == "server_ready":
        return client.is_server_ready(headers=headers)
    if op == "server_metadata":
        answer = client.get_server_metadata(headers=headers)
        return {
            "name": answer.name,
            "version": answer.version,
            "extensions": list(answer.extensions),
        }
    if op == "model_ready":
        return client.is_model_ready(call["model"], call.get("version", ""), headers=headers)
    if op == "model_metadata":
        answer = client.get_model_metadata(call["model"], call.get("version", ""), headers=headers)
        return {
            "name": answer.name,
            "versions": list(answer.versions),
            "platform": answer.platform,
            "inputs": [i.name for i in answer.inputs],
            "outputs": [o.name for o in answer.outputs],
        }
    if op == "infer":
        result = client.infer(
            **_infer_kwargs(call), headers=headers, client_timeout=call.get("client_timeout")
        )
        return _result(result)
    if op == "stream":
        return _stream(client, call, headers)
    raise ValueError(f"unknown op {op!r}")


def main() -> int:
    plan = json.load(sys.stdin)
    results = []
    with grpcclient.InferenceServerClient(url=plan["address"]) as client:
        for call in plan["calls"]:
            try:
                results.append({"ok": True, "value": run(client, call)})
            except InferenceServerException as exc:
                results.append(_error(exc))
    json.dump(results, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
