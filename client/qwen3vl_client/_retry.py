"""What a failed request means: retry it (UNAVAILABLE, lost connection), split it to find every bad item
(``on_error="skip"``), record one bad item, or raise an error that names the items it concerns.

The server's status and message, and the row its message names (``pin``), are read here for the gateway
too: it maps them to its own error kinds and does not retry."""

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


def error_text(error: BaseException) -> str:
    """The server's message (tritonclient's ``message()``), else the exception's text (maybe "")."""
    message = getattr(error, "message", None)
    return str((message() if callable(message) else None) or error)


def error_message(error: BaseException) -> str:
    return error_text(error) or type(error).__name__


def is_unavailable(error: BaseException, connection_errors: tuple[type[BaseException], ...]) -> bool:
    """UNAVAILABLE, HTTP 503 or a failed connection: worth a retry. Timeouts are not retried."""
    if error_status(error) in _UNAVAILABLE:
        return True
    timed_out = isinstance(error, (TimeoutError, asyncio.TimeoutError))
    return isinstance(error, connection_errors) and not timed_out


def is_invalid(error: BaseException) -> bool:
    return error_status(error) in _INVALID


def row_of(message: str) -> tuple[int | None, str]:
    """The row the backend's "row N: " names and what follows it (past Triton's ensemble prefix), else
    (None, the whole message)."""
    match = _ROW.search(message)
    return (int(match.group(1)), message[match.end() :]) if match else (None, message)


@dataclass(frozen=True)
class Pinned:
    """Whom a server message concerns: ``row`` of the request (None: no row, or one it does not have),
    or, when ``shared``, what every row carries (the rerank query); ``reason`` is the message past
    "row N: "."""

    row: int | None
    reason: str
    shared: bool = False


def pin(message: str, rows: int, shared_markers: tuple[str, ...] = (), row: int | None = None) -> Pinned:
    """The row of a request of ``rows`` rows that ``message`` names (``row``, when given, wins: a merged
    request's row renumbered), or the shared part when the reason starts with ``shared_markers``."""
    named, reason = row_of(message)
    if shared_markers and reason.startswith(shared_markers):
        return Pinned(None, reason, shared=True)
    row = named if row is None else row
    return Pinned(row if row is not None and row < rows else None, reason)


def blame(error: BaseException, batch: Batch, endpoint: Endpoint | None = None) -> EmbeddingError:
    """The server's error as an ``ItemError`` for the row it names, else a ``RequestError``."""
    message = error_message(error)
    status = error_status(error)
    pinned = pin(message, len(batch), _shared_markers(endpoint))
    if pinned.shared and endpoint is not None:
        # Every row carries the query: the request failed because of it, not of a document.
        return RequestError(batch.indices, f"{endpoint.shared}: {pinned.reason}", status)
    if pinned.row is not None:
        row = pinned.row
        return ItemError(batch.indices[row], batch.items[row].describe(), pinned.reason, status)
    if len(batch) == 1 and is_invalid(error):
        return ItemError(batch.indices[0], batch.items[0].describe(), message, status)
    return RequestError(batch.indices, f"{status or type(error).__name__}: {message}", status)


def _shared_markers(endpoint: Endpoint | None) -> tuple[str, ...]:
    return endpoint.shared_markers if endpoint is not None else ()


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
    about_shared = pin(error_message(error), len(batch), _shared_markers(endpoint)).shared
    if on_error == "skip" and is_invalid(error) and not about_shared:
        # One bad row fails the whole request: send the items alone to find every bad one.
        if len(batch) > 1:
            return Split(batch.singles())
        if isinstance(blamed, ItemError):
            return Fail(blamed)
    raise blamed from error
