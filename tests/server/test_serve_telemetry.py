"""``synapse serve`` as an operator runs it: JSON log lines with job ids and access lines,
metrics served on ``--metrics-listen``, and start-up mistakes reported in one line."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from synapse_client import Client

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

SYNAPSE = str(Path(sys.executable).with_name("synapse"))
TOY = Path(__file__).parent.parent / "plugins"


def _command(tmp_path: Path, *args: str) -> list[str]:
    return [
        SYNAPSE, "serve", "--listen", "127.0.0.1:0", "--data-dir", str(tmp_path / "data"),
        "--plugin-dir", str(TOY), "--shutdown-grace", "2", *args,
    ]  # fmt: skip


class _Serve:
    """A running ``synapse serve`` whose stderr lines are collected (and always drained)."""

    def __init__(self, command: list[str], env: dict[str, str] | None = None) -> None:
        self.process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
        )
        self.lines: list[str] = []
        assert self.process.stderr is not None and self.process.stdout is not None
        self._reader = threading.Thread(target=self._drain, daemon=True)
        self._reader.start()
        first = self.process.stdout.readline()
        if not first.startswith("synapse server listening on "):
            self.process.kill()
            self.process.wait(10)
            raise AssertionError(f"the server did not start: {first!r} {self.lines}")
        self.address = first.rsplit(" ", 1)[1].strip()

    def _drain(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.append(line.rstrip("\n"))

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self._reader.join(10)


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[type[_Serve]]:
    started: list[_Serve] = []

    class Started(_Serve):
        def __init__(self, command: list[str], env: dict[str, str] | None = None) -> None:
            super().__init__(command, env)
            started.append(self)

    yield Started
    for server in started:
        server.stop()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_json_logs_access_lines_and_metrics_of_a_serve_process(
    serve: type[_Serve], tmp_path: Path
) -> None:
    port = _free_port()
    server = serve(
        _command(
            tmp_path,
            "--log-format", "json", "--access-log", "info",
            "--metrics-listen", f"127.0.0.1:{port}",
        )
    )  # fmt: skip
    with Client(server.address, timeout=60) as client:
        job = client.run_action("toy", "quick", {"count": 2, "label": "process"})
        assert job.result(timeout=60)["label"] == "process"
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        families = {f.name: f for f in text_string_to_metric_families(answer.read().decode())}
    submitted = families["synapse_jobs_submitted"].samples
    assert [(s.labels["plugin"], s.value) for s in submitted if s.name.endswith("_total")] == [
        ("toy", 1.0)
    ]
    deadline = time.monotonic() + 30
    while not any(job.id in line and "SUCCEEDED" in line for line in server.lines):
        assert time.monotonic() < deadline, server.lines
        time.sleep(0.1)
    server.stop()
    # Every line the server wrote is one JSON object (no stray text, no traceback).
    entries = [json.loads(line) for line in server.lines if line.strip()]
    for entry in entries:
        assert {"time", "level", "logger", "message"} <= entry.keys(), entry
    about_job = [e for e in entries if e.get("job_id") == job.id]
    assert any("SUCCEEDED" in e["message"] for e in about_job), about_job
    assert any(e["logger"] == "synapse_server.job_log" for e in about_job), about_job
    access = [e for e in entries if e["logger"] == "synapse_server.access"]
    run_action = [e for e in access if e["rpc_method"].endswith("/RunAction")]
    assert len(run_action) == 1, access
    assert run_action[0]["grpc_code"] == "OK" and run_action[0]["level"] == "INFO"
    assert run_action[0]["peer"] and run_action[0]["duration_ms"] >= 0


def _fails(
    tmp_path: Path, *args: str, env: dict[str, str] | None = None, plugin_dir: bool = True
) -> subprocess.CompletedProcess[str]:
    command = [*_command(tmp_path, *args), "--log-level", "WARNING"]
    if not plugin_dir:
        command = [part for part in command if part != str(TOY)]
        command.remove("--plugin-dir")
    return subprocess.run(command, capture_output=True, text=True, timeout=90, env=env)


def _one_line(done: subprocess.CompletedProcess[str], code: int, *words: str) -> str:
    assert done.returncode == code, (done.returncode, done.stderr)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    assert "Traceback" not in done.stderr
    assert lines[0].startswith("synapse serve: ")
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def test_start_up_mistakes_are_one_line(tmp_path: Path) -> None:
    chatty = _command(tmp_path, "--log-level", "chatty")
    done = subprocess.run(chatty, capture_output=True, text=True, timeout=90)
    _one_line(done, 2, "--log-level", "INFO")
    _one_line(_fails(tmp_path, "--log-format", "xml"), 2, "--log-format")
    _one_line(_fails(tmp_path, "--metrics-listen", "nowhere"), 2, "--metrics-listen")
    _one_line(_fails(tmp_path, "--max-concurrent-jobs", "0"), 2, "--max-concurrent-jobs")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        _one_line(
            _fails(tmp_path, "--metrics-listen", f"127.0.0.1:{port}"),
            1,
            f"cannot serve metrics on 127.0.0.1:{port}",
        )
    import os

    env = {**os.environ, "OTEL_TRACES_EXPORTER": "otlp", "OTEL_TRACES_SAMPLER": "maybe"}
    _one_line(_fails(tmp_path, env=env), 2, "OTEL_TRACES_SAMPLER")


def test_the_event_loop_is_uvloop_when_installed_and_asyncio_on_request(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import uvloop
    from synapse_server._serve_args import EventLoopUnavailableError, event_loop_factory

    assert event_loop_factory("asyncio") is None
    for choice in ("auto", "uvloop"):
        factory = event_loop_factory(choice)
        assert factory is not None
        loop = factory()
        try:
            assert isinstance(loop, uvloop.Loop)
        finally:
            loop.close()
    # Without uvloop, auto falls back to asyncio's loop and an explicit uvloop is refused.
    monkeypatch.setitem(sys.modules, "uvloop", None)
    assert event_loop_factory("auto") is None
    with pytest.raises(EventLoopUnavailableError, match="--event-loop asyncio"):
        event_loop_factory("uvloop")


@pytest.mark.parametrize("choice", ["uvloop", "asyncio"])
def test_a_serve_process_runs_jobs_on_the_event_loop_asked_for(
    serve: type[_Serve], tmp_path: Path, choice: str
) -> None:
    server = serve(_command(tmp_path, "--event-loop", choice, "--log-level", "DEBUG"))
    with Client(server.address, timeout=60) as client:
        job = client.run_action("toy", "quick", {"count": 2, "label": choice})
        assert job.result(timeout=60)["label"] == choice
    server.stop()
    assert any(line.endswith(f"event loop: {choice}") for line in server.lines), server.lines
    assert not any("Traceback" in line for line in server.lines), server.lines


def test_an_unknown_event_loop_is_a_one_line_mistake(tmp_path: Path) -> None:
    _one_line(_fails(tmp_path, "--event-loop", "trio"), 2, "--event-loop")
