"""The gRPC server assembly: the service registry, the interceptor chain, the handler re-wrap.

Unit tests drive re-wrapped handlers directly with a recording servicer context; the others
run a real grpc.aio server: a test-only assembly with one toy servicer of a generated service,
and the platform's own server (session fixture).
"""

from __future__ import annotations

import asyncio
import contextlib
import pkgutil
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
import synapse.plugin.v1 as generated
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from synapse.plugin.v1 import model_pb2, model_service_pb2, model_service_pb2_grpc
from synapse_server.core import PermissionDeniedError, UnauthenticatedError
from synapse_server.core._credentials import WorkerCredentialIssuer
from synapse_server.core._limits import MAX_NAME_CHARS
from synapse_server.grpc._auth import AuthInterceptor, current_principal
from synapse_server.grpc._interceptors import CallInterceptor, InterceptorChain, Metadata
from synapse_server.grpc._requests import SMALL_REQUEST_BYTES, RequestGuard
from synapse_server.grpc._server import (
    HEALTH_SERVICE,
    GrpcServer,
    ServiceRegistration,
    service_name,
)

from tests.conftest import RunningServer

pytestmark = pytest.mark.timeout(60)

MODEL_SERVICE = service_name(model_service_pb2, "ModelService")
REFLECTION_SERVICE = "grpc.reflection.v1alpha.ServerReflection"
SECRET = b"assembly-tests-secret-0123456789"


# A recording interceptor and a servicer context ----------------------------------------------


class _Context:
    """The parts of a grpc.aio servicer context the re-wrapped handlers use."""

    def __init__(self) -> None:
        self._code: grpc.StatusCode | None = None
        self.details = ""

    def set_code(self, code: grpc.StatusCode) -> None:
        self._code = code

    def code(self) -> grpc.StatusCode | None:
        return self._code

    def set_details(self, details: str) -> None:
        self.details = details

    def set_trailing_metadata(self, metadata: Any) -> None:
        pass


class _RecordingInterceptor(CallInterceptor[str]):
    """Logs every hook; refuses calls with ``refuse`` raised from start_call."""

    def __init__(self, name: str, log: list[str], refuse: Exception | None = None) -> None:
        self.name, self.log, self.refuse = name, log, refuse

    def start_call(self, method: str, metadata: Metadata) -> str:
        self.log.append(f"{self.name}.start({method.rsplit('/', 1)[-1]})")
        if self.refuse is not None:
            raise self.refuse
        return self.name

    def check(self, call: str, request: Any) -> None:
        self.log.append(f"{call}.check({type(request).__name__})")

    def enter(self, call: str) -> None:
        self.log.append(f"{call}.enter")

    def exit(self, call: str, context: Any, error: BaseException | None) -> None:
        code = context.code()
        self.log.append(f"{call}.exit({code.name if code else None}, {type(error).__name__})")


@dataclass
class _Details:
    method: str
    invocation_metadata: Metadata = ()


@dataclass
class _Toy:
    """One handler of each shape over GetModelRequest → Model; logs when it runs."""

    log: list[str]
    fail: Exception | None = None
    seen: list[int] = field(default_factory=list)

    async def unary_unary(self, request: Any, context: Any) -> Any:
        self.log.append("handler")
        if self.fail is not None:
            raise self.fail
        return model_pb2.Model(id=request.model_id)

    async def unary_stream(self, request: Any, context: Any) -> AsyncIterator[Any]:
        self.log.append("handler")
        for offset in range(2):
            yield model_pb2.Model(id=request.model_id + offset)
        if self.fail is not None:
            raise self.fail

    async def stream_unary(self, requests: Any, context: Any) -> Any:
        self.log.append("handler")
        async for request in requests:
            self.seen.append(request.model_id)
        return model_pb2.Model(id=sum(self.seen))

    async def stream_stream(self, requests: Any, context: Any) -> AsyncIterator[Any]:
        self.log.append("handler")
        async for request in requests:
            yield model_pb2.Model(id=request.model_id)

    def handler(self, shape: str) -> grpc.RpcMethodHandler:
        make = getattr(grpc, f"{shape}_rpc_method_handler")
        return make(  # type: ignore[no-any-return]
            getattr(self, shape),
            request_deserializer=model_service_pb2.GetModelRequest.FromString,
            response_serializer=model_pb2.Model.SerializeToString,
        )


SHAPES = {
    "unary_unary": (False, False),
    "unary_stream": (False, True),
    "stream_unary": (True, False),
    "stream_stream": (True, True),
}


async def _rewrap(chain: InterceptorChain, handler: grpc.RpcMethodHandler) -> Any:
    async def continuation(details: Any) -> grpc.RpcMethodHandler:
        return handler

    return await chain.intercept_service(continuation, _Details("/test.Toy/Echo"))  # type: ignore[arg-type]


async def _requests(*messages: Any) -> AsyncIterator[Any]:
    for message in messages:
        yield message


async def _run(wrapped: Any, shape: str, requests: list[Any], context: _Context) -> list[Any]:
    """Run ``wrapped`` as grpc.aio would; the responses (one for unary responses, or None)."""
    behavior = getattr(wrapped, shape)
    argument = requests[0] if shape.startswith("unary_") else _requests(*requests)
    if shape.endswith("_stream"):
        return [item async for item in behavior(argument, context)]
    return [await behavior(argument, context)]


def _decode(wrapped: Any, *messages: Any) -> list[Any]:
    return [wrapped.request_deserializer(m.SerializeToString()) for m in messages]


# The re-wrap helper ----------------------------------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES)
async def test_each_handler_shape_is_kept_and_two_interceptors_nest(shape: str) -> None:
    log: list[str] = []
    toy = _Toy(log)
    handler = toy.handler(shape)
    chain = InterceptorChain([_RecordingInterceptor("a", log), _RecordingInterceptor("b", log)])
    wrapped = await _rewrap(chain, handler)

    assert (wrapped.request_streaming, wrapped.response_streaming) == SHAPES[shape]
    assert getattr(wrapped, shape) is not None
    assert wrapped.response_serializer is handler.response_serializer
    # The deserializer is the guard's around the handler's own.
    assert wrapped.request_deserializer is not handler.request_deserializer
    requests = _decode(wrapped, *(model_service_pb2.GetModelRequest(model_id=i) for i in (3, 4)))
    assert [r.model_id for r in requests] == [3, 4]

    context = _Context()
    responses = await _run(wrapped, shape, requests, context)

    expected = {
        "unary_unary": [3],
        "unary_stream": [3, 4],
        "stream_unary": [7],
        "stream_stream": [3, 4],
    }[shape]
    assert [r.id for r in responses] == expected
    # Unary requests are checked as decoded; streamed ones pass the guard as they are read.
    checked = "GetModelRequest" if shape.startswith("unary_") else "NoneType"
    assert log == [
        "a.start(Echo)",
        "b.start(Echo)",
        "a.enter",
        "b.enter",
        f"a.check({checked})",
        f"b.check({checked})",
        "handler",
        "b.exit(None, NoneType)",
        "a.exit(None, NoneType)",
    ]


@pytest.mark.parametrize("shape", SHAPES)
async def test_a_refusal_skips_later_interceptors_and_the_handler(shape: str) -> None:
    log: list[str] = []
    chain = InterceptorChain(
        [
            _RecordingInterceptor("a", log),
            _RecordingInterceptor("b", log, refuse=UnauthenticatedError("no token")),
            _RecordingInterceptor("c", log),
        ]
    )
    wrapped = await _rewrap(chain, _Toy(log).handler(shape))
    context = _Context()
    # Even undecodable bytes: the refusal of the caller is answered first.
    request = wrapped.request_deserializer(b"\xff\xff\xff")
    responses = await _run(wrapped, shape, [request], context)

    assert context.code() is grpc.StatusCode.UNAUTHENTICATED
    assert context.details == "no token"
    assert responses in ([None], [])
    assert log == [
        "a.start(Echo)",
        "b.start(Echo)",
        "a.enter",
        "a.exit(UNAUTHENTICATED, NoneType)",
    ]


@pytest.mark.parametrize("shape", ["unary_unary", "unary_stream"])
async def test_the_guard_answers_before_the_checks_and_a_check_refuses(shape: str) -> None:
    log: list[str] = []
    chain = InterceptorChain([_RecordingInterceptor("a", log)])
    wrapped = await _rewrap(chain, _Toy(log).handler(shape))

    context = _Context()
    await _run(wrapped, shape, [wrapped.request_deserializer(b"\xff\xff\xff")], context)
    assert context.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert context.details == "the request bytes are not a valid Echo request"
    assert log[-2:] == ["a.enter", "a.exit(INVALID_ARGUMENT, NoneType)"]

    log.clear()
    context = _Context()
    oversized = wrapped.request_deserializer(b"\x00" * (SMALL_REQUEST_BYTES + 1))
    await _run(wrapped, shape, [oversized], context)
    assert context.code() is grpc.StatusCode.RESOURCE_EXHAUSTED

    class Refusing(_RecordingInterceptor):
        def check(self, call: str, request: Any) -> None:
            super().check(call, request)
            raise PermissionDeniedError("not this one")

    log.clear()
    chain = InterceptorChain([Refusing("r", log), _RecordingInterceptor("b", log)])
    wrapped = await _rewrap(chain, _Toy(log).handler(shape))
    context = _Context()
    requests = _decode(wrapped, model_service_pb2.GetModelRequest(model_id=1))
    await _run(wrapped, shape, requests, context)
    assert context.code() is grpc.StatusCode.PERMISSION_DENIED
    assert "handler" not in log and "b.check(GetModelRequest)" not in log
    assert log[-2:] == [
        "b.exit(PERMISSION_DENIED, NoneType)",
        "r.exit(PERMISSION_DENIED, NoneType)",
    ]


@pytest.mark.parametrize("shape", ["stream_unary", "stream_stream"])
async def test_a_refused_streamed_message_is_answered_by_the_wrapper(shape: str) -> None:
    log: list[str] = []
    chain = InterceptorChain([_RecordingInterceptor("a", log)])
    wrapped = await _rewrap(chain, _Toy(log).handler(shape))
    good = wrapped.request_deserializer(
        model_service_pb2.GetModelRequest(model_id=1).SerializeToString()
    )
    bad = wrapped.request_deserializer(b"\xff\xff\xff")
    context = _Context()
    # The toy handlers let the guard's error escape, as reflection's handler does.
    await _run(wrapped, shape, [good, bad], context)
    assert context.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert log[-1] == "a.exit(INVALID_ARGUMENT, NoneType)"


@pytest.mark.parametrize("shape", ["unary_unary", "unary_stream"])
async def test_exit_sees_an_error_escaping_the_handler(shape: str) -> None:
    log: list[str] = []
    chain = InterceptorChain([_RecordingInterceptor("a", log), _RecordingInterceptor("b", log)])
    wrapped = await _rewrap(chain, _Toy(log, fail=RuntimeError("boom")).handler(shape))
    requests = _decode(wrapped, model_service_pb2.GetModelRequest(model_id=1))
    with pytest.raises(RuntimeError, match="boom"):
        await _run(wrapped, shape, requests, _Context())
    assert log[-2:] == ["b.exit(None, RuntimeError)", "a.exit(None, RuntimeError)"]


async def test_exit_sees_a_cancelled_stream() -> None:
    log: list[str] = []
    release = asyncio.Event()

    async def endless(request: Any, context: Any) -> AsyncIterator[Any]:
        yield model_pb2.Model(id=1)
        await release.wait()
        yield model_pb2.Model(id=2)

    handler = grpc.unary_stream_rpc_method_handler(
        endless, model_service_pb2.GetModelRequest.FromString, model_pb2.Model.SerializeToString
    )
    wrapped = await _rewrap(InterceptorChain([_RecordingInterceptor("a", log)]), handler)
    request = _decode(wrapped, model_service_pb2.GetModelRequest(model_id=1))[0]
    first = asyncio.Event()

    async def consume() -> None:
        async for _ in wrapped.unary_stream(request, _Context()):
            first.set()

    task = asyncio.ensure_future(consume())
    await first.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert log[-1] == "a.exit(None, CancelledError)"


async def test_calls_of_unknown_methods_are_left_to_grpc() -> None:
    async def continuation(details: Any) -> None:
        return None

    chain = InterceptorChain([_RecordingInterceptor("a", [])])
    assert await chain.intercept_service(continuation, _Details("/x.Y/Z")) is None  # type: ignore[arg-type]


# The registry: a test-only assembly with one toy servicer ---------------------------------------


class _ToyModelServicer(model_service_pb2_grpc.ModelServiceServicer):
    """A generated service's servicer that answers with the caller's tenant."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    async def GetModel(self, request: Any, context: Any) -> Any:
        self.calls.append("GetModel")
        model = model_pb2.Model(id=request.model_id, name=current_principal().tenant)
        return model_service_pb2.GetModelResponse(model=model)

    async def ListModels(self, request: Any, context: Any) -> Any:
        self.calls.append("ListModels")
        return model_service_pb2.ListModelsResponse()

    async def RegisterModel(self, requests: Any, context: Any) -> Any:
        self.calls.append("RegisterModel")
        size = 0
        async for request in requests:
            size += len(request.chunk)
        model = model_pb2.Model(size_bytes=size, name=current_principal().tenant)
        return model_service_pb2.RegisterModelResponse(model=model)


@contextlib.asynccontextmanager
async def _toy_server() -> AsyncIterator[tuple[GrpcServer, _ToyModelServicer, list[str], str]]:
    """A test-only assembly: the toy servicer, a recording interceptor and auth, on port 0."""
    servicer = _ToyModelServicer()
    log: list[str] = []
    server = GrpcServer(
        [
            ServiceRegistration(
                servicer, model_service_pb2_grpc.add_ModelServiceServicer_to_server, MODEL_SERVICE
            )
        ],
        interceptors=[
            _RecordingInterceptor("rec", log),
            AuthInterceptor({"tok-acme": "acme"}, WorkerCredentialIssuer(SECRET)),
        ],
        guard=RequestGuard(8 << 20),
    )
    port = server.add_port("127.0.0.1:0")
    await server.start()
    try:
        yield server, servicer, log, f"127.0.0.1:{port}"
    finally:
        await server.stop(0)


async def _reflected_services(channel: grpc.aio.Channel) -> set[str]:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    call = stub.ServerReflectionInfo(
        _requests(reflection_pb2.ServerReflectionRequest(list_services="")), timeout=10
    )
    return {s.name async for r in call for s in r.list_services_response.service}


async def _health(channel: grpc.aio.Channel, service: str) -> Any:
    stub = health_pb2_grpc.HealthStub(channel)
    try:
        answer = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    return answer.status


async def test_a_registered_servicer_gets_health_and_reflection() -> None:
    async with (
        _toy_server() as (server, _, _, address),
        grpc.aio.insecure_channel(address) as channel,
    ):
        assert server.service_names == (MODEL_SERVICE,)
        assert await _health(channel, MODEL_SERVICE) is grpc.StatusCode.NOT_FOUND
        await server.set_serving()
        assert await _health(channel, "") == health_pb2.HealthCheckResponse.SERVING
        assert await _health(channel, MODEL_SERVICE) == health_pb2.HealthCheckResponse.SERVING
        assert await _reflected_services(channel) == {
            MODEL_SERVICE,
            HEALTH_SERVICE,
            REFLECTION_SERVICE,
        }
        await server.enter_graceful_shutdown()
        assert await _health(channel, MODEL_SERVICE) == health_pb2.HealthCheckResponse.NOT_SERVING


async def test_a_registered_servicer_gets_auth_and_the_request_guard() -> None:
    token = [("authorization", "Bearer tok-acme")]
    path = f"/{MODEL_SERVICE}/GetModel"
    async with (
        _toy_server() as (_, servicer, log, address),
        grpc.aio.insecure_channel(address) as channel,
    ):
        stub = model_service_pb2_grpc.ModelServiceStub(channel)
        request = model_service_pb2.GetModelRequest(model_id=5)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.GetModel(request, timeout=10)
        assert info.value.code() is grpc.StatusCode.UNAUTHENTICATED
        assert servicer.calls == []
        answer = await stub.GetModel(request, metadata=token, timeout=10)
        assert (answer.model.id, answer.model.name) == (5, "acme")

        raw = channel.unary_unary(path)
        for payload, code in (
            (b"\xff\xff\xff", grpc.StatusCode.INVALID_ARGUMENT),
            (b"\x00" * (SMALL_REQUEST_BYTES + 1), grpc.StatusCode.RESOURCE_EXHAUSTED),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await raw(payload, metadata=token, timeout=10)
            assert info.value.code() is code
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.ListModels(
                model_service_pb2.ListModelsRequest(name="n" * (MAX_NAME_CHARS + 1)),
                metadata=token,
                timeout=10,
            )
        assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert "name is" in (info.value.details() or "")

        chunks = [model_service_pb2.RegisterModelRequest(chunk=b"x" * 10).SerializeToString()]
        upload = channel.stream_unary(f"/{MODEL_SERVICE}/RegisterModel")
        answer_bytes = await upload(_requests(*chunks), metadata=token, timeout=10)
        registered = model_service_pb2.RegisterModelResponse.FromString(answer_bytes)
        assert (registered.model.size_bytes, registered.model.name) == (10, "acme")
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await upload(_requests(*chunks, b"\xff\xff\xff"), metadata=token, timeout=10)
        assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT

    # Only the calls that passed auth and the guard reached the servicer.
    assert servicer.calls == ["GetModel", "RegisterModel", "RegisterModel"]
    # The chain's first interceptor saw every call, refused ones included, with its status.
    exits = [entry for entry in log if entry.startswith("rec.exit")]
    assert exits == [
        "rec.exit(UNAUTHENTICATED, NoneType)",
        "rec.exit(None, NoneType)",
        "rec.exit(INVALID_ARGUMENT, NoneType)",
        "rec.exit(RESOURCE_EXHAUSTED, NoneType)",
        "rec.exit(INVALID_ARGUMENT, NoneType)",
        "rec.exit(None, NoneType)",
        "rec.exit(INVALID_ARGUMENT, NoneType)",
    ]


async def test_a_service_is_registered_once() -> None:
    registration = ServiceRegistration(
        _ToyModelServicer(),
        model_service_pb2_grpc.add_ModelServiceServicer_to_server,
        MODEL_SERVICE,
    )
    with pytest.raises(ValueError, match="registered twice"):
        GrpcServer([registration, registration])


async def test_no_service_is_added_after_the_start() -> None:
    server = GrpcServer()
    server.add_port("127.0.0.1:0")
    await server.start()
    try:
        registration = ServiceRegistration(
            _ToyModelServicer(),
            model_service_pb2_grpc.add_ModelServiceServicer_to_server,
            MODEL_SERVICE,
        )
        with pytest.raises(RuntimeError, match="before the server starts"):
            server.add_service(registration)
    finally:
        await server.stop(0)


# The platform's server --------------------------------------------------------------------------


def _generated_services() -> set[str]:
    """Every service the platform's protos define (from the generated ``*_pb2`` modules), and
    the Open Inference Protocol's (vendored, beside its server)."""
    import importlib

    from synapse_server.grpc.oip import SERVICE_NAME as OIP_SERVICE

    names: set[str] = {OIP_SERVICE}
    for module in pkgutil.iter_modules(generated.__path__):
        if module.name.endswith("_pb2"):
            pb2 = importlib.import_module(f"{generated.__name__}.{module.name}")
            names.update(s.full_name for s in pb2.DESCRIPTOR.services_by_name.values())
    return names


def test_the_platform_serves_health_and_reflection_for_every_service(
    platform_server: RunningServer,
) -> None:
    services = _generated_services()
    assert "synapse.plugin.v1.ActionService" in services
    with platform_server.channel() as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        answers = stub.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10
        )
        reflected = {s.name for a in answers for s in a.list_services_response.service}
        assert reflected == services | {HEALTH_SERVICE, REFLECTION_SERVICE}
        health = health_pb2_grpc.HealthStub(channel)
        for name in sorted(services):
            answer = health.Check(health_pb2.HealthCheckRequest(service=name), timeout=10)
            assert answer.status == health_pb2.HealthCheckResponse.SERVING, name
