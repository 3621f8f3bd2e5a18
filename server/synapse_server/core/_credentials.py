"""Job-scoped worker credentials, minted and verified with the server secret.

A worker process (local or on a Ray node) gets one credential at launch. It names exactly one
job and its tenant and is signed with HMAC-SHA256, so it cannot be widened or reused for
another job, and it never contains a user's token.

A credential is valid only while its job runs: the job service mints it when it launches the
job's worker and revokes it when the job ends (or the launch is withdrawn), and every
verification checks both the signature and that the credential is the job's live one. Each
credential carries a random nonce, so one minted for an earlier launch of the same job (a
worker left over from a previous server process, a job queued again after a restart) is
refused as well. The issuer keeps the live ones in memory only: after a restart no earlier
credential works.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import secrets
from dataclasses import dataclass

from synapse_server.core._errors import UnauthenticatedError

__all__ = ["EXPIRED_MESSAGE", "WorkerClaims", "WorkerCredentialIssuer"]

logger = logging.getLogger(__name__)

_PREFIX = "swk2"
_NONCE_BYTES = 12
#: Why a well-signed credential is refused; says nothing about which job exists.
EXPIRED_MESSAGE = (
    "worker credential is no longer valid: its job has ended or is not running on this server"
)


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
    """Mints, checks and revokes worker credentials (``swk2.<job>.<tenant>.<nonce>.<mac>``)."""

    def __init__(self, secret: bytes) -> None:
        if len(secret) < 16:
            raise ValueError("the server secret must be at least 16 bytes")
        # Derive a purpose-specific key so the same secret can sign other things safely.
        self._key = hmac.new(secret, b"synapse worker credential v2", hashlib.sha256).digest()
        # Job id -> nonce of its live credential (one per job: a new launch replaces it).
        self._live: dict[str, str] = {}

    def _mac(self, body: str) -> str:
        return _b64(hmac.new(self._key, body.encode(), hashlib.sha256).digest())

    def mint(self, job_id: str, tenant: str) -> str:
        """A credential for ``job_id`` of ``tenant``, valid until :meth:`revoke`.

        Replaces the job's earlier credential, if any.
        """
        nonce = _b64(secrets.token_bytes(_NONCE_BYTES))
        body = f"{_PREFIX}.{_b64(job_id.encode())}.{_b64(tenant.encode())}.{nonce}"
        self._live[job_id] = nonce
        return f"{body}.{self._mac(body)}"

    def revoke(self, job_id: str) -> None:
        """End the validity of the job's credential (no-op when it has none)."""
        self._live.pop(job_id, None)

    @property
    def live_count(self) -> int:
        """How many credentials are valid now (one per launched, unfinished job)."""
        return len(self._live)

    @staticmethod
    def looks_like_worker_credential(token: str) -> bool:
        """True when ``token`` has the worker credential shape (it may still be invalid)."""
        return token.startswith(_PREFIX + ".")

    def verify(self, token: str) -> WorkerClaims:
        """The claims of a valid, live credential; :class:`UnauthenticatedError` otherwise."""
        parts = token.split(".")
        if len(parts) != 5 or parts[0] != _PREFIX:
            raise UnauthenticatedError("malformed worker credential")
        body = ".".join(parts[:4])
        if not hmac.compare_digest(self._mac(body), parts[4]):
            raise UnauthenticatedError("invalid worker credential")
        try:
            claims = WorkerClaims(
                job_id=_unb64(parts[1]).decode(), tenant=_unb64(parts[2]).decode()
            )
        except (ValueError, UnicodeDecodeError) as exc:
            raise UnauthenticatedError("malformed worker credential") from exc
        # The nonce is covered by the signature checked above, so a plain comparison is safe.
        if self._live.get(claims.job_id) != parts[3]:
            raise UnauthenticatedError(EXPIRED_MESSAGE)
        return claims
