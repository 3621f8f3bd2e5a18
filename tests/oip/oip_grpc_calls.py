"""Calls a server with the ``open-inference-grpc`` stubs; run by the OIP tests as a subprocess.

A subprocess because those stubs define the protocol's messages (package ``inference``) in
protobuf's default pool, as the server's own stubs do: one process cannot import both.

Reads ``{"address": "host:port", "calls": [...]}`` as JSON on stdin; each call is
``{"rpc": "ModelInfer", "request": {...}, "token": "..."}`` with the request in protobuf's
JSON form (``bytes`` fields base64). Prints one JSON list: ``{"ok": true, "value": {...}}``
(the response in JSON form, proto field names) or ``{"ok": false, "status": "NOT_FOUND",
"message": "..."}`` per call.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import grpc
from google.protobuf import json_format
from open_inference.grpc import protocol
from open_inference.grpc.service import GRPCInferenceServiceStub

REQUESTS = {
    "ServerLive": protocol.ServerLiveRequest,
    "ServerReady": protocol.ServerReadyRequest,
    "ServerMetadata": protocol.ServerMetadataRequest,
    "ModelReady": protocol.ModelReadyRequest,
    "ModelMetadata": protocol.ModelMetadataRequest,
    "ModelInfer": protocol.ModelInferRequest,
}


def run(stub: Any, call: dict[str, Any]) -> dict[str, Any]:
    request = json_format.ParseDict(call.get("request", {}), REQUESTS[call["rpc"]]())
    token = call.get("token")
    metadata = (("authorization", f"Bearer {token}"),) if token else None
    try:
        response = getattr(stub, call["rpc"])(request, metadata=metadata, timeout=120)
    except grpc.RpcError as exc:
        return {"ok": False, "status": exc.code().name, "message": exc.details()}
    value = json_format.MessageToDict(response, preserving_proto_field_name=True)
    return {"ok": True, "value": value}


def main() -> int:
    plan = json.load(sys.stdin)
    with grpc.insecure_channel(plan["address"]) as channel:
        stub = GRPCInferenceServiceStub(channel)
        results = [run(stub, call) for call in plan["calls"]]
    json.dump(results, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
