"""What a failed request means: retry it (UNAVAILABLE, lost connection), split it to find every bad item
(``on_error="skip"``), record one bad item, or raise an error that names the items it concerns."""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass

from qwen3vl_client._wire import Endpoint
from qwen3vl_client.errors import EmbeddingError, ItemError, RequestError, ServerUnavailableError
from qwen3vl_client.items import Batch
from qwen3vl_client.options import MAX_BACKOFF, Options

_UNAVAILABLE = {"StatusCode.UNAVAILABLE", "503"}
_INVALID = {"StatusCode.INVALID_ARGUMENT", "400"}
# Triton prefixes the backend's "row N: ..." with "in ensemble '<name>', ".
_ROW = re.compile(r"\brow (\d+): ")


def error_status(error: BaseException) -> str | None:
    status = getattr(error, "status", None)
    return str(status()) if callable(status) and status() is not None else None


def error_message(error: BaseException) -> str:
    message = getattr(error, "message", None)
    text = message() if callable(message) else None
    return str(text or error) or type(error).__name__


def is_unavailable(error: BaseException, connection_errors: tuple[type[BaseException], ...]) -> bool:
    """UNAVAILABLE, HTTP 503 or a failed connection: worth a retry. Timeouts are not retried."""
    if error_status(error) in _UNAVAILABLE:
        return True
    timed_out = isinstance(error, (TimeoutError, asyncio.TimeoutError))
    return isinstance(error, connection_errors) and not timed_out


def is_invalid(error: BaseException) -> bool:
    return error_status(error) in _INVALID


def row_reason(message: str) -> str:
    """What follows the backend's "row N: " (and Triton's ensemble prefix), else the whole message."""
    match = _ROW.search(message)
    return message[match.end() :] if match else message


def blame(error: BaseException, batch: Batch, endpoint: Endpoint | None = None) -> EmbeddingError:
    """The server's error as an ``ItemError`` for the row it names, else a ``RequestError``."""
    message = error_message(error)
    status = error_status(error)
    match = _ROW.search(message)
    reason = message[match.end() :] if match else message
    if endpoint is not None and endpoint.about_shared(reason):
        # Every row carries the query: the request failed because of it, not of a document.
        return RequestError(batch.indices, f"{endpoint.shared}: {reason}", status)
    if match and int(match.group(1)) < len(batch):
        row = int(match.group(1))
        return ItemError(batch.indices[row], batch.items[row].describe(), reason, status)
    if len(batch) == 1 and is_invalid(error):
        return ItemError(batch.indices[0], batch.items[0].describe(), message, status)
    return RequestError(batch.indices, f"{status or type(error).__name__}: {message}", status)


@dataclass(frozen=True)
class Retry:
    delay: float


@dataclass(frozen=True)
class Split:
    batches: list[Batch]


@dataclass(frozen=True)
class Fail:
    error: ItemError


Step = Retry | Split | Fail


def next_step(
    error: BaseException,
    batch: Batch,
    attempt: int,
    options: Options,
    on_error: str,
    connection_errors: tuple[type[BaseException], ...],
    endpoint: Endpoint | None = None,
) -> Step:
    """What to do about a failed request; raises the error the caller should see instead."""
    if is_unavailable(error, connection_errors):
        if attempt < options.retries:
            return Retry(min(options.backoff * 2**attempt, MAX_BACKOFF))
        attempts = options.retries + 1
        raise ServerUnavailableError(
            batch.indices,
            f"server at {options.url} unavailable after {attempts} attempts: {error_message(error)}",
            error_status(error),
        ) from error
    blamed = blame(error, batch, endpoint)
    about_shared = endpoint is not None and endpoint.about_shared(row_reason(error_message(error)))
    if on_error == "skip" and is_invalid(error) and not about_shared:
        # One bad row fails the whole request: send the items alone to find every bad one.
        if len(batch) > 1:
            return Split(batch.singles())
        if isinstance(blamed, ItemError):
            return Fail(blamed)
    raise blamed from error
