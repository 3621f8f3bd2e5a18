"""Signed multiplexed model ids: minted by the platform, verified by replicas."""

from __future__ import annotations

import time

import jwt
import pytest
from synapse_sdk.serving.model_ids import (
    SERVE_SIGNING_KEY_ENV,
    ServeModelIdError,
    ServeModelIdSigner,
    ServeModelIdVerifier,
    create_serve_multiplexed_model_id,
    derive_app_key,
    derive_tenant_key,
    looks_like_serve_model_id,
)

SECRET = b"server-secret-for-tests-0123456789abcdef"


def _pair(tenant: str, app: str) -> tuple[ServeModelIdSigner, ServeModelIdVerifier]:
    key = derive_app_key(derive_tenant_key(SECRET, tenant), app)
    return ServeModelIdSigner(key, app, tenant), ServeModelIdVerifier(key, app, tenant)


def test_round_trip_carries_model_tenant_app_and_no_credential() -> None:
    signer, verifier = _pair("acme", "app-1")
    token = signer.mint(34, ttl_s=60)
    claims = verifier.verify(token)
    assert (claims.model_id, claims.tenant, claims.app) == ("34", "acme", "app-1")
    assert claims.expires_at > time.time()
    raw = jwt.decode(token, options={"verify_signature": False})
    assert set(raw) == {"iss", "mid", "ten", "app", "iat", "exp"}
    assert looks_like_serve_model_id(token)
    assert not looks_like_serve_model_id("34")


def test_expired_id_is_rejected() -> None:
    signer, verifier = _pair("acme", "app-1")
    token = signer.mint(1, ttl_s=10, now=time.time() - 100)
    with pytest.raises(ServeModelIdError, match="expired"):
        verifier.verify(token)


def test_forged_id_signed_with_public_value_is_rejected() -> None:
    _, verifier = _pair("acme", "app-1")
    forged = jwt.encode(
        {"iss": "synapse-serve", "mid": "1", "ten": "acme", "app": "app-1", "exp": 2**31},
        "https://api.example.com",
        algorithm="HS256",
    )
    with pytest.raises(ServeModelIdError, match="invalid"):
        verifier.verify(forged)
    unsigned = jwt.encode({"mid": "1"}, None, algorithm="none")  # type: ignore[arg-type]
    with pytest.raises(ServeModelIdError):
        verifier.verify(unsigned)


def test_other_tenant_and_other_app_are_rejected() -> None:
    other_tenant, _ = _pair("evil", "app-1")
    _, verifier = _pair("acme", "app-1")
    with pytest.raises(ServeModelIdError):
        verifier.verify(other_tenant.mint(1))
    # Same key, claims naming another tenant or app: still refused.
    key = derive_app_key(derive_tenant_key(SECRET, "acme"), "app-1")
    with pytest.raises(ServeModelIdError, match="another tenant"):
        verifier.verify(ServeModelIdSigner(key, "app-1", "evil").mint(1))
    with pytest.raises(ServeModelIdError, match="another application"):
        verifier.verify(ServeModelIdSigner(key, "app-2", "acme").mint(1))


def test_keys_are_scoped() -> None:
    assert derive_tenant_key(SECRET, "a") != derive_tenant_key(SECRET, "b")
    tenant_key = derive_tenant_key(SECRET, "a")
    assert derive_app_key(tenant_key, "x") != derive_app_key(tenant_key, "y")
    assert SECRET not in tenant_key


def test_compat_function_needs_platform_key_and_never_embeds_token(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(SERVE_SIGNING_KEY_ENV, raising=False)
    with pytest.raises(ServeModelIdError, match="Infer"):
        create_serve_multiplexed_model_id(1, "user-token", "https://api.example.com")
    tenant_key = derive_tenant_key(SECRET, "acme")
    monkeypatch.setenv(SERVE_SIGNING_KEY_ENV, tenant_key.hex())
    monkeypatch.setenv("SYNAPSE_TENANT", "acme")
    token = create_serve_multiplexed_model_id(
        7, "user-token", "https://api.example.com", tenant="acme", app_name="app-1"
    )
    assert "user-token" not in jwt.decode(token, options={"verify_signature": False}).values()
    _, verifier = _pair("acme", "app-1")
    assert verifier.verify(token).model_id == "7"
    with pytest.raises(ServeModelIdError, match="another tenant"):
        create_serve_multiplexed_model_id(7, "t", "u", tenant="other", app_name="app-1")
