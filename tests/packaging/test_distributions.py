"""The three distributions as users get them: wheels built from client/, sdk/ and server/.

The client wheel is installed alone in fresh virtual environments (no torch, no Ray, no
pydantic), once on a protobuf 6 runtime (what tritonclient[grpc] and kserve allow) and once on
protobuf 7, and runs a job against a real server. mypy --strict on a user's file sees every
package as typed. The wheels are built offline (--no-build-isolation, the dev venv's
setuptools); the fresh environments install their dependencies from the package index pip is
configured with (the machine's mirror in CI).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from email.parser import Parser
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]

#: Each distribution: its folder and what of that folder goes into the wheel's build.
DISTRIBUTIONS: dict[str, tuple[str, tuple[str, ...]]] = {
    "synapse_client": ("client", ("pyproject.toml", "synapse_client", "synapse")),
    "synapse_sdk": ("sdk", ("pyproject.toml", "synapse_sdk")),
    "synapse_server": ("server", ("pyproject.toml", "synapse_server")),
}

#: The newest protobuf 6 release: tritonclient[grpc] and kserve require protobuf < 7.
PROTOBUF_6 = "6.33.6"

#: Installing into a fresh venv downloads grpcio and protobuf: generous, the machine is shared.
PIP_TIMEOUT = 600

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1200)]


def _pinned(name: str) -> str:
    """The version constraints.txt pins for ``name`` (the dev venv's runtime)."""
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line.lower().startswith(f"{name}=="):
            return line.split("==", 1)[1].strip()
    raise AssertionError(f"{name} is not pinned in constraints.txt")


def _run(args: list[str], timeout: float = PIP_TIMEOUT, **kwargs: Any) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    done = subprocess.run(
        args, capture_output=True, text=True, timeout=timeout, env=env, check=False, **kwargs
    )
    assert done.returncode == 0, f"{args[:4]} failed:\n{done.stdout[-3000:]}{done.stderr[-3000:]}"
    return done.stdout


def _requirements(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as archive:
        name = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        metadata = Parser().parsestr(archive.read(name).decode())
    return metadata.get_all("Requires-Dist") or []


@pytest.fixture(scope="module")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Each distribution's wheel, built from a copy of its folder (the tree stays clean)."""
    sources = tmp_path_factory.mktemp("wheel-sources")
    out = tmp_path_factory.mktemp("wheels")
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "build")
    folders = []
    for folder, entries in DISTRIBUTIONS.values():
        target = sources / folder
        target.mkdir()
        for entry in entries:
            source = ROOT / folder / entry
            if source.is_dir():
                shutil.copytree(source, target / entry, ignore=ignore)
            else:
                shutil.copy2(source, target / entry)
        folders.append(str(target))
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "-w",
            str(out),
            *folders,
        ]
    )
    built = {path.name.split("-", 1)[0]: path for path in out.glob("*.whl")}
    assert set(built) == set(DISTRIBUTIONS), built
    return built


def _venv(path: Path, *, with_pip: bool = True) -> Path:
    args = [sys.executable, "-m", "venv", str(path)]
    _run(args if with_pip else [*args, "--without-pip"], timeout=120)
    return path / "bin" / "python"


def test_each_wheel_ships_its_packages_typed(wheels: dict[str, Path]) -> None:
    names = {dist: set(zipfile.ZipFile(path).namelist()) for dist, path in wheels.items()}
    client = names["synapse_client"]
    assert {"synapse_client/py.typed", "synapse/plugin/v1/py.typed"} <= client
    assert {"synapse/plugin/v1/job_pb2.py", "synapse/plugin/v1/job_pb2.pyi"} <= client
    assert "synapse/plugin/v1/action_service_pb2_grpc.py" in client
    assert not any(n.startswith(("synapse_sdk/", "synapse_server/")) for n in client)
    assert "synapse_sdk/py.typed" in names["synapse_sdk"]
    assert not any(n.startswith(("synapse_client/", "synapse/")) for n in names["synapse_sdk"])
    assert "synapse_server/py.typed" in names["synapse_server"]
    with zipfile.ZipFile(wheels["synapse_server"]) as archive:
        entry_points = next(n for n in archive.namelist() if n.endswith("entry_points.txt"))
        assert "synapse = synapse_server.cli:main" in archive.read(entry_points).decode()


def test_the_client_wheel_is_lean(wheels: dict[str, Path]) -> None:
    required: dict[str, str] = {}  # name -> environment marker ("" when unconditional)
    for requirement in _requirements(wheels["synapse_client"]):
        name, _, marker = requirement.partition(";")
        base = name.split("[")[0]
        for op in ("<", ">", "=", "!", "~"):
            base = base.split(op)[0]
        required[base.strip().lower()] = marker.strip()
    unconditional = {name for name, marker in required.items() if not marker}
    assert unconditional == {"grpcio", "protobuf", "googleapis-common-protos", "pydantic-core"}
    assert required["numpy"] == 'extra == "tensors"'
    # The stubs are protobuf 6.31 gencode: the floor must let a protobuf 6 runtime in.
    assert "protobuf<8,>=6.31.1" in _requirements(wheels["synapse_client"])
    server_requires = " ".join(_requirements(wheels["synapse_server"]))
    assert "synapse-client" in server_requires and "synapse-sdk" in server_requires


def test_mypy_strict_sees_every_package_typed(wheels: dict[str, Path], tmp_path: Path) -> None:
    # A user's environment with the three wheels (their dependencies do not matter here: mypy
    # reports import-untyped for a package that is installed without a py.typed marker).
    python = _venv(tmp_path / "venv", with_pip=False)
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(python),
            "install",
            "-q",
            "--no-deps",
            "--no-index",
            *map(str, wheels.values()),
        ]
    )
    user_file = tmp_path / "user_code.py"
    user_file.write_text(
        "from synapse.plugin.v1 import job_pb2\n"
        "from synapse_client import Client\n"
        "from synapse_sdk.plugins.steps import BaseStep\n"
        "from synapse_server.cli import build_parser\n\n"
        "def first_job(client: Client) -> job_pb2.Job:\n"
        "    return job_pb2.Job(id='x')\n\n"
        "__all__ = ['BaseStep', 'build_parser', 'first_job']\n"
    )
    mypy = [sys.executable, "-m", "mypy", "--strict", "--no-incremental"]
    done = subprocess.run(
        [*mypy, "--python-executable", str(python), str(user_file)],
        capture_output=True,
        text=True,
        timeout=PIP_TIMEOUT,
        cwd=tmp_path,  # not the repository: its mypy settings would point at the sources
        check=False,
    )
    assert "import-untyped" not in done.stdout, done.stdout
    assert done.returncode == 0, done.stdout + done.stderr


CLIENT_JOB = """
import importlib.util, json, sys
from google.protobuf import __version__ as protobuf_version
from synapse_client import Client, ProgressEvent
from synapse_client.codec import MissingExtraError, TensorPayload

present = [m for m in ("torch", "ray", "numpy", "pydantic", "synapse_sdk", "synapse_server")
           if importlib.util.find_spec(m) is not None]
with Client(sys.argv[1]) as client:
    handle = client.run_action("toy", "quick", {"count": 3, "label": "wheel"})
    progress = [e.payload.current for e in handle.events() if isinstance(e.payload, ProgressEvent)]
    result = handle.result(timeout=120)
try:
    TensorPayload("x", "float32", (1,), bytes(4)).to_array()
    missing = None
except MissingExtraError as exc:
    missing = {"message": str(exc), "name": exc.name}
print(json.dumps({"protobuf": protobuf_version, "present": present, "progress": progress,
                  "result": result, "missing": missing}))
"""


@pytest.mark.parametrize("protobuf", [PROTOBUF_6, _pinned("protobuf")])
def test_client_wheel_alone_runs_a_job(
    wheels: dict[str, Path], platform_server: Any, tmp_path: Path, protobuf: str
) -> None:
    python = _venv(tmp_path / "venv")
    _run(
        [
            str(python),
            "-m",
            "pip",
            "install",
            "-q",
            str(wheels["synapse_client"]),
            f"protobuf=={protobuf}",
        ]
    )
    out = _run([str(python), "-c", CLIENT_JOB, platform_server.address], timeout=300)
    report = json.loads(out.strip().splitlines()[-1])
    assert report["protobuf"] == protobuf
    assert report["present"] == []
    assert report["progress"] == [1, 2, 3]
    assert report["result"] == {"label": "wheel", "count": 3}
    # Tensors without the [tensors] extra: an error that says what to install.
    assert report["missing"]["name"] == "numpy"
    assert "pip install 'synapse-client[tensors]'" in report["missing"]["message"]


#: The releases the co-install test puts beside the client (pinned: the same resolution
#: everywhere). tritonclient's pin is the OIP tests' (tests/oip/requirements-triton.txt).
TRITONCLIENT = "tritonclient[grpc]==2.73.0"
KSERVE = "kserve==0.21.0"

BESIDE_JOB = """
import importlib, sys
importlib.import_module(sys.argv[2])
from google.protobuf import __version__ as protobuf_version
from synapse_client import Client
with Client(sys.argv[1]) as client:
    result = client.run_action("toy", "quick", {"count": 2, "label": "beside"}).result(timeout=120)
print(protobuf_version, result["label"], result["count"])
"""


def test_client_wheel_installs_beside_tritonclient_and_kserve(
    wheels: dict[str, Path], platform_server: Any, tmp_path: Path
) -> None:
    # One environment, one pip resolution: the client's floors must leave room for both
    # (they pin protobuf < 7). tritonclient and kserve each register the Open Inference
    # Protocol's messages in protobuf's default pool, so the two cannot be imported in one
    # process; the client runs a job beside each of them in turn.
    python = _venv(tmp_path / "venv")
    _run(
        [
            str(python),
            "-m",
            "pip",
            "install",
            "-q",
            str(wheels["synapse_client"]),
            TRITONCLIENT,
            KSERVE,
        ]
    )
    for other in ("tritonclient.grpc", "kserve"):
        out = _run([str(python), "-c", BESIDE_JOB, platform_server.address, other], timeout=300)
        version, label, count = out.strip().splitlines()[-1].split()
        assert version.startswith("6."), out
        assert (label, count) == ("beside", "2")
