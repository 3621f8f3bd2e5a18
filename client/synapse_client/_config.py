"""Connection settings shared by :class:`Client` and :class:`AsyncClient`: TLS, auth, retries.

Everything here is transport-neutral: the sync and async clients build their channels and
call metadata from the same :class:`ConnectionConfig`.
"""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeAlias

import grpc

from ._errors import ChannelSecurity, ClientConfigError

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_MAX_MESSAGE_BYTES",
    "DEFAULT_PORT",
    "ENV_SERVER",
    "ENV_TLS",
    "ENV_TLS_CA",
    "ENV_TLS_CERT",
    "ENV_TLS_KEY",
    "ENV_TLS_SERVER_NAME",
    "ENV_TOKEN",
    "AsyncInterceptor",
    "ConnectionConfig",
    "RetryPolicy",
    "SyncInterceptor",
    "TLSConfig",
    "connection_from_env",
    "normalize_address",
]

#: Environment variables ``Client.from_env`` (and so the CLI) read: the server address, the
#: bearer token, and TLS: ``SYNAPSE_TLS=1`` (system roots), a CA file, a client certificate
#: and key (mTLS), the name to verify in the server certificate. Any TLS file turns TLS on.
ENV_SERVER = "SYNAPSE_SERVER"
ENV_TOKEN = "SYNAPSE_TOKEN"
ENV_TLS = "SYNAPSE_TLS"
ENV_TLS_CA = "SYNAPSE_TLS_CA"
ENV_TLS_CERT = "SYNAPSE_TLS_CERT"
ENV_TLS_KEY = "SYNAPSE_TLS_KEY"
ENV_TLS_SERVER_NAME = "SYNAPSE_TLS_SERVER_NAME"

#: The port of an address given without one (the server's default): gRPC itself would
#: otherwise dial 443.
DEFAULT_PORT = 50051
# gRPC target URIs passed through unchanged: their resolver decides (a socket path has no port).
_GRPC_TARGET_SCHEMES = ("unix:", "unix-abstract:", "vsock:", "dns:", "ipv4:", "ipv6:")
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"", "0", "false", "no", "off"})


def _shown(text: str, limit: int = 120) -> str:
    """``text`` quoted for a message, cut at ``limit`` characters (addresses come from users)."""
    return repr(text if len(text) <= limit else text[:limit] + "...")


def normalize_address(address: str) -> str:
    """The gRPC target for a server address: ``host:port``, the port 50051 when left out.

    ``localhost`` becomes ``localhost:50051`` and a bare IPv6 address ``[::1]:50051``; gRPC
    target URIs (``unix:/path``, ``dns:///host:port``, ...) pass unchanged. A URL such as
    ``http://host:port`` raises :class:`ClientConfigError` saying to drop the scheme (gRPC
    addresses have none; TLS is the ``tls`` option), as does a port that is not a number.
    """
    text = address.strip()
    if not text:
        raise ClientConfigError("server address must be a non-empty 'host:port' string")
    lowered = text.lower()
    scheme, sep, rest = text.partition("://")
    if sep and not lowered.startswith(_GRPC_TARGET_SCHEMES):
        also = " and connect with TLS" if scheme.lower() in ("https", "grpcs") else ""
        raise ClientConfigError(
            f"server address {_shown(text)} is a URL: drop the scheme '{scheme[:16]}://' and "
            f"pass host:port ({_shown(rest.rstrip('/'))}){also}"
        )
    if lowered.startswith(_GRPC_TARGET_SCHEMES):
        return text
    if text.startswith("["):
        host, bracket, tail = text.partition("]")
        if not bracket:
            raise ClientConfigError(f"server address {_shown(text)}: ']' is missing")
        if not tail:
            return f"{text}:{DEFAULT_PORT}"
        port = tail[1:] if tail.startswith(":") else None
        host = f"{host}]"
    elif text.count(":") > 1:
        # A bare IPv6 address: its colons are not a port separator.
        return f"[{text}]:{DEFAULT_PORT}"
    else:
        host, colon, port_text = text.partition(":")
        if not colon:
            return f"{text}:{DEFAULT_PORT}"
        port = port_text
    if port is None or not (port.isascii() and port.isdigit()) or not 0 < int(port) < 65536:
        raise ClientConfigError(
            f"server address {_shown(text)}: the port must be a number from 1 to 65535"
        )
    if not host or host == "[]":
        raise ClientConfigError(f"server address {_shown(text)} has no host")
    return text


def _env_flag(environ: Mapping[str, str], name: str) -> bool:
    value = environ.get(name, "").strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ClientConfigError(
        f"{name} must be 1/true/yes/on or 0/false/no/off, got {_shown(value, 20)}"
    )


def connection_from_env(
    environ: Mapping[str, str],
) -> tuple[str, str | None, bool | TLSConfig]:
    """``(address, token, tls)`` from the ``SYNAPSE_*`` variables (see :data:`ENV_SERVER`).

    TLS is on when ``SYNAPSE_TLS`` is true or any TLS file or the server name is set (files
    are read here: a missing one raises :class:`ClientConfigError` naming it). Empty
    variables count as unset. No ``SYNAPSE_SERVER`` raises :class:`ClientConfigError`.
    """
    address = environ.get(ENV_SERVER, "").strip()
    if not address:
        raise ClientConfigError(f"no server address: set {ENV_SERVER} (host:port)")
    token = environ.get(ENV_TOKEN) or None
    files = {
        name: environ.get(name) or None
        for name in (ENV_TLS_CA, ENV_TLS_CERT, ENV_TLS_KEY, ENV_TLS_SERVER_NAME)
    }
    tls: bool | TLSConfig = _env_flag(environ, ENV_TLS)
    if any(files.values()):
        tls = TLSConfig.from_files(
            ca_file=files[ENV_TLS_CA],
            cert_file=files[ENV_TLS_CERT],
            key_file=files[ENV_TLS_KEY],
            server_name_override=files[ENV_TLS_SERVER_NAME],
        )
    return address, token, tls


_USER_AGENT = "synapse-client-python/0.1"
#: The server's default limit on RunAction and Infer messages and their answers.
DEFAULT_MAX_MESSAGE_BYTES = 64 << 20

#: The interceptors ``Client`` takes: any of grpc's four client interceptor interfaces.
SyncInterceptor: TypeAlias = (
    grpc.UnaryUnaryClientInterceptor
    | grpc.UnaryStreamClientInterceptor
    | grpc.StreamUnaryClientInterceptor
    | grpc.StreamStreamClientInterceptor
)
#: The interceptors ``AsyncClient`` takes: grpc.aio's (``grpc.aio.UnaryUnaryClientInterceptor``…).
AsyncInterceptor: TypeAlias = grpc.aio.ClientInterceptor

_SYNC_INTERCEPTORS = (
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
)


def _interceptor_chain(
    interceptors: Sequence[Any], accepted: tuple[type, ...], expected: str
) -> tuple[Any, ...]:
    """``interceptors`` as a tuple, once each is of a kind the client can use."""
    try:
        chain = tuple(interceptors)
    except TypeError:
        raise ClientConfigError(f"interceptors must be a list; {expected}") from None
    for interceptor in chain:
        if not isinstance(interceptor, accepted):
            # The type's name only: an interceptor's repr may hold credentials.
            raise ClientConfigError(f"{expected}, got a {type(interceptor).__name__}")
    return chain


class _AioKindView:
    """One kind of calls of a grpc.aio interceptor that implements several kinds.

    grpc.aio files each interceptor under the first kind it implements only (grpc/grpc#31442),
    so an interceptor written for every call would silently miss the streaming ones; blocking
    channels use it for every kind. AsyncClient gives grpc.aio one view per kind instead.
    """

    def __init__(self, interceptor: Any) -> None:
        self.interceptor = interceptor


class _AioUnaryUnaryView(_AioKindView, grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return await self.interceptor.intercept_unary_unary(continuation, details, request)


class _AioUnaryStreamView(_AioKindView, grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return await self.interceptor.intercept_unary_stream(continuation, details, request)


class _AioStreamUnaryView(_AioKindView, grpc.aio.StreamUnaryClientInterceptor):
    async def intercept_stream_unary(self, continuation: Any, details: Any, requests: Any) -> Any:
        return await self.interceptor.intercept_stream_unary(continuation, details, requests)


class _AioStreamStreamView(_AioKindView, grpc.aio.StreamStreamClientInterceptor):
    async def intercept_stream_stream(self, continuation: Any, details: Any, requests: Any) -> Any:
        return await self.interceptor.intercept_stream_stream(continuation, details, requests)


_AIO_VIEWS: tuple[tuple[type, type[_AioKindView]], ...] = (
    (grpc.aio.UnaryUnaryClientInterceptor, _AioUnaryUnaryView),
    (grpc.aio.UnaryStreamClientInterceptor, _AioUnaryStreamView),
    (grpc.aio.StreamUnaryClientInterceptor, _AioStreamUnaryView),
    (grpc.aio.StreamStreamClientInterceptor, _AioStreamStreamView),
)


def _aio_per_kind(chain: tuple[Any, ...]) -> list[Any]:
    """The interceptors to give grpc.aio, each reaching every kind of call it implements."""
    flat: list[Any] = []
    for interceptor in chain:
        views = [view for kind, view in _AIO_VIEWS if isinstance(interceptor, kind)]
        if len(views) > 1:
            flat.extend(view(interceptor) for view in views)
        else:
            flat.append(interceptor)
    return flat


@dataclass(frozen=True, slots=True)
class TLSConfig:
    """TLS for the channel. Root certs verify the server; a client cert/key pair enables mTLS.

    All fields are PEM bytes; ``None`` root certificates means the system trust store.
    """

    root_certificates: bytes | None = None
    certificate_chain: bytes | None = None
    private_key: bytes | None = field(default=None, repr=False)
    #: Name to verify in the server certificate instead of the address host (tests, IPs).
    server_name_override: str | None = None

    def __post_init__(self) -> None:
        if (self.certificate_chain is None) != (self.private_key is None):
            raise ClientConfigError(
                "mTLS needs both a client certificate chain and its private key"
            )

    @classmethod
    def from_files(
        cls,
        ca_file: str | os.PathLike[str] | None = None,
        cert_file: str | os.PathLike[str] | None = None,
        key_file: str | os.PathLike[str] | None = None,
        server_name_override: str | None = None,
    ) -> TLSConfig:
        """Reads PEM files; raises :class:`ClientConfigError` naming a file it cannot read."""

        def read(path: str | os.PathLike[str] | None, what: str) -> bytes | None:
            if path is None:
                return None
            try:
                return Path(path).read_bytes()
            except OSError as exc:
                raise ClientConfigError(f"cannot read {what} {path}: {exc.strerror}") from exc

        return cls(
            root_certificates=read(ca_file, "CA certificate file"),
            certificate_chain=read(cert_file, "client certificate file"),
            private_key=read(key_file, "client key file"),
            server_name_override=server_name_override,
        )

    def credentials(self) -> grpc.ChannelCredentials:
        """The grpc channel credentials for this configuration."""
        return grpc.ssl_channel_credentials(
            root_certificates=self.root_certificates,
            private_key=self.private_key,
            certificate_chain=self.certificate_chain,
        )


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential backoff for calls that failed with UNAVAILABLE.

    A connection that failed its TLS set-up (:class:`TransportSecurityError`) is not retried.

    Only idempotent calls are retried. RunAction is one because the client always sends a
    request_id, so a retry after a lost response returns the job the first attempt created.
    """

    max_attempts: int = 5
    initial_backoff: float = 0.1
    max_backoff: float = 5.0
    multiplier: float = 2.0
    #: Fraction of each delay randomised, so that many clients do not retry in lockstep.
    jitter: float = 0.2

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ClientConfigError("RetryPolicy.max_attempts must be at least 1")
        if self.initial_backoff < 0 or self.max_backoff < 0 or self.multiplier < 1:
            raise ClientConfigError("RetryPolicy backoffs must be >= 0 and multiplier >= 1")
        if not 0 <= self.jitter <= 1:
            raise ClientConfigError("RetryPolicy.jitter must be between 0 and 1")

    def backoff(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        base = min(self.max_backoff, self.initial_backoff * self.multiplier ** (attempt - 1))
        return base * (1 - self.jitter * random.random())


#: Retry nothing: for callers that handle UNAVAILABLE themselves.
NO_RETRY = RetryPolicy(max_attempts=1)


@dataclass(frozen=True, slots=True)
class ConnectionConfig:
    """Where and how to connect: address, bearer token, TLS, default deadline, retries."""

    address: str
    token: str | None = field(default=None, repr=False)
    tls: TLSConfig | None = None
    #: Default deadline in seconds for unary calls (None: no deadline). Streams have none.
    timeout: float | None = 30.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    #: Extra grpc channel arguments, appended after the client's own.
    channel_options: tuple[tuple[str, str | int], ...] = ()
    #: The largest message sent or received (gRPC's own default receive limit is 4 MiB, below
    #: an Infer answer or a job's params the server may send). A request over it fails here,
    #: before it is sent, with RESOURCE_EXHAUSTED naming the limit. Match the server's
    #: ``max_message_bytes``.
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES

    def __post_init__(self) -> None:
        if not self.address or not isinstance(self.address, str):
            raise ClientConfigError("server address must be a non-empty 'host:port' string")
        if self.timeout is not None and self.timeout <= 0:
            raise ClientConfigError("timeout must be positive (or None for no deadline)")
        if self.token is not None and (not self.token or "\n" in self.token):
            raise ClientConfigError("token must be a non-empty single-line string")
        if not 0 < self.max_message_bytes < 1 << 31:
            raise ClientConfigError("max_message_bytes must be between 1 and 2**31 - 1")

    @classmethod
    def build(
        cls,
        address: str,
        *,
        token: str | None = None,
        tls: bool | TLSConfig = False,
        timeout: float | None = 30.0,
        retry: RetryPolicy | None = None,
        channel_options: tuple[tuple[str, str | int], ...] = (),
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    ) -> ConnectionConfig:
        """Normalises the arguments both client constructors accept (the address by
        :func:`normalize_address`)."""
        if not isinstance(address, str):
            raise ClientConfigError("server address must be a non-empty 'host:port' string")
        address = normalize_address(address)
        tls_config = TLSConfig() if tls is True else (tls or None)
        if tls_config is not None and not isinstance(tls_config, TLSConfig):
            raise ClientConfigError("tls must be a bool or a TLSConfig")
        return cls(
            address=address,
            token=token,
            tls=tls_config,
            timeout=timeout,
            retry=retry or RetryPolicy(),
            channel_options=channel_options,
            max_message_bytes=max_message_bytes,
        )

    @property
    def security(self) -> ChannelSecurity:
        """How the channel connects (for explaining a failed TLS set-up)."""
        return ChannelSecurity(
            tls=self.tls is not None,
            client_certificate=self.tls is not None and self.tls.certificate_chain is not None,
        )

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        """Call metadata sent with every RPC (the bearer token, when one is set)."""
        if self.token is None:
            return ()
        return (("authorization", f"Bearer {self.token}"),)

    def options(self) -> list[tuple[str, str | int]]:
        """Channel arguments."""
        options: list[tuple[str, str | int]] = [
            ("grpc.primary_user_agent", _USER_AGENT),
            ("grpc.max_receive_message_length", self.max_message_bytes),
            ("grpc.max_send_message_length", self.max_message_bytes),
        ]
        if self.tls is not None and self.tls.server_name_override:
            options.append(("grpc.ssl_target_name_override", self.tls.server_name_override))
        options.extend(self.channel_options)
        return options

    def sync_channel(self, interceptors: Sequence[SyncInterceptor] = ()) -> grpc.Channel:
        """A new blocking channel; every call on it goes through ``interceptors`` in order."""
        chain = _interceptor_chain(
            interceptors,
            _SYNC_INTERCEPTORS,
            "Client takes grpc client interceptors (grpc.aio ones go to AsyncClient)",
        )
        if self.tls is None:
            channel = grpc.insecure_channel(self.address, options=self.options())
        else:
            channel = grpc.secure_channel(
                self.address, self.tls.credentials(), options=self.options()
            )
        return grpc.intercept_channel(channel, *chain) if chain else channel

    def aio_channel(self, interceptors: Sequence[AsyncInterceptor] = ()) -> grpc.aio.Channel:
        """A new asyncio channel (must be created inside the running event loop); every call
        on it goes through ``interceptors`` in order."""
        chain = _interceptor_chain(
            interceptors,
            (grpc.aio.ClientInterceptor,),
            "AsyncClient takes grpc.aio client interceptors (blocking grpc ones go to Client)",
        )
        per_kind = _aio_per_kind(chain) or None
        if self.tls is None:
            return grpc.aio.insecure_channel(
                self.address, options=self.options(), interceptors=per_kind
            )
        return grpc.aio.secure_channel(
            self.address, self.tls.credentials(), options=self.options(), interceptors=per_kind
        )


def retry_delay(policy: RetryPolicy, attempt: int, error: Exception) -> float | None:
    """Seconds to wait before retrying after failed attempt ``attempt``, or None to give up.

    Only retryable errors (UNAVAILABLE, but not a failed TLS set-up) are retried, and only
    while the policy has attempts left.
    """
    from ._errors import RpcFailedError  # local: _errors must not depend on this module

    if not isinstance(error, RpcFailedError) or not error.retryable:
        return None
    if attempt >= policy.max_attempts:
        return None
    return policy.backoff(attempt)
