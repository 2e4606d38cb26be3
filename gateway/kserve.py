"""The KServe v2 REST protocol at the gateway's port, forwarded to Triton over the gateway's one gRPC
channel: what ``tritonclient.http`` and ``perf_analyzer -i http`` use (infer with JSON or binary tensors,
server and model metadata, readiness, config, statistics).

Why: tritonserver 2.51 (the PyPI wheel every non-CUDA deployment runs) crashes on a deeply nested JSON body
and inflates gzip bodies whole; its HTTP port stays on loopback and clients reach this front instead.
Here a body is read within the gateway's size and time limits, compressed bodies are refused (415: nothing
is inflated), JSON is parsed by the gateway's bounded parser, and every tensor is checked against its
shape and datatype (gateway/kserve_codec.py) before Triton sees it. Errors keep KServe's body,
``{"error": "..."}``, and the status Triton's HTTP front gives the same request (400 bad input, 404 unknown
model), 503 + Retry-After where the gateway or Triton is overloaded or not ready.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import pydantic_core
from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.requests import ClientDisconnect
from tritonclient.grpc._utils import get_error_grpc

from gateway import kserve_codec as codec
from gateway.bodies import header, parse_json, receive_body, too_many_values
from gateway.errors import GatewayError
from gateway.serving import Gateway
from gateway.triton_errors import RELOAD_FIRST_BACKOFF_SECS, RELOAD_WAIT_SECS
from qwen3vl_client._retry import error_status, error_text, is_reloading, reload_delay

logger = logging.getLogger("gateway")

# Triton's gRPC status -> the HTTP status its HTTP front answers the same error with.
HTTP_STATUS = {
    "StatusCode.INVALID_ARGUMENT": 400,
    "StatusCode.NOT_FOUND": 404,
    "StatusCode.ALREADY_EXISTS": 400,
    "StatusCode.CANCELLED": 400,
    "StatusCode.UNKNOWN": 400,
    "StatusCode.UNIMPLEMENTED": 501,
    "StatusCode.UNAVAILABLE": 503,
    "StatusCode.RESOURCE_EXHAUSTED": 503,
    "StatusCode.DEADLINE_EXCEEDED": 504,
}
DESCRIBE_TIMEOUT_SECS = 10.0
OCTET_STREAM = "application/octet-stream"


class KServeError(Exception):
    """Answered as ``{"error": message}`` with ``status``."""

    def __init__(self, status: int, message: str, retry_after: int | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.retry_after = retry_after


def error_response(status: int, message: str, retry_after: int | None = None) -> Response:
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
    body = pydantic_core.to_json({"error": message})
    return Response(body, status_code=status, media_type="application/json", headers=headers)


def json_answer(value: Any) -> Response:
    return Response(pydantic_core.to_json(value), media_type="application/json")


def triton_error(error: Exception, retry_after: int) -> KServeError:
    """Triton's (or the channel's) error with the status Triton's HTTP front would give it."""
    if isinstance(error, grpc.RpcError):
        error = get_error_grpc(error)
    status = HTTP_STATUS.get(error_status(error) or "", 500)
    return KServeError(status, error_text(error), retry_after if status == 503 else None)


class KServeRoutes:
    """The routes' handlers, bound to the gateway's shared state (Triton channel, admission, limits)."""

    def __init__(self, gateway: Gateway):
        self.gateway = gateway
        self.settings = gateway.settings

    def _client(self) -> Any:
        return self.gateway.backend._connect()  # the gateway's one gRPC channel

    async def _answer(self, work: Callable[[], Awaitable[Response]]) -> Response:
        try:
            return await work()
        except KServeError as error:
            return error_response(error.status, error.message, error.retry_after)
        except codec.BadRequest as error:
            return error_response(400, str(error))
        except ClientDisconnect:
            return Response(status_code=400)  # nobody left to read it
        except GatewayError as error:
            retry = error.retry_after or self.settings.retry_after
            return error_response(error.status, error.message, retry if error.status == 503 else None)
        except Exception as error:  # noqa: BLE001 - Triton's errors and the channel's
            if error_status(error) is None and not isinstance(error, grpc.RpcError):
                logger.exception("unhandled error on a KServe route")
                return error_response(500, f"internal error: {type(error).__name__}")
            failure = triton_error(error, self.settings.retry_after)
            return error_response(failure.status, failure.message, failure.retry_after)

    async def _describe(self, call: Callable[..., Awaitable[Any]], *args: str) -> Any:
        try:
            return await call(*args, client_timeout=DESCRIBE_TIMEOUT_SECS)
        except Exception as error:  # noqa: BLE001
            raise triton_error(error, self.settings.retry_after) from None

    # -- health and metadata ------------------------------------------------------------------------
    async def server_metadata(self) -> Response:
        async def work() -> Response:
            reply = await self._describe(self._client().get_server_metadata)
            return json_answer(
                {"name": reply.name, "version": reply.version, "extensions": list(reply.extensions)}
            )

        return await self._answer(work)

    async def health(self, what: str) -> Response:
        client = self._client()
        check = client.is_server_live if what == "live" else client.is_server_ready
        try:
            ok = await check(client_timeout=5.0)
        except Exception:  # noqa: BLE001 - unreachable is not live or ready
            ok = False
        if ok:
            return Response(status_code=200)
        return error_response(503, f"Triton is not {what}", self.settings.retry_after)

    async def model_ready(self, request: Request, name: str, version: str) -> Response:
        async def work() -> Response:
            if await self._describe(self._client().is_model_ready, name, version):
                return Response(status_code=200)
            return error_response(400, "Model version not ready")  # Triton's HTTP answer, word for word

        return await self._answer(work)

    async def model_metadata(self, request: Request, name: str, version: str) -> Response:
        async def work() -> Response:
            reply = await self._describe(self._client().get_model_metadata, name, version)
            return json_answer(codec.model_metadata(reply))

        return await self._answer(work)

    async def model_config(self, request: Request, name: str, version: str) -> Response:
        async def work() -> Response:
            reply = await self._describe(self._client().get_model_config, name, version)
            return json_answer(codec.message_json(reply.config))

        return await self._answer(work)

    async def model_stats(self, request: Request, name: str, version: str) -> Response:
        async def work() -> Response:
            reply = await self._describe(self._client().get_inference_statistics, name, version)
            return json_answer(codec.message_json(reply))

        return await self._answer(work)

    # -- inference ----------------------------------------------------------------------------------
    def _decode(self, body: bytes, length: int | None, name: str, version: str) -> codec.InferCall:
        """The body as a checked gRPC request (a worker thread runs this for big bodies)."""
        head = body[:length] if length is not None else body
        if head.count(b",") >= self.settings.max_body_values:
            raise too_many_values(self.settings.max_body_values)
        if not head.strip():
            raise codec.BadRequest("the request body is empty; send a KServe v2 inference request")
        binary = memoryview(body)[length:] if length is not None else memoryview(b"")
        return codec.infer_call(parse_json(head), binary, name, version)

    def _encode(self, call: codec.InferCall, reply: Any) -> Response:
        answer, binary = codec.infer_answer(call, reply)
        head = pydantic_core.to_json(answer)
        if not binary and not any("parameters" in each for each in answer["outputs"]):
            return Response(head, media_type="application/json")
        return Response(
            head + binary,
            media_type=OCTET_STREAM,
            headers={codec.HEADER_LENGTH: str(len(head))},
        )

    async def _forward(self, call: codec.InferCall) -> Any:
        """One ModelInfer over the shared channel; a model being reloaded (a stub repaired under the
        request) is waited out as the gateway's other routes wait, within their reload budget."""
        stub = self._client()._client_stub  # tritonclient's own stub on the channel: no second client
        loop = asyncio.get_running_loop()
        deadline = loop.time() + min(RELOAD_WAIT_SECS, self.settings.request_timeout)
        attempt = 0
        while True:
            try:
                return await stub.ModelInfer(request=call.request, timeout=self.settings.request_timeout)
            except grpc.RpcError as rpc_error:
                error = get_error_grpc(rpc_error)
                delay = reload_delay(RELOAD_FIRST_BACKOFF_SECS, attempt)
                if not is_reloading(error) or loop.time() + delay > deadline:
                    raise triton_error(error, self.settings.retry_after) from None
            await asyncio.sleep(delay)
            attempt += 1

    async def infer(self, request: Request, name: str, version: str) -> Response:
        async def work() -> Response:
            scope = request.scope
            encoding = header(scope, b"content-encoding").strip().lower()
            if encoding and encoding != "identity":
                # Nothing is inflated: a 1 MB gzip body costs Triton 2.51 2 GB. Send bodies uncompressed.
                raise KServeError(
                    415, f"Content-Encoding {encoding!r} is not accepted: send the body uncompressed"
                )
            body = await receive_body(scope, request.receive, self.settings, count_values=False)
            length = codec.header_length(header(scope, b"inference-header-content-length"), len(body))
            big = len(body) > self.settings.offload_bytes
            if big:
                call = await asyncio.to_thread(self._decode, body, length, name, version)
            else:
                call = self._decode(body, length, name, version)
            del body
            async with self.gateway.admission.slot():
                reply = await self._forward(call)
            if big or reply.ByteSize() > self.settings.offload_bytes:
                return await asyncio.to_thread(self._encode, call, reply)
            return self._encode(call, reply)

        return await self._answer(work)


def kserve_router(gateway: Gateway) -> APIRouter:
    """The KServe v2 routes (``/v2``, ``/v2/health/*``, ``/v2/models/...``) for ``app.include_router``."""
    routes = KServeRoutes(gateway)
    router = APIRouter()

    @router.get("/v2")
    async def server_metadata() -> Response:
        return await routes.server_metadata()

    @router.get("/v2/health/live")
    async def live() -> Response:
        return await routes.health("live")

    @router.get("/v2/health/ready")
    async def ready() -> Response:
        return await routes.health("ready")

    @router.get("/v2/models/stats")
    async def all_stats(request: Request) -> Response:
        return await routes.model_stats(request, "", "")

    for suffix, handler, method in (
        ("", routes.model_metadata, "GET"),
        ("/ready", routes.model_ready, "GET"),
        ("/config", routes.model_config, "GET"),
        ("/stats", routes.model_stats, "GET"),
        ("/infer", routes.infer, "POST"),
    ):
        latest, versioned = _endpoints(handler)
        router.add_api_route(f"/v2/models/{{name}}{suffix}", latest, methods=[method])
        router.add_api_route(f"/v2/models/{{name}}/versions/{{version}}{suffix}", versioned, methods=[method])
    return router


Handler = Callable[[Request, str, str], Awaitable[Response]]


def _endpoints(handler: Handler) -> tuple[Handler | Callable[[Request, str], Awaitable[Response]], Handler]:
    """A model route without a version (Triton picks) and with one."""

    async def latest(request: Request, name: str) -> Response:
        return await handler(request, name, "")

    async def versioned(request: Request, name: str, version: str) -> Response:
        return await handler(request, name, version)

    return latest, versioned
