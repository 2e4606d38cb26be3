"""The gateway's one error type, its kinds, and the one table that turns a kind into an HTTP answer.

Body shape is vLLM's: ``{"error": {"message", "type", "param", "code"}}``.
"""

from __future__ import annotations

import enum
import json
from http import HTTPStatus


class Kind(enum.Enum):
    INVALID = "invalid"  # the request or one of its items is wrong: the caller can fix it
    UNAUTHORIZED = "unauthorized"
    NOT_FOUND = "not_found"  # unknown model or route
    METHOD_NOT_ALLOWED = "method_not_allowed"
    TOO_LARGE = "too_large"  # body over the configured limit
    REQUEST_TIMEOUT = "request_timeout"  # the client sent its body too slowly
    UNSUPPORTED = "unsupported"  # a vLLM option this gateway does not implement
    OVERLOADED = "overloaded"  # would wait longer than the queue timeout: retry later
    UNAVAILABLE = "unavailable"  # Triton not ready or unreachable: retry later
    TIMEOUT = "timeout"  # Triton did not answer in time
    INTERNAL = "internal"


# kind -> (status, vLLM's error type name)
STATUS: dict[Kind, tuple[HTTPStatus, str]] = {
    Kind.INVALID: (HTTPStatus.BAD_REQUEST, "BadRequestError"),
    Kind.UNAUTHORIZED: (HTTPStatus.UNAUTHORIZED, "AuthenticationError"),
    Kind.NOT_FOUND: (HTTPStatus.NOT_FOUND, "NotFoundError"),
    Kind.METHOD_NOT_ALLOWED: (HTTPStatus.METHOD_NOT_ALLOWED, "MethodNotAllowedError"),
    Kind.TOO_LARGE: (HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "RequestEntityTooLargeError"),
    Kind.REQUEST_TIMEOUT: (HTTPStatus.REQUEST_TIMEOUT, "RequestTimeoutError"),
    Kind.UNSUPPORTED: (HTTPStatus.NOT_IMPLEMENTED, "NotImplementedError"),
    Kind.OVERLOADED: (HTTPStatus.SERVICE_UNAVAILABLE, "ServiceUnavailableError"),
    Kind.UNAVAILABLE: (HTTPStatus.SERVICE_UNAVAILABLE, "ServiceUnavailableError"),
    Kind.TIMEOUT: (HTTPStatus.GATEWAY_TIMEOUT, "TimeoutError"),
    Kind.INTERNAL: (HTTPStatus.INTERNAL_SERVER_ERROR, "InternalServerError"),
}
RETRYABLE = {Kind.OVERLOADED, Kind.UNAVAILABLE}


class GatewayError(Exception):
    """A failure the client is told about; ``param`` names the request field it concerns."""

    def __init__(self, kind: Kind, message: str, param: str | None = None, retry_after: int | None = None):
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.param = param
        self.retry_after = retry_after

    @property
    def status(self) -> int:
        return int(STATUS[self.kind][0])

    def body(self) -> bytes:
        status, type_name = STATUS[self.kind]
        error = {"message": self.message, "type": type_name, "param": self.param, "code": int(status)}
        return json.dumps({"error": error}).encode()

    def headers(self, default_retry_after: int) -> dict[str, str]:
        if self.kind in RETRYABLE:
            return {"Retry-After": str(max(1, self.retry_after or default_retry_after))}
        if self.kind is Kind.REQUEST_TIMEOUT:
            return {"Connection": "close"}  # the rest of a body that came too slowly is not waited for
        return {}


def invalid(message: str, param: str | None = None) -> GatewayError:
    return GatewayError(Kind.INVALID, message, param)
