"""Checks of the server's TLS files before they reach grpc, which only says "Failed to bind".

grpc refuses a certificate whose key does not match, a file that is not PEM, or a key that is
encrypted, all with the same ``RuntimeError: Failed to bind to address``; and it serves a
certificate that has expired or is not yet valid without a word, leaving every client to fail
its handshake. So the files are read with ``cryptography`` first and each mistake is named in
one line: which file, what is wrong, what to do. Messages never quote a file's content (a key
is a secret).
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["ServerTLSFiles", "TLSFileError", "check_server_tls"]

logger = logging.getLogger(__name__)

# A PEM certificate chain or key is a few kilobytes; anything this large is not one.
_MAX_PEM_BYTES = 1 << 20
# A certificate this close to its end is worth a warning at start-up.
_EXPIRY_WARNING = datetime.timedelta(days=14)


class TLSFileError(ValueError):
    """A TLS file of the server is unusable; the message names the file and the problem."""


@dataclass(frozen=True)
class ServerTLSFiles:
    """What the checks found: the certificate's validity window and warnings to log."""

    not_valid_before: datetime.datetime
    not_valid_after: datetime.datetime
    warnings: list[str] = field(default_factory=list)


def _read(path: Path, what: str) -> bytes:
    try:
        with path.open("rb") as handle:
            data = handle.read(_MAX_PEM_BYTES + 1)
    except OSError as exc:
        raise TLSFileError(f"cannot read the {what} {path}: {exc.strerror or exc}") from None
    if len(data) > _MAX_PEM_BYTES:
        raise TLSFileError(f"the {what} {path} is larger than 1 MiB: it is not a PEM file")
    return data


def _kind_hint(data: bytes, convert: str) -> str:
    """What a file that failed to parse seems to hold instead, for the message."""
    if b"PRIVATE KEY-----" in data:
        return " (it holds a private key: are the certificate and key files swapped?)"
    if b"-----BEGIN CERTIFICATE-----" in data:
        return " (it holds a certificate: are the certificate and key files swapped?)"
    if b"-----BEGIN" not in data:
        return f" (no PEM block; if it is DER, convert it with `{convert}`)"
    return ""


def _load_certificates(path: Path, what: str) -> list[Any]:
    from cryptography import x509

    data = _read(path, what)
    try:
        certificates = x509.load_pem_x509_certificates(data)
    except ValueError:
        hint = (
            ""
            if b"-----BEGIN CERTIFICATE-----" in data
            else _kind_hint(data, "openssl x509 -inform der -in FILE -out FILE.pem")
        )
        raise TLSFileError(f"the {what} {path} holds no readable PEM certificate{hint}") from None
    return list(certificates)


def _load_key(path: Path) -> Any:
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization

    data = _read(path, "TLS key file")
    try:
        return serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise TLSFileError(
            f"the TLS key file {path} is encrypted (password-protected); the server needs an "
            "unencrypted PEM key (e.g. `openssl pkey -in KEY -out KEY.plain`), readable only "
            "by its user"
        ) from None
    except UnsupportedAlgorithm:
        raise TLSFileError(f"the TLS key file {path} holds a key of an unsupported type") from None
    except ValueError:
        hint = (
            ""
            if b"PRIVATE KEY-----" in data
            else _kind_hint(data, "openssl pkey -inform der -in FILE -out FILE.pem")
        )
        raise TLSFileError(
            f"the TLS key file {path} holds no readable PEM private key{hint}"
        ) from None


def _public_bytes(public_key: Any) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return bytes(
        public_key.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )


def _name(certificate: Any) -> str:
    return str(certificate.subject.rfc4514_string())[:200] or "(no subject)"


def _dates(certificates: Sequence[Any], path: Path, what: str, now: datetime.datetime) -> list[str]:
    """One problem per certificate of ``path`` outside its validity window."""
    problems = []
    for index, certificate in enumerate(certificates):
        which = f"the {what} {path}" if index == 0 else f"certificate #{index + 1} of {path}"
        before, after = certificate.not_valid_before_utc, certificate.not_valid_after_utc
        if after < now:
            problems.append(f"{which} ({_name(certificate)}) expired on {after:%Y-%m-%d %H:%M} UTC")
        elif before > now:
            problems.append(
                f"{which} ({_name(certificate)}) is not valid until {before:%Y-%m-%d %H:%M} UTC"
            )
    return problems


def check_server_tls(
    cert_file: Path,
    key_file: Path,
    client_ca_file: Path | None = None,
    *,
    allow_invalid_dates: bool = False,
    now: datetime.datetime | None = None,
) -> ServerTLSFiles:
    """Check the server's certificate chain, key and client CA; raise :class:`TLSFileError`.

    Checked: each file is readable PEM of the right kind, the key is unencrypted and belongs
    to the first certificate of the chain, and every certificate of the chain is valid now
    (an expired or not-yet-valid one is refused unless ``allow_invalid_dates``: clients would
    refuse it anyway). A client CA file must hold at least one certificate valid now.
    """
    now = now or datetime.datetime.now(datetime.UTC)
    warnings: list[str] = []
    chain = _load_certificates(cert_file, "TLS certificate file")
    key = _load_key(key_file)
    leaf = chain[0]
    if _public_bytes(leaf.public_key()) != _public_bytes(key.public_key()):
        raise TLSFileError(
            f"the TLS key file {key_file} does not belong to the certificate in {cert_file} "
            "(their public keys differ); use the key the certificate was issued for"
        )
    problems = _dates(chain, cert_file, "TLS certificate in", now)
    if problems and not allow_invalid_dates:
        raise TLSFileError(
            "; ".join(problems)
            + ": clients will refuse it; renew it, or pass --tls-allow-invalid-dates "
            "(SYNAPSE_TLS_ALLOW_INVALID_DATES=1) to serve it anyway"
        )
    warnings.extend(f"{p}; serving it anyway (tls_allow_invalid_dates)" for p in problems)
    after = leaf.not_valid_after_utc
    if not problems and after - now < _EXPIRY_WARNING:
        days = (after - now).days
        warnings.append(
            f"the TLS certificate in {cert_file} expires on {after:%Y-%m-%d %H:%M} UTC "
            f"(in {days} day{'s' if days != 1 else ''})"
        )
    if client_ca_file is not None:
        authorities = _load_certificates(client_ca_file, "TLS client CA file")
        expired = _dates(authorities, client_ca_file, "TLS client CA in", now)
        if len(expired) == len(authorities) and not allow_invalid_dates:
            raise TLSFileError(
                "; ".join(expired) + ": no client certificate can be verified with it"
            )
        warnings.extend(expired)
    return ServerTLSFiles(leaf.not_valid_before_utc, after, warnings)
