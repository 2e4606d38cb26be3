"""The HTTP side: the FastAPI app, its routes (vLLM 0.33's paths), body reading with limits, the API key,
metrics per route, and every error answered in vLLM's shape (400, never FastAPI's 422)."""

from __future__ import annotations

import asyncio
import gc
import hmac
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from importlib import metadata
from typing import TypeVar

import pydantic_core
from fastapi import FastAPI, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway import cohere, priority, protocol
from gateway.bodies import header, read_json
from gateway.errors import GatewayError, Kind, invalid
from gateway.kserve import kserve_router
from gateway.serving import Gateway
from gateway.settings import GatewaySettings
from gateway.validation import validation_error

logger = logging.getLogger("gateway")
_Request = TypeVar("_Request", bound=BaseModel)

EMBEDDING_PATHS = ("/v1/embeddings",)
RERANK_PATHS = ("/rerank", "/v1/rerank", "/v2/rerank")
SCORE_PATHS = ("/score", "/v1/score")
# Reachable without the API key: probes and scrapes.
OPEN_PATHS = frozenset({"/health", "/ping", "/version", "/metrics"})
KNOWN_PATHS = frozenset(
    {*EMBEDDING_PATHS, *RERANK_PATHS, *SCORE_PATHS, *cohere.EMBED_PATHS, *OPEN_PATHS}
    | {"/v1/models", "/tokenize", "/detokenize"}
)
SERIALIZE_OFFLOAD_ROWS = 64


def _version() -> str:
    try:
        return metadata.version("qwen3-vl-triton")
    except metadata.PackageNotFoundError:
        return "unknown"


def error_response(error: GatewayError, settings: GatewaySettings) -> Response:
    return Response(
        error.body(),
        status_code=error.status,
        media_type="application/json",
        headers=error.headers(settings.retry_after),
    )


def json_response(model: BaseModel | bytes, request_id: str | None = None) -> Response:
    headers = {"X-Request-Id": request_id} if request_id else None
    body = model if isinstance(model, bytes) else model.model_dump_json()
    return Response(body, media_type="application/json", headers=headers)


async def serialize(model: BaseModel) -> bytes:
    """JSON bytes; a response with many rows (thousands of float vectors: megabytes of text) is written
    in a worker thread so that it does not stall the loop."""
    rows = getattr(model, "data", None) or getattr(model, "results", None) or ()
    if len(rows) > SERIALIZE_OFFLOAD_ROWS:
        return await asyncio.to_thread(pydantic_core.to_json, model)
    return pydantic_core.to_json(model)


async def parse(
    scope: Scope, receive: Receive, schema: type[_Request], settings: GatewaySettings
) -> _Request:
    body = await read_json(scope, receive, settings)
    try:
        return schema.model_validate(body)
    except ValidationError as error:
        raise validation_error(error) from None
    except RecursionError:
        raise invalid("request nested too deeply") from None


def request_id_of(scope: Scope, declared: str | None) -> str:
    return declared or header(scope, b"x-request-id") or uuid.uuid4().hex


class PoolingRoute:
    """One pooling route (embeddings, rerank, score) as a plain ASGI handler: body read and validated by
    the gateway itself, so it needs nothing of FastAPI's per-request machinery."""

    def __init__(
        self, schema: type[_Request], handler: Callable[..., Awaitable[BaseModel]], settings: GatewaySettings
    ):
        self.schema = schema
        self.handler = handler
        self.settings = settings

    async def response(self, scope: Scope, receive: Receive) -> Response:
        body = await parse(scope, receive, self.schema, self.settings)
        request_id = request_id_of(scope, getattr(body, "request_id", None))
        # Read where the gateway calls Triton (gateway.triton), so that the handlers need not pass it on.
        asked = priority.priority_class(header(scope, priority.PRIORITY_HEADER), getattr(body, "priority", 0))
        token = priority.current.set(asked)
        try:
            return json_response(await serialize(await self.handler(body, request_id)), request_id)
        finally:
            priority.current.reset(token)

    async def endpoint(self, request: Request) -> Response:
        """The same route through FastAPI (where the fast path does not take it)."""
        return await self.response(request.scope, request.receive)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The fast path: errors answered as FastAPI's handlers in create_app answer them."""
        try:
            response = await self.response(scope, receive)
        except GatewayError as error:
            response = error_response(error, self.settings)
        except ClientDisconnect:
            return  # nobody to answer
        except Exception as error:  # noqa: BLE001 - answered as 500, as FastAPI's handler does
            logger.exception("unhandled error on %s", scope["path"])
            response = error_response(
                GatewayError(Kind.INTERNAL, f"internal error: {type(error).__name__}"), self.settings
            )
        await response(scope, receive, send)


class FastPaths:
    """POSTs to the pooling routes go straight to their handler; everything else (other routes, other
    methods, lifespan) to the FastAPI app. Per request this saves FastAPI's middleware stack, its
    AsyncExitStack and route matching: ~35 % of the gateway's CPU in the 2026-11-30 profile."""

    def __init__(self, app: ASGIApp, routes: dict[str, ASGIApp]):
        self.app = app
        self.routes = routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            route = self.routes.get(scope["path"])
            if route is not None:
                await route(scope, receive, send)
                return
        await self.app(scope, receive, send)


class GatewayMiddleware:
    """API key check, then metrics per route and status for every HTTP request (pure ASGI: no per-request
    task, unlike BaseHTTPMiddleware)."""

    def __init__(self, app: ASGIApp, gateway: Gateway):
        self.app = app
        self.gateway = gateway
        key = gateway.settings.api_key
        self.expected = f"Bearer {key}".encode() if key else None

    def _authorized(self, scope: Scope) -> bool:
        if self.expected is None or scope["path"] in OPEN_PATHS:
            return True
        for name, value in scope["headers"]:
            if name == b"authorization":
                return hmac.compare_digest(value, self.expected)
        return False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        metrics = self.gateway.metrics
        started = time.perf_counter()
        status = 500

        async def send_and_record(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        metrics.http_in_flight.inc()
        try:
            if self._authorized(scope):
                await self.app(scope, receive, send_and_record)
            else:
                error = GatewayError(Kind.UNAUTHORIZED, "Unauthorized: send Authorization: Bearer <API key>")
                await error_response(error, self.gateway.settings)(scope, receive, send_and_record)
        finally:
            metrics.http_in_flight.dec()
            route = scope["path"] if scope["path"] in KNOWN_PATHS else "other"
            metrics.answered(route, status, time.perf_counter() - started)


def create_app(settings: GatewaySettings) -> ASGIApp:
    """The gateway as one ASGI app: GatewayMiddleware (API key, metrics) around FastPaths around FastAPI."""
    gateway = Gateway(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # What starting created leaves the garbage collector's reach, so that full collections stay short
        # under load (backend.triton_io.freeze_loaded_objects measures the same in the stubs).
        gc.collect()
        gc.freeze()
        yield
        await gateway.close()

    app = FastAPI(
        title="Qwen3-VL gateway", version=_version(), lifespan=lifespan, docs_url=None, redoc_url=None
    )
    app.state.gateway = gateway

    @app.exception_handler(GatewayError)
    async def _gateway_error(request: Request, error: GatewayError) -> Response:
        return error_response(error, settings)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, error: StarletteHTTPException) -> Response:
        kinds = {404: Kind.NOT_FOUND, 405: Kind.METHOD_NOT_ALLOWED, 413: Kind.TOO_LARGE}
        kind = kinds.get(error.status_code, Kind.INVALID if error.status_code < 500 else Kind.INTERNAL)
        message = (
            f"{error.detail}: {request.method} {request.url.path}"
            if error.status_code in kinds
            else str(error.detail)
        )
        return error_response(GatewayError(kind, message), settings)

    @app.exception_handler(Exception)
    async def _internal(request: Request, error: Exception) -> Response:
        logger.exception("unhandled error on %s", request.url.path)
        return error_response(
            GatewayError(Kind.INTERNAL, f"internal error: {type(error).__name__}"), settings
        )

    fast_routes: dict[str, ASGIApp] = {}
    specs: list[cohere.RouteSpec] = [
        (EMBEDDING_PATHS, protocol.EmbeddingRequest, gateway.embeddings),
        (RERANK_PATHS, protocol.RerankRequest, gateway.rerank),
        (SCORE_PATHS, protocol.ScoreRequest, gateway.score),
        *cohere.routes(gateway),  # Cohere's /v2/embed (gateway.cohere)
    ]
    for paths, schema, handler in specs:
        route = PoolingRoute(schema, handler, settings)
        for path in paths:
            fast_routes[path] = route
            # Still registered: FastAPI answers other methods (405) and lists the route in its schema.
            app.add_api_route(path, route.endpoint, methods=["POST"], include_in_schema=path == paths[0])

    @app.post("/tokenize")
    async def tokenize(request: Request) -> Response:
        return json_response(
            await gateway.tokenize(
                await parse(request.scope, request.receive, protocol.TokenizeRequest, settings)
            )
        )

    @app.post("/detokenize")
    async def detokenize(request: Request) -> Response:
        return json_response(
            await gateway.detokenize(
                await parse(request.scope, request.receive, protocol.DetokenizeRequest, settings)
            )
        )

    @app.get("/v1/models")
    async def models() -> Response:
        return json_response(await gateway.models())

    @app.api_route("/health", methods=["GET"])
    @app.api_route("/ping", methods=["GET", "POST"])
    async def health() -> Response:
        # Ready exactly when Triton is: a load balancer then sends nothing that would only fail.
        if await gateway.backend.ready():
            return Response(status_code=200)
        return error_response(GatewayError(Kind.UNAVAILABLE, "Triton is not ready"), settings)

    @app.get("/version")
    async def version() -> Response:
        body = {"version": _version(), "triton": await gateway.backend.version()}
        return Response(json.dumps(body), media_type="application/json")

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(gateway.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    app.include_router(kserve_router(gateway))  # KServe v2 REST, forwarded over gRPC (gateway/kserve.py)
    return GatewayMiddleware(FastPaths(app, fast_routes), gateway)
