"""``synapse serve`` names each TLS mistake in one line and exits non-zero, before binding.

Before these checks, a key that did not match its certificate, a file that was not PEM or an
encrypted key all ended in a traceback with grpc's "Failed to bind to address", and an
expired certificate was served without a word. Each case runs the real command.
"""

from __future__ import annotations

import datetime
import logging
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from synapse_server.settings import ServerSettings, SettingsError

from tests._pki import Authority, Issued

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

SYNAPSE = str(Path(sys.executable).with_name("synapse"))
DAY = datetime.timedelta(days=1)


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> Authority:
    return Authority.create(tmp_path_factory.mktemp("pki"), "serve-ca")


@pytest.fixture(scope="module")
def good(ca: Authority) -> Issued:
    return ca.issue("good")


def _command(tmp_path: Path, *args: str, listen: str = "127.0.0.1:0") -> list[str]:
    data = str(tmp_path / "data")
    return [
        SYNAPSE,
        "serve",
        "--listen",
        listen,
        "--data-dir",
        data,
        "--log-level",
        "WARNING",
        *args,
    ]


def _serve(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        _command(tmp_path, *args),
        capture_output=True,
        text=True,
        timeout=90,
    )


def _garbage(tmp_path: Path) -> Path:
    path = tmp_path / "garbage.pem"
    path.write_bytes(b"this is not a certificate\n")
    return path


@pytest.mark.parametrize(
    "case",
    [
        "mismatched-key",
        "garbage-cert",
        "garbage-key",
        "swapped",
        "encrypted-key",
        "expired",
        "not-yet-valid",
        "garbage-client-ca",
        "expired-client-ca",
    ],
)
def test_a_tls_mistake_is_one_clear_line(
    tmp_path: Path, ca: Authority, good: Issued, case: str
) -> None:
    other = ca.issue("other")
    files: dict[str, tuple[Path, Path, Path | None, str]] = {
        "mismatched-key": (good.cert, other.key, None, "does not belong to the certificate"),
        "garbage-cert": (_garbage(tmp_path), good.key, None, "holds no readable PEM certificate"),
        "garbage-key": (good.cert, _garbage(tmp_path), None, "holds no readable PEM private key"),
        "swapped": (good.key, good.cert, None, "are the certificate and key files swapped?"),
        "encrypted-key": (
            good.cert,
            ca.issue("locked", password=b"secret-pass").key,
            None,
            "is encrypted",
        ),
        "expired": (
            (old := ca.issue("old", valid_from=-3 * DAY, valid_until=-DAY)).cert,
            old.key,
            None,
            "expired on",
        ),
        "not-yet-valid": (
            (new := ca.issue("new", valid_from=DAY, valid_until=2 * DAY)).cert,
            new.key,
            None,
            "is not valid until",
        ),
        "garbage-client-ca": (
            good.cert,
            good.key,
            _garbage(tmp_path),
            "TLS client CA file",
        ),
        "expired-client-ca": (
            good.cert,
            good.key,
            ca.issue("old-ca", valid_from=-3 * DAY, valid_until=-DAY).cert,
            "no client certificate can be verified",
        ),
    }
    cert, key, client_ca, needle = files[case]
    args = ["--tls-cert", str(cert), "--tls-key", str(key)]
    if client_ca is not None:
        args += ["--tls-client-ca", str(client_ca)]
    done = _serve(tmp_path, *args)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and "Failed to bind" not in done.stderr, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("synapse serve: invalid settings: "), lines[0]
    assert needle in lines[0], lines[0]
    # The message names files, never their content (a key is a secret).
    assert "PRIVATE KEY" not in lines[0] and "secret-pass" not in lines[0]
    assert done.stdout == ""


def test_an_expired_certificate_is_served_when_allowed_with_a_warning(
    tmp_path: Path, ca: Authority
) -> None:
    old = ca.issue("old", valid_from=-3 * DAY, valid_until=-DAY)
    process = subprocess.Popen(
        _command(
            tmp_path,
            *("--tls-cert", str(old.cert), "--tls-key", str(old.key)),
            "--tls-allow-invalid-dates",
        ),
        stdout=subprocess.PIPE,
        stderr=(tmp_path / "stderr").open("w"),
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert line.startswith("synapse server listening on "), (tmp_path / "stderr").read_text()
    finally:
        process.terminate()
        process.wait(30)
    log = (tmp_path / "stderr").read_text()
    assert "expired on" in log and "serving it anyway" in log, log


def test_an_address_in_use_is_one_clear_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            _command(tmp_path, listen=f"127.0.0.1:{port}"),
            capture_output=True,
            text=True,
            timeout=90,
        )
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last == (
        f"synapse serve: cannot listen on 127.0.0.1:{port}: the address is in use or not "
        "available on this machine"
    )


def test_a_certificate_close_to_its_end_is_a_warning(
    tmp_path: Path, ca: Authority, caplog: pytest.LogCaptureFixture
) -> None:
    soon = ca.issue("soon", valid_until=3 * DAY + datetime.timedelta(hours=1))
    settings = ServerSettings(data_dir=tmp_path, tls_cert_file=soon.cert, tls_key_file=soon.key)
    with caplog.at_level(logging.WARNING):
        settings.check()
    assert any("expires on" in r.message and "in 3 days" in r.message for r in caplog.records)


def test_settings_errors_are_value_errors(tmp_path: Path, ca: Authority, good: Issued) -> None:
    # Code that caught ValueError from check() keeps working.
    settings = ServerSettings(
        data_dir=tmp_path, tls_cert_file=good.cert, tls_key_file=ca.issue("x").key
    )
    with pytest.raises(ValueError, match="does not belong") as info:
        settings.check()
    assert isinstance(info.value, SettingsError)
