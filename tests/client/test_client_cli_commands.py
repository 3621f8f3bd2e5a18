"""``synapse --version``, ``synapse plugin list|describe`` and the CLI's one-line messages.

The console script as a subprocess against the session's real server.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

SYNAPSE = str(Path(sys.executable).with_name("synapse"))


def synapse(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("SYNAPSE_")}
    return subprocess.run(
        [SYNAPSE, *args], capture_output=True, text=True, timeout=90, env={**base, **(env or {})}
    )


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error: ")]


def test_version() -> None:
    from importlib.metadata import version

    done = synapse("--version")
    assert done.returncode == 0
    assert done.stdout.strip() == f"synapse {version('synapse-server')}"


def test_plugin_list(platform_server: Any) -> None:
    done = synapse("plugin", "list", "--server", platform_server.address)
    assert done.returncode == 0, done.stderr
    header, *rows = done.stdout.splitlines()
    assert header.split()[:4] == ["CODE", "VERSION", "CATEGORY", "NAME"]
    toy = next(row for row in rows if row.startswith("toy "))
    assert "1.0.0" in toy and "custom" in toy and "quick" in toy and "slow" in toy
    as_json = synapse("plugin", "list", "--json", env={"SYNAPSE_SERVER": platform_server.address})
    plugins = [json.loads(line) for line in as_json.stdout.splitlines()]
    toy_json = next(p for p in plugins if p["code"] == "toy")
    assert {a["name"] for a in toy_json["actions"]} >= {"quick", "slow", "fail"}


def test_plugin_describe_one_action(platform_server: Any) -> None:
    done = synapse("plugin", "describe", "toy", "quick", "--server", platform_server.address)
    assert done.returncode == 0, done.stderr
    text = done.stdout
    assert text.startswith("plugin toy 1.0.0 (Toy plugin, custom)\n")
    assert "action quick (job)" in text and "action slow" not in text
    assert "Reports progress and a log" in text  # the description
    assert "default mode: local (modes: local" in text
    schema_text = text.split("params (JSON schema):\n", 1)[1]
    schema = json.loads(schema_text)
    assert schema["required"] == ["count", "label"]
    assert schema["properties"]["count"]["minimum"] == 0


def test_plugin_describe_every_action_and_json(platform_server: Any) -> None:
    address = platform_server.address
    done = synapse("plugin", "describe", "toy", "--server", address)
    assert done.returncode == 0, done.stderr
    assert "action quick (job)" in done.stdout and "action slow (job)" in done.stdout
    as_json = synapse("plugin", "describe", "toy", "quick", "--json", "--server", address)
    plugin = json.loads(as_json.stdout)
    assert [a["name"] for a in plugin["actions"]] == ["quick"]
    assert plugin["actions"][0]["default_mode"] == "local"
    assert plugin["actions"][0]["params_schema"]["title"] == "QuickParams"


def test_plugin_describe_unknown_names(platform_server: Any) -> None:
    address = platform_server.address
    no_action = synapse("plugin", "describe", "toy", "quik", "--server", address)
    assert no_action.returncode == 2
    [line] = _error_lines(no_action.stderr)
    assert "plugin 'toy' has no action 'quik'" in line and "quick" in line
    no_plugin = synapse("plugin", "describe", "nope", "--server", address)
    assert no_plugin.returncode == 2
    assert _error_lines(no_plugin.stderr)[0].startswith("error: NOT_FOUND")
    no_server = synapse("plugin", "list")
    assert no_server.returncode == 2 and "pass --server or set $SYNAPSE_SERVER" in no_server.stderr


def test_invalid_params_are_said_once(platform_server: Any) -> None:
    done = synapse(
        "plugin", "run", "quick", "--plugin", "toy", "--params", '{"count": -1, "label": "x"}',
        "--server", platform_server.address,
    )  # fmt: skip
    assert done.returncode == 2
    [line] = _error_lines(done.stderr)
    assert line.count("greater than or equal to 0") == 1, line


@pytest.mark.parametrize(
    ("content", "said"),
    [
        (
            b'{"count": 1,\n "label": }',
            "params file '{path}' is not valid JSON: Expecting value: line 2",
        ),
        (b"[1, 2]", "params file '{path}' must be a JSON object, got list"),
        (b"\xff\xfe{}", "params file '{path}' is not UTF-8 text"),
    ],
)
def test_a_bad_params_file_is_named(
    platform_server: Any, tmp_path: Path, content: bytes, said: str
) -> None:
    path = tmp_path / "params.json"
    path.write_bytes(content)
    for where in (("--server", platform_server.address), ()):  # remote and in-process
        done = synapse(
            "plugin", "run", "quick", "--plugin", "toy", "--params", f"@{path}", *where
        )  # fmt: skip
        assert done.returncode == 2
        [line] = _error_lines(done.stderr)
        assert said.format(path=path) in line, line


def test_a_url_gets_a_hint_to_drop_the_scheme(platform_server: Any) -> None:
    for command in (("jobs", "list"), ("plugin", "list"), ("model", "list")):
        done = synapse(*command, "--server", f"http://{platform_server.address}")
        assert done.returncode == 2, done.stderr
        [line] = _error_lines(done.stderr)
        assert "drop the scheme 'http://'" in line and platform_server.address in line, line
    run = synapse("plugin", "run", "quick", "--plugin", "toy", "--server", "https://h:1")
    assert run.returncode == 2 and "and connect with TLS" in run.stderr


def test_an_address_without_a_port_means_50051() -> None:
    # Whatever listens on 50051 here (usually nothing), the CLI dials that port, not 443.
    with socket.socket() as probe:
        busy = probe.connect_ex(("127.0.0.1", 50051)) == 0
    done = synapse("jobs", "list", "--server", "127.0.0.1", "--timeout", "5")
    if busy:
        pytest.skip("something listens on 127.0.0.1:50051")
    assert done.returncode == 1
    assert _error_lines(done.stderr)[-1].startswith(
        "error: cannot reach the server at 127.0.0.1:50051"
    ), done.stderr
