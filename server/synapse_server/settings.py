"""Server settings: one pydantic-settings class, read from flags and ``SYNAPSE_*`` variables.

The settings object is built once (by ``synapse serve`` or a test) and passed to the
composition root; no component reads the environment on its own.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import secrets
import socket
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

__all__ = ["ServerSettings", "SettingsError", "parse_tokens"]

logger = logging.getLogger(__name__)

_SECRET_FILE = "server.secret"
_SERVER_ID_FILE = "server.id"
#: Each local job worker's memory limit unless configured: the example torch batch jobs use
#: 0.3-0.43 GiB of data memory (see synapse_server.core._memory for what is counted).
DEFAULT_WORKER_MEMORY_LIMIT_MB = 4096


class SettingsError(ValueError):
    """Settings that are unsafe or cannot work; the message says which and what to do."""


def parse_tokens(value: str | dict[str, str] | None) -> dict[str, str]:
    """Read a token → tenant table from ``"tok=tenant,tok2=tenant2"`` or a file of such lines.

    A file holds one ``token=tenant`` per line (``#`` starts a comment). An entry without a
    tenant, an empty token or tenant, or a token listed twice is a configuration error.
    """
    if value is None:
        return {}
    if isinstance(value, dict):
        return {str(k): str(v) for k, v in value.items()}
    text = value.strip()
    if not text:
        return {}
    entries: list[str]
    path = Path(text)
    if "=" not in text or (path.exists() and path.is_file()):
        if not path.is_file():
            raise ValueError(f"tokens: {text!r} is neither 'token=tenant,...' nor a readable file")
        entries = [
            line.split("#", 1)[0].strip() for line in path.read_text(encoding="utf-8").splitlines()
        ]
    else:
        entries = [part.strip() for part in text.split(",")]
    table: dict[str, str] = {}
    for index, entry in enumerate(e for e in entries if e):
        token, sep, tenant = entry.partition("=")
        token, tenant = token.strip(), tenant.strip()
        if not sep or not token or not tenant:
            # Never echo the entry: it holds a secret.
            raise ValueError(f"tokens: entry #{index + 1} is not of the form token=tenant")
        if token in table:
            raise ValueError(f"tokens: entry #{index + 1} repeats an earlier token")
        table[token] = tenant
    return table


class ServerSettings(BaseSettings):
    """Everything ``synapse serve`` can be told; env prefix ``SYNAPSE_``.

    Lists and tables accept the comma forms used on the command line:
    ``SYNAPSE_PLUGIN_DIRS=a,b`` and ``SYNAPSE_TOKENS=tok=tenant,tok2=tenant2`` (or a path to a
    file with one ``token=tenant`` per line).
    """

    # NaN and infinity are no grace period or limit: refused like any other bad number.
    model_config = SettingsConfigDict(env_prefix="SYNAPSE_", extra="ignore", allow_inf_nan=False)

    listen_address: str = Field(
        default="127.0.0.1:50051", description="host:port to listen on (port 0: any free port)"
    )
    data_dir: Path = Field(
        default=Path(".synapse"),
        description="directory of the database, model artifacts, plugin snapshots, worker logs "
        "and the generated server secret",
    )
    # May carry a password, so never shown.
    database_url: str | None = Field(
        default=None,
        repr=False,
        description="where jobs, events, models and deployments are stored: "
        "sqlite:///<path> or postgresql://user:password@host:port/db (several servers share "
        "it); unset: sqlite:///<data-dir>/synapse.db",
    )
    # Servers sharing a PostgreSQL database point this at one shared directory (e.g. NFS).
    artifacts_dir: Path | None = Field(
        default=None,
        description="where model artifacts live (<dir>/models/...); servers sharing a "
        "PostgreSQL database share this directory; unset: the data directory",
    )
    # The heartbeat renews the lease every third of it.
    job_lease_seconds: float = Field(
        default=15.0,
        gt=0,
        description="servers sharing a database: seconds without a heartbeat after which "
        "another server fails a server's running jobs and runs its pending ones",
    )
    # Notifications are usually much faster; this bounds the delay should one be lost.
    remote_poll_seconds: float = Field(
        default=1.0,
        gt=0,
        description="servers sharing a database: a StreamProgress subscriber following a job "
        "another server runs looks at the database at least this often",
    )
    plugin_dirs: Annotated[list[Path], NoDecode] = Field(
        default_factory=list,
        description="a plugin directory, or a directory of plugin directories (repeatable; "
        "the variable takes a comma-separated list)",
    )
    tokens: Annotated[dict[str, str], NoDecode] = Field(
        default_factory=dict,
        repr=False,
        description="bearer tokens and their tenants: 'token=tenant,token2=tenant2' or a file "
        "with one token=tenant per line; unset: no auth (loopback only)",
    )
    tls_cert_file: Path | None = Field(default=None, description="PEM server certificate (TLS)")
    tls_key_file: Path | None = Field(
        default=None, description="PEM private key of the server certificate"
    )
    tls_client_ca_file: Path | None = Field(
        default=None, description="PEM CA that client certificates must be issued by (mTLS)"
    )
    tls_allow_invalid_dates: bool = Field(
        default=False,
        description="serve a certificate that has expired or is not yet valid (refused by default)",
    )
    allow_public_bind: bool = Field(
        default=False, description="allow a non-loopback listen address without tokens"
    )
    cancel_grace_seconds: float = Field(
        default=5.0,
        ge=0,
        description="seconds a cancelled job's worker gets to stop before it is killed",
    )
    shutdown_grace_seconds: float = Field(
        default=10.0,
        ge=0,
        description="seconds running jobs get to finish when the server stops",
    )
    # See core/_memory.py for what is counted.
    worker_memory_limit_mb: int | None = Field(
        default=DEFAULT_WORKER_MEMORY_LIMIT_MB,
        ge=0,
        description="memory limit of each local job worker in MiB (0: none)",
    )
    max_concurrent_jobs: int = Field(
        default=4, gt=0, description="jobs that run at the same time; the others wait PENDING"
    )
    ray_address: str | None = Field(
        default=None,
        description="Ray cluster to use (host:port); unset: a local Ray started on first need",
    )
    server_secret: SecretStr | None = Field(
        default=None,
        description="signs multiplexed model ids; unset: generated once in the data directory",
    )
    worker_python: str | None = Field(
        default=None,
        description="Python interpreter of local job workers; unset: the server's own",
    )
    warm_workers: int = Field(
        default=1,
        ge=0,
        description="1 or more: a fork server per recently used plugin forks each job's "
        "worker (milliseconds); 0: a fresh worker process per job",
    )
    preload_plugins: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="plugin code whose fork server starts with the server, before its first "
        "job (repeatable; the variable takes a comma-separated list)",
    )
    keepalive_seconds: float = Field(
        default=15.0,
        gt=0,
        description="seconds between keepalive messages on a quiet StreamProgress",
    )
    # "direct" skips Serve's router and request wrapping for unary calls (about half an
    # Infer call's latency on a small model); "grpc" costs about half the CPU per call of
    # "ray"; "ray" is for clusters whose nodes cannot open TCP connections to each other's
    # replicas.
    serve_transport: Literal["direct", "grpc", "ray"] = Field(
        default="direct",
        description="how Infer requests reach Serve replicas: direct (each replica's own "
        "endpoint for unary calls, Serve's handle for streams, autoscaling deployments and "
        "overflow), grpc (Serve's handle over its channel to each replica) or ray (Serve's "
        "handle over actor calls)",
    )
    # Serve replicas are allowed this much (plus framing) on their channel to the server. Every
    # other RPC has a smaller fixed limit (docs/contract.md, "Message size"). At least 8 MiB:
    # model archive and job result chunks are up to 4 MiB.
    max_message_bytes: int = Field(
        default=64 << 20,
        ge=8 << 20,
        le=1 << 30,
        description="largest message of the RPCs that carry payloads (RunAction, Infer and "
        "their answers, worker streams, job views with params)",
    )
    metrics_listen: str | None = Field(
        default=None,
        description="host:port to serve Prometheus metrics at /metrics on; unset: no metrics",
    )
    log_format: Literal["text", "json"] = Field(
        default="text", description="log lines as text or as one JSON object per line"
    )
    event_loop: Literal["auto", "asyncio", "uvloop"] = Field(
        default="auto",
        description="the server's event loop: uvloop (the gRPC and Serve handle work of each "
        "call costs about 15% less CPU), asyncio's own, or auto: uvloop when installed",
    )
    access_log: Literal["off", "debug", "info"] = Field(
        default="debug",
        description="level of the access log line per RPC (debug: written with --log-level "
        "DEBUG only)",
    )
    health_check_seconds: float = Field(
        default=5.0,
        gt=0,
        description="how often the health of InferenceService (Ray reachable) is checked",
    )

    @field_validator("plugin_dirs", mode="before")
    @classmethod
    def _split_dirs(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [Path(p.strip()) for p in value.split(",") if p.strip()]
        return value

    @field_validator("preload_plugins", mode="before")
    @classmethod
    def _split_plugins(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [p.strip() for p in value.split(",") if p.strip()]
        return value

    @field_validator("tokens", mode="before")
    @classmethod
    def _parse_tokens(cls, value: Any) -> Any:
        if value is None or isinstance(value, str | dict):
            return parse_tokens(value)
        return value

    @field_validator("listen_address", "metrics_listen")
    @classmethod
    def _check_address(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None or (info.field_name == "metrics_listen" and not value.strip()):
            return None  # an empty SYNAPSE_METRICS_LISTEN: metrics off
        host, sep, port = value.rpartition(":")
        if (
            not sep
            or not host
            or not (port.isascii() and port.isdigit())
            or not 0 <= int(port) <= 65535
        ):
            raise ValueError(f"{info.field_name} must be host:port, got {value[:80]!r}")
        return value

    @property
    def artifacts_root(self) -> Path:
        """Where artifacts live: ``artifacts_dir``, else the data directory."""
        return self.artifacts_dir if self.artifacts_dir is not None else self.data_dir

    def resolve_server_id(self) -> str:
        """This server's id among the servers sharing a database: made once and kept in the
        data directory, so a restart recognises its own jobs (the data directory's lock
        keeps two live servers from having one id)."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        path = self.data_dir / _SERVER_ID_FILE
        if not path.exists():
            host = "".join(c for c in socket.gethostname() if c.isalnum() or c in "-.")[:40]
            server_id = f"{host or 'server'}-{secrets.token_hex(4)}"
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            with os.fdopen(fd, "w") as handle:
                handle.write(server_id)
            logger.info("this server's id is %s (kept in %s)", server_id, path)
        return path.read_text(encoding="utf-8").strip()

    def resolved_database_url(self) -> str:
        """The stores' database URL: ``database_url``, else ``sqlite:///<data_dir>/synapse.db``."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self.data_dir / 'synapse.db'}"

    @property
    def tls_enabled(self) -> bool:
        """True when a certificate and key are configured."""
        return self.tls_cert_file is not None

    @property
    def listen_host(self) -> str:
        """The host part of the listen address, brackets removed."""
        return self.listen_address.rpartition(":")[0].strip("[]")

    def is_loopback_bind(self) -> bool:
        """True when the listen address only accepts connections from this machine."""
        host = self.listen_host
        if host == "localhost":
            return True
        try:
            return ipaddress.ip_address(host).is_loopback
        except ValueError:
            return False

    def check(self) -> None:
        """Reject combinations that would be unsafe or cannot work (:class:`SettingsError`).

        The database URL must be one the stores know (see ``synapse_server.stores``).

        The TLS files are read and checked (see ``_tls.check_server_tls``): a mismatched
        pair, a file that is not PEM or a certificate outside its validity dates is named
        here rather than failing the bind.
        """
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise SettingsError("TLS needs both tls_cert_file and tls_key_file")
        if self.tls_client_ca_file is not None and self.tls_cert_file is None:
            raise SettingsError(
                "tls_client_ca_file (mutual TLS) needs tls_cert_file and tls_key_file"
            )
        for path in (self.tls_cert_file, self.tls_key_file, self.tls_client_ca_file):
            if path is not None and not path.is_file():
                raise SettingsError(f"TLS file not found: {path}")
        if self.tls_cert_file is not None and self.tls_key_file is not None:
            from synapse_server._tls import TLSFileError, check_server_tls

            try:
                report = check_server_tls(
                    self.tls_cert_file,
                    self.tls_key_file,
                    self.tls_client_ca_file,
                    allow_invalid_dates=self.tls_allow_invalid_dates,
                )
            except TLSFileError as exc:
                raise SettingsError(str(exc)) from None
            for warning in report.warnings:
                logger.warning("%s", warning)
        from synapse_server.stores import sqlite_database_path

        # An unknown scheme or a malformed URL is named here, before anything is opened.
        sqlite_database_path(self.resolved_database_url())
        if not self.tokens and not self.is_loopback_bind() and not self.allow_public_bind:
            raise SettingsError(
                f"refusing to listen on {self.listen_address} without auth tokens; configure "
                "tokens or set allow_public_bind to accept unauthenticated remote callers"
            )

    def resolve_secret(self) -> bytes:
        """The server secret: the configured one, or one generated once in the data dir (0600)."""
        if self.server_secret is not None:
            return self.server_secret.get_secret_value().encode()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        path = self.data_dir / _SECRET_FILE
        if not path.exists():
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write(secrets.token_hex(32))
            logger.info("generated a server secret in %s", path)
        return path.read_text(encoding="utf-8").strip().encode()
