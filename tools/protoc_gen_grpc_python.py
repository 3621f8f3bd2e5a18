#!/usr/bin/env python
"""protoc plugin ``grpc_python`` for buf, backed by grpcio-tools' bundled generator.

grpcio-tools ships the gRPC Python generator only inside its ``protoc`` (``grpc_tools.protoc``),
not as a ``protoc-gen-grpc_python`` executable, and remote buf plugins are unreachable offline.
This plugin reads the CodeGeneratorRequest buf sends, hands the request's descriptors to
``grpc_tools.protoc`` through ``--descriptor_set_in`` and returns what it wrote, so the output is
byte-identical to ``python -m grpc_tools.protoc --grpc_python_out``.
"""

from __future__ import annotations

import logging
import sys
import tempfile
from pathlib import Path

from google.protobuf import descriptor_pb2
from google.protobuf.compiler import plugin_pb2
from grpc_tools import protoc

logger = logging.getLogger(__name__)


def generate(request: plugin_pb2.CodeGeneratorRequest) -> plugin_pb2.CodeGeneratorResponse:
    """Run the grpcio-tools generator on ``request`` and collect its output files."""
    response = plugin_pb2.CodeGeneratorResponse()
    response.supported_features = plugin_pb2.CodeGeneratorResponse.FEATURE_PROTO3_OPTIONAL
    if not request.file_to_generate:
        return response
    descriptor_set = descriptor_pb2.FileDescriptorSet(file=list(request.proto_file))
    with tempfile.TemporaryDirectory(prefix="grpc_python_") as tmp:
        tmp_path = Path(tmp)
        set_path = tmp_path / "request.binpb"
        set_path.write_bytes(descriptor_set.SerializeToString())
        out_dir = tmp_path / "out"
        out_dir.mkdir()
        out_arg = f"{request.parameter}:{out_dir}" if request.parameter else str(out_dir)
        args = [
            "grpc_tools.protoc",
            f"--descriptor_set_in={set_path}",
            f"--grpc_python_out={out_arg}",
            *request.file_to_generate,
        ]
        status = protoc.main(args)
        if status != 0:
            response.error = f"grpc_tools.protoc exited with status {status}"
            return response
        for path in sorted(p for p in out_dir.rglob("*") if p.is_file()):
            generated = response.file.add()
            generated.name = path.relative_to(out_dir).as_posix()
            generated.content = path.read_text(encoding="utf-8")
    return response


def main() -> int:
    """Entry point: CodeGeneratorRequest on stdin, CodeGeneratorResponse on stdout."""
    request = plugin_pb2.CodeGeneratorRequest.FromString(sys.stdin.buffer.read())
    response = generate(request)
    sys.stdout.buffer.write(response.SerializeToString())
    return 0


if __name__ == "__main__":
    sys.exit(main())
