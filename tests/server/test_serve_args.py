"""``synapse serve`` flags become ServerSettings fields by name; the rest comes from the env."""

from __future__ import annotations

import argparse

import pytest
from pydantic import ValidationError
from synapse_server._serve_args import add_arguments, settings_from_args


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(list(argv))


def test_serve_transport_defaults_to_grpc_and_follows_flag_and_env(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("SYNAPSE_SERVE_TRANSPORT", raising=False)
    assert settings_from_args(_parse()).serve_transport == "grpc"
    assert settings_from_args(_parse("--serve-transport", "ray")).serve_transport == "ray"
    monkeypatch.setenv("SYNAPSE_SERVE_TRANSPORT", "ray")
    assert settings_from_args(_parse()).serve_transport == "ray"
    # A flag wins over the environment.
    assert settings_from_args(_parse("--serve-transport", "grpc")).serve_transport == "grpc"


def test_unknown_serve_transport_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(SystemExit):
        _parse("--serve-transport", "udp")
    monkeypatch.setenv("SYNAPSE_SERVE_TRANSPORT", "udp")
    with pytest.raises(ValidationError, match="serve_transport"):
        settings_from_args(_parse())


def test_flags_left_out_keep_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SYNAPSE_MAX_CONCURRENT_JOBS", "7")
    args = _parse("--ray-address", "10.0.0.1:6379")
    settings = settings_from_args(args)
    assert settings.max_concurrent_jobs == 7 and settings.ray_address == "10.0.0.1:6379"
