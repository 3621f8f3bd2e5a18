"""The wire contract: buf lint/format/breaking, generated code freshness, and the RPC surface.

These tests run the real buf CLI from the venv and the real generators; they need no network.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BUF = ROOT / ".venv" / "bin" / "buf"
PYTHON = ROOT / ".venv" / "bin" / "python"
# The pinned Python code generator (tools/codegen-requirements.txt) that tools/gen-protos uses.
CODEGEN_PYTHON = ROOT / ".venv-codegen" / "bin" / "python"
IMAGE = ROOT / "contract" / "synapse-v1.binpb"
PROTO_DIR = ROOT / "protos" / "synapse" / "plugin" / "v1"
TS_DIR = ROOT / "client" / "typescript"
TIMEOUT_S = 120


def _run(args: list[str | Path], cwd: Path = ROOT, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        env={**os.environ, **env},
        check=False,
    )


def _copy_module(tmp_path: Path) -> Path:
    """A copy of the buf module (buf.yaml + protos/) that a test may edit freely."""
    work = tmp_path / "module"
    work.mkdir()
    shutil.copy(ROOT / "buf.yaml", work / "buf.yaml")
    shutil.copytree(ROOT / "protos", work / "protos")
    return work


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text(encoding="utf-8")
    assert text.count(old) == 1, f"{old!r} must occur exactly once in {path.name}"
    path.write_text(text.replace(old, new), encoding="utf-8")


def test_buf_lint_passes() -> None:
    result = _run([BUF, "lint"])
    assert result.returncode == 0, result.stdout + result.stderr


def test_buf_format_is_clean() -> None:
    result = _run([BUF, "format", "-d", "--exit-code"])
    assert result.returncode == 0, result.stdout + result.stderr


def test_no_breaking_change_against_released_image() -> None:
    assert IMAGE.is_file(), "contract/synapse-v1.binpb (the released contract) is missing"
    result = _run([BUF, "breaking", "--against", IMAGE])
    assert result.returncode == 0, result.stdout + result.stderr


def test_lint_requires_comments(tmp_path: Path) -> None:
    # Client authors rely on the comments; the COMMENTS rules must reject an undocumented field.
    work = _copy_module(tmp_path)
    _edit(
        work / "protos/synapse/plugin/v1/job.proto",
        "  // True once CancelJob was called, even while the job is still stopping.\n",
        "",
    )
    result = _run([BUF, "lint"], cwd=work)
    assert result.returncode != 0
    assert "cancel_requested" in result.stdout + result.stderr


@pytest.mark.parametrize(
    ("file", "old", "new", "expected"),
    [
        pytest.param(
            "job.proto",
            "  JobState state = 6;\n",
            "  JobState state = 60;\n",
            "state",
            id="renumber-field",
        ),
        pytest.param(
            "job.proto",
            "  // Current lifecycle state.\n  JobState state = 6;\n",
            "",
            "state",
            id="delete-field",
        ),
        pytest.param(
            "job_event.proto",
            "  uint64 seq = 1;\n",
            "  int64 seq = 1;\n",
            "seq",
            id="change-field-type",
        ),
        pytest.param(
            "action_service.proto",
            "  rpc StreamProgress(StreamProgressRequest) returns (stream StreamProgressResponse);",
            "  rpc StreamProgress(StreamProgressRequest) returns (StreamProgressResponse);",
            "StreamProgress",
            id="drop-server-streaming",
        ),
    ],
)
def test_breaking_change_is_detected(
    tmp_path: Path, file: str, old: str, new: str, expected: str
) -> None:
    work = _copy_module(tmp_path)
    _edit(work / "protos/synapse/plugin/v1" / file, old, new)
    result = _run([BUF, "breaking", "--against", IMAGE], cwd=work)
    output = result.stdout + result.stderr
    assert result.returncode != 0, f"buf breaking accepted a breaking edit:\n{output}"
    assert expected in output


def test_adding_a_field_is_not_breaking(tmp_path: Path) -> None:
    # The intended way to grow the contract: new fields with new numbers pass the check.
    work = _copy_module(tmp_path)
    _edit(
        work / "protos/synapse/plugin/v1/job.proto",
        "  uint64 result_size_bytes = 17;\n",
        "  uint64 result_size_bytes = 17;\n  // A label added in a later version.\n"
        "  string label = 999;\n",
    )
    result = _run([BUF, "breaking", "--against", IMAGE], cwd=work)
    assert result.returncode == 0, result.stdout + result.stderr


def test_generated_code_is_current() -> None:
    # Without node_modules the TypeScript plugin is absent: check Python only and let
    # test_typescript_* report the TypeScript side.
    skip_ts = "0" if (TS_DIR / "node_modules/.bin/protoc-gen-es").exists() else "1"
    result = _run([ROOT / "tools/check-generated"], SYNAPSE_SKIP_TS=skip_ts)
    assert result.returncode == 0, result.stdout + result.stderr


def test_check_generated_detects_stale_code(tmp_path: Path) -> None:
    # The check must fail on a tree whose stubs do not match the protos: run it in a copy of
    # the relevant part of the repository with one proto changed.
    repo = tmp_path / "repo"
    repo.mkdir()
    for name in ("buf.yaml", "buf.gen.yaml"):
        shutil.copy(ROOT / name, repo / name)
    for name in ("protos", "tools", "client/synapse", "server/synapse_server/grpc/oip/_proto"):
        shutil.copytree(ROOT / name, repo / name, ignore=shutil.ignore_patterns("__pycache__"))
    (repo / ".venv").symlink_to(ROOT / ".venv")
    (repo / ".venv-codegen").symlink_to(ROOT / ".venv-codegen")
    _edit(
        repo / "protos/synapse/plugin/v1/job.proto",
        "  uint64 result_size_bytes = 17;\n",
        "  uint64 result_size_bytes = 17;\n  // Not yet generated.\n  string label = 999;\n",
    )
    result = _run([repo / "tools/check-generated"], cwd=repo, SYNAPSE_SKIP_TS="1")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "stale" in result.stderr


def test_grpc_plugin_matches_grpc_tools(tmp_path: Path) -> None:
    # The local buf plugin must emit exactly what `grpc_tools.protoc --grpc_python_out` emits
    # (both from the pinned code generator, whose version the _pb2_grpc modules record).
    out = tmp_path / "direct"
    out.mkdir()
    protos = sorted(str(p.relative_to(ROOT / "protos")) for p in PROTO_DIR.glob("*.proto"))
    result = _run(
        [CODEGEN_PYTHON, "-m", "grpc_tools.protoc", "-Iprotos", f"--grpc_python_out={out}", *protos]
    )
    assert result.returncode == 0, result.stderr
    direct = sorted(out.rglob("*_pb2_grpc.py"))
    assert len(direct) == len(protos)
    for path in direct:
        committed = ROOT / "client" / path.relative_to(out)
        assert committed.read_text() == path.read_text(), f"{committed.name} differs"


def test_stubs_import_outside_the_repository(tmp_path: Path) -> None:
    # Generated modules import each other as synapse.plugin.v1.*; they must resolve from any
    # working directory (the installed package), not only from the repository root.
    code = (
        "from synapse.plugin.v1 import action_service_pb2_grpc, model_service_pb2_grpc, "
        "deployment_service_pb2_grpc, inference_service_pb2_grpc, worker_service_pb2_grpc\n"
        "from synapse.plugin.v1 import action_service_pb2\n"
        "print(action_service_pb2.RunActionRequest(plugin='p').plugin)\n"
    )
    result = _run([PYTHON, "-c", code], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "p"


# The RPC surface other code is written against: (service, method, client streaming,
# server streaming). Adding an RPC means adding it here; removing or re-shaping one is a
# breaking change that buf breaking also rejects.
EXPECTED_RPCS = {
    ("ActionService", "ListActions", False, False),
    ("ActionService", "RunAction", False, False),
    ("ActionService", "StreamProgress", False, True),
    ("ActionService", "GetJob", False, False),
    ("ActionService", "ListJobs", False, False),
    ("ActionService", "CancelJob", False, False),
    ("ActionService", "GetJobResult", False, True),
    ("ModelService", "RegisterModel", True, False),
    ("ModelService", "GetModel", False, False),
    ("ModelService", "ListModels", False, False),
    ("ModelService", "DownloadModel", False, True),
    ("ModelService", "DeleteModel", False, False),
    ("DatasetService", "UploadDataset", True, False),
    ("DatasetService", "GetDataset", False, False),
    ("DatasetService", "ListDatasets", False, False),
    ("DatasetService", "DownloadDataset", False, True),
    ("DatasetService", "DeleteDataset", False, False),
    ("DatasetService", "ListJobOutputs", False, False),
    ("DeploymentService", "ListDeployments", False, False),
    ("DeploymentService", "GetDeployment", False, False),
    ("DeploymentService", "DeleteDeployment", False, False),
    ("DeploymentService", "RegisterDeployment", False, False),
    ("InferenceService", "Infer", False, False),
    ("InferenceService", "InferStream", False, True),
    ("WorkerService", "GetAssignment", False, False),
    ("WorkerService", "ReportEvents", True, True),
    ("WorkerService", "UploadJobOutput", True, False),
}


def test_rpc_surface() -> None:
    from synapse.plugin.v1 import (
        action_service_pb2,
        dataset_service_pb2,
        deployment_service_pb2,
        inference_service_pb2,
        model_service_pb2,
        worker_service_pb2,
    )

    found = set()
    for module in (
        action_service_pb2,
        dataset_service_pb2,
        deployment_service_pb2,
        inference_service_pb2,
        model_service_pb2,
        worker_service_pb2,
    ):
        for service in module.DESCRIPTOR.services_by_name.values():
            assert service.full_name == f"synapse.plugin.v1.{service.name}"
            for method in service.methods:
                assert method.input_type.name == f"{method.name}Request"
                assert method.output_type.name == f"{method.name}Response"
                found.add(
                    (
                        service.name,
                        method.name,
                        method.client_streaming,
                        method.server_streaming,
                    )
                )
    assert found == EXPECTED_RPCS


def test_generated_python_has_no_import_rewriting() -> None:
    # Generated modules import siblings by their full package path, the proto package path.
    for path in (ROOT / "client/synapse/plugin/v1").glob("*_pb2*.py"):
        for line in path.read_text().splitlines():
            if re.match(r"(from|import) \S*_pb2", line):
                assert line.startswith(("from synapse.plugin.v1 import", "from google.")), line


def test_typescript_client_typechecks() -> None:
    if not (TS_DIR / "node_modules/.bin/tsc").exists():
        pytest.skip("client/typescript/node_modules missing: run `npm ci` in client/typescript")
    result = _run([TS_DIR / "node_modules/.bin/tsc", "--noEmit", "-p", TS_DIR], cwd=TS_DIR)
    assert result.returncode == 0, result.stdout + result.stderr


def test_python_runtime_matches_generated_version() -> None:
    # Stubs check the protobuf runtime on import; importing in this interpreter proves it.
    from synapse.plugin.v1 import job_pb2

    assert job_pb2.Job(state=job_pb2.JOB_STATE_RUNNING).state == 2
    assert sys.modules["synapse.plugin.v1.job_pb2"] is job_pb2
