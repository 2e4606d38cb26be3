"""What a failed request means: retry it (UNAVAILABLE, lost connection, a model being reloaded), split it to
find every bad item (``on_error="skip"``), record one bad item, or raise an error that names the items it
concerns.

A model being reloaded (the launcher's watchdog unloads and loads a model whose stub died; the supervisor
restarts tritonserver) answers NOT_FOUND "has no available versions", or INTERNAL "Stub process ... is not
healthy" for the requests its dead stub held, or refuses connections. None of those requests produced an
answer, so sending them again is safe: they are retried for up to ``reload_wait`` seconds, at most 0.5 s
apart, so that a reload is a latency spike and not an error. A name the server never served ("is not
found") is not retried, unless this client has been served by that model before.

The server's status and message, and the row its message names (``pin``), are read here for the gateway
too: it maps them to its own error kinds and retries reloads the same way (``is_reloading``)."""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import dataclass

from qwen3vl_client._wire import Endpoint
from qwen3vl_client.errors import EmbeddingError, ItemError, RequestError, ServerUnavailableError
from qwen3vl_client.items import Batch
from qwen3vl_client.options import MAX_BACKOFF, MAX_RELOAD_BACKOFF, MIN_RELOAD_BACKOFF, Options

_UNAVAILABLE = {"StatusCode.UNAVAILABLE", "503"}
_INVALID = {"StatusCode.INVALID_ARGUMENT", "400"}
_NOT_FOUND = {"StatusCode.NOT_FOUND", "404"}
# Triton's words for a model of its repository that is unloaded or loading ("no available versions", "not at
# ready state"), and for a request whose stub died under it (the ensemble names the step's stub).
_RELOADING = re.compile(
    r"Request for unknown model: '[^']*' (?:has no available versions|version \d+ is not at ready state)"
    r"|Stub process '[^']*' is not healthy"
)
_RELOAD_STATUSES = _NOT_FOUND | _UNAVAILABLE | {"StatusCode.INTERNAL", "500"}
# Triton's dynamic batcher refusing a request (queue full, queue timeout): the server is up and busy. Sent
# again only with the usual backoff and attempts, never within a reload's budget (that would be a storm).
BUSY = re.compile(r"maximum queue size|timeout expired", re.IGNORECASE)
# The steps' own refusals for load (backend.backpressure: "... overloaded ...; retry later") and the gateway's
# 503s ("server overloaded: ..."): the server is up and says so; not a restart to wait out.
OVERLOADED = re.compile(r"\boverloaded\b")
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


def is_reloading(error: BaseException) -> bool:
    """The server says the model is being reloaded, or that the stub running the request died."""
    return error_status(error) in _RELOAD_STATUSES and bool(_RELOADING.search(error_text(error)))


def is_down(error: BaseException, connection_errors: tuple[type[BaseException], ...]) -> bool:
    """No server answers (refused, reset, UNAVAILABLE without being busy), or it does not know the model:
    for a model that served before, a server restarting."""
    if error_status(error) in _NOT_FOUND:
        return True
    text = error_text(error)
    return is_unavailable(error, connection_errors) and not BUSY.search(text) and not OVERLOADED.search(text)


def reload_delay(backoff: float, attempt: int) -> float:
    """The pause before attempt ``attempt + 1`` while a model reloads: exponential from ``backoff``, at most
    MAX_RELOAD_BACKOFF (its return is noticed within that), at least MIN_RELOAD_BACKOFF (no busy loop)."""
    return max(MIN_RELOAD_BACKOFF, min(backoff * 2**attempt, MAX_RELOAD_BACKOFF))


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


class Waits:
    """One client's memory for retries: the models that have answered it (a restart's "not found" or refused
    connection then means "reloading") and, per request being retried, since when it has been failing."""

    def __init__(self) -> None:
        self.served: set[str] = set()
        self._since: dict[int, tuple[Batch, float]] = {}  # id -> (the batch, kept so that its id stays its)

    def failing_for(self, batch: Batch) -> float:
        """Seconds since ``batch`` first failed (0 now, on its first failure)."""
        now = time.monotonic()
        return now - self._since.setdefault(id(batch), (batch, now))[1]

    def done(self, batch: Batch, model: str | None = None) -> None:
        """``batch`` succeeded (``model`` answered) or failed for good: forget when it began failing."""
        self._since.pop(id(batch), None)
        if model is not None:
            self.served.add(model)


def next_step(
    error: BaseException,
    batch: Batch,
    attempt: int,
    options: Options,
    on_error: str,
    connection_errors: tuple[type[BaseException], ...],
    endpoint: Endpoint | None = None,
    waits: Waits | None = None,
) -> Step:
    """What to do about a failed request; raises the error the caller should see instead. With ``waits``,
    a reload (see the module's docstring) is retried within ``options.reload_wait``."""
    try:
        step = _next_step(error, batch, attempt, options, on_error, connection_errors, endpoint, waits)
    except BaseException:
        if waits is not None:
            waits.done(batch)
        raise
    if waits is not None and not isinstance(step, Retry):
        waits.done(batch)
    return step


def _next_step(
    error: BaseException,
    batch: Batch,
    attempt: int,
    options: Options,
    on_error: str,
    connection_errors: tuple[type[BaseException], ...],
    endpoint: Endpoint | None,
    waits: Waits | None,
) -> Step:
    if waits is not None and options.reload_wait > 0:
        served = endpoint is not None and endpoint.model in waits.served
        if is_reloading(error) or (served and is_down(error, connection_errors)):
            delay = reload_delay(options.backoff, attempt)
            if waits.failing_for(batch) + delay <= options.reload_wait:
                return Retry(delay)
    unavailable = is_unavailable(error, connection_errors)
    if unavailable and attempt < options.retries:
        return Retry(min(options.backoff * 2**attempt, MAX_BACKOFF))
    if unavailable:
        raise ServerUnavailableError(
            batch.indices,
            f"server at {options.url} unavailable after {attempt + 1} attempts: {error_message(error)}",
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


# gRPC waits up to 120 s (backoff x1.6 from 1 s) before it reconnects to a server that went away; a restarted
# server is then noticed late. These keep tritonclient's own defaults (message size, keepalive) and reconnect
# at most MAX_RELOAD_BACKOFF after it is back.
GRPC_CHANNEL_ARGS = [
    ("grpc.max_send_message_length", 2**31 - 1),
    ("grpc.max_receive_message_length", 2**31 - 1),
    ("grpc.keepalive_time_ms", 2**31 - 1),
    ("grpc.keepalive_timeout_ms", 20000),
    ("grpc.keepalive_permit_without_calls", 0),
    ("grpc.http2.max_pings_without_data", 2),
    ("grpc.initial_reconnect_backoff_ms", int(MIN_RELOAD_BACKOFF * 1000) * 4),
    ("grpc.min_reconnect_backoff_ms", int(MIN_RELOAD_BACKOFF * 1000) * 4),
    ("grpc.max_reconnect_backoff_ms", int(MAX_RELOAD_BACKOFF * 1000)),
]
