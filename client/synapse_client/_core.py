"""The two I/O drivers: channel ownership, stub cache, and performing ``_calls`` (sync, asyncio).

What to send and how to read the answer is decided in ``_calls`` and the other sans-IO
modules; a driver only runs a call, blocking (:class:`ClientCore`) or awaited
(:class:`AsyncClientCore`), with the client's deadline, auth metadata, retries and error
mapping. The public clients are built on these cores.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import (
    AsyncIterable,
    AsyncIterator,
    Callable,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from contextlib import asynccontextmanager, contextmanager
from types import TracebackType
from typing import Any, Generic, Self, TypeVar

import grpc

from ._calls import PagedCall, StreamCall, UnaryCall, UploadCall
from ._config import (
    DEFAULT_MAX_MESSAGE_BYTES,
    AsyncInterceptor,
    ConnectionConfig,
    RetryPolicy,
    SyncInterceptor,
    TLSConfig,
    connection_from_env,
    retry_delay,
)
from ._errors import RpcFailedError, map_rpc_errors

logger = logging.getLogger(__name__)

__all__ = ["AsyncClientCore", "ClientCore"]

S = TypeVar("S")
T = TypeVar("T")
I = TypeVar("I")  # noqa: E741 (the interceptor type of one client flavour)


class _CoreBase(Generic[I]):
    """Connection settings, the channel and its stubs: what both drivers hold.

    ``interceptors`` are grpc client interceptors that every call of the client goes
    through, in order (blocking ones for :class:`ClientCore`, grpc.aio ones for
    :class:`AsyncClientCore`): for tracing, extra metadata, logging.
    """

    def __init__(
        self,
        address: str,
        *,
        token: str | None = None,
        tls: bool | TLSConfig = False,
        timeout: float | None = 30.0,
        retry: RetryPolicy | None = None,
        channel_options: tuple[tuple[str, str | int], ...] = (),
        interceptors: Sequence[I] = (),
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
        self._channel = self._open_channel(interceptors)

    @classmethod
    def from_env(
        cls,
        environ: Mapping[str, str] | None = None,
        *,
        timeout: float | None = 30.0,
        retry: RetryPolicy | None = None,
        channel_options: tuple[tuple[str, str | int], ...] = (),
        interceptors: Sequence[I] = (),
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    ) -> Self:
        """A client configured by the ``SYNAPSE_*`` variables of ``environ`` (``os.environ``).

        ``SYNAPSE_SERVER`` (``host:port``; the port defaults to 50051), ``SYNAPSE_TOKEN``,
        and for TLS ``SYNAPSE_TLS=1`` (system roots), ``SYNAPSE_TLS_CA``,
        ``SYNAPSE_TLS_CERT`` + ``SYNAPSE_TLS_KEY`` (mTLS) and ``SYNAPSE_TLS_SERVER_NAME``:
        the same variables the ``synapse`` command reads. The keyword arguments are the
        constructor's. Raises :class:`ClientConfigError` when ``SYNAPSE_SERVER`` is unset or
        a variable is malformed (naming it).
        """
        address, token, tls = connection_from_env(os.environ if environ is None else environ)
        return cls(
            address,
            token=token,
            tls=tls,
            timeout=timeout,
            retry=retry,
            channel_options=channel_options,
            interceptors=interceptors,
            max_message_bytes=max_message_bytes,
        )

    def _open_channel(self, interceptors: Sequence[I]) -> Any:
        """The channel this flavour uses (blocking or asyncio), through ``interceptors``."""
        raise NotImplementedError

    def _stub(self, stub_type: Callable[[Any], S]) -> S:
        """The cached stub of ``stub_type`` on this client's channel."""
        stub = self._stubs.get(stub_type)
        if stub is None:
            stub = self._stubs[stub_type] = stub_type(self._channel)
        return stub  # type: ignore[no-any-return]

    def _rpc(self, call: UnaryCall[Any] | PagedCall[Any] | StreamCall | UploadCall[Any]) -> Any:
        """The stub method (multi-callable) that performs ``call``."""
        return getattr(self._stub(call.stub), call.method)

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


class ClientCore(_CoreBase[SyncInterceptor]):
    """Owns one blocking channel and performs calls on it."""

    _channel: grpc.Channel

    def _open_channel(self, interceptors: Sequence[SyncInterceptor]) -> grpc.Channel:
        return self._config.sync_channel(interceptors)

    def _call(self, rpc: Callable[..., Any], request: Any, timeout: float | None = None) -> Any:
        """Calls a unary RPC; retries UNAVAILABLE (every caller passes idempotent requests)."""
        attempt = 0
        while True:
            attempt += 1
            try:
                with map_rpc_errors(self._config.security):
                    return rpc(
                        request, timeout=self._timeout(timeout), metadata=self._config.metadata
                    )
            except RpcFailedError as error:
                delay = retry_delay(self._config.retry, attempt, error)
                if delay is None:
                    raise
                logger.info("RPC unavailable (attempt %d), retrying in %.2fs", attempt, delay)
                time.sleep(delay)

    def _unary(self, call: UnaryCall[T]) -> T:
        """Performs a unary call and returns its parsed answer."""
        return call.parse(self._call(self._rpc(call), call.request, call.timeout))

    def _paged(self, call: PagedCall[T]) -> Iterator[T]:
        """Every item of a listing, fetching each page when the iteration reaches it."""
        rpc = self._rpc(call)
        request = call.request
        while request is not None:
            response = self._call(rpc, request)
            yield from call.items(response)
            request = call.next_request(request, response)

    @contextmanager
    def _stream(self, call: StreamCall) -> Iterator[Iterator[Any]]:
        """Opens a server stream; the call is cancelled when the block ends, however it ends."""
        responses = self._rpc(call)(
            call.request, timeout=call.timeout, metadata=self._config.metadata
        )
        try:
            with map_rpc_errors(self._config.security):
                yield responses
        finally:
            responses.cancel()

    def _upload(self, call: UploadCall[T], requests: Iterable[Any]) -> T:
        """Performs a client-streaming call (never retried: the request stream is consumed)."""
        with map_rpc_errors(self._config.security):
            response = self._rpc(call)(
                iter(requests), timeout=call.timeout, metadata=self._config.metadata
            )
        return call.parse(response)

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


class AsyncClientCore(_CoreBase[AsyncInterceptor]):
    """The asyncio twin of :class:`ClientCore`; construct it inside the running event loop."""

    _channel: grpc.aio.Channel

    def _open_channel(self, interceptors: Sequence[AsyncInterceptor]) -> grpc.aio.Channel:
        return self._config.aio_channel(interceptors)

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
                with map_rpc_errors(self._config.security):
                    return await rpc(
                        request, timeout=self._timeout(timeout), metadata=self._config.metadata
                    )
            except RpcFailedError as error:
                delay = retry_delay(self._config.retry, attempt, error)
                if delay is None:
                    raise
                logger.info("RPC unavailable (attempt %d), retrying in %.2fs", attempt, delay)
                await asyncio.sleep(delay)

    async def _unary(self, call: UnaryCall[T]) -> T:
        """Performs a unary call and returns its parsed answer."""
        return call.parse(await self._call(self._rpc(call), call.request, call.timeout))

    async def _paged(self, call: PagedCall[T]) -> AsyncIterator[T]:
        """Every item of a listing, fetching each page when the iteration reaches it."""
        rpc = self._rpc(call)
        request = call.request
        while request is not None:
            response = await self._call(rpc, request)
            for item in call.items(response):
                yield item
            request = call.next_request(request, response)

    @asynccontextmanager
    async def _stream(self, call: StreamCall) -> AsyncIterator[AsyncIterator[Any]]:
        """Opens a server stream; the call is cancelled when the block ends, however it ends."""
        responses = self._rpc(call)(
            call.request, timeout=call.timeout, metadata=self._config.metadata
        )
        try:
            with map_rpc_errors(self._config.security):
                yield responses
        finally:
            responses.cancel()

    async def _upload(self, call: UploadCall[T], requests: AsyncIterable[Any]) -> T:
        """Performs a client-streaming call (never retried: the request stream is consumed)."""
        with map_rpc_errors(self._config.security):
            response = await self._rpc(call)(
                requests, timeout=call.timeout, metadata=self._config.metadata
            )
        return call.parse(response)

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
