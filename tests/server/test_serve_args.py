"""``synapse serve`` flags become ServerSettings fields by name; the rest comes from the env."""

from __future__ import annotations

import argparse
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError
from synapse_server._serve_args import (
    SettingsArgumentError,
    add_arguments,
    settings_from_args,
    settings_from_flags,
)


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(list(argv))


def test_serve_transport_defaults_to_direct_and_follows_flag_and_env(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("SYNAPSE_SERVE_TRANSPORT", raising=False)
    assert settings_from_args(_parse()).serve_transport == "direct"
    assert settings_from_args(_parse("--serve-transport", "ray")).serve_transport == "ray"
    monkeypatch.setenv("SYNAPSE_SERVE_TRANSPORT", "ray")
    assert settings_from_args(_parse()).serve_transport == "ray"
    # A flag wins over the environment.
    assert settings_from_args(_parse("--serve-transport", "grpc")).serve_transport == "grpc"


def test_unknown_serve_transport_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SYNAPSE_SERVE_TRANSPORT", raising=False)
    with pytest.raises(
        SettingsArgumentError, match=r"^--serve-transport: must be 'direct', 'grpc' or 'ray'$"
    ):
        settings_from_flags(_parse("--serve-transport", "udp"))
    monkeypatch.setenv("SYNAPSE_SERVE_TRANSPORT", "udp")
    with pytest.raises(ValidationError, match="serve_transport"):
        settings_from_args(_parse())
    with pytest.raises(SettingsArgumentError, match=r"^SYNAPSE_SERVE_TRANSPORT: must be"):
        settings_from_flags(_parse())


def test_flags_left_out_keep_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SYNAPSE_MAX_CONCURRENT_JOBS", "7")
    args = _parse("--ray-address", "10.0.0.1:6379")
    settings = settings_from_args(args)
    assert settings.max_concurrent_jobs == 7 and settings.ray_address == "10.0.0.1:6379"


def _help_text() -> str:
    parser = argparse.ArgumentParser(prog="synapse serve")
    add_arguments(parser)
    return " ".join(parser.format_help().split())


def test_every_setting_is_described_and_has_a_flag_or_is_listed() -> None:
    from synapse_server._serve_args import env_name, flag_name
    from synapse_server.settings import ServerSettings

    text = _help_text()
    for field, info in ServerSettings.model_fields.items():
        assert info.description, f"ServerSettings.{field} has no description"
        env = f"${env_name(field)}"
        assert env in text, field
        if field == "server_secret":  # a secret: from the environment only, and said so
            assert f"--{field.replace('_', '-')}" not in text
            assert "Read from the environment only (a command line is visible to other " in text
            continue
        # The flag, then its description, variable and default.
        # argparse wraps lines (even at hyphens): compared without any whitespace.
        packed, words = "".join(text.split()), "".join(info.description.split())
        assert f"{flag_name(field)} " in text, field
        assert f"{words}[{env};default:" in packed, field
    assert "--max-concurrent-jobs N jobs that run at the same time" in text
    assert "[$SYNAPSE_MAX_CONCURRENT_JOBS; default: 4]" in text


@pytest.mark.parametrize(
    ("argv", "field", "value"),
    [
        (["--warm-workers", "0"], "warm_workers", 0),
        (["--preload-plugin", "a", "--preload-plugin", "b"], "preload_plugins", ["a", "b"]),
        (["--keepalive-seconds", "2.5"], "keepalive_seconds", 2.5),
        (["--worker-python", "/opt/py"], "worker_python", "/opt/py"),
        (["--plugin-dir", "a", "--plugin-dir", "b"], "plugin_dirs", [Path("a"), Path("b")]),
        (["--allow-public-bind"], "allow_public_bind", True),
        (["--listen", "0.0.0.0:7000", "--tokens", "t=a"], "listen_address", "0.0.0.0:7000"),
        (["--cancel-grace", "1"], "cancel_grace_seconds", 1.0),
        (["--max-message-bytes", "8388608"], "max_message_bytes", 8 << 20),
    ],
)
def test_flags_set_their_setting(
    monkeypatch: pytest.MonkeyPatch, argv: list[str], field: str, value: object
) -> None:
    for name in list(os.environ):
        if name.startswith("SYNAPSE_"):
            monkeypatch.delenv(name)
    assert getattr(settings_from_flags(_parse(*argv)), field) == value


def test_a_flag_turns_off_what_the_environment_turned_on(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SYNAPSE_ALLOW_PUBLIC_BIND", "true")
    assert settings_from_flags(_parse()).allow_public_bind is True
    assert settings_from_flags(_parse("--no-allow-public-bind")).allow_public_bind is False


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        (["--max-concurrent-jobs", "0"], "--max-concurrent-jobs: must be greater than 0"),
        (["--max-concurrent-jobs", "many"], "--max-concurrent-jobs: must be a valid integer"),
        (["--cancel-grace", "nan"], "--cancel-grace: must be a finite number"),
        (["--shutdown-grace", "-1"], "--shutdown-grace: must be greater than or equal to 0"),
        (["--listen", "nowhere"], "--listen: must be host:port, got 'nowhere'"),
        (["--tokens", "x"], "--tokens: 'x' is neither 'token=tenant,...' nor a readable file"),
        (["--warm-workers", "-1"], "--warm-workers: must be greater than or equal to 0"),
        (["--max-message-bytes", "10"], "--max-message-bytes: must be greater than or equal to"),
    ],
)
def test_invalid_flags_are_named(
    monkeypatch: pytest.MonkeyPatch, argv: list[str], said: str
) -> None:
    for name in list(os.environ):
        if name.startswith("SYNAPSE_"):
            monkeypatch.delenv(name)
    with pytest.raises(SettingsArgumentError) as info:
        settings_from_flags(_parse(*argv))
    assert str(info.value).startswith(said), str(info.value)
    assert "_" not in str(info.value).split(":")[0]  # the flag, not the field


def test_a_long_bad_value_is_not_echoed_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SYNAPSE_LISTEN_ADDRESS", raising=False)
    with pytest.raises(SettingsArgumentError) as info:
        settings_from_flags(_parse("--listen", "x" * 100_000))
    assert len(str(info.value)) <= 300


SYNAPSE = str(Path(sys.executable).with_name("synapse"))
LOG_RECORD = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ [A-Z]+ ")


def _serve(*argv: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SYNAPSE_", "GRPC_"))}
    return subprocess.run(
        [SYNAPSE, "serve", "--listen", "127.0.0.1:0", *argv],
        capture_output=True,
        text=True,
        timeout=90,
        cwd=cwd,
        env=env,
    )


def test_start_up_failures_are_one_line(tmp_path: Path) -> None:
    broken = tmp_path / "plugins" / "p"
    broken.mkdir(parents=True)
    (broken / "config.yaml").write_text(
        "code: p\nname: p\nversion: '1'\ncategory: custom\nactions:\n"
        "  a:\n    entrypoint: m:A\n    metod: local\n"
    )
    (tmp_path / "a-file").write_text("")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        cases = [
            (["--max-concurrent-jobs", "0"], 2, "--max-concurrent-jobs: must be greater than 0"),
            (
                ["--serve-transport", "udp"],
                2,
                "--serve-transport: must be 'direct', 'grpc' or 'ray'",
            ),
            (["--log-level", "loud"], 2, "--log-level: must be one of DEBUG"),
            (["--plugin-dir", "no-such-dir"], 2, "plugin directory 'no-such-dir' does not exist"),
            (["--plugin-dir", "plugins"], 2, "unknown key 'metod' (did you mean 'method'?)"),
            (["--tls-cert", "a-file"], 2, "TLS needs both --tls-cert and --tls-key"),
            (["--data-dir", "a-file"], 1, "data directory"),
            (["--listen", f"127.0.0.1:{port}"], 1, f"cannot listen on 127.0.0.1:{port}"),
        ]
        for argv, code, said in cases:
            done = _serve(*argv, cwd=tmp_path)
            # Besides the server's own log records (time-stamped), one line.
            lines = [ln for ln in done.stderr.splitlines() if not LOG_RECORD.match(ln)]
            assert "Traceback" not in done.stderr, done.stderr
            assert done.returncode == code, (argv, done.stderr)
            assert len(lines) == 1, (argv, done.stderr)
            assert lines[0].startswith("synapse serve: ") and said in lines[0], lines[0]
    # The plugin is named by its own directory, not by its snapshot in the data directory.
    assert "plugins/p/config.yaml" in _serve("--plugin-dir", "plugins", cwd=tmp_path).stderr
