"""Request bodies in: read from ASGI messages within a size, a value-count and a time limit, parsed at C
speed, then held to the per-field limits (gateway/limits.py) before schema validation sees them.

Why each step: a body's cost is set by how many values it holds, not its bytes (60 MB of token ids were
~30 M Python ints and 7.9 GB once validated), so values are counted (commas, as chunks arrive) and refused
before anything is built; parsing holds the GIL whichever thread runs it, so it is kept short (the value cap
bounds it, jiter parses ~2x faster than the json module) rather than moved; what is Python-level (the limit
walk) runs in a worker thread for big bodies, where the loop still gets its turns.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pydantic_core
from starlette.requests import ClientDisconnect
from starlette.types import Receive, Scope

from gateway.errors import GatewayError, Kind, invalid
from gateway.limits import check_limits
from gateway.settings import GatewaySettings


def header(scope: Scope, name: bytes) -> str:
    """One request header (first occurrence; ASGI names are lower case), or ""."""
    for key, value in scope["headers"]:
        if key == name:
            return value.decode("latin-1")
    return ""


def _too_large(limit: int) -> GatewayError:
    return GatewayError(Kind.TOO_LARGE, f"request body is over the limit of {limit} bytes")


def too_many_values(limit: int) -> GatewayError:
    return GatewayError(
        Kind.TOO_LARGE,
        f"request body holds over {limit} JSON values (list entries and object fields; "
        "GATEWAY_MAX_BODY_VALUES): send fewer items per request",
    )


async def _receive_body(
    scope: Scope, receive: Receive, settings: GatewaySettings, count_values: bool = True
) -> bytes:
    limit, values_limit = settings.max_body_bytes, settings.max_body_values
    declared = header(scope, b"content-length")
    if declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    body = b""
    chunks: list[bytes] | None = None  # only a body sent in several messages is joined
    size = commas = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        # Every list entry and object field but the first of each is after a comma (commas inside
        # strings count too: an over-count only for texts far past any item limit).
        commas += chunk.count(b",") if count_values else 0
        if commas >= values_limit:
            raise too_many_values(values_limit)
        if chunks is None and not body:
            body = chunk
        else:
            if chunks is None:
                chunks = [body]
            chunks.append(chunk)
        if not message.get("more_body", False):
            break
    if chunks is not None:
        body = b"".join(chunks)
    return body


async def receive_body(
    scope: Scope, receive: Receive, settings: GatewaySettings, count_values: bool = True
) -> bytes:
    """The raw body, straight from ASGI messages, within the size limit (and the value limit unless
    ``count_values`` is off: a body with binary parts counts its JSON values itself), arrived within the
    body timeout; maybe empty."""
    try:
        async with asyncio.timeout(settings.body_timeout):
            return await _receive_body(scope, receive, settings, count_values)
    except TimeoutError:
        raise GatewayError(
            Kind.REQUEST_TIMEOUT,
            f"the request body did not arrive within {settings.body_timeout:g} s (GATEWAY_BODY_TIMEOUT)",
        ) from None


async def read_body(scope: Scope, receive: Receive, settings: GatewaySettings) -> bytes:
    """The raw body, straight from ASGI messages: JSON content type (or none), within the size and value
    limits, arrived within the body timeout, not empty."""
    media_type = header(scope, b"content-type").split(";", 1)[0].strip().lower()
    if media_type and media_type != "application/json" and not media_type.endswith("+json"):
        raise invalid(f"Content-Type must be application/json, got {media_type!r}")
    body = await receive_body(scope, receive, settings)
    if not body:
        raise invalid("the request body is empty; send a JSON object")
    return body


def parse_json(body: bytes) -> Any:
    """jiter (pydantic-core's parser) first; what it refuses goes to the json module, whose answers (lone
    surrogates kept, its messages, its depth limit) are the gateway's."""
    try:
        return pydantic_core.from_json(body)
    except ValueError:
        pass
    try:
        return json.loads(body)
    except RecursionError:
        raise invalid("malformed JSON: nested too deeply") from None
    except ValueError as error:
        raise invalid(f"malformed JSON: {error}") from None


def _checked(body: bytes, settings: GatewaySettings) -> dict[str, Any]:
    parsed = parse_json(body)
    if not isinstance(parsed, dict):
        raise invalid(f"the request body must be a JSON object, got {type(parsed).__name__}")
    check_limits(parsed, settings)
    return parsed


async def read_json(scope: Scope, receive: Receive, settings: GatewaySettings) -> dict[str, Any]:
    """The body as a parsed JSON object held to the per-field limits (see read_body)."""
    body = await read_body(scope, receive, settings)
    if len(body) > settings.offload_bytes:
        return await asyncio.to_thread(_checked, body, settings)
    return _checked(body, settings)
