"""Channel ownership, stub cache and the retrying unary call, for both client flavours.

Service methods live in classes built on these cores: :class:`Client` (actions) and, in their
own modules, further method groups (models, inference) that use ``_stub`` and ``_call`` the
same way and are added to the client's bases.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any, Self, TypeVar

import grpc

from ._config import (
    DEFAULT_MAX_MESSAGE_BYTES,
    ConnectionConfig,
    RetryPolicy,
    TLSConfig,
    retry_delay,
)
from ._errors import RpcFailedError, map_rpc_errors

logger = logging.getLogger(__name__)

__all__ = ["AsyncClientCore", "ClientCore"]

S = TypeVar("S")


class _CoreBase:
    def __init__(
        self,
        address: str,
        *,
        token: str | None = None,
        tls: bool | TLSConfig = False,
        timeout: float | None = 30.0,
        retry: RetryPolicy | None = None,
        channel_options: tuple[tuple[str, str | int], ...] = (),
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    ) -> None:
        self._config = ConnectionConfig.build(
            address,
            token=token,
            tls=tls,
            timeout=timeout,
            retry=retry,
            channel_options=channel_options,
            max_message_bytes=max_message_bytes,
        )
        self._stubs: dict[Any, Any] = {}
        self._channel = self._open_channel()

    def _open_channel(self) -> Any:
        """The channel this flavour uses (blocking or asyncio)."""
        raise NotImplementedError

    def _stub(self, stub_type: Callable[[Any], S]) -> S:
        """The cached stub of ``stub_type`` on this client's channel."""
        stub = self._stubs.get(stub_type)
        if stub is None:
            stub = self._stubs[stub_type] = stub_type(self._channel)
        return stub  # type: ignore[no-any-return]

    @property
    def address(self) -> str:
        """The server address this client talks to."""
        return self._config.address

    def _timeout(self, timeout: float | None) -> float | None:
        return timeout if timeout is not None else self._config.timeout

    def __repr__(self) -> str:
        # Never the token: reprs end up in logs.
        return (
            f"{type(self).__name__}({self._config.address!r}, tls={self._config.tls is not None})"
        )


class ClientCore(_CoreBase):
    """Owns one blocking channel; ``_call`` runs a unary RPC with deadline, auth and retries."""

    _channel: grpc.Channel

    def _open_channel(self) -> grpc.Channel:
        return self._config.sync_channel()

    def _call(self, rpc: Callable[..., Any], request: Any, timeout: float | None = None) -> Any:
        """Calls a unary RPC; retries UNAVAILABLE (every caller passes idempotent requests)."""
        attempt = 0
        while True:
            attempt += 1
            try:
                with map_rpc_errors():
                    return rpc(
                        request, timeout=self._timeout(timeout), metadata=self._config.metadata
                    )
            except RpcFailedError as error:
                delay = retry_delay(self._config.retry, attempt, error)
                if delay is None:
                    raise
                logger.info("RPC unavailable (attempt %d), retrying in %.2fs", attempt, delay)
                time.sleep(delay)

    def close(self) -> None:
        """Closes the channel; calls in flight are cancelled."""
        self._channel.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class AsyncClientCore(_CoreBase):
    """The asyncio twin of :class:`ClientCore`; construct it inside the running event loop."""

    _channel: grpc.aio.Channel

    def _open_channel(self) -> grpc.aio.Channel:
        return self._config.aio_channel()

    async def _call(
        self,
        rpc: Callable[..., Any],
        request: Any,
        timeout: float | None = None,  # noqa: ASYNC109 (an RPC deadline, as in the sync API)
    ) -> Any:
        """Calls a unary RPC; retries UNAVAILABLE (every caller passes idempotent requests)."""
        attempt = 0
        while True:
            attempt += 1
            try:
                with map_rpc_errors():
                    return await rpc(
                        request, timeout=self._timeout(timeout), metadata=self._config.metadata
                    )
            except RpcFailedError as error:
                delay = retry_delay(self._config.retry, attempt, error)
                if delay is None:
                    raise
                logger.info("RPC unavailable (attempt %d), retrying in %.2fs", attempt, delay)
                await asyncio.sleep(delay)

    async def close(self) -> None:
        """Closes the channel; calls in flight are cancelled."""
        await self._channel.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
