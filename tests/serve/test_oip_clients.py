"""The Open Inference Protocol v2 through a real server, called by third-party clients.

One ``SynapseServer`` with bearer tokens for two tenants and its own Ray deploys two
applications through their deployment actions: the tensor-serve example (the example MLP
on binary tensors) and an echo probe (tests/oip/plugins). They are then called with
``tritonclient[grpc]`` (in its own virtualenv, .venv-triton: it needs protobuf < 7) and with
the ``open-inference-grpc`` stubs, each as a subprocess that prints JSON results
(tests/oip/triton_calls.py, tests/oip/oip_grpc_calls.py).
"""

from __future__ import annotations

import base64
import json
import shutil
import struct
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from synapse_client import Client

from tests.conftest import RunningServer, make_settings

pytestmark = [pytest.mark.ray, pytest.mark.timeout(900)]

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples" / "plugins"
OIP_TESTS = ROOT / "tests" / "oip"
SECRET = "oip-clients-tests-secret-0123456789"
TOKENS = {"tok-acme": "acme", "tok-other": "other"}
ROWS = [[1.0, 2.0, 3.0], [0.5, 0.0, -1.0]]


@dataclass(frozen=True)
class World:
    server: RunningServer
    mlp_app: str
    probe_app: str
    first: tuple[int, Path]
    second: tuple[int, Path]
    foreign_model: int


def _register(client: Client, tmp: Path, seed: int) -> tuple[int, Path]:
    from examples.models import MLPConfig, build_model_dir

    model_dir = build_model_dir(tmp / f"model-{seed}", MLPConfig(hidden=8, seed=seed))
    archive = shutil.make_archive(str(tmp / f"model-{seed}"), "zip", model_dir)
    return client.register_model(archive, f"mlp-{seed}", framework="torch").id, model_dir


def _deploy(client: Client, plugin: str, action: str, model_id: int) -> str:
    result = client.run_action(
        plugin, action, {"model": model_id, "num_cpus": 0}, mode="local"
    ).result(timeout=400)
    return client.get_deployment(result["serve_application"]).name


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    pytest.importorskip("torch")
    tmp = tmp_path_factory.mktemp("oip")
    server = RunningServer(
        make_settings(
            tmp / "data",
            plugin_dirs=[EXAMPLES, OIP_TESTS / "plugins"],
            tokens=TOKENS,
            server_secret=SECRET,
            worker_memory_limit_mb=None,
        )
    )
    try:
        with Client(server.address, token="tok-acme", timeout=60) as client:
            first = _register(client, tmp, seed=1)
            second = _register(client, tmp, seed=2)
            mlp_app = _deploy(client, "tensor-serve", "deployment", first[0])
            probe_app = _deploy(client, "oip-probe", "deploy_probe", first[0])
        with Client(server.address, token="tok-other", timeout=60) as client:
            foreign, _ = _register(client, tmp, seed=3)
        yield World(server, mlp_app, probe_app, first, second, foreign)
    finally:
        server.stop()


@pytest.fixture(scope="module")
def triton_python() -> Path:
    """The Python of .venv-triton (made by scripts/setup; made here when missing)."""
    subprocess.run([str(OIP_TESTS / "make-triton-venv")], check=True, timeout=600)
    return ROOT / ".venv-triton" / "bin" / "python"


def _run(python: Path, script: Path, address: str, calls: list[dict[str, Any]]) -> list[Any]:
    done = subprocess.run(
        [str(python), str(script)],
        input=json.dumps({"address": address, "calls": calls}),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results: list[Any] = json.loads(done.stdout)
    return results


def triton(python: Path, world: World, calls: list[dict[str, Any]]) -> list[Any]:
    return _run(python, OIP_TESTS / "triton_calls.py", world.server.address, calls)


def open_inference(world: World, calls: list[dict[str, Any]]) -> list[Any]:
    return _run(Path(sys.executable), OIP_TESTS / "oip_grpc_calls.py", world.server.address, calls)


def _ok(result: dict[str, Any]) -> Any:
    assert result["ok"], result
    return result["value"]


def _refused(result: dict[str, Any], status: str, *words: str) -> str:
    assert not result["ok"], result
    assert result["status"] == status, result
    for word in words:
        assert word in result["message"], (word, result)
    return str(result["message"])


def _approx(got: list[list[float]], want: list[list[float]]) -> None:
    assert len(got) == len(want)
    for row, expected in zip(got, want, strict=True):
        assert row == pytest.approx(expected, rel=1e-5, abs=1e-6)


def _mlp_input(rows: list[list[float]] = ROWS, dtype: str = "float32", **extra: Any) -> dict:
    datatype = {"float32": "FP32", "int64": "INT64", "float64": "FP64"}[dtype]
    return {"name": "input", "datatype": datatype, "dtype": dtype, "data": rows, **extra}


# tritonclient ---------------------------------------------------------------------------------


def test_triton_health_metadata_and_readiness(world: World, triton_python: Path) -> None:
    first, second = str(world.first[0]), str(world.second[0])
    acme = {"token": "tok-acme"}
    results = triton(
        triton_python,
        world,
        [
            # The protocol's health checks need no token, like grpc.health.v1.
            {"op": "server_live"},
            {"op": "server_ready"},
            {"op": "server_metadata"},
            {"op": "server_metadata", **acme},
            {"op": "model_ready", "model": world.mlp_app, **acme},
            {"op": "model_ready", "model": world.mlp_app, "version": second, **acme},
            {"op": "model_metadata", "model": world.mlp_app, **acme},
            {"op": "model_metadata", "model": world.mlp_app, "version": second, **acme},
            # Another tenant's model, an unknown application, another tenant's application.
            {
                "op": "model_ready",
                "model": world.mlp_app,
                "version": str(world.foreign_model),
                **acme,
            },
            {"op": "model_ready", "model": "no-such-app", **acme},
            {"op": "model_ready", "model": world.mlp_app, "token": "tok-other"},
            {"op": "model_ready", "model": world.mlp_app, "version": "latest", **acme},
            {"op": "model_metadata", "model": world.mlp_app},
        ],
    )
    live, ready, anonymous, metadata, default_ready, second_ready = results[:6]
    assert _ok(live) is True and _ok(ready) is True
    _refused(anonymous, "UNAUTHENTICATED", "bearer token")
    assert _ok(metadata) == {"name": "synapse", "version": "0.1.0", "extensions": ["parameters"]}
    assert _ok(default_ready) is True and _ok(second_ready) is True
    described = _ok(results[6])
    assert described == {
        "name": world.mlp_app,
        "versions": [first],
        "platform": "torch",
        "inputs": [],
        "outputs": [],
    }
    assert _ok(results[7])["versions"] == [first]
    foreign, missing, other_tenant, not_an_id, no_token = results[8:]
    _refused(foreign, "NOT_FOUND", str(world.foreign_model))
    _refused(missing, "NOT_FOUND", "no-such-app")
    _refused(other_tenant, "NOT_FOUND", world.mlp_app)
    _refused(not_an_id, "INVALID_ARGUMENT", "version", "latest")
    _refused(no_token, "UNAUTHENTICATED")


def test_triton_infer_runs_the_model_of_each_version(world: World, triton_python: Path) -> None:
    from examples.models import reference_outputs

    first, second = world.first, world.second
    acme = {"token": "tok-acme"}
    calls = [
        {"op": "infer", "model": world.mlp_app, "inputs": [_mlp_input()], **acme},
        {
            "op": "infer",
            "model": world.mlp_app,
            "version": str(second[0]),
            "inputs": [_mlp_input()],
            "request_id": "req-7",
            **acme,
        },
        # Request parameters are the endpoint's other arguments.
        {
            "op": "infer",
            "model": world.mlp_app,
            "inputs": [_mlp_input()],
            "parameters": {"scale": 2.0},
            **acme,
        },
        # Integers: the model casts to float32 itself.
        {
            "op": "infer",
            "model": world.mlp_app,
            "inputs": [_mlp_input([[1, 2, 3]], "int64")],
            **acme,
        },
    ]
    default, by_version, scaled, integers = triton(triton_python, world, calls)
    want_first = reference_outputs(first[1], ROWS)
    answer = _ok(default)
    assert answer["model_name"] == world.mlp_app
    assert answer["model_version"] == str(first[0])
    assert list(answer["outputs"]) == ["output"]
    output = answer["outputs"]["output"]
    assert (output["datatype"], output["shape"], output["dtype"]) == ("FP32", [2, 2], "float32")
    _approx(output["data"], want_first)

    answer = _ok(by_version)
    assert (answer["model_version"], answer["id"]) == (str(second[0]), "req-7")
    _approx(answer["outputs"]["output"]["data"], reference_outputs(second[1], ROWS))
    assert answer["outputs"]["output"]["data"] != output["data"]

    _approx(
        _ok(scaled)["outputs"]["output"]["data"],
        [[2 * v for v in row] for row in want_first],
    )
    _approx(
        _ok(integers)["outputs"]["output"]["data"],
        reference_outputs(first[1], [[1.0, 2.0, 3.0]]),
    )


def test_triton_errors_name_what_is_wrong(world: World, triton_python: Path) -> None:
    acme = {"token": "tok-acme"}
    mlp = {"op": "infer", "model": world.mlp_app}
    probe = {"op": "infer", "model": world.probe_app}
    results = triton(
        triton_python,
        world,
        [
            # Datatypes the platform's tensors do not have.
            {
                **mlp,
                "inputs": [
                    {"name": "input", "datatype": "UINT32", "dtype": "uint32", "data": [[1, 2, 3]]}
                ],
                **acme,
            },
            {
                **probe,
                "inputs": [
                    {"name": "words", "datatype": "BYTES", "dtype": "object", "data": ["a", "b"]}
                ],
                **acme,
            },
            # A shape that does not match the data sent, and one the model cannot take.
            {**mlp, "inputs": [_mlp_input(shape=[3, 3])], **acme},
            {**mlp, "inputs": [_mlp_input([[1.0, 2.0, 3.0, 4.0]])], **acme},
            # Who and what.
            {**mlp, "model": "no-such-model", "inputs": [_mlp_input()], **acme},
            {**mlp, "inputs": [_mlp_input()]},
            {**mlp, "inputs": [_mlp_input()], "token": "not-a-token"},
            {**mlp, "inputs": [_mlp_input()], "token": "tok-other"},
            {**mlp, "version": str(world.foreign_model), "inputs": [_mlp_input()], **acme},
            {**mlp, "version": "v1", "inputs": [_mlp_input()], **acme},
            # Parameters the endpoint does not take, and ones the server does not support.
            {**mlp, "inputs": [_mlp_input()], "parameters": {"bogus": 1}, **acme},
            {**mlp, "inputs": [_mlp_input()], "priority": 3, **acme},
            # An output the model does not answer.
            {**mlp, "inputs": [_mlp_input()], "outputs": ["scores"], **acme},
            # The endpoint failing, and the request's own time bound passing.
            {**probe, "inputs": [_mlp_input()], "parameters": {"answer": "boom"}, **acme},
            {
                **probe,
                "inputs": [_mlp_input()],
                "parameters": {"sleep": 30.0},
                "timeout_us": 500_000,
                **acme,
            },
        ],
    )
    (
        uint32,
        text,
        mismatch,
        model_shape,
        unknown,
        no_token,
        bad_token,
        other_tenant,
        foreign_version,
        bad_version,
        bogus,
        priority,
        missing_output,
        boom,
        slow,
    ) = results
    _refused(uint32, "INVALID_ARGUMENT", "'input'", "UINT32", "supported:")
    _refused(text, "INVALID_ARGUMENT", "'words'", "BYTES")
    _refused(mismatch, "INVALID_ARGUMENT", "'input'", "[3, 3]", "24")
    _refused(model_shape, "INVALID_ARGUMENT", "input must have shape [batch, 3]", "[1, 4]")
    _refused(unknown, "NOT_FOUND", "no-such-model")
    _refused(no_token, "UNAUTHENTICATED", "missing bearer token")
    _refused(bad_token, "UNAUTHENTICATED", "invalid bearer token")
    _refused(other_tenant, "NOT_FOUND", world.mlp_app)
    _refused(foreign_version, "NOT_FOUND", f"model {world.foreign_model} not found")
    _refused(bad_version, "INVALID_ARGUMENT", "model_version", "'v1'")
    _refused(bogus, "INVALID_ARGUMENT", "bogus")
    _refused(priority, "INVALID_ARGUMENT", "priority")
    _refused(missing_output, "INVALID_ARGUMENT", "'scores'", "'output'")
    message = _refused(boom, "INTERNAL", "correlation id")
    assert "secret internal detail" not in message
    _refused(slow, "DEADLINE_EXCEEDED")


def _echo_input(name: str, datatype: str, dtype: str, data: Any) -> dict[str, Any]:
    return {"name": name, "datatype": datatype, "dtype": dtype, "data": data}


ECHOED = [
    _echo_input("b", "BOOL", "bool", [[True, False], [False, True]]),
    _echo_input("u8", "UINT8", "uint8", [0, 7, 255]),
    _echo_input("i8", "INT8", "int8", [-128, 0, 127]),
    _echo_input("i16", "INT16", "int16", [[-32768], [32767]]),
    _echo_input("i32", "INT32", "int32", [-(2**31), 5, 2**31 - 1]),
    _echo_input("i64", "INT64", "int64", [-(2**63), 2**63 - 1]),
    _echo_input("f16", "FP16", "float16", [0.5, -2.0, 65504.0]),
    _echo_input("f32", "FP32", "float32", [[1.5, -0.25, 3.0]]),
    _echo_input("f64", "FP64", "float64", [1e300, -1e-300]),
    _echo_input("bf16", "BF16", "bfloat16", [1.0, -2.5, 256.0]),
    _echo_input("scalar", "FP32", "float32", 4.0),
    _echo_input("empty", "INT32", "int32", [[], []]),
]


def test_triton_round_trips_every_supported_datatype(world: World, triton_python: Path) -> None:
    acme = {"token": "tok-acme"}
    probe = {"op": "infer", "model": world.probe_app, **acme}
    echoed, filtered, as_json = triton(
        triton_python,
        world,
        [
            {**probe, "inputs": ECHOED},
            # Only the outputs asked for, in the order asked.
            {**probe, "inputs": ECHOED[:3], "outputs": ["i8", "b"]},
            # A JSON answer is one BYTES output named "json".
            {**probe, "inputs": ECHOED[:2], "parameters": {"answer": "json"}},
        ],
    )
    outputs = _ok(echoed)["outputs"]
    assert list(outputs) == [spec["name"] for spec in ECHOED]
    for spec in ECHOED:
        got = outputs[spec["name"]]
        assert got["datatype"] == spec["datatype"], spec["name"]
        assert got["data"] == spec["data"] or got["data"] == [spec["data"]], (spec, got)
    assert outputs["scalar"]["shape"] == [] and outputs["empty"]["shape"] == [2, 0]
    assert _ok(filtered)["output_order"] == ["i8", "b"]
    answer = _ok(as_json)["outputs"]
    assert list(answer) == ["json"] and answer["json"]["datatype"] == "BYTES"
    assert json.loads(answer["json"]["data"][0]) == {
        "b": {"shape": [2, 2], "dtype": "bool"},
        "u8": {"shape": [3], "dtype": "uint8"},
    }


def test_triton_stream_answers_each_request_in_order(world: World, triton_python: Path) -> None:
    from examples.models import reference_outputs

    (results,) = triton(
        triton_python,
        world,
        [
            {
                "op": "stream",
                "model": world.mlp_app,
                "token": "tok-acme",
                "requests": [
                    {"inputs": [_mlp_input()], "request_id": "one"},
                    {
                        "inputs": [
                            {
                                "name": "input",
                                "datatype": "UINT64",
                                "dtype": "uint64",
                                "data": [[1, 2, 3]],
                            }
                        ],
                        "request_id": "two",
                    },
                    {
                        "inputs": [_mlp_input()],
                        "version": str(world.second[0]),
                        "request_id": "three",
                    },
                ],
            }
        ],
    )
    first, refused, third = _ok(results)
    assert _ok(first)["id"] == "one"
    _approx(_ok(first)["outputs"]["output"]["data"], reference_outputs(world.first[1], ROWS))
    # A failed request is reported on the stream, which goes on.
    assert not refused["ok"] and "INVALID_ARGUMENT" in refused["message"], refused
    assert "UINT64" in refused["message"]
    assert _ok(third)["id"] == "three"
    _approx(_ok(third)["outputs"]["output"]["data"], reference_outputs(world.second[1], ROWS))


# open-inference-grpc --------------------------------------------------------------------------


def _raw_floats(values: list[float]) -> str:
    return base64.b64encode(struct.pack(f"<{len(values)}f", *values)).decode()


def test_open_inference_stubs_typed_and_raw_contents(world: World) -> None:
    from examples.models import reference_outputs

    acme = {"token": "tok-acme"}
    flat = [v for row in ROWS for v in row]
    typed_mlp = {
        "model_name": world.mlp_app,
        "inputs": [
            {
                "name": "input",
                "datatype": "FP32",
                "shape": [2, 3],
                "contents": {"fp32_contents": flat},
            }
        ],
    }
    raw_mlp = {
        "model_name": world.mlp_app,
        "model_version": str(world.second[0]),
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [2, 3]}],
        "raw_input_contents": [_raw_floats(flat)],
    }
    typed_echo = {
        "model_name": world.probe_app,
        "inputs": [
            {
                "name": "b",
                "datatype": "BOOL",
                "shape": [3],
                "contents": {"bool_contents": [True, False, True]},
            },
            {
                "name": "u8",
                "datatype": "UINT8",
                "shape": [2],
                "contents": {"uint_contents": [0, 255]},
            },
            {
                "name": "i16",
                "datatype": "INT16",
                "shape": [2],
                "contents": {"int_contents": [-7, 300]},
            },
            {
                "name": "i64",
                "datatype": "INT64",
                "shape": [1],
                "contents": {"int64_contents": ["-9000000000"]},
            },
            {
                "name": "f64",
                "datatype": "FP64",
                "shape": [2],
                "contents": {"fp64_contents": [0.1, -2.0]},
            },
        ],
    }
    bad = [
        # A datatype the protocol does not have, one value out of range, data in the wrong field,
        # raw contents that do not match the inputs, a negative dimension.
        {
            "model_name": world.mlp_app,
            "inputs": [{"name": "input", "datatype": "FP8", "shape": [1]}],
        },
        {
            "model_name": world.probe_app,
            "inputs": [
                {
                    "name": "u8",
                    "datatype": "UINT8",
                    "shape": [1],
                    "contents": {"uint_contents": [256]},
                }
            ],
        },
        {
            "model_name": world.probe_app,
            "inputs": [
                {
                    "name": "x",
                    "datatype": "FP32",
                    "shape": [1],
                    "contents": {"fp64_contents": [1.0]},
                }
            ],
        },
        {
            "model_name": world.mlp_app,
            "inputs": [
                {"name": "input", "datatype": "FP32", "shape": [2, 3]},
                {"name": "y", "datatype": "FP32", "shape": [1]},
            ],
            "raw_input_contents": [_raw_floats(flat)],
        },
        {
            "model_name": world.probe_app,
            "inputs": [{"name": "x", "datatype": "FP16", "shape": [-1, 2]}],
            "raw_input_contents": [""],
        },
    ]
    results = open_inference(
        world,
        [
            {"rpc": "ServerLive"},
            {"rpc": "ModelMetadata", "request": {"name": world.probe_app}, **acme},
            {"rpc": "ModelInfer", "request": typed_mlp, **acme},
            {"rpc": "ModelInfer", "request": raw_mlp, **acme},
            {"rpc": "ModelInfer", "request": typed_echo, **acme},
            *({"rpc": "ModelInfer", "request": request, **acme} for request in bad),
            {"rpc": "ModelInfer", "request": typed_mlp},
        ],
    )
    live, metadata, typed, raw, echo = results[:5]
    assert _ok(live) == {"live": True}
    described = _ok(metadata)
    assert described["name"] == world.probe_app and described["platform"] == "torch"
    assert described["properties"]["status"] == "RUNNING"
    assert described["properties"]["plugin"] == "oip-probe"

    def floats(answer: dict[str, Any], index: int = 0) -> list[float]:
        data = base64.b64decode(answer["raw_output_contents"][index])
        return list(struct.unpack(f"<{len(data) // 4}f", data))

    want = reference_outputs(world.first[1], ROWS)
    _approx([floats(_ok(typed))[:2], floats(_ok(typed))[2:]], want)
    want = reference_outputs(world.second[1], ROWS)
    answer = _ok(raw)
    assert answer["model_version"] == str(world.second[0])
    _approx([floats(answer)[:2], floats(answer)[2:]], want)

    answer = _ok(echo)
    raws = [base64.b64decode(r) for r in answer["raw_output_contents"]]
    assert [o["name"] for o in answer["outputs"]] == ["b", "u8", "i16", "i64", "f64"]
    assert raws[0] == b"\x01\x00\x01"
    assert raws[1] == b"\x00\xff"
    assert struct.unpack("<2h", raws[2]) == (-7, 300)
    assert struct.unpack("<q", raws[3]) == (-9_000_000_000,)
    assert struct.unpack("<2d", raws[4]) == (0.1, -2.0)

    unknown, out_of_range, wrong_field, raw_count, negative, no_token = results[5:]
    _refused(unknown, "INVALID_ARGUMENT", "'input'", "unknown datatype 'FP8'")
    _refused(out_of_range, "INVALID_ARGUMENT", "'u8'", "out of the range of UINT8")
    _refused(wrong_field, "INVALID_ARGUMENT", "'x'", "fp64_contents", "fp32_contents")
    _refused(raw_count, "INVALID_ARGUMENT", "raw_input_contents has 1 entries for 2 inputs")
    _refused(negative, "INVALID_ARGUMENT", "'x'", "negative")
    _refused(no_token, "UNAUTHENTICATED")
