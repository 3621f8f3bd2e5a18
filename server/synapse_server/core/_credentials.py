"""Job-scoped worker credentials, minted and verified with the server secret.

A worker process (local or on a Ray node) gets one credential at launch. It names exactly one
job and its tenant and is signed with HMAC-SHA256, so it cannot be widened or reused for
another job, and it never contains a user's token.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
from dataclasses import dataclass

from synapse_server.core._errors import UnauthenticatedError

__all__ = ["WorkerClaims", "WorkerCredentialIssuer"]

logger = logging.getLogger(__name__)

_PREFIX = "swk1"


@dataclass(frozen=True, slots=True)
class WorkerClaims:
    """What a valid worker credential allows: calls for this job of this tenant."""

    job_id: str
    tenant: str


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class WorkerCredentialIssuer:
    """Mints and checks worker credentials (``swk1.<job>.<tenant>.<mac>``)."""

    def __init__(self, secret: bytes) -> None:
        if len(secret) < 16:
            raise ValueError("the server secret must be at least 16 bytes")
        # Derive a purpose-specific key so the same secret can sign other things safely.
        self._key = hmac.new(secret, b"synapse worker credential v1", hashlib.sha256).digest()

    def _mac(self, body: str) -> str:
        return _b64(hmac.new(self._key, body.encode(), hashlib.sha256).digest())

    def mint(self, job_id: str, tenant: str) -> str:
        """A credential for ``job_id`` of ``tenant``."""
        body = f"{_PREFIX}.{_b64(job_id.encode())}.{_b64(tenant.encode())}"
        return f"{body}.{self._mac(body)}"

    @staticmethod
    def looks_like_worker_credential(token: str) -> bool:
        """True when ``token`` has the worker credential shape (it may still be invalid)."""
        return token.startswith(_PREFIX + ".")

    def verify(self, token: str) -> WorkerClaims:
        """The claims of a valid credential; :class:`UnauthenticatedError` otherwise."""
        parts = token.split(".")
        if len(parts) != 4 or parts[0] != _PREFIX:
            raise UnauthenticatedError("malformed worker credential")
        body = ".".join(parts[:3])
        if not hmac.compare_digest(self._mac(body), parts[3]):
            raise UnauthenticatedError("invalid worker credential")
        try:
            return WorkerClaims(job_id=_unb64(parts[1]).decode(), tenant=_unb64(parts[2]).decode())
        except (ValueError, UnicodeDecodeError) as exc:
            raise UnauthenticatedError("malformed worker credential") from exc
