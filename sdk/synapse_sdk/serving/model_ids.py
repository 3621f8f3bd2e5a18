"""Signed multiplexed model ids for Ray Serve deployments.

A request to a serve application names its model through Ray Serve's multiplexed model id.
The platform never lets callers choose that id: ``Infer`` authenticates the caller, then
mints a short JWT (HS256) that says *which model, for which tenant, for which application,
until when*. The replica verifies it before loading or using a model, so a forged id, an
expired one or one minted for another tenant or application is refused.

Key hierarchy (no key ever leaves its scope):

* the server secret stays in the server process;
* a *tenant key* ``HMAC(secret, tenant)`` is handed to deployment workers of that tenant (so
  ``deploy()`` can derive its application's key without seeing the server secret);
* an *application key* ``HMAC(tenant key, app name)`` is given to the application's replicas,
  which can verify (and mint) ids for that one application only.

The id never carries a user credential, and the public backend URL plays no part in signing.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import time
from dataclasses import dataclass
from typing import Any

import jwt

from synapse_sdk.errors import SynapseError

logger = logging.getLogger(__name__)

__all__ = [
    "SERVE_SIGNING_KEY_ENV",
    "SERVE_TENANT_ENV",
    "ServeModelClaims",
    "ServeModelIdError",
    "ServeModelIdSigner",
    "ServeModelIdVerifier",
    "create_serve_multiplexed_model_id",
    "derive_app_key",
    "derive_tenant_key",
    "looks_like_serve_model_id",
    "unverified_claims",
]

#: Where the platform puts the (hex) tenant key for deployment workers.
SERVE_SIGNING_KEY_ENV = "SYNAPSE_SERVE_SIGNING_KEY"
#: The tenant the worker runs for (the claims' ``ten``); empty means the default tenant.
SERVE_TENANT_ENV = "SYNAPSE_TENANT"

_ALGORITHM = "HS256"
_ISSUER = "synapse-serve"
_DEFAULT_TTL_S = 3600.0


class ServeModelIdError(SynapseError, PermissionError):
    """A multiplexed model id is malformed, forged, expired or minted for someone else."""


@dataclass(frozen=True, slots=True)
class ServeModelClaims:
    """What a verified multiplexed model id grants: one model, one tenant, one application."""

    model_id: str
    tenant: str
    app: str
    expires_at: float


def derive_tenant_key(secret: bytes, tenant: str | None) -> bytes:
    """The key a tenant's deployment workers get: derived, so the server secret never leaves."""
    if not secret:
        raise ServeModelIdError("cannot derive a serve signing key from an empty secret")
    return hmac.new(
        secret, b"synapse-serve-tenant\x00" + (tenant or "").encode(), "sha256"
    ).digest()


def derive_app_key(tenant_key: bytes, app_name: str) -> bytes:
    """The key one serve application's replicas get, derived from its tenant's key."""
    if not app_name:
        raise ServeModelIdError("cannot derive a serve signing key without an application name")
    return hmac.new(
        tenant_key, b"synapse-serve-app\x00" + app_name.encode(), hashlib.sha256
    ).digest()


class ServeModelIdSigner:
    """Mints multiplexed model ids for one application with that application's key."""

    def __init__(self, app_key: bytes, app_name: str, tenant: str | None) -> None:
        if not app_key:
            raise ServeModelIdError("a serve signing key is required")
        self._key = app_key
        self.app_name = app_name
        self.tenant = tenant or ""

    def mint(
        self, model_id: int | str, ttl_s: float = _DEFAULT_TTL_S, now: float | None = None
    ) -> str:
        """A signed id for ``model_id`` valid for ``ttl_s`` seconds."""
        model = str(model_id).strip()
        if not model:
            raise ServeModelIdError("model id must not be empty")
        if ttl_s <= 0:
            raise ServeModelIdError(f"ttl must be positive, got {ttl_s}")
        issued = time.time() if now is None else now
        claims = {
            "iss": _ISSUER,
            "mid": model,
            "ten": self.tenant,
            "app": self.app_name,
            "iat": int(issued),
            "exp": int(issued + ttl_s),
        }
        return jwt.encode(claims, self._key, algorithm=_ALGORITHM)


class ServeModelIdVerifier:
    """Checks ids on the replica side: signature, expiry, application and tenant."""

    def __init__(self, app_key: bytes, app_name: str, tenant: str | None) -> None:
        if not app_key:
            raise ServeModelIdError("a serve verification key is required")
        self._key = app_key
        self.app_name = app_name
        self.tenant = tenant or ""

    def verify(self, token: str) -> ServeModelClaims:
        """The claims of a valid id; :class:`ServeModelIdError` for anything else."""
        if not isinstance(token, str) or not token:
            raise ServeModelIdError("the request carries no multiplexed model id")
        try:
            claims = jwt.decode(
                token,
                self._key,
                algorithms=[_ALGORITHM],
                issuer=_ISSUER,
                options={"require": ["exp", "mid", "ten", "app", "iss"]},
            )
        except jwt.ExpiredSignatureError as exc:
            raise ServeModelIdError("the multiplexed model id has expired") from exc
        except jwt.InvalidTokenError as exc:
            # The reason is safe to show (it names a failed check, never the key or token).
            raise ServeModelIdError(f"invalid multiplexed model id: {exc}") from exc
        if claims["app"] != self.app_name:
            raise ServeModelIdError("the multiplexed model id was minted for another application")
        if claims["ten"] != self.tenant:
            raise ServeModelIdError("the multiplexed model id was minted for another tenant")
        return ServeModelClaims(
            model_id=str(claims["mid"]),
            tenant=str(claims["ten"]),
            app=str(claims["app"]),
            expires_at=float(claims["exp"]),
        )


def looks_like_serve_model_id(token: str) -> bool:
    """True when ``token`` is shaped like an id this module mints (no signature check)."""
    try:
        header = jwt.get_unverified_header(token)
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.InvalidTokenError:
        return False
    return header.get("alg") == _ALGORITHM and claims.get("iss") == _ISSUER


def unverified_claims(token: str) -> dict[str, Any]:
    """The claims without checking the signature: only to pick the key to verify with."""
    try:
        return dict(jwt.decode(token, options={"verify_signature": False}))
    except jwt.InvalidTokenError as exc:
        raise ServeModelIdError(f"invalid multiplexed model id: {exc}") from exc


def create_serve_multiplexed_model_id(
    model_id: int | str,
    token: str,
    backend_url: str,
    tenant: str | None = None,
    *,
    app_name: str | None = None,
    ttl_s: float = _DEFAULT_TTL_S,
) -> str:
    """Create a signed multiplexed model id (kept for the reference SDK's signature).

    Unlike the reference SDK, the id is signed with a platform-provided key, not with
    ``backend_url``, and never contains ``token``: both are accepted for compatibility and
    ignored. The key comes from the platform (``SYNAPSE_SERVE_SIGNING_KEY``, set for jobs the
    platform runs); outside the platform this raises :class:`ServeModelIdError`, because an id
    signed with a public value would be accepted from anyone. ``app_name`` defaults to
    ``SYNAPSE_PLUGIN_RELEASE_CODE`` (the default serve application name). Callers outside a
    plugin should use ``Client.infer``, which lets the server mint the id.
    """
    del token, backend_url  # never embedded, never used as a key
    key_hex = os.environ.get(SERVE_SIGNING_KEY_ENV, "")
    if not key_hex:
        raise ServeModelIdError(
            "create_serve_multiplexed_model_id needs the platform's serve signing key "
            f"({SERVE_SIGNING_KEY_ENV}), which only jobs run by the platform have; call Infer "
            "(Client.infer) instead and let the server mint the id"
        )
    try:
        tenant_key = bytes.fromhex(key_hex)
    except ValueError as exc:
        raise ServeModelIdError(f"{SERVE_SIGNING_KEY_ENV} is not a hex key") from exc
    env_tenant = os.environ.get(SERVE_TENANT_ENV, "")
    if tenant is not None and tenant != env_tenant:
        raise ServeModelIdError("cannot mint a multiplexed model id for another tenant")
    app = app_name or os.environ.get("SYNAPSE_PLUGIN_RELEASE_CODE", "")
    if not app:
        raise ServeModelIdError(
            "no serve application name: pass app_name or set SYNAPSE_PLUGIN_RELEASE_CODE"
        )
    signer = ServeModelIdSigner(derive_app_key(tenant_key, app), app, env_tenant)
    return signer.mint(model_id, ttl_s=ttl_s)
